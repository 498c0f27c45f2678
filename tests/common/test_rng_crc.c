/* Known-answer tests for Philox4x32-10 (Random123's kat_vectors) and CRC-32C, and the
 * properties the rest of tb relies on: stateless access equals sequential draws, and a
 * copied state continues the same stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include "tb_crc32c.h"
#include "tb_rng.h"

static void philox_matches_random123_known_answers(void **state) {
    (void)state;
    static const struct { uint32_t ctr[4], key[2], out[4]; } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t out[4];
        tb_philox4x32(out, kat[i].ctr, kat[i].key);
        for (int j = 0; j < 4; j++) assert_int_equal(out[j], kat[i].out[j]);
    }
}

static void rng_stateless_access_equals_sequential_draws(void **state) {
    (void)state;
    tb_rng r;
    tb_rng_init(&r, 1234, TB_RNG_DROPOUT, 7, 3, 1);
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(tb_rng_u32(&r), tb_rng_at(1234, TB_RNG_DROPOUT, 7, 3, 1, i));
}

static void rng_copied_state_continues_the_stream(void **state) {
    (void)state;
    tb_rng a, b;
    tb_rng_init(&a, 42, TB_RNG_MASK, 0, 5, 0);
    for (int i = 0; i < 13; i++) tb_rng_u32(&a);
    memcpy(&b, &a, sizeof a);
    for (int i = 0; i < 100; i++) assert_int_equal(tb_rng_u32(&a), tb_rng_u32(&b));
    tb_rng c;
    tb_rng_init(&c, 42, TB_RNG_INIT, 0, 5, 0); /* another purpose: another stream */
    tb_rng_init(&a, 42, TB_RNG_MASK, 0, 5, 0);
    int same = 0;
    for (int i = 0; i < 64; i++) same += tb_rng_u32(&a) == tb_rng_u32(&c);
    assert_true(same < 4);
}

static void rng_below_and_uniform_stay_in_range(void **state) {
    (void)state;
    tb_rng r;
    tb_rng_init(&r, 9, TB_RNG_TEST, 0, 0, 0);
    uint32_t hist[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint32_t x = tb_rng_below(&r, 7);
        assert_true(x < 7);
        hist[x]++;
        double u = tb_rng_uniform(&r);
        assert_true(u >= 0.0 && u < 1.0);
        float f = tb_rng_uniform_f(&r);
        assert_true(f >= 0.0f && f < 1.0f);
    }
    for (int i = 0; i < 7; i++) assert_true(hist[i] > 9400 && hist[i] < 10600);
}

static void crc32c_matches_the_standard_check_value(void **state) {
    (void)state;
    assert_int_equal(tb_crc32c(0, "123456789", 9), 0xE3069283u);
    /* Incremental equals one-shot, across the 8-byte slicing boundary. */
    const char *s = "The quick brown fox jumps over the lazy dog";
    uint32_t one = tb_crc32c(0, s, strlen(s));
    for (size_t cut = 0; cut <= strlen(s); cut++) {
        uint32_t c = tb_crc32c(0, s, cut);
        c = tb_crc32c(c, s + cut, strlen(s) - cut);
        assert_int_equal(c, one);
    }
    assert_int_equal(tb_crc32c(0, "", 0), 0u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(philox_matches_random123_known_answers),
        cmocka_unit_test(rng_stateless_access_equals_sequential_draws),
        cmocka_unit_test(rng_copied_state_continues_the_stream),
        cmocka_unit_test(rng_below_and_uniform_stay_in_range),
        cmocka_unit_test(crc32c_matches_the_standard_check_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
