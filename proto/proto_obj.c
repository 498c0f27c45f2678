/* Unpacking with msgpack-c after the pre-check, typed field access with errors that name
 * the field, flat maps (tb_kvmap) and the cursor, which several messages share. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

static const char *const type_names[] = {
    [TB_PROTO_HELLO] = "hello",     [TB_PROTO_CREDIT] = "credit",   [TB_PROTO_ACK] = "ack",
    [TB_PROTO_BATCH] = "batch",     [TB_PROTO_METRICS] = "metrics", [TB_PROTO_REQUEST] = "request",
    [TB_PROTO_REPLY] = "reply",
};

const char *tb_proto_type_name(tb_proto_type type) {
    if (type <= TB_PROTO_UNKNOWN || type > TB_PROTO_REPLY) return NULL;
    return type_names[type];
}

const char *tbp_type_name(msgpack_object_type t) {
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "uint";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative int";
    case MSGPACK_OBJECT_FLOAT32: return "float32";
    case MSGPACK_OBJECT_FLOAT64: return "float64";
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    return "?";
}

int tbp_unpack(msgpack_unpacked *u, const void *buf, size_t len, const char *what, tb_err *err) {
    if (tb_proto_precheck(buf, len, what, err)) return -1;
    msgpack_unpacked_init(u);
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(u, buf, len, &off);
    if (r != MSGPACK_UNPACK_SUCCESS || off != len || u->data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(u);
        return tb_err_set(err, "%s: msgpack-c refused the message (status %d, %zu of %zu bytes)",
                          what, (int)r, off, len);
    }
    return 0;
}

/* Map keys are short strs (pre-checked); compare without trusting a NUL. */
static bool key_is(const msgpack_object *k, const char *name) {
    size_t n = strlen(name);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, name, n) == 0;
}

int tbp_fields(tbp_field *f, size_t n, const msgpack_object *o, const char *where, tb_err *err) {
    for (size_t i = 0; i < n; i++) f[i].val = NULL;
    if (o->type != MSGPACK_OBJECT_MAP)
        return tb_err_set(err, "%s: expected map, got %s", where, tbp_type_name(o->type));
    for (uint32_t j = 0; j < o->via.map.size; j++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[j];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return tb_err_set(err, "%s: map key of type %s", where, tbp_type_name(kv->key.type));
        for (size_t i = 0; i < n; i++) {
            if (!key_is(&kv->key, f[i].name)) continue;
            if (f[i].val) return tb_err_set(err, "%s.%s: duplicate key", where, f[i].name);
            f[i].val = &kv->val;
        }
    }
    return 0;
}

static int missing(const tbp_field *f, const char *where, tb_err *err) {
    return tb_err_set(err, "%s.%s: missing required field", where, f->name);
}

static int wrong_type(const tbp_field *f, const char *want, const char *where, tb_err *err) {
    return tb_err_set(err, "%s.%s: expected %s, got %s", where, f->name, want,
                      tbp_type_name(f->val->type));
}

int tbp_get_u64(uint64_t *out, const tbp_field *f, uint64_t lo, uint64_t hi, const char *where,
                tb_err *err) {
    if (!f->val) return missing(f, where, err);
    if (f->val->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return tb_err_set(err, "%s.%s: %" PRId64 " out of range [%" PRIu64 ", %" PRIu64 "]",
                          where, f->name, f->val->via.i64, lo, hi);
    if (f->val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return wrong_type(f, "unsigned integer", where, err);
    uint64_t v = f->val->via.u64;
    if (v < lo || v > hi)
        return tb_err_set(err, "%s.%s: %" PRIu64 " out of range [%" PRIu64 ", %" PRIu64 "]",
                          where, f->name, v, lo, hi);
    *out = v;
    return 0;
}

int tbp_get_bool(bool *out, const tbp_field *f, const char *where, tb_err *err) {
    if (!f->val) return missing(f, where, err);
    if (f->val->type != MSGPACK_OBJECT_BOOLEAN) return wrong_type(f, "bool", where, err);
    *out = f->val->via.boolean;
    return 0;
}

int tbp_get_double(double *out, const tbp_field *f, const char *where, tb_err *err) {
    if (!f->val) return missing(f, where, err);
    switch (f->val->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = f->val->via.f64; return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)f->val->via.u64; return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)f->val->via.i64; return 0;
    default: return wrong_type(f, "number", where, err);
    }
}

int tbp_get_str(char *dst, size_t max, const tbp_field *f, const char *where, tb_err *err) {
    if (!f->val) return missing(f, where, err);
    if (f->val->type != MSGPACK_OBJECT_STR) return wrong_type(f, "str", where, err);
    size_t n = f->val->via.str.size;
    if (n > max) return tb_err_set(err, "%s.%s: str length %zu > limit %zu", where, f->name, n, max);
    if (n && memchr(f->val->via.str.ptr, 0, n))
        return tb_err_set(err, "%s.%s: str contains a NUL byte", where, f->name);
    if (n) memcpy(dst, f->val->via.str.ptr, n);
    dst[n] = '\0';
    return 0;
}

int tbp_get_bin(const uint8_t **p, size_t *n, const tbp_field *f, const char *where, tb_err *err) {
    if (!f->val) return missing(f, where, err);
    if (f->val->type != MSGPACK_OBJECT_BIN) return wrong_type(f, "bin", where, err);
    *p = (const uint8_t *)f->val->via.bin.ptr;
    *n = f->val->via.bin.size;
    return 0;
}

int tbp_check_map(const tbp_field *f, const char *where, tb_err *err) {
    if (!f->val) return missing(f, where, err);
    if (f->val->type != MSGPACK_OBJECT_MAP) return wrong_type(f, "map", where, err);
    return 0;
}

int tbp_check_header(const tbp_field *f, const char *where, const char *type, tb_err *err) {
    uint64_t v;
    if (!f[0].val) return missing(&f[0], where, err);
    if (f[0].val->type == MSGPACK_OBJECT_POSITIVE_INTEGER && f[0].val->via.u64 != TB_PROTO_VERSION)
        return tb_err_set(err, "%s.v: unsupported version %" PRIu64 " (this build speaks %d)",
                          where, f[0].val->via.u64, TB_PROTO_VERSION);
    if (tbp_get_u64(&v, &f[0], TB_PROTO_VERSION, TB_PROTO_VERSION, where, err)) return -1;
    char t[TB_PROTO_MAX_NAME + 1];
    if (tbp_get_str(t, TB_PROTO_MAX_NAME, &f[1], where, err)) return -1;
    if (strcmp(t, type) != 0)
        return tb_err_set(err, "%s.t: expected \"%s\", got \"%.64s\"", where, type, t);
    return 0;
}

int tb_proto_peek_type(tb_proto_type *type, const void *buf, size_t len, tb_err *err) {
    *type = TB_PROTO_UNKNOWN;
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "message", err)) return -1;
    tbp_field f[] = {{"v", NULL}, {"t", NULL}};
    int rc = -1;
    uint64_t v;
    char t[TB_PROTO_MAX_NAME + 1];
    if (tbp_fields(f, 2, &u.data, "message", err) ||
        tbp_get_u64(&v, &f[0], 0, UINT64_MAX, "message", err) ||
        tbp_get_str(t, TB_PROTO_MAX_NAME, &f[1], "message", err))
        goto out;
    if (v != TB_PROTO_VERSION) {
        tb_err_set(err, "message.v: unsupported version %" PRIu64 " (this build speaks %d)", v,
                   TB_PROTO_VERSION);
        goto out;
    }
    for (int i = TB_PROTO_HELLO; i <= TB_PROTO_REPLY; i++)
        if (strcmp(t, type_names[i]) == 0) *type = (tb_proto_type)i;
    if (*type == TB_PROTO_UNKNOWN) {
        tb_err_set(err, "message.t: unknown type \"%.64s\"", t);
        goto out;
    }
    rc = 0;
out:
    msgpack_unpacked_destroy(&u);
    return rc;
}

int tbp_write_failed(const char *where, tb_err *err) {
    return tb_err_set(err, "%s: write failed (output buffer full?)", where);
}

int tbp_pack_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

int tbp_pack_header(msgpack_packer *pk, size_t nkeys, const char *type) {
    return msgpack_pack_map(pk, nkeys) || tbp_pack_str(pk, "v") ||
           msgpack_pack_uint32(pk, TB_PROTO_VERSION) || tbp_pack_str(pk, "t") ||
           tbp_pack_str(pk, type);
}

/* ---- flat maps ---------------------------------------------------------------------- */

static tb_kv *kv_slot(tb_kvmap *m, const char *key, tb_err *err) {
    size_t n = strlen(key);
    if (n == 0 || n > TB_PROTO_MAX_KEY)
        return tb_err_set(err, "flat map key \"%.80s\": length %zu not in [1, %d]", key, n,
                          TB_PROTO_MAX_KEY), NULL;
    if (tb_kvmap_get(m, key)) return tb_err_set(err, "flat map key \"%s\": duplicate", key), NULL;
    if (m->n >= TB_PROTO_MAX_KEYS)
        return tb_err_set(err, "flat map key \"%s\": map full (%d keys)", key, TB_PROTO_MAX_KEYS), NULL;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        tb_kv *items = realloc(m->items, cap * sizeof *items);
        if (!items) return tb_err_set(err, "flat map: out of memory"), NULL;
        m->items = items;
        m->cap = cap;
    }
    tb_kv *kv = &m->items[m->n];
    memset(kv, 0, sizeof *kv);
    memcpy(kv->key, key, n + 1);
    return kv;
}

int tb_kvmap_add_int(tb_kvmap *m, const char *key, int64_t v, tb_err *err) {
    tb_kv *kv = kv_slot(m, key, err);
    if (!kv) return -1;
    kv->type = TB_KV_INT;
    kv->v.i = v;
    m->n++;
    return 0;
}

int tb_kvmap_add_double(tb_kvmap *m, const char *key, double v, tb_err *err) {
    tb_kv *kv = kv_slot(m, key, err);
    if (!kv) return -1;
    kv->type = TB_KV_DOUBLE;
    kv->v.d = v;
    m->n++;
    return 0;
}

int tb_kvmap_add_bool(tb_kvmap *m, const char *key, bool v, tb_err *err) {
    tb_kv *kv = kv_slot(m, key, err);
    if (!kv) return -1;
    kv->type = TB_KV_BOOL;
    kv->v.b = v;
    m->n++;
    return 0;
}

int tb_kvmap_add_str(tb_kvmap *m, const char *key, const char *v, tb_err *err) {
    size_t n = strlen(v);
    if (n > TB_PROTO_MAX_STR)
        return tb_err_set(err, "flat map key \"%s\": str length %zu > limit %d", key, n,
                          TB_PROTO_MAX_STR);
    tb_kv *kv = kv_slot(m, key, err);
    if (!kv) return -1;
    kv->v.s = malloc(n + 1);
    if (!kv->v.s) return tb_err_set(err, "flat map: out of memory");
    memcpy(kv->v.s, v, n + 1);
    kv->type = TB_KV_STR;
    m->n++;
    return 0;
}

const tb_kv *tb_kvmap_get(const tb_kvmap *m, const char *key) {
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->items[i].key, key) == 0) return &m->items[i];
    return NULL;
}

void tb_kvmap_free(tb_kvmap *m) {
    for (size_t i = 0; i < m->n; i++)
        if (m->items[i].type == TB_KV_STR) free(m->items[i].v.s);
    free(m->items);
    memset(m, 0, sizeof *m);
}

int tbp_check_kvmap(const tb_kvmap *m, const char *where, tb_err *err) {
    if (m->n > TB_PROTO_MAX_KEYS)
        return tb_err_set(err, "%s: %zu keys > limit %d", where, m->n, TB_PROTO_MAX_KEYS);
    for (size_t i = 0; i < m->n; i++) {
        const tb_kv *kv = &m->items[i];
        size_t kn = strnlen(kv->key, sizeof kv->key);
        if (kn == 0 || kn > TB_PROTO_MAX_KEY)
            return tb_err_set(err, "%s: key %zu has length %zu not in [1, %d]", where, i, kn,
                              TB_PROTO_MAX_KEY);
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->items[j].key, kv->key) == 0)
                return tb_err_set(err, "%s.%s: duplicate key", where, kv->key);
        switch (kv->type) {
        case TB_KV_INT: case TB_KV_DOUBLE: case TB_KV_BOOL: break;
        case TB_KV_STR:
            if (!kv->v.s) return tb_err_set(err, "%s.%s: NULL str", where, kv->key);
            if (strlen(kv->v.s) > TB_PROTO_MAX_STR)
                return tb_err_set(err, "%s.%s: str length %zu > limit %d", where, kv->key,
                                  strlen(kv->v.s), TB_PROTO_MAX_STR);
            break;
        default: return tb_err_set(err, "%s.%s: bad value type %d", where, kv->key, (int)kv->type);
        }
    }
    return 0;
}

int tbp_pack_kvmap(msgpack_packer *pk, const tb_kvmap *m) {
    int rc = msgpack_pack_map(pk, m->n);
    for (size_t i = 0; i < m->n && !rc; i++) {
        const tb_kv *kv = &m->items[i];
        rc = tbp_pack_str(pk, kv->key);
        if (rc) break;
        switch (kv->type) {
        case TB_KV_INT: rc = msgpack_pack_int64(pk, kv->v.i); break;
        case TB_KV_DOUBLE: rc = msgpack_pack_double(pk, kv->v.d); break;
        case TB_KV_BOOL: rc = kv->v.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
        case TB_KV_STR: rc = tbp_pack_str(pk, kv->v.s); break;
        }
    }
    return rc;
}

int tbp_decode_kvmap(tb_kvmap *out, const tbp_field *f, const char *where, tb_err *err) {
    memset(out, 0, sizeof *out);
    if (tbp_check_map(f, where, err)) return -1;
    const msgpack_object_map *mp = &f->val->via.map;
    if (mp->size > TB_PROTO_MAX_KEYS)
        return tb_err_set(err, "%s.%s: %u keys > limit %d", where, f->name, mp->size,
                          TB_PROTO_MAX_KEYS);
    for (uint32_t i = 0; i < mp->size; i++) {
        const msgpack_object *k = &mp->ptr[i].key, *v = &mp->ptr[i].val;
        char key[TB_PROTO_MAX_KEY + 1];
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0 ||
            k->via.str.size > TB_PROTO_MAX_KEY || memchr(k->via.str.ptr, 0, k->via.str.size)) {
            tb_err_set(err, "%s.%s: key %u is not a str of 1..%d bytes without NUL", where,
                       f->name, i, TB_PROTO_MAX_KEY);
            goto fail;
        }
        memcpy(key, k->via.str.ptr, k->via.str.size);
        key[k->via.str.size] = '\0';
        tb_err sub;
        int rc;
        switch (v->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            if (v->via.u64 > INT64_MAX) {
                tb_err_set(err, "%s.%s.%s: %" PRIu64 " > INT64_MAX", where, f->name, key, v->via.u64);
                goto fail;
            }
            rc = tb_kvmap_add_int(out, key, (int64_t)v->via.u64, &sub);
            break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER: rc = tb_kvmap_add_int(out, key, v->via.i64, &sub); break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64: rc = tb_kvmap_add_double(out, key, v->via.f64, &sub); break;
        case MSGPACK_OBJECT_BOOLEAN: rc = tb_kvmap_add_bool(out, key, v->via.boolean, &sub); break;
        case MSGPACK_OBJECT_STR: {
            tbp_field vf = {key, v};
            char s[TB_PROTO_MAX_STR + 1];
            char sub_where[256];
            snprintf(sub_where, sizeof sub_where, "%s.%s", where, f->name);
            if (tbp_get_str(s, TB_PROTO_MAX_STR, &vf, sub_where, err)) goto fail;
            rc = tb_kvmap_add_str(out, key, s, &sub);
            break;
        }
        default:
            tb_err_set(err, "%s.%s.%s: expected int, float, bool or str, got %s", where, f->name,
                       key, tbp_type_name(v->type));
            goto fail;
        }
        if (rc) {
            tb_err_set(err, "%s.%s: %s", where, f->name, sub.msg);
            goto fail;
        }
    }
    return 0;
fail:
    tb_kvmap_free(out);
    return -1;
}

/* ---- cursor ------------------------------------------------------------------------- */

enum { CUR_GEN, CUR_EPOCH, CUR_SHARD, CUR_DOC, CUR_OFF, CUR_SAMPLES, CUR_SHUFFLE, CUR_N };
static const char *const cursor_keys[CUR_N] = {"generation", "epoch", "shard_pos", "doc_index",
                                                "token_offset", "samples_emitted", "shuffle"};

void tb_cursor_free(tb_cursor *c) {
    free(c->shuffle);
    memset(c, 0, sizeof *c);
}

int tbp_check_cursor(const tb_cursor *c, const char *where, tb_err *err) {
    if (c->shuffle_len > TB_PROTO_MAX_SHUFFLE)
        return tb_err_set(err, "%s.shuffle: bin length %zu > limit %d", where, c->shuffle_len,
                          TB_PROTO_MAX_SHUFFLE);
    if (c->shuffle_len && !c->shuffle) return tb_err_set(err, "%s.shuffle: NULL", where);
    return 0;
}

int tbp_pack_cursor(msgpack_packer *pk, const tb_cursor *c) {
    const uint64_t v[6] = {c->generation, c->epoch, c->shard_pos, c->doc_index, c->token_offset,
                           c->samples_emitted};
    int rc = msgpack_pack_map(pk, CUR_N);
    for (int i = 0; i < 6 && !rc; i++)
        rc = tbp_pack_str(pk, cursor_keys[i]) || msgpack_pack_uint64(pk, v[i]);
    if (!rc) rc = tbp_pack_str(pk, cursor_keys[CUR_SHUFFLE]) || msgpack_pack_bin(pk, c->shuffle_len);
    if (!rc && c->shuffle_len) rc = msgpack_pack_bin_body(pk, c->shuffle, c->shuffle_len);
    return rc;
}

int tbp_decode_cursor(tb_cursor *out, const tbp_field *f, const char *where, tb_err *err) {
    memset(out, 0, sizeof *out);
    if (tbp_check_map(f, where, err)) return -1;
    char sub[160];
    snprintf(sub, sizeof sub, "%s.%s", where, f->name);
    tbp_field cf[CUR_N];
    for (int i = 0; i < CUR_N; i++) cf[i].name = cursor_keys[i];
    if (tbp_fields(cf, CUR_N, f->val, sub, err)) return -1;
    uint64_t *dst[6] = {&out->generation, &out->epoch,        &out->shard_pos,
                        &out->doc_index,  &out->token_offset, &out->samples_emitted};
    for (int i = 0; i < 6; i++)
        if (tbp_get_u64(dst[i], &cf[i], 0, UINT64_MAX, sub, err)) return -1;
    const uint8_t *p;
    size_t n;
    if (tbp_get_bin(&p, &n, &cf[CUR_SHUFFLE], sub, err)) return -1;
    if (n > TB_PROTO_MAX_SHUFFLE)
        return tb_err_set(err, "%s.shuffle: bin length %zu > limit %d", sub, n, TB_PROTO_MAX_SHUFFLE);
    if (n) {
        out->shuffle = malloc(n);
        if (!out->shuffle) return tb_err_set(err, "%s.shuffle: out of memory (%zu bytes)", sub, n);
        memcpy(out->shuffle, p, n);
        out->shuffle_len = n;
    }
    return 0;
}

int tbp_check_name(const char *s, const char *where, const char *field, bool nonempty, tb_err *err) {
    size_t n = strnlen(s, TB_PROTO_MAX_NAME + 1);
    if (n > TB_PROTO_MAX_NAME)
        return tb_err_set(err, "%s.%s: str length > limit %d", where, field, TB_PROTO_MAX_NAME);
    if (nonempty && n == 0) return tb_err_set(err, "%s.%s: empty", where, field);
    return 0;
}
