/* The Titan memory op (MODEL.md 6 'mamba', paper eq. 31-32): forward against the
 * recurrent definition M_t = a M_{t-1} + (1-a) kn_t v_tᵀ (updated before the read),
 * r_t = M_tᵀ qn_t, with qn, kn L2-normalised per head; a zero query reads zero (no NaN);
 * backward (q, k, v through the normalisation, and mem_decay) against central finite
 * differences in fp64 (gradcheck.h, bound 1e-6) on odd shapes incl. T = 1, H = 1; the
 * backward accumulates. */
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
    int B, T, H, hs;
    size_t n;
    double *q, *k, *v, *decay, *r, *qn, *kn, *w;
} ctx;

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}

static double loss(void *p) {
    ctx *c = p;
    c->be->seq.titan_forward(c->r, c->qn, c->kn, c->q, c->k, c->v, c->decay, c->B, c->T, c->H,
                             c->hs, c->be);
    return gc_dot(c->r, c->w, c->n);
}

static void setup(ctx *c, int B, int T, int H, int hs, uint32_t tag) {
    c->be = tb_backend_cpu();
    c->B = B, c->T = T, c->H = H, c->hs = hs;
    c->n = (size_t)B * T * H * hs;
    c->q = dalloc(c->n), c->k = dalloc(c->n), c->v = dalloc(c->n), c->r = dalloc(c->n);
    c->qn = dalloc(c->n), c->kn = dalloc(c->n), c->w = dalloc(c->n), c->decay = dalloc(H);
    gc_fill_uniform(c->q, c->n, 1.0, 41, tag);
    gc_fill_uniform(c->k, c->n, 1.0, 42, tag);
    gc_fill_uniform(c->v, c->n, 1.0, 43, tag);
    gc_fill_uniform(c->w, c->n, 1.0, 44, tag);
    gc_fill_uniform(c->decay, H, 1.5, 45, tag);
    for (int h = 0; h < H; h++) c->decay[h] += 1.0;
}

static void teardown(ctx *c) {
    free(c->q), free(c->k), free(c->v), free(c->r), free(c->qn), free(c->kn), free(c->w);
    free(c->decay);
}

static void test_titan_forward_equals_recurrent_memory(void **state) {
    (void)state;
    ctx c;
    setup(&c, 2, 7, 3, 5, 1);
    /* A zero query row (b 1, t 2, head 1) must read zero. */
    int C = c.H * c.hs;
    memset(c.q + ((size_t)1 * c.T + 2) * C + 1 * c.hs, 0, (size_t)c.hs * sizeof(double));
    loss(&c);
    double *M = dalloc((size_t)c.hs * c.hs), maxerr = 0;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.H; h++) {
            double a = 1 / (1 + exp(-c.decay[h]));
            memset(M, 0, (size_t)c.hs * c.hs * sizeof(double));
            for (int t = 0; t < c.T; t++) {
                size_t o = ((size_t)b * c.T + t) * C + (size_t)h * c.hs;
                double nq = 0, nk = 0;
                for (int d = 0; d < c.hs; d++) nq += c.q[o + d] * c.q[o + d], nk += c.k[o + d] * c.k[o + d];
                nq = fmax(sqrt(nq), 1e-12), nk = fmax(sqrt(nk), 1e-12);
                for (int i = 0; i < c.hs; i++)
                    for (int j = 0; j < c.hs; j++)
                        M[i * c.hs + j] = a * M[i * c.hs + j] + (1 - a) * (c.k[o + i] / nk) * c.v[o + j];
                for (int j = 0; j < c.hs; j++) {
                    double ref = 0;
                    for (int i = 0; i < c.hs; i++) ref += M[i * c.hs + j] * c.q[o + i] / nq;
                    assert_false(isnan(c.r[o + j]));
                    maxerr = fmax(maxerr, fabs(ref - c.r[o + j]));
                }
            }
        }
    for (int j = 0; j < c.hs; j++) assert_true(c.r[((size_t)1 * c.T + 2) * C + c.hs + j] == 0);
    printf("titan forward max abs err %.3e\n", maxerr);
    assert_true(maxerr < 1e-13);
    free(M);
    teardown(&c);
}

static void check_grad(int B, int T, int H, int hs) {
    ctx c;
    setup(&c, B, T, H, hs, 2);
    loss(&c);
    double *dq = dalloc(c.n), *dk = dalloc(c.n), *dv = dalloc(c.n), *dd = dalloc(H);
    c.be->seq.titan_backward(dq, dk, dv, dd, c.w, c.q, c.k, c.qn, c.kn, c.v, c.decay, B, T, H, hs, c.be);
    char nm[64];
    double worst = 0;
    snprintf(nm, sizeof nm, "titan.q B%d T%d H%d hs%d", B, T, H, hs);
    worst = fmax(worst, gc_check(loss, &c, c.q, dq, c.n, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "titan.k B%d T%d H%d hs%d", B, T, H, hs);
    worst = fmax(worst, gc_check(loss, &c, c.k, dk, c.n, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "titan.v B%d T%d H%d hs%d", B, T, H, hs);
    worst = fmax(worst, gc_check(loss, &c, c.v, dv, c.n, 300, nm).max_rel);
    snprintf(nm, sizeof nm, "titan.mem_decay B%d T%d H%d hs%d", B, T, H, hs);
    worst = fmax(worst, gc_check(loss, &c, c.decay, dd, H, 300, nm).max_rel);
    assert_true(worst <= 1e-6);
    double *dq2 = dalloc(c.n), *dk2 = dalloc(c.n), *dv2 = dalloc(c.n), *dd2 = dalloc(H);
    for (int rep = 0; rep < 2; rep++)
        c.be->seq.titan_backward(dq2, dk2, dv2, dd2, c.w, c.q, c.k, c.qn, c.kn, c.v, c.decay, B, T, H,
                                 hs, c.be);
    for (size_t i = 0; i < c.n; i++) {
        assert_true(fabs(dq2[i] - 2 * dq[i]) <= 1e-12 * fmax(1, fabs(dq[i])));
        assert_true(fabs(dk2[i] - 2 * dk[i]) <= 1e-12 * fmax(1, fabs(dk[i])));
        assert_true(fabs(dv2[i] - 2 * dv[i]) <= 1e-12 * fmax(1, fabs(dv[i])));
    }
    for (int h = 0; h < H; h++) assert_true(fabs(dd2[h] - 2 * dd[h]) <= 1e-12 * fmax(1, fabs(dd[h])));
    free(dq2), free(dk2), free(dv2), free(dd2);
    free(dq), free(dk), free(dv), free(dd);
    teardown(&c);
}

static void test_titan_backward_matches_finite_differences(void **state) {
    (void)state;
    check_grad(1, 1, 1, 3);
    check_grad(2, 7, 3, 5);
    check_grad(1, 6, 2, 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_titan_forward_equals_recurrent_memory),
        cmocka_unit_test(test_titan_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
