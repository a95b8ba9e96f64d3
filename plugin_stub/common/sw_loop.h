/* Loop mode: the server's live loop (docs/protocol.md, "Loop") played in the host's timeline, bar for bar.
 *
 * Position arithmetic: the host reports where it is in bars (LV2 time:Position bar / barBeat / beatsPerBar /
 * beatsPerMinute; the VST3 play head's PPQ position and time signature) at some frame; SwBarClock extrapolates that
 * to any frame. Host bar b plays the loop's bar (b mod loop bars) from its first frame, at the loop's own rate:
 * when the host's tempo equals the loop's, the loop plays continuously and exactly; when it differs, every host
 * bar still starts on a loop bar (a slower host leaves silence at a bar's end, a faster one cuts it). A host with
 * no musical position (lv2file, a transport without BBT, pedalboard) is given the loop's own bars from frame 0.
 *
 * SwLoopPlayer swaps to a newer loop only at a host bar boundary (at once while nothing plays or the transport
 * stands). No allocation, no locks: the audio thread calls every function here except sw_loop_free.
 */
#ifndef SW_LOOP_H
#define SW_LOOP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A loop as the server sent it: the mix of its stems, channel-major (channels x frames). */
typedef struct SwLoop {
    int64_t serial;
    int64_t version; /* changes with the mix (a new loop or new gains) */
    double tempo;
    int bars;
    int beats_per_bar;
    int64_t bar_frames;
    int64_t frames; /* bars * bar_frames */
    int rate;
    int channels;
    float* data;
} SwLoop;

void sw_loop_free(SwLoop* loop);

/* Where the host is, in bars from its timeline's bar 0, extrapolated from its last report. */
typedef struct {
    int valid;             /* a report with a tempo and a meter arrived */
    int64_t anchor_frame;  /* the timeline frame of the report */
    double anchor_bars;    /* bars (fractional) at that frame */
    double frames_per_bar; /* at the reported tempo and meter */
} SwBarClock;

/* Set the clock from a host report: at timeline frame `frame` the host is at bar `bar` (0-based), `bar_beat`
 * beats into it, with `beats_per_bar` beats of `frames_per_beat` frames each. Returns 0, or -1 (clock left
 * unchanged) when the numbers cannot be a position: not finite, a bar beat outside [0, beats_per_bar], no tempo. */
int sw_bar_clock_set(SwBarClock* clock, int64_t frame, double bar, double bar_beat, double beats_per_bar,
                     double frames_per_beat);
/* The same from a host that reports its position every block, rounded to its tick grid (Ardour and JACK send
 * barBeat in whole ticks of 1/1920 beat, up to 12 frames off at 120 BPM): a report that agrees with the running
 * clock within two ticks, at the same bar length, keeps the clock, which stays exact to the frame from where it
 * was set (the transport's start, a locate, a tempo or meter change). Returns as sw_bar_clock_set. */
int sw_bar_clock_update(SwBarClock* clock, int64_t frame, double bar, double bar_beat, double beats_per_bar,
                        double frames_per_beat);
/* The host's position in bars at timeline frame `frame`. */
double sw_bar_clock_bars(const SwBarClock* clock, int64_t frame);

/* The bar a position is in (floor, tolerant of rounding just below a whole bar). */
int64_t sw_bar_of(double bars);
/* The loop frame host position `bars` plays (see above), or -1 for silence (a host bar longer than the loop's).
 * frames_per_bar: the host's bar length in frames (the clock's, or the loop's own for a host without one). */
int64_t sw_loop_index(const SwLoop* loop, double bars, double frames_per_bar);

typedef struct {
    SwLoop* current; /* playing */
    SwLoop* pending; /* newer, waits for the next bar boundary */
    int64_t last_bar;
    int started;
} SwLoopPlayer;

void sw_loop_player_init(SwLoopPlayer* player);
/* Queue a newer loop; returns the loop it displaces (an older pending one, or `loop` itself when it is not newer
 * than what plays), for the caller to dispose of, or NULL. */
SwLoop* sw_loop_player_offer(SwLoopPlayer* player, SwLoop* loop);
/* Add the loop into out[0..1][0..n) for timeline frames [frame, frame + n) (out[1] may be NULL: mono). Nothing
 * plays unless rolling. clock: the host's, or NULL / invalid for none. Returns the loop a swap retired (the
 * caller disposes of it), or NULL. */
SwLoop* sw_loop_player_render(SwLoopPlayer* player, const SwBarClock* clock, int64_t frame, int rolling,
                              float* const out[2], uint32_t n);

#ifdef __cplusplus
}
#endif

#endif
