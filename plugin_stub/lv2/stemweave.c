/* Stemweave LV2 stub: captures what the host plays through it at its place on the host timeline, sends it to
 * `stemweave serve` (separate / accompany) and plays the returned stems back where they were captured.
 *
 * Shape (the LV2 book's eg-sampler): run() only copies audio and swaps pointers. Socket I/O lives on the link's
 * own thread (common/sw_link.c) behind lock-free hand-overs; in freewheel (offline export) run() asks the host's
 * worker to wait for the job, and hosts run that work synchronously there, so an offline render gets the stems at
 * the exact sample its capture ended. Timing is exact to the sample: the block is split at every time:Position
 * event and at the frame a capture completes.
 *
 * Loop mode (common/sw_loop.h): the link polls the server's live loop; run() plays it bar for bar with the host's
 * time:Position (bar, barBeat, beatsPerBar, beatsPerMinute) and swaps to a newer loop on a bar line.
 * State (common/sw_state.h): the returned stems and the last complete capture are saved with the session.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lv2/atom/atom.h>
#include <lv2/atom/util.h>
#include <lv2/core/lv2.h>
#include <lv2/core/lv2_util.h>
#include <lv2/log/log.h>
#include <lv2/log/logger.h>
#include <lv2/state/state.h>
#include <lv2/time/time.h>
#include <lv2/urid/urid.h>
#include <lv2/worker/worker.h>

#include "../common/sw_link.h"
#include "../common/sw_loop.h"
#include "../common/sw_state.h"

#define SW_URI "https://stemweave.dev/plugins/stemweave"
#define SW_STATE_URI SW_URI "#region"
#define DEFAULT_MAX_CAPTURE_S 120.0
#define FIRST_LOOP_WAIT_S 10.0 /* an offline render waits this long for the server's loop before it starts */

typedef enum {
    P_IN_L = 0,
    P_IN_R,
    P_OUT_L,
    P_OUT_R,
    P_CONTROL,
    P_CAPTURE,
    P_MARK_START,
    P_MARK_END,
    P_SEPARATE,
    P_ACCOMPANY,
    P_CANCEL,
    P_CAPTURE_AS,
    P_TARGET,
    P_SOLO,
    P_DRY,
    P_GAIN_BASS,
    P_GAIN_DRUMS,
    P_GAIN_GUITAR,
    P_GAIN_PIANO,
    P_LOOP,
    P_FREEWHEEL,
    P_STATUS,
    P_PROGRESS,
    P_LATENCY,
    P_CAPTURED,
    P_LOOP_MODE,
    P_LOOP_STATE,
    P_COUNT
} PortIndex;

typedef struct {
    LV2_URID atom_Blank, atom_Object, atom_Float, atom_Double, atom_Long, atom_Int, atom_Path, atom_Chunk;
    LV2_URID time_Position, time_frame, time_speed, time_bar, time_barBeat, time_beatsPerBar, time_beatsPerMinute;
    LV2_URID sw_region;
} Uris;

/* One capture buffer: the link reads it from submit until sw_link_audio_released(seq). */
typedef struct {
    float* data[2];
    uint64_t seq; /* the job reading it, 0 when free */
} CaptureBuffer;

/* The last complete capture, as save() (another thread) may read it: a sequence lock. The audio thread makes seq
 * odd while it changes these, and moves `buffer` away before it reuses that buffer; save() copies the samples and
 * keeps the copy only if seq did not move meanwhile. */
typedef struct {
    atomic_uint seq;
    atomic_int buffer; /* -1: none */
    atomic_llong frames, position;
    atomic_int mono;
} SavedCapture;

/* What the worker is asked to wait for (offline renders only). */
typedef enum { WAIT_JOB = 1, WAIT_LOOP = 2 } WaitKind;
typedef struct {
    uint32_t kind;
    uint64_t seq;
} WorkMessage;

typedef struct {
    const float* in[2];
    float* out[2];
    const LV2_Atom_Sequence* control;
    const float* c[P_COUNT];
    float* status;
    float* progress;
    float* latency;
    float* captured;
    float* loop_state;

    LV2_URID_Map* map;
    LV2_Worker_Schedule* schedule;
    LV2_Log_Logger logger;
    Uris uris;
    double rate;
    SwLink* link;

    /* host timeline */
    bool has_transport; /* a time:Position ever arrived; without one the timeline is our own frame count */
    int64_t frame;      /* timeline frame of the next sample */
    float speed;

    /* capture */
    CaptureBuffer buffers[2];
    int64_t max_frames;
    int buffer;        /* the buffer being (or last) captured into */
    bool capturing;    /* armed and recording */
    bool armed;        /* capture on; for marks: not yet complete */
    bool complete;     /* a finished capture waits in buffers[buffer] */
    bool mono;         /* every captured sample so far had left == right */
    int64_t cap_start; /* timeline frame of the first captured sample */
    int64_t cap_len;   /* frames captured (contiguous from cap_start) */
    int64_t cap_want;  /* marks: the span's length; 0 while the toggle decides */
    float last_capture, last_mark_start, last_mark_end;
    SavedCapture saved;

    /* actions */
    int pending; /* -1 none, else SwTask to submit when the capture is complete */
    float last_separate, last_accompany, last_cancel;
    uint64_t job_seq; /* the last job submitted */

    /* playback */
    SwStems* stems;
    SwStems* restored; /* stems from state restore, swapped in by the next run() (__atomic builtins) */

    /* loop mode */
    bool loop_on;
    bool loop_waited; /* an offline render already waited for its first loop */
    SwBarClock clock; /* the host's bars, when its time:Position has them */
    SwLoopPlayer loops;
} Plugin;

/* ----------------------------------------------------------------------------------------------------------
 * Instantiation */

/* Whether the n bytes at p can be read, asked of the kernel (a pipe write copies them: EFAULT, not a crash).
 * lv2file 0.95 passes a dangling feature whose URI points at reused stack memory, so instantiate() checks
 * every feature before reading it; instantiate only, never the audio thread. */
static bool readable(const void* p, size_t n)
{
    int fds[2];
    if (!p) return false;
    if (pipe(fds)) return true; /* cannot probe: trust the host */
    ssize_t written = write(fds[1], p, n);
    close(fds[0]);
    close(fds[1]);
    return written == (ssize_t)n;
}

/* A host feature's data, or NULL. Tolerates hosts that leave a feature without a URI, or with a URI that
 * points nowhere (lv2file 0.95 does both). */
static void* feature(const LV2_Feature* const* features, const char* uri)
{
    size_t n = strlen(uri) + 1; /* strncmp reads at most this much: all of it is checked first */
    for (const LV2_Feature* const* f = features; f && *f; ++f)
        if (readable(*f, sizeof **f) && readable((*f)->URI, n) && !strncmp((*f)->URI, uri, n)) return (*f)->data;
    return NULL;
}

static LV2_Handle instantiate(const LV2_Descriptor* descriptor, double rate, const char* bundle_path,
                              const LV2_Feature* const* features)
{
    (void)descriptor;
    (void)bundle_path;
    Plugin* self = calloc(1, sizeof *self);
    if (!self) return NULL;
    LV2_Log_Log* log = feature(features, LV2_LOG__log);
    self->map = feature(features, LV2_URID__map);
    self->schedule = feature(features, LV2_WORKER__schedule);
    lv2_log_logger_init(&self->logger, self->map, log);
    if (!self->map) {
        lv2_log_error(&self->logger, "stemweave: the host lacks the required feature <%s>\n", LV2_URID__map);
        free(self);
        return NULL;
    }
    LV2_URID_Map* m = self->map;
    Uris* u = &self->uris;
    u->atom_Blank = m->map(m->handle, LV2_ATOM__Blank);
    u->atom_Object = m->map(m->handle, LV2_ATOM__Object);
    u->atom_Float = m->map(m->handle, LV2_ATOM__Float);
    u->atom_Double = m->map(m->handle, LV2_ATOM__Double);
    u->atom_Long = m->map(m->handle, LV2_ATOM__Long);
    u->atom_Int = m->map(m->handle, LV2_ATOM__Int);
    u->atom_Path = m->map(m->handle, LV2_ATOM__Path);
    u->atom_Chunk = m->map(m->handle, LV2_ATOM__Chunk);
    u->time_Position = m->map(m->handle, LV2_TIME__Position);
    u->time_frame = m->map(m->handle, LV2_TIME__frame);
    u->time_speed = m->map(m->handle, LV2_TIME__speed);
    u->time_bar = m->map(m->handle, LV2_TIME__bar);
    u->time_barBeat = m->map(m->handle, LV2_TIME__barBeat);
    u->time_beatsPerBar = m->map(m->handle, LV2_TIME__beatsPerBar);
    u->time_beatsPerMinute = m->map(m->handle, LV2_TIME__beatsPerMinute);
    u->sw_region = m->map(m->handle, SW_STATE_URI);

    self->rate = rate;
    double seconds = DEFAULT_MAX_CAPTURE_S;
    const char* env = getenv("STEMWEAVE_MAX_CAPTURE_S");
    if (env && atof(env) > 0) seconds = atof(env);
    self->max_frames = (int64_t)(seconds * rate);
    for (int b = 0; b < 2; ++b)
        for (int ch = 0; ch < 2; ++ch) {
            /* calloc of this size maps zero pages lazily: memory is committed only as the capture grows */
            self->buffers[b].data[ch] = calloc((size_t)self->max_frames, sizeof(float));
            if (!self->buffers[b].data[ch]) {
                lv2_log_error(&self->logger, "stemweave: cannot allocate %.0f s of capture\n", seconds);
                for (int bb = 0; bb < 2; ++bb)
                    for (int cc = 0; cc < 2; ++cc) free(self->buffers[bb].data[cc]);
                free(self);
                return NULL;
            }
        }
    self->link = sw_link_new(NULL, "stemweave-lv2");
    if (!self->link) lv2_log_warning(&self->logger, "stemweave: no server link: the plugin passes audio through\n");
    self->pending = -1;
    self->speed = 1.0f;
    self->last_capture = 0.0f;
    atomic_init(&self->saved.seq, 0);
    atomic_init(&self->saved.buffer, -1);
    sw_loop_player_init(&self->loops);
    return self;
}

static void connect_port(LV2_Handle instance, uint32_t port, void* data)
{
    Plugin* self = instance;
    switch ((PortIndex)port) {
    case P_IN_L: self->in[0] = data; break;
    case P_IN_R: self->in[1] = data; break;
    case P_OUT_L: self->out[0] = data; break;
    case P_OUT_R: self->out[1] = data; break;
    case P_CONTROL: self->control = data; break;
    case P_STATUS: self->status = data; break;
    case P_PROGRESS: self->progress = data; break;
    case P_LATENCY: self->latency = data; break;
    case P_CAPTURED: self->captured = data; break;
    case P_LOOP_STATE: self->loop_state = data; break;
    default:
        if (port < P_COUNT) self->c[port] = data;
        break;
    }
}

static void activate(LV2_Handle instance)
{
    Plugin* self = instance;
    self->frame = 0;
    self->has_transport = false;
    self->speed = 1.0f;
    self->clock.valid = 0;
}

static float control(const Plugin* self, PortIndex port, float fallback)
{
    return self->c[port] ? *self->c[port] : fallback;
}

/* ----------------------------------------------------------------------------------------------------------
 * Capture and jobs (audio thread) */

/* Publish (audio thread, or restore) what save() sees as the last complete capture: buffer -1 for none. */
static void publish_capture(Plugin* self, int buffer, int64_t frames, int64_t position, bool mono)
{
    SavedCapture* c = &self->saved;
    atomic_fetch_add_explicit(&c->seq, 1, memory_order_relaxed); /* odd: changing */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&c->buffer, buffer, memory_order_relaxed);
    atomic_store_explicit(&c->frames, frames, memory_order_relaxed);
    atomic_store_explicit(&c->position, position, memory_order_relaxed);
    atomic_store_explicit(&c->mono, mono, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->seq, 1, memory_order_release); /* even: stable */
}

static bool buffer_free(const Plugin* self, int b)
{
    return !self->buffers[b].seq || !self->link || sw_link_audio_released(self->link, self->buffers[b].seq);
}

/* Start a new capture at timeline frame `start`, into a buffer the link is not reading. */
static void start_capture(Plugin* self, int64_t start, int64_t want)
{
    int b = self->complete || self->buffers[self->buffer].seq ? 1 - self->buffer : self->buffer;
    if (!buffer_free(self, b)) b = 1 - b;
    if (!buffer_free(self, b)) return; /* both still being sent: try again next block */
    if (atomic_load_explicit(&self->saved.buffer, memory_order_relaxed) == b)
        publish_capture(self, -1, 0, 0, false); /* about to be overwritten: no longer the saved capture */
    self->buffer = b;
    self->buffers[b].seq = 0;
    self->capturing = true;
    self->complete = false;
    self->mono = true;
    self->cap_start = start;
    self->cap_len = 0;
    self->cap_want = want;
}

static void take_result(Plugin* self)
{
    if (!self->link) return;
    SwStems* fresh = sw_link_take_result(self->link);
    if (!fresh) return;
    sw_link_retire(self->link, self->stems);
    self->stems = fresh;
}

static void submit(Plugin* self, SwTask task)
{
    CaptureBuffer* buffer = &self->buffers[self->buffer];
    SwRequest r = {
        .task = task,
        .rate = (int)lrint(self->rate),
        .channels = self->mono ? 1 : 2,
        .frames = self->cap_len,
        .position = self->cap_start,
        .seed = 0,
        .given_slot = (int)control(self, P_CAPTURE_AS, 1.0f),
        .target_slot = (int)control(self, P_TARGET, 0.0f),
        .audio = {buffer->data[0], buffer->data[1]},
    };
    if (r.given_slot < 0 || r.given_slot >= SW_SLOTS) r.given_slot = 1;
    if (r.target_slot < 0 || r.target_slot >= SW_SLOTS) r.target_slot = 0;
    if (!self->link || self->cap_len < 1) return;
    uint64_t seq = sw_link_submit(self->link, &r);
    if (!seq) return;
    buffer->seq = seq;
    self->job_seq = seq;
    self->pending = -1;
    /* Offline render: wait for the job so the stems start at the exact sample the capture ended. Through the
     * host's worker (hosts run it synchronously in freewheel); a host without one (lv2file) has no deadline in
     * freewheel, so run() waits itself. Never in real time. */
    if (control(self, P_FREEWHEEL, 0.0f) > 0.5f) {
        if (self->schedule) {
            const WorkMessage message = {WAIT_JOB, seq};
            self->schedule->schedule_work(self->schedule->handle, sizeof message, &message);
        } else {
            sw_link_wait(self->link, seq, 3600.0);
        }
        take_result(self);
    }
}

static void capture_done(Plugin* self)
{
    self->capturing = false;
    self->armed = false;
    self->complete = self->cap_len > 0;
    if (self->complete) publish_capture(self, self->buffer, self->cap_len, self->cap_start, self->mono);
    if (self->complete && self->pending >= 0) submit(self, (SwTask)self->pending);
}

/* Read the controls once per block: edges of the capture toggle, the marks and the action triggers. */
static void read_controls(Plugin* self)
{
    float capture = control(self, P_CAPTURE, 0.0f);
    float ms = control(self, P_MARK_START, 0.0f), me = control(self, P_MARK_END, 0.0f);
    bool on = capture > 0.5f, was_on = self->last_capture > 0.5f;
    bool marks_changed = ms != self->last_mark_start || me != self->last_mark_end;
    if (on && (!was_on || marks_changed)) {
        if (self->capturing) capture_done(self);
        self->armed = true; /* starts at the next rolling frame (toggle) or at the first mark (marks) */
    }
    if (!on && was_on) {
        if (self->capturing) capture_done(self);
        self->armed = false;
    }
    self->last_capture = capture;
    self->last_mark_start = ms;
    self->last_mark_end = me;

    float sep = control(self, P_SEPARATE, 0.0f), acc = control(self, P_ACCOMPANY, 0.0f);
    float cancel = control(self, P_CANCEL, 0.0f);
    if (cancel > 0.5f && self->last_cancel <= 0.5f) {
        self->pending = -1;
        if (self->link) sw_link_cancel(self->link);
    }
    int task = -1;
    if (sep > 0.5f && self->last_separate <= 0.5f) task = SW_TASK_SEPARATE;
    if (acc > 0.5f && self->last_accompany <= 0.5f) task = SW_TASK_ACCOMPANY;
    self->last_separate = sep;
    self->last_accompany = acc;
    self->last_cancel = cancel;
    if (task >= 0) {
        if (self->complete && !self->capturing && !self->armed)
            submit(self, (SwTask)task); /* a finished capture: now */
        else
            self->pending = task; /* when the capture in progress (or the next one) completes */
    }
}

/* The gain of stem i of the current result (0 when muted by the selector, or the given stem of an accompany). */
static float stem_gain(const Plugin* self, const SwStems* st, int i)
{
    int slot = st->slot_of[i];
    if (slot < 0) return 0.0f;
    if (st->task == SW_TASK_ACCOMPANY && slot == st->given_slot) return 0.0f;
    int solo = (int)control(self, P_SOLO, 0.0f);
    if (solo > 0 && solo - 1 != slot) return 0.0f;
    return control(self, (PortIndex)(P_GAIN_BASS + slot), 1.0f);
}

/* Process frames [begin, end) of the block at the current timeline position. */
static void process(Plugin* self, uint32_t begin, uint32_t end)
{
    const bool rolling = self->speed > 0.0f;
    const float ms = control(self, P_MARK_START, 0.0f), me = control(self, P_MARK_END, 0.0f);
    const bool marks = me > ms;
    const int64_t mark_start = (int64_t)llround((double)ms * self->rate);
    const int64_t mark_end = (int64_t)llround((double)me * self->rate);
    const bool loop = control(self, P_LOOP, 0.0f) > 0.5f;
    const float dry = control(self, P_DRY, 0.0f);
    const int64_t first = self->frame; /* the timeline frame of sample `begin` */

    for (uint32_t i = begin; i < end; ++i) {
        const int64_t f = self->frame;
        const float l = self->in[0][i], r = self->in[1] ? self->in[1][i] : l;

        /* capture: exact to the sample on the host timeline */
        if (rolling && self->armed) {
            if (marks) {
                /* Each sample goes to its frame's place in the span, so a host that skips frames (an xrun) or
                 * starts inside the span leaves silence there, never a shift. The span ends at its last frame. */
                if (self->capturing && f >= mark_end) capture_done(self); /* the transport jumped past it */
                if (!self->capturing && f >= mark_start && f < mark_end)
                    start_capture(self, mark_start, mark_end - mark_start);
                if (self->capturing && f >= mark_start && f < mark_end) {
                    int64_t k = f - mark_start;
                    if (k < self->max_frames) {
                        if (k > self->cap_len) /* frames the host skipped: silence, not an older capture */
                            for (int ch = 0; ch < 2; ++ch)
                                memset(self->buffers[self->buffer].data[ch] + self->cap_len, 0,
                                       (size_t)(k - self->cap_len) * sizeof(float));
                        self->buffers[self->buffer].data[0][k] = l;
                        self->buffers[self->buffer].data[1][k] = r;
                        self->mono = self->mono && l == r;
                        if (k >= self->cap_len) self->cap_len = k + 1;
                    }
                    if (k + 1 == self->cap_want || k + 1 >= self->max_frames) capture_done(self);
                }
            } else {
                if (!self->capturing) start_capture(self, f, 0);
                if (self->capturing) {
                    int64_t k = self->cap_len;
                    self->buffers[self->buffer].data[0][k] = l;
                    self->buffers[self->buffer].data[1][k] = r;
                    self->mono = self->mono && l == r;
                    if (++self->cap_len >= self->max_frames) capture_done(self);
                }
            }
        }

        /* playback: the stems where they were captured (or looped from there on) */
        float out_l = l, out_r = r;
        const SwStems* st = self->stems;
        if (st && rolling) {
            int64_t k = f - st->position;
            if (loop && k >= 0) k %= st->frames;
            if (k >= 0 && k < st->frames) {
                float base = st->task == SW_TASK_ACCOMPANY ? 1.0f : dry;
                out_l = base * l;
                out_r = base * r;
                const size_t n = (size_t)st->frames;
                for (int s = 0; s < st->n_stems; ++s) {
                    float g = stem_gain(self, st, s);
                    if (g == 0.0f) continue;
                    const float* stem = st->data + (size_t)s * (size_t)st->channels * n;
                    out_l += g * stem[k];
                    out_r += g * stem[(st->channels > 1 ? n : 0) + (size_t)k];
                }
            }
        }
        self->out[0][i] = out_l;
        if (self->out[1]) self->out[1][i] = out_r;
        if (rolling) ++self->frame;
    }

    /* loop mode: the server's live loop on top, bar for bar with the host */
    if (self->loop_on && end > begin) {
        float* const out[2] = {self->out[0] + begin, self->out[1] ? self->out[1] + begin : NULL};
        SwLoop* old = sw_loop_player_render(&self->loops, &self->clock, first, rolling, out, end - begin);
        if (old) sw_link_retire_loop(self->link, old);
    }
}

/* A number in an atom of any numeric type the hosts use for time:Position fields; 0 when it is none. */
static int atom_number(const Uris* u, const LV2_Atom* atom, double* out)
{
    if (!atom) return 0;
    if (atom->type == u->atom_Float) *out = ((const LV2_Atom_Float*)atom)->body;
    else if (atom->type == u->atom_Double) *out = ((const LV2_Atom_Double*)atom)->body;
    else if (atom->type == u->atom_Long) *out = (double)((const LV2_Atom_Long*)atom)->body;
    else if (atom->type == u->atom_Int) *out = ((const LV2_Atom_Int*)atom)->body;
    else return 0;
    return 1;
}

static void read_position(Plugin* self, const LV2_Atom_Object* obj)
{
    const Uris* u = &self->uris;
    const LV2_Atom *frame = NULL, *speed = NULL, *bar = NULL, *bar_beat = NULL, *beats_per_bar = NULL, *bpm = NULL;
    lv2_atom_object_get(obj, u->time_frame, &frame, u->time_speed, &speed, u->time_bar, &bar, u->time_barBeat,
                        &bar_beat, u->time_beatsPerBar, &beats_per_bar, u->time_beatsPerMinute, &bpm, 0);
    if (speed && speed->type == u->atom_Float) self->speed = ((const LV2_Atom_Float*)speed)->body;
    if (frame && frame->type == u->atom_Long) {
        int64_t to = ((const LV2_Atom_Long*)frame)->body;
        if (to != self->frame && self->capturing && self->cap_want == 0) capture_done(self); /* relocated */
        self->frame = to;
    }
    self->has_transport = true;
    /* the musical position, for loop mode: without all four numbers (or with nonsense) the loop keeps its own bars */
    double b, beat, per_bar, tempo;
    if (!atom_number(u, bar, &b) || !atom_number(u, bar_beat, &beat) || !atom_number(u, beats_per_bar, &per_bar) ||
        !atom_number(u, bpm, &tempo) || !(tempo > 0.0) ||
        sw_bar_clock_update(&self->clock, self->frame, b, beat, per_bar, self->rate * 60.0 / tempo) != 0)
        self->clock.valid = 0;
}

static void offer_loop(Plugin* self, SwLoop* fresh)
{
    if (fresh) sw_link_retire_loop(self->link, sw_loop_player_offer(&self->loops, fresh));
}

/* Loop mode, once per block: tell the link, take a newer loop; an offline render waits for its first loop. */
static void update_loop(Plugin* self)
{
    if (!self->link) return;
    const bool on = control(self, P_LOOP_MODE, 0.0f) > 0.5f;
    if (on != self->loop_on) {
        if (!on) { /* give the loops back; turned on again, the link fetches the loop afresh */
            sw_link_retire_loop(self->link, self->loops.current);
            sw_link_retire_loop(self->link, self->loops.pending);
            sw_loop_player_init(&self->loops);
        }
        self->loop_on = on;
        self->loop_waited = false;
    }
    sw_link_loop_enable(self->link, on, (int)lrint(self->rate));
    if (!on) return;
    offer_loop(self, sw_link_take_loop(self->link));
    if (control(self, P_FREEWHEEL, 0.0f) > 0.5f && !self->loops.current && !self->loops.pending &&
        !self->loop_waited) {
        /* offline: no deadline, so wait (through the host's worker, else here) and start the render in the loop */
        self->loop_waited = true;
        if (self->schedule) {
            const WorkMessage message = {WAIT_LOOP, 0};
            self->schedule->schedule_work(self->schedule->handle, sizeof message, &message);
        } else {
            sw_link_wait_loop(self->link, FIRST_LOOP_WAIT_S);
        }
        offer_loop(self, sw_link_take_loop(self->link));
    }
}

static SwLoopState shown_loop_state(const Plugin* self)
{
    if (!self->loop_on) return SW_LOOP_OFF;
    if (!self->link || !sw_link_online(self->link)) return SW_LOOP_OFFLINE;
    if (self->loops.current) return SW_LOOP_PLAYING;
    SwLoopState state = sw_link_loop_state(self->link);
    return state == SW_LOOP_READY ? SW_LOOP_WAITING : state; /* ready but not yet taken: next block */
}

static SwState shown_state(const Plugin* self)
{
    if (self->capturing) return SW_STATE_CAPTURING;
    if (!self->link) return SW_STATE_OFFLINE;
    SwState state = sw_link_state(self->link);
    if (state == SW_STATE_WORKING || state == SW_STATE_OFFLINE) return state;
    if (!sw_link_online(self->link)) return SW_STATE_OFFLINE;
    if (state == SW_STATE_ERROR) return state;
    return self->stems ? SW_STATE_READY : SW_STATE_IDLE;
}

static void run(LV2_Handle instance, uint32_t n_samples)
{
    Plugin* self = instance;
    if (!self->in[0] || !self->out[0]) return;
    SwStems* restored = __atomic_exchange_n(&self->restored, NULL, __ATOMIC_ACQ_REL);
    if (restored) {
        sw_link_retire(self->link, self->stems);
        self->stems = restored;
    }
    take_result(self);
    read_controls(self);
    update_loop(self);

    uint32_t done = 0;
    if (self->control) {
        LV2_ATOM_SEQUENCE_FOREACH (self->control, ev) {
            uint32_t at = (uint32_t)ev->time.frames;
            if (at > n_samples) at = n_samples;
            if (at > done) {
                process(self, done, at);
                done = at;
            }
            const LV2_Atom_Object* obj = (const LV2_Atom_Object*)&ev->body;
            if ((obj->atom.type == self->uris.atom_Object || obj->atom.type == self->uris.atom_Blank) &&
                obj->body.otype == self->uris.time_Position)
                read_position(self, obj);
        }
    }
    if (done < n_samples) process(self, done, n_samples);

    if (self->status) *self->status = (float)shown_state(self);
    if (self->progress) *self->progress = self->link ? sw_link_progress(self->link) : 0.0f;
    if (self->latency) *self->latency = 0.0f; /* audio is never delayed: stems are placed on the timeline */
    if (self->captured) *self->captured = (float)((double)self->cap_len / self->rate);
    if (self->loop_state) *self->loop_state = (float)shown_loop_state(self);
}

static void cleanup(LV2_Handle instance)
{
    Plugin* self = instance;
    sw_link_free(self->link); /* joins the link thread first: nothing reads the buffers after this */
    sw_stems_free(self->stems);
    sw_loop_free(self->loops.current);
    sw_loop_free(self->loops.pending);
    sw_stems_free(__atomic_exchange_n(&self->restored, NULL, __ATOMIC_ACQ_REL));
    for (int b = 0; b < 2; ++b)
        for (int ch = 0; ch < 2; ++ch) free(self->buffers[b].data[ch]);
    free(self);
}

/* ----------------------------------------------------------------------------------------------------------
 * Worker: in freewheel, wait for the job so an offline render is sample-accurate. */

static LV2_Worker_Status work(LV2_Handle instance, LV2_Worker_Respond_Function respond, LV2_Worker_Respond_Handle handle,
                              uint32_t size, const void* data)
{
    Plugin* self = instance;
    WorkMessage message;
    if (size != sizeof message || !self->link) return LV2_WORKER_ERR_UNKNOWN;
    memcpy(&message, data, sizeof message);
    if (message.kind == WAIT_JOB)
        sw_link_wait(self->link, message.seq, 3600.0); /* ends early when the job ends in any way, or the server goes */
    else if (message.kind == WAIT_LOOP)
        sw_link_wait_loop(self->link, FIRST_LOOP_WAIT_S); /* the server's first answer about its loop */
    else
        return LV2_WORKER_ERR_UNKNOWN;
    respond(handle, sizeof message, &message);
    return LV2_WORKER_SUCCESS;
}

static LV2_Worker_Status work_response(LV2_Handle instance, uint32_t size, const void* data)
{
    (void)size;
    (void)data;
    Plugin* self = instance;
    take_result(self);
    if (self->loop_on && self->link) offer_loop(self, sw_link_take_loop(self->link));
    return LV2_WORKER_SUCCESS;
}

/* ----------------------------------------------------------------------------------------------------------
 * State: the stems (and where they go on the timeline) and the last complete capture, as a file beside the
 * session (common/sw_state.h). */

static void pause_ms(long ms)
{
    struct timespec t = {0, ms * 1000000L};
    nanosleep(&t, NULL);
}

/* A copy of the last complete capture, consistent with itself (the sequence lock), or NULL when there is none. */
static SwCapture* copy_capture(Plugin* self)
{
    SavedCapture* saved = &self->saved;
    for (int attempt = 0; attempt < 20; ++attempt) {
        const unsigned before = atomic_load_explicit(&saved->seq, memory_order_acquire);
        if (before & 1) { /* run() is changing it this very moment */
            pause_ms(1);
            continue;
        }
        const int b = atomic_load_explicit(&saved->buffer, memory_order_relaxed);
        const int64_t frames = atomic_load_explicit(&saved->frames, memory_order_relaxed);
        const int64_t position = atomic_load_explicit(&saved->position, memory_order_relaxed);
        const int mono = atomic_load_explicit(&saved->mono, memory_order_relaxed);
        if (b < 0 || b > 1 || frames < 1 || frames > self->max_frames) return NULL;
        const int channels = mono ? 1 : 2;
        SwCapture* c = calloc(1, sizeof *c);
        float* data = malloc((size_t)channels * (size_t)frames * sizeof(float));
        if (!c || !data) {
            free(c);
            free(data);
            return NULL;
        }
        for (int ch = 0; ch < channels; ++ch)
            memcpy(data + (size_t)ch * (size_t)frames, self->buffers[b].data[ch], (size_t)frames * sizeof(float));
        *c = (SwCapture){.channels = channels, .rate = (int)lrint(self->rate), .frames = frames, .position = position,
                         .data = data};
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&saved->seq, memory_order_relaxed) == before) return c;
        sw_capture_free(c); /* a new capture began in that buffer meanwhile: try again */
    }
    return NULL;
}

static LV2_State_Status save(LV2_Handle instance, LV2_State_Store_Function store, LV2_State_Handle handle,
                             uint32_t flags, const LV2_Feature* const* features)
{
    (void)flags;
    Plugin* self = instance;
    /* save() may run beside run(): stems run() retires are freed by the link only after a grace period, and the
     * capture is copied under its sequence lock */
    const SwStems* st = self->stems;
    SwCapture* capture = copy_capture(self);
    if (!st && !capture) return LV2_STATE_SUCCESS;
    LV2_State_Map_Path* map_path = feature(features, LV2_STATE__mapPath);
    LV2_State_Make_Path* make_path = feature(features, LV2_STATE__makePath);
    char* path = map_path && make_path ? make_path->path(make_path->handle, "stemweave-region.swst") : NULL;
    if (!path) {
        lv2_log_warning(&self->logger, "stemweave: the host gives no state:mapPath and state:makePath: the stems "
                                       "and the capture are not saved\n");
        sw_capture_free(capture);
        return LV2_STATE_ERR_NO_FEATURE;
    }
    SwCaptureView view = {0};
    if (capture) {
        view = (SwCaptureView){.channels = capture->channels, .rate = capture->rate, .frames = capture->frames,
                               .position = capture->position, .channel = {capture->data, NULL}};
        if (capture->channels > 1) view.channel[1] = capture->data + capture->frames;
    }
    int rc = sw_state_write(path, st, capture ? &view : NULL);
    sw_capture_free(capture);
    if (rc == 0) {
        char* abstract = map_path->abstract_path(map_path->handle, path);
        store(handle, self->uris.sw_region, abstract, strlen(abstract) + 1, self->uris.atom_Path,
              LV2_STATE_IS_POD | LV2_STATE_IS_PORTABLE);
        free(abstract);
    } else {
        lv2_log_error(&self->logger, "stemweave: cannot write %s\n", path);
    }
    free(path);
    return rc == 0 ? LV2_STATE_SUCCESS : LV2_STATE_ERR_UNKNOWN;
}

/* Make a saved capture the plugin's complete capture again (restore: never concurrent with run()), so Separate or
 * Accompany work on it after the session is reopened. */
static void restore_capture(Plugin* self, const SwCapture* c)
{
    if (c->rate != (int)lrint(self->rate)) {
        lv2_log_warning(&self->logger, "stemweave: the saved capture is at %d Hz, the session at %.0f Hz: not "
                                       "restored\n", c->rate, self->rate);
        return;
    }
    if (c->frames > self->max_frames) {
        lv2_log_warning(&self->logger, "stemweave: the saved capture is longer than STEMWEAVE_MAX_CAPTURE_S: not "
                                       "restored\n");
        return;
    }
    int b = -1;
    for (int wait = 0; wait < 200 && b < 0; ++wait) { /* a job in flight may still be sending one buffer */
        for (int k = 0; k < 2 && b < 0; ++k)
            if (buffer_free(self, (self->buffer + 1 + k) % 2)) b = (self->buffer + 1 + k) % 2;
        if (b < 0) pause_ms(10);
    }
    if (b < 0) {
        lv2_log_warning(&self->logger, "stemweave: both capture buffers are busy: the saved capture is not restored\n");
        return;
    }
    const size_t bytes = (size_t)c->frames * sizeof(float);
    memcpy(self->buffers[b].data[0], c->data, bytes);
    memcpy(self->buffers[b].data[1], c->channels > 1 ? c->data + c->frames : c->data, bytes);
    self->buffers[b].seq = 0;
    self->buffer = b;
    self->capturing = false;
    self->armed = false;
    self->complete = true;
    self->mono = c->channels == 1;
    self->cap_start = c->position;
    self->cap_len = c->frames;
    self->cap_want = 0;
    self->pending = -1;
    publish_capture(self, b, c->frames, c->position, self->mono);
}

static LV2_State_Status restore(LV2_Handle instance, LV2_State_Retrieve_Function retrieve, LV2_State_Handle handle,
                                uint32_t flags, const LV2_Feature* const* features)
{
    (void)flags;
    Plugin* self = instance;
    size_t size;
    uint32_t type, valflags;
    const void* value = retrieve(handle, self->uris.sw_region, &size, &type, &valflags);
    if (!value) return LV2_STATE_SUCCESS;
    if (type != self->uris.atom_Path || size < 1 || ((const char*)value)[size - 1] != '\0')
        return LV2_STATE_ERR_BAD_TYPE;
    LV2_State_Map_Path* map_path = feature(features, LV2_STATE__mapPath);
    if (!map_path) return LV2_STATE_ERR_NO_FEATURE;
    char* path = map_path->absolute_path(map_path->handle, (const char*)value);
    SwStems* st = NULL;
    SwCapture* capture = NULL;
    if (!path || sw_state_read(path, &st, &capture) != 0) {
        lv2_log_error(&self->logger, "stemweave: cannot read the saved stems and capture %s (missing, or not a "
                                     "Stemweave state)\n", path ? path : "(no path)");
        free(path);
        return LV2_STATE_ERR_UNKNOWN;
    }
    free(path);
    if (capture) restore_capture(self, capture);
    sw_capture_free(capture);
    if (!st) return LV2_STATE_SUCCESS;
    if (!self->link) { /* no link to free them later: restore is never concurrent with run(), so set them here */
        sw_stems_free(self->stems);
        self->stems = st;
        return LV2_STATE_SUCCESS;
    }
    sw_stems_free(__atomic_exchange_n(&self->restored, st, __ATOMIC_ACQ_REL)); /* run() swaps it in */
    return LV2_STATE_SUCCESS;
}

static const void* extension_data(const char* uri)
{
    static const LV2_Worker_Interface worker = {work, work_response, NULL};
    static const LV2_State_Interface state = {save, restore};
    if (!strcmp(uri, LV2_WORKER__interface)) return &worker;
    if (!strcmp(uri, LV2_STATE__interface)) return &state;
    return NULL;
}

static const LV2_Descriptor descriptor = {SW_URI,  instantiate, connect_port, activate,
                                          run,     NULL,        cleanup,      extension_data};

LV2_SYMBOL_EXPORT const LV2_Descriptor* lv2_descriptor(uint32_t index) { return index == 0 ? &descriptor : NULL; }
