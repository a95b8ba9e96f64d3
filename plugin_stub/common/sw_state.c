/* Saving a plugin's work with the session: a versioned little-endian binary layout.
 *
 * Version 2:  "SWSTATE2"  u32 flags (1: stems, 2: capture)  u32 0
 *   stems:    i32 task, n_stems, channels, rate, given_slot, 0   i64 frames, position
 *             16 x 65 bytes of stem names, 65 bytes of job id, 16 x i32 slot of each stem,
 *             then n_stems x channels x frames float32 (stem-major, channel-major)
 *   capture:  i32 channels, rate   i64 frames, position   then channels x frames float32 (planar)
 * Version 1:  "SWSTEMS1" and the stems block as a native struct (what older builds wrote), then the samples.
 */
#include "sw_state.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char MAGIC_V1[8] = {'S', 'W', 'S', 'T', 'E', 'M', 'S', '1'};
static const char MAGIC_V2[8] = {'S', 'W', 'S', 'T', 'A', 'T', 'E', '2'};
enum { HAS_STEMS = 1, HAS_CAPTURE = 2 };
#define NAMES_BYTES (SW_MAX_STEMS * (SW_MAX_NAME + 1))
#define STEMS_HEAD (6 * 4 + 2 * 8 + NAMES_BYTES + (SW_MAX_NAME + 1) + SW_MAX_STEMS * 4)
#define CAPTURE_HEAD (2 * 4 + 2 * 8)

/* The version 1 block, exactly as version 1 wrote it (a native struct after the magic). */
typedef struct {
    char magic[8];
    int32_t task, n_stems, channels, rate, given_slot, reserved;
    int64_t frames, position;
    char names[SW_MAX_STEMS][SW_MAX_NAME + 1];
    char job[SW_MAX_NAME + 1];
    int32_t slot_of[SW_MAX_STEMS];
} HeadV1;

void sw_capture_free(SwCapture* capture)
{
    if (!capture) return;
    free(capture->data);
    free(capture);
}

/* ---------------------------------------------------------------------------------------------------------
 * Writing */

typedef struct {
    unsigned char* p;
    unsigned char* end;
} Out;

static void put_bytes(Out* o, const void* bytes, size_t n)
{
    memcpy(o->p, bytes, n);
    o->p += n;
}

static void put_u32(Out* o, uint32_t v)
{
    for (int i = 0; i < 4; ++i) *o->p++ = (unsigned char)(v >> (8 * i));
}

static void put_i64(Out* o, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; ++i) *o->p++ = (unsigned char)(u >> (8 * i));
}

static int stems_valid(const SwStems* st)
{
    return st && st->n_stems >= 1 && st->n_stems <= SW_MAX_STEMS && st->channels >= 1 &&
           st->channels <= SW_MAX_CHANNELS && st->frames >= 1 && st->rate >= 1 && st->data;
}

static int capture_valid(const SwCaptureView* c)
{
    if (!c || c->channels < 1 || c->channels > SW_MAX_CHANNELS || c->frames < 1 || c->rate < 1) return 0;
    for (int ch = 0; ch < c->channels; ++ch)
        if (!c->channel[ch]) return 0;
    return 1;
}

static size_t stem_samples(const SwStems* st) { return (size_t)st->n_stems * (size_t)st->channels * (size_t)st->frames; }

size_t sw_state_size(const SwStems* stems, const SwCaptureView* capture)
{
    size_t size = 16;
    if (stems_valid(stems)) size += STEMS_HEAD + stem_samples(stems) * sizeof(float);
    if (capture_valid(capture)) size += CAPTURE_HEAD + (size_t)capture->channels * (size_t)capture->frames * sizeof(float);
    return size == 16 ? 0 : size;
}

size_t sw_state_to_memory(const SwStems* st, const SwCaptureView* capture, void* out, size_t cap)
{
    const size_t need = sw_state_size(st, capture);
    if (need == 0 || cap < need || (st && !stems_valid(st)) || (capture && !capture_valid(capture))) return 0;
    Out o = {out, (unsigned char*)out + cap};
    put_bytes(&o, MAGIC_V2, sizeof MAGIC_V2);
    put_u32(&o, (st ? HAS_STEMS : 0) | (capture ? HAS_CAPTURE : 0));
    put_u32(&o, 0);
    if (st) {
        const int32_t head[6] = {(int32_t)st->task, st->n_stems, st->channels, st->rate, st->given_slot, 0};
        for (int i = 0; i < 6; ++i) put_u32(&o, (uint32_t)head[i]);
        put_i64(&o, st->frames);
        put_i64(&o, st->position);
        char names[SW_MAX_STEMS][SW_MAX_NAME + 1];
        char job[SW_MAX_NAME + 1];
        memset(names, 0, sizeof names);
        memset(job, 0, sizeof job);
        for (int i = 0; i < SW_MAX_STEMS; ++i) snprintf(names[i], sizeof names[i], "%s", st->names[i]);
        snprintf(job, sizeof job, "%s", st->job);
        put_bytes(&o, names, sizeof names);
        put_bytes(&o, job, sizeof job);
        for (int i = 0; i < SW_MAX_STEMS; ++i) put_u32(&o, (uint32_t)(i < st->n_stems ? st->slot_of[i] : -1));
        put_bytes(&o, st->data, stem_samples(st) * sizeof(float));
    }
    if (capture) {
        put_u32(&o, (uint32_t)capture->channels);
        put_u32(&o, (uint32_t)capture->rate);
        put_i64(&o, capture->frames);
        put_i64(&o, capture->position);
        for (int ch = 0; ch < capture->channels; ++ch)
            put_bytes(&o, capture->channel[ch], (size_t)capture->frames * sizeof(float));
    }
    return o.p == (unsigned char*)out + need ? need : 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * Reading: every count is checked against the bytes that are there before anything is allocated. */

typedef struct {
    const unsigned char* p;
    const unsigned char* end;
} In;

static int get_bytes(In* in, void* out, size_t n)
{
    if ((size_t)(in->end - in->p) < n) return -1;
    memcpy(out, in->p, n);
    in->p += n;
    return 0;
}

static int get_i32(In* in, int32_t* v)
{
    unsigned char b[4];
    if (get_bytes(in, b, 4)) return -1;
    *v = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
    return 0;
}

static int get_i64(In* in, int64_t* v)
{
    unsigned char b[8];
    if (get_bytes(in, b, 8)) return -1;
    uint64_t u = 0;
    for (int i = 7; i >= 0; --i) u = u << 8 | b[i];
    *v = (int64_t)u;
    return 0;
}

/* Samples of count floats, if that many bytes remain; NULL otherwise. */
static float* get_samples(In* in, int64_t a, int64_t b, int64_t c)
{
    size_t left = (size_t)(in->end - in->p) / sizeof(float);
    if (a < 1 || b < 1 || c < 1 || (uint64_t)a > left || (uint64_t)b > left / (size_t)a ||
        (uint64_t)c > left / ((size_t)a * (size_t)b))
        return NULL;
    size_t bytes = (size_t)a * (size_t)b * (size_t)c * sizeof(float);
    float* data = malloc(bytes);
    if (data) get_bytes(in, data, bytes);
    return data;
}

static SwStems* new_stems(int32_t task, int32_t n_stems, int32_t channels, int32_t rate, int32_t given_slot,
                          int64_t frames, int64_t position)
{
    if (n_stems < 1 || n_stems > SW_MAX_STEMS || channels < 1 || channels > SW_MAX_CHANNELS || frames < 1 ||
        rate < 1 || (task != SW_TASK_SEPARATE && task != SW_TASK_ACCOMPANY) || given_slot < -1 || given_slot >= SW_SLOTS)
        return NULL;
    SwStems* st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->task = (SwTask)task;
    st->n_stems = n_stems;
    st->channels = channels;
    st->rate = rate;
    st->given_slot = given_slot;
    st->frames = frames;
    st->position = position;
    return st;
}

static void finish_names(SwStems* st, const int32_t* slot_of)
{
    for (int i = 0; i < SW_MAX_STEMS; ++i) {
        st->names[i][SW_MAX_NAME] = '\0';
        st->slot_of[i] = slot_of[i] >= -1 && slot_of[i] < SW_SLOTS ? slot_of[i] : -1;
    }
    st->job[SW_MAX_NAME] = '\0';
}

static SwStems* read_v1(const void* data, size_t size)
{
    HeadV1 h;
    if (size < sizeof h) return NULL;
    memcpy(&h, data, sizeof h);
    SwStems* st = new_stems(h.task, h.n_stems, h.channels, h.rate, h.given_slot < -1 ? -1 : h.given_slot, h.frames,
                            h.position);
    if (!st) return NULL;
    In in = {(const unsigned char*)data + sizeof h, (const unsigned char*)data + size};
    st->data = get_samples(&in, h.n_stems, h.channels, h.frames);
    if (!st->data || in.p != in.end) { /* the samples must fill the rest exactly */
        sw_stems_free(st);
        return NULL;
    }
    memcpy(st->names, h.names, sizeof st->names);
    memcpy(st->job, h.job, sizeof st->job);
    finish_names(st, h.slot_of);
    return st;
}

static SwStems* read_stems(In* in)
{
    int32_t head[6];
    int64_t frames, position;
    for (int i = 0; i < 6; ++i)
        if (get_i32(in, &head[i])) return NULL;
    if (get_i64(in, &frames) || get_i64(in, &position)) return NULL;
    SwStems* st = new_stems(head[0], head[1], head[2], head[3], head[4], frames, position);
    if (!st) return NULL;
    int32_t slot_of[SW_MAX_STEMS];
    int bad = get_bytes(in, st->names, sizeof st->names) || get_bytes(in, st->job, sizeof st->job);
    for (int i = 0; i < SW_MAX_STEMS && !bad; ++i) bad = get_i32(in, &slot_of[i]);
    if (!bad) st->data = get_samples(in, st->n_stems, st->channels, st->frames);
    if (bad || !st->data) {
        sw_stems_free(st);
        return NULL;
    }
    finish_names(st, slot_of);
    return st;
}

static SwCapture* read_capture(In* in)
{
    int32_t channels, rate;
    int64_t frames, position;
    if (get_i32(in, &channels) || get_i32(in, &rate) || get_i64(in, &frames) || get_i64(in, &position)) return NULL;
    if (channels < 1 || channels > SW_MAX_CHANNELS || rate < 1 || frames < 1) return NULL;
    SwCapture* c = calloc(1, sizeof *c);
    if (!c) return NULL;
    *c = (SwCapture){.channels = channels, .rate = rate, .frames = frames, .position = position};
    c->data = get_samples(in, 1, channels, frames);
    if (!c->data) {
        free(c);
        return NULL;
    }
    return c;
}

int sw_state_from_memory(const void* data, size_t size, SwStems** stems, SwCapture** capture)
{
    *stems = NULL;
    *capture = NULL;
    if (!data || size < 16) return -1;
    if (memcmp(data, MAGIC_V1, sizeof MAGIC_V1) == 0) {
        *stems = read_v1(data, size);
        return *stems ? 0 : -1;
    }
    if (memcmp(data, MAGIC_V2, sizeof MAGIC_V2) != 0) return -1;
    In in = {(const unsigned char*)data + sizeof MAGIC_V2, (const unsigned char*)data + size};
    int32_t flags, reserved;
    if (get_i32(&in, &flags) || get_i32(&in, &reserved) || flags < 1 || flags > (HAS_STEMS | HAS_CAPTURE) ||
        reserved != 0)
        return -1;
    SwStems* st = (flags & HAS_STEMS) ? read_stems(&in) : NULL;
    SwCapture* c = (flags & HAS_CAPTURE) && (st || !(flags & HAS_STEMS)) ? read_capture(&in) : NULL;
    if (((flags & HAS_STEMS) && !st) || ((flags & HAS_CAPTURE) && !c) || in.p != in.end) {
        sw_stems_free(st);
        sw_capture_free(c);
        return -1;
    }
    *stems = st;
    *capture = c;
    return 0;
}

int sw_state_write(const char* path, const SwStems* stems, const SwCaptureView* capture)
{
    size_t size = sw_state_size(stems, capture);
    void* bytes = size ? malloc(size) : NULL;
    if (!bytes) return -1;
    int ok = sw_state_to_memory(stems, capture, bytes, size) == size;
    FILE* f = ok ? fopen(path, "wb") : NULL;
    ok = f && fwrite(bytes, 1, size, f) == size;
    if (f && fclose(f) != 0) ok = 0;
    free(bytes);
    return ok ? 0 : -1;
}

int sw_state_read(const char* path, SwStems** stems, SwCapture** capture)
{
    *stems = NULL;
    *capture = NULL;
    FILE* f = fopen(path, "rb");
    if (!f) return -1;
    int rc = -1;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        void* bytes = size > 0 ? malloc((size_t)size) : NULL;
        if (bytes && fseek(f, 0, SEEK_SET) == 0 && fread(bytes, 1, (size_t)size, f) == (size_t)size)
            rc = sw_state_from_memory(bytes, (size_t)size, stems, capture);
        free(bytes);
    }
    fclose(f);
    return rc;
}
