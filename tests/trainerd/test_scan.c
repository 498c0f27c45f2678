/* The selective scan and the causal depthwise Conv1d of the Mamba block (MODEL.md 6):
 * forward against a direct evaluation of the recurrence / the convolution sum (tap k-1
 * multiplies the current token, k-1 zeros on the left), backward against central finite
 * differences in fp64 (gradcheck.h, bound 1e-6) for every input and parameter on odd
 * shapes (T = 1, T = 7, N = 3, k = 4 and k = 3, k = 1), and the += accumulation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "gradcheck.h"

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}

/* ---- selective scan ---- */
typedef struct sctx {
    const tb_backend *be;
    int B, T, Di, N, ld;
    size_t nx, nbc;
    double *xc, *delta, *A_log, *bc, *D, *y, *states, *w;
} sctx;

static double scan_loss(void *p) {
    sctx *c = p;
    c->be->seq.scan_forward(c->y, c->states, c->xc, c->delta, c->A_log, c->bc + 1, c->bc + 1 + c->N,
                            c->D, c->B, c->T, c->Di, c->N, c->ld, c->be);
    return gc_dot(c->y, c->w, c->nx);
}

static void scan_setup(sctx *c, int B, int T, int Di, int N) {
    c->be = tb_backend_cpu();
    c->B = B, c->T = T, c->Di = Di, c->N = N;
    c->ld = 1 + 2 * N + 2; /* Bm, Cm are column slices of a wider row, like x_proj's output */
    c->nx = (size_t)B * T * Di;
    c->nbc = (size_t)B * T * c->ld;
    c->xc = dalloc(c->nx), c->delta = dalloc(c->nx), c->y = dalloc(c->nx), c->w = dalloc(c->nx);
    c->A_log = dalloc((size_t)Di * N), c->D = dalloc(Di), c->bc = dalloc(c->nbc);
    c->states = dalloc(c->nx * N);
    gc_fill_uniform(c->xc, c->nx, 1.0, 21, 0);
    gc_fill_uniform(c->delta, c->nx, 0.5, 22, 0);
    for (size_t i = 0; i < c->nx; i++) c->delta[i] += 0.6; /* Δ > 0 as after softplus */
    gc_fill_uniform(c->A_log, (size_t)Di * N, 0.3, 23, 0);
    for (int i = 0; i < Di; i++)
        for (int n = 0; n < N; n++) c->A_log[i * N + n] += log(n + 1.0);
    gc_fill_uniform(c->bc, c->nbc, 1.0, 24, 0);
    gc_fill_uniform(c->D, Di, 1.0, 25, 0);
    gc_fill_uniform(c->w, c->nx, 1.0, 26, 0);
}

static void scan_teardown(sctx *c) {
    free(c->xc), free(c->delta), free(c->y), free(c->w), free(c->A_log), free(c->D);
    free(c->bc), free(c->states);
}

static void test_scan_forward_equals_direct_recurrence(void **state) {
    (void)state;
    sctx c;
    scan_setup(&c, 2, 7, 5, 3);
    scan_loss(&c);
    double maxerr = 0;
    for (int b = 0; b < c.B; b++)
        for (int i = 0; i < c.Di; i++) {
            double h[3] = {0, 0, 0};
            for (int t = 0; t < c.T; t++) {
                size_t row = (size_t)b * c.T + t, e = row * c.Di + i;
                const double *Bm = c.bc + row * c.ld + 1, *Cm = Bm + c.N;
                double y = c.D[i] * c.xc[e];
                for (int n = 0; n < c.N; n++) {
                    double A = -exp(c.A_log[i * c.N + n]);
                    h[n] = exp(c.delta[e] * A) * h[n] + c.delta[e] * Bm[n] * c.xc[e];
                    y += h[n] * Cm[n];
                }
                maxerr = fmax(maxerr, fabs(y - c.y[e]));
            }
        }
    printf("scan forward max abs err %.3e\n", maxerr);
    assert_true(maxerr < 1e-13);
    scan_teardown(&c);
}

static void scan_grad(int B, int T, int Di, int N) {
    sctx c;
    scan_setup(&c, B, T, Di, N);
    scan_loss(&c);
    double *dxc = dalloc(c.nx), *ddelta = dalloc(c.nx), *dA = dalloc((size_t)Di * N),
           *dbc = dalloc(c.nbc), *dD = dalloc(Di);
    c.be->seq.scan_backward(dxc, ddelta, dA, dbc + 1, dbc + 1 + N, dD, c.w, c.states, c.xc, c.delta,
                            c.A_log, c.bc + 1, c.bc + 1 + N, c.D, B, T, Di, N, c.ld, c.be);
    /* Columns of bc outside Bm/Cm get no gradient. */
    for (size_t r = 0; r < (size_t)B * T; r++) {
        assert_true(dbc[r * c.ld] == 0);
        assert_true(dbc[r * c.ld + c.ld - 1] == 0);
    }
    char nm[64];
    double worst = 0;
    snprintf(nm, sizeof nm, "scan.xc T%d Di%d N%d", T, Di, N);
    worst = fmax(worst, gc_check(scan_loss, &c, c.xc, dxc, c.nx, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "scan.delta T%d Di%d N%d", T, Di, N);
    worst = fmax(worst, gc_check(scan_loss, &c, c.delta, ddelta, c.nx, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "scan.A_log T%d Di%d N%d", T, Di, N);
    worst = fmax(worst, gc_check(scan_loss, &c, c.A_log, dA, (size_t)Di * N, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "scan.BmCm T%d Di%d N%d", T, Di, N);
    worst = fmax(worst, gc_check(scan_loss, &c, c.bc, dbc, c.nbc, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "scan.D T%d Di%d N%d", T, Di, N);
    worst = fmax(worst, gc_check(scan_loss, &c, c.D, dD, Di, 300, nm).max_rel);
    assert_true(worst <= 1e-6);
    /* accumulation */
    double *dA2 = dalloc((size_t)Di * N);
    for (int rep = 0; rep < 2; rep++) {
        c.be->seq.scan_backward(dxc, ddelta, dA2, dbc + 1, dbc + 1 + N, dD, c.w, c.states, c.xc,
                                c.delta, c.A_log, c.bc + 1, c.bc + 1 + N, c.D, B, T, Di, N, c.ld, c.be);
    }
    for (size_t i = 0; i < (size_t)Di * N; i++)
        assert_true(fabs(dA2[i] - 2 * dA[i]) <= 1e-12 * fmax(1, fabs(dA[i])));
    free(dA2);
    free(dxc), free(ddelta), free(dA), free(dbc), free(dD);
    scan_teardown(&c);
}

static void test_scan_backward_matches_finite_differences(void **state) {
    (void)state;
    scan_grad(1, 1, 3, 3);
    scan_grad(2, 7, 5, 3);
    scan_grad(1, 6, 4, 4);
}

/* ---- causal depthwise conv ---- */
typedef struct cctx {
    const tb_backend *be;
    int B, T, Di, k;
    size_t nx;
    double *x, *w, *bias, *y, *wl;
} cctx;

static double conv_loss(void *p) {
    cctx *c = p;
    c->be->seq.conv_causal_forward(c->y, c->x, c->w, c->bias, c->B, c->T, c->Di, c->k, c->be);
    return gc_dot(c->y, c->wl, c->nx);
}

static void conv_setup(cctx *c, int B, int T, int Di, int k) {
    c->be = tb_backend_cpu();
    c->B = B, c->T = T, c->Di = Di, c->k = k;
    c->nx = (size_t)B * T * Di;
    c->x = dalloc(c->nx), c->y = dalloc(c->nx), c->wl = dalloc(c->nx);
    c->w = dalloc((size_t)Di * k), c->bias = dalloc(Di);
    gc_fill_uniform(c->x, c->nx, 1.0, 31, k);
    gc_fill_uniform(c->wl, c->nx, 1.0, 32, k);
    gc_fill_uniform(c->w, (size_t)Di * k, 0.5, 33, k);
    gc_fill_uniform(c->bias, Di, 0.5, 34, k);
}

static void conv_teardown(cctx *c) {
    free(c->x), free(c->y), free(c->wl), free(c->w), free(c->bias);
}

static void test_conv_causal_taps_and_left_padding(void **state) {
    (void)state;
    /* One channel, k = 3, w = (1, 10, 100), bias 0.5, x = (1, 2, 3, 4):
     * y_0 = 100·1 + 0.5 (two zeros on the left), y_1 = 10·1 + 100·2 + 0.5,
     * y_2 = 1·1 + 10·2 + 100·3 + 0.5, y_3 = 2 + 30 + 400 + 0.5: tap 2 (= k-1) is current. */
    const tb_backend *be = tb_backend_cpu();
    double x[4] = {1, 2, 3, 4}, w[3] = {1, 10, 100}, bias = 0.5, y[4];
    be->seq.conv_causal_forward(y, x, w, &bias, 1, 4, 1, 3, be);
    assert_true(y[0] == 100.5);
    assert_true(y[1] == 210.5);
    assert_true(y[2] == 321.5);
    assert_true(y[3] == 432.5);
    /* General case against the direct sum. */
    cctx c;
    conv_setup(&c, 2, 7, 5, 4);
    conv_loss(&c);
    for (int b = 0; b < c.B; b++)
        for (int t = 0; t < c.T; t++)
            for (int i = 0; i < c.Di; i++) {
                double ref = c.bias[i];
                for (int j = 0; j < c.k; j++) {
                    int ts = t - (c.k - 1) + j;
                    if (ts >= 0) ref += c.w[i * c.k + j] * c.x[((size_t)b * c.T + ts) * c.Di + i];
                }
                assert_true(fabs(ref - c.y[((size_t)b * c.T + t) * c.Di + i]) < 1e-14);
            }
    conv_teardown(&c);
}

static void conv_grad(int B, int T, int Di, int k) {
    cctx c;
    conv_setup(&c, B, T, Di, k);
    conv_loss(&c);
    double *dx = dalloc(c.nx), *dw = dalloc((size_t)Di * k), *db = dalloc(Di);
    c.be->seq.conv_causal_backward(dx, dw, db, c.wl, c.x, c.w, B, T, Di, k, c.be);
    char nm[64];
    double worst = 0;
    snprintf(nm, sizeof nm, "conv.x T%d Di%d k%d", T, Di, k);
    worst = fmax(worst, gc_check(conv_loss, &c, c.x, dx, c.nx, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "conv.w T%d Di%d k%d", T, Di, k);
    worst = fmax(worst, gc_check(conv_loss, &c, c.w, dw, (size_t)Di * k, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "conv.bias T%d Di%d k%d", T, Di, k);
    worst = fmax(worst, gc_check(conv_loss, &c, c.bias, db, Di, 300, nm).max_rel);
    assert_true(worst <= 1e-6);
    double *dx2 = dalloc(c.nx), *dw2 = dalloc((size_t)Di * k), *db2 = dalloc(Di);
    for (int rep = 0; rep < 2; rep++)
        c.be->seq.conv_causal_backward(dx2, dw2, db2, c.wl, c.x, c.w, B, T, Di, k, c.be);
    for (size_t i = 0; i < c.nx; i++) assert_true(fabs(dx2[i] - 2 * dx[i]) <= 1e-12 * fmax(1, fabs(dx[i])));
    for (size_t i = 0; i < (size_t)Di * k; i++) assert_true(fabs(dw2[i] - 2 * dw[i]) <= 1e-12 * fmax(1, fabs(dw[i])));
    free(dx2), free(dw2), free(db2);
    free(dx), free(dw), free(db);
    conv_teardown(&c);
}

static void test_conv_causal_backward_matches_finite_differences(void **state) {
    (void)state;
    conv_grad(1, 1, 3, 4);
    conv_grad(2, 7, 5, 4);
    conv_grad(1, 5, 3, 3);
    conv_grad(2, 3, 2, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_forward_equals_direct_recurrence),
        cmocka_unit_test(test_scan_backward_matches_finite_differences),
        cmocka_unit_test(test_conv_causal_taps_and_left_padding),
        cmocka_unit_test(test_conv_causal_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
