/* MLM masking over > 10^6 positions: exactly max(1, floor(0.15 n)) chosen per sample,
 * 15% / 80 / 10 / 10 within 0.5 percentage points, special tokens and padding never
 * chosen and never used as replacements, and the mask is a pure function of
 * (seed, epoch, sample). tb_mask_set_share: the [MASK] share moves, the random and unchanged
 * shares stay equal, the chosen positions do not move, 0.8 is the default bit for bit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "mask.h"
#include "pf_test_util.h"
#include "tb_rng.h"

static void test_mask_counts_statistics_and_specials(void **st) {
    (void)st;
    tb_spm *spm = pf_spm();
    tb_mask m;
    tb_err e;
    assert_int_equal(tb_mask_init(&m, spm, 0.15, &e), 0);
    tb_spm_specials sp = tb_spm_get_specials(spm);
    int32_t V = tb_spm_vocab_size(spm);
    const size_t T = 512, S = 2100;
    int32_t *ids = malloc(T * sizeof *ids), *orig = malloc(T * sizeof *orig);
    int32_t *labels = malloc(T * sizeof *labels);
    uint32_t *scratch = malloc(T * sizeof *scratch);
    uint64_t positions = 0, candidates = 0, chosen = 0, to_mask = 0, to_random = 0, same = 0;
    tb_rng r;
    tb_rng_init(&r, 7, TB_RNG_TEST, 0, 0, 0);
    const int32_t specials[] = {sp.cls, sp.sep, sp.mask, sp.pad, sp.unk, sp.bos, sp.eos};
    for (size_t s = 0; s < S; s++) {
        /* A layout like the packer's: [CLS] text [SEP] text ..., some specials inside,
         * a padded tail on every third sample. */
        size_t real = (s % 3 == 0) ? 100 + tb_rng_below(&r, (uint32_t)(T - 100)) : T;
        for (size_t t = 0; t < T; t++) {
            int32_t id;
            if (t == 0) id = sp.cls;
            else if (t >= real) id = sp.pad;
            else if (tb_rng_below(&r, 50) == 0) id = specials[tb_rng_below(&r, 7)];
            else id = (int32_t)tb_rng_below(&r, (uint32_t)V);
            ids[t] = orig[t] = id;
        }
        size_t n = 0;
        for (size_t t = 0; t < T; t++) n += !tb_spm_is_special(spm, orig[t]) && orig[t] != sp.pad;
        size_t k = tb_mask_apply(ids, labels, scratch, T, &m, 99, 3, s);
        size_t want = n ? (size_t)(0.15 * (double)n + 1e-9) : 0;
        if (n && want < 1) want = 1;
        assert_int_equal(k, want);
        size_t got = 0;
        for (size_t t = 0; t < T; t++) {
            int special = tb_spm_is_special(spm, orig[t]) || orig[t] == sp.pad;
            if (labels[t] == TB_MASK_IGNORE) {
                assert_int_equal(ids[t], orig[t]); /* unchosen positions untouched */
                continue;
            }
            assert_false(special); /* specials and padding never chosen */
            assert_int_equal(labels[t], orig[t]);
            got++;
            if (ids[t] == sp.mask) {
                to_mask++;
            } else {
                assert_false(tb_spm_is_special(spm, ids[t])); /* replacement non-special */
                assert_true(ids[t] >= 0 && ids[t] < V);
                if (ids[t] == orig[t]) same++;
                else to_random++;
            }
        }
        assert_int_equal(got, k);
        positions += T;
        candidates += n;
        chosen += k;
    }
    assert_true(positions >= 1000000);
    double pc = 100.0 * (double)chosen / (double)candidates;
    double pm = 100.0 * (double)to_mask / (double)chosen;
    double pr = 100.0 * (double)to_random / (double)chosen;
    double ps = 100.0 * (double)same / (double)chosen;
    fprintf(stderr, "positions %llu candidates %llu chosen %.3f%% mask %.3f%% random %.3f%% same %.3f%%\n",
            (unsigned long long)positions, (unsigned long long)candidates, pc, pm, pr, ps);
    assert_true(pc > 14.5 && pc < 15.5);
    assert_true(pm > 79.5 && pm < 80.5);
    assert_true(pr > 9.5 && pr < 10.5);
    assert_true(ps > 9.5 && ps < 10.5);
    free(ids);
    free(orig);
    free(labels);
    free(scratch);
    tb_mask_free(&m);
    tb_spm_free(spm);
}

static void test_mask_is_pure_function_of_key(void **st) {
    (void)st;
    tb_spm *spm = pf_spm();
    tb_mask m;
    tb_err e;
    assert_int_equal(tb_mask_init(&m, spm, 0.15, &e), 0);
    const size_t T = 128;
    int32_t a[128], b[128], la[128], lb[128];
    uint32_t sc[128];
    for (size_t t = 0; t < T; t++) a[t] = b[t] = 100 + (int32_t)t;
    tb_mask_apply(a, la, sc, T, &m, 5, 1, 1ull << 33);
    tb_mask_apply(b, lb, sc, T, &m, 5, 1, 1ull << 33);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(la, lb, sizeof la);
    for (size_t t = 0; t < T; t++) b[t] = 100 + (int32_t)t;
    tb_mask_apply(b, lb, sc, T, &m, 5, 1, 1); /* other sample: other mask */
    assert_memory_not_equal(la, lb, sizeof la);
    /* all-special sample: nothing chosen; one candidate: exactly one chosen */
    tb_spm_specials sp = tb_spm_get_specials(spm);
    for (size_t t = 0; t < T; t++) a[t] = sp.pad;
    assert_int_equal(tb_mask_apply(a, la, sc, T, &m, 5, 1, 2), 0);
    a[7] = 200;
    assert_int_equal(tb_mask_apply(a, la, sc, T, &m, 5, 1, 2), 1);
    assert_int_equal(la[7], 200);
    assert_int_equal(tb_mask_count(0.15, 20), 3);
    assert_int_equal(tb_mask_count(0.15, 6), 1);
    assert_int_equal(tb_mask_count(0.15, 0), 0);
    tb_mask_free(&m);
    tb_spm_free(spm);
}

static void test_mask_share_moves_the_split_not_the_choice(void **st) {
    (void)st;
    tb_spm *spm = pf_spm();
    tb_mask d, m;
    tb_err e;
    assert_int_equal(tb_mask_init(&d, spm, 0.4, &e), 0);
    assert_int_equal(tb_mask_init(&m, spm, 0.4, &e), 0);
    assert_int_equal(d.mask_tenths, 8);
    /* the accepted values, and a clear refusal of the others */
    assert_int_equal(tb_mask_share_tenths(0.2), 2);
    assert_int_equal(tb_mask_share_tenths(1.0), 10);
    assert_int_equal(tb_mask_share_tenths(0.6), 6);
    assert_int_equal(tb_mask_share_tenths(0.5), -1);
    assert_int_equal(tb_mask_share_tenths(0.3), -1);
    assert_int_equal(tb_mask_share_tenths(0.0), -1);
    assert_int_equal(tb_mask_share_tenths(1.2), -1);
    assert_int_equal(tb_mask_share_tenths(0.0 / 0.0), -1);
    assert_int_not_equal(tb_mask_set_share(&m, 0.5, &e), 0);
    assert_non_null(strstr(e.msg, "0.5"));
    assert_int_equal(m.mask_tenths, 8);
    tb_spm_specials sp = tb_spm_get_specials(spm);
    int32_t V = tb_spm_vocab_size(spm);
    const size_t T = 256, S = 4000;
    int32_t a[256], b[256], la[256], lb[256];
    uint32_t sc[256];
    /* 0.8 set explicitly: the default's output, bit for bit */
    assert_int_equal(tb_mask_set_share(&m, 0.8, &e), 0);
    for (size_t s = 0; s < 50; s++) {
        for (size_t t = 0; t < T; t++) a[t] = b[t] = 100 + (int32_t)((t * 7 + s) % 500);
        tb_mask_apply(a, la, sc, T, &d, 11, 0, s);
        tb_mask_apply(b, lb, sc, T, &m, 11, 0, s);
        assert_memory_equal(a, b, sizeof a);
        assert_memory_equal(la, lb, sizeof la);
    }
    /* 0.2: 20 / 40 / 40, on the positions the default chooses */
    assert_int_equal(tb_mask_set_share(&m, 0.2, &e), 0);
    uint64_t chosen = 0, to_mask = 0, to_random = 0, same = 0;
    for (size_t s = 0; s < S; s++) {
        for (size_t t = 0; t < T; t++) a[t] = b[t] = 100 + (int32_t)((t * 13 + s * 3) % (V - 200));
        size_t k = tb_mask_apply(a, la, sc, T, &d, 11, 0, s);
        assert_int_equal(tb_mask_apply(b, lb, sc, T, &m, 11, 0, s), k);
        assert_memory_equal(la, lb, sizeof la);
        for (size_t t = 0; t < T; t++) {
            if (lb[t] == TB_MASK_IGNORE) continue;
            chosen++;
            if (b[t] == sp.mask) to_mask++;
            else if (b[t] == lb[t]) same++;
            else to_random++;
        }
    }
    double pm = 100.0 * (double)to_mask / (double)chosen;
    double pr = 100.0 * (double)to_random / (double)chosen;
    double ps = 100.0 * (double)same / (double)chosen;
    fprintf(stderr, "share 0.2: chosen %llu mask %.3f%% random %.3f%% same %.3f%%\n",
            (unsigned long long)chosen, pm, pr, ps);
    assert_true(chosen > 300000);
    assert_true(pm > 19.5 && pm < 20.5);
    assert_true(pr > 39.5 && pr < 40.5);
    assert_true(ps > 39.5 && ps < 40.5);
    /* 1: every chosen position is [MASK] */
    assert_int_equal(tb_mask_set_share(&m, 1.0, &e), 0);
    for (size_t t = 0; t < T; t++) b[t] = 100 + (int32_t)t;
    tb_mask_apply(b, lb, sc, T, &m, 11, 0, 3);
    for (size_t t = 0; t < T; t++)
        if (lb[t] != TB_MASK_IGNORE) assert_int_equal(b[t], sp.mask);
    tb_mask_free(&d);
    tb_mask_free(&m);
    tb_spm_free(spm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask_counts_statistics_and_specials),
        cmocka_unit_test(test_mask_is_pure_function_of_key),
        cmocka_unit_test(test_mask_share_moves_the_split_not_the_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
