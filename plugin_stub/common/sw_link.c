/* The plugin's link to `stemweave serve`: a thread that owns the ZeroMQ socket, fed and read by the audio thread
 * through lock-free single-producer/single-consumer rings and one atomic result slot. */
#define _POSIX_C_SOURCE 200809L
#include "sw_link.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define COMMANDS 16 /* power of two */
#define RETIRED 32  /* power of two */
#define HEARTBEAT_S 0.5
#define OFFLINE_AFTER_S 2.0 /* no reply to our heartbeats for this long: the server is down */
#define JOB_SILENCE_S 5.0   /* the server heartbeats clients with jobs every second: silence means it is gone */
#define POLL_MS 5
#define CONNECT_WAIT_MS 1500 /* a submit waits this long for a connection before calling the server offline */
#define LOOP_POLL_S 0.5   /* loop mode asks the server for its loop this often */
#define LOOP_REPLY_S 2.0  /* a loop request unanswered this long is given up and asked again */
#define GRACE_S 5.0 /* retired stems are freed this long after the audio thread gave them back: a state save
                     * reading them on another thread at that moment still finds them */

typedef enum { CMD_SUBMIT, CMD_CANCEL } CommandKind;

typedef struct {
    CommandKind kind;
    uint64_t seq;
    SwRequest request;
} Command;

typedef struct {
    int active;
    uint64_t seq;
    int64_t req;
    char job[SW_MAX_NAME + 1];
    double last_rx;
    SwRequest request;
} Job;

struct SwLink {
    char endpoint[256];
    char client[SW_MAX_NAME + 1];
    pthread_t thread;
    int thread_started;
    atomic_int quit;

    /* audio thread -> link */
    Command commands[COMMANDS];
    atomic_uint command_head, command_tail;
    SwStems* retired[RETIRED];
    atomic_uint retired_head, retired_tail;
    SwLoop* retired_loops[RETIRED];
    atomic_uint retired_loops_head, retired_loops_tail;
    atomic_ullong submitted; /* written by the audio thread only */
    atomic_int loop_wanted;  /* loop mode on */
    atomic_uint loop_epoch;  /* bumped each time loop mode turns on */
    atomic_int loop_rate;    /* the host's rate */

    /* link -> audio thread */
    _Atomic(SwStems*) result;
    atomic_ullong released; /* audio of jobs up to this seq has been sent or dropped */
    atomic_ullong finished; /* jobs up to this seq have ended */
    atomic_int state;
    atomic_uint progress_bits;
    atomic_int online;
    _Atomic(SwLoop*) loop;
    atomic_int loop_state;
    atomic_ullong loop_answers; /* loop replies (or failures) so far: sw_link_wait_loop */

    pthread_mutex_t mutex; /* sw_link_wait only: never touched by the audio thread */
    pthread_cond_t cond;

    /* link thread only */
    void* context;
    void* socket;
    int64_t next_req;
    double last_rx, last_beat;
    Job job;
    int64_t orphan_req; /* a job cancelled before "accepted" named it: cancel it when it does */
    SwStems* graveyard[RETIRED];
    SwLoop* graveyard_loops[RETIRED];
    double buried[RETIRED];
    /* loop polling (link thread only) */
    int loop_was_wanted;
    unsigned loop_seen_epoch;
    int loop_held_rate;
    SwLoopState loop_kept; /* the state the last loop with audio left */
    int64_t loop_version; /* the version the audio thread has (or had handed over) */
    int64_t loop_req;     /* the request in flight, -1 none */
    double loop_sent, loop_polled;
    int loop_logged;      /* the last state a message was printed for */
    int loop_first;       /* the first request since loop mode turned on: wait for a connection */
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void set_progress(SwLink* link, float fraction)
{
    uint32_t bits;
    memcpy(&bits, &fraction, sizeof bits);
    atomic_store_explicit(&link->progress_bits, bits, memory_order_relaxed);
}

void sw_stems_free(SwStems* stems)
{
    if (!stems) return;
    free(stems->data);
    free(stems);
}

/* ----------------------------------------------------------------------------------------------------------
 * Audio-thread side: rings and atomics only. */

uint64_t sw_link_submit(SwLink* link, const SwRequest* request)
{
    unsigned head = atomic_load_explicit(&link->command_head, memory_order_relaxed);
    unsigned tail = atomic_load_explicit(&link->command_tail, memory_order_acquire);
    if (head - tail >= COMMANDS) return 0;
    uint64_t seq = atomic_load_explicit(&link->submitted, memory_order_relaxed) + 1;
    Command* c = &link->commands[head % COMMANDS];
    c->kind = CMD_SUBMIT;
    c->seq = seq;
    c->request = *request;
    atomic_store_explicit(&link->submitted, seq, memory_order_relaxed);
    atomic_store_explicit(&link->command_head, head + 1, memory_order_release);
    return seq;
}

void sw_link_cancel(SwLink* link)
{
    unsigned head = atomic_load_explicit(&link->command_head, memory_order_relaxed);
    unsigned tail = atomic_load_explicit(&link->command_tail, memory_order_acquire);
    if (head - tail >= COMMANDS) return;
    Command* c = &link->commands[head % COMMANDS];
    c->kind = CMD_CANCEL;
    c->seq = 0;
    atomic_store_explicit(&link->command_head, head + 1, memory_order_release);
}

int sw_link_audio_released(const SwLink* link, uint64_t seq)
{
    return atomic_load_explicit(&link->released, memory_order_acquire) >= seq;
}

SwStems* sw_link_take_result(SwLink* link)
{
    if (!atomic_load_explicit(&link->result, memory_order_relaxed)) return NULL;
    return atomic_exchange_explicit(&link->result, NULL, memory_order_acq_rel);
}

void sw_link_retire(SwLink* link, SwStems* stems)
{
    if (!link || !stems) return;
    unsigned head = atomic_load_explicit(&link->retired_head, memory_order_relaxed);
    unsigned tail = atomic_load_explicit(&link->retired_tail, memory_order_acquire);
    if (head - tail >= RETIRED) return; /* cannot happen at human speeds; leaking beats blocking */
    link->retired[head % RETIRED] = stems;
    atomic_store_explicit(&link->retired_head, head + 1, memory_order_release);
}

void sw_link_loop_enable(SwLink* link, int on, int rate)
{
    int was = atomic_load_explicit(&link->loop_wanted, memory_order_relaxed); /* only this thread writes it */
    atomic_store_explicit(&link->loop_rate, rate, memory_order_relaxed);
    if (on && !was) atomic_fetch_add_explicit(&link->loop_epoch, 1, memory_order_relaxed);
    if ((on ? 1 : 0) != was) atomic_store_explicit(&link->loop_wanted, on ? 1 : 0, memory_order_release);
}

SwLoop* sw_link_take_loop(SwLink* link)
{
    if (!atomic_load_explicit(&link->loop, memory_order_relaxed)) return NULL;
    return atomic_exchange_explicit(&link->loop, NULL, memory_order_acq_rel);
}

void sw_link_retire_loop(SwLink* link, SwLoop* loop)
{
    if (!link || !loop) return;
    unsigned head = atomic_load_explicit(&link->retired_loops_head, memory_order_relaxed);
    unsigned tail = atomic_load_explicit(&link->retired_loops_tail, memory_order_acquire);
    if (head - tail >= RETIRED) return; /* cannot happen at human speeds; leaking beats blocking */
    link->retired_loops[head % RETIRED] = loop;
    atomic_store_explicit(&link->retired_loops_head, head + 1, memory_order_release);
}

SwLoopState sw_link_loop_state(const SwLink* link)
{
    if (!atomic_load_explicit(&link->loop_wanted, memory_order_relaxed)) return SW_LOOP_OFF;
    return (SwLoopState)atomic_load_explicit(&link->loop_state, memory_order_relaxed);
}

SwState sw_link_state(const SwLink* link) { return (SwState)atomic_load_explicit(&link->state, memory_order_relaxed); }

float sw_link_progress(const SwLink* link)
{
    uint32_t bits = atomic_load_explicit(&link->progress_bits, memory_order_relaxed);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int sw_link_online(const SwLink* link) { return atomic_load_explicit(&link->online, memory_order_relaxed); }

/* ----------------------------------------------------------------------------------------------------------
 * Link thread. */

static void end_job(SwLink* link, SwState state)
{
    if (!link->job.active) return;
    link->job.active = 0;
    atomic_store_explicit(&link->state, state, memory_order_relaxed);
    pthread_mutex_lock(&link->mutex);
    atomic_store_explicit(&link->finished, link->job.seq, memory_order_release);
    pthread_cond_broadcast(&link->cond);
    pthread_mutex_unlock(&link->mutex);
}

static int send_message_within(SwLink* link, const char* header, int header_len, const float* const* frames,
                               const size_t* frame_bytes, int n_frames, int wait_ms);

/* Send frames as one multipart message without blocking; 0 on success. */
static int send_message(SwLink* link, const char* header, int header_len, const float* const* frames,
                        const size_t* frame_bytes, int n_frames)
{
    return send_message_within(link, header, header_len, frames, frame_bytes, n_frames, 0);
}

/* The same, first waiting up to wait_ms for a connection (a job submitted just after start-up, or while the
 * server restarts, is not lost to the connect race). */
static int send_message_within(SwLink* link, const char* header, int header_len, const float* const* frames,
                               const size_t* frame_bytes, int n_frames, int wait_ms)
{
    if (wait_ms > 0) {
        zmq_pollitem_t item = {link->socket, 0, ZMQ_POLLOUT, 0};
        if (zmq_poll(&item, 1, wait_ms) <= 0) return -1;
    }
    int more = n_frames > 0 ? ZMQ_SNDMORE : 0;
    if (zmq_send(link->socket, header, (size_t)header_len, ZMQ_DONTWAIT | more) < 0) return -1;
    for (int i = 0; i < n_frames; ++i) {
        more = i + 1 < n_frames ? ZMQ_SNDMORE : 0;
        /* Once the first part is queued the rest always is (ZeroMQ queues whole messages). */
        if (zmq_send(link->socket, frames[i], frame_bytes[i], more) < 0) return -1;
    }
    return 0;
}

static void send_heartbeat(SwLink* link, double now)
{
    char header[SW_HEADER_CAPACITY];
    int n = link->last_rx > 0 ? sw_header_heartbeat(header, sizeof header, link->next_req++)
                              : sw_header_hello(header, sizeof header, link->next_req++, link->client);
    if (n > 0 && send_message(link, header, n, NULL, NULL, 0) != 0) {
        atomic_store_explicit(&link->online, 0, memory_order_relaxed); /* no connection at all */
        if (link->job.active) {
            fprintf(stderr, "stemweave: lost the server at %s: job abandoned\n", link->endpoint);
            end_job(link, SW_STATE_OFFLINE);
        }
    }
    link->last_beat = now;
}

static void send_cancel(SwLink* link, const char* job)
{
    char header[SW_HEADER_CAPACITY];
    int n = sw_header_cancel(header, sizeof header, link->next_req++, job);
    if (n > 0) send_message(link, header, n, NULL, NULL, 0);
}

static void cancel_job(SwLink* link)
{
    if (!link->job.active) return;
    if (link->job.job[0])
        send_cancel(link, link->job.job);
    else
        link->orphan_req = link->job.req; /* the job id comes with "accepted" */
    end_job(link, SW_STATE_IDLE);
}

static void submit_job(SwLink* link, const Command* c, double now)
{
    const SwRequest* r = &c->request;
    char header[SW_HEADER_CAPACITY];
    const float* frames[SW_MAX_CHANNELS];
    size_t bytes[SW_MAX_CHANNELS];
    float* given = NULL;
    int n_frames = 0;
    int64_t req = link->next_req++;
    int n = -1;
    if (r->task == SW_TASK_SEPARATE) {
        n = sw_header_submit(header, sizeof header, req, r->task, r->rate, r->channels, r->frames, r->position,
                             r->seed, NULL, NULL);
        for (int ch = 0; ch < r->channels; ++ch) {
            frames[n_frames] = r->audio[ch];
            bytes[n_frames++] = (size_t)r->frames * sizeof(float);
        }
    } else if (r->given_slot >= 0 && r->given_slot < SW_SLOTS && r->target_slot >= 0 && r->target_slot < SW_SLOTS) {
        n = sw_header_submit(header, sizeof header, req, r->task, r->rate, r->channels, r->frames, r->position,
                             r->seed, SW_SLOT_NAMES[r->given_slot], SW_SLOT_NAMES[r->target_slot]);
        /* a given stem is one frame, channel-major: the planar channels back to back */
        given = malloc((size_t)r->channels * (size_t)r->frames * sizeof(float));
        if (given) {
            for (int ch = 0; ch < r->channels; ++ch)
                memcpy(given + (size_t)ch * (size_t)r->frames, r->audio[ch], (size_t)r->frames * sizeof(float));
            frames[n_frames] = given;
            bytes[n_frames++] = (size_t)r->channels * (size_t)r->frames * sizeof(float);
        }
    }
    link->job = (Job){.active = 1, .seq = c->seq, .req = req, .last_rx = now, .request = *r};
    set_progress(link, 0.0f);
    atomic_store_explicit(&link->state, SW_STATE_WORKING, memory_order_relaxed);
    int sent = n > 0 && (r->task == SW_TASK_SEPARATE || given) &&
               send_message_within(link, header, n, frames, bytes, n_frames, CONNECT_WAIT_MS) == 0;
    free(given);
    atomic_store_explicit(&link->released, c->seq, memory_order_release); /* ZeroMQ copied the audio */
    if (!sent) {
        fprintf(stderr, "stemweave: cannot reach the server at %s: is `stemweave serve` running?\n",
                link->endpoint);
        atomic_store_explicit(&link->online, 0, memory_order_relaxed);
        end_job(link, n > 0 ? SW_STATE_OFFLINE : SW_STATE_ERROR);
    }
}

static int job_matches(const SwLink* link, const SwReply* reply)
{
    if (!link->job.active) return 0;
    if (reply->req == link->job.req) return 1;
    return link->job.job[0] && strcmp(reply->job, link->job.job) == 0;
}

static void take_result(SwLink* link, const SwReply* reply, zmq_msg_t* parts, int n_parts)
{
    const SwRequest* r = &link->job.request;
    if (reply->n_stems < 1 || n_parts != reply->n_stems || reply->channels < 1 || reply->frames != r->frames) {
        fprintf(stderr, "stemweave: a result that does not match the region (%d stems, %d frames): ignored\n",
                reply->n_stems, (int)reply->frames);
        end_job(link, SW_STATE_ERROR);
        return;
    }
    size_t per_stem = (size_t)reply->channels * (size_t)reply->frames;
    for (int i = 0; i < n_parts; ++i) {
        if (zmq_msg_size(&parts[i]) != per_stem * sizeof(float)) {
            fprintf(stderr, "stemweave: stem %d has %zu bytes, expected %zu: ignored\n", i, zmq_msg_size(&parts[i]),
                    per_stem * sizeof(float));
            end_job(link, SW_STATE_ERROR);
            return;
        }
    }
    if (reply->warning[0]) fprintf(stderr, "stemweave: %s\n", reply->warning); /* the card's quality warning */
    SwStems* stems = calloc(1, sizeof *stems);
    float* data = malloc((size_t)n_parts * per_stem * sizeof(float));
    if (!stems || !data) {
        free(stems);
        free(data);
        end_job(link, SW_STATE_ERROR);
        return;
    }
    stems->task = r->task;
    stems->n_stems = n_parts;
    stems->channels = reply->channels;
    stems->rate = r->rate;
    stems->frames = reply->frames;
    stems->position = r->position;
    stems->given_slot = r->task == SW_TASK_ACCOMPANY ? r->given_slot : -1;
    stems->data = data;
    snprintf(stems->job, sizeof stems->job, "%s", reply->job);
    int named = 0;
    for (int i = 0; i < n_parts; ++i) {
        memcpy(data + (size_t)i * per_stem, zmq_msg_data(&parts[i]), per_stem * sizeof(float));
        snprintf(stems->names[i], sizeof stems->names[i], "%s", reply->stems[i]);
        stems->slot_of[i] = -1;
        for (int s = 0; s < SW_SLOTS; ++s)
            if (strcmp(reply->stems[i], SW_SLOT_NAMES[s]) == 0) stems->slot_of[i] = s, named = 1;
    }
    if (!named) /* a model with other stem names (vocals, other...): slots by order */
        for (int i = 0; i < n_parts; ++i) stems->slot_of[i] = i < SW_SLOTS ? i : -1;
    SwStems* old = atomic_exchange_explicit(&link->result, stems, memory_order_acq_rel);
    sw_stems_free(old); /* published but never taken: the audio thread never saw it */
    set_progress(link, 1.0f);
    end_job(link, SW_STATE_READY);
}

/* ----------------------------------------------------------------------------------------------------------
 * Loop mode: poll the server's live loop, hand each new mix to the audio thread. */

static void loop_answered(SwLink* link, SwLoopState state)
{
    link->loop_req = -1;
    if (state == SW_LOOP_OFFLINE) link->loop_version = 0; /* a restarted server's loop: fetch it whole */
    atomic_store_explicit(&link->loop_state, state, memory_order_relaxed);
    pthread_mutex_lock(&link->mutex);
    atomic_fetch_add_explicit(&link->loop_answers, 1, memory_order_release);
    pthread_cond_broadcast(&link->cond);
    pthread_mutex_unlock(&link->mutex);
}

static void loop_say(SwLink* link, SwLoopState state, const char* text)
{
    if (link->loop_logged != (int)state) fprintf(stderr, "stemweave: loop mode: %s\n", text);
    link->loop_logged = (int)state;
}

static void poll_loop(SwLink* link, double now)
{
    if (!atomic_load_explicit(&link->loop_wanted, memory_order_acquire)) {
        if (link->loop_was_wanted) {
            link->loop_was_wanted = 0;
            link->loop_req = -1;
            sw_loop_free(atomic_exchange_explicit(&link->loop, NULL, memory_order_acq_rel)); /* never taken */
        }
        return;
    }
    unsigned epoch = atomic_load_explicit(&link->loop_epoch, memory_order_relaxed);
    int rate = atomic_load_explicit(&link->loop_rate, memory_order_relaxed);
    if (!link->loop_was_wanted || epoch != link->loop_seen_epoch || rate != link->loop_held_rate) {
        link->loop_was_wanted = 1; /* (again): the audio thread holds no loop, fetch it whole */
        link->loop_seen_epoch = epoch;
        link->loop_held_rate = rate;
        link->loop_version = 0;
        link->loop_req = -1;
        link->loop_polled = 0.0;
        link->loop_logged = -1;
        link->loop_first = 1;
        atomic_store_explicit(&link->loop_state, SW_LOOP_WAITING, memory_order_relaxed);
    }
    if (link->loop_req >= 0) {
        if (now - link->loop_sent < LOOP_REPLY_S) return;
        loop_say(link, SW_LOOP_OFFLINE, "no answer from the server");
        loop_answered(link, SW_LOOP_OFFLINE);
    }
    if (now - link->loop_polled < LOOP_POLL_S) return;
    link->loop_polled = now;
    char header[SW_HEADER_CAPACITY];
    int64_t req = link->next_req++;
    int n = sw_header_loop(header, sizeof header, req, link->loop_version);
    const int wait_ms = link->loop_first ? CONNECT_WAIT_MS : 0; /* just started: the connection may be coming */
    link->loop_first = 0;
    if (n > 0 && send_message_within(link, header, n, NULL, NULL, 0, wait_ms) == 0) {
        link->loop_req = req;
        link->loop_sent = now;
    } else {
        loop_answered(link, SW_LOOP_OFFLINE);
    }
}

/* A reply to the loop request in flight. */
static void take_loop(SwLink* link, const SwReply* r, zmq_msg_t* parts, int n_parts)
{
    char text[SW_MAX_MESSAGE + 256];
    if (r->type == SW_MSG_ERROR) {
        snprintf(text, sizeof text, "the server says %s: %s", r->code, r->message);
        loop_say(link, SW_LOOP_NONE, text);
        loop_answered(link, SW_LOOP_NONE);
        return;
    }
    if (r->type == SW_MSG_LOOP && r->serial == 0 && n_parts == 0) { /* no loop made yet */
        loop_say(link, SW_LOOP_WAITING, "the server has made no loop yet (/stemweave/loop/start)");
        loop_answered(link, SW_LOOP_WAITING);
        return;
    }
    if (r->type == SW_MSG_LOOP && !r->audio && n_parts == 0 && r->serial > 0 && r->version == link->loop_version) {
        loop_answered(link, link->loop_kept); /* unchanged */
        return;
    }
    const int64_t samples = (int64_t)r->channels * r->frames;
    if (r->type != SW_MSG_LOOP || !r->audio || n_parts != 1 || r->serial < 1 || r->version < 0 || r->channels < 1 ||
        r->bars < 1 || r->beats_per_bar < 1 || r->bar_frames < 1 || r->tempo <= 0.0 || r->rate < 1 ||
        r->frames != (int64_t)r->bars * r->bar_frames || zmq_msg_size(&parts[0]) != (size_t)samples * sizeof(float)) {
        loop_say(link, SW_LOOP_NONE, "a malformed loop reply: ignored");
        loop_answered(link, SW_LOOP_NONE);
        return;
    }
    link->loop_version = r->version; /* held (or refused): not sent again until it changes */
    if (r->rate != link->loop_held_rate) {
        snprintf(text, sizeof text, "the loop runs at %d Hz and the host at %d Hz: start the server with "
                 "--audio-rate %d", r->rate, link->loop_held_rate, link->loop_held_rate);
        loop_say(link, SW_LOOP_RATE, text);
        link->loop_kept = SW_LOOP_RATE;
        loop_answered(link, SW_LOOP_RATE);
        return;
    }
    SwLoop* loop = calloc(1, sizeof *loop);
    float* data = malloc((size_t)samples * sizeof(float));
    if (!loop || !data) {
        free(loop);
        free(data);
        link->loop_version = 0;
        loop_answered(link, SW_LOOP_NONE);
        return;
    }
    memcpy(data, zmq_msg_data(&parts[0]), (size_t)samples * sizeof(float));
    *loop = (SwLoop){.serial = r->serial, .version = r->version, .tempo = r->tempo, .bars = r->bars,
                     .beats_per_bar = r->beats_per_bar, .bar_frames = r->bar_frames, .frames = r->frames,
                     .rate = r->rate, .channels = r->channels, .data = data};
    sw_loop_free(atomic_exchange_explicit(&link->loop, loop, memory_order_acq_rel)); /* an untaken older one */
    link->loop_kept = SW_LOOP_READY;
    link->loop_logged = SW_LOOP_READY;
    loop_answered(link, SW_LOOP_READY);
}

static void receive(SwLink* link, double now)
{
    for (int budget = 0; budget < 64; ++budget) {
        zmq_msg_t header;
        zmq_msg_init(&header);
        if (zmq_msg_recv(&header, link->socket, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&header);
            return;
        }
        zmq_msg_t parts[SW_MAX_STEMS];
        int n_parts = 0, overflow = 0;
        while (zmq_msg_more(n_parts ? &parts[n_parts - 1] : &header)) {
            zmq_msg_t extra;
            zmq_msg_init(&extra);
            if (zmq_msg_recv(&extra, link->socket, 0) < 0) {
                zmq_msg_close(&extra);
                break;
            }
            if (n_parts < SW_MAX_STEMS) {
                parts[n_parts++] = extra;
            } else {
                overflow = 1;
                int more = zmq_msg_more(&extra);
                zmq_msg_close(&extra);
                if (!more) break;
            }
        }
        link->last_rx = now;
        atomic_store_explicit(&link->online, 1, memory_order_relaxed);
        SwReply reply;
        int parsed = sw_reply_parse((const char*)zmq_msg_data(&header), zmq_msg_size(&header), &reply) == 0;
        if (parsed && !overflow && link->loop_req >= 0 && reply.req == link->loop_req) {
            take_loop(link, &reply, parts, n_parts);
        } else if (parsed && !overflow) {
            if (job_matches(link, &reply)) link->job.last_rx = now;
            switch (reply.type) {
            case SW_MSG_ACCEPTED:
                if (link->job.active && reply.req == link->job.req)
                    snprintf(link->job.job, sizeof link->job.job, "%s", reply.job);
                else if (reply.req == link->orphan_req && reply.job[0])
                    send_cancel(link, reply.job);
                break;
            case SW_MSG_PROGRESS:
                if (job_matches(link, &reply)) set_progress(link, (float)reply.fraction);
                break;
            case SW_MSG_HEARTBEAT:
                if (link->job.active) link->job.last_rx = now; /* the server lists our jobs: alive */
                break;
            case SW_MSG_RESULT:
                if (job_matches(link, &reply)) take_result(link, &reply, parts, n_parts);
                break;
            case SW_MSG_ERROR:
                if (job_matches(link, &reply)) {
                    fprintf(stderr, "stemweave: the server says %s: %s\n", reply.code, reply.message);
                    end_job(link, !strcmp(reply.code, "cancelled") ? SW_STATE_IDLE
                                  : !strcmp(reply.code, "shutdown") ? SW_STATE_OFFLINE
                                                                     : SW_STATE_ERROR);
                }
                break;
            case SW_MSG_UNKNOWN:
            case SW_MSG_LOOP: /* a late answer to a loop request given up on */
            case SW_MSG_HELLO: /* any reply at all already marked the server online */
            case SW_MSG_PARTIAL: /* finished windows: the plugin plays the whole result only */
            case SW_MSG_STATUS:
                break;
            }
        }
        for (int i = 0; i < n_parts; ++i) zmq_msg_close(&parts[i]);
        zmq_msg_close(&header);
    }
}

static void bury(SwLink* link, SwStems* stems, SwLoop* loop, double now)
{
    int oldest = 0;
    for (int i = 0; i < RETIRED; ++i) {
        if (!link->graveyard[i] && !link->graveyard_loops[i]) {
            oldest = i;
            break;
        }
        if (link->buried[i] < link->buried[oldest]) oldest = i;
    }
    sw_stems_free(link->graveyard[oldest]);
    sw_loop_free(link->graveyard_loops[oldest]);
    link->graveyard[oldest] = stems;
    link->graveyard_loops[oldest] = loop;
    link->buried[oldest] = now;
}

static void* run_link(void* arg)
{
    SwLink* link = arg;
    while (!atomic_load_explicit(&link->quit, memory_order_acquire)) {
        double now = now_s();
        /* commands from the audio thread */
        unsigned tail = atomic_load_explicit(&link->command_tail, memory_order_relaxed);
        while (tail != atomic_load_explicit(&link->command_head, memory_order_acquire)) {
            Command c = link->commands[tail % COMMANDS];
            atomic_store_explicit(&link->command_tail, ++tail, memory_order_release);
            cancel_job(link);
            if (c.kind == CMD_SUBMIT) submit_job(link, &c, now);
        }
        /* stems the audio thread gave back */
        unsigned rtail = atomic_load_explicit(&link->retired_tail, memory_order_relaxed);
        while (rtail != atomic_load_explicit(&link->retired_head, memory_order_acquire)) {
            bury(link, link->retired[rtail % RETIRED], NULL, now);
            atomic_store_explicit(&link->retired_tail, ++rtail, memory_order_release);
        }
        unsigned ltail = atomic_load_explicit(&link->retired_loops_tail, memory_order_relaxed);
        while (ltail != atomic_load_explicit(&link->retired_loops_head, memory_order_acquire)) {
            bury(link, NULL, link->retired_loops[ltail % RETIRED], now);
            atomic_store_explicit(&link->retired_loops_tail, ++ltail, memory_order_release);
        }
        for (int i = 0; i < RETIRED; ++i)
            if ((link->graveyard[i] || link->graveyard_loops[i]) && now - link->buried[i] > GRACE_S) {
                sw_stems_free(link->graveyard[i]);
                sw_loop_free(link->graveyard_loops[i]);
                link->graveyard[i] = NULL;
                link->graveyard_loops[i] = NULL;
            }
        poll_loop(link, now);
        if (now - link->last_beat >= HEARTBEAT_S) send_heartbeat(link, now);
        zmq_pollitem_t item = {link->socket, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, POLL_MS) > 0) receive(link, now_s());
        now = now_s();
        if (now - link->last_rx > OFFLINE_AFTER_S) atomic_store_explicit(&link->online, 0, memory_order_relaxed);
        if (link->job.active && now - link->job.last_rx > JOB_SILENCE_S) {
            fprintf(stderr, "stemweave: no word from the server for %.0f s: job abandoned\n", JOB_SILENCE_S);
            atomic_store_explicit(&link->online, 0, memory_order_relaxed);
            end_job(link, SW_STATE_OFFLINE);
        }
    }
    return NULL;
}

SwLink* sw_link_new(const char* endpoint, const char* client_name)
{
    SwLink* link = calloc(1, sizeof *link);
    if (!link) return NULL;
    if (!endpoint || !*endpoint) endpoint = getenv("STEMWEAVE_ENDPOINT");
    if (!endpoint || !*endpoint) endpoint = SW_DEFAULT_ENDPOINT;
    snprintf(link->endpoint, sizeof link->endpoint, "%s", endpoint);
    snprintf(link->client, sizeof link->client, "%s", client_name ? client_name : "stemweave-plugin");
    link->next_req = 1;
    link->orphan_req = -2;
    link->loop_req = -1;
    link->loop_logged = -1;
    link->loop_kept = SW_LOOP_READY;
    atomic_init(&link->loop, NULL);
    atomic_init(&link->loop_state, SW_LOOP_WAITING);
    atomic_init(&link->state, SW_STATE_IDLE);
    atomic_init(&link->result, NULL);
    pthread_mutex_init(&link->mutex, NULL);
    pthread_cond_init(&link->cond, NULL);
    link->context = zmq_ctx_new();
    link->socket = link->context ? zmq_socket(link->context, ZMQ_DEALER) : NULL;
    if (!link->socket) {
        sw_link_free(link);
        return NULL;
    }
    int zero = 0, one = 1, reconnect_ms = 250;
    zmq_setsockopt(link->socket, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(link->socket, ZMQ_IMMEDIATE, &one, sizeof one); /* never queue jobs for a server that is down */
    zmq_setsockopt(link->socket, ZMQ_RECONNECT_IVL, &reconnect_ms, sizeof reconnect_ms);
    if (zmq_connect(link->socket, link->endpoint) != 0) {
        fprintf(stderr, "stemweave: bad server endpoint %s: %s\n", link->endpoint, zmq_strerror(errno));
        sw_link_free(link);
        return NULL;
    }
    if (pthread_create(&link->thread, NULL, run_link, link) != 0) {
        sw_link_free(link);
        return NULL;
    }
    link->thread_started = 1;
    return link;
}

void sw_link_free(SwLink* link)
{
    if (!link) return;
    if (link->thread_started) {
        atomic_store_explicit(&link->quit, 1, memory_order_release);
        pthread_join(link->thread, NULL);
    }
    if (link->job.active && link->job.job[0]) send_cancel(link, link->job.job); /* do not leave work running on the server */
    sw_stems_free(atomic_exchange(&link->result, NULL));
    unsigned rtail = atomic_load(&link->retired_tail);
    while (rtail != atomic_load(&link->retired_head)) sw_stems_free(link->retired[rtail++ % RETIRED]);
    for (int i = 0; i < RETIRED; ++i) sw_stems_free(link->graveyard[i]);
    sw_loop_free(atomic_exchange(&link->loop, NULL));
    unsigned ltail = atomic_load(&link->retired_loops_tail);
    while (ltail != atomic_load(&link->retired_loops_head)) sw_loop_free(link->retired_loops[ltail++ % RETIRED]);
    for (int i = 0; i < RETIRED; ++i) sw_loop_free(link->graveyard_loops[i]);
    if (link->socket) zmq_close(link->socket);
    if (link->context) zmq_ctx_term(link->context);
    pthread_mutex_destroy(&link->mutex);
    pthread_cond_destroy(&link->cond);
    free(link);
}

int sw_link_wait(SwLink* link, uint64_t seq, double timeout_s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    double whole = (double)deadline.tv_sec + (double)deadline.tv_nsec * 1e-9 + timeout_s;
    deadline.tv_sec = (time_t)whole;
    deadline.tv_nsec = (long)((whole - (double)deadline.tv_sec) * 1e9);
    pthread_mutex_lock(&link->mutex);
    int rc = 0;
    while (atomic_load_explicit(&link->finished, memory_order_acquire) < seq && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&link->cond, &link->mutex, &deadline);
    int done = atomic_load_explicit(&link->finished, memory_order_acquire) >= seq;
    pthread_mutex_unlock(&link->mutex);
    return done;
}

int sw_link_wait_loop(SwLink* link, double timeout_s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    double whole = (double)deadline.tv_sec + (double)deadline.tv_nsec * 1e-9 + timeout_s;
    deadline.tv_sec = (time_t)whole;
    deadline.tv_nsec = (long)((whole - (double)deadline.tv_sec) * 1e9);
    pthread_mutex_lock(&link->mutex);
    unsigned long long before = atomic_load_explicit(&link->loop_answers, memory_order_acquire);
    int rc = 0;
    while (atomic_load_explicit(&link->loop_answers, memory_order_acquire) == before && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&link->cond, &link->mutex, &deadline);
    int answered = atomic_load_explicit(&link->loop_answers, memory_order_acquire) != before;
    pthread_mutex_unlock(&link->mutex);
    return answered;
}
