/* Unit tests of the plugin's shared C code (no host, no server): the saved-state format (version 2 round trips,
 * version 1 files still load, damaged bytes are refused), the loop request and reply headers, loop mode's
 * position arithmetic and its bar-synced swap. `make -C plugin_stub check` builds and runs it; it prints one
 * line per failed check and exits 1 if any failed. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/sw_link.h"
#include "../common/sw_loop.h"
#include "../common/sw_protocol.h"
#include "../common/sw_state.h"

static int checks, failures;

#define CHECK(cond)                                                                                                   \
    do {                                                                                                              \
        ++checks;                                                                                                     \
        if (!(cond)) {                                                                                                \
            ++failures;                                                                                               \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                           \
        }                                                                                                             \
    } while (0)

static float sample(int64_t i, int salt) { return (float)sin(0.001 * (double)i * (salt + 1) + salt) * 0.5f; }

/* ---------------------------------------------------------------------------------------------------------------
 * Saved state */

static SwStems* make_stems(int n_stems, int channels, int64_t frames)
{
    SwStems* st = calloc(1, sizeof *st);
    st->task = SW_TASK_ACCOMPANY;
    st->n_stems = n_stems;
    st->channels = channels;
    st->rate = 48000;
    st->frames = frames;
    st->position = 123456789012LL;
    st->given_slot = 1;
    snprintf(st->job, sizeof st->job, "0123456789abcdef0123456789abcdef");
    for (int i = 0; i < n_stems; ++i) {
        snprintf(st->names[i], sizeof st->names[i], "stem%d", i);
        st->slot_of[i] = i < SW_SLOTS ? i : -1;
    }
    size_t n = (size_t)n_stems * (size_t)channels * (size_t)frames;
    st->data = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; ++i) st->data[i] = sample((int64_t)i, 1);
    return st;
}

static int same_stems(const SwStems* a, const SwStems* b)
{
    if (a->task != b->task || a->n_stems != b->n_stems || a->channels != b->channels || a->rate != b->rate ||
        a->frames != b->frames || a->position != b->position || a->given_slot != b->given_slot || strcmp(a->job, b->job))
        return 0;
    for (int i = 0; i < a->n_stems; ++i)
        if (strcmp(a->names[i], b->names[i]) || a->slot_of[i] != b->slot_of[i]) return 0;
    return !memcmp(a->data, b->data, (size_t)a->n_stems * (size_t)a->channels * (size_t)a->frames * sizeof(float));
}

/* The bytes a version 1 build wrote for these stems: its struct, then the samples. */
typedef struct {
    char magic[8];
    int32_t task, n_stems, channels, rate, given_slot, reserved;
    int64_t frames, position;
    char names[SW_MAX_STEMS][SW_MAX_NAME + 1];
    char job[SW_MAX_NAME + 1];
    int32_t slot_of[SW_MAX_STEMS];
} HeadV1;

static void* version1_bytes(const SwStems* st, size_t* size)
{
    HeadV1 h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, "SWSTEMS1", 8);
    h.task = st->task;
    h.n_stems = st->n_stems;
    h.channels = st->channels;
    h.rate = st->rate;
    h.given_slot = st->given_slot;
    h.frames = st->frames;
    h.position = st->position;
    memcpy(h.names, st->names, sizeof h.names);
    memcpy(h.job, st->job, sizeof h.job);
    for (int i = 0; i < SW_MAX_STEMS; ++i) h.slot_of[i] = st->slot_of[i];
    size_t samples = (size_t)st->n_stems * (size_t)st->channels * (size_t)st->frames * sizeof(float);
    *size = sizeof h + samples;
    char* bytes = malloc(*size);
    memcpy(bytes, &h, sizeof h);
    memcpy(bytes + sizeof h, st->data, samples);
    return bytes;
}

static void test_state(const char* tmp_dir)
{
    const int64_t frames = 1000;
    SwStems* stems = make_stems(4, 2, frames);
    float* left = malloc(frames * sizeof(float));
    float* right = malloc(frames * sizeof(float));
    for (int64_t i = 0; i < frames; ++i) left[i] = sample(i, 2), right[i] = sample(i, 3);
    SwCaptureView view = {.channels = 2, .rate = 48000, .frames = frames, .position = -77, .channel = {left, right}};

    /* stems and a stereo capture */
    size_t size = sw_state_size(stems, &view);
    CHECK(size > 0);
    char* bytes = malloc(size + 1);
    CHECK(sw_state_to_memory(stems, &view, bytes, size) == size);
    CHECK(sw_state_to_memory(stems, &view, bytes, size - 1) == 0); /* too little room */
    SwStems* st = NULL;
    SwCapture* c = NULL;
    CHECK(sw_state_from_memory(bytes, size, &st, &c) == 0);
    CHECK(st && same_stems(st, stems));
    CHECK(c && c->channels == 2 && c->rate == 48000 && c->frames == frames && c->position == -77);
    CHECK(c && !memcmp(c->data, left, frames * sizeof(float)) && !memcmp(c->data + frames, right, frames * sizeof(float)));
    sw_stems_free(st);
    sw_capture_free(c);

    /* every truncation, and one byte too many, is refused (never a crash, never a partial state) */
    int refused = 1;
    for (size_t n = 0; n < size; n += (n < 2400 ? 1 : 997)) {
        st = (SwStems*)1;
        c = (SwCapture*)1;
        if (sw_state_from_memory(bytes, n, &st, &c) != -1 || st || c) refused = 0;
    }
    CHECK(refused);
    bytes[size] = 0;
    CHECK(sw_state_from_memory(bytes, size + 1, &st, &c) == -1);

    /* damaged headers */
    char* bad = malloc(size);
    memcpy(bad, bytes, size);
    bad[0] = 'X';
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1); /* magic */
    memcpy(bad, bytes, size);
    bad[8] = 0; /* flags: nothing */
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1);
    memcpy(bad, bytes, size);
    bad[8] = 4; /* flags: unknown */
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1);
    memcpy(bad, bytes, size);
    bad[16 + 4] = 17; /* 17 stems */
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1);
    memcpy(bad, bytes, size);
    bad[16 + 8] = 3; /* 3 channels */
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1);
    memcpy(bad, bytes, size);
    memset(bad + 16 + 24, 0x7f, 8); /* a length far beyond the bytes there */
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1);
    memcpy(bad, bytes, size);
    bad[16] = 9; /* task */
    CHECK(sw_state_from_memory(bad, size, &st, &c) == -1);
    free(bad);
    free(bytes);

    /* a mono capture alone (captured, not yet separated) */
    SwCaptureView mono = {.channels = 1, .rate = 44100, .frames = frames, .position = 5, .channel = {left, NULL}};
    size = sw_state_size(NULL, &mono);
    bytes = malloc(size);
    CHECK(sw_state_to_memory(NULL, &mono, bytes, size) == size);
    CHECK(sw_state_from_memory(bytes, size, &st, &c) == 0 && !st && c && c->channels == 1 && c->rate == 44100);
    CHECK(c && !memcmp(c->data, left, frames * sizeof(float)));
    sw_capture_free(c);
    free(bytes);

    /* stems alone */
    size = sw_state_size(stems, NULL);
    bytes = malloc(size);
    CHECK(sw_state_to_memory(stems, NULL, bytes, size) == size);
    CHECK(sw_state_from_memory(bytes, size, &st, &c) == 0 && st && !c && same_stems(st, stems));
    sw_stems_free(st);
    free(bytes);

    /* nothing, or an invalid part, is not a state */
    CHECK(sw_state_size(NULL, NULL) == 0);
    SwCaptureView empty = view;
    empty.frames = 0;
    char room[64];
    CHECK(sw_state_to_memory(NULL, &empty, room, sizeof room) == 0);

    /* a version 1 file (stems only) still loads */
    bytes = version1_bytes(stems, &size);
    CHECK(sw_state_from_memory(bytes, size, &st, &c) == 0 && st && !c && same_stems(st, stems));
    sw_stems_free(st);
    CHECK(sw_state_from_memory(bytes, size - 4, &st, &c) == -1); /* a short version 1 file */
    free(bytes);

    /* through a file */
    char path[512];
    snprintf(path, sizeof path, "%s/state.swst", tmp_dir);
    CHECK(sw_state_write(path, stems, &view) == 0);
    CHECK(sw_state_read(path, &st, &c) == 0 && st && c && same_stems(st, stems) && c->frames == frames);
    sw_stems_free(st);
    sw_capture_free(c);
    snprintf(path, sizeof path, "%s/missing.swst", tmp_dir);
    CHECK(sw_state_read(path, &st, &c) == -1 && !st && !c);

    sw_stems_free(stems);
    free(left);
    free(right);
}

/* ---------------------------------------------------------------------------------------------------------------
 * The loop request and reply */

static void test_loop_protocol(void)
{
    char header[SW_HEADER_CAPACITY];
    int n = sw_header_loop(header, sizeof header, 42, 7);
    CHECK(n > 0 && !strcmp(header, "{\"v\":1,\"type\":\"loop\",\"req\":42,\"since\":7}"));
    CHECK(sw_header_loop(header, sizeof header, 1, -1) == -1);
    CHECK(sw_header_loop(header, 10, 1, 0) == -1); /* does not fit */

    const char* reply = "{\"v\":1,\"type\":\"loop\",\"req\":42,\"serial\":3,\"version\":9,\"tempo\":96.5,\"bars\":2,"
                        "\"beats_per_bar\":4,\"bar_frames\":119378,\"rate\":48000,\"channels\":2,\"frames\":238756,"
                        "\"dtype\":\"float32le\",\"audio\":true,\"playing\":false,\"stems\":[\"bass\",\"drums\"]}";
    SwReply r;
    CHECK(sw_reply_parse(reply, strlen(reply), &r) == 0);
    CHECK(r.type == SW_MSG_LOOP && r.req == 42 && r.serial == 3 && r.version == 9 && r.tempo == 96.5);
    CHECK(r.bars == 2 && r.beats_per_bar == 4 && r.bar_frames == 119378 && r.rate == 48000 && r.channels == 2);
    CHECK(r.frames == 238756 && r.audio == 1 && r.n_stems == 2);
    const char* none = "{\"v\":1,\"type\":\"loop\",\"req\":1,\"serial\":0,\"version\":0,\"audio\":false}";
    CHECK(sw_reply_parse(none, strlen(none), &r) == 0 && r.serial == 0 && r.audio == 0);
    const char* odd = "{\"v\":1,\"type\":\"loop\",\"serial\":-4,\"bars\":0,\"tempo\":-1,\"audio\":1}";
    CHECK(sw_reply_parse(odd, strlen(odd), &r) == 0 && r.serial == -1 && r.bars == 0 && r.tempo == 0.0 && r.audio == 0);
    CHECK(r.warning[0] == '\0');

    /* a result's quality warning (the model's card says it measured below the bar): the first of info.warnings */
    const char* warned = "{\"v\":1,\"type\":\"result\",\"req\":5,\"stems\":[\"bass\"],\"info\":{\"method\":\"prior\","
                         "\"warnings\":[\"msdm-cpu-small measures below the \\\"bar\\\"\",\"second\"]},\"frames\":4}";
    CHECK(sw_reply_parse(warned, strlen(warned), &r) == 0 && r.type == SW_MSG_RESULT && r.frames == 4);
    CHECK(!strcmp(r.warning, "msdm-cpu-small measures below the \"bar\""));
    const char* quiet = "{\"v\":1,\"type\":\"result\",\"info\":{\"warnings\":[]},\"frames\":4}";
    CHECK(sw_reply_parse(quiet, strlen(quiet), &r) == 0 && r.warning[0] == '\0');
}

/* ---------------------------------------------------------------------------------------------------------------
 * Loop mode: position arithmetic and the bar-synced swap */

static SwLoop* make_loop(int64_t serial, int bars, int64_t bar_frames, int channels, int salt)
{
    SwLoop* loop = calloc(1, sizeof *loop);
    *loop = (SwLoop){.serial = serial, .version = serial * 10, .tempo = 120.0, .bars = bars, .beats_per_bar = 4,
                     .bar_frames = bar_frames, .frames = bars * bar_frames, .rate = 48000, .channels = channels};
    loop->data = malloc((size_t)channels * (size_t)loop->frames * sizeof(float));
    for (int64_t i = 0; i < channels * loop->frames; ++i) loop->data[i] = (float)(salt * 1000000 + i) * 1e-6f;
    return loop;
}

static void test_loop_position(void)
{
    SwLoop* loop = make_loop(1, 3, 96000, 1, 1);
    SwBarClock clock = {0};
    /* validation: the clock keeps its last good report */
    CHECK(sw_bar_clock_set(&clock, 0, 0, 0, 4, 0.0) == -1 && !clock.valid);
    CHECK(sw_bar_clock_set(&clock, 0, 0, NAN, 4, 24000) == -1);
    CHECK(sw_bar_clock_set(&clock, 0, 0, 5.0, 4, 24000) == -1);
    CHECK(sw_bar_clock_set(&clock, 0, 0, -0.5, 4, 24000) == -1);
    CHECK(sw_bar_clock_set(&clock, 0, INFINITY, 0, 4, 24000) == -1);
    CHECK(sw_bar_clock_set(&clock, 0, 0, 0, 0, 24000) == -1 && !clock.valid);

    /* the host at the loop's tempo (120 BPM 4/4 at 48 kHz: 96000 frames a bar), reporting bar 5 beat 1.5 at frame
     * 1000: every frame plays the loop continuously, exactly */
    CHECK(sw_bar_clock_set(&clock, 1000, 5, 1.5, 4, 24000.0) == 0 && clock.valid);
    const int64_t at_report = (5 % 3) * 96000 + 36000; /* bar 5 -> loop bar 2, 1.5 beats in */
    int exact = 1;
    for (int64_t f = 1000 - 300000; f < 1000 + 700000; f += 7) {
        int64_t want = ((at_report + (f - 1000)) % loop->frames + loop->frames) % loop->frames;
        if (sw_loop_index(loop, sw_bar_clock_bars(&clock, f), clock.frames_per_bar) != want) exact = 0;
    }
    CHECK(exact);
    /* far into a session: still exact */
    CHECK(sw_bar_clock_set(&clock, 960000000, 10000, 0, 4, 24000.0) == 0);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 960000000 + 95999), clock.frames_per_bar) ==
          (10000 % 3) * 96000 + 95999);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 960000000 + 96000), clock.frames_per_bar) ==
          ((10000 + 1) % 3) * 96000);
    /* before bar 0 (a count-in): bar -1 plays the loop's last bar */
    CHECK(sw_bar_clock_set(&clock, 0, 0, 0, 4, 24000.0) == 0);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, -96000), clock.frames_per_bar) == 2 * 96000);

    /* a host reporting every block in whole ticks (1/1920 beat, as Ardour does): the clock stays on its line */
    SwBarClock ticks = {0};
    CHECK(sw_bar_clock_update(&ticks, 0, 0, 0, 4, 24000.0) == 0);
    int steady = 1;
    for (int64_t f = 1024; f < 2000000; f += 1024) {
        double beats = floor((double)f / 24000.0 * 1920.0) / 1920.0; /* the host's tick-rounded position */
        double bar_no = floor(beats / 4.0);
        CHECK(sw_bar_clock_update(&ticks, f, bar_no, (float)(beats - 4.0 * bar_no), 4, 24000.0) == 0);
        if (ticks.anchor_frame != 0 || sw_loop_index(loop, sw_bar_clock_bars(&ticks, f), ticks.frames_per_bar) !=
                                           f % loop->frames)
            steady = 0;
    }
    CHECK(steady);
    /* a locate (a report off the line) or a new tempo re-anchors it */
    CHECK(sw_bar_clock_update(&ticks, 5000000, 1, 0, 4, 24000.0) == 0 && ticks.anchor_frame == 5000000);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&ticks, 5000000 + 10), ticks.frames_per_bar) == 96000 + 10);
    CHECK(sw_bar_clock_update(&ticks, 5000100, 1, 0.025, 4, 20000.0) == 0 && ticks.frames_per_bar == 80000.0);
    CHECK(sw_bar_clock_update(&ticks, 5000200, 1, NAN, 4, 20000.0) == -1 && ticks.anchor_frame == 5000100);

    /* the host slower (100 BPM: 115200 frames a bar): each bar starts a loop bar, then silence to the bar line */
    CHECK(sw_bar_clock_set(&clock, 0, 0, 0, 4, 28800.0) == 0);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 115200 + 95999), clock.frames_per_bar) == 96000 + 95999);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 115200 + 96000), clock.frames_per_bar) == -1);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 2 * 115200), clock.frames_per_bar) == 2 * 96000);
    /* faster (150 BPM: 76800 frames a bar): each loop bar is cut at the host's bar line */
    CHECK(sw_bar_clock_set(&clock, 0, 0, 0, 4, 19200.0) == 0);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 76799), clock.frames_per_bar) == 76799);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 76800), clock.frames_per_bar) == 96000);
    /* 3/4 at the same beat length: bars of 72000 frames */
    CHECK(sw_bar_clock_set(&clock, 0, 0, 0, 3, 24000.0) == 0);
    CHECK(sw_loop_index(loop, sw_bar_clock_bars(&clock, 72000 + 10), clock.frames_per_bar) == 96000 + 10);
    sw_loop_free(loop);
}

/* Render frames [0, total) in blocks of `block`, handing loop b over before the first block that starts at or
 * after frame `offer_at`; *offered: that block's first frame. */
static float* render(SwLoopPlayer* player, SwLoop* a, SwLoop* b, int64_t offer_at, int64_t total, uint32_t block,
                     const SwBarClock* clock, SwLoop** retired, int64_t* offered)
{
    float* out = calloc((size_t)total, sizeof(float));
    sw_loop_player_init(player);
    *retired = NULL;
    *offered = -1;
    CHECK(sw_loop_player_offer(player, a) == NULL);
    for (int64_t f = 0; f < total; f += block) {
        uint32_t n = (uint32_t)(total - f < block ? total - f : block);
        if (*offered < 0 && f >= offer_at) {
            CHECK(sw_loop_player_offer(player, b) == NULL);
            *offered = f;
        }
        float* const ch[2] = {out + f, NULL};
        SwLoop* old = sw_loop_player_render(player, clock, f, 1, ch, n);
        if (old) {
            CHECK(!*retired);
            *retired = old;
        }
    }
    return out;
}

static void test_loop_player(void)
{
    const int64_t bar = 1000, total = 9000;
    const uint32_t blocks[] = {1, 7, 64, 333, 512, 4096};
    SwBarClock host = {0};
    CHECK(sw_bar_clock_set(&host, 0, 0, 0, 4, 250.0) == 0); /* bars of 1000 frames */
    for (int with_clock = 0; with_clock < 2; ++with_clock)
        for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; ++k) {
            SwLoop* a = make_loop(1, 2, bar, 1, 1);
            SwLoop* b = make_loop(2, 2, bar, 1, 2);
            SwLoopPlayer player;
            SwLoop* retired;
            int64_t offered;
            /* b arrives during bar 2 (frame 2345 or the next block start): a plays up to the next bar line, b from
             * there on, at the same bar; whatever the block size, the swap lands on the line to the sample */
            float* out = render(&player, a, b, 2345, total, blocks[k], with_clock ? &host : NULL, &retired, &offered);
            const int64_t line = (offered + bar - 1) / bar * bar;
            CHECK(offered >= 2345 && line <= 5000);
            int exact = 1;
            for (int64_t f = 0; f < total; ++f) {
                const SwLoop* want = f < line ? a : b;
                if (out[f] != want->data[f % want->frames]) exact = 0;
            }
            CHECK(exact);
            CHECK(retired == a && player.current == b && !player.pending);
            free(out);
            sw_loop_free(a);
            sw_loop_free(b);
        }

    /* a stereo loop into stereo outputs; a mono loop into both */
    SwLoopPlayer player;
    sw_loop_player_init(&player);
    SwLoop* stereo = make_loop(1, 1, 100, 2, 3);
    CHECK(sw_loop_player_offer(&player, stereo) == NULL);
    float l[50] = {0}, r[50] = {0};
    float* const out[2] = {l, r};
    CHECK(sw_loop_player_render(&player, NULL, 120, 1, out, 50) == NULL);
    CHECK(l[0] == stereo->data[20] && r[0] == stereo->data[100 + 20] && l[49] == stereo->data[69]);
    /* the same mix offered again is handed straight back */
    SwLoop* same = make_loop(1, 1, 100, 2, 3);
    CHECK(sw_loop_player_offer(&player, same) == same);
    sw_loop_free(same);
    /* standing transport: nothing plays, and a pending loop swaps at once */
    SwLoop* mono = make_loop(2, 1, 100, 1, 4);
    CHECK(sw_loop_player_offer(&player, mono) == NULL);
    memset(l, 0, sizeof l);
    memset(r, 0, sizeof r);
    CHECK(sw_loop_player_render(&player, NULL, 0, 0, out, 50) == stereo);
    CHECK(player.current == mono && l[0] == 0.0f && r[49] == 0.0f);
    CHECK(sw_loop_player_render(&player, NULL, 30, 1, out, 50) == NULL);
    CHECK(l[0] == mono->data[30] && r[0] == mono->data[30]);
    /* a newer loop replacing one still pending: the older pending one is handed back */
    SwLoop* third = make_loop(3, 1, 100, 1, 5);
    SwLoop* fourth = make_loop(4, 1, 100, 1, 6);
    CHECK(sw_loop_player_offer(&player, third) == NULL);
    CHECK(sw_loop_player_offer(&player, fourth) == third);
    sw_loop_free(third);
    sw_loop_free(stereo);
    sw_loop_free(player.current);
    sw_loop_free(player.pending);
}

int main(int argc, char** argv)
{
    test_state(argc > 1 ? argv[1] : "/tmp");
    test_loop_protocol();
    test_loop_position();
    test_loop_player();
    printf("sw_test: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
