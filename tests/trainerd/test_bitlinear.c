/* BitLinear (MODEL.md section 2) and the plain linear, fp64 build.
 * STE note: the straight-through backward is not the gradient of the quantised forward
 * (that is zero almost everywhere), so finite differences check it with the activation
 * quantiser bypassed: F(x) = LN0(x) · w̃ᵀ with fixed codes, whose exact gradient is
 * LN0ᵀ(dy · w̃), what bitlinear_bwd computes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "gradcheck.h"
#include "layers/linear.h"
#include "tb_rng.h"

static const double TOL = 1e-6;

/* Independent round half to even. */
static double half_even(double v) {
    double f = floor(v), r = v - f;
    if (r > 0.5) return f + 1;
    if (r < 0.5) return f;
    return fmod(f, 2.0) == 0 ? f : f + 1;
}

static void test_integer_product_equals_int64_reference(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    int shapes[][3] = {{3, 7, 5}, {4, 4099, 3}, {1, 1, 1}};
    for (int s = 0; s < 3; s++) {
        int n = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        int8_t *xq = malloc((size_t)n * in), *wq = malloc((size_t)out * in);
        real *stats = malloc(sizeof(real) * 3 * n), *y = malloc(sizeof(real) * n * out);
        tb_rng r;
        tb_rng_init(&r, 7, TB_RNG_TEST, (uint32_t)s, 0, 0);
        for (int i = 0; i < n * in; i++) xq[i] = (int8_t)((int)tb_rng_below(&r, 256) - 128);
        for (int i = 0; i < out * in; i++) wq[i] = (int8_t)((int)tb_rng_below(&r, 3) - 1);
        if (s == 1) { /* extreme: every product -128 · -1 */
            for (int i = 0; i < in; i++) xq[i] = -128, wq[i] = -1;
        }
        for (int t = 0; t < n; t++) stats[3 * t] = 0, stats[3 * t + 1] = 1, stats[3 * t + 2] = 1;
        real sw = 1;
        be->dense.bitlinear_fwd(y, xq, stats, wq, &sw, n, in, out);
        for (int t = 0; t < n; t++)
            for (int o = 0; o < out; o++) {
                int64_t ref = 0;
                for (int j = 0; j < in; j++) ref += (int64_t)xq[t * in + j] * wq[o * in + j];
                assert_true(y[t * out + o] == (real)ref);
            }
        free(xq), free(wq), free(stats), free(y);
    }
}

static void test_quantiser_all_zero_rows_use_floor(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    int in = 6;
    real x[12] = {0, 0, 0, 0, 0, 0, 1, -2, 3, 0.5, 0, 7};
    int8_t xq[12];
    real stats[6];
    be->dense.bitlinear_quant_x(xq, stats, x, 2, in);
    assert_true(stats[2] == R(127.0) / R(1e-5));
    for (int j = 0; j < in; j++) assert_int_equal(xq[j], 0);
    real w[6] = {0, 0, 0, 0, 0, 0}, sw;
    int8_t wq[6];
    be->dense.bitlinear_quant_w(wq, &sw, w, 6);
    assert_true(sw == R(1.0) / R(1e-5));
    for (int j = 0; j < 6; j++) assert_int_equal(wq[j], 0);
    /* forward of an all-zero row gives 0 */
    real y[2];
    be->dense.bitlinear_fwd(y, xq, stats, wq, &sw, 1, in, 1);
    assert_true(y[0] == 0);
}

static void test_quantiser_ties_round_half_to_even(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    /* weights: mean |w| = 1 exactly, so s_w = 1 and w · s_w hits the ties ±0.5, ±1.5 */
    real w[8] = {0.5, -0.5, 1.5, -1.5, 0.5, 1.5, 1, 1};
    int8_t wq[8];
    real sw;
    be->dense.bitlinear_quant_w(wq, &sw, w, 8);
    assert_true(sw == 1);
    int8_t expect_w[8] = {0, 0, 1, -1, 0, 1, 1, 1}; /* rint(±0.5) = 0, rint(±1.5) = ±2 -> ±1 */
    for (int i = 0; i < 8; i++) assert_int_equal(wq[i], expect_w[i]);
    /* activations: x = 2^20 · base with mean 0 and mean(x²) = 2^52 · 4^6 exactly, so the
     * 1e-5 of LN0 vanishes in the sum, rstd = 2^-26 exactly, x̂ = base / 64, s_x = 64 and
     * x̂ · s_x = base exactly: ties at ±0.5, ±1.5, ±2.5, ±7.5. */
    const double base[16] = {127, -127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5,
                             127, -127, 21,  -21,  7.5, -7.5, 2,   -2};
    const int expect[16] = {127, -127, 2, -2, 0, 0, 2, -2, 127, -127, 21, -21, 8, -8, 2, -2};
    real x[16], stats[3];
    int8_t xq[16];
    for (int j = 0; j < 16; j++) x[j] = (real)ldexp(base[j], 20);
    be->dense.bitlinear_quant_x(xq, stats, x, 1, 16);
    assert_true(stats[0] == 0);
    assert_true(stats[1] == (real)ldexp(1.0, -26));
    assert_true(stats[2] == 64);
    for (int j = 0; j < 16; j++) {
        assert_true(((x[j] - stats[0]) * stats[1]) * stats[2] == (real)base[j]);
        assert_true(half_even(base[j]) == expect[j]);
        assert_int_equal(xq[j], expect[j]);
    }
}

typedef struct lin_ctx {
    tb_linear p;
    real *x, *y, *act, *G;
    size_t n;
    int bypass; /* F(x) = LN0(x) · w̃ᵀ (quantiser bypassed) */
} lin_ctx;

static void ln0_ref(real *xh, const real *x, int in) {
    double s = 0, v = 0;
    for (int j = 0; j < in; j++) s += x[j];
    double m = s / in;
    for (int j = 0; j < in; j++) v += (x[j] - m) * (x[j] - m);
    double r = 1.0 / sqrt(v / in + 1e-5);
    for (int j = 0; j < in; j++) xh[j] = (x[j] - m) * r;
}

static double lin_loss(void *vctx) {
    lin_ctx *c = vctx;
    const tb_backend *be = tb_backend_cpu();
    int in = c->p.in, out = c->p.out;
    if (!c->bypass) {
        linear_forward(be, c->y, c->act, c->x, &c->p, c->n);
    } else {
        real *xh = malloc(sizeof(real) * in);
        for (size_t t = 0; t < c->n; t++) {
            ln0_ref(xh, c->x + t * in, in);
            for (int o = 0; o < out; o++) {
                double s = 0;
                for (int j = 0; j < in; j++) s += xh[j] * ((real)c->p.wq[o * in + j] / *c->p.sw);
                c->y[t * out + o] = s;
            }
        }
        free(xh);
    }
    return gc_dot(c->y, c->G, c->n * out);
}

static void lin_setup(lin_ctx *c, size_t n, int in, int out, int bitnet, uint32_t tag) {
    memset(c, 0, sizeof(*c));
    c->n = n;
    c->p.in = in, c->p.out = out, c->p.bitnet = bitnet;
    c->p.w = malloc(sizeof(real) * in * out);
    c->p.dw = calloc((size_t)in * out, sizeof(real));
    c->p.wq = malloc((size_t)in * out);
    c->p.sw = malloc(sizeof(real));
    c->x = malloc(sizeof(real) * n * in);
    c->y = malloc(sizeof(real) * n * out);
    c->G = malloc(sizeof(real) * n * out);
    c->act = malloc(sizeof(real) * (linear_act_count(&c->p, n) + 1));
    gc_fill_uniform(c->p.w, (size_t)in * out, 1.0 / sqrt(in), 11, tag);
    gc_fill_uniform(c->x, n * in, 1.0, 12, tag);
    gc_fill_uniform(c->G, n * out, 1.0, 13, tag);
    linear_refresh(tb_backend_cpu(), &c->p);
}

static void lin_free(lin_ctx *c) {
    free(c->p.w), free(c->p.dw), free(c->p.wq), free(c->p.sw);
    free(c->x), free(c->y), free(c->G), free(c->act);
}

static void test_plain_linear_gradcheck_inputs_and_weight(void **state) {
    (void)state;
    int shapes[][3] = {{5, 12, 7}, {14, 9, 20}};
    for (int s = 0; s < 2; s++) {
        lin_ctx c;
        lin_setup(&c, shapes[s][0], shapes[s][1], shapes[s][2], 0, (uint32_t)s);
        lin_loss(&c);
        real *dx = calloc(c.n * c.p.in, sizeof(real));
        linear_backward(tb_backend_cpu(), dx, NULL, c.G, c.act, c.x, &c.p, c.n);
        assert_true(gc_check(lin_loss, &c, c.x, dx, c.n * c.p.in, 400, "linear.x").max_rel <= TOL);
        assert_true(gc_check(lin_loss, &c, c.p.w, c.p.dw, (size_t)c.p.in * c.p.out, 400,
                             "linear.w").max_rel <= TOL);
        free(dx);
        lin_free(&c);
    }
}

static void test_bitlinear_ln0_transpose_gradcheck_quantiser_bypassed(void **state) {
    (void)state;
    int shapes[][3] = {{5, 12, 7}, {3, 17, 10}};
    for (int s = 0; s < 2; s++) {
        lin_ctx c;
        lin_setup(&c, shapes[s][0], shapes[s][1], shapes[s][2], 1, 10 + (uint32_t)s);
        const tb_backend *be = tb_backend_cpu();
        linear_forward(be, c.y, c.act, c.x, &c.p, c.n); /* stats for backward */
        c.bypass = 1;
        real *dx = calloc(c.n * c.p.in, sizeof(real));
        real *scr = malloc(sizeof(real) * linear_scratch_count(&c.p, c.n));
        linear_backward(be, dx, scr, c.G, c.act, c.x, &c.p, c.n);
        assert_true(gc_check(lin_loss, &c, c.x, dx, c.n * c.p.in, 400, "bitlinear.ln0T.x").max_rel <=
                    TOL);
        free(dx), free(scr);
        lin_free(&c);
    }
}

static void test_bitlinear_forward_and_ste_backward_equal_definition_exactly(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    int shapes[][3] = {{5, 12, 7}, {19, 33, 21}};
    for (int s = 0; s < 2; s++) {
        lin_ctx c;
        lin_setup(&c, shapes[s][0], shapes[s][1], shapes[s][2], 1, 20 + (uint32_t)s);
        size_t n = c.n;
        int in = c.p.in, out = c.p.out;
        linear_forward(be, c.y, c.act, c.x, &c.p, n);
        const real *stats = c.act;
        const int8_t *xq = (const int8_t *)(c.act + linear_xq_offset(n));
        /* codes: independent half-to-even of x̂ s_x and W s_w */
        for (size_t t = 0; t < n; t++)
            for (int j = 0; j < in; j++) {
                real pv = ((c.x[t * in + j] - stats[3 * t]) * stats[3 * t + 1]) * stats[3 * t + 2];
                double e = half_even(pv);
                e = e > 127 ? 127 : e < -128 ? -128 : e;
                assert_int_equal(xq[t * in + j], (int)e);
            }
        double mabs = 0;
        for (int i = 0; i < in * out; i++) mabs += fabs(c.p.w[i]);
        mabs /= in * out;
        assert_true(*c.p.sw == 1.0 / mabs);
        for (int i = 0; i < in * out; i++) {
            double e = half_even(c.p.w[i] * *c.p.sw);
            e = e > 1 ? 1 : e < -1 ? -1 : e;
            assert_int_equal(c.p.wq[i], (int)e);
        }
        /* forward: exact integer product over the scales */
        for (size_t t = 0; t < n; t++)
            for (int o = 0; o < out; o++) {
                int64_t acc = 0;
                for (int j = 0; j < in; j++) acc += (int64_t)xq[t * in + j] * c.p.wq[o * in + j];
                assert_true(c.y[t * out + o] == (real)acc / (stats[3 * t + 2] * *c.p.sw));
            }
        /* backward twice: dW = dW0 + Σ_t dy x̃ (sequential fused multiply-adds, ascending t:
         * the CPU GEMM's contract) */
        real *dx = calloc(n * in, sizeof(real)), *scr = malloc(sizeof(real) * n * in);
        real *dw0 = malloc(sizeof(real) * in * out);
        gc_fill_uniform(c.p.dw, (size_t)in * out, 1.0, 30, (uint32_t)s);
        memcpy(dw0, c.p.dw, sizeof(real) * in * out);
        linear_backward(be, dx, scr, c.G, c.act, c.x, &c.p, n);
        for (int o = 0; o < out; o++)
            for (int j = 0; j < in; j++) {
                real ref = dw0[o * in + j];
                for (size_t t = 0; t < n; t++)
                    ref = r_fma(c.G[t * out + o], (real)xq[t * in + j] / stats[3 * t + 2], ref);
                assert_true(c.p.dw[o * in + j] == ref);
            }
        /* dx̂ = dy · w̃ (scratch holds it), dx = LN0ᵀ(dx̂) */
        for (size_t t = 0; t < n; t++) {
            for (int j = 0; j < in; j++) {
                real ref = 0;
                for (int o = 0; o < out; o++)
                    ref = r_fma(c.G[t * out + o], (real)c.p.wq[o * in + j] / *c.p.sw, ref);
                assert_true(scr[t * in + j] == ref);
            }
            double sg = 0, sgx = 0;
            real m = stats[3 * t], r = stats[3 * t + 1];
            for (int j = 0; j < in; j++) {
                sg += scr[t * in + j];
                sgx += scr[t * in + j] * ((c.x[t * in + j] - m) * r);
            }
            for (int j = 0; j < in; j++) {
                real xh = (c.x[t * in + j] - m) * r;
                real ref = r * (scr[t * in + j] - (real)(sg / in) - xh * (real)(sgx / in));
                assert_true(dx[t * in + j] == ref);
            }
        }
        free(dx), free(scr), free(dw0);
        lin_free(&c);
    }
}

static void test_linear_backward_accumulates(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    for (int bitnet = 0; bitnet <= 1; bitnet++) {
        lin_ctx c;
        lin_setup(&c, 7, 10, 6, bitnet, 40 + (uint32_t)bitnet);
        size_t nin = c.n * c.p.in, nw = (size_t)c.p.in * c.p.out;
        linear_forward(be, c.y, c.act, c.x, &c.p, c.n);
        real *dx = calloc(nin, sizeof(real)), *scr = malloc(sizeof(real) * (nin + 1));
        linear_backward(be, dx, scr, c.G, c.act, c.x, &c.p, c.n);
        real *dx1 = malloc(sizeof(real) * nin), *dw1 = malloc(sizeof(real) * nw);
        memcpy(dx1, dx, sizeof(real) * nin);
        memcpy(dw1, c.p.dw, sizeof(real) * nw);
        linear_backward(be, dx, scr, c.G, c.act, c.x, &c.p, c.n);
        for (size_t i = 0; i < nin; i++) assert_true(fabs(dx[i] - 2 * dx1[i]) <= 1e-12 * fabs(dx1[i]) + 1e-300);
        for (size_t i = 0; i < nw; i++) assert_true(fabs(c.p.dw[i] - 2 * dw1[i]) <= 1e-12 * fabs(dw1[i]) + 1e-300);
        free(dx), free(scr), free(dx1), free(dw1);
        lin_free(&c);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integer_product_equals_int64_reference),
        cmocka_unit_test(test_quantiser_all_zero_rows_use_floor),
        cmocka_unit_test(test_quantiser_ties_round_half_to_even),
        cmocka_unit_test(test_plain_linear_gradcheck_inputs_and_weight),
        cmocka_unit_test(test_bitlinear_ln0_transpose_gradcheck_quantiser_bypassed),
        cmocka_unit_test(test_bitlinear_forward_and_ste_backward_equal_definition_exactly),
        cmocka_unit_test(test_linear_backward_accumulates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
