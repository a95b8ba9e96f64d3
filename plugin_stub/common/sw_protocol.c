/* The bridge's wire protocol for C clients: JSON header encoding and a small, bounds-checked reply decoder. */
#include "sw_protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char* const SW_SLOT_NAMES[SW_SLOTS] = {"bass", "drums", "guitar", "piano"};

static int fits(int n, size_t cap) { return n >= 0 && (size_t)n < cap ? n : -1; }

/* A name is safe to put between quotes as it is (the protocol's NAME rule, a subset of it). */
static int is_name(const char* s)
{
    if (!s || !*s || strlen(s) > SW_MAX_NAME) return 0;
    for (const char* p = s; *p; ++p) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '+' || c == '-'))
            return 0;
    }
    return 1;
}

int sw_header_hello(char* out, size_t cap, int64_t req, const char* client)
{
    if (!is_name(client)) return -1;
    return fits(snprintf(out, cap, "{\"v\":%d,\"type\":\"hello\",\"req\":%lld,\"client\":\"%s\"}", SW_PROTOCOL_VERSION,
                         (long long)req, client), cap);
}

int sw_header_heartbeat(char* out, size_t cap, int64_t req)
{
    return fits(snprintf(out, cap, "{\"v\":%d,\"type\":\"heartbeat\",\"req\":%lld}", SW_PROTOCOL_VERSION,
                         (long long)req), cap);
}

int sw_header_cancel(char* out, size_t cap, int64_t req, const char* job)
{
    if (!is_name(job)) return -1;
    return fits(snprintf(out, cap, "{\"v\":%d,\"type\":\"cancel\",\"req\":%lld,\"job\":\"%s\"}", SW_PROTOCOL_VERSION,
                         (long long)req, job), cap);
}

int sw_header_loop(char* out, size_t cap, int64_t req, int64_t since)
{
    if (since < 0) return -1;
    return fits(snprintf(out, cap, "{\"v\":%d,\"type\":\"loop\",\"req\":%lld,\"since\":%lld}", SW_PROTOCOL_VERSION,
                         (long long)req, (long long)since), cap);
}

int sw_header_submit(char* out, size_t cap, int64_t req, SwTask task, int rate, int channels, int64_t frames,
                     int64_t position, uint64_t seed, const char* given, const char* target)
{
    if (channels < 1 || channels > SW_MAX_CHANNELS || frames < 1) return -1;
    if (task == SW_TASK_SEPARATE)
        return fits(snprintf(out, cap,
                             "{\"v\":%d,\"type\":\"submit\",\"req\":%lld,\"task\":\"separate\",\"rate\":%d,"
                             "\"channels\":%d,\"frames\":%lld,\"dtype\":\"float32le\",\"audio\":true,\"given\":[],"
                             "\"position\":%lld,\"seed\":%llu,\"priority\":\"interactive\",\"params\":{}}",
                             SW_PROTOCOL_VERSION, (long long)req, rate, channels, (long long)frames,
                             (long long)position, (unsigned long long)(seed & 0x7fffffffffffffffULL)), cap);
    if (!is_name(given) || !is_name(target)) return -1;
    return fits(snprintf(out, cap,
                         "{\"v\":%d,\"type\":\"submit\",\"req\":%lld,\"task\":\"accompany\",\"rate\":%d,"
                         "\"channels\":%d,\"frames\":%lld,\"dtype\":\"float32le\",\"audio\":false,"
                         "\"given\":[\"%s\"],\"position\":%lld,\"seed\":%llu,\"priority\":\"interactive\","
                         "\"params\":{\"stems\":[\"%s\"]}}",
                         SW_PROTOCOL_VERSION, (long long)req, rate, channels, (long long)frames, given,
                         (long long)position, (unsigned long long)(seed & 0x7fffffffffffffffULL), target), cap);
}

/* ---------------------------------------------------------------------------------------------------------
 * A minimal JSON scanner: enough to walk one object's top-level members and skip any value. */

typedef struct {
    const char* p;
    const char* end;
} Scan;

static void skip_ws(Scan* s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) ++s->p;
}

static int skip_string(Scan* s)
{
    if (s->p >= s->end || *s->p != '"') return -1;
    for (++s->p; s->p < s->end; ++s->p) {
        if (*s->p == '\\') {
            if (++s->p >= s->end) return -1;
        } else if (*s->p == '"') {
            ++s->p;
            return 0;
        }
    }
    return -1;
}

static int skip_value(Scan* s, int depth)
{
    if (depth > 32) return -1;
    skip_ws(s);
    if (s->p >= s->end) return -1;
    char c = *s->p;
    if (c == '"') return skip_string(s);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        ++s->p;
        skip_ws(s);
        if (s->p < s->end && *s->p == close) {
            ++s->p;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                skip_ws(s);
                if (skip_string(s)) return -1;
                skip_ws(s);
                if (s->p >= s->end || *s->p != ':') return -1;
                ++s->p;
            }
            if (skip_value(s, depth + 1)) return -1;
            skip_ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') {
                ++s->p;
                continue;
            }
            if (*s->p == close) {
                ++s->p;
                return 0;
            }
            return -1;
        }
    }
    /* number, true, false, null */
    const char* start = s->p;
    while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']' && *s->p != ' ' && *s->p != '\n' &&
           *s->p != '\t' && *s->p != '\r')
        ++s->p;
    return s->p > start ? 0 : -1;
}

int sw_json_find(const char* json, size_t len, const char* key, const char** value, size_t* value_len)
{
    Scan s = {json, json + len};
    size_t key_len = strlen(key);
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{') return -1;
    ++s.p;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') return -1;
    for (;;) {
        skip_ws(&s);
        const char* k = s.p + 1;
        if (skip_string(&s)) return -1;
        size_t k_len = (size_t)(s.p - 1 - k);
        skip_ws(&s);
        if (s.p >= s.end || *s.p != ':') return -1;
        ++s.p;
        skip_ws(&s);
        const char* v = s.p;
        if (skip_value(&s, 0)) return -1;
        if (k_len == key_len && memcmp(k, key, key_len) == 0) {
            *value = v;
            *value_len = (size_t)(s.p - v);
            return 0;
        }
        skip_ws(&s);
        if (s.p >= s.end) return -1;
        if (*s.p == ',') {
            ++s.p;
            continue;
        }
        return -1;
    }
}

/* Copy a JSON string value (with its quotes) into out, decoding simple escapes; -1 if not a string or too long. */
static int decode_string(const char* v, size_t n, char* out, size_t cap)
{
    if (n < 2 || v[0] != '"' || v[n - 1] != '"') return -1;
    size_t o = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
        char c = v[i];
        if (c == '\\' && i + 2 < n) {
            char e = v[++i];
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'u' ? '?' : e;
            if (e == 'u') i += 4 < n - 1 - i ? 4 : n - 2 - i;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

static int get_string(const char* json, size_t len, const char* key, char* out, size_t cap)
{
    const char* v;
    size_t n;
    if (sw_json_find(json, len, key, &v, &n)) return -1;
    return decode_string(v, n, out, cap);
}

static int get_number(const char* json, size_t len, const char* key, double* out)
{
    const char* v;
    size_t n;
    char buf[64];
    if (sw_json_find(json, len, key, &v, &n) || n == 0 || n >= sizeof buf) return -1;
    if (!((v[0] >= '0' && v[0] <= '9') || v[0] == '-')) return -1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    char* end;
    *out = strtod(buf, &end);
    return *end == '\0' ? 0 : -1;
}

static int get_int(const char* json, size_t len, const char* key, int64_t* out)
{
    const char* v;
    size_t n;
    char buf[32];
    if (sw_json_find(json, len, key, &v, &n) || n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    char* end;
    long long x = strtoll(buf, &end, 10);
    if (*end != '\0') return -1;
    *out = x;
    return 0;
}

static int get_bool(const char* json, size_t len, const char* key, int* out)
{
    const char* v;
    size_t n;
    if (sw_json_find(json, len, key, &v, &n)) return -1;
    if (n == 4 && memcmp(v, "true", 4) == 0) *out = 1;
    else if (n == 5 && memcmp(v, "false", 5) == 0) *out = 0;
    else return -1;
    return 0;
}

static int get_string_list(const char* json, size_t len, const char* key, char (*out)[SW_MAX_NAME + 1], int max)
{
    const char* v;
    size_t n;
    if (sw_json_find(json, len, key, &v, &n) || n < 2 || v[0] != '[') return -1;
    Scan s = {v + 1, v + n};
    int count = 0;
    for (;;) {
        skip_ws(&s);
        if (s.p < s.end && *s.p == ']') return count;
        const char* item = s.p;
        if (skip_string(&s) || count >= max) return -1;
        if (decode_string(item, (size_t)(s.p - item), out[count], SW_MAX_NAME + 1)) return -1;
        ++count;
        skip_ws(&s);
        if (s.p < s.end && *s.p == ',') ++s.p;
    }
}

static const struct {
    const char* name;
    SwMessageType type;
} TYPES[] = {{"hello", SW_MSG_HELLO},     {"accepted", SW_MSG_ACCEPTED}, {"progress", SW_MSG_PROGRESS},
             {"partial", SW_MSG_PARTIAL}, {"result", SW_MSG_RESULT},     {"error", SW_MSG_ERROR},
             {"status", SW_MSG_STATUS},   {"heartbeat", SW_MSG_HEARTBEAT}, {"loop", SW_MSG_LOOP}};

int sw_reply_parse(const char* json, size_t len, SwReply* r)
{
    memset(r, 0, sizeof *r);
    r->req = -1;
    int64_t version = 0;
    char type[32];
    if (get_int(json, len, "v", &version) || version != SW_PROTOCOL_VERSION) return -1;
    if (get_string(json, len, "type", type, sizeof type)) return -1;
    r->type = SW_MSG_UNKNOWN;
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; ++i)
        if (strcmp(type, TYPES[i].name) == 0) r->type = TYPES[i].type;
    int64_t x;
    if (!get_int(json, len, "req", &x)) r->req = x;
    get_string(json, len, "job", r->job, sizeof r->job);
    get_number(json, len, "fraction", &r->fraction);
    get_string(json, len, "code", r->code, sizeof r->code);
    get_string(json, len, "message", r->message, sizeof r->message);
    if (!get_int(json, len, "channels", &x) && x >= 0 && x <= SW_MAX_CHANNELS) r->channels = (int)x;
    if (!get_int(json, len, "frames", &x) && x >= 0) r->frames = x;
    if (!get_int(json, len, "rate", &x) && x > 0 && x < 10000000) r->rate = (int)x;
    if (!get_int(json, len, "position", &x)) {
        r->has_position = 1;
        r->position = x;
    }
    int n = get_string_list(json, len, "stems", r->stems, SW_MAX_STEMS);
    r->n_stems = n > 0 ? n : 0;
    r->serial = r->version = r->bar_frames = -1;
    if (!get_int(json, len, "serial", &x) && x >= 0) r->serial = x;
    if (!get_int(json, len, "version", &x) && x >= 0) r->version = x;
    if (get_number(json, len, "tempo", &r->tempo) || !(r->tempo > 0.0)) r->tempo = 0.0;
    if (!get_int(json, len, "bars", &x) && x >= 1 && x <= 64) r->bars = (int)x;
    if (!get_int(json, len, "beats_per_bar", &x) && x >= 1 && x <= 64) r->beats_per_bar = (int)x;
    if (!get_int(json, len, "bar_frames", &x) && x >= 1) r->bar_frames = x;
    if (get_bool(json, len, "audio", &r->audio)) r->audio = 0;
    const char *info, *list;
    size_t info_len, list_len;
    if (!sw_json_find(json, len, "info", &info, &info_len) &&
        !sw_json_find(info, info_len, "warnings", &list, &list_len) && list_len > 2 && list[0] == '[') {
        Scan s = {list + 1, list + list_len};
        skip_ws(&s);
        const char* first = s.p;
        if (!skip_string(&s) && decode_string(first, (size_t)(s.p - first), r->warning, sizeof r->warning))
            r->warning[0] = '\0';
    }
    return 0;
}
