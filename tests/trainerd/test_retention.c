/* The retention core op (MODEL.md 6 'retnet'): forward against the recurrent form
 * S_n = γ S_{n-1} + k_nᵀ v_n, y_n = q_n S_n / sqrt(hs) (causal) and against the explicit
 * D matrix (bidirectional); backward against central finite differences in fp64
 * (gradcheck.h's relative error, bound 1e-6) on odd shapes incl. T = 1 and H_r = 1; the
 * backward accumulates (two calls = 2x). */
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

typedef struct ctx {
    const tb_backend *be;
    int B, T, H, hs, bidir;
    size_t n;
    double *q, *k, *v, *y, *w;
} ctx;

static double loss(void *p) {
    ctx *c = p;
    c->be->seq.retention_forward(c->y, c->q, c->k, c->v, c->B, c->T, c->H, c->hs, c->bidir, c->be);
    return gc_dot(c->y, c->w, c->n);
}

static double gamma_ref(int h, int H) {
    if (H == 1) return 1.0 - 1.0 / 32.0;
    return 1.0 - exp(log(1.0 / 32) + (log(1.0 / 512) - log(1.0 / 32)) * h / (H - 1));
}

static void setup(ctx *c, int B, int T, int H, int hs, int bidir, uint32_t tag) {
    c->be = tb_backend_cpu();
    c->B = B, c->T = T, c->H = H, c->hs = hs, c->bidir = bidir;
    c->n = (size_t)B * T * H * hs;
    c->q = malloc(c->n * sizeof(double));
    c->k = malloc(c->n * sizeof(double));
    c->v = malloc(c->n * sizeof(double));
    c->y = malloc(c->n * sizeof(double));
    c->w = malloc(c->n * sizeof(double));
    gc_fill_uniform(c->q, c->n, 1.0, 11, tag);
    gc_fill_uniform(c->k, c->n, 1.0, 12, tag);
    gc_fill_uniform(c->v, c->n, 1.0, 13, tag);
    gc_fill_uniform(c->w, c->n, 1.0, 14, tag);
}

static void teardown(ctx *c) {
    free(c->q), free(c->k), free(c->v), free(c->y), free(c->w);
}

/* Causal: recurrent form; bidirectional: explicit D with pow. */
static void check_forward(int B, int T, int H, int hs, int bidir) {
    ctx c;
    setup(&c, B, T, H, hs, bidir, 1);
    loss(&c);
    int C = H * hs;
    double maxerr = 0;
    double *S = calloc((size_t)hs * hs, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            double g = gamma_ref(h, H);
            memset(S, 0, (size_t)hs * hs * sizeof(double));
            for (int n = 0; n < T; n++) {
                const double *qn = c.q + ((size_t)b * T + n) * C + h * hs;
                const double *kn = c.k + ((size_t)b * T + n) * C + h * hs;
                const double *vn = c.v + ((size_t)b * T + n) * C + h * hs;
                for (int i = 0; i < hs; i++)
                    for (int j = 0; j < hs; j++) S[i * hs + j] = g * S[i * hs + j] + kn[i] * vn[j];
                for (int j = 0; j < hs; j++) {
                    double ref = 0;
                    if (!bidir) {
                        for (int i = 0; i < hs; i++) ref += qn[i] * S[i * hs + j];
                        ref /= sqrt((double)hs);
                    } else {
                        for (int m = 0; m < T; m++) {
                            const double *km = c.k + ((size_t)b * T + m) * C + h * hs;
                            const double *vm = c.v + ((size_t)b * T + m) * C + h * hs;
                            double s = 0;
                            for (int i = 0; i < hs; i++) s += qn[i] * km[i];
                            ref += s / sqrt((double)hs) * pow(g, abs(n - m)) * vm[j];
                        }
                    }
                    double got = c.y[((size_t)b * T + n) * C + h * hs + j];
                    double e = fabs(got - ref) / fmax(1.0, fabs(ref));
                    if (e > maxerr) maxerr = e;
                }
            }
        }
    printf("retention forward B=%d T=%d H=%d hs=%d bidir=%d: max err %.3e\n", B, T, H, hs, bidir, maxerr);
    assert_true(maxerr < 1e-12);
    free(S);
    teardown(&c);
}

static void test_retention_forward_equals_recurrent_and_explicit_form(void **state) {
    (void)state;
    check_forward(1, 1, 1, 3, 0);
    check_forward(2, 7, 3, 5, 0);
    check_forward(1, 9, 4, 2, 0);
    check_forward(1, 1, 1, 3, 1);
    check_forward(2, 7, 3, 5, 1);
}

static void check_grad(int B, int T, int H, int hs, int bidir) {
    ctx c;
    setup(&c, B, T, H, hs, bidir, 2);
    double *dq = calloc(c.n, sizeof(double)), *dk = calloc(c.n, sizeof(double)),
           *dv = calloc(c.n, sizeof(double));
    loss(&c);
    c.be->seq.retention_backward(dq, dk, dv, c.w, c.q, c.k, c.v, B, T, H, hs, bidir, c.be);
    char name[64];
    snprintf(name, sizeof name, "retention.q B%d T%d H%d hs%d bi%d", B, T, H, hs, bidir);
    assert_true(gc_check(loss, &c, c.q, dq, c.n, 400, name).max_rel <= 1e-6);
    snprintf(name, sizeof name, "retention.k B%d T%d H%d hs%d bi%d", B, T, H, hs, bidir);
    assert_true(gc_check(loss, &c, c.k, dk, c.n, 400, name).max_rel <= 1e-6);
    snprintf(name, sizeof name, "retention.v B%d T%d H%d hs%d bi%d", B, T, H, hs, bidir);
    assert_true(gc_check(loss, &c, c.v, dv, c.n, 400, name).max_rel <= 1e-6);
    /* Accumulation: a second call adds the same again (to rounding: the op adds term by
     * term into the output). */
    double *dq2 = calloc(c.n, sizeof(double)), *dk2 = calloc(c.n, sizeof(double)),
           *dv2 = calloc(c.n, sizeof(double));
    c.be->seq.retention_backward(dq2, dk2, dv2, c.w, c.q, c.k, c.v, B, T, H, hs, bidir, c.be);
    c.be->seq.retention_backward(dq2, dk2, dv2, c.w, c.q, c.k, c.v, B, T, H, hs, bidir, c.be);
    for (size_t i = 0; i < c.n; i++) {
        assert_true(fabs(dq2[i] - 2 * dq[i]) <= 1e-12 * fmax(1, fabs(dq[i])));
        assert_true(fabs(dk2[i] - 2 * dk[i]) <= 1e-12 * fmax(1, fabs(dk[i])));
        assert_true(fabs(dv2[i] - 2 * dv[i]) <= 1e-12 * fmax(1, fabs(dv[i])));
    }
    free(dq), free(dk), free(dv), free(dq2), free(dk2), free(dv2);
    teardown(&c);
}

static void test_retention_backward_matches_finite_differences(void **state) {
    (void)state;
    check_grad(1, 1, 1, 3, 0);
    check_grad(2, 7, 3, 5, 0);
    check_grad(1, 6, 1, 4, 0);
    check_grad(1, 1, 1, 3, 1);
    check_grad(2, 7, 3, 5, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retention_forward_equals_recurrent_and_explicit_form),
        cmocka_unit_test(test_retention_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
