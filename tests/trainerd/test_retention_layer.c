/* The retnet mixer layer (MODEL.md 6 'retnet': out = o(Nr(Retention(q, k, v)) ⊙ silu(g)))
 * against central finite differences in fp64 (gradcheck.h, bound 1e-6), use_bitnet
 * false: the input u and every parameter (q, k, v, g, o weights, the norm's tensors),
 * causal and bidirectional, three shapes incl. odd ones (hs = 3, H_r = 1, T = 1) and
 * three norm types; a BitLinear forward/backward runs clean with the act/scratch sizes
 * the layer reports (under the sanitizers). */
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
#include "layers/retention.h"

#include "param_pool.h"

typedef struct ctx {
    tb_retention p;
    int B, T;
    size_t n;
    double *u, *out, *w, *act;
} ctx;

static double loss(void *vc) {
    ctx *c = vc;
    retention_forward(tb_backend_cpu(), c->out, c->act, c->u, &c->p, c->B, c->T);
    return gc_dot(c->out, c->w, c->n);
}

static void build(ctx *c, pool *P, int B, int T, int C, int H, int bidir, tb_norm_type nt,
                  int bitnet) {
    memset(c, 0, sizeof *c);
    memset(P, 0, sizeof *P);
    P->tag = (uint32_t)(C * 100 + T);
    c->B = B, c->T = T;
    c->p.C = C, c->p.H = H, c->p.bidirectional = bidir;
    pool_linear(P, &c->p.q, "mixer.q_proj.weight", C, C, bitnet);
    pool_linear(P, &c->p.k, "mixer.k_proj.weight", C, C, bitnet);
    pool_linear(P, &c->p.v, "mixer.v_proj.weight", C, C, bitnet);
    pool_linear(P, &c->p.g, "mixer.g_proj.weight", C, C, bitnet);
    pool_linear(P, &c->p.o, "mixer.out_proj.weight", C, C, bitnet);
    pool_norm(P, &c->p.norm, nt, C);
    c->n = (size_t)B * T * C;
    c->u = calloc(c->n, sizeof(double));
    c->out = calloc(c->n, sizeof(double));
    c->w = calloc(c->n, sizeof(double));
    c->act = calloc(retention_act_count(&c->p, B, T), sizeof(double));
    gc_fill_uniform(c->u, c->n, 1.0, 72, P->tag);
    gc_fill_uniform(c->w, c->n, 1.0, 73, P->tag);
}

static void destroy(ctx *c, pool *P) {
    tb_linear *l[5] = {&c->p.q, &c->p.k, &c->p.v, &c->p.g, &c->p.o};
    for (int i = 0; i < 5; i++) free(l[i]->wq), free(l[i]->sw);
    free(c->u), free(c->out), free(c->w), free(c->act);
    pool_free(P);
}

static void check(int B, int T, int C, int H, int bidir, tb_norm_type nt) {
    ctx c;
    pool P;
    build(&c, &P, B, T, C, H, bidir, nt, 0);
    const tb_backend *be = tb_backend_cpu();
    double *du = calloc(c.n, sizeof(double));
    double *scratch = calloc(retention_scratch_count(&c.p, B, T) + 1, sizeof(double));
    loss(&c);
    retention_backward(be, du, scratch, c.w, c.act, c.u, &c.p, B, T);
    char nm[96];
    double worst = 0;
    snprintf(nm, sizeof nm, "retnet u B%d T%d C%d H%d bi%d %s", B, T, C, H, bidir, norm_type_name(nt));
    worst = fmax(worst, gc_check(loss, &c, c.u, du, c.n, 1000, nm).max_rel);
    for (int i = 0; i < P.n; i++) {
        snprintf(nm, sizeof nm, "retnet %s B%d T%d C%d H%d bi%d %s", P.t[i].name, B, T, C, H, bidir,
                 norm_type_name(nt));
        worst = fmax(worst, gc_check(loss, &c, P.t[i].w, P.t[i].g, P.t[i].n, 1000, nm).max_rel);
    }
    assert_true(worst <= 1e-6);
    free(du), free(scratch);
    destroy(&c, &P);
}

static void test_retention_layer_backward_matches_finite_differences(void **state) {
    (void)state;
    check(1, 5, 12, 4, 0, TB_NORM_DERF);           /* hs = 3 */
    check(2, 7, 10, 1, 1, TB_NORM_DYNAMIC_TANH);   /* H_r = 1, bidirectional */
    check(1, 1, 9, 3, 0, TB_NORM_LAYER_NORM);      /* T = 1 */
    check(2, 4, 8, 2, 1, TB_NORM_RMS_NORM);
}

static void test_retention_layer_bitnet_runs_within_reported_sizes(void **state) {
    (void)state;
    ctx c;
    pool P;
    build(&c, &P, 2, 6, 16, 4, 0, TB_NORM_DERF, 1);
    const tb_backend *be = tb_backend_cpu();
    double *du = calloc(c.n, sizeof(double));
    double *scratch = calloc(retention_scratch_count(&c.p, 2, 6), sizeof(double));
    double L = loss(&c);
    retention_backward(be, du, scratch, c.w, c.act, c.u, &c.p, 2, 6);
    assert_true(isfinite(L));
    double s = 0;
    for (size_t i = 0; i < c.n; i++) s += fabs(du[i]);
    assert_true(isfinite(s) && s > 0);
    free(du), free(scratch);
    destroy(&c, &P);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retention_layer_backward_matches_finite_differences),
        cmocka_unit_test(test_retention_layer_bitnet_runs_within_reported_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
