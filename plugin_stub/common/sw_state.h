/* Saving a plugin's work with the session: the returned stems and the captured region, in a small versioned
 * binary file (LV2: beside the session through state:makePath; VST3: the same bytes in the host's state chunk).
 * Never called on the audio thread.
 *
 * Version 2 (written): "SWSTATE2", then the stems (if any) and the capture (if any), each behind a flag.
 * Version 1 (stems only, "SWSTEMS1"): still read, so sessions saved by older builds open with their stems.
 */
#ifndef SW_STATE_H
#define SW_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "sw_link.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A captured region as read back from a state: planar, channels x frames. */
typedef struct SwCapture {
    int channels; /* 1 (the capture was mono: left == right) or 2 */
    int rate;
    int64_t frames;
    int64_t position; /* its first frame on the host timeline */
    float* data;
} SwCapture;

/* A capture to save, read in place from the plugin's buffers (channel[1] unused when mono). */
typedef struct {
    int channels;
    int rate;
    int64_t frames;
    int64_t position;
    const float* channel[SW_MAX_CHANNELS];
} SwCaptureView;

/* Bytes sw_state_to_memory writes (either part may be NULL; 0 when both are). */
size_t sw_state_size(const SwStems* stems, const SwCaptureView* capture);
/* Serialize into out (cap >= sw_state_size); returns the bytes written, 0 on failure (nothing to save, a part
 * that is not valid, too little room). */
size_t sw_state_to_memory(const SwStems* stems, const SwCaptureView* capture, void* out, size_t cap);
/* Parse a version 2 or version 1 state. Returns 0 and sets *stems and *capture (each NULL when the state has
 * none; free with sw_stems_free / sw_capture_free), or -1 when the bytes are not a Stemweave state (checked: magic,
 * version, flags, every count and size). */
int sw_state_from_memory(const void* data, size_t size, SwStems** stems, SwCapture** capture);

int sw_state_write(const char* path, const SwStems* stems, const SwCaptureView* capture); /* 0 on success */
int sw_state_read(const char* path, SwStems** stems, SwCapture** capture);                /* as from_memory */

void sw_capture_free(SwCapture* capture);

#ifdef __cplusplus
}
#endif

#endif
