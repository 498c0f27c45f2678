/* Embedding (MODEL.md section 4): plain and factorized (+ Conv1d with odd and even
 * kernels, and without conv); fp64 gradient checks of the table (rows hit by repeated
 * ids: scatter-add), conv weight and bias, proj; dropout on at a fixed mask; id checks. */
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
#include "layers/embedding.h"

typedef struct emb_ctx {
    tb_embedding p;
    int32_t *ids;
    real *out, *act, *G;
    tb_dropout d;
    int B, T;
} emb_ctx;

static double emb_loss(void *v) {
    emb_ctx *c = v;
    embedding_forward(tb_backend_cpu(), c->out, c->act, c->ids, &c->p, &c->d, c->B, c->T);
    return gc_dot(c->out, c->G, (size_t)c->B * c->T * c->p.C);
}

static void run_emb(int factorized, int conv, int k, int B, int T, int V, int C, int Cl,
                    float pd, uint32_t tag) {
    emb_ctx c;
    memset(&c, 0, sizeof(c));
    c.B = B, c.T = T;
    c.p.V = V, c.p.C = C, c.p.factorized = factorized, c.p.conv = conv, c.p.Cl = Cl, c.p.k = k;
    int w = factorized ? Cl : C;
    c.p.table = malloc(sizeof(real) * V * w);
    c.p.dtable = calloc((size_t)V * w, sizeof(real));
    gc_fill_uniform(c.p.table, (size_t)V * w, 1.0, 41, tag);
    if (factorized) {
        c.p.conv_w = malloc(sizeof(real) * Cl * Cl * k);
        c.p.dconv_w = calloc((size_t)Cl * Cl * k, sizeof(real));
        c.p.conv_b = malloc(sizeof(real) * Cl);
        c.p.dconv_b = calloc(Cl, sizeof(real));
        gc_fill_uniform(c.p.conv_w, (size_t)Cl * Cl * k, 1.0 / sqrt(Cl * k), 42, tag);
        gc_fill_uniform(c.p.conv_b, Cl, 0.3, 43, tag);
        c.p.proj = (tb_linear){.in = Cl, .out = C, .bitnet = 0};
        c.p.proj.w = malloc(sizeof(real) * Cl * C);
        c.p.proj.dw = calloc((size_t)Cl * C, sizeof(real));
        gc_fill_uniform(c.p.proj.w, (size_t)Cl * C, 1.0 / sqrt(Cl), 44, tag);
    }
    size_t n = (size_t)B * T;
    c.ids = malloc(sizeof(int32_t) * n);
    for (size_t i = 0; i < n; i++) c.ids[i] = (int32_t)((i * 7 + tag) % (size_t)(V - 1)); /* repeats */
    c.ids[n - 1] = c.ids[0];
    c.out = malloc(sizeof(real) * n * C);
    c.G = malloc(sizeof(real) * n * C);
    c.act = malloc(sizeof(real) * (embedding_act_count(&c.p, B, T) + 1));
    gc_fill_uniform(c.G, n * C, 1.0, 45, tag);
    c.d = (tb_dropout){.p = pd, .seed = 3, .step = 1, .layer = TB_DROPOUT_LAYER_EMB, .enabled = pd > 0};
    emb_loss(&c);
    real *scr = malloc(sizeof(real) * embedding_scratch_count(&c.p, B, T));
    embedding_backward(tb_backend_cpu(), scr, c.G, c.act, c.ids, &c.p, &c.d, B, T);
    double worst = gc_check(emb_loss, &c, c.p.table, c.p.dtable, (size_t)V * w, 300, "emb.table").max_rel;
    /* row V-1 is never used: its gradient must be exactly zero */
    for (int j = 0; j < w; j++) assert_true(c.p.dtable[(size_t)(V - 1) * w + j] == 0);
    if (factorized) {
        worst = fmax(worst, gc_check(emb_loss, &c, c.p.proj.w, c.p.proj.dw, (size_t)Cl * C, 200, "emb.proj").max_rel);
        if (conv) {
            worst = fmax(worst, gc_check(emb_loss, &c, c.p.conv_w, c.p.dconv_w, (size_t)Cl * Cl * k,
                                         200, "emb.conv.weight").max_rel);
            worst = fmax(worst, gc_check(emb_loss, &c, c.p.conv_b, c.p.dconv_b, Cl, 200,
                                         "emb.conv.bias").max_rel);
        }
    }
    printf("embedding factorized=%d conv=%d k=%d B=%d T=%d drop=%.2f: max rel err %.3e\n",
           factorized, conv, k, B, T, pd, worst);
    assert_true(worst <= 1e-6);
    free(c.p.table), free(c.p.dtable), free(c.p.conv_w), free(c.p.dconv_w), free(c.p.conv_b);
    free(c.p.dconv_b), free(c.p.proj.w), free(c.p.proj.dw);
    free(c.ids), free(c.out), free(c.G), free(c.act), free(scr);
}

static void test_plain_embedding_gradcheck_repeated_ids(void **s) {
    (void)s;
    run_emb(0, 0, 0, 1, 5, 9, 12, 0, 0, 1);
    run_emb(0, 0, 0, 2, 7, 11, 20, 0, 0.25f, 2);
}

static void test_factorized_conv_odd_and_even_kernel_gradcheck(void **s) {
    (void)s;
    run_emb(1, 1, 3, 1, 5, 9, 12, 6, 0, 3);
    run_emb(1, 1, 4, 2, 7, 11, 20, 5, 0, 4);
    run_emb(1, 1, 1, 2, 3, 6, 8, 4, 0.25f, 5);
    run_emb(1, 0, 3, 2, 7, 11, 20, 5, 0, 6);
}

/* Even kernel: padding k/2 on both sides and the first T outputs, by hand for k = 2. */
static void test_conv_even_kernel_keeps_first_T_outputs(void **state) {
    (void)state;
    real x[3] = {1, 2, 3}, w[2] = {10, 100}, b[1] = {0.5}, y[3];
    tb_backend_cpu()->dense.conv1d_fwd(y, x, w, b, 1, 3, 1, 2);
    /* padded [0, 1, 2, 3, 0]: y_t = 10 xp[t] + 100 xp[t+1] */
    assert_true(y[0] == 0.5 + 100 * 1);
    assert_true(y[1] == 0.5 + 10 * 1 + 100 * 2);
    assert_true(y[2] == 0.5 + 10 * 2 + 100 * 3);
}

static void test_embedding_rejects_bad_ids(void **state) {
    (void)state;
    int32_t ids[3] = {0, 5, 9};
    tb_err err;
    assert_int_equal(embedding_check_ids(&err, ids, 3, 10), 0);
    ids[1] = 10;
    assert_int_equal(embedding_check_ids(&err, ids, 3, 10), -1);
    assert_non_null(strstr(err.msg, "ids[1]"));
    ids[1] = -1;
    assert_int_equal(embedding_check_ids(&err, ids, 3, 10), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_embedding_gradcheck_repeated_ids),
        cmocka_unit_test(test_factorized_conv_odd_and_even_kernel_gradcheck),
        cmocka_unit_test(test_conv_even_kernel_keeps_first_T_outputs),
        cmocka_unit_test(test_embedding_rejects_bad_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
