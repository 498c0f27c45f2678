/* Every field of every message, made wrong in turn (missing, wrong type, wrong size, out of
 * range), is rejected with an error that names that field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto_test_util.h"
#include "tb_crc32c.h"

typedef struct mcase {
    const char *path;    /* field to change */
    bool del;            /* delete it instead */
    msgpack_object repl; /* new value */
    const char *want;    /* substring of the error */
} mcase;

#define DEL(p, w) {p, true, {0}, w}
#define SET(p, o, w) {p, false, o, w}

static void run_cases(tb_proto_type t, const msgpack_sbuffer *valid, const mcase *c, size_t n) {
    tb_err err = {{0}};
    if (decode_any(t, valid->data, valid->size, &err)) fail_msg("valid message refused: %s", err.msg);
    for (size_t i = 0; i < n; i++) {
        msgpack_sbuffer bad;
        mutate(&bad, valid->data, valid->size, c[i].path, c[i].del ? NULL : &c[i].repl);
        err.msg[0] = '\0';
        int rc = decode_any(t, bad.data, bad.size, &err);
        if (rc != -1) fail_msg("case %zu (%s): accepted", i, c[i].path);
        if (!strstr(err.msg, c[i].want))
            fail_msg("case %zu (%s): error \"%s\" does not contain \"%s\"", i, c[i].path, err.msg,
                     c[i].want);
        msgpack_sbuffer_destroy(&bad);
    }
}

#define RUN(t, sb, cases) run_cases(t, sb, cases, sizeof cases / sizeof *cases)

static char long_name[TB_PROTO_MAX_NAME + 2];
static const char nul_str[] = "a\0b";

static msgpack_object obj_nul_str(void) {
    msgpack_object o = {.type = MSGPACK_OBJECT_STR};
    o.via.str.ptr = nul_str;
    o.via.str.size = 3;
    return o;
}

/* The header fields shared by every message. */
static void header_cases(tb_proto_type t, const msgpack_sbuffer *sb, const char *M, const char *other) {
    char w[7][64];
    snprintf(w[0], 64, "%s.v: missing", M);
    snprintf(w[1], 64, "%s.v: expected unsigned integer, got str", M);
    snprintf(w[2], 64, "%s.v: unsupported version 2", M);
    snprintf(w[3], 64, "%s.v: -1 out of range", M);
    snprintf(w[4], 64, "%s.t: missing", M);
    snprintf(w[5], 64, "%s.t: expected str, got uint", M);
    snprintf(w[6], 64, "%s.t: expected \"", M);
    const mcase c[] = {
        DEL("v", w[0]), SET("v", obj_str("1"), w[1]), SET("v", obj_uint(2), w[2]),
        SET("v", obj_uint(0), "unsupported version 0"), SET("v", obj_int(-1), w[3]),
        DEL("t", w[4]), SET("t", obj_uint(1), w[5]), SET("t", obj_str(other), w[6]),
    };
    RUN(t, sb, c);
}

static void cursor_cases(tb_proto_type t, const msgpack_sbuffer *sb, const char *M, const char *field) {
    static const char *const keys[] = {"generation", "epoch", "shard_pos", "doc_index",
                                       "token_offset", "samples_emitted"};
    for (size_t k = 0; k < 6; k++) {
        char path[64], w1[200], w2[200], w3[200], w4[200];
        snprintf(path, sizeof path, "%s.%s", field, keys[k]);
        snprintf(w1, sizeof w1, "%s.%s: missing", M, path);
        snprintf(w2, sizeof w2, "%s.%s: expected unsigned integer, got str", M, path);
        snprintf(w3, sizeof w3, "%s.%s: -3 out of range", M, path);
        snprintf(w4, sizeof w4, "%s.%s: expected unsigned integer, got float64", M, path);
        const mcase c[] = {DEL(path, w1), SET(path, obj_str("x"), w2), SET(path, obj_int(-3), w3),
                           SET(path, obj_float(1.0), w4)};
        RUN(t, sb, c);
    }
    static uint8_t big[TB_PROTO_MAX_SHUFFLE + 1];
    char path[64], w[4][200];
    snprintf(path, sizeof path, "%s.shuffle", field);
    snprintf(w[0], 200, "%s.%s: missing", M, path);
    snprintf(w[1], 200, "%s.%s: expected bin, got str", M, path);
    snprintf(w[2], 200, "%s.%s: bin length %d > limit", M, path, TB_PROTO_MAX_SHUFFLE + 1);
    snprintf(w[3], 200, "%s.%s: expected map, got uint", M, field);
    const mcase c[] = {DEL(path, w[0]), SET(path, obj_str("x"), w[1]),
                       SET(path, obj_bin(big, sizeof big), w[2]), SET(field, obj_uint(1), w[3])};
    RUN(t, sb, c);
}

static void test_hello_fields(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    sample_hello(&sb, true);
    header_cases(TB_PROTO_HELLO, &sb, "HELLO", "credit");
    const mcase c[] = {
        DEL("rank", "HELLO.rank: missing"),
        SET("rank", obj_str("1"), "HELLO.rank: expected unsigned integer, got str"),
        SET("rank", obj_int(-1), "HELLO.rank: -1 out of range"),
        SET("rank", obj_uint(4), "HELLO.rank: 4 out of range [0, 3]"),
        SET("rank", obj_uint(UINT64_MAX), "HELLO.rank: 18446744073709551615 out of range"),
        DEL("world", "HELLO.world: missing"),
        SET("world", obj_bool(true), "HELLO.world: expected unsigned integer, got bool"),
        SET("world", obj_uint(0), "HELLO.world: 0 out of range [1, 65536]"),
        SET("world", obj_uint(TB_PROTO_MAX_WORLD + 1), "HELLO.world: 65537 out of range"),
        DEL("client", "HELLO.client: missing"),
        SET("client", obj_uint(3), "HELLO.client: expected str, got uint"),
        SET("client", obj_str(long_name), "HELLO.client: str length 256 > limit 255"),
        SET("client", obj_nul_str(), "HELLO.client: str contains a NUL"),
    };
    RUN(TB_PROTO_HELLO, &sb, c);
    cursor_cases(TB_PROTO_HELLO, &sb, "HELLO", "cursor");
    msgpack_sbuffer_destroy(&sb);
}

static void test_credit_ack_fields(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    sample_credit(&sb);
    header_cases(TB_PROTO_CREDIT, &sb, "CREDIT", "ack");
    const mcase c[] = {
        DEL("n", "CREDIT.n: missing"),
        SET("n", obj_str("8"), "CREDIT.n: expected unsigned integer, got str"),
        SET("n", obj_uint(0), "CREDIT.n: 0 out of range [1, 65536]"),
        SET("n", obj_uint(TB_PROTO_MAX_CREDIT + 1), "CREDIT.n: 65537 out of range"),
        SET("n", obj_int(-8), "CREDIT.n: -8 out of range"),
        SET("n", obj_float(8.0), "CREDIT.n: expected unsigned integer, got float64"),
    };
    RUN(TB_PROTO_CREDIT, &sb, c);
    msgpack_sbuffer_destroy(&sb);
    sample_ack(&sb);
    header_cases(TB_PROTO_ACK, &sb, "ACK", "batch");
    const mcase a[] = {
        DEL("seq", "ACK.seq: missing"),
        SET("seq", obj_nil(), "ACK.seq: expected unsigned integer, got nil"),
        SET("seq", obj_int(-1), "ACK.seq: -1 out of range"),
        SET("seq", obj_empty_map(), "ACK.seq: expected unsigned integer, got map"),
    };
    RUN(TB_PROTO_ACK, &sb, a);
    msgpack_sbuffer_destroy(&sb);
}

/* The valid sample batch with ids (or labels, or attn_mask) replaced by raw and the crc
 * recomputed, so that only the value check can refuse it. */
static void batch_with(msgpack_sbuffer *out, const char *field, const void *raw, size_t n) {
    msgpack_sbuffer sb, tmp;
    sample_batch(&sb, true);
    tb_batch b;
    tb_err err;
    assert_int_equal(tb_proto_decode_batch(sb.data, sb.size, &b, &err), 0);
    size_t ntok = (size_t)b.B * b.T;
    uint8_t ids[24], labels[24], mask[6];
    memcpy(ids, b.ids, sizeof ids); /* little-endian host (x86, arm64) */
    memcpy(labels, b.labels, sizeof labels);
    memcpy(mask, b.attn_mask, sizeof mask);
    assert_int_equal(ntok, 6);
    if (!strcmp(field, "ids")) memcpy(ids, raw, n);
    if (!strcmp(field, "labels")) memcpy(labels, raw, n);
    if (!strcmp(field, "attn_mask")) memcpy(mask, raw, n);
    uint32_t crc = tb_crc32c(tb_crc32c(tb_crc32c(0, ids, 24), labels, 24), mask, 6);
    msgpack_object o = obj_bin(raw, n), c = obj_uint(crc);
    mutate(&tmp, sb.data, sb.size, field, &o);
    mutate(out, tmp.data, tmp.size, "crc", &c);
    msgpack_sbuffer_destroy(&tmp);
    msgpack_sbuffer_destroy(&sb);
    tb_batch_free(&b);
}

static void test_batch_fields(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    sample_batch(&sb, true);
    header_cases(TB_PROTO_BATCH, &sb, "BATCH", "hello");
    static uint8_t zeros[200];
    uint8_t prov_bad[80] = {0};
    prov_bad[36] = 4; /* sample 0 length 4 > T = 3 */
    const mcase c[] = {
        DEL("seq", "BATCH.seq: missing"),
        SET("seq", obj_str("5"), "BATCH.seq: expected unsigned integer, got str"),
        SET("seq", obj_int(-5), "BATCH.seq: -5 out of range"),
        DEL("B", "BATCH.B: missing"),
        SET("B", obj_str("2"), "BATCH.B: expected unsigned integer, got str"),
        SET("B", obj_uint(0), "BATCH.B: 0 out of range [1, 65536]"),
        SET("B", obj_uint(TB_PROTO_MAX_B + 1), "BATCH.B: 65537 out of range"),
        SET("B", obj_uint(3), "BATCH.ids: bin length 24 != B*T*4 = 36"),
        DEL("T", "BATCH.T: missing"),
        SET("T", obj_float(3.0), "BATCH.T: expected unsigned integer, got float64"),
        SET("T", obj_uint(0), "BATCH.T: 0 out of range [1, 1048576]"),
        SET("T", obj_uint(TB_PROTO_MAX_T + 1), "BATCH.T: 1048577 out of range"),
        SET("T", obj_uint(TB_PROTO_MAX_T), "BATCH.ids: bin length 24 != B*T*4 = 8388608"),
        SET("T", obj_uint(4), "BATCH.ids: bin length 24 != B*T*4 = 32"),
        DEL("ids", "BATCH.ids: missing"),
        SET("ids", obj_str("abcd"), "BATCH.ids: expected bin, got str"),
        SET("ids", obj_bin(zeros, 23), "BATCH.ids: bin length 23 != B*T*4 = 24"),
        SET("ids", obj_bin(zeros, 24), "BATCH.crc: "),
        DEL("labels", "BATCH.labels: missing"),
        SET("labels", obj_empty_array(), "BATCH.labels: expected bin, got array"),
        SET("labels", obj_bin(zeros, 20), "BATCH.labels: bin length 20 != B*T*4 = 24"),
        SET("attn_mask", obj_uint(1), "BATCH.attn_mask: expected bin, got uint"),
        SET("attn_mask", obj_bin(zeros, 5), "BATCH.attn_mask: bin length 5 != B*T = 6"),
        DEL("attn_mask", "BATCH.crc: "), /* the crc covered the mask */
        DEL("provenance", "BATCH.provenance: missing"),
        SET("provenance", obj_str("p"), "BATCH.provenance: expected bin, got str"),
        SET("provenance", obj_bin(zeros, 79), "BATCH.provenance: bin length 79 != B*40 = 80"),
        SET("provenance", obj_bin(prov_bad, 80), "BATCH.provenance[0].length: 4 > T = 3"),
        DEL("crc", "BATCH.crc: missing"),
        SET("crc", obj_str("0"), "BATCH.crc: expected unsigned integer, got str"),
        SET("crc", obj_uint((uint64_t)UINT32_MAX + 1), "BATCH.crc: 4294967296 out of range"),
        SET("crc", obj_uint(1), "BATCH.crc: 00000001 != crc32c"),
        DEL("cursor_after", "BATCH.cursor_after: missing"),
    };
    RUN(TB_PROTO_BATCH, &sb, c);
    cursor_cases(TB_PROTO_BATCH, &sb, "BATCH", "cursor_after");
    /* B and T each in range, their product not. */
    msgpack_sbuffer t1, t2;
    msgpack_object b17 = obj_uint(17), tmax = obj_uint(TB_PROTO_MAX_T);
    mutate(&t1, sb.data, sb.size, "B", &b17);
    mutate(&t2, t1.data, t1.size, "T", &tmax);
    tb_err perr;
    assert_int_equal(decode_any(TB_PROTO_BATCH, t2.data, t2.size, &perr), -1);
    assert_non_null(strstr(perr.msg, "BATCH.T: B*T = 17*1048576 = 17825792 tokens > limit 16777216"));
    msgpack_sbuffer_destroy(&t1);
    msgpack_sbuffer_destroy(&t2);
    msgpack_sbuffer_destroy(&sb);

    /* Values out of range behind a correct crc. */
    int32_t ids[6] = {4, 100, -7, 4, 6, 5}, labels[6] = {-100, 7, -100, -101, 200, -100};
    uint8_t mask[6] = {1, 1, 1, 2, 1, 0};
    struct { const char *field; const void *raw; size_t n; const char *want; } v[] = {
        {"ids", ids, 24, "BATCH.ids[2]: token id -7 < 0"},
        {"labels", labels, 24, "BATCH.labels[3]: -101 is neither -100 nor >= 0"},
        {"attn_mask", mask, 6, "BATCH.attn_mask[3]: 2 is not 0 or 1"},
    };
    for (size_t i = 0; i < 3; i++) {
        msgpack_sbuffer bad;
        batch_with(&bad, v[i].field, v[i].raw, v[i].n);
        tb_batch b;
        tb_err err = {{0}};
        assert_int_equal(tb_proto_decode_batch(bad.data, bad.size, &b, &err), -1);
        if (!strstr(err.msg, v[i].want)) fail_msg("%s: got \"%s\"", v[i].field, err.msg);
        assert_null(b.ids); /* nothing left to free on failure */
        msgpack_sbuffer_destroy(&bad);
    }
}

static void test_metrics_fields(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    sample_metrics(&sb);
    header_cases(TB_PROTO_METRICS, &sb, "METRICS", "reply");
    static char long_str[TB_PROTO_MAX_STR + 2];
    memset(long_str, 's', TB_PROTO_MAX_STR + 1);
    const mcase c[] = {
        DEL("topic", "METRICS.topic: missing"),
        SET("topic", obj_uint(1), "METRICS.topic: expected str, got uint"),
        SET("topic", obj_str(""), "METRICS.topic: empty"),
        SET("topic", obj_str(long_name), "METRICS.topic: str length 256 > limit 255"),
        DEL("seq", "METRICS.seq: missing"),
        SET("seq", obj_str("3"), "METRICS.seq: expected unsigned integer, got str"),
        SET("seq", obj_int(-3), "METRICS.seq: -3 out of range"),
        DEL("time", "METRICS.time: missing"),
        SET("time", obj_str("now"), "METRICS.time: expected number, got str"),
        SET("time", obj_nil(), "METRICS.time: expected number, got nil"),
        DEL("fields", "METRICS.fields: missing"),
        SET("fields", obj_str("x"), "METRICS.fields: expected map, got str"),
        SET("fields", obj_empty_array(), "METRICS.fields: expected map, got array"),
        SET("fields.loss", obj_empty_array(),
            "METRICS.fields.loss: expected int, float, bool or str, got array"),
        SET("fields.loss", obj_nil(), "METRICS.fields.loss: expected int, float, bool or str, got nil"),
        SET("fields.loss", obj_bin("ab", 2), "METRICS.fields.loss: expected int, float, bool or str, got bin"),
        SET("fields.step", obj_uint(UINT64_MAX), "METRICS.fields.step: 18446744073709551615 > INT64_MAX"),
        SET("fields.phase", obj_str(long_str), "METRICS.fields.phase: str length 4097 > limit 4096"),
        SET("fields.phase", obj_nul_str(), "METRICS.fields.phase: str contains a NUL"),
        SET("fields.loss", obj_empty_map(), "METRICS.fields.loss: expected int, float, bool or str, got map"),
    };
    RUN(TB_PROTO_METRICS, &sb, c);
    msgpack_sbuffer_destroy(&sb);
}

static void test_control_fields(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    sample_request(&sb);
    header_cases(TB_PROTO_REQUEST, &sb, "REQUEST", "metrics");
    const mcase c[] = {
        DEL("id", "REQUEST.id: missing"),
        SET("id", obj_str("9"), "REQUEST.id: expected unsigned integer, got str"),
        SET("id", obj_int(-9), "REQUEST.id: -9 out of range"),
        DEL("verb", "REQUEST.verb: missing"),
        SET("verb", obj_uint(1), "REQUEST.verb: expected str, got uint"),
        SET("verb", obj_str(""), "REQUEST.verb: empty"),
        SET("verb", obj_str(long_name), "REQUEST.verb: str length 256 > limit 255"),
        SET("args", obj_str("x"), "REQUEST.args: expected map, got str"),
        SET("args.path", obj_empty_map(), "REQUEST.args.path: expected int, float, bool or str, got map"),
    };
    RUN(TB_PROTO_REQUEST, &sb, c);
    msgpack_sbuffer_destroy(&sb);

    sample_reply(&sb, false);
    header_cases(TB_PROTO_REPLY, &sb, "REPLY", "request");
    static char long_str[TB_PROTO_MAX_STR + 2];
    memset(long_str, 'e', TB_PROTO_MAX_STR + 1);
    const mcase r[] = {
        DEL("id", "REPLY.id: missing"),
        SET("id", obj_bool(false), "REPLY.id: expected unsigned integer, got bool"),
        DEL("ok", "REPLY.ok: missing"),
        SET("ok", obj_uint(1), "REPLY.ok: expected bool, got uint"),
        DEL("result", "REPLY.result: missing"),
        SET("result", obj_str("r"), "REPLY.result: expected map, got str"),
        SET("result.generation", obj_nil(), "REPLY.result.generation: expected int, float, bool or str, got nil"),
        DEL("error", "REPLY.error: missing (required when ok is false)"),
        SET("error", obj_uint(5), "REPLY.error: expected str, got uint"),
        SET("error", obj_str(long_str), "REPLY.error: str length 4097 > limit 4096"),
    };
    RUN(TB_PROTO_REPLY, &sb, r);
    msgpack_sbuffer_destroy(&sb);
}

int main(void) {
    memset(long_name, 'n', TB_PROTO_MAX_NAME + 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_fields),   cmocka_unit_test(test_credit_ack_fields),
        cmocka_unit_test(test_batch_fields),   cmocka_unit_test(test_metrics_fields),
        cmocka_unit_test(test_control_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
