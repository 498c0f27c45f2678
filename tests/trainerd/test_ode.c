/* The ODE mixer (MODEL.md section 6 'ode'): fp64 gradient checks of the discrete rk4 and
 * euler steps (S = 1, 2) for the input, qkv, out_proj and the norm's parameters, with the
 * λ_ode term (L = Σ G ⊙ (out - out0) + λ Σ_steps mean(k1²)) and a key padding mask. */
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
#include "layers/ode.h"

#ifndef QKV_SCALE
#define QKV_SCALE 3.0 /* with U_SCALE: FD truncation small next to 1e-6 on the tiniest elements */
#endif
#ifndef U_SCALE
#define U_SCALE 1.0
#endif

typedef struct ode_ctx {
    tb_ode p;
    real *u, *out, *out0, *act, *fscr, *G;
    uint8_t *mask;
    double lambda, lode;
    int B, T;
} ode_ctx;

static double ode_loss(void *v) {
    ode_ctx *c = v;
    double sq[8]; /* Σ k1² per step (host memory on the CPU backend) */
    assert_true(c->p.steps <= 8);
    ode_forward(tb_backend_cpu(), c->out, c->act, c->fscr, c->u, &c->p, c->mask, NULL, c->B, c->T, sq);
    c->lode = ode_lode(sq, &c->p, c->B, c->T);
    size_t m = (size_t)c->B * c->T * c->p.C;
    double s = 0;
    for (size_t i = 0; i < m; i++) s += c->G[i] * (c->out0 ? c->out[i] - c->out0[i] : c->out[i]);
    return s + c->lambda * c->lode;
}

static void mk_lin(tb_linear *l, int in, int out, uint32_t tag, double scale) {
    l->in = in, l->out = out, l->bitnet = 0;
    l->w = malloc(sizeof(real) * in * out);
    l->dw = calloc((size_t)in * out, sizeof(real));
    l->wq = NULL, l->sw = NULL;
    gc_fill_uniform(l->w, (size_t)in * out, scale / sqrt(in), 31, tag);
}

static double run_ode(int rk4, int S, int B, int T, int C, int H, int masked, uint32_t tag) {
    ode_ctx c;
    memset(&c, 0, sizeof(c));
    c.B = B, c.T = T, c.lambda = 0.7;
    c.p.C = C, c.p.H = H, c.p.steps = S, c.p.rk4 = rk4;
    c.p.norm.type = TB_NORM_DERF, c.p.norm.C = C;
    for (int i = 0; i < 4; i++) {
        size_t sz = norm_param_size(TB_NORM_DERF, i, C);
        c.p.norm.p[i] = malloc(sizeof(real) * sz);
        c.p.norm.dp[i] = calloc(sz, sizeof(real));
        norm_param_init(TB_NORM_DERF, i, c.p.norm.p[i], C);
        real *noise = malloc(sizeof(real) * sz);
        gc_fill_uniform(noise, sz, 0.2, 32, tag * 8 + (uint32_t)i);
        for (size_t j = 0; j < sz; j++) c.p.norm.p[i][j] += noise[j];
        free(noise);
    }
    mk_lin(&c.p.qkv, C, 3 * C, tag * 2, QKV_SCALE);
    mk_lin(&c.p.o, C, C, tag * 2 + 1, 1.0);
    size_t n = (size_t)B * T;
    c.u = malloc(sizeof(real) * n * C), c.out = malloc(sizeof(real) * n * C);
    c.G = malloc(sizeof(real) * n * C), c.out0 = NULL;
    c.act = malloc(sizeof(real) * ode_act_count(&c.p, B, T));
    c.fscr = malloc(sizeof(real) * ode_scratch_count(&c.p, B, T));
    gc_fill_uniform(c.u, n * C, U_SCALE, 33, tag);
    gc_fill_uniform(c.G, n * C, 1.0, 34, tag);
    if (masked) {
        c.mask = malloc(n);
        for (size_t i = 0; i < n; i++) c.mask[i] = (i % (size_t)T) != 1;
    }
    ode_loss(&c);
    c.out0 = malloc(sizeof(real) * n * C);
    memcpy(c.out0, c.out, sizeof(real) * n * C);
    real *du = calloc(n * C, sizeof(real));
    real *scr = malloc(sizeof(real) * ode_scratch_count(&c.p, B, T));
    ode_backward(tb_backend_cpu(), du, scr, c.G, c.act, c.u, &c.p, c.mask, NULL, (real)c.lambda, B, T);
    double worst = 0;
    worst = fmax(worst, gc_check(ode_loss, &c, c.u, du, n * C, 150, "ode.u").max_rel);
    worst = fmax(worst, gc_check(ode_loss, &c, c.p.qkv.w, c.p.qkv.dw, (size_t)3 * C * C, 150, "ode.qkv").max_rel);
    worst = fmax(worst, gc_check(ode_loss, &c, c.p.o.w, c.p.o.dw, (size_t)C * C, 150, "ode.out_proj").max_rel);
    for (int i = 0; i < 4; i++)
        worst = fmax(worst, gc_check(ode_loss, &c, c.p.norm.p[i], c.p.norm.dp[i],
                                     norm_param_size(TB_NORM_DERF, i, C), 150,
                                     norm_param_name(TB_NORM_DERF, i)).max_rel);
    printf("ode %s S=%d B=%d T=%d C=%d H=%d mask=%d: L_ode sum %.6f, max rel err %.3e\n",
           rk4 ? "rk4" : "euler", S, B, T, C, H, masked, c.lode, worst);
    assert_true(worst <= 1e-6);
    for (int i = 0; i < 4; i++) free(c.p.norm.p[i]), free(c.p.norm.dp[i]);
    free(c.p.qkv.w), free(c.p.qkv.dw), free(c.p.o.w), free(c.p.o.dw);
    free(du), free(scr), free(c.u), free(c.out), free(c.out0), free(c.G), free(c.act), free(c.fscr), free(c.mask);
    return worst;
}

static void test_ode_rk4_gradcheck_S1_S2_with_lambda_ode(void **s) {
    (void)s;
    run_ode(1, 1, 1, 5, 12, 2, 0, 1);
    run_ode(1, 2, 2, 7, 10, 2, 1, 2);
}

static void test_ode_euler_gradcheck_S1_S2_with_lambda_ode(void **s) {
    (void)s;
    run_ode(0, 1, 1, 5, 12, 3, 0, 3);
    run_ode(0, 2, 2, 7, 10, 2, 1, 4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ode_rk4_gradcheck_S1_S2_with_lambda_ode),
        cmocka_unit_test(test_ode_euler_gradcheck_S1_S2_with_lambda_ode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
