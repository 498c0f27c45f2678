/* Attention mixers (MODEL.md section 6): fp64 gradient checks of the input and the four
 * projection weights for titan (hope, rope, hope_hyperbolic), standard and sigmoid, with a
 * key padding mask (one sequence with masked keys, one fully masked in a third case), GQA
 * and odd T; dropout on at a fixed (deterministic) mask; the accumulation property. */
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
#include "layers/attention.h"

#ifndef QK_SCALE
#define QK_SCALE 3.0
#endif
#ifndef U_SCALE
#define U_SCALE 0.5 /* with QK_SCALE: logits spread, third derivatives moderate */
#endif
#ifndef G_SCALE
#define G_SCALE 1.0
#endif

typedef struct attn_ctx {
    tb_attention p;
    real *u, *out, *act, *G;
    real *out0; /* forward output at the unperturbed point, or NULL */
    uint8_t *mask;
    tb_dropout d;
    int B, T, layer;
} attn_ctx;

static double attn_loss(void *v) {
    attn_ctx *c = v;
    attention_forward(tb_backend_cpu(), c->out, c->act, c->u, &c->p, c->mask, &c->d, c->layer,
                      c->B, c->T);
    /* L = Σ G ⊙ (out - out0): the constant offset leaves the gradient unchanged and keeps
     * |L| ~ h · |grad|, so the central difference is not drowned in the rounding of a
     * large sum (attention's q, k gradients are small next to the output). */
    size_t m = (size_t)c->B * c->T * c->p.C;
    double s = 0;
    for (size_t i = 0; i < m; i++) s += c->G[i] * (c->out0 ? c->out[i] - c->out0[i] : c->out[i]);
    return s;
}

static void mk_lin(tb_linear *l, int in, int out, uint32_t tag, double scale) {
    l->in = in, l->out = out, l->bitnet = 0;
    l->w = malloc(sizeof(real) * in * out);
    l->dw = calloc((size_t)in * out, sizeof(real));
    l->wq = NULL, l->sw = NULL;
    gc_fill_uniform(l->w, (size_t)in * out, scale / sqrt(in), 21, tag);
}

static double run_attn(tb_attn_kind kind, tb_pos_kind pos, int B, int T, int C, int H, int Hkv,
                       int mask_mode, float p_drop, uint32_t tag) {
    attn_ctx c;
    memset(&c, 0, sizeof(c));
    c.B = B, c.T = T, c.layer = 3;
    c.p.kind = kind, c.p.C = C, c.p.H = H, c.p.Hkv = Hkv, c.p.pos = pos;
    c.p.pos_base = 10000, c.p.pos_damping = 0.01;
    int kv = Hkv * (C / H);
    /* q and k scaled up so the logits spread and their gradients are not tiny next to
     * the finite-difference truncation error */
    mk_lin(&c.p.q, C, C, tag * 4, QK_SCALE);
    mk_lin(&c.p.k, C, kv, tag * 4 + 1, QK_SCALE);
    mk_lin(&c.p.v, C, kv, tag * 4 + 2, 1.0);
    mk_lin(&c.p.o, C, C, tag * 4 + 3, 1.0);
    size_t n = (size_t)B * T;
    c.u = malloc(sizeof(real) * n * C);
    c.out = malloc(sizeof(real) * n * C);
    c.G = malloc(sizeof(real) * n * C);
    c.act = malloc(sizeof(real) * attention_act_count(&c.p, B, T));
    gc_fill_uniform(c.u, n * C, U_SCALE, 22, tag);
    gc_fill_uniform(c.G, n * C, G_SCALE, 23, tag);
    if (mask_mode) {
        c.mask = malloc(n);
        for (size_t i = 0; i < n; i++) c.mask[i] = 1;
        /* sequence 0: last two keys padded; mode 2: sequence B-1 fully masked */
        c.mask[T - 1] = c.mask[T - 2] = 0;
        if (mask_mode == 2)
            for (int t = 0; t < T; t++) c.mask[(size_t)(B - 1) * T + t] = 0;
    }
    c.d = (tb_dropout){.p = p_drop, .seed = 99, .step = 5, .layer = 3, .enabled = p_drop > 0};
    attn_loss(&c);
    c.out0 = malloc(sizeof(real) * n * C);
    memcpy(c.out0, c.out, sizeof(real) * n * C);
    real *du = calloc(n * C, sizeof(real));
    real *scr = malloc(sizeof(real) * attention_scratch_count(&c.p, B, T));
    attention_backward(tb_backend_cpu(), du, scr, c.G, c.act, c.u, &c.p, c.mask, &c.d, c.layer,
                       B, T);
    double worst = 0;
    gc_result r;
    r = gc_check(attn_loss, &c, c.u, du, n * C, 200, "attn.u");
    worst = fmax(worst, r.max_rel);
    tb_linear *ls[4] = {&c.p.q, &c.p.k, &c.p.v, &c.p.o};
    const char *names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int i = 0; i < 4; i++) {
        r = gc_check(attn_loss, &c, ls[i]->w, ls[i]->dw, (size_t)ls[i]->in * ls[i]->out, 150,
                     names[i]);
        worst = fmax(worst, r.max_rel);
    }
    if (mask_mode == 2) { /* a fully masked sequence attends to nothing: out = o(0) = 0 */
        for (int t = 0; t < T; t++)
            for (int j = 0; j < C; j++) assert_true(c.out[((size_t)(B - 1) * T + t) * C + j] == 0);
    }
    /* accumulation */
    real *du1 = malloc(sizeof(real) * n * C);
    memcpy(du1, du, sizeof(real) * n * C);
    attention_backward(tb_backend_cpu(), du, scr, c.G, c.act, c.u, &c.p, c.mask, &c.d, c.layer,
                       B, T);
    for (size_t i = 0; i < n * C; i++) assert_true(fabs(du[i] - 2 * du1[i]) <= 1e-12 * fabs(du1[i]) + 1e-300);
    for (int i = 0; i < 4; i++) free(ls[i]->w), free(ls[i]->dw);
    free(du1), free(du), free(scr), free(c.u), free(c.out), free(c.G), free(c.act), free(c.mask), free(c.out0);
    printf("kind %d pos %s B=%d T=%d C=%d H=%d Hkv=%d mask=%d drop=%.2f: max rel err %.3e\n",
           kind, posenc_kind_name(pos), B, T, C, H, Hkv, mask_mode, p_drop, worst);
    assert_true(worst <= 1e-6);
    return worst;
}

static void test_titan_hope_gqa_mask_odd_T_gradcheck(void **s) {
    (void)s;
    run_attn(TB_ATTN_TITAN, TB_POS_HOPE, 1, 5, 12, 2, 2, 0, 0, 1);
    run_attn(TB_ATTN_TITAN, TB_POS_HOPE, 2, 7, 20, 4, 2, 1, 0, 2);
    run_attn(TB_ATTN_TITAN, TB_POS_HOPE, 2, 6, 15, 3, 1, 2, 0, 3); /* odd hs = 5 */
}

static void test_titan_rope_and_hyperbolic_gradcheck(void **s) {
    (void)s;
    run_attn(TB_ATTN_TITAN, TB_POS_ROPE, 2, 7, 20, 4, 2, 1, 0, 4);
    run_attn(TB_ATTN_TITAN, TB_POS_HOPE_HYPERBOLIC, 2, 5, 12, 2, 1, 1, 0, 5);
}

static void test_standard_attn_gradcheck(void **s) {
    (void)s;
    run_attn(TB_ATTN_STANDARD, TB_POS_HOPE, 1, 5, 12, 2, 2, 0, 0, 6);
    run_attn(TB_ATTN_STANDARD, TB_POS_NONE, 2, 7, 20, 4, 4, 2, 0, 7);
}

static void test_sigmoid_attn_gradcheck(void **s) {
    (void)s;
    run_attn(TB_ATTN_SIGMOID, TB_POS_NONE, 1, 5, 12, 2, 2, 0, 0, 8);
    run_attn(TB_ATTN_SIGMOID, TB_POS_NONE, 2, 7, 20, 4, 2, 2, 0, 9);
}

static void test_attention_dropout_fixed_mask_gradcheck(void **s) {
    (void)s;
    run_attn(TB_ATTN_TITAN, TB_POS_HOPE, 2, 7, 20, 4, 2, 1, 0.3f, 10);
    run_attn(TB_ATTN_SIGMOID, TB_POS_NONE, 1, 5, 12, 2, 1, 1, 0.3f, 11);
}

/* The softmax rows of unmasked queries sum to 1 and masked keys get 0. */
static void test_attention_probs_rows_and_mask(void **state) {
    (void)state;
    int B = 2, T = 5, H = 2, hs = 3;
    size_t n = (size_t)B * T, ld = (size_t)H * hs;
    real *q = malloc(sizeof(real) * n * ld), *k = malloc(sizeof(real) * n * ld);
    real *v = malloc(sizeof(real) * n * ld), *out = malloc(sizeof(real) * n * ld);
    real *probs = malloc(sizeof(real) * B * H * T * T), *rs = malloc(sizeof(real) * B * H * T);
    gc_fill_uniform(q, n * ld, 1, 1, 1), gc_fill_uniform(k, n * ld, 1, 1, 2);
    gc_fill_uniform(v, n * ld, 1, 1, 3);
    uint8_t mask[10] = {1, 0, 1, 1, 0, 1, 1, 1, 1, 1};
    tb_backend_cpu()->dense.attn_fwd(out, probs, rs, q, k, v, ld, ld, mask, 0, NULL, 1, B, T, H,
                                     H, hs);
    for (int r = 0; r < B * H * T; r++) {
        double s = 0;
        for (int j = 0; j < T; j++) s += probs[(size_t)r * T + j];
        assert_true(fabs(s - 1) < 1e-14);
    }
    for (int r = 0; r < H * T; r++) assert_true(probs[(size_t)r * T + 1] == 0 && probs[(size_t)r * T + 4] == 0);
    /* rowstat is the log-sum-exp of the scaled scores over the unmasked keys, so
     * P_ij = exp(s_ij - rowstat_i) (the fused backends recompute P this way). */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    if (!mask[b * T + j]) continue;
                    double sc = 0;
                    for (int c = 0; c < hs; c++)
                        sc += (double)q[((size_t)b * T + i) * ld + (size_t)h * hs + c] *
                              k[((size_t)b * T + j) * ld + (size_t)h * hs + c];
                    sc /= sqrt((double)hs);
                    size_t row = ((size_t)b * H + h) * T + i;
                    assert_true(fabs(exp(sc - rs[row]) - probs[row * T + j]) < 1e-13);
                }
    free(q), free(k), free(v), free(out), free(probs), free(rs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_titan_hope_gqa_mask_odd_T_gradcheck),
        cmocka_unit_test(test_titan_rope_and_hyperbolic_gradcheck),
        cmocka_unit_test(test_standard_attn_gradcheck),
        cmocka_unit_test(test_sigmoid_attn_gradcheck),
        cmocka_unit_test(test_attention_dropout_fixed_mask_gradcheck),
        cmocka_unit_test(test_attention_probs_rows_and_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
