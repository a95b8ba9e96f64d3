/* The bridge's wire protocol (bridge/protocol.py, docs/protocol.md) for C and C++ clients: JSON headers out,
 * replies in. No sockets, no threads, no allocation: the LV2 and VST3 builds share it through sw_link.c.
 *
 * A message is one JSON header frame followed by raw little-endian float32 planar frames:
 *   submit  -> header, then one frame per channel of the region (audio: true), then one frame per given stem
 *              (each channels x frames, channel-major);
 *   result  <- header (stems: [names], channels, frames, rate, position), then one frame per stem
 *              (channels x frames, channel-major);
 *   loop    -> header (since: the loop version held); <- header (serial, version, tempo, bars, beats_per_bar,
 *              bar_frames, rate, channels, frames, audio), then the loop's mix when audio is true (one frame,
 *              channels x frames, channel-major).
 */
#ifndef SW_PROTOCOL_H
#define SW_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SW_PROTOCOL_VERSION 1
#define SW_MAX_STEMS 16
#define SW_MAX_NAME 64
#define SW_MAX_MESSAGE 512
#define SW_MAX_CHANNELS 2
#define SW_HEADER_CAPACITY 1024

/* The plugin's four stem slots (the Slakh set the default models use), in the order of its enum ports. */
#define SW_SLOTS 4
extern const char* const SW_SLOT_NAMES[SW_SLOTS];

typedef enum { SW_TASK_SEPARATE = 0, SW_TASK_ACCOMPANY = 1 } SwTask;

typedef enum {
    SW_MSG_UNKNOWN = 0,
    SW_MSG_HELLO,
    SW_MSG_ACCEPTED,
    SW_MSG_PROGRESS,
    SW_MSG_PARTIAL,
    SW_MSG_RESULT,
    SW_MSG_ERROR,
    SW_MSG_STATUS,
    SW_MSG_HEARTBEAT,
    SW_MSG_LOOP
} SwMessageType;

/* A decoded reply header: the fields a client acts on. */
typedef struct {
    SwMessageType type;
    int64_t req;        /* -1 when absent or not an integer */
    char job[SW_MAX_NAME + 1];
    double fraction;    /* progress */
    char code[SW_MAX_NAME + 1];       /* error */
    char message[SW_MAX_MESSAGE + 1]; /* error */
    int channels;
    int64_t frames;
    int rate;
    int has_position;
    int64_t position;
    int n_stems;
    char stems[SW_MAX_STEMS][SW_MAX_NAME + 1];
    /* loop */
    int64_t serial;     /* 0: no loop; -1 when absent or invalid */
    int64_t version;
    double tempo;
    int bars;
    int beats_per_bar;
    int64_t bar_frames;
    int audio;          /* the mix follows */
    char warning[SW_MAX_MESSAGE + 1]; /* result: the first of info.warnings (a model below the quality bar) */
} SwReply;

/* Headers a client sends; each writes a NUL-terminated JSON object into out and returns its length, or -1 when
 * it does not fit. */
int sw_header_hello(char* out, size_t cap, int64_t req, const char* client);
int sw_header_heartbeat(char* out, size_t cap, int64_t req);
int sw_header_cancel(char* out, size_t cap, int64_t req, const char* job);
/* Ask for the live loop unless version `since` (>= 0) is the one held. */
int sw_header_loop(char* out, size_t cap, int64_t req, int64_t since);
/* separate: the region's audio follows (one frame per channel). accompany: the region is the given stem
 * `given` (one frame, channel-major) and the server generates `target`. */
int sw_header_submit(char* out, size_t cap, int64_t req, SwTask task, int rate, int channels, int64_t frames,
                     int64_t position, uint64_t seed, const char* given, const char* target);

/* Decode a reply header (len bytes, not NUL-terminated). Returns 0, or -1 when it is not a JSON object with
 * "v" == SW_PROTOCOL_VERSION and a "type". Fields absent from the header keep neutral values. */
int sw_reply_parse(const char* json, size_t len, SwReply* reply);

/* Low-level: find top-level key in a JSON object; on success value and value_len span its raw JSON text. */
int sw_json_find(const char* json, size_t len, const char* key, const char** value, size_t* value_len);

#ifdef __cplusplus
}
#endif

#endif
