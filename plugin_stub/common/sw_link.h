/* The plugin's link to `stemweave serve`: a thread of its own owns the ZeroMQ DEALER socket; the audio thread talks
 * to it only through lock-free single-producer/single-consumer hand-overs (no locks, no allocation, no system calls
 * on the audio side). Shared by the LV2 and the VST3 builds.
 *
 * Audio thread (real-time safe):  sw_link_submit, sw_link_cancel, sw_link_take_result, sw_link_retire,
 *                                 sw_link_state, sw_link_progress, sw_link_online, sw_link_audio_released,
 *                                 sw_link_loop_enable, sw_link_take_loop, sw_link_retire_loop, sw_link_loop_state.
 * Any other thread:               sw_link_new, sw_link_free, sw_link_wait, sw_link_wait_loop.
 */
#ifndef SW_LINK_H
#define SW_LINK_H

#include <stdint.h>

#include "sw_loop.h"
#include "sw_protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SW_DEFAULT_ENDPOINT "tcp://127.0.0.1:5557"

/* What the status port shows. */
typedef enum {
    SW_STATE_IDLE = 0,
    SW_STATE_CAPTURING = 1, /* set by the plugin, never by the link */
    SW_STATE_WORKING = 2,
    SW_STATE_READY = 3,
    SW_STATE_ERROR = 4,
    SW_STATE_OFFLINE = 5
} SwState;

/* A finished job's stems, as the link hands them to the audio thread. Owned by whoever holds the pointer; the
 * audio thread gives it back with sw_link_retire, and the link frees it. */
typedef struct SwStems {
    SwTask task;
    int n_stems;
    int channels;
    int rate;
    int64_t frames;
    int64_t position; /* the region's first frame on the host timeline */
    int given_slot;   /* accompany: the slot the capture was (-1 for separate) */
    char names[SW_MAX_STEMS][SW_MAX_NAME + 1];
    char job[SW_MAX_NAME + 1];
    int slot_of[SW_MAX_STEMS]; /* stem index -> plugin slot (SW_SLOT_NAMES), -1 when it has none */
    float* data;               /* n_stems x channels x frames, stem-major then channel-major */
} SwStems;

/* A job request from the audio thread. The channel pointers must stay valid and unchanged until
 * sw_link_audio_released(link, seq) says the link has sent them. */
typedef struct {
    SwTask task;
    int rate;
    int channels;
    int64_t frames;
    int64_t position;
    uint64_t seed;
    int given_slot;  /* accompany */
    int target_slot; /* accompany */
    const float* audio[SW_MAX_CHANNELS];
} SwRequest;

/* What loop mode shows (the plugin's Loop state port; SW_LOOP_PLAYING is the plugin's own). */
typedef enum {
    SW_LOOP_OFF = 0,     /* loop mode is off */
    SW_LOOP_WAITING = 1, /* asking; the server has made no loop yet */
    SW_LOOP_PLAYING = 2, /* a loop plays (set by the plugin) */
    SW_LOOP_READY = 2,   /* the link holds the newest loop */
    SW_LOOP_NONE = 3,    /* the server runs no loop engine (start it with --osc-port) */
    SW_LOOP_RATE = 4,    /* the loop's sample rate is not the host's */
    SW_LOOP_OFFLINE = 5  /* no server */
} SwLoopState;

typedef struct SwLink SwLink;

/* Start the link thread, connecting to endpoint (NULL: $STEMWEAVE_ENDPOINT, else SW_DEFAULT_ENDPOINT). */
SwLink* sw_link_new(const char* endpoint, const char* client_name);
void sw_link_free(SwLink* link);

/* Queue a job; returns its sequence number (> 0), or 0 when the queue is full. A new job replaces the one in
 * flight (which is cancelled). */
uint64_t sw_link_submit(SwLink* link, const SwRequest* request);
/* Cancel the job in flight (if any). */
void sw_link_cancel(SwLink* link);
/* 1 once the link has sent (or dropped) the audio of job seq, so its buffers may be reused. */
int sw_link_audio_released(const SwLink* link, uint64_t seq);
/* The newest finished result not yet taken, or NULL. */
SwStems* sw_link_take_result(SwLink* link);
/* Give back stems the audio thread no longer plays; the link frees them. */
void sw_link_retire(SwLink* link, SwStems* stems);

/* Loop mode: while on, the link polls the server's live loop (every LOOP_POLL_S) for a host at `rate` Hz and
 * hands each new one over; off forgets what it held, so turning it on again fetches the loop afresh. */
void sw_link_loop_enable(SwLink* link, int on, int rate);
/* The newest loop not yet taken, or NULL. */
SwLoop* sw_link_take_loop(SwLink* link);
/* Give back a loop the audio thread no longer plays; the link frees it. */
void sw_link_retire_loop(SwLink* link, SwLoop* loop);
SwLoopState sw_link_loop_state(const SwLink* link);
/* Not real-time: block until the server has answered a loop request made after this call began, or timeout_s
 * has passed. Returns 1 when it answered. An offline render waits here for its first loop. */
int sw_link_wait_loop(SwLink* link, double timeout_s);

SwState sw_link_state(const SwLink* link);
float sw_link_progress(const SwLink* link);
int sw_link_online(const SwLink* link);

/* Not real-time: block until job seq has ended (result, error, cancel, server gone) or timeout_s has passed.
 * Returns 1 when it ended. Used by the LV2 worker in freewheel so offline renders are sample-accurate. */
int sw_link_wait(SwLink* link, uint64_t seq, double timeout_s);

/* Free a SwStems (non-real-time). */
void sw_stems_free(SwStems* stems);

#ifdef __cplusplus
}
#endif

#endif
