/* Saving a plugin's returned stems with the session: a versioned little-endian binary layout. */
#include "sw_state.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char MAGIC[8] = {'S', 'W', 'S', 'T', 'E', 'M', 'S', '1'};

typedef struct {
    char magic[8];
    int32_t task, n_stems, channels, rate, given_slot, reserved;
    int64_t frames, position;
    char names[SW_MAX_STEMS][SW_MAX_NAME + 1];
    char job[SW_MAX_NAME + 1];
    int32_t slot_of[SW_MAX_STEMS];
} Head;

static size_t samples(const SwStems* st) { return (size_t)st->n_stems * (size_t)st->channels * (size_t)st->frames; }

size_t sw_state_size(const SwStems* st) { return sizeof(Head) + samples(st) * sizeof(float); }

size_t sw_state_to_memory(const SwStems* st, void* out, size_t cap)
{
    size_t need = sw_state_size(st);
    if (!st || cap < need) return 0;
    Head h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, MAGIC, sizeof MAGIC);
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
    memcpy(out, &h, sizeof h);
    memcpy((char*)out + sizeof h, st->data, samples(st) * sizeof(float));
    return need;
}

SwStems* sw_state_from_memory(const void* data, size_t size)
{
    Head h;
    if (size < sizeof h) return NULL;
    memcpy(&h, data, sizeof h);
    if (memcmp(h.magic, MAGIC, sizeof MAGIC) != 0 || h.n_stems < 1 || h.n_stems > SW_MAX_STEMS || h.channels < 1 ||
        h.channels > SW_MAX_CHANNELS || h.frames < 1 || h.rate < 1 || (h.task != 0 && h.task != 1))
        return NULL;
    size_t n = (size_t)h.n_stems * (size_t)h.channels * (size_t)h.frames;
    if ((size - sizeof h) / sizeof(float) != n || (size - sizeof h) % sizeof(float)) return NULL;
    SwStems* st = calloc(1, sizeof *st);
    float* audio = malloc(n * sizeof(float));
    if (!st || !audio) {
        free(st);
        free(audio);
        return NULL;
    }
    st->task = (SwTask)h.task;
    st->n_stems = h.n_stems;
    st->channels = h.channels;
    st->rate = h.rate;
    st->given_slot = h.given_slot;
    st->frames = h.frames;
    st->position = h.position;
    memcpy(st->names, h.names, sizeof st->names);
    memcpy(st->job, h.job, sizeof st->job);
    for (int i = 0; i < SW_MAX_STEMS; ++i) {
        st->names[i][SW_MAX_NAME] = '\0';
        st->slot_of[i] = h.slot_of[i] >= -1 && h.slot_of[i] < SW_SLOTS ? h.slot_of[i] : -1;
    }
    st->job[SW_MAX_NAME] = '\0';
    memcpy(audio, (const char*)data + sizeof h, n * sizeof(float));
    st->data = audio;
    return st;
}

int sw_state_write(const char* path, const SwStems* st)
{
    size_t size = sw_state_size(st);
    void* bytes = malloc(size);
    if (!bytes) return -1;
    sw_state_to_memory(st, bytes, size);
    FILE* f = fopen(path, "wb");
    int ok = f && fwrite(bytes, 1, size, f) == size;
    if (f && fclose(f) != 0) ok = 0;
    free(bytes);
    return ok ? 0 : -1;
}

SwStems* sw_state_read(const char* path)
{
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    SwStems* st = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        void* bytes = size > 0 ? malloc((size_t)size) : NULL;
        if (bytes && fseek(f, 0, SEEK_SET) == 0 && fread(bytes, 1, (size_t)size, f) == (size_t)size)
            st = sw_state_from_memory(bytes, (size_t)size);
        free(bytes);
    }
    fclose(f);
    return st;
}
