#include "state.h"
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATE_VERSION 1

void td_state_init(td_state *s) {
    memset(s, 0, sizeof *s);
    s->lr_scale = 1.0;
    s->loss_ema = NAN;
    s->best_metric = NAN;
    s->val_loss = NAN;
    s->loss_scale = 1.0;
}

void td_state_free(td_state *s) {
    tb_cursor_free(&s->cursor);
    free(s->config_yaml);
    s->config_yaml = NULL;
}

int td_state_copy(td_state *dst, const td_state *src, tb_err *err) {
    *dst = *src;
    dst->cursor.shuffle = NULL;
    dst->config_yaml = NULL;
    if (src->cursor.shuffle_len) {
        dst->cursor.shuffle = malloc(src->cursor.shuffle_len);
        if (!dst->cursor.shuffle) return tb_err_set(err, "state: out of memory");
        memcpy(dst->cursor.shuffle, src->cursor.shuffle, src->cursor.shuffle_len);
    }
    if (src->config_yaml && !(dst->config_yaml = strdup(src->config_yaml)))
        return tb_err_set(err, "state: out of memory");
    return 0;
}

uint64_t td_state_chain(uint64_t h, uint64_t seq, uint32_t crc) {
    /* splitmix64 over (h, seq, crc): order-sensitive, so equal chains mean equal streams. */
    uint64_t x = h ^ (seq * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)crc << 17);
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void pk_key(msgpack_packer *pk, const char *k) {
    size_t n = strlen(k);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, k, n);
}

int td_state_write(const char *path, const td_state *s, tb_err *err) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    /* The cursor travels as an encoded HELLO, so proto's checked decoder reads it back. */
    msgpack_sbuffer hb;
    msgpack_sbuffer_init(&hb);
    if (s->has_cursor) {
        msgpack_packer hp;
        msgpack_packer_init(&hp, &hb, msgpack_sbuffer_write);
        tb_hello h;
        memset(&h, 0, sizeof h);
        h.rank = 0;
        h.world = 1;
        h.has_cursor = true;
        h.cursor = s->cursor;
        snprintf(h.client, sizeof h.client, "state");
        if (tb_proto_encode_hello(&hp, &h, err)) {
            msgpack_sbuffer_destroy(&hb);
            msgpack_sbuffer_destroy(&sb);
            return tb_err_wrap(err, "state cursor");
        }
    }
    msgpack_pack_map(&pk, 22);
    pk_key(&pk, "v"); msgpack_pack_int64(&pk, STATE_VERSION);
    pk_key(&pk, "step"); msgpack_pack_int64(&pk, s->step);
    pk_key(&pk, "attempts"); msgpack_pack_int64(&pk, s->attempts);
    pk_key(&pk, "epoch"); msgpack_pack_int64(&pk, s->epoch);
    pk_key(&pk, "epoch_start_step"); msgpack_pack_int64(&pk, s->epoch_start_step);
    pk_key(&pk, "last_seq"); msgpack_pack_uint64(&pk, s->last_seq);
    pk_key(&pk, "batches_applied"); msgpack_pack_uint64(&pk, s->batches_applied);
    pk_key(&pk, "applied_hash"); msgpack_pack_uint64(&pk, s->applied_hash);
    pk_key(&pk, "lr_scale"); msgpack_pack_double(&pk, s->lr_scale);
    pk_key(&pk, "nan_retries"); msgpack_pack_int64(&pk, s->nan_retries);
    pk_key(&pk, "loss_ema"); msgpack_pack_double(&pk, s->loss_ema);
    pk_key(&pk, "ema_count"); msgpack_pack_int64(&pk, s->ema_count);
    pk_key(&pk, "best_metric"); msgpack_pack_double(&pk, s->best_metric);
    pk_key(&pk, "val_loss"); msgpack_pack_double(&pk, s->val_loss);
    pk_key(&pk, "loss_scale"); msgpack_pack_double(&pk, s->loss_scale);
    pk_key(&pk, "seed"); msgpack_pack_uint64(&pk, s->seed);
    pk_key(&pk, "dropout_counter"); msgpack_pack_int64(&pk, s->dropout_counter);
    pk_key(&pk, "total_steps"); msgpack_pack_int64(&pk, s->total_steps);
    pk_key(&pk, "sched_factor"); msgpack_pack_double(&pk, s->sched_factor);
    pk_key(&pk, "has_cursor"); if (s->has_cursor) msgpack_pack_true(&pk); else msgpack_pack_false(&pk);
    pk_key(&pk, "cursor_hello");
    msgpack_pack_bin(&pk, hb.size);
    msgpack_pack_bin_body(&pk, hb.data, hb.size);
    pk_key(&pk, "config");
    size_t cl = s->config_yaml ? strlen(s->config_yaml) : 0;
    msgpack_pack_str(&pk, cl);
    msgpack_pack_str_body(&pk, s->config_yaml ? s->config_yaml : "", cl);
    msgpack_sbuffer_destroy(&hb);

    int rc = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = tb_err_set(err, "open %s: %s", path, strerror(errno));
    } else {
        const char *p = sb.data;
        size_t left = sb.size;
        while (left && !rc) {
            ssize_t w = write(fd, p, left);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) rc = tb_err_set(err, "write %s: %s", path, strerror(errno));
            else {
                p += w;
                left -= (size_t)w;
            }
        }
        if (!rc && fsync(fd)) rc = tb_err_set(err, "fsync %s: %s", path, strerror(errno));
        if (close(fd) && !rc) rc = tb_err_set(err, "close %s: %s", path, strerror(errno));
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static const msgpack_object *get(const msgpack_object *map, const char *key) {
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            !memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size))
            return &kv->val;
    }
    return NULL;
}

static int get_i64(int64_t *out, const msgpack_object *map, const char *key, const char *path,
                   tb_err *err) {
    const msgpack_object *o = get(map, key);
    if (!o) return tb_err_set(err, "%s: %s: missing", path, key);
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) *out = (int64_t)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) *out = o->via.i64;
    else return tb_err_set(err, "%s: %s: not an integer", path, key);
    return 0;
}

static int get_u64(uint64_t *out, const msgpack_object *map, const char *key, const char *path,
                   tb_err *err) {
    const msgpack_object *o = get(map, key);
    if (!o) return tb_err_set(err, "%s: %s: missing", path, key);
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return tb_err_set(err, "%s: %s: not an unsigned integer", path, key);
    *out = o->via.u64;
    return 0;
}

static int get_dbl(double *out, const msgpack_object *map, const char *key, const char *path,
                   tb_err *err) {
    const msgpack_object *o = get(map, key);
    if (!o) return tb_err_set(err, "%s: %s: missing", path, key);
    if (o->type != MSGPACK_OBJECT_FLOAT64 && o->type != MSGPACK_OBJECT_FLOAT32)
        return tb_err_set(err, "%s: %s: not a float", path, key);
    *out = o->via.f64;
    return 0;
}

int td_state_read(const char *path, td_state *s, tb_err *err) {
    td_state_init(s);
    FILE *f = fopen(path, "rb");
    if (!f) return tb_err_set(err, "open %s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END)) {
        fclose(f);
        return tb_err_set(err, "seek %s: %s", path, strerror(errno));
    }
    long len = ftell(f);
    rewind(f);
    if (len <= 0 || len > (64L << 20)) {
        fclose(f);
        return tb_err_set(err, "%s: size %ld outside 1..64 MiB", path, len);
    }
    char *buf = malloc((size_t)len);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        fclose(f);
        return tb_err_set(err, "read %s: short read", path);
    }
    fclose(f);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int rc = -1;
    if (msgpack_unpack_next(&u, buf, (size_t)len, &off) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP || off != (size_t)len) {
        tb_err_set(err, "%s: not one msgpack map", path);
        goto out;
    }
    const msgpack_object *m = &u.data;
    int64_t v, nr;
    uint64_t seed;
    if (get_i64(&v, m, "v", path, err)) goto out;
    if (v != STATE_VERSION) {
        tb_err_set(err, "%s: v: %lld, want %d", path, (long long)v, STATE_VERSION);
        goto out;
    }
    if (get_i64(&s->step, m, "step", path, err) || get_i64(&s->attempts, m, "attempts", path, err) ||
        get_i64(&s->epoch, m, "epoch", path, err) ||
        get_i64(&s->epoch_start_step, m, "epoch_start_step", path, err) ||
        get_u64(&s->last_seq, m, "last_seq", path, err) ||
        get_u64(&s->batches_applied, m, "batches_applied", path, err) ||
        get_u64(&s->applied_hash, m, "applied_hash", path, err) ||
        get_dbl(&s->lr_scale, m, "lr_scale", path, err) ||
        get_i64(&nr, m, "nan_retries", path, err) || get_dbl(&s->loss_ema, m, "loss_ema", path, err) ||
        get_i64(&s->ema_count, m, "ema_count", path, err) ||
        get_dbl(&s->best_metric, m, "best_metric", path, err) ||
        get_dbl(&s->val_loss, m, "val_loss", path, err) ||
        get_dbl(&s->loss_scale, m, "loss_scale", path, err) || get_u64(&seed, m, "seed", path, err) ||
        get_i64(&s->dropout_counter, m, "dropout_counter", path, err) ||
        get_i64(&s->total_steps, m, "total_steps", path, err) ||
        get_dbl(&s->sched_factor, m, "sched_factor", path, err))
        goto out;
    s->nan_retries = nr;
    s->seed = seed;
    if (s->step < 0 || s->attempts < s->step || !(s->lr_scale > 0) || !isfinite(s->lr_scale)) {
        tb_err_set(err, "%s: step %lld / attempts %lld / lr_scale %g out of range", path,
                   (long long)s->step, (long long)s->attempts, s->lr_scale);
        goto out;
    }
    const msgpack_object *hc = get(m, "has_cursor"), *ch = get(m, "cursor_hello"),
                         *cf = get(m, "config");
    if (!hc || hc->type != MSGPACK_OBJECT_BOOLEAN || !ch || ch->type != MSGPACK_OBJECT_BIN ||
        !cf || cf->type != MSGPACK_OBJECT_STR) {
        tb_err_set(err, "%s: has_cursor, cursor_hello or config missing or mistyped", path);
        goto out;
    }
    s->has_cursor = hc->via.boolean;
    if (s->has_cursor) {
        tb_hello h;
        if (tb_proto_decode_hello(ch->via.bin.ptr, ch->via.bin.size, &h, err)) {
            tb_err_wrap(err, "%s: cursor_hello", path);
            goto out;
        }
        if (!h.has_cursor) {
            tb_hello_free(&h);
            tb_err_set(err, "%s: cursor_hello: no cursor", path);
            goto out;
        }
        s->cursor = h.cursor; /* takes ownership of shuffle */
        h.cursor.shuffle = NULL;
        h.cursor.shuffle_len = 0;
        tb_hello_free(&h);
    }
    s->config_yaml = malloc(cf->via.str.size + 1);
    if (!s->config_yaml) {
        tb_err_set(err, "%s: out of memory", path);
        goto out;
    }
    memcpy(s->config_yaml, cf->via.str.ptr, cf->via.str.size);
    s->config_yaml[cf->via.str.size] = 0;
    rc = 0;
out:
    msgpack_unpacked_destroy(&u);
    free(buf);
    if (rc) td_state_free(s);
    return rc;
}
