/* Hostile bytes: truncation at every length, huge declared lengths (the "155 bytes ask
 * for 63 GB" attack on msgpack-c 4.0.0), deep nesting, bad type bytes, duplicate keys,
 * trailing garbage. All are refused by the pre-check with an error naming the place,
 * before msgpack-c allocates anything. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto_test_util.h"

static void expect_refused(tb_proto_type t, const void *buf, size_t len, const char *want) {
    tb_err err = {{0}};
    if (decode_any(t, buf, len, &err) != -1) fail_msg("accepted (%zu bytes)", len);
    if (want && !strstr(err.msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err.msg, want);
}

static void test_truncated_at_every_length(void **state) {
    (void)state;
    struct { tb_proto_type t; msgpack_sbuffer sb; } m[9];
    sample_hello(&m[0].sb, true), m[0].t = TB_PROTO_HELLO;
    sample_hello(&m[1].sb, false), m[1].t = TB_PROTO_HELLO;
    sample_credit(&m[2].sb), m[2].t = TB_PROTO_CREDIT;
    sample_ack(&m[3].sb), m[3].t = TB_PROTO_ACK;
    sample_batch(&m[4].sb, true), m[4].t = TB_PROTO_BATCH;
    sample_batch(&m[5].sb, false), m[5].t = TB_PROTO_BATCH;
    sample_metrics(&m[6].sb), m[6].t = TB_PROTO_METRICS;
    sample_request(&m[7].sb), m[7].t = TB_PROTO_REQUEST;
    sample_reply(&m[8].sb, false), m[8].t = TB_PROTO_REPLY;
    for (int i = 0; i < 9; i++) {
        tb_err err;
        assert_int_equal(decode_any(m[i].t, m[i].sb.data, m[i].sb.size, &err), 0);
        for (size_t len = 0; len < m[i].sb.size; len++) {
            /* A fresh copy of exactly len bytes, so ASan sees any read past the end. */
            char *cut = malloc(len ? len : 1);
            memcpy(cut, m[i].sb.data, len);
            expect_refused(m[i].t, cut, len, NULL);
            tb_proto_type pt;
            assert_int_equal(tb_proto_peek_type(&pt, cut, len, &err), -1);
            free(cut);
        }
        /* One byte more is trailing garbage. */
        char *longer = malloc(m[i].sb.size + 1);
        memcpy(longer, m[i].sb.data, m[i].sb.size);
        longer[m[i].sb.size] = 0;
        expect_refused(m[i].t, longer, m[i].sb.size + 1, "1 trailing bytes");
        free(longer);
        msgpack_sbuffer_destroy(&m[i].sb);
    }
}

static void test_huge_declared_lengths(void **state) {
    (void)state;
    /* {"x": <header>} with a 32-bit length of 0xffffffff and nothing behind it. */
    static const struct { uint8_t hdr[5]; size_t n; const char *want; } h[] = {
        {{0xdd, 0xff, 0xff, 0xff, 0xff}, 5, "BATCH.x: array count 4294967295 > 0 bytes left"},
        {{0xdf, 0xff, 0xff, 0xff, 0xff}, 5, "BATCH.x: map count 4294967295 > 0 bytes left / 2"},
        {{0xdb, 0xff, 0xff, 0xff, 0xff}, 5, "BATCH.x: str length 4294967295 > 0 bytes left"},
        {{0xc6, 0xff, 0xff, 0xff, 0xff}, 5, "BATCH.x: bin length 4294967295 > 0 bytes left"},
        {{0xdc, 0xff, 0xff}, 3, "BATCH.x: array count 65535 > 0 bytes left"},
        {{0xde, 0xff, 0xff}, 3, "BATCH.x: map count 65535 > 0 bytes left / 2"},
        {{0xc9, 0xff, 0xff, 0xff, 0xff}, 5, "BATCH.x: unsupported msgpack type byte 0xc9"},
        {{0xc1}, 1, "BATCH.x: unsupported msgpack type byte 0xc1"},
        {{0xd4, 0x01, 0x00}, 3, "BATCH.x: unsupported msgpack type byte 0xd4"},
    };
    for (size_t i = 0; i < sizeof h / sizeof *h; i++) {
        uint8_t buf[16] = {0x81, 0xa1, 'x'};
        memcpy(buf + 3, h[i].hdr, h[i].n);
        expect_refused(TB_PROTO_BATCH, buf, 3 + h[i].n, h[i].want);
    }
    /* The top-level map itself declaring 2^32-1 entries. */
    const uint8_t top[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01};
    expect_refused(TB_PROTO_HELLO, top, sizeof top, "HELLO: map count 4294967295 > 3 bytes left / 2");
    /* 155 bytes of nested array32 headers: msgpack-c alone would reserve about 24 bytes
     * per declared element at every level before noticing the input ends. */
    uint8_t bomb[155] = {0x81, 0xa1, 'x'};
    for (size_t i = 3; i + 5 <= sizeof bomb; i += 5)
        memcpy(bomb + i, (const uint8_t[]){0xdd, 0x0f, 0xff, 0xff, 0xff}, 5);
    expect_refused(TB_PROTO_ACK, bomb, sizeof bomb, "ACK.x: array count 268435455 > 147 bytes left");
    /* Counts that fit the bytes but exceed the limits. */
    size_t n = 3 + 3 + TB_PROTO_MAX_ARRAY + 1;
    uint8_t *arr = calloc(1, n);
    memcpy(arr, (const uint8_t[]){0x81, 0xa1, 'x', 0xdc, (TB_PROTO_MAX_ARRAY + 1) >> 8,
                                  (TB_PROTO_MAX_ARRAY + 1) & 0xff}, 6);
    expect_refused(TB_PROTO_CREDIT, arr, n, "CREDIT.x: array count 4097 > limit 4096");
    free(arr);
    /* A str longer than TB_PROTO_MAX_STR, and a long key. */
    uint8_t *s = calloc(1, 3 + 3 + TB_PROTO_MAX_STR + 1);
    memcpy(s, (const uint8_t[]){0x81, 0xa1, 'x', 0xda, (TB_PROTO_MAX_STR + 1) >> 8,
                                (TB_PROTO_MAX_STR + 1) & 0xff}, 6);
    expect_refused(TB_PROTO_REPLY, s, 6 + TB_PROTO_MAX_STR + 1, "REPLY.x: str length 4097 > limit 4096");
    free(s);
    uint8_t key[2 + 65 + 1] = {0x81, 0xd9, 65};
    memset(key + 3, 'k', 65);
    expect_refused(TB_PROTO_REQUEST, key, 3 + 65 + 1, "REQUEST: map key length 65 > limit 64");
    /* More objects than TB_PROTO_MAX_OBJECTS in total, each container within its limits. */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    for (int k = 0; k < 3; k++) {
        char name[2] = {(char)('a' + k), 0};
        msgpack_pack_str(&pk, 1);
        msgpack_pack_str_body(&pk, name, 1);
        msgpack_pack_array(&pk, TB_PROTO_MAX_ARRAY);
        for (int i = 0; i < TB_PROTO_MAX_ARRAY; i++) msgpack_pack_nil(&pk);
    }
    expect_refused(TB_PROTO_METRICS, sb.data, sb.size, "object count 8193 > limit 8192");
    msgpack_sbuffer_destroy(&sb);
}

static void test_deep_nesting(void **state) {
    (void)state;
    /* Unknown keys are ignored, but still checked: depth 4 passes, depth 5 does not. */
    msgpack_sbuffer sb, ok, deep;
    sample_ack(&sb);
    const uint8_t d4[] = {0x91, 0x91, 0x90};             /* [[[]]]: depth 2..4 */
    const uint8_t d5[] = {0x91, 0x91, 0x91, 0x90};       /* [[[[]]]]: depth 2..5 */
    msgpack_object o4 = {.type = MSGPACK_OBJECT_NIL}, o5 = o4;
    msgpack_unpacked u4, u5;
    msgpack_unpacked_init(&u4);
    msgpack_unpacked_init(&u5);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u4, (const char *)d4, sizeof d4, &off), MSGPACK_UNPACK_SUCCESS);
    off = 0;
    assert_int_equal(msgpack_unpack_next(&u5, (const char *)d5, sizeof d5, &off), MSGPACK_UNPACK_SUCCESS);
    o4 = u4.data;
    o5 = u5.data;
    mutate(&ok, sb.data, sb.size, "future", &o4);
    mutate(&deep, sb.data, sb.size, "future", &o5);
    tb_err err;
    uint64_t seq;
    if (tb_proto_decode_ack(ok.data, ok.size, &seq, &err)) fail_msg("%s", err.msg);
    assert_int_equal(seq, 41);
    expect_refused(TB_PROTO_ACK, deep.data, deep.size, "ACK.future[0][0][0]: nesting depth 5 > limit 4");
    msgpack_unpacked_destroy(&u4);
    msgpack_unpacked_destroy(&u5);
    msgpack_sbuffer_destroy(&ok);
    msgpack_sbuffer_destroy(&deep);
    /* 10000 nested fixarrays: refused at depth 5 without recursing further. */
    uint8_t *nest = malloc(10003);
    memcpy(nest, (const uint8_t[]){0x81, 0xa1, 'x'}, 3);
    memset(nest + 3, 0x91, 10000);
    expect_refused(TB_PROTO_ACK, nest, 10003, "nesting depth 5 > limit 4");
    free(nest);
    msgpack_sbuffer_destroy(&sb);
}

static void test_structure_errors(void **state) {
    (void)state;
    tb_err err;
    /* Not a map at the top. */
    const uint8_t arr[] = {0x92, 0x01, 0x02};
    expect_refused(TB_PROTO_CREDIT, arr, sizeof arr, "CREDIT: not a msgpack map");
    expect_refused(TB_PROTO_CREDIT, "", 0, "CREDIT: empty message");
    /* A non-str key. */
    const uint8_t ikey[] = {0x81, 0x01, 0x02};
    expect_refused(TB_PROTO_ACK, ikey, sizeof ikey, "ACK: map key is not a str (type byte 0x01)");
    /* A known key twice. */
    const uint8_t dup[] = {0x84, 0xa1, 'v', 0x01, 0xa1, 't', 0xa3, 'a', 'c', 'k',
                           0xa3, 's', 'e', 'q', 0x05, 0xa3, 's', 'e', 'q', 0x06};
    expect_refused(TB_PROTO_ACK, dup, sizeof dup, "ACK.seq: duplicate key");
    /* Unknown keys of any valid type are ignored; the same message without the dup works. */
    const uint8_t extra[] = {0x84, 0xa1, 'v', 0x01, 0xa1, 't', 0xa3, 'a', 'c', 'k',
                             0xa3, 's', 'e', 'q', 0x05, 0xa1, 'z', 0x81, 0xa1, 'q', 0xcb,
                             0, 0, 0, 0, 0, 0, 0, 0};
    uint64_t seq;
    assert_int_equal(tb_proto_decode_ack(extra, sizeof extra, &seq, &err), 0);
    assert_int_equal(seq, 5);
    /* peek_type: unknown type string, wrong version. */
    tb_proto_type t;
    const uint8_t unk[] = {0x82, 0xa1, 'v', 0x01, 0xa1, 't', 0xa3, 'f', 'o', 'o'};
    assert_int_equal(tb_proto_peek_type(&t, unk, sizeof unk, &err), -1);
    assert_non_null(strstr(err.msg, "message.t: unknown type \"foo\""));
    const uint8_t v2[] = {0x82, 0xa1, 'v', 0x02, 0xa1, 't', 0xa3, 'a', 'c', 'k'};
    assert_int_equal(tb_proto_peek_type(&t, v2, sizeof v2, &err), -1);
    assert_non_null(strstr(err.msg, "message.v: unsupported version 2"));
    /* Non-printable key bytes are masked in the error path. */
    const uint8_t odd[] = {0x81, 0xa2, 0x01, 'k', 0xc1};
    expect_refused(TB_PROTO_ACK, odd, sizeof odd, "ACK.?k: unsupported msgpack type byte 0xc1");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_huge_declared_lengths),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_structure_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
