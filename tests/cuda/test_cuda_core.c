/* Core family on CUDA vs the CPU backend: GEMM (fp32 in the CPU's order: bit-identical;
 * cuBLASLt fp32 within 1e-5 and bf16 within 2e-2; every transpose, padded strides, beta 0
 * with NaN in c, alpha = beta = 1 accumulation, K = 0, the descriptor cache) and the element-wise
 * (axpby bit-identical, aliased too), reduction and AdamW ops. Skips (exit 77) without a
 * device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"

static void check(const char *name, const float *g, const float *c, size_t n, const char *shape) {
    double e = ct_rel_err(g, c, n);
    ct_record(name, e);
    if (!(e <= CT_TOL)) print_message("%s %s: rel err %.3e\n", name, shape, e);
    assert_true(e <= CT_TOL);
}

enum { G_ORDERED = 0, G_CUBLAS32, G_BF16 };
static int gmode;

static void gemm_case(int M, int N, int K, int ta, int tb, int pad, float alpha, float beta) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *a = ct_hmalloc(na * 4 + 4), *b = ct_hmalloc(nb * 4 + 4), *c = ct_hmalloc(nc * 4 + 4),
          *g = ct_hmalloc(nc * 4 + 4);
    ct_fill(a, na, -1, 1);
    ct_fill(b, nb, -1, 1);
    ct_fill(c, nc, -1, 1);
    if (beta == 0)
        for (size_t i = 0; i < nc; i++) c[i] = NAN; /* beta = 0 must ignore c */
    float *da = ct_up(a, na * 4 + 4), *db = ct_up(b, nb * 4 + 4), *dc = ct_up(c, nc * 4 + 4);
    ct_gpu->core.gemm(dc, da, db, M, N, K, ta, tb, lda, ldb, ldc, alpha, beta, ct_gpu);
    ct_cpu->core.gemm(c, a, b, M, N, K, ta, tb, lda, ldb, ldc, alpha, beta, ct_cpu);
    ct_down(g, dc, nc * 4);
    /* padding columns must be untouched (NaN or the old value either side): compare
     * only the (M, N) part. */
    float *gc = ct_hmalloc((size_t)M * N * 4 + 4), *cc = ct_hmalloc((size_t)M * N * 4 + 4);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) gc[(size_t)i * N + j] = g[(size_t)i * ldc + j], cc[(size_t)i * N + j] = c[(size_t)i * ldc + j];
    char shape[128];
    snprintf(shape, sizeof shape, "M=%d N=%d K=%d ta=%d tb=%d pad=%d alpha=%g beta=%g mode=%d", M, N, K, ta, tb,
             pad, alpha, beta, gmode);
    if (gmode == G_ORDERED) {
        if (memcmp(gc, cc, (size_t)M * N * 4)) print_message("core.gemm (CPU order) %s: bits differ\n", shape);
        assert_memory_equal(gc, cc, (size_t)M * N * 4);
        ct_record("core.gemm fp32 CPU order (bitwise)", 0.0);
    } else if (gmode == G_CUBLAS32) {
        check("core.gemm fp32 cuBLASLt", gc, cc, (size_t)M * N, shape);
    } else {
        double e = ct_rel_err(gc, cc, (size_t)M * N);
        ct_record("core.gemm bf16 cuBLASLt", e);
        if (!(e <= 2e-2)) print_message("core.gemm bf16 %s: rel err %.3e\n", shape, e);
        assert_true(e <= 2e-2);
    }
    tb_cuda_free(da), tb_cuda_free(db), tb_cuda_free(dc);
    free(a), free(b), free(c), free(g), free(gc), free(cc);
}

static void test_gemm_matches_cpu_every_transpose_and_stride(void **state) {
    (void)state;
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {64, 128, 96},
                                    {129, 257, 300}, {5, 3, 0}, {2, 1000, 513}};
    for (gmode = G_ORDERED; gmode <= G_BF16; gmode++) {
        tb_cuda_fp32_gemm_cublas(gmode == G_CUBLAS32);
        assert_int_equal(ct_gpu->core.set_precision(gmode == G_BF16 ? TB_PREC_BF16 : TB_PREC_FP32),
                         gmode == G_BF16 ? TB_PREC_BF16 : TB_PREC_FP32);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++)
                    for (int pad = 0; pad < 4; pad += 3) {
                        gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, pad, 1.0f, 0.0f);
                        gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, pad, 0.75f, 0.5f);
                        gemm_case(shapes[s][0], shapes[s][1], shapes[s][2], ta, tb, pad, 1.0f, 1.0f);
                    }
    }
    tb_cuda_fp32_gemm_cublas(0);
    ct_gpu->core.set_precision(TB_PREC_FP32);
}

static void test_gemm_descriptor_cache_hits_on_repeat(void **state) {
    (void)state;
    int e0, e1;
    long h0, m0, h1, m1;
    /* the cache serves cuBLASLt's GEMMs (bf16 here) */
    ct_gpu->core.set_precision(TB_PREC_BF16);
    gmode = G_BF16;
    gemm_case(37, 41, 43, 0, 1, 0, 1.0f, 0.0f);
    tb_cuda_gemm_cache_stats(&e0, &h0, &m0);
    gemm_case(37, 41, 43, 0, 1, 0, 1.0f, 0.0f);
    tb_cuda_gemm_cache_stats(&e1, &h1, &m1);
    assert_int_equal(e1, e0);
    assert_int_equal(m1, m0);
    assert_true(h1 == h0 + 1);
    ct_gpu->core.set_precision(TB_PREC_FP32);
    gmode = G_ORDERED;
}

/* More distinct shapes than the cache has slots, enqueued back to back without waiting,
 * so full-table evictions destroy descriptors of matmuls that may still be queued: every
 * result still matches the CPU. */
static void test_gemm_cache_evicts_when_full_and_results_hold(void **state) {
    (void)state;
    int cap, e0;
    long ev0, ev1, h0, m0, bu0, bu1;
    tb_cuda_gemm_cache_more(&cap, &ev0, &bu0);
    ct_gpu->core.set_precision(TB_PREC_BF16);
    const int n = cap + 100, K = 24;
    float **ha = calloc((size_t)n, sizeof *ha), **hb = calloc((size_t)n, sizeof *hb);
    float **da = calloc((size_t)n, sizeof *da), **db = calloc((size_t)n, sizeof *db),
          **dc = calloc((size_t)n, sizeof *dc);
    assert_non_null(ha), assert_non_null(hb), assert_non_null(da), assert_non_null(db), assert_non_null(dc);
    for (int i = 0; i < n; i++) { /* N distinct for every i (M shares a bucket) */
        int M = 1 + i % 50, N = 1 + i;
        ha[i] = ct_hmalloc((size_t)M * K * 4), hb[i] = ct_hmalloc((size_t)K * N * 4);
        ct_fill(ha[i], (size_t)M * K, -1, 1);
        ct_fill(hb[i], (size_t)K * N, -1, 1);
        da[i] = ct_up(ha[i], (size_t)M * K * 4), db[i] = ct_up(hb[i], (size_t)K * N * 4);
        dc[i] = ct_poisoned((size_t)M * N * 4);
    }
    for (int i = 0; i < n; i++) {
        int M = 1 + i % 50, N = 1 + i;
        ct_gpu->core.gemm(dc[i], da[i], db[i], M, N, K, 0, 0, K, N, N, 1.0f, 0.0f, ct_gpu);
    }
    tb_cuda_gemm_cache_stats(&e0, &h0, &m0);
    tb_cuda_gemm_cache_more(&cap, &ev1, &bu1);
    assert_int_equal(e0, cap);
    assert_true(ev1 - ev0 >= 100);
    /* shapes of one bucket share its algorithm; calls where cuBLASLt refused it for the
     * exact shape ran that shape's own */
    print_message("%ld of %d calls ran their exact shape's algorithm\n", bu1 - bu0, n);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        int M = 1 + i % 50, N = 1 + i;
        float *g = ct_hmalloc((size_t)M * N * 4), *c = ct_hmalloc((size_t)M * N * 4);
        ct_down(g, dc[i], (size_t)M * N * 4);
        ct_cpu->core.gemm(c, ha[i], hb[i], M, N, K, 0, 0, K, N, N, 1.0f, 0.0f, ct_cpu);
        double e = ct_rel_err(g, c, (size_t)M * N);
        if (e > worst) worst = e;
        if (!(e <= 2e-2)) print_message("gemm %d (M=%d N=%d): rel err %.3e\n", i, M, N, e);
        assert_true(e <= 2e-2);
        tb_cuda_free(da[i]), tb_cuda_free(db[i]), tb_cuda_free(dc[i]);
        free(ha[i]), free(hb[i]), free(g), free(c);
    }
    ct_record("core.gemm bf16 past a full descriptor cache", worst);
    free(ha), free(hb), free(da), free(db), free(dc);
    ct_gpu->core.set_precision(TB_PREC_FP32);
}

/* Row counts that change on every call (the MoE's expert GEMMs): one entry per bucket of
 * M (and of K, the weight gradient's rows), its layouts resized per call, enqueued back to
 * back; every result matches the CPU, and the second pass over the same shapes misses
 * nothing. */
static void test_gemm_entry_serves_a_bucket_of_row_counts(void **state) {
    (void)state;
    ct_gpu->core.set_precision(TB_PREC_BF16);
    gmode = G_BF16;
    int e0, e1;
    long h0, m0, h1, m1;
    static const int ms[] = {300, 17, 256, 1, 257, 511, 129, 64};
    for (int pass = 0; pass < 2; pass++) {
        tb_cuda_gemm_cache_stats(&e0, &h0, &m0);
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            gemm_case(ms[i], 96, 80, 0, 1, 0, 1.0f, 0.0f);             /* x wᵀ: M varies */
            gemm_case(64, 48, ms[i], 1, 0, 0, 1.0f, 1.0f);             /* dyᵀ x: K varies */
            gemm_case(ms[i], 40, 72, 0, 0, 3, 0.5f, 0.0f);             /* padded rows */
        }
        tb_cuda_gemm_cache_stats(&e1, &h1, &m1);
        print_message("pass %d: %ld misses, %ld hits over %zu calls\n", pass, m1 - m0, h1 - h0,
                      3 * sizeof ms / sizeof ms[0]);
        if (pass == 1) assert_int_equal(m1, m0); /* M in {1..256, 257..512} x K likewise */
        assert_true(m1 - m0 <= 6);
    }
    ct_gpu->core.set_precision(TB_PREC_FP32);
    gmode = G_ORDERED;
}

static void test_elementwise_sum_and_adamw_match_cpu(void **state) {
    (void)state;
    static const size_t sizes[] = {1, 7, 255, 256, 257, 100003, 1 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], B = n * 4;
        float *x = ct_hmalloc(B), *y = ct_hmalloc(B), *g = ct_hmalloc(B), *m = ct_hmalloc(B),
              *v = ct_hmalloc(B), *out = ct_hmalloc(B);
        ct_fill(x, n, -2, 2);
        ct_fill(y, n, -2, 2);
        ct_fill(g, n, -1, 1);
        ct_fill(m, n, -0.1f, 0.1f);
        ct_fill(v, n, 0, 0.01f);
        float *dx = ct_up(x, B), *dy = ct_up(y, B), *dg = ct_up(g, B), *dm = ct_up(m, B), *dv = ct_up(v, B);
        char shape[64];
        snprintf(shape, sizeof shape, "n=%zu", n);
        /* axpby into a third buffer, then in place on each input: same expression as
         * the CPU (no fma), so bit-identical */
        float *z = ct_hmalloc(B), *dz = ct_poisoned(B);
        ct_gpu->core.axpby(dz, 0.6f, dx, -1.3f, dy, n);
        ct_cpu->core.axpby(z, 0.6f, x, -1.3f, y, n);
        ct_down(out, dz, B);
        check("core.axpby", out, z, n, shape);
        assert_memory_equal(out, z, B);
        ct_gpu->core.axpby(dz, 0.25f, dz, 1.5f, dx, n);
        ct_cpu->core.axpby(z, 0.25f, z, 1.5f, x, n);
        ct_gpu->core.axpby(dz, -0.5f, dy, 0.75f, dz, n);
        ct_cpu->core.axpby(z, -0.5f, y, 0.75f, z, n);
        ct_down(out, dz, B);
        check("core.axpby in place", out, z, n, shape);
        assert_memory_equal(out, z, B);
        tb_cuda_free(dz);
        free(z);
        /* axpy, scale, copy, fill */
        ct_gpu->core.axpy(dy, 0.3f, dx, n);
        ct_cpu->core.axpy(y, 0.3f, x, n);
        ct_down(out, dy, B);
        check("core.axpy", out, y, n, shape);
        ct_gpu->core.scale(dy, -1.7f, n);
        ct_cpu->core.scale(y, -1.7f, n);
        ct_down(out, dy, B);
        check("core.scale", out, y, n, shape);
        double hs = ct_gpu->core.sumsq(dy, n), cs = ct_cpu->core.sumsq(y, n);
        /* sumsq_many: the same kernels per range, so the same bits as sumsq */
        size_t off[2] = {0, n / 2}, num[2] = {n / 2, n - n / 2};
        double many[2];
        ct_gpu->core.sumsq_many(many, dy, off, num, 2);
        assert_true(many[0] == ct_gpu->core.sumsq(dy, n / 2));
        assert_true(many[1] == ct_gpu->core.sumsq(dy + n / 2, n - n / 2));
        ct_record("core.sumsq", fabs(hs - cs) / cs);
        assert_true(fabs(hs - cs) <= 1e-12 * cs);
        assert_int_equal(ct_gpu->core.all_finite(dy, n), 1);
        /* adamw step 3 */
        double bc1 = 1 - pow(0.9, 3), bc2 = 1 - pow(0.95, 3);
        ct_gpu->core.adamw(dy, dm, dv, dg, n, 3e-4, 0.1, 0.9, 0.95, 1e-8, bc1, bc2, 0.5);
        ct_cpu->core.adamw(y, m, v, g, n, 3e-4, 0.1, 0.9, 0.95, 1e-8, bc1, bc2, 0.5);
        ct_down(out, dy, B);
        check("core.adamw w", out, y, n, shape);
        ct_down(out, dm, B);
        check("core.adamw m", out, m, n, shape);
        ct_down(out, dv, B);
        check("core.adamw v", out, v, n, shape);
        ct_gpu->core.copy(dy, dx, n);
        ct_down(out, dy, B);
        assert_memory_equal(out, x, B);
        ct_gpu->core.fill(dy, 2.5f, n);
        ct_down(out, dy, B);
        for (size_t i = 0; i < n; i++) assert_true(out[i] == 2.5f);
        /* a NaN then an inf anywhere is caught */
        float bad[2] = {NAN, INFINITY};
        for (int k = 0; k < 2; k++) {
            tb_err err = {{0}};
            assert_int_equal(tb_cuda_h2d(dy + n / 2, &bad[k], 4, &err), 0);
            assert_int_equal(ct_gpu->core.all_finite(dy, n), 0);
        }
        tb_cuda_free(dx), tb_cuda_free(dy), tb_cuda_free(dg), tb_cuda_free(dm), tb_cuda_free(dv);
        free(x), free(y), free(g), free(m), free(v), free(out);
    }
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_matches_cpu_every_transpose_and_stride),
        cmocka_unit_test(test_gemm_descriptor_cache_hits_on_repeat),
        cmocka_unit_test(test_gemm_cache_evicts_when_full_and_results_hold),
        cmocka_unit_test(test_gemm_entry_serves_a_bucket_of_row_counts),
        cmocka_unit_test(test_elementwise_sum_and_adamw_match_cpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ct_summary();
    return rc;
}
