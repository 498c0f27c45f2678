/* Dense family on CUDA vs the CPU backend over a sweep of shapes (odd sizes, sizes
 * around the 32/64 tiles and the 256-thread rows): linear, BitLinear (codes, statistics
 * and the integer product bit-identical; the STE backward within tolerance), the five
 * norms, masked cross-entropy, axpy and sum_squares. Backward ops accumulate onto
 * random gradients. Skips (exit 77) without a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"
#include "layers/norm.h"

static char shape[160];

static void check_tol(const char *name, const float *g, const float *c, size_t n, double tol) {
    double e = ct_rel_err(g, c, n);
    ct_record(name, e);
    if (!(e <= tol)) print_message("%s %s: rel err %.3e\n", name, shape, e);
    assert_true(e <= tol);
}
static void check(const char *name, const float *g, const float *c, size_t n) { check_tol(name, g, c, n, CT_TOL); }

/* Download device tensor d (n floats) and compare with host c. */
static void check_dev_tol(const char *name, const float *d, const float *c, size_t n, double tol) {
    float *g = ct_hmalloc(n * 4);
    ct_down(g, d, n * 4);
    check_tol(name, g, c, n, tol);
    free(g);
}
static void check_dev(const char *name, const float *d, const float *c, size_t n) {
    check_dev_tol(name, d, c, n, CT_TOL);
}

static float *rnd(size_t n, float lo, float hi) {
    float *x = ct_hmalloc(n * 4);
    ct_fill(x, n, lo, hi);
    return x;
}

static const int lin_shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {33, 64, 31}, {70, 130, 65},
                                    {257, 300, 129}, {64, 1000, 96}, {130, 128, 384},
                                    {256, 1024, 256}};
#define NLIN (sizeof lin_shapes / sizeof lin_shapes[0])

static void test_linear_fwd_bwd_match_cpu(void **state) {
    (void)state;
    for (size_t s = 0; s < NLIN; s++) {
        size_t n = lin_shapes[s][0];
        int in = lin_shapes[s][1], out = lin_shapes[s][2];
        snprintf(shape, sizeof shape, "n=%zu in=%d out=%d", n, in, out);
        float *x = rnd(n * in, -1, 1), *w = rnd((size_t)out * in, -1, 1), *dy = rnd(n * out, -1, 1),
              *dx = rnd(n * in, -1, 1), *dw = rnd((size_t)out * in, -1, 1), *y = ct_hmalloc(n * out * 4);
        float *gx = ct_up(x, n * in * 4), *gw = ct_up(w, (size_t)out * in * 4), *gdy = ct_up(dy, n * out * 4),
              *gdx = ct_up(dx, n * in * 4), *gdw = ct_up(dw, (size_t)out * in * 4), *gy = ct_poisoned(n * out * 4);
        ct_gpu->dense.linear_fwd(gy, gx, gw, n, in, out);
        ct_cpu->dense.linear_fwd(y, x, w, n, in, out);
        check_dev("dense.linear_fwd y", gy, y, n * out);
        ct_gpu->dense.linear_bwd(gdx, gdw, gdy, gx, gw, n, in, out);
        ct_cpu->dense.linear_bwd(dx, dw, dy, x, w, n, in, out);
        check_dev("dense.linear_bwd dx", gdx, dx, n * in);
        check_dev("dense.linear_bwd dw", gdw, dw, (size_t)out * in);
        tb_cuda_free(gx), tb_cuda_free(gw), tb_cuda_free(gdy), tb_cuda_free(gdx), tb_cuda_free(gdw), tb_cuda_free(gy);
        free(x), free(w), free(dy), free(dx), free(dw), free(y);
    }
}

static void test_bitlinear_quantisers_and_integer_product_bit_identical(void **state) {
    (void)state;
    for (size_t s = 0; s < NLIN; s++) {
        for (int edge = 0; edge < 2; edge++) {
            size_t n = lin_shapes[s][0];
            int in = lin_shapes[s][1], out = lin_shapes[s][2];
            size_t cnt = (size_t)out * in;
            snprintf(shape, sizeof shape, "n=%zu in=%d out=%d edge=%d", n, in, out, edge);
            float *x = rnd(n * in, -3, 3), *w = rnd(cnt, -0.05f, 0.05f);
            if (edge) { /* an all-zero row, a constant row, an all-zero weight tensor */
                memset(x, 0, in * 4);
                if (n > 1)
                    for (int j = 0; j < in; j++) x[in + j] = 0.25f;
                memset(w, 0, cnt * 4);
            }
            int8_t *xq = ct_hmalloc(n * in), *wq = ct_hmalloc(cnt), *hq = ct_hmalloc(n * in + cnt);
            float *st = ct_hmalloc(n * 12), sw, hsw, *hst = ct_hmalloc(n * 12), *y = ct_hmalloc(n * out * 4),
                  *hy = ct_hmalloc(n * out * 4);
            float *gx = ct_up(x, n * in * 4), *gw = ct_up(w, cnt * 4), *gst = ct_poisoned(n * 12),
                  *gsw = ct_poisoned(4), *gy = ct_poisoned(n * out * 4);
            int8_t *gxq = ct_poisoned(n * in), *gwq = ct_poisoned(cnt);
            ct_gpu->dense.bitlinear_quant_w(gwq, gsw, gw, cnt);
            ct_cpu->dense.bitlinear_quant_w(wq, &sw, w, cnt);
            ct_down(&hsw, gsw, 4);
            ct_down(hq, gwq, cnt);
            assert_memory_equal(&hsw, &sw, 4);
            assert_memory_equal(hq, wq, cnt);
            ct_gpu->dense.bitlinear_quant_x(gxq, gst, gx, n, in);
            ct_cpu->dense.bitlinear_quant_x(xq, st, x, n, in);
            ct_down(hst, gst, n * 12);
            ct_down(hq, gxq, n * in);
            assert_memory_equal(hst, st, n * 12);
            assert_memory_equal(hq, xq, n * in);
            ct_record("dense.bitlinear_quant_w/x", 0.0); /* reached only when bit-identical */
            ct_gpu->dense.bitlinear_fwd(gy, gxq, gst, gwq, gsw, n, in, out);
            ct_cpu->dense.bitlinear_fwd(y, xq, st, wq, &sw, n, in, out);
            ct_down(hy, gy, n * out * 4);
            assert_memory_equal(hy, y, n * out * 4);
            ct_record("dense.bitlinear_fwd (bitwise)", 0.0);
            /* STE backward onto random gradients, with and without dx. */
            float *dy = rnd(n * out, -1, 1), *dx = rnd(n * in, -1, 1), *dw = rnd(cnt, -1, 1),
                  *dxh = ct_hmalloc(n * in * 4);
            float *gdy = ct_up(dy, n * out * 4), *gdx = ct_up(dx, n * in * 4), *gdw = ct_up(dw, cnt * 4),
                  *gdxh = ct_poisoned(n * in * 4);
            float *dx0 = ct_hmalloc(n * in * 4), *dw0 = ct_hmalloc(cnt * 4);
            memcpy(dx0, dx, n * in * 4), memcpy(dw0, dw, cnt * 4);
            ct_gpu->dense.bitlinear_bwd(gdx, gdw, gdxh, gdy, gx, gxq, gst, gwq, gsw, n, in, out);
            ct_cpu->dense.bitlinear_bwd(dx, dw, dxh, dy, x, xq, st, wq, &sw, n, in, out);
            check_dev("dense.bitlinear_bwd dx", gdx, dx, n * in);
            check_dev("dense.bitlinear_bwd dw", gdw, dw, cnt);
            check_dev("dense.bitlinear_bwd dxhat", gdxh, dxh, n * in);
            ct_gpu->dense.bitlinear_bwd(NULL, gdw, gdxh, gdy, gx, gxq, gst, gwq, gsw, n, in, out);
            ct_cpu->dense.bitlinear_bwd(NULL, dw, dxh, dy, x, xq, st, wq, &sw, n, in, out);
            check_dev("dense.bitlinear_bwd dw", gdw, dw, cnt);
            /* bitlinear_bwd_set: dx written over poison (never read) against the CPU's zero
             * fill + bitlinear_bwd (what linear_backward_set does without the op) */
            {
                float *sdx = ct_poisoned(n * in * 4);
                assert_non_null(ct_gpu->dense.bitlinear_bwd_set);
                ct_gpu->dense.bitlinear_bwd_set(sdx, gdw, gdxh, gdy, gx, gxq, gst, gwq, gsw, n, in, out);
                memset(dx, 0, n * in * 4);
                ct_cpu->dense.bitlinear_bwd(dx, dw, dxh, dy, x, xq, st, wq, &sw, n, in, out);
                check_dev("dense.bitlinear_bwd_set dx", sdx, dx, n * in);
                check_dev("dense.bitlinear_bwd_set dw", gdw, dw, cnt);
                tb_cuda_free(sdx);
            }
            /* The bf16 mode's backward (dy, x̃ and Ŵ rounded to bf16 for both GEMMs):
             * within the bf16 bound, dxhat (overwritten, not accumulated) included. */
            if (ct_gpu->core.set_precision(TB_PREC_BF16) == TB_PREC_BF16) {
                float *bdx = ct_up(dx0, n * in * 4), *bdw = ct_up(dw0, cnt * 4), *bdxh = ct_poisoned(n * in * 4);
                ct_gpu->dense.bitlinear_bwd(bdx, bdw, bdxh, gdy, gx, gxq, gst, gwq, gsw, n, in, out);
                ct_cpu->dense.bitlinear_bwd(dx0, dw0, dxh, dy, x, xq, st, wq, &sw, n, in, out);
                check_dev_tol("dense.bitlinear_bwd bf16 dx", bdx, dx0, n * in, CT_TOL_BF16);
                check_dev_tol("dense.bitlinear_bwd bf16 dw", bdw, dw0, cnt, CT_TOL_BF16);
                check_dev_tol("dense.bitlinear_bwd bf16 dxhat", bdxh, dxh, n * in, CT_TOL_BF16);
                ct_gpu->core.set_precision(TB_PREC_FP32);
                tb_cuda_free(bdx), tb_cuda_free(bdw), tb_cuda_free(bdxh);
            }
            free(dx0), free(dw0);
            tb_cuda_free(gx), tb_cuda_free(gw), tb_cuda_free(gst), tb_cuda_free(gsw), tb_cuda_free(gy);
            tb_cuda_free(gxq), tb_cuda_free(gwq), tb_cuda_free(gdy), tb_cuda_free(gdx), tb_cuda_free(gdw);
            tb_cuda_free(gdxh);
            free(x), free(w), free(xq), free(wq), free(hq), free(st), free(hst), free(y), free(hy);
            free(dy), free(dx), free(dw), free(dxh);
        }
    }
}

static const char *norm_names[5] = {"dense.norm dynamic_tanh", "dense.norm dyt", "dense.norm derf",
                                    "dense.norm layer_norm", "dense.norm rms_norm"};

/* bitlinear_quant_w_many over tensors of odd sizes (one empty, one all zero, one large
 * enough for the code kernel's stride), laid out with gaps and out of order in the codes
 * and scales: codes and scales bit-identical to the CPU's one call a tensor, and the
 * codes and scales outside the ranges left alone. */
static void test_bitlinear_quant_w_many_bit_identical(void **state) {
    (void)state;
    static const size_t cnt[] = {1, 7, 0, 4096, 130 * 65, 600000, 33};
    enum { NR = sizeof cnt / sizeof cnt[0] };
    tb_quant_w_range r[NR];
    size_t woff = 0, coff = 0;
    for (int i = 0; i < NR; i++) { /* codes in reverse order, a gap of 3 before each */
        r[NR - 1 - i].code_off = coff + 3;
        coff += cnt[NR - 1 - i] + 3;
    }
    for (int i = 0; i < NR; i++) {
        r[i].w_off = woff + 5;
        r[i].count = cnt[i];
        r[i].scale = (size_t)(2 * (NR - 1 - i) + 1);
        woff += cnt[i] + 5;
    }
    snprintf(shape, sizeof shape, "%d tensors, %zu weights", (int)NR, woff);
    float *w = rnd(woff, -0.05f, 0.05f);
    memset(w + r[1].w_off, 0, cnt[1] * 4); /* an all-zero tensor: the 1e-5 floor */
    int8_t *cq = ct_hmalloc(coff), *hq = ct_hmalloc(coff);
    float cs[2 * NR + 1], hs[2 * NR + 1];
    memset(cq, 0x5a, coff);
    for (int i = 0; i < 2 * NR + 1; i++) cs[i] = -7.0f;
    float *gw = ct_up(w, woff * 4), *gs = ct_up(cs, sizeof cs);
    int8_t *gq = ct_up(cq, coff);
    for (int i = 0; i < NR; i++)
        ct_cpu->dense.bitlinear_quant_w(cq + r[i].code_off, cs + r[i].scale, w + r[i].w_off, cnt[i]);
    assert_non_null(ct_gpu->dense.bitlinear_quant_w_many);
    ct_gpu->dense.bitlinear_quant_w_many(gq, gs, gw, r, NR);
    ct_down(hq, gq, coff);
    ct_down(hs, gs, sizeof hs);
    assert_memory_equal(hs, cs, sizeof cs);
    assert_memory_equal(hq, cq, coff);
    ct_record("dense.bitlinear_quant_w_many (bitwise)", 0.0);
    tb_cuda_free(gw), tb_cuda_free(gs), tb_cuda_free(gq);
    free(w), free(cq), free(hq);
}

static void test_norms_fwd_bwd_match_cpu_all_five(void **state) {
    (void)state;
    static const int shapes[][2] = {{1, 2}, {3, 5}, {7, 257}, {33, 1000}, {300, 64}, {9000, 3}, {1029, 1024}, {5, 4096}, {17, 2048}, {3, 2052}};
    for (int type = 0; type < 5; type++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            size_t n = shapes[s][0];
            int C = shapes[s][1];
            snprintf(shape, sizeof shape, "%s n=%zu C=%d", norm_names[type], n, C);
            int np = norm_param_count((tb_norm_type)type);
            float *hp[4], *hdp[4], *gp[4], *gdp[4];
            for (int i = 0; i < np; i++) {
                size_t sz = norm_param_size((tb_norm_type)type, i, C);
                hp[i] = rnd(sz, 0.5f, 1.5f);
                hdp[i] = rnd(sz, -1, 1);
                gp[i] = ct_up(hp[i], sz * 4);
                gdp[i] = ct_up(hdp[i], sz * 4);
            }
            float *x = rnd(n * C, -2, 2), *dy = rnd(n * C, -1, 1), *dx = rnd(n * C, -1, 1),
                  *y = ct_hmalloc(n * C * 4), *st = ct_hmalloc(n * 8);
            for (size_t i = 0; i < n * C; i += 3) x[i] += 1.0f; /* a nonzero mean */
            float *gx = ct_up(x, n * C * 4), *gdy = ct_up(dy, n * C * 4), *gdx = ct_up(dx, n * C * 4),
                  *gy = ct_poisoned(n * C * 4), *gst = ct_poisoned(n * 8);
            ct_gpu->dense.norm_fwd(gy, gst, gx, (const real *const *)gp, type, n, C);
            ct_cpu->dense.norm_fwd(y, st, x, (const real *const *)hp, type, n, C);
            check_dev(norm_names[type], gy, y, n * C);
            int has_stats = norm_act_count((tb_norm_type)type, n) > 0;
            if (has_stats) {
                float *hst = ct_hmalloc(n * 8);
                ct_down(hst, gst, n * 8);
                check("dense.norm stats", hst, st, 2 * n);
                free(hst);
            }
            ct_gpu->dense.norm_bwd(gdx, gdp, gdy, gst, gx, (const real *const *)gp, type, n, C);
            ct_cpu->dense.norm_bwd(dx, hdp, dy, st, x, (const real *const *)hp, type, n, C);
            check_dev("dense.norm_bwd dx", gdx, dx, n * C);
            for (int i = 0; i < np; i++)
                check_dev("dense.norm_bwd dparam", gdp[i], hdp[i], norm_param_size((tb_norm_type)type, i, C));
            /* the writing forms: from zeros (dx poisoned: not read) and from another buffer */
            for (int form = 0; form < 2; form++) {
                float *gto = ct_poisoned(n * C * 4), *gbase = form ? ct_up(dy, n * C * 4) : NULL;
                ct_gpu->dense.norm_bwd_to(gto, gbase, gdp, gdy, gst, gx, (const real *const *)gp, type, n, C);
                ct_cpu->dense.norm_bwd_to(dx, form ? dy : NULL, hdp, dy, st, x, (const real *const *)hp, type, n, C);
                check_dev(form ? "dense.norm_bwd_to dx (base)" : "dense.norm_bwd_to dx (zeros)", gto, dx, n * C);
                for (int i = 0; i < np; i++)
                    check_dev("dense.norm_bwd_to dparam", gdp[i], hdp[i], norm_param_size((tb_norm_type)type, i, C));
                tb_cuda_free(gto);
                if (gbase) tb_cuda_free(gbase);
            }
            for (int i = 0; i < np; i++) tb_cuda_free(gp[i]), tb_cuda_free(gdp[i]), free(hp[i]), free(hdp[i]);
            tb_cuda_free(gx), tb_cuda_free(gdy), tb_cuda_free(gdx), tb_cuda_free(gy), tb_cuda_free(gst);
            free(x), free(dy), free(dx), free(y), free(st);
        }
    }
}

static void test_xent_fwd_bwd_match_cpu_with_ignored_labels_and_ties(void **state) {
    (void)state;
    static const int shapes[][2] = {{1, 1}, {5, 7}, {33, 300}, {64, 8000}, {257, 1031}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t n = shapes[s][0];
        int V = shapes[s][1];
        snprintf(shape, sizeof shape, "n=%zu V=%d", n, V);
        float *z = rnd(n * V, -4, 4), *dz = rnd(n * V, -1, 1), *lse = ct_hmalloc(n * 4);
        int32_t *lab = ct_hmalloc(n * 4);
        for (size_t t = 0; t < n; t++) {
            lab[t] = t % 5 == 3 ? -100 : (int32_t)(ct_u01() * V);
            if (t % 4 == 1 && V > 2) { /* a tie for the max at the label and a lower index */
                z[t * V + (size_t)lab[t]] = 9.0f;
                z[t * V + 0] = 9.0f;
            }
        }
        float *gz = ct_up(z, n * V * 4), *gdz = ct_up(dz, n * V * 4), *glse = ct_poisoned(n * 4);
        int32_t *glab = ct_up(lab, n * 4);
        double gs, cs;
        int64_t gc, cc, gk, ck;
        ct_gpu->dense.xent_fwd(glse, &gs, &gc, &gk, gz, glab, n, V);
        ct_cpu->dense.xent_fwd(lse, &cs, &cc, &ck, z, lab, n, V);
        check_dev("dense.xent_fwd lse", glse, lse, n);
        assert_int_equal(gc, cc);
        assert_int_equal(gk, ck);
        double e = fabs(gs - cs) / (fabs(cs) > 1e-30 ? fabs(cs) : 1e-30);
        ct_record("dense.xent_fwd sum", e);
        assert_true(e <= CT_TOL);
        ct_gpu->dense.xent_bwd(gdz, gz, glse, glab, 0.37f, n, V);
        ct_cpu->dense.xent_bwd(dz, z, lse, lab, 0.37f, n, V);
        check_dev("dense.xent_bwd dlogits", gdz, dz, n * V);
        ct_gpu->dense.xent_bwd(gz, gz, glse, glab, 0.37f, n, V); /* in place over the logits */
        check_dev("dense.xent_bwd in place", gz, dz, n * V);
        tb_cuda_free(gz), tb_cuda_free(gdz), tb_cuda_free(glse), tb_cuda_free(glab);
        free(z), free(dz), free(lse), free(lab);
    }
}

static void test_axpy_and_sum_squares_match_cpu(void **state) {
    (void)state;
    static const size_t sizes[] = {1, 255, 257, 100003};
    for (size_t s = 0; s < 4; s++) {
        size_t n = sizes[s];
        snprintf(shape, sizeof shape, "n=%zu", n);
        float *x = rnd(n, -1, 1), *z = rnd(n, -1, 1), *y = ct_hmalloc(n * 4);
        float *gx = ct_up(x, n * 4), *gz = ct_up(z, n * 4), *gy = ct_poisoned(n * 4);
        ct_gpu->dense.axpy(gy, gx, -0.7f, gz, n);
        ct_cpu->dense.axpy(y, x, -0.7f, z, n);
        check_dev("dense.axpy", gy, y, n);
        double a, b;
        ct_gpu->dense.sum_squares(&a, gz, n);
        ct_cpu->dense.sum_squares(&b, z, n);
        ct_record("dense.sum_squares", fabs(a - b) / b);
        assert_true(fabs(a - b) <= 1e-12 * b);
        tb_cuda_free(gx), tb_cuda_free(gz), tb_cuda_free(gy);
        free(x), free(z), free(y);
    }
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_fwd_bwd_match_cpu),
        cmocka_unit_test(test_bitlinear_quantisers_and_integer_product_bit_identical),
        cmocka_unit_test(test_bitlinear_quant_w_many_bit_identical),
        cmocka_unit_test(test_norms_fwd_bwd_match_cpu_all_five),
        cmocka_unit_test(test_xent_fwd_bwd_match_cpu_with_ignored_labels_and_ties),
        cmocka_unit_test(test_axpy_and_sum_squares_match_cpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ct_summary();
    return rc;
}
