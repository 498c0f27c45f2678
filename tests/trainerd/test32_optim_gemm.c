/* The fp32 GEMM (the training build's kernel: 8-wide vectors) equals the naive loop of
 * fused multiply-adds in ascending k bit for bit for every transpose, odd sizes, K chunking and the accumulate-onto form; and
 * the GEMM-backed linear / BitLinear ops equal the reference loops (TB_CPU_REFERENCE)
 * bit for bit, compared through the op table against direct loops. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "backend.h"
#include "tb_rng.h"

static void fill(float *x, size_t n, uint32_t tag) {
    tb_rng r;
    tb_rng_init(&r, 3, TB_RNG_TEST, tag, 0, 0);
    for (size_t i = 0; i < n; i++) x[i] = 2 * tb_rng_uniform_f(&r) - 1;
}

static void naive(float *c, const float *a, const float *b, int M, int N, int K, int ta, int tb,
                  int lda, int ldb, int ldc, float alpha, float beta) {
    int onto = alpha == 1 && beta == 1;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float *cp = &c[(size_t)i * ldc + j];
            float acc = onto ? *cp : 0;
            for (int k = 0; k < K; k++)
                acc = fmaf(ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k],
                           tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j], acc);
            *cp = onto ? acc : beta == 0 ? alpha * acc : alpha * acc + beta * *cp;
        }
}

static void test_fp32_gemm_equals_naive_loop_bitwise(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    const int shapes[][3] = {{1, 1, 1}, {3, 8, 5}, {9, 17, 33}, {67, 31, 300}, {128, 100, 513},
                             {5, 250, 64}};
    const float ab[][2] = {{1, 0}, {1, 1}, {0.5f, 0}, {2, -0.25f}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (size_t k = 0; k < 4; k++) {
                    int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                    int lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 5, ldc = N + 2;
                    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
                           nc = (size_t)M * ldc;
                    float *a = malloc(na * 4), *b = malloc(nb * 4), *c1 = malloc(nc * 4),
                          *c2 = malloc(nc * 4);
                    fill(a, na, 1);
                    fill(b, nb, 2);
                    fill(c1, nc, 3);
                    memcpy(c2, c1, nc * 4);
                    be->core.gemm(c1, a, b, M, N, K, ta, tb, lda, ldb, ldc, ab[k][0], ab[k][1], be);
                    naive(c2, a, b, M, N, K, ta, tb, lda, ldb, ldc, ab[k][0], ab[k][1]);
                    if (memcmp(c1, c2, nc * 4))
                        fail_msg("gemm M%d N%d K%d ta%d tb%d alpha %g beta %g differs", M, N, K,
                                 ta, tb, (double)ab[k][0], (double)ab[k][1]);
                    free(a);
                    free(b);
                    free(c1);
                    free(c2);
                }
}

/* The op contract of ops_dense.h written as loops: y = x Wᵀ; dx += dy W; dw += dyᵀ x;
 * BitLinear y = Σ xq·wq / (s_x s_w). */
static void test_gemm_backed_linear_ops_equal_reference_loops(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    const int n = 37, in = 45, out = 29;
    float *x = malloc(n * in * 4), *w = malloc(out * in * 4), *y = malloc(n * out * 4),
          *yr = malloc(n * out * 4), *dy = malloc(n * out * 4), *dx = malloc(n * in * 4),
          *dxr = malloc(n * in * 4), *dw = malloc(out * in * 4), *dwr = malloc(out * in * 4);
    fill(x, (size_t)n * in, 4);
    fill(w, (size_t)out * in, 5);
    fill(dy, (size_t)n * out, 6);
    fill(dx, (size_t)n * in, 7);
    fill(dw, (size_t)out * in, 8);
    memcpy(dxr, dx, (size_t)n * in * 4);
    memcpy(dwr, dw, (size_t)out * in * 4);
    be->dense.linear_fwd(y, x, w, n, in, out);
    be->dense.linear_bwd(dx, dw, dy, x, w, n, in, out);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            float acc = 0;
            for (int j = 0; j < in; j++) acc = fmaf(x[t * in + j], w[o * in + j], acc);
            yr[t * out + o] = acc;
        }
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++)
            for (int j = 0; j < in; j++)
                dxr[t * in + j] = fmaf(dy[t * out + o], w[o * in + j], dxr[t * in + j]);
    for (int o = 0; o < out; o++)
        for (int t = 0; t < n; t++)
            for (int j = 0; j < in; j++)
                dwr[o * in + j] = fmaf(dy[t * out + o], x[t * in + j], dwr[o * in + j]);
    assert_memory_equal(y, yr, (size_t)n * out * 4);
    assert_memory_equal(dx, dxr, (size_t)n * in * 4);
    assert_memory_equal(dw, dwr, (size_t)out * in * 4);
    /* BitLinear forward: the exact integer product. */
    int8_t *xq = malloc((size_t)n * in), *wq = malloc((size_t)out * in);
    float *stats = malloc((size_t)n * 3 * 4), sw;
    be->dense.bitlinear_quant_w(wq, &sw, w, (size_t)out * in);
    be->dense.bitlinear_quant_x(xq, stats, x, n, in);
    be->dense.bitlinear_fwd(y, xq, stats, wq, &sw, n, in, out);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            int64_t acc = 0;
            for (int j = 0; j < in; j++) acc += (int64_t)xq[t * in + j] * wq[o * in + j];
            float ref = (float)acc / (stats[3 * t + 2] * sw);
            if (memcmp(&ref, &y[t * out + o], 4)) fail_msg("bitlinear y[%d,%d] differs", t, o);
        }
    free(xq);
    free(wq);
    free(stats);
    free(x);
    free(w);
    free(y);
    free(yr);
    free(dy);
    free(dx);
    free(dxr);
    free(dw);
    free(dwr);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp32_gemm_equals_naive_loop_bitwise),
        cmocka_unit_test(test_gemm_backed_linear_ops_equal_reference_loops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
