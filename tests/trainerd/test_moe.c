/* MoE routing (MODEL.md 7) against hand-computed small cases: ties go to the lower
 * index, capacity drops assignments in token order (first or second choice alike) and
 * the token keeps its other gate unchanged, L_bal counts f_e before drops; and the
 * backward of the gates and of L_bal into the router logits, and of gather/scatter,
 * against central finite differences in fp64 (gradcheck.h, bound 1e-6), K = 1 and 2,
 * E = 3, renormalised or not, with and without drops, logits far from ties. */
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

typedef struct route {
    double probs[64 * 8], gate[64 * 8], lbal;
    int32_t sel[64 * 8], order[64 * 8], offsets[9];
} route;

static void do_route(route *r, const double *logits, int ntok, int E, int K, int renorm, double cf) {
    const tb_backend *be = tb_backend_cpu();
    be->seq.moe_route_forward(r->probs, r->sel, r->gate, r->order, r->offsets, &r->lbal, logits,
                              ntok, E, K, renorm, cf, be);
}

static void test_moe_ties_go_to_lower_index(void **state) {
    (void)state;
    route r;
    double l1[3] = {0, 0, 0};
    do_route(&r, l1, 1, 3, 1, 1, 0);
    assert_int_equal(r.sel[0], 0);
    assert_true(r.gate[0] == 1.0);
    double l2[3] = {1, 2, 2}; /* experts 1 and 2 tie for first: 1 first, then 2 */
    do_route(&r, l2, 1, 3, 2, 1, 0);
    assert_int_equal(r.sel[0], 1);
    assert_int_equal(r.sel[1], 2);
    assert_true(r.gate[0] == 0.5 && r.gate[1] == 0.5);
    double l3[3] = {2, 1, 2}; /* 0 and 2 tie: 0 first */
    do_route(&r, l3, 1, 3, 2, 0, 0);
    assert_int_equal(r.sel[0], 0);
    assert_int_equal(r.sel[1], 2);
    assert_true(r.gate[0] == r.probs[0] && r.gate[1] == r.probs[2]);
    double l4[4] = {5, 3, 3, 3}; /* second place: three-way tie, 1 wins */
    do_route(&r, l4, 1, 4, 2, 1, 0);
    assert_int_equal(r.sel[0], 0);
    assert_int_equal(r.sel[1], 1);
}

static void test_moe_capacity_drops_in_token_order(void **state) {
    (void)state;
    route r;
    /* E = 2, K = 1, 4 tokens all preferring expert 0, cf = 1: capacity ceil(1·1·4/2) = 2;
     * tokens 0 and 1 are accepted, 2 and 3 dropped (sel = -1 - 0 = -1). */
    double la[8] = {1, 0, 2, 0, 3, 0, 4, 0};
    do_route(&r, la, 4, 2, 1, 1, 1.0);
    assert_int_equal(r.sel[0], 0);
    assert_int_equal(r.sel[1], 0);
    assert_int_equal(r.sel[2], -1);
    assert_int_equal(r.sel[3], -1);
    assert_int_equal(r.offsets[0], 0);
    assert_int_equal(r.offsets[1], 2);
    assert_int_equal(r.offsets[2], 2);
    assert_int_equal(r.order[0], 0);
    assert_int_equal(r.order[1], 1);
    /* E = 3, K = 2, 3 tokens, cf = 0.5: capacity ceil(0.5·2·3/3) = 1.
     * t0 ranks (0, 1), t1 (1, 0), t2 (0, 2). In token order: t0 takes expert 0's slot
     * (first choice) and expert 1's slot (second choice); t1 finds both full (both
     * dropped); t2's first choice 0 is full (dropped), its second, 2, is accepted and
     * keeps its renormalised gate p_2 / (p_0 + p_2) (no re-renormalisation). */
    double lb[9] = {3, 2, 0, 2, 3, 0, 3, 0, 2};
    do_route(&r, lb, 3, 3, 2, 1, 0.5);
    int32_t want_sel[6] = {0, 1, -2, -1, -1, 2};
    for (int i = 0; i < 6; i++) assert_int_equal(r.sel[i], want_sel[i]);
    int32_t want_off[4] = {0, 1, 2, 3}, want_order[3] = {0, 1, 5};
    for (int i = 0; i < 4; i++) assert_int_equal(r.offsets[i], want_off[i]);
    for (int i = 0; i < 3; i++) assert_int_equal(r.order[i], want_order[i]);
    double p0 = r.probs[6 + 0], p2 = r.probs[6 + 2];
    assert_true(fabs(r.gate[5] - p2 / (p0 + p2)) < 1e-15);
    /* cf = 0: no limit, everything kept. */
    do_route(&r, lb, 3, 3, 2, 1, 0.0);
    for (int i = 0; i < 6; i++) assert_true(r.sel[i] >= 0);
    assert_int_equal(r.offsets[3], 6);
    /* cf = 1.25, K = 2, 4 tokens, E = 4: 2.5 -> capacity 3. Five tokens' worth of
     * first choices on expert 0 (4 tokens, K = 2, all rank 0 then 1): 0 keeps 3. */
    double lc[16] = {4, 3, 0, 0, 4, 3, 0, 0, 4, 3, 0, 0, 4, 3, 0, 0};
    do_route(&r, lc, 4, 4, 2, 1, 1.25);
    assert_int_equal(r.offsets[1] - r.offsets[0], 3);
    assert_int_equal(r.offsets[2] - r.offsets[1], 3);
    assert_int_equal(r.sel[6], -1);
    assert_int_equal(r.sel[7], -2);
}

static void test_moe_balance_loss_hand_computed(void **state) {
    (void)state;
    route r;
    /* E = 2, K = 1, 4 tokens; logits (ln 3, 0) give p = (3/4, 1/4), (0, ln 3) the reverse.
     * Tokens 0-2 pick expert 0, token 3 expert 1:  f = (3/4, 1/4) counted before drops
     * (cf = 1 gives capacity 2, so token 2 is dropped, but still counts in f_0);
     * P_0 = (3·0.75 + 0.25)/4 = 0.625, P_1 = 0.375;
     * L_bal = 2 · (0.75·0.625 + 0.25·0.375) = 2 · 0.5625 = 1.125. */
    double la[8] = {log(3), 0, log(3), 0, log(3), 0, 0, log(3)};
    do_route(&r, la, 4, 2, 1, 1, 1.0);
    assert_int_equal(r.sel[2], -1);
    printf("L_bal (E=2, K=1) = %.17g, by hand 1.125\n", r.lbal);
    assert_true(fabs(r.lbal - 1.125) < 1e-14);
    /* E = 3, K = 2, 4 tokens, logits ln p with
     *   p(t0) = (.5, .3, .2) -> {0, 1};  p(t1) = (.2, .5, .3) -> {1, 2};
     *   p(t2) = (.5, .2, .3) -> {0, 2};  p(t3) = (.3, .2, .5) -> {2, 0}.
     * f = (3, 2, 3)/8;  P = (1.5, 1.2, 1.3)/4 = (.375, .3, .325);
     * Σ f P = (3·.375 + 2·.3 + 3·.325)/8 = (1.125 + .6 + .975)/8 = 2.7/8 = .3375;
     * L_bal = 3 · .3375 = 1.0125. Gates, renormalised: t0 .5/.8 = .625, .3/.8 = .375. */
    double pb[12] = {.5, .3, .2, .2, .5, .3, .5, .2, .3, .3, .2, .5}, lb[12];
    for (int i = 0; i < 12; i++) lb[i] = log(pb[i]);
    do_route(&r, lb, 4, 3, 2, 1, 0.0);
    printf("L_bal (E=3, K=2) = %.17g, by hand 1.0125\n", r.lbal);
    assert_true(fabs(r.lbal - 1.0125) < 1e-14);
    assert_true(fabs(r.gate[0] - 0.625) < 1e-15 && fabs(r.gate[1] - 0.375) < 1e-15);
    int32_t want[8] = {0, 1, 1, 2, 0, 2, 2, 0};
    for (int i = 0; i < 8; i++) assert_int_equal(r.sel[i], want[i]);
    do_route(&r, lb, 4, 3, 2, 0, 0.0); /* not renormalised: gates are the probabilities */
    assert_true(fabs(r.gate[0] - 0.5) < 1e-15 && fabs(r.gate[1] - 0.3) < 1e-15);
}

/* ---- gradient of the gates and L_bal ---- */
typedef struct gctx {
    int ntok, E, K, renorm;
    double cf, bal_scale;
    double *logits, *wg;
    route r;
} gctx;

static double route_loss(void *p) {
    gctx *c = p;
    do_route(&c->r, c->logits, c->ntok, c->E, c->K, c->renorm, c->cf);
    double L = c->bal_scale * c->r.lbal;
    for (int a = 0; a < c->ntok * c->K; a++)
        if (c->r.sel[a] >= 0) L += c->wg[a] * c->r.gate[a];
    return L;
}

static void route_grad(int ntok, int E, int K, int renorm, double cf) {
    const tb_backend *be = tb_backend_cpu();
    gctx c = {.ntok = ntok, .E = E, .K = K, .renorm = renorm, .cf = cf, .bal_scale = 0.7};
    c.logits = calloc((size_t)ntok * E, sizeof(double));
    c.wg = calloc((size_t)ntok * K, sizeof(double));
    gc_fill_uniform(c.logits, (size_t)ntok * E, 2.0, 51, (uint32_t)(E * 10 + K));
    gc_fill_uniform(c.wg, (size_t)ntok * K, 1.0, 52, (uint32_t)(E * 10 + K));
    route_loss(&c);
    int dropped = 0;
    for (int a = 0; a < ntok * K; a++) dropped += c.r.sel[a] < 0;
    double *dl = calloc((size_t)ntok * E, sizeof(double));
    be->seq.moe_route_backward(dl, c.wg, c.r.probs, c.r.sel, c.bal_scale, ntok, E, K, renorm, be);
    char nm[80];
    snprintf(nm, sizeof nm, "moe.logits ntok%d E%d K%d renorm%d cf%.2f dropped%d", ntok, E, K, renorm, cf, dropped);
    gc_result g = gc_check(route_loss, &c, c.logits, dl, (size_t)ntok * E, 400, nm);
    assert_true(g.max_rel <= 1e-6);
    if (cf > 0) assert_true(dropped > 0); /* the drop path is exercised */
    double *dl2 = calloc((size_t)ntok * E, sizeof(double));
    for (int rep = 0; rep < 2; rep++)
        be->seq.moe_route_backward(dl2, c.wg, c.r.probs, c.r.sel, c.bal_scale, ntok, E, K, renorm, be);
    for (int i = 0; i < ntok * E; i++) assert_true(fabs(dl2[i] - 2 * dl[i]) <= 1e-12 * fmax(1, fabs(dl[i])));
    free(dl2), free(dl), free(c.logits), free(c.wg);
}

static void test_moe_route_backward_matches_finite_differences(void **state) {
    (void)state;
    route_grad(7, 3, 1, 1, 0.0);
    route_grad(7, 3, 2, 1, 0.0);
    route_grad(7, 3, 2, 0, 0.0);
    route_grad(11, 3, 2, 1, 0.6);
    route_grad(11, 3, 2, 0, 0.6);
    route_grad(9, 3, 1, 1, 0.5);
    route_grad(5, 4, 3, 1, 0.5);
}

/* gather -> identity -> scatter with the gates: d x and d gate. */
typedef struct sctx {
    int ntok, K, C, n;
    double *x, *xe, *out, *w, *gate;
    int32_t *order;
} sctx;

static double gs_loss(void *p) {
    sctx *c = p;
    const tb_backend *be = tb_backend_cpu();
    be->seq.moe_gather(c->xe, c->x, c->order, c->n, c->K, c->C, be);
    memset(c->out, 0, (size_t)c->ntok * c->C * sizeof(double));
    be->seq.moe_scatter(c->out, c->xe, c->gate, c->order, c->n, c->K, c->C, be);
    return gc_dot(c->out, c->w, (size_t)c->ntok * c->C);
}

static void test_moe_gather_scatter_backward_matches_finite_differences(void **state) {
    (void)state;
    const tb_backend *be = tb_backend_cpu();
    int32_t order[5] = {0, 3, 5, 2, 4}; /* ntok 3, K 2; assignment 1 dropped */
    sctx c = {.ntok = 3, .K = 2, .C = 5, .n = 5, .order = order};
    c.x = calloc(15, sizeof(double)), c.xe = calloc(25, sizeof(double));
    c.out = calloc(15, sizeof(double)), c.w = calloc(15, sizeof(double));
    c.gate = calloc(6, sizeof(double));
    gc_fill_uniform(c.x, 15, 1, 61, 0);
    gc_fill_uniform(c.w, 15, 1, 62, 0);
    gc_fill_uniform(c.gate, 6, 1, 63, 0);
    gs_loss(&c);
    double dx[15] = {0}, dxe[25] = {0}, dgate[6] = {0};
    be->seq.moe_scatter_backward(dxe, dgate, c.w, c.xe, c.gate, order, 5, 2, 5, be);
    be->seq.moe_gather_backward(dx, dxe, order, 5, 2, 5, be);
    assert_true(dgate[1] == 0);
    assert_true(gc_check(gs_loss, &c, c.x, dx, 15, 100, "moe.gather.x").max_rel <= 1e-6);
    assert_true(gc_check(gs_loss, &c, c.gate, dgate, 6, 100, "moe.scatter.gate").max_rel <= 1e-6);
    free(c.x), free(c.xe), free(c.out), free(c.w), free(c.gate);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moe_ties_go_to_lower_index),
        cmocka_unit_test(test_moe_capacity_drops_in_token_order),
        cmocka_unit_test(test_moe_balance_loss_hand_computed),
        cmocka_unit_test(test_moe_route_backward_matches_finite_differences),
        cmocka_unit_test(test_moe_gather_scatter_backward_matches_finite_differences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
