/* Pre-check of untrusted msgpack bytes before msgpack-c unpacks them.
 *
 * msgpack-c 4.0.0 reserves memory for an array or map from its declared count before it
 * has seen the elements (155 bytes of nested array32 headers can ask for 63 GB). This
 * walker reads only the headers of the msgpack wire format (github.com/msgpack/msgpack,
 * spec.md "Formats") and refuses any count or length that the remaining bytes cannot hold,
 * so what msgpack-c later allocates is bounded by the message size and
 * TB_PROTO_MAX_OBJECTS. It decodes no value; msgpack-c does that afterwards. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "proto_internal.h"

typedef struct walker {
    const uint8_t *p, *end, *start;
    size_t objects;
    char path[256]; /* "BATCH.cursor_after.shuffle", for errors */
    size_t path_len;
    tb_err *err;
} walker;

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

static int fail(walker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(walker *w, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return tb_err_set(w->err, "%s: %s (offset %zu)", w->path, tmp, (size_t)(w->p - w->start));
}
#define U(x) ((unsigned long long)(x))

/* Appends ".key" (non-printable bytes shown as '?') or "[i]" to the path. */
static size_t path_push_key(walker *w, const uint8_t *key, size_t n) {
    size_t old = w->path_len, room = sizeof w->path - 1;
    if (w->path_len < room) w->path[w->path_len++] = '.';
    for (size_t i = 0; i < n && w->path_len < room; i++)
        w->path[w->path_len++] = (key[i] >= 0x20 && key[i] < 0x7f) ? (char)key[i] : '?';
    w->path[w->path_len] = '\0';
    return old;
}

static size_t path_push_index(walker *w, uint64_t i) {
    size_t old = w->path_len;
    int n = snprintf(w->path + w->path_len, sizeof w->path - w->path_len, "[%llu]",
                     (unsigned long long)i);
    if (n > 0) w->path_len += (size_t)n;
    if (w->path_len >= sizeof w->path) w->path_len = sizeof w->path - 1;
    return old;
}

static void path_pop(walker *w, size_t old) {
    w->path_len = old;
    w->path[old] = '\0';
}

static size_t left(const walker *w) { return (size_t)(w->end - w->p); }

/* Consumes n header bytes after the type byte. */
static int need(walker *w, size_t n, const char *what) {
    if (left(w) < n) return fail(w, "%s truncated: needs %zu bytes, %zu left", what, n, left(w));
    return 0;
}

static int walk(walker *w, int depth);

static int walk_str_or_bin(walker *w, uint64_t n, const char *kind, uint64_t max) {
    if (n > left(w)) return fail(w, "%s length %llu > %zu bytes left", kind, U(n), left(w));
    if (n > max) return fail(w, "%s length %llu > limit %llu", kind, U(n), U(max));
    w->p += n;
    return 0;
}

static int walk_array(walker *w, uint64_t n, int depth) {
    if (depth > TB_PROTO_MAX_DEPTH)
        return fail(w, "nesting depth %d > limit %d", depth, TB_PROTO_MAX_DEPTH);
    if (n > left(w)) return fail(w, "array count %llu > %zu bytes left", U(n), left(w));
    if (n > TB_PROTO_MAX_ARRAY)
        return fail(w, "array count %llu > limit %d", U(n), TB_PROTO_MAX_ARRAY);
    for (uint64_t i = 0; i < n; i++) {
        size_t old = path_push_index(w, i);
        if (walk(w, depth)) return -1;
        path_pop(w, old);
    }
    return 0;
}

static int walk_map(walker *w, uint64_t n, int depth) {
    if (depth > TB_PROTO_MAX_DEPTH)
        return fail(w, "nesting depth %d > limit %d", depth, TB_PROTO_MAX_DEPTH);
    if (n > left(w) / 2) return fail(w, "map count %llu > %zu bytes left / 2", U(n), left(w));
    if (n > TB_PROTO_MAX_KEYS) return fail(w, "map count %llu > limit %d", U(n), TB_PROTO_MAX_KEYS);
    for (uint64_t i = 0; i < n; i++) {
        /* Keys: str only, at most TB_PROTO_MAX_KEY bytes. */
        if (need(w, 1, "map key")) return -1;
        uint8_t b = *w->p;
        uint64_t klen;
        int hdr;
        if (b >= 0xa0 && b <= 0xbf) klen = b & 0x1f, hdr = 0;
        else if (b == 0xd9) hdr = 1;
        else if (b == 0xda) hdr = 2;
        else if (b == 0xdb) hdr = 4;
        else return fail(w, "map key is not a str (type byte 0x%02x)", b);
        w->p++;
        if (hdr) {
            if (need(w, (size_t)hdr, "map key header")) return -1;
            klen = be(w->p, hdr);
            w->p += hdr;
        }
        if (klen > left(w)) return fail(w, "map key length %llu > %zu bytes left", U(klen), left(w));
        if (klen > TB_PROTO_MAX_KEY) return fail(w, "map key length %llu > limit %d", U(klen), TB_PROTO_MAX_KEY);
        if (++w->objects > TB_PROTO_MAX_OBJECTS)
            return fail(w, "object count %zu > limit %d", w->objects, TB_PROTO_MAX_OBJECTS);
        const uint8_t *key = w->p;
        w->p += klen;
        size_t old = path_push_key(w, key, (size_t)klen);
        if (walk(w, depth)) return -1;
        path_pop(w, old);
    }
    return 0;
}

/* One object at the current position; containers opened here are at depth + 1. */
static int walk(walker *w, int depth) {
    if (need(w, 1, "object")) return -1;
    if (++w->objects > TB_PROTO_MAX_OBJECTS)
        return fail(w, "object count %zu > limit %d", w->objects, TB_PROTO_MAX_OBJECTS);
    uint8_t b = *w->p++;
    if (b <= 0x7f || b >= 0xe0) return 0; /* fixints */
    if (b <= 0x8f) return walk_map(w, b & 0x0f, depth + 1);
    if (b <= 0x9f) return walk_array(w, b & 0x0f, depth + 1);
    if (b <= 0xbf) return walk_str_or_bin(w, b & 0x1f, "str", TB_PROTO_MAX_STR);
    switch (b) {
    case 0xc0: case 0xc2: case 0xc3: return 0;               /* nil, false, true */
    case 0xcc: case 0xd0: return need(w, 1, "int") ? -1 : (w->p += 1, 0);
    case 0xcd: case 0xd1: return need(w, 2, "int") ? -1 : (w->p += 2, 0);
    case 0xce: case 0xd2: case 0xca: return need(w, 4, "number") ? -1 : (w->p += 4, 0);
    case 0xcf: case 0xd3: case 0xcb: return need(w, 8, "number") ? -1 : (w->p += 8, 0);
    case 0xc4: case 0xc5: case 0xc6: case 0xd9: case 0xda: case 0xdb: {
        bool bin = b <= 0xc6;
        int hdr = 1 << (bin ? b - 0xc4 : b - 0xd9);
        if (need(w, (size_t)hdr, bin ? "bin header" : "str header")) return -1;
        uint64_t n = be(w->p, hdr);
        w->p += hdr;
        return walk_str_or_bin(w, n, bin ? "bin" : "str",
                               bin ? (uint64_t)TB_PROTO_MAX_MSG : TB_PROTO_MAX_STR);
    }
    case 0xdc: case 0xdd: case 0xde: case 0xdf: {
        int hdr = (b == 0xdc || b == 0xde) ? 2 : 4;
        if (need(w, (size_t)hdr, "container header")) return -1;
        uint64_t n = be(w->p, hdr);
        w->p += hdr;
        return b <= 0xdd ? walk_array(w, n, depth + 1) : walk_map(w, n, depth + 1);
    }
    default: /* 0xc1 (never used) and the ext family */
        w->p--;
        return fail(w, "unsupported msgpack type byte 0x%02x", b);
    }
}

int tb_proto_precheck(const void *buf, size_t len, const char *what, tb_err *err) {
    if (!what) what = "message";
    if (!buf && len) return tb_err_set(err, "%s: NULL buffer", what);
    if ((uint64_t)len > (uint64_t)TB_PROTO_MAX_MSG)
        return tb_err_set(err, "%s: message of %zu bytes > limit %lld", what, len,
                          (long long)TB_PROTO_MAX_MSG);
    if (len == 0) return tb_err_set(err, "%s: empty message", what);
    walker w = {.p = buf, .start = buf, .end = (const uint8_t *)buf + len, .err = err};
    snprintf(w.path, sizeof w.path, "%.100s", what);
    w.path_len = strlen(w.path);
    uint8_t b = *w.p;
    if (!((b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf))
        return tb_err_set(err, "%s: not a msgpack map (type byte 0x%02x)", what, b);
    if (walk(&w, 0)) return -1;
    if (w.p != w.end)
        return tb_err_set(err, "%s: %zu trailing bytes after the message", what, left(&w));
    return 0;
}

int tb_proto_fixbuf_write(void *fixbuf, const char *data, size_t len) {
    tb_proto_fixbuf *fb = fixbuf;
    if (fb->overflow || len > fb->cap - fb->len) {
        fb->overflow = 1;
        return -1;
    }
    memcpy(fb->data + fb->len, data, len);
    fb->len += len;
    return 0;
}
