/* The feed-forward layers (MODEL.md 7): the MoE layer's forward against a direct
 * per-token evaluation (router softmax, top-K, gates, capacity in token order, experts
 * summed in order), and its backward (input, router, every expert's two weights, with
 * bal_scale · L_bal in the loss) against central finite differences in fp64
 * (gradcheck.h, bound 1e-6), use_bitnet false, K = 1 and 2, E = 3, renormalised or not,
 * with capacity drops and without, silu and exact gelu, on the host path and the
 * fixed-capacity layout (fixed_rows); the two paths give the same bits (plain and
 * BitLinear experts); the dense FFN likewise; a BitLinear MoE forward/backward runs clean
 * with the act/scratch sizes the layer reports. */
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
#include "layers/moe.h"

#include "param_pool.h"

typedef struct ctx {
    tb_moe p;
    tb_linear up[4], down[4];
    size_t ntok, n;
    double bal_scale, lbal;
    double *v, *out, *w, *act, *fscr;
} ctx;

static int g_fixed; /* build(): tb_moe.fixed_rows */

static double loss(void *vc) {
    ctx *c = vc;
    moe_forward(tb_backend_cpu(), c->out, &c->lbal, c->act, c->fscr, c->v, &c->p, c->ntok);
    return gc_dot(c->out, c->w, c->n) + c->bal_scale * c->lbal;
}

static void build(ctx *c, pool *P, size_t ntok, int C, int F, int E, int K, int renorm, double cf,
                  int act, int bitnet) {
    memset(c, 0, sizeof *c);
    memset(P, 0, sizeof *P);
    P->tag = (uint32_t)(ntok * 1000 + (size_t)C * 10 + (size_t)K);
    c->ntok = ntok, c->n = ntok * (size_t)C, c->bal_scale = 0.3;
    tb_moe *m = &c->p;
    m->C = C, m->F = F, m->E = E, m->K = K, m->act = act, m->renormalize = renorm;
    m->capacity_factor = cf;
    m->fixed_rows = g_fixed;
    m->up = c->up, m->down = c->down;
    pool_linear(P, &m->router, "router.weight", C, E, 0);
    for (int i = 0; i < (int)(E * C); i++) m->router.w[i] *= 3; /* spread the router's probabilities */
    for (int e = 0; e < E; e++) {
        char nm[48];
        snprintf(nm, sizeof nm, "experts.%d.0.weight", e);
        pool_linear(P, &c->up[e], nm, C, F, bitnet);
        snprintf(nm, sizeof nm, "experts.%d.2.weight", e);
        pool_linear(P, &c->down[e], nm, F, C, bitnet);
    }
    c->v = calloc(c->n, sizeof(double));
    c->out = calloc(c->n, sizeof(double));
    c->w = calloc(c->n, sizeof(double));
    c->act = calloc(moe_act_count(m, ntok), sizeof(double));
    c->fscr = calloc(moe_scratch_count(m, ntok), sizeof(double));
    gc_fill_uniform(c->v, c->n, 1.0, 81, P->tag);
    gc_fill_uniform(c->w, c->n, 1.0, 82, P->tag);
}

static void destroy(ctx *c, pool *P) {
    for (int e = 0; e < c->p.E; e++) {
        free(c->up[e].wq), free(c->up[e].sw), free(c->down[e].wq), free(c->down[e].sw);
    }
    free(c->v), free(c->out), free(c->w), free(c->act), free(c->fscr);
    pool_free(P);
}

static double act_ref(double x, int kind) {
    return kind == TB_ACT_GELU ? 0.5 * x * (1 + erf(x / sqrt(2.0))) : x / (1 + exp(-x));
}

/* Direct evaluation of MODEL.md 7, token by token. */
static void test_moe_layer_forward_equals_direct_evaluation(void **state) {
    (void)state;
    for (int variant = 0; variant < 6; variant++) {
        g_fixed = variant >= 3;
        ctx c;
        pool P;
        int v = variant % 3, K = v == 2 ? 1 : 2, renorm = v != 1;
        double cf = v == 0 ? 0.6 : v == 2 ? 2.0 : 0.0; /* 2.0: a capacity none reaches */
        build(&c, &P, 10, 6, 5, 3, K, renorm, cf, v == 1 ? TB_ACT_GELU : TB_ACT_SILU, 0);
        loss(&c);
        int C = 6, F = 5, E = 3;
        long cap = cf > 0 ? (long)ceil(cf * K * 10.0 / E) : 1000, taken[3] = {0, 0, 0};
        int drops = 0;
        double maxerr = 0;
        for (int t = 0; t < 10; t++) {
            const double *x = c.v + t * C;
            double lg[3], p[3], mx = -1e300, s = 0;
            for (int e = 0; e < E; e++) {
                lg[e] = 0;
                for (int i = 0; i < C; i++) lg[e] += c.p.router.w[e * C + i] * x[i];
                mx = fmax(mx, lg[e]);
            }
            for (int e = 0; e < E; e++) s += (p[e] = exp(lg[e] - mx));
            for (int e = 0; e < E; e++) p[e] /= s;
            int top[2] = {-1, -1};
            for (int j = 0; j < K; j++)
                for (int e = 0; e < E; e++)
                    if (e != top[0] && (top[j] < 0 || p[e] > p[top[j]])) top[j] = e;
            double ps = 0;
            for (int j = 0; j < K; j++) ps += p[top[j]];
            double y[6] = {0};
            for (int e = 0; e < E; e++) /* expert order */
                for (int j = 0; j < K; j++) {
                    if (top[j] != e) continue;
                    if (taken[e] >= cap) {
                        drops++;
                        continue;
                    }
                    taken[e]++;
                    double g = renorm ? p[e] / ps : p[e], h[5];
                    for (int f = 0; f < F; f++) {
                        h[f] = 0;
                        for (int i = 0; i < C; i++) h[f] += c.up[e].w[f * C + i] * x[i];
                        h[f] = act_ref(h[f], c.p.act);
                    }
                    for (int o = 0; o < C; o++) {
                        double acc = 0;
                        for (int f = 0; f < F; f++) acc += c.down[e].w[o * F + f] * h[f];
                        y[o] += g * acc;
                    }
                }
            for (int o = 0; o < C; o++) maxerr = fmax(maxerr, fabs(y[o] - c.out[t * C + o]));
        }
        printf("moe forward variant %d: drops %d, max abs err %.3e\n", variant, drops, maxerr);
        if (v == 0) assert_true(drops > 0);
        assert_true(maxerr < 1e-13);
        destroy(&c, &P);
    }
}

static double check_moe(size_t ntok, int C, int F, int E, int K, int renorm, double cf, int act) {
    ctx c;
    pool P;
    build(&c, &P, ntok, C, F, E, K, renorm, cf, act, 0);
    const tb_backend *be = tb_backend_cpu();
    double *dv = calloc(c.n, sizeof(double));
    double *scratch = calloc(moe_scratch_count(&c.p, ntok), sizeof(double));
    loss(&c);
    moe_backward(be, dv, scratch, c.w, c.bal_scale, c.act, c.v, &c.p, ntok);
    char nm[96];
    double worst = 0;
    snprintf(nm, sizeof nm, "moe v ntok%zu C%d F%d E%d K%d renorm%d cf%.2f act%d", ntok, C, F, E, K, renorm, cf, act);
    worst = fmax(worst, gc_check(loss, &c, c.v, dv, c.n, 1000, nm).max_rel);
    for (int i = 0; i < P.n; i++) {
        snprintf(nm, sizeof nm, "moe %s ntok%zu K%d renorm%d cf%.2f", P.t[i].name, ntok, K, renorm, cf);
        worst = fmax(worst, gc_check(loss, &c, P.t[i].w, P.t[i].g, P.t[i].n, 1000, nm).max_rel);
    }
    free(dv), free(scratch);
    destroy(&c, &P);
    return worst;
}

static void test_moe_layer_backward_matches_finite_differences(void **state) {
    (void)state;
    double w = 0;
    for (g_fixed = 0; g_fixed < 2; g_fixed++) {
        w = fmax(w, check_moe(7, 6, 5, 3, 2, 1, 0.0, TB_ACT_SILU));
        w = fmax(w, check_moe(9, 5, 7, 3, 2, 0, 0.6, TB_ACT_GELU));
        w = fmax(w, check_moe(5, 4, 3, 3, 1, 1, 0.0, TB_ACT_SILU));
        w = fmax(w, check_moe(8, 6, 4, 3, 1, 0, 0.5, TB_ACT_SILU));
        w = fmax(w, check_moe(6, 5, 4, 3, 2, 1, 1.5, TB_ACT_SILU));
    }
    g_fixed = 0;
    printf("moe layer worst max_rel %.3e\n", w);
    assert_true(w <= 1e-6);
}

/* The host path and the fixed-capacity layout: out, L_bal, dv and every parameter
 * gradient bit for bit (padding rows add exact zeros), plain and BitLinear experts, with
 * drops and without. */
static void test_moe_fixed_rows_equal_host_path(void **state) {
    (void)state;
    static const double cfs[] = {0.6, 1.25, 3.0};
    for (int bitnet = 0; bitnet < 2; bitnet++)
        for (size_t k = 0; k < sizeof cfs / sizeof cfs[0]; k++) {
            ctx c[2];
            pool P[2];
            double *dv[2], *scr[2];
            size_t ntok = 19;
            for (int f = 0; f < 2; f++) {
                g_fixed = f;
                build(&c[f], &P[f], ntok, 8, 12, 4, 2, 1, cfs[k], TB_ACT_SILU, bitnet);
                dv[f] = calloc(c[f].n, sizeof(double));
                scr[f] = calloc(moe_scratch_count(&c[f].p, ntok), sizeof(double));
                loss(&c[f]);
                moe_backward(tb_backend_cpu(), dv[f], scr[f], c[f].w, c[f].bal_scale, c[f].act, c[f].v,
                             &c[f].p, ntok);
            }
            g_fixed = 0;
            assert_true(moe_act_count(&c[1].p, ntok) != moe_act_count(&c[0].p, ntok)); /* two layouts */
            assert_memory_equal(c[1].out, c[0].out, c[0].n * sizeof(double));
            assert_memory_equal(&c[1].lbal, &c[0].lbal, sizeof c[0].lbal);
            assert_memory_equal(dv[1], dv[0], c[0].n * sizeof(double));
            assert_int_equal(P[1].n, P[0].n);
            for (int i = 0; i < P[0].n; i++)
                assert_memory_equal(P[1].t[i].g, P[0].t[i].g, P[0].t[i].n * sizeof(double));
            for (int f = 0; f < 2; f++) {
                free(dv[f]), free(scr[f]);
                destroy(&c[f], &P[f]);
            }
        }
}

static void test_moe_layer_bitnet_runs_within_reported_sizes(void **state) {
    (void)state;
    ctx c;
    pool P;
    build(&c, &P, 13, 16, 24, 4, 2, 1, 1.25, TB_ACT_SILU, 1);
    const tb_backend *be = tb_backend_cpu();
    double *dv = calloc(c.n, sizeof(double));
    double *scratch = calloc(moe_scratch_count(&c.p, 13), sizeof(double));
    double L = loss(&c);
    moe_backward(be, dv, scratch, c.w, c.bal_scale, c.act, c.v, &c.p, 13);
    double s = 0;
    for (size_t i = 0; i < c.n; i++) s += fabs(dv[i]);
    assert_true(isfinite(L) && isfinite(s) && s > 0);
    free(dv), free(scratch);
    destroy(&c, &P);
}

/* moe_backward_set writes dv (NaN there stays out) with the bits of a zero fill and
 * moe_backward, with a capacity (the slot sums write) and without (a fill first). */
static void test_moe_backward_set_equals_fill_then_backward(void **state) {
    (void)state;
    for (int cap = 0; cap < 2; cap++) {
        ctx c;
        pool P;
        build(&c, &P, 13, 16, 24, 4, 2, 1, cap ? 1.25 : 0.0, TB_ACT_SILU, 1);
        const tb_backend *be = tb_backend_cpu();
        double *dv = calloc(c.n, sizeof(double)), *dv2 = malloc(c.n * sizeof(double));
        double *scratch = calloc(moe_scratch_count(&c.p, 13), sizeof(double));
        for (size_t i = 0; i < c.n; i++) dv2[i] = NAN;
        loss(&c);
        moe_backward(be, dv, scratch, c.w, c.bal_scale, c.act, c.v, &c.p, 13);
        moe_backward_set(be, dv2, scratch, c.w, c.bal_scale, c.act, c.v, &c.p, 13);
        assert_memory_equal(dv2, dv, c.n * sizeof(double));
        free(dv), free(dv2), free(scratch);
        destroy(&c, &P);
    }
}

/* ---- dense FFN ---- */
typedef struct fctx {
    tb_ffn p;
    size_t ntok, n;
    double *v, *out, *w, *act;
} fctx;

static double ffn_loss(void *vc) {
    fctx *c = vc;
    ffn_forward(tb_backend_cpu(), c->out, c->act, c->v, &c->p, c->ntok);
    return gc_dot(c->out, c->w, c->n);
}

static void check_ffn(size_t ntok, int C, int F, int act) {
    pool P;
    memset(&P, 0, sizeof P);
    P.tag = (uint32_t)(ntok * 100 + (size_t)F);
    fctx c;
    memset(&c, 0, sizeof c);
    c.p.C = C, c.p.F = F, c.p.act = act, c.ntok = ntok, c.n = ntok * (size_t)C;
    pool_linear(&P, &c.p.up, "ffn.0.weight", C, F, 0);
    pool_linear(&P, &c.p.down, "ffn.2.weight", F, C, 0);
    c.v = calloc(c.n, sizeof(double)), c.out = calloc(c.n, sizeof(double));
    c.w = calloc(c.n, sizeof(double)), c.act = calloc(ffn_act_count(&c.p, ntok), sizeof(double));
    gc_fill_uniform(c.v, c.n, 1.0, 83, P.tag);
    gc_fill_uniform(c.w, c.n, 1.0, 84, P.tag);
    double *dv = calloc(c.n, sizeof(double));
    double *scratch = calloc(ffn_scratch_count(&c.p, ntok) + 1, sizeof(double));
    ffn_loss(&c);
    ffn_backward(tb_backend_cpu(), dv, scratch, c.w, c.act, c.v, &c.p, ntok);
    char nm[64];
    double worst = 0;
    snprintf(nm, sizeof nm, "ffn v ntok%zu C%d F%d act%d", ntok, C, F, act);
    worst = fmax(worst, gc_check(ffn_loss, &c, c.v, dv, c.n, 1000, nm).max_rel);
    for (int i = 0; i < P.n; i++) {
        snprintf(nm, sizeof nm, "ffn %s ntok%zu act%d", P.t[i].name, ntok, act);
        worst = fmax(worst, gc_check(ffn_loss, &c, P.t[i].w, P.t[i].g, P.t[i].n, 1000, nm).max_rel);
    }
    assert_true(worst <= 1e-6);
    free(dv), free(scratch), free(c.v), free(c.out), free(c.w), free(c.act);
    pool_free(&P);
}

static void test_dense_ffn_backward_matches_finite_differences(void **state) {
    (void)state;
    check_ffn(5, 6, 9, TB_ACT_SILU);
    check_ffn(7, 5, 3, TB_ACT_GELU);
    check_ffn(1, 4, 8, TB_ACT_SILU);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moe_layer_forward_equals_direct_evaluation),
        cmocka_unit_test(test_moe_layer_backward_matches_finite_differences),
        cmocka_unit_test(test_moe_layer_bitnet_runs_within_reported_sizes),
        cmocka_unit_test(test_moe_backward_set_equals_fill_then_backward),
        cmocka_unit_test(test_moe_fixed_rows_equal_host_path),
        cmocka_unit_test(test_dense_ffn_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
