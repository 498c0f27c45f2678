/* Every message survives encode -> decode unchanged, edge values included; encoders
 * refuse what decoders would refuse. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto_test_util.h"

#define ENC_BEGIN_ERR ENC_BEGIN; tb_err err = {{0}}
#define ENC_BEGIN                                                                                  \
    msgpack_sbuffer sb;                                                                            \
    msgpack_sbuffer_init(&sb);                                                                     \
    msgpack_packer pk;                                                                             \
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write)

static void peek_is(const msgpack_sbuffer *sb, tb_proto_type want) {
    tb_proto_type t;
    tb_err err;
    assert_int_equal(tb_proto_peek_type(&t, sb->data, sb->size, &err), 0);
    assert_int_equal(t, want);
}

static void cursor_equal(const tb_cursor *a, const tb_cursor *b) {
    assert_true(a->generation == b->generation && a->epoch == b->epoch &&
                a->shard_pos == b->shard_pos && a->doc_index == b->doc_index &&
                a->token_offset == b->token_offset && a->samples_emitted == b->samples_emitted);
    assert_int_equal(a->shuffle_len, b->shuffle_len);
    if (a->shuffle_len) assert_memory_equal(a->shuffle, b->shuffle, a->shuffle_len);
}

static void hello_one(const tb_hello *h) {
    ENC_BEGIN_ERR;
    assert_int_equal(tb_proto_encode_hello(&pk, h, &err), 0);
    peek_is(&sb, TB_PROTO_HELLO);
    tb_hello d;
    if (tb_proto_decode_hello(sb.data, sb.size, &d, &err)) fail_msg("%s", err.msg);
    assert_int_equal(d.rank, h->rank);
    assert_int_equal(d.world, h->world);
    assert_string_equal(d.client, h->client);
    assert_int_equal(d.has_cursor, h->has_cursor);
    if (h->has_cursor) cursor_equal(&d.cursor, &h->cursor);
    tb_hello_free(&d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_hello_roundtrip(void **state) {
    (void)state;
    tb_hello h = {.rank = 0, .world = 1};
    hello_one(&h); /* no cursor, empty client */
    uint8_t *shuffle = malloc(TB_PROTO_MAX_SHUFFLE);
    for (size_t i = 0; i < TB_PROTO_MAX_SHUFFLE; i++) shuffle[i] = (uint8_t)(i * 7);
    h = (tb_hello){.rank = TB_PROTO_MAX_WORLD - 1, .world = TB_PROTO_MAX_WORLD, .has_cursor = true,
                   .cursor = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX,
                              UINT64_MAX, shuffle, TB_PROTO_MAX_SHUFFLE}};
    memset(h.client, 'c', TB_PROTO_MAX_NAME);
    hello_one(&h);
    h.cursor = (tb_cursor){0}; /* zero cursor, empty shuffle */
    hello_one(&h);
    free(shuffle);

    ENC_BEGIN_ERR;
    h = (tb_hello){.rank = 4, .world = 4};
    assert_int_equal(tb_proto_encode_hello(&pk, &h, &err), -1);
    assert_non_null(strstr(err.msg, "HELLO.rank"));
    h = (tb_hello){.rank = 0, .world = 0};
    assert_int_equal(tb_proto_encode_hello(&pk, &h, &err), -1);
    assert_non_null(strstr(err.msg, "HELLO.world"));
    h = (tb_hello){.world = 1, .has_cursor = true, .cursor = {.shuffle_len = TB_PROTO_MAX_SHUFFLE + 1}};
    assert_int_equal(tb_proto_encode_hello(&pk, &h, &err), -1);
    assert_non_null(strstr(err.msg, "HELLO.cursor.shuffle"));
    assert_int_equal(sb.size, 0); /* nothing written on refusal */
    msgpack_sbuffer_destroy(&sb);
}

static void test_credit_ack_roundtrip(void **state) {
    (void)state;
    const uint32_t credits[] = {1, 2, 127, 128, 65535, TB_PROTO_MAX_CREDIT};
    for (size_t i = 0; i < sizeof credits / sizeof *credits; i++) {
        ENC_BEGIN_ERR;
        assert_int_equal(tb_proto_encode_credit(&pk, credits[i], &err), 0);
        peek_is(&sb, TB_PROTO_CREDIT);
        uint32_t n;
        assert_int_equal(tb_proto_decode_credit(sb.data, sb.size, &n, &err), 0);
        assert_int_equal(n, credits[i]);
        msgpack_sbuffer_destroy(&sb);
    }
    const uint64_t seqs[] = {0, 1, 255, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof seqs / sizeof *seqs; i++) {
        ENC_BEGIN_ERR;
        assert_int_equal(tb_proto_encode_ack(&pk, seqs[i], &err), 0);
        peek_is(&sb, TB_PROTO_ACK);
        uint64_t s;
        assert_int_equal(tb_proto_decode_ack(sb.data, sb.size, &s, &err), 0);
        assert_true(s == seqs[i]);
        msgpack_sbuffer_destroy(&sb);
    }
    ENC_BEGIN_ERR;
    assert_int_equal(tb_proto_encode_credit(&pk, 0, &err), -1);
    assert_non_null(strstr(err.msg, "CREDIT.n"));
    assert_int_equal(tb_proto_encode_credit(&pk, TB_PROTO_MAX_CREDIT + 1, &err), -1);
    msgpack_sbuffer_destroy(&sb);
}

static void batch_one(uint32_t B, uint32_t T, bool with_mask, uint64_t seq) {
    size_t ntok = (size_t)B * T;
    tb_batch b = {.seq = seq, .B = B, .T = T,
                  .cursor_after = {1, 2, 3, 4, 5, 6, NULL, 0}};
    b.ids = malloc(ntok * 4);
    b.labels = malloc(ntok * 4);
    b.prov = calloc(B, sizeof *b.prov);
    if (with_mask) b.attn_mask = malloc(ntok);
    for (size_t i = 0; i < ntok; i++) {
        b.ids[i] = (i % 5 == 0) ? INT32_MAX : (int32_t)(i * 2654435761u % 50000);
        b.labels[i] = (i % 7 == 0) ? (int32_t)(i % 50000) : -100;
        if (with_mask) b.attn_mask[i] = (uint8_t)(i % 3 != 0);
    }
    for (uint32_t i = 0; i < B; i++)
        b.prov[i] = (tb_prov){.sample = UINT64_MAX - i, .generation = i, .doc = (uint64_t)i << 40,
                              .token_offset = UINT64_MAX, .shard = UINT32_MAX - i,
                              .length = i % (T + 1)};
    ENC_BEGIN_ERR;
    if (tb_proto_encode_batch(&pk, &b, &err)) fail_msg("%s", err.msg);
    peek_is(&sb, TB_PROTO_BATCH);
    tb_batch d;
    if (tb_proto_decode_batch(sb.data, sb.size, &d, &err)) fail_msg("%s", err.msg);
    assert_true(d.seq == seq);
    assert_int_equal(d.B, B);
    assert_int_equal(d.T, T);
    cursor_equal(&d.cursor_after, &b.cursor_after);
    assert_memory_equal(d.ids, b.ids, ntok * 4);
    assert_memory_equal(d.labels, b.labels, ntok * 4);
    if (with_mask) assert_memory_equal(d.attn_mask, b.attn_mask, ntok);
    else assert_null(d.attn_mask);
    assert_memory_equal(d.prov, b.prov, B * sizeof *b.prov);
    assert_int_equal(d.crc, tb_proto_batch_crc(b.ids, b.labels, b.attn_mask, ntok));
    tb_batch_free(&d);
    msgpack_sbuffer_destroy(&sb);
    free(b.ids);
    free(b.labels);
    free(b.prov);
    free(b.attn_mask);
}

static void test_batch_roundtrip(void **state) {
    (void)state;
    batch_one(1, 1, false, 0);
    batch_one(1, 1, true, UINT64_MAX);
    batch_one(2, 3, true, 7);
    batch_one(7, 129, false, 1u << 31);
    batch_one(32, 512, true, 99);
    /* The largest batch the protocol allows: B*T = TB_PROTO_MAX_TOKENS. */
    batch_one(256, TB_PROTO_MAX_TOKENS / 256, true, 1);
}

static void test_batch_encoder_refuses_bad_input(void **state) {
    (void)state;
    int32_t ids[4] = {1, 2, 3, 4}, labels[4] = {-100, -100, -100, -100};
    tb_prov prov[2] = {{.length = 2}, {.length = 2}};
    tb_batch b = {.B = 2, .T = 2, .ids = ids, .labels = labels, .prov = prov};
    ENC_BEGIN_ERR;
    tb_batch c = b;
    c.B = 0;
    assert_int_equal(tb_proto_encode_batch(&pk, &c, &err), -1);
    assert_non_null(strstr(err.msg, "BATCH.B"));
    c = b;
    c.T = TB_PROTO_MAX_T + 1;
    assert_int_equal(tb_proto_encode_batch(&pk, &c, &err), -1);
    assert_non_null(strstr(err.msg, "BATCH.T"));
    c = b;
    c.B = TB_PROTO_MAX_B;
    c.T = TB_PROTO_MAX_TOKENS / TB_PROTO_MAX_B + 1;
    assert_int_equal(tb_proto_encode_batch(&pk, &c, &err), -1);
    assert_non_null(strstr(err.msg, "B*T"));
    ids[2] = -1;
    assert_int_equal(tb_proto_encode_batch(&pk, &b, &err), -1);
    assert_non_null(strstr(err.msg, "BATCH.ids[2]"));
    ids[2] = 3;
    labels[1] = -99;
    assert_int_equal(tb_proto_encode_batch(&pk, &b, &err), -1);
    assert_non_null(strstr(err.msg, "BATCH.labels[1]"));
    labels[1] = -100;
    prov[1].length = 3;
    assert_int_equal(tb_proto_encode_batch(&pk, &b, &err), -1);
    assert_non_null(strstr(err.msg, "BATCH.provenance[1].length"));
    prov[1].length = 2;
    assert_int_equal(sb.size, 0);
    assert_int_equal(tb_proto_encode_batch(&pk, &b, &err), 0);
    msgpack_sbuffer_destroy(&sb);
}

static void test_fixbuf_encoding(void **state) {
    (void)state;
    char small[16], big[256];
    tb_err err;
    msgpack_packer pk;
    tb_proto_fixbuf fb = {.data = big, .cap = sizeof big};
    msgpack_packer_init(&pk, &fb, tb_proto_fixbuf_write);
    assert_int_equal(tb_proto_encode_ack(&pk, 77, &err), 0);
    assert_int_equal(fb.overflow, 0);
    uint64_t s;
    assert_int_equal(tb_proto_decode_ack(big, fb.len, &s, &err), 0);
    assert_int_equal(s, 77);
    fb = (tb_proto_fixbuf){.data = small, .cap = sizeof small};
    tb_hello h = {.world = 1, .client = "a client name longer than sixteen bytes"};
    assert_int_equal(tb_proto_encode_hello(&pk, &h, &err), -1);
    assert_int_equal(fb.overflow, 1);
    assert_non_null(strstr(err.msg, "HELLO"));
}

static void kv_equal(const tb_kvmap *a, const tb_kvmap *b) {
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        const tb_kv *x = &a->items[i], *y = tb_kvmap_get(b, x->key);
        assert_non_null(y);
        assert_int_equal(x->type, y->type);
        switch (x->type) {
        case TB_KV_INT: assert_true(x->v.i == y->v.i); break;
        case TB_KV_DOUBLE:
            if (isnan(x->v.d)) assert_true(isnan(y->v.d));
            else assert_memory_equal(&x->v.d, &y->v.d, sizeof(double));
            break;
        case TB_KV_BOOL: assert_int_equal(x->v.b, y->v.b); break;
        case TB_KV_STR: assert_string_equal(x->v.s, y->v.s); break;
        }
    }
}

static void test_metrics_roundtrip(void **state) {
    (void)state;
    tb_err err;
    tb_metrics m = {.topic = "prefetchd.stats", .seq = UINT64_MAX, .time = 1.7e9};
    assert_int_equal(tb_kvmap_add_int(&m.fields, "min", INT64_MIN, &err), 0);
    assert_int_equal(tb_kvmap_add_int(&m.fields, "max", INT64_MAX, &err), 0);
    assert_int_equal(tb_kvmap_add_int(&m.fields, "zero", 0, &err), 0);
    assert_int_equal(tb_kvmap_add_double(&m.fields, "nan", NAN, &err), 0);
    assert_int_equal(tb_kvmap_add_double(&m.fields, "inf", -INFINITY, &err), 0);
    assert_int_equal(tb_kvmap_add_double(&m.fields, "negzero", -0.0, &err), 0);
    assert_int_equal(tb_kvmap_add_double(&m.fields, "tiny", 4.9e-324, &err), 0);
    assert_int_equal(tb_kvmap_add_bool(&m.fields, "t", true, &err), 0);
    assert_int_equal(tb_kvmap_add_str(&m.fields, "empty", "", &err), 0);
    char *longs = malloc(TB_PROTO_MAX_STR + 2);
    memset(longs, 'x', TB_PROTO_MAX_STR);
    longs[TB_PROTO_MAX_STR] = '\0';
    assert_int_equal(tb_kvmap_add_str(&m.fields, "long", longs, &err), 0);
    char key[TB_PROTO_MAX_KEY + 2];
    memset(key, 'k', TB_PROTO_MAX_KEY);
    key[TB_PROTO_MAX_KEY] = '\0';
    assert_int_equal(tb_kvmap_add_bool(&m.fields, key, false, &err), 0);
    for (int i = (int)m.fields.n; i < TB_PROTO_MAX_KEYS; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        assert_int_equal(tb_kvmap_add_int(&m.fields, k, i, &err), 0);
    }
    /* What the decoder would refuse, the map refuses to hold. */
    assert_int_equal(tb_kvmap_add_int(&m.fields, "one_more", 1, &err), -1);
    assert_non_null(strstr(err.msg, "one_more"));
    assert_int_equal(tb_kvmap_add_int(&m.fields, "min", 1, &err), -1);
    assert_non_null(strstr(err.msg, "duplicate"));

    ENC_BEGIN;
    if (tb_proto_encode_metrics(&pk, &m, &err)) fail_msg("%s", err.msg);
    assert_true(sb.size < (size_t)TB_PROTO_MAX_MSG);
    peek_is(&sb, TB_PROTO_METRICS);
    tb_metrics d;
    if (tb_proto_decode_metrics(sb.data, sb.size, &d, &err)) fail_msg("%s", err.msg);
    assert_string_equal(d.topic, m.topic);
    assert_true(d.seq == m.seq);
    assert_true(d.time == m.time);
    kv_equal(&m.fields, &d.fields);
    tb_metrics_free(&d);
    msgpack_sbuffer_destroy(&sb);

    tb_kvmap small = {0};
    key[TB_PROTO_MAX_KEY] = 'k';
    key[TB_PROTO_MAX_KEY + 1] = '\0';
    assert_int_equal(tb_kvmap_add_int(&small, key, 1, &err), -1);
    assert_int_equal(tb_kvmap_add_int(&small, "", 1, &err), -1);
    longs[TB_PROTO_MAX_STR] = 'x';
    longs[TB_PROTO_MAX_STR + 1] = '\0';
    assert_int_equal(tb_kvmap_add_str(&small, "s", longs, &err), -1);
    assert_int_equal(small.n, 0);
    tb_kvmap_free(&small);
    free(longs);
    tb_metrics_free(&m);
}

static void test_control_roundtrip(void **state) {
    (void)state;
    tb_err err;
    tb_request r = {.id = UINT64_MAX, .verb = "status"};
    for (int with_args = 0; with_args < 2; with_args++) {
        if (with_args) {
            assert_int_equal(tb_kvmap_add_str(&r.args, "shard", "https://x/y.jsonl.gz", &err), 0);
            assert_int_equal(tb_kvmap_add_double(&r.args, "lr_scale", 0.5, &err), 0);
        }
        ENC_BEGIN;
        assert_int_equal(tb_proto_encode_request(&pk, &r, &err), 0);
        peek_is(&sb, TB_PROTO_REQUEST);
        tb_request d;
        if (tb_proto_decode_request(sb.data, sb.size, &d, &err)) fail_msg("%s", err.msg);
        assert_true(d.id == r.id);
        assert_string_equal(d.verb, r.verb);
        kv_equal(&r.args, &d.args);
        tb_request_free(&d);
        msgpack_sbuffer_destroy(&sb);
    }
    tb_request_free(&r);
    tb_request bad = {.id = 1};
    ENC_BEGIN;
    assert_int_equal(tb_proto_encode_request(&pk, &bad, &err), -1);
    assert_non_null(strstr(err.msg, "REQUEST.verb"));

    for (int ok = 0; ok < 2; ok++) {
        tb_reply p = {.id = 0, .ok = ok, .error = ok ? NULL : "shard not found: /x"};
        if (ok) assert_int_equal(tb_kvmap_add_int(&p.result, "step", 123456789, &err), 0);
        msgpack_sbuffer_clear(&sb);
        assert_int_equal(tb_proto_encode_reply(&pk, &p, &err), 0);
        peek_is(&sb, TB_PROTO_REPLY);
        tb_reply d;
        if (tb_proto_decode_reply(sb.data, sb.size, &d, &err)) fail_msg("%s", err.msg);
        assert_int_equal(d.ok, ok);
        if (ok) assert_null(d.error);
        else assert_string_equal(d.error, p.error);
        kv_equal(&p.result, &d.result);
        tb_reply_free(&d);
        p.error = NULL;
        tb_reply_free(&p);
    }
    tb_reply noerr = {.ok = false};
    assert_int_equal(tb_proto_encode_reply(&pk, &noerr, &err), -1);
    assert_non_null(strstr(err.msg, "REPLY.error"));
    msgpack_sbuffer_destroy(&sb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_roundtrip),
        cmocka_unit_test(test_credit_ack_roundtrip),
        cmocka_unit_test(test_batch_roundtrip),
        cmocka_unit_test(test_batch_encoder_refuses_bad_input),
        cmocka_unit_test(test_fixbuf_encoding),
        cmocka_unit_test(test_metrics_roundtrip),
        cmocka_unit_test(test_control_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
