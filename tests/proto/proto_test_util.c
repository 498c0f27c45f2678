#include "proto_test_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what) {
    fprintf(stderr, "test helper: %s\n", what);
    abort();
}

static bool key_eq(const msgpack_object *k, const char *s, size_t n) {
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

static void pack_str(msgpack_packer *pk, const char *s, size_t n) {
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_mutated(msgpack_packer *pk, const msgpack_object *o, const char *path,
                         const msgpack_object *repl) {
    if (!path || o->type != MSGPACK_OBJECT_MAP) {
        msgpack_pack_object(pk, *o);
        return;
    }
    const char *dot = strchr(path, '.');
    size_t n = dot ? (size_t)(dot - path) : strlen(path);
    const char *rest = dot ? dot + 1 : NULL;
    bool found = false;
    for (uint32_t i = 0; i < o->via.map.size; i++)
        if (key_eq(&o->via.map.ptr[i].key, path, n)) found = true;
    size_t size = o->via.map.size;
    if (!rest && found && !repl) size--;
    if (!rest && !found && repl) size++;
    msgpack_pack_map(pk, size);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (!key_eq(&kv->key, path, n)) {
            msgpack_pack_object(pk, kv->key);
            msgpack_pack_object(pk, kv->val);
        } else if (rest) {
            msgpack_pack_object(pk, kv->key);
            pack_mutated(pk, &kv->val, rest, repl);
        } else if (repl) {
            msgpack_pack_object(pk, kv->key);
            msgpack_pack_object(pk, *repl);
        }
    }
    if (!rest && !found && repl) {
        pack_str(pk, path, n);
        msgpack_pack_object(pk, *repl);
    }
}

void mutate(msgpack_sbuffer *out, const void *buf, size_t len, const char *path,
            const msgpack_object *repl) {
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, buf, len, &off) != MSGPACK_UNPACK_SUCCESS) die("unpack");
    msgpack_sbuffer_init(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    pack_mutated(&pk, &u.data, path, repl);
    msgpack_unpacked_destroy(&u);
}

msgpack_object obj_str(const char *s) {
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    o.via.str.ptr = s;
    o.via.str.size = (uint32_t)strlen(s);
    return o;
}
msgpack_object obj_uint(uint64_t v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER};
    o.via.u64 = v;
    return o;
}
msgpack_object obj_int(int64_t v) {
    if (v >= 0) return obj_uint((uint64_t)v);
    msgpack_object o = {.type = MSGPACK_OBJECT_NEGATIVE_INTEGER};
    o.via.i64 = v;
    return o;
}
msgpack_object obj_nil(void) { return (msgpack_object){.type = MSGPACK_OBJECT_NIL}; }
msgpack_object obj_bool(bool v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_BOOLEAN};
    o.via.boolean = v;
    return o;
}
msgpack_object obj_float(double v) {
    msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64};
    o.via.f64 = v;
    return o;
}
msgpack_object obj_bin(const void *p, size_t n) {
    msgpack_object o = {.type = MSGPACK_OBJECT_BIN};
    o.via.bin.ptr = p;
    o.via.bin.size = (uint32_t)n;
    return o;
}
msgpack_object obj_empty_map(void) { return (msgpack_object){.type = MSGPACK_OBJECT_MAP}; }
msgpack_object obj_empty_array(void) { return (msgpack_object){.type = MSGPACK_OBJECT_ARRAY}; }

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (x) die(err.msg);                                                                       \
    } while (0)

static void start(msgpack_sbuffer *sb, msgpack_packer *pk) {
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
}

static uint8_t shuffle_bytes[7] = {1, 2, 3, 4, 5, 6, 7};

static tb_cursor sample_cursor(void) {
    return (tb_cursor){.generation = 2, .epoch = 3, .shard_pos = 4, .doc_index = 5,
                       .token_offset = 6, .samples_emitted = 7, .shuffle = shuffle_bytes,
                       .shuffle_len = sizeof shuffle_bytes};
}

void sample_hello(msgpack_sbuffer *sb, bool with_cursor) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    tb_hello h = {.rank = 1, .world = 4, .has_cursor = with_cursor, .client = "trainerd-1"};
    if (with_cursor) h.cursor = sample_cursor();
    CHECK(tb_proto_encode_hello(&pk, &h, &err));
}

void sample_credit(msgpack_sbuffer *sb) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    CHECK(tb_proto_encode_credit(&pk, 8, &err));
}

void sample_ack(msgpack_sbuffer *sb) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    CHECK(tb_proto_encode_ack(&pk, 41, &err));
}

void sample_batch(msgpack_sbuffer *sb, bool with_mask) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    int32_t ids[6] = {4, 100, 5, 4, 6, 5}, labels[6] = {-100, 7, -100, -100, 200, -100};
    uint8_t mask[6] = {1, 1, 1, 1, 1, 0};
    tb_prov prov[2] = {{.sample = 10, .generation = 2, .doc = 3, .token_offset = 0, .shard = 1,
                        .length = 3},
                       {.sample = 11, .generation = 2, .doc = 4, .token_offset = 9, .shard = 1,
                        .length = 2}};
    tb_batch b = {.seq = 5, .B = 2, .T = 3, .cursor_after = sample_cursor(), .ids = ids,
                  .labels = labels, .attn_mask = with_mask ? mask : NULL, .prov = prov};
    CHECK(tb_proto_encode_batch(&pk, &b, &err));
}

void sample_metrics(msgpack_sbuffer *sb) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    tb_metrics m = {.topic = "trainerd.step", .seq = 3, .time = 1700000000.25};
    CHECK(tb_kvmap_add_int(&m.fields, "step", 12, &err));
    CHECK(tb_kvmap_add_double(&m.fields, "loss", 2.5, &err));
    CHECK(tb_kvmap_add_bool(&m.fields, "skipped", false, &err));
    CHECK(tb_kvmap_add_str(&m.fields, "phase", "warmup", &err));
    CHECK(tb_proto_encode_metrics(&pk, &m, &err));
    tb_metrics_free(&m);
}

void sample_request(msgpack_sbuffer *sb) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    tb_request r = {.id = 9, .verb = "shards.add"};
    CHECK(tb_kvmap_add_str(&r.args, "path", "/data/a.jsonl.zst", &err));
    CHECK(tb_proto_encode_request(&pk, &r, &err));
    tb_request_free(&r);
}

void sample_reply(msgpack_sbuffer *sb, bool ok) {
    msgpack_packer pk;
    tb_err err;
    start(sb, &pk);
    tb_reply r = {.id = 9, .ok = ok, .error = ok ? NULL : "no such shard"};
    CHECK(tb_kvmap_add_int(&r.result, "generation", 3, &err));
    CHECK(tb_proto_encode_reply(&pk, &r, &err));
    r.error = NULL;
    tb_reply_free(&r);
}

int decode_any(tb_proto_type t, const void *buf, size_t len, tb_err *err) {
    int rc = -1;
    switch (t) {
    case TB_PROTO_HELLO: {
        tb_hello m;
        rc = tb_proto_decode_hello(buf, len, &m, err);
        tb_hello_free(&m);
        break;
    }
    case TB_PROTO_CREDIT: {
        uint32_t n;
        rc = tb_proto_decode_credit(buf, len, &n, err);
        break;
    }
    case TB_PROTO_ACK: {
        uint64_t s;
        rc = tb_proto_decode_ack(buf, len, &s, err);
        break;
    }
    case TB_PROTO_BATCH: {
        tb_batch b;
        rc = tb_proto_decode_batch(buf, len, &b, err);
        tb_batch_free(&b);
        break;
    }
    case TB_PROTO_METRICS: {
        tb_metrics m;
        rc = tb_proto_decode_metrics(buf, len, &m, err);
        tb_metrics_free(&m);
        break;
    }
    case TB_PROTO_REQUEST: {
        tb_request m;
        rc = tb_proto_decode_request(buf, len, &m, err);
        tb_request_free(&m);
        break;
    }
    case TB_PROTO_REPLY: {
        tb_reply m;
        rc = tb_proto_decode_reply(buf, len, &m, err);
        tb_reply_free(&m);
        break;
    }
    default: die("decode_any: bad type");
    }
    return rc;
}
