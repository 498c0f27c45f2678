/* The Mamba mixer layer (MODEL.md 6 'mamba': in_proj, causal conv, silu, x_proj,
 * softplus(dt_proj), selective scan, ⊙ silu(z), out_proj, plus the Titan memory read)
 * against central finite differences in fp64 (gradcheck.h, bound 1e-6), use_bitnet
 * false: the input u and every parameter (in_proj, conv1d weight and bias, x_proj,
 * dt_proj weight and bias, A_log, D, out_proj, mem_{q,k,v}_proj, mem_decay), with and
 * without titan_memory, on odd shapes (T = 1, T = 7, N = 3, k = 4 and 3, hs = 3);
 * the element-wise helper ops (silu, exact gelu, softplus incl. its x > 20 branch,
 * a ⊙ silu(g) on strided slices) likewise; a BitLinear forward/backward runs clean with
 * the act/scratch sizes the layer reports (under the sanitizers). */
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
#include "layers/mamba.h"

#include "param_pool.h"

typedef struct ctx {
    tb_mamba p;
    int B, T;
    size_t n;
    double *u, *out, *w, *act;
} ctx;

static double loss(void *vc) {
    ctx *c = vc;
    mamba_forward(tb_backend_cpu(), c->out, c->act, c->u, &c->p, c->B, c->T);
    return gc_dot(c->out, c->w, c->n);
}

static void build(ctx *c, pool *P, int B, int T, int C, int N, int k, int H, int titan, int bitnet) {
    memset(c, 0, sizeof *c);
    memset(P, 0, sizeof *P);
    P->tag = (uint32_t)(C * 100 + T * 10 + titan);
    tb_mamba *m = &c->p;
    c->B = B, c->T = T;
    m->C = C, m->Di = 2 * C, m->N = N, m->R = (C + 15) / 16, m->k = k, m->H = H, m->titan = titan;
    int Di = m->Di;
    pool_linear(P, &m->in_proj, "mixer.in_proj.weight", C, 2 * Di, bitnet);
    pool_linear(P, &m->x_proj, "mixer.x_proj.weight", Di, m->R + 2 * N, bitnet);
    pool_linear(P, &m->dt_proj, "mixer.dt_proj.weight", m->R, Di, 0);
    pool_linear(P, &m->out_proj, "mixer.out_proj.weight", Di, C, bitnet);
    m->conv_w = pool_add(P, "mixer.conv1d.weight", (size_t)Di * k, 0, 1.0 / sqrt(k), &m->dconv_w);
    m->conv_b = pool_add(P, "mixer.conv1d.bias", Di, 0, 1.0 / sqrt(k), &m->dconv_b);
    /* dt_proj.bias = softplus⁻¹(dt) around dt = 0.5 (larger than the init range, so the
     * scan path carries gradients well above finite-difference noise); A_log = ln(n+1)
     * perturbed; D ≈ 1 */
    m->dt_b = pool_add(P, "mixer.dt_proj.bias", Di, log(expm1(0.5)), 0.5, &m->ddt_b);
    m->A_log = pool_add(P, "mixer.A_log", (size_t)Di * N, 0, 0.2, &m->dA_log);
    for (int i = 0; i < Di; i++)
        for (int n = 0; n < N; n++) m->A_log[i * N + n] += log(n + 1.0);
    m->D = pool_add(P, "mixer.D", Di, 1.0, 0.3, &m->dD);
    if (titan) {
        pool_linear(P, &m->mem_q, "mixer.mem_q_proj.weight", C, C, bitnet);
        pool_linear(P, &m->mem_k, "mixer.mem_k_proj.weight", C, C, bitnet);
        pool_linear(P, &m->mem_v, "mixer.mem_v_proj.weight", C, C, bitnet);
        m->mem_decay = pool_add(P, "mixer.mem_decay", H, 2.2, 0.5, &m->dmem_decay);
    }
    c->n = (size_t)B * T * C;
    c->u = calloc(c->n, sizeof(double));
    c->out = calloc(c->n, sizeof(double));
    c->w = calloc(c->n, sizeof(double));
    c->act = calloc(mamba_act_count(m, B, T), sizeof(double));
    gc_fill_uniform(c->u, c->n, 1.0, 74, P->tag);
    /* The loss weights are small: finite-difference roundoff grows with |L|, and the scan
     * parameters' gradients are ~1e-3 of the largest ones (gradcheck.h's floor is absolute
     * below a largest gradient of 1). */
    gc_fill_uniform(c->w, c->n, 0.01, 75, P->tag);
}

static void destroy(ctx *c, pool *P) {
    tb_linear *l[7] = {&c->p.in_proj, &c->p.x_proj, &c->p.dt_proj, &c->p.out_proj,
                       &c->p.mem_q, &c->p.mem_k, &c->p.mem_v};
    for (int i = 0; i < 7; i++) free(l[i]->wq), free(l[i]->sw);
    free(c->u), free(c->out), free(c->w), free(c->act);
    pool_free(P);
}

static void check(int B, int T, int C, int N, int k, int H, int titan) {
    ctx c;
    pool P;
    build(&c, &P, B, T, C, N, k, H, titan, 0);
    const tb_backend *be = tb_backend_cpu();
    double *du = calloc(c.n, sizeof(double));
    double *scratch = calloc(mamba_scratch_count(&c.p, B, T), sizeof(double));
    loss(&c);
    mamba_backward(be, du, scratch, c.w, c.act, c.u, &c.p, B, T);
    char nm[96];
    double worst = 0;
    snprintf(nm, sizeof nm, "mamba u B%d T%d C%d N%d k%d H%d titan%d", B, T, C, N, k, H, titan);
    worst = fmax(worst, gc_check(loss, &c, c.u, du, c.n, 1000, nm).max_rel);
    for (int i = 0; i < P.n; i++) {
        snprintf(nm, sizeof nm, "mamba %s B%d T%d C%d titan%d", P.t[i].name, B, T, C, titan);
        worst = fmax(worst, gc_check(loss, &c, P.t[i].w, P.t[i].g, P.t[i].n, 1000, nm).max_rel);
    }
    assert_true(worst <= 1e-6);
    free(du), free(scratch);
    destroy(&c, &P);
}

static void test_mamba_layer_backward_matches_finite_differences(void **state) {
    (void)state;
    check(1, 5, 6, 3, 4, 2, 1);  /* hs = 3, k = 4 even, N = 3 */
    check(2, 7, 10, 2, 3, 2, 1); /* T = 7, k = 3, hs = 5 (hs = 2 heads can have a tiny
                                  * ‖qm‖, where x/‖x‖ is too curved for h = 1e-5) */
    check(1, 1, 20, 3, 4, 4, 0); /* T = 1, R = 2, no Titan memory */
    check(2, 3, 6, 4, 2, 3, 0);
}

static void test_mamba_layer_bitnet_runs_within_reported_sizes(void **state) {
    (void)state;
    ctx c;
    pool P;
    build(&c, &P, 2, 6, 16, 4, 4, 4, 1, 1);
    const tb_backend *be = tb_backend_cpu();
    double *du = calloc(c.n, sizeof(double));
    double *scratch = calloc(mamba_scratch_count(&c.p, 2, 6), sizeof(double));
    double L = loss(&c);
    mamba_backward(be, du, scratch, c.w, c.act, c.u, &c.p, 2, 6);
    assert_true(isfinite(L));
    double s = 0;
    for (size_t i = 0; i < c.n; i++) s += fabs(du[i]);
    assert_true(isfinite(s) && s > 0);
    free(du), free(scratch);
    destroy(&c, &P);
}

/* ---- element-wise helper ops ---- */
typedef struct ectx {
    int which; /* 0 silu, 1 gelu, 2 softplus+bias, 3 mul_silu strided */
    double x[24], bias[4], g[24], y[24], w[24];
} ectx;

static double elem_loss(void *vc) {
    ectx *c = vc;
    const tb_backend *be = tb_backend_cpu();
    if (c->which <= 1) be->seq.act_forward(c->y, c->x, 24, c->which, be);
    if (c->which == 2) be->seq.softplus_bias_forward(c->y, c->x, c->bias, 6, 4, be);
    if (c->which == 3) { /* a = x cols 0..2 of 4, g = g cols 1..3 of 4: (6, 3) */
        be->seq.mul_silu_forward(c->y, c->x, c->g + 1, 6, 3, 4, 4, be);
        return gc_dot(c->y, c->w, 18);
    }
    return gc_dot(c->y, c->w, 24);
}

static void test_elementwise_ops_backward_matches_finite_differences(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    for (int which = 0; which < 4; which++) {
        ectx c = {.which = which};
        gc_fill_uniform(c.x, 24, 4.0, 76, which);
        gc_fill_uniform(c.g, 24, 4.0, 77, which);
        gc_fill_uniform(c.w, 24, 1.0, 78, which);
        gc_fill_uniform(c.bias, 4, 1.0, 79, which);
        if (which == 2) c.x[5] = 25, c.x[6] = -30; /* the x > 20 branch and deep negative */
        double dx[24] = {0}, dg[24] = {0}, db[4] = {0};
        elem_loss(&c);
        if (which <= 1) be->seq.act_backward(dx, c.w, c.x, 24, which, be);
        if (which == 2) be->seq.softplus_bias_backward(dx, db, c.w, c.x, c.bias, 6, 4, be);
        if (which == 3) be->seq.mul_silu_backward(dx, dg + 1, c.w, c.x, c.g + 1, 6, 3, 4, 4, be);
        const char *nm[4] = {"silu.x", "gelu.x", "softplus.x", "mul_silu.a"};
        assert_true(gc_check(elem_loss, &c, c.x, dx, 24, 24, nm[which]).max_rel <= 1e-6);
        if (which == 2) {
            assert_true(c.y[5] == 25 + c.bias[1]);
            assert_true(gc_check(elem_loss, &c, c.bias, db, 4, 4, "softplus.bias").max_rel <= 1e-6);
        }
        if (which == 3) assert_true(gc_check(elem_loss, &c, c.g, dg, 24, 24, "mul_silu.g").max_rel <= 1e-6);
    }
    /* gelu is the exact erf form: gelu(1) = 0.5 (1 + erf(1/√2)) */
    double x1 = 1, y1;
    be->seq.act_forward(&y1, &x1, 1, TB_ACT_GELU, be);
    assert_true(fabs(y1 - 0.5 * (1 + erf(1 / sqrt(2.0)))) < 1e-15);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mamba_layer_backward_matches_finite_differences),
        cmocka_unit_test(test_mamba_layer_bitnet_runs_within_reported_sizes),
        cmocka_unit_test(test_elementwise_ops_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
