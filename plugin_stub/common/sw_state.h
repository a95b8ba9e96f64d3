/* Saving a plugin's returned stems with the session: a small binary file (LV2: beside the session through
 * state:makePath; VST3: the same bytes in the host's state chunk). Never called on the audio thread. */
#ifndef SW_STATE_H
#define SW_STATE_H

#include <stddef.h>

#include "sw_link.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes sw_state_to_memory writes for these stems. */
size_t sw_state_size(const SwStems* stems);
/* Serialize into out (cap >= sw_state_size); returns the bytes written, 0 on failure. */
size_t sw_state_to_memory(const SwStems* stems, void* out, size_t cap);
/* Parse; NULL when the bytes are not a Stemweave state (checked: magic, sizes). Free with sw_stems_free. */
SwStems* sw_state_from_memory(const void* data, size_t size);

int sw_state_write(const char* path, const SwStems* stems); /* 0 on success */
SwStems* sw_state_read(const char* path);

#ifdef __cplusplus
}
#endif

#endif
