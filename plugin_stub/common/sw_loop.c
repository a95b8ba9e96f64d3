/* Loop mode: host bar position -> loop frame, and the bar-synced swap to a newer loop. */
#include "sw_loop.h"

#include <math.h>
#include <stdlib.h>

void sw_loop_free(SwLoop* loop)
{
    if (!loop) return;
    free(loop->data);
    free(loop);
}

int sw_bar_clock_set(SwBarClock* clock, int64_t frame, double bar, double bar_beat, double beats_per_bar,
                     double frames_per_beat)
{
    if (!isfinite(bar) || !isfinite(bar_beat) || !isfinite(beats_per_bar) || !isfinite(frames_per_beat) ||
        beats_per_bar <= 0.0 || frames_per_beat <= 0.0 || bar_beat < 0.0 || bar_beat > beats_per_bar ||
        fabs(bar) > 1e12)
        return -1;
    clock->anchor_frame = frame;
    clock->anchor_bars = bar + bar_beat / beats_per_bar;
    clock->frames_per_bar = beats_per_bar * frames_per_beat;
    clock->valid = 1;
    return 0;
}

int sw_bar_clock_update(SwBarClock* clock, int64_t frame, double bar, double bar_beat, double beats_per_bar,
                        double frames_per_beat)
{
    SwBarClock fresh = *clock;
    if (sw_bar_clock_set(&fresh, frame, bar, bar_beat, beats_per_bar, frames_per_beat) != 0) return -1;
    if (clock->valid && fabs(fresh.frames_per_bar - clock->frames_per_bar) <= 1e-9 * clock->frames_per_bar) {
        const double off = (sw_bar_clock_bars(clock, frame) - fresh.anchor_bars) * clock->frames_per_bar;
        if (fabs(off) <= frames_per_beat / 960.0 + 1.0) return 0; /* the same timeline, within the host's ticks */
    }
    *clock = fresh;
    return 0;
}

double sw_bar_clock_bars(const SwBarClock* clock, int64_t frame)
{
    return clock->anchor_bars + (double)(frame - clock->anchor_frame) / clock->frames_per_bar;
}

int64_t sw_bar_of(double bars) { return (int64_t)floor(bars + 1e-9); }

int64_t sw_loop_index(const SwLoop* loop, double bars, double frames_per_bar)
{
    const int64_t bar = sw_bar_of(bars);
    double into = (bars - (double)bar) * frames_per_bar; /* frames into the host's bar */
    if (into < 0.0) into = 0.0;                          /* rounding just below the bar line */
    const int64_t k = (int64_t)floor(into + 1e-6);
    if (k >= loop->bar_frames) return -1; /* the host's bar is longer than the loop's: silence until the next */
    int64_t b = bar % loop->bars;
    if (b < 0) b += loop->bars;
    return b * loop->bar_frames + k;
}

void sw_loop_player_init(SwLoopPlayer* player)
{
    player->current = NULL;
    player->pending = NULL;
    player->last_bar = 0;
    player->started = 0;
}

SwLoop* sw_loop_player_offer(SwLoopPlayer* player, SwLoop* loop)
{
    if (!loop) return NULL;
    const SwLoop* newest = player->pending ? player->pending : player->current;
    if (newest && loop->version == newest->version && loop->serial == newest->serial) return loop; /* the same mix */
    SwLoop* displaced = player->pending;
    player->pending = loop;
    return displaced;
}

static SwLoop* swap(SwLoopPlayer* player)
{
    SwLoop* old = player->current;
    player->current = player->pending;
    player->pending = NULL;
    return old;
}

/* The host's position in bars at frame f and its bar length in frames: its clock, else the loop's own bars. */
static double position(const SwLoopPlayer* player, const SwBarClock* clock, int64_t f, double* frames_per_bar)
{
    if (clock && clock->valid) {
        *frames_per_bar = clock->frames_per_bar;
        return sw_bar_clock_bars(clock, f);
    }
    *frames_per_bar = (double)player->current->bar_frames;
    return (double)f / (double)player->current->bar_frames;
}

SwLoop* sw_loop_player_render(SwLoopPlayer* player, const SwBarClock* clock, int64_t frame, int rolling,
                              float* const out[2], uint32_t n)
{
    SwLoop* retired = NULL;
    if (player->pending && (!player->current || !rolling)) retired = swap(player); /* nothing audible to cut */
    if (!rolling || !player->current) {
        player->started = 0;
        return retired;
    }
    for (uint32_t i = 0; i < n; ++i) {
        const int64_t f = frame + (int64_t)i;
        double frames_per_bar;
        double bars = position(player, clock, f, &frames_per_bar);
        int64_t bar = sw_bar_of(bars);
        if (player->pending && player->started && bar != player->last_bar) {
            retired = swap(player); /* the first frame of a new bar: the newer loop from here on */
            bars = position(player, clock, f, &frames_per_bar);
            bar = sw_bar_of(bars);
        }
        player->last_bar = bar;
        player->started = 1;
        const SwLoop* loop = player->current;
        const int64_t k = sw_loop_index(loop, bars, frames_per_bar);
        if (k < 0) continue;
        out[0][i] += loop->data[k];
        if (out[1]) out[1][i] += loop->data[(loop->channels > 1 ? loop->frames : 0) + k];
    }
    return retired;
}
