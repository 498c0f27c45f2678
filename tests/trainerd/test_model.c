/* The whole model end to end in fp64 (use_bitnet false, dropout off): the gradient of the
 * loss (CE + λ_ode L_ode [+ λ_bal L_bal]) w.r.t. a sample of every parameter tensor
 * matches finite differences, max rel err <= 1e-6, with gradcheck.h's relative error and
 * its floor scaled by the loss's magnitude (what a finite difference can resolve is
 * relative to L, here CE ≈ ln V ≈ 3):
 *     rel = |a - n| / max(|a|, |n|, 1e-6 · max(1, max_j |a_j|) · max(1, |L|))  (per tensor)
 * but a fourth-order central difference n = (-L(θ+2h) + 8L(θ+h) - 8L(θ-h) + L(θ-2h)) / 12h
 * with h = 1e-3 · max(1, |θ|): the model's loss is O(1) (CE ≈ ln V), so the second-order
 * stencil's rounding noise eps·L/h ≈ 5e-11 alone exceeds 1e-6 relative on elements whose
 * gradient is below ~5e-5; this stencil keeps truncation O(h⁴) and rounding ~20x lower.
 * Two configurations (odd sizes, GQA, loops sharing parameters, padding mask). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <cmocka.h>
#include "gradcheck.h"
#include "model/model.h"
#include "tb_rng.h"

typedef struct ctx {
    tb_model *m;
    tb_batch b;
} ctx;

static double loss_fn(void *p) {
    ctx *c = p;
    tb_fwd_result r;
    tb_err err;
    if (tb_model_forward(c->m, &c->b, NULL, &r, &err)) fail_msg("%s", err.msg);
    return r.loss;
}

static gc_result check4(ctx *c, double *param, const double *grad, size_t n, size_t max_checks,
                        const char *name) {
    gc_result res = {0};
    double gmax = 0;
    for (size_t i = 0; i < n; i++) gmax = fabs(grad[i]) > gmax ? fabs(grad[i]) : gmax;
    double l0 = fabs(loss_fn(c));
    double floor_ = 1e-6 * (gmax > 1 ? gmax : 1) * (l0 > 1 ? l0 : 1);
    size_t count = n <= max_checks ? n : max_checks;
    for (size_t k = 0; k < count; k++) {
        size_t i = count == n ? k : (size_t)((double)k * (double)(n - 1) / (double)(count - 1));
        double saved = param[i], h = 1e-3 * (fabs(saved) > 1 ? fabs(saved) : 1);
        double l[4];
        const double d[4] = {2, 1, -1, -2};
        for (int j = 0; j < 4; j++) {
            param[i] = saved + d[j] * h;
            l[j] = loss_fn(c);
        }
        param[i] = saved;
        double num = (-l[0] + 8 * l[1] - 8 * l[2] + l[3]) / (12 * h);
        double den = fabs(grad[i]) > fabs(num) ? fabs(grad[i]) : fabs(num);
        if (den < floor_) den = floor_;
        double rel = fabs(grad[i] - num) / den;
        if (rel > res.max_rel || res.checked == 0) {
            res.max_rel = rel;
            res.worst = i;
            res.analytic = grad[i];
            res.numeric = num;
        }
        res.checked++;
    }
    loss_fn(c);
    printf("gradcheck %s: n=%zu, checked=%zu, max_rel=%.3e at %zu (a=%.10e, n=%.10e)\n", name, n,
           res.checked, res.max_rel, res.worst, res.analytic, res.numeric);
    return res;
}

static void run(const char *const *pattern, int npat, int loops, int C, int H, int kv, int V,
                int B, int T, int norm, int factorized, int use_mask, const char *pos, int moe) {
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    tb_model_config *mc = &rc.model;
    mc->vocab_size = V;
    mc->hidden_size = C;
    mc->num_heads = H;
    mc->num_kv_heads = kv;
    mc->retention_heads = H;
    mc->num_layers = npat;
    mc->num_loops = loops;
    mc->layer_pattern.count = npat;
    for (int i = 0; i < npat; i++) snprintf(mc->layer_pattern.items[i], 64, "%s", pattern[i]);
    mc->use_bitnet = 0;
    mc->dropout = 0;
    mc->norm_type = norm;
    mc->use_factorized_embedding = factorized;
    mc->factorized_embedding_dim = 6;
    mc->ffn_hidden_size = 2 * C + 2;
    mc->use_moe = moe;
    mc->num_experts = 3;
    mc->top_k_experts = 2;
    mc->moe_capacity_factor = 0; /* capacity drops are discontinuous: tested in test_moe */
    mc->lambda_bal = 0.05;
    mc->lambda_ode = 0.3;
    mc->ode_steps = 2;
    mc->pos_encoding = !strcmp(pos, "rope") ? TB_CFG_POS_ROPE : TB_CFG_POS_HOPE;
    assert_int_equal(tb_model_config_finish(mc, &err), 0);
    tb_model m;
    int rv = tb_model_create(&m, mc, tb_backend_cpu(), B, T, &err);
    if (rv) fail_msg("%s", err.msg);
    tb_model_init(&m, 7);
    size_t n = (size_t)B * T;
    int32_t *ids = malloc(n * sizeof *ids), *labels = malloc(n * sizeof *labels);
    uint8_t *mask = malloc(n);
    tb_rng r;
    tb_rng_init(&r, 5, TB_RNG_TEST, 1, 0, 0);
    for (size_t i = 0; i < n; i++) {
        ids[i] = (int32_t)tb_rng_below(&r, (uint32_t)V);
        labels[i] = i % 3 == 1 ? -100 : (int32_t)tb_rng_below(&r, (uint32_t)V);
        mask[i] = !(use_mask && i % (size_t)T == (size_t)T - 1); /* last token padding */
    }
    ctx c = {&m, {ids, labels, use_mask ? mask : NULL, B, T}};
    tb_fwd_result res;
    assert_int_equal(tb_model_forward(&m, &c.b, NULL, &res, &err), 0);
    printf("loss %.6f ce %.6f l_ode %.6f l_bal %.6f acc %.3f\n", res.loss, res.ce, res.l_ode,
           res.l_bal, res.accuracy);
    if (moe) assert_true(res.l_bal > 0);
    memset(m.p.grad, 0, m.p.total * sizeof(real));
    tb_model_backward(&m, &c.b, 1.0);
    double worst = 0;
    for (int i = 0; i < m.p.count; i++) {
        const tb_tensor *t = &m.p.t[i];
        gc_result g = check4(&c, tb_params_w(&m.p, i), tb_params_dw(&m.p, i), t->numel, 12,
                             t->name);
        if (g.max_rel > worst) worst = g.max_rel;
        if (g.max_rel > 1e-6) fail_msg("%s: max_rel %.3e", t->name, g.max_rel);
    }
    printf("model gradcheck: %d tensors, worst max_rel %.3e\n", m.p.count, worst);
    free(ids);
    free(labels);
    free(mask);
    tb_model_free(&m);
}

static void test_model_gradcheck_factorized_derf_hope_moe_loops(void **s) {
    (void)s;
    static const char *const pat[] = {"retnet", "titan_attn", "mamba", "ode", "standard_attn",
                                      "sigmoid_attn"};
    run(pat, 6, 2, 16, 4, 2, 50, 2, 6, TB_CFG_NORM_DERF, 1, 0, "hope", 1);
}

static void test_model_gradcheck_plain_dyntanh_rope_dense_ffn_mask_odd(void **s) {
    (void)s;
    static const char *const pat[] = {"mamba", "ode", "titan_attn", "retnet"};
    run(pat, 4, 2, 12, 3, 3, 23, 1, 7, TB_CFG_NORM_DYNAMIC_TANH, 0, 1, "rope", 0);
}

/* The MFU FLOP count on hand-computed cases: one retnet layer with a dense FFN, then an
 * rk4 ODE layer twice through a loop with top-2 of 4 experts and a factorized embedding. */
static void test_train_flops_per_token_hand_counts(void **s) {
    (void)s;
    tb_err err = {{0}};
    tb_run_config rc;
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    tb_model_config c = rc.model;
    c.hidden_size = 8, c.vocab_size = 10, c.num_heads = 2, c.retention_heads = 2;
    c.num_layers = 1, c.num_loops = 1, c.ffn_hidden_size = 12, c.use_moe = 0;
    c.use_factorized_embedding = 0;
    c.layer_pattern.count = 1;
    snprintf(c.layer_pattern.items[0], sizeof c.layer_pattern.items[0], "retnet");
    assert_int_equal(tb_model_config_finish(&c, &err), 0);
    /* 3 x (5 projections 2·64 + 4·T·C + FFN 4·8·12 + head 2·8·10), T = 5 */
    assert_true(tb_model_train_flops_per_token(&c, 5) == 3.0 * (640 + 160 + 384 + 160));
    snprintf(c.layer_pattern.items[0], sizeof c.layer_pattern.items[0], "ode");
    c.num_loops = 2, c.ode_steps = 2, c.ode_solver = TB_CFG_ODE_RK4;
    c.use_moe = 1, c.num_experts = 4, c.top_k_experts = 2;
    c.use_factorized_embedding = 1, c.factorized_embedding_dim = 4, c.use_embedding_conv = 1;
    c.embedding_conv_kernel = 3;
    assert_int_equal(tb_model_config_finish(&c, &err), 0);
    /* embedding 2·4·8 + 2·4·4·3; per loop 8 evaluations x (2·4·64 + 4·5·8), router 2·8·4,
     * 2 experts x 4·8·12; head 160 */
    double f = 64 + 96 + 2 * (8 * (512 + 160) + 64 + 768) + 160;
    assert_true(tb_model_train_flops_per_token(&c, 5) == 3.0 * f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_gradcheck_factorized_derf_hope_moe_loops),
        cmocka_unit_test(test_model_gradcheck_plain_dyntanh_rope_dense_ffn_mask_odd),
        cmocka_unit_test(test_train_flops_per_token_hand_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
