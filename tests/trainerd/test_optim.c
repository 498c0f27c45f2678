/* Core ops and the optimizer: the GEMM equals the naive loop bitwise (every transpose,
 * odd sizes, K chunking, accumulate-onto and alpha/beta forms); AdamW equals its
 * formula (torch.optim.AdamW semantics); warm-up + cosine to the floor; global-norm
 * clipping; accumulation averaging; non-finite skip, lr x 0.75, give-up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "gradcheck.h"
#include "model/optim.h"

static void naive(double *c, const double *a, const double *b, int M, int N, int K, int ta,
                  int tb, int lda, int ldb, int ldc, double alpha, double beta) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double *cp = &c[(size_t)i * ldc + j];
            int onto = alpha == 1 && beta == 1;
            double acc = onto ? *cp : 0;
            for (int k = 0; k < K; k++)
                acc = fma(ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k],
                          tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j], acc);
            *cp = onto ? acc : beta == 0 ? alpha * acc : alpha * acc + beta * *cp;
        }
}

static void test_gemm_equals_naive_loop_bitwise(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    const int shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {13, 17, 9}, {33, 40, 300}, {64, 129, 257},
                             {4, 16, 600}, {130, 3, 31}};
    const double ab[][2] = {{1, 0}, {1, 1}, {0.5, 0}, {2, -0.25}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (size_t k = 0; k < sizeof ab / sizeof ab[0]; k++) {
                    int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
                    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb,
                           nc = (size_t)M * ldc;
                    double *a = malloc(na * 8), *b = malloc(nb * 8), *c1 = malloc(nc * 8),
                           *c2 = malloc(nc * 8);
                    gc_fill_uniform(a, na, 1, 1, (uint32_t)si);
                    gc_fill_uniform(b, nb, 1, 2, (uint32_t)si);
                    gc_fill_uniform(c1, nc, 1, 3, (uint32_t)si);
                    memcpy(c2, c1, nc * 8);
                    be->core.gemm(c1, a, b, M, N, K, ta, tb, lda, ldb, ldc, ab[k][0], ab[k][1], be);
                    naive(c2, a, b, M, N, K, ta, tb, lda, ldb, ldc, ab[k][0], ab[k][1]);
                    if (memcmp(c1, c2, nc * 8))
                        fail_msg("gemm M%d N%d K%d ta%d tb%d alpha %g beta %g differs", M, N, K,
                                 ta, tb, ab[k][0], ab[k][1]);
                    free(a);
                    free(b);
                    free(c1);
                    free(c2);
                }
}

static void test_sumsq_and_all_finite(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    double x[7] = {1, -2, 3, 0.5, 0, -1, 2};
    assert_true(fabs(be->core.sumsq(x, 7) - 19.25) < 1e-12);
    /* sumsq_many: each range as sumsq gives it, an empty range 0 */
    const size_t off[3] = {0, 2, 5}, num[3] = {2, 0, 2};
    double many[3] = {-1, -1, -1};
    be->core.sumsq_many(many, x, off, num, 3);
    assert_true(many[0] == be->core.sumsq(x, 2));
    assert_true(many[1] == 0.0);
    assert_true(many[2] == be->core.sumsq(x + 5, 2));
    assert_true(be->core.all_finite(x, 7));
    x[4] = INFINITY;
    assert_false(be->core.all_finite(x, 7));
    x[4] = NAN;
    assert_false(be->core.all_finite(x, 7));
}

static void test_adamw_matches_formula(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    double w[3] = {0.5, -1, 2}, m[3] = {0.1, 0, -0.2}, v[3] = {0.01, 0, 0.04}, g[3] = {1, -3, 0.25};
    double lr = 1e-3, wd = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-8, gs = 0.5;
    int t = 3;
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    double ew[3];
    for (int i = 0; i < 3; i++) {
        double gi = g[i] * gs, mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
        ew[i] = w[i] * (1 - lr * wd) - lr / bc1 * mi / (sqrt(vi) / sqrt(bc2) + eps);
    }
    be->core.adamw(w, m, v, g, 3, lr, wd, b1, b2, eps, bc1, bc2, gs);
    for (int i = 0; i < 3; i++) assert_true(fabs(w[i] - ew[i]) <= 1e-15 * (1 + fabs(ew[i])));
}

static void test_schedule_warmup_cosine_floor(void **s) {
    (void)s;
    tb_train_config t;
    memset(&t, 0, sizeof t);
    t.scheduler_total_steps = 100;
    t.scheduler_warmup_ratio = 0.1;
    t.min_lr_ratio = 0.1;
    assert_true(fabs(tb_sched_factor(&t, 0) - 0.1) < 1e-15);  /* (0+1)/10 */
    assert_true(fabs(tb_sched_factor(&t, 9) - 1.0) < 1e-15);
    assert_true(fabs(tb_sched_factor(&t, 10) - 1.0) < 1e-15); /* cosine starts at the peak */
    assert_true(fabs(tb_sched_factor(&t, 55) - 0.55) < 1e-12); /* halfway: (1 + 0.1) / 2 */
    assert_true(fabs(tb_sched_factor(&t, 100) - 0.1) < 1e-15);
    assert_true(fabs(tb_sched_factor(&t, 100000) - 0.1) < 1e-15); /* never to zero */
    for (int i = 11; i < 100; i++) assert_true(tb_sched_factor(&t, i) < tb_sched_factor(&t, i - 1));
    t.scheduler_type = 1; /* constant */
    assert_true(tb_sched_factor(&t, 50) == 1.0);
}

static void small_params(tb_params *p, tb_run_config *rc) {
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(rc, "tiny", &err), 0);
    rc->model.vocab_size = 20;
    rc->model.hidden_size = 16;
    rc->model.factorized_embedding_dim = 8;
    rc->model.ffn_hidden_size = 16;
    rc->model.num_layers = 1;
    rc->model.layer_pattern.count = 1;
    assert_int_equal(tb_run_config_finish(rc, &err), 0);
    assert_int_equal(tb_params_build(p, &rc->model, &err), 0);
    assert_int_equal(tb_params_alloc(p, &err), 0);
    tb_params_init(p, 3);
}

static void test_clipping_accumulation_and_groups(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    tb_run_config rc;
    tb_params p, q;
    small_params(&p, &rc);
    small_params(&q, &rc);
    rc.training.scheduler_warmup_ratio = 0;
    /* Gradients summed over 2 micro-batches with a large norm. */
    gc_fill_uniform(p.grad, p.total, 1.0, 9, 0);
    double ss = 0;
    for (size_t i = 0; i < p.total; i++) ss += p.grad[i] * p.grad[i];
    double norm = sqrt(ss) / 2;
    assert_true(norm > 1);
    memcpy(q.grad, p.grad, p.total * sizeof(double));
    tb_optim o;
    tb_optim_init(&o);
    tb_optim_report rep;
    assert_int_equal(tb_optim_step(&o, be, &p, &rc.training, 2, 1, &rep), TB_OPTIM_APPLIED);
    assert_true(fabs(rep.grad_norm - norm) < 1e-12 * norm);
    double clip = 1.0 / (norm + 1e-6);
    assert_true(fabs(rep.clip - clip) < 1e-12 * clip);
    clip = rep.clip; /* the norm's summation order is the optimizer's own */
    /* The same update by hand, per tensor with its group's hyper-parameters. */
    for (int i = 0; i < q.count; i++) {
        const tb_tensor *t = &q.t[i];
        const tb_group_hparams *h = &rc.training.group[t->group];
        be->core.adamw(q.param + t->offset, q.m + t->offset, q.v + t->offset, q.grad + t->offset,
                       t->numel, h->lr, h->wd, h->beta1, h->beta2, h->eps, 1 - h->beta1,
                       1 - h->beta2, 0.5 * clip);
    }
    assert_memory_equal(p.param, q.param, p.total * sizeof(double));
    for (size_t i = 0; i < p.total; i++) assert_true(p.grad[i] == 0); /* zeroed */
    assert_int_equal(o.step, 1);
    tb_params_free(&p);
    tb_params_free(&q);
}

static void test_nonfinite_skips_reduces_lr_and_gives_up(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    tb_run_config rc;
    tb_params p;
    small_params(&p, &rc);
    rc.training.max_nan_retries = 3;
    double *saved = malloc(p.total * sizeof(double));
    memcpy(saved, p.param, p.total * sizeof(double));
    tb_optim o;
    tb_optim_init(&o);
    tb_optim_report rep;
    for (int k = 1; k <= 3; k++) {
        p.grad[5] = NAN;
        assert_int_equal(tb_optim_step(&o, be, &p, &rc.training, 1, 1, &rep), TB_OPTIM_SKIPPED);
        assert_memory_equal(p.param, saved, p.total * sizeof(double));
        assert_true(fabs(o.lr_scale - pow(0.75, k)) < 1e-15);
        assert_int_equal(o.step, 0);
        assert_true(p.grad[5] == 0);
    }
    /* A finite step applies at the reduced rate and resets the counter. */
    gc_fill_uniform(p.grad, p.total, 0.01, 4, 0);
    assert_int_equal(tb_optim_step(&o, be, &p, &rc.training, 1, 1, &rep), TB_OPTIM_APPLIED);
    assert_int_equal(o.nan_retries, 0);
    /* warm-up step 0 of 1000 (total 10000): 1e-4 · 0.001 · 0.75³ */
    assert_true(fabs(rep.lr - 1e-4 * 0.001 * pow(0.75, 3)) < 1e-20);
    /* Non-finite loss counts too; the 4th in a row gives up. */
    for (int k = 1; k <= 4; k++) {
        tb_optim_status st = tb_optim_step(&o, be, &p, &rc.training, 1, 0, &rep);
        assert_int_equal(st, k <= 3 ? TB_OPTIM_SKIPPED : TB_OPTIM_GAVE_UP);
    }
    free(saved);
    tb_params_free(&p);
}

/* fp16's dynamic loss scale: an overflow skips and halves the scale without touching the
 * learning rate; a finite step divides the scale out (same update as unscaled gradients);
 * growth_interval finite steps double it; at scale 1 an overflow is a non-finite step. */
static void test_loss_scale_overflow_halves_grows_and_divides_out(void **s) {
    (void)s;
    const tb_backend *be = tb_backend_cpu();
    tb_run_config rc;
    tb_params p, q;
    small_params(&p, &rc);
    small_params(&q, &rc);
    rc.training.scheduler_warmup_ratio = 0;
    rc.training.loss_scale_growth_interval = 2;
    tb_optim o, u;
    tb_optim_init(&o);
    tb_optim_init(&u);
    o.loss_scaling = 1;
    o.loss_scale = 1024;
    tb_optim_report rep;
    double *saved = malloc(p.total * sizeof(double));
    memcpy(saved, p.param, p.total * sizeof(double));
    p.grad[3] = INFINITY;
    assert_int_equal(tb_optim_step(&o, be, &p, &rc.training, 1, 1, &rep), TB_OPTIM_SKIPPED);
    assert_true(rep.overflow == 1 && rep.loss_scale == 1024);
    assert_true(o.loss_scale == 512 && o.lr_scale == 1.0 && o.nan_retries == 0 && o.step == 0);
    assert_memory_equal(p.param, saved, p.total * sizeof(double));
    /* Scaled gradients (x 512, exact in binary) give the unscaled run's update. */
    for (int k = 0; k < 2; k++) {
        gc_fill_uniform(q.grad, q.total, 0.01, 4, (uint64_t)k);
        for (size_t i = 0; i < p.total; i++) p.grad[i] = q.grad[i] * o.loss_scale;
        assert_int_equal(tb_optim_step(&o, be, &p, &rc.training, 1, 1, &rep), TB_OPTIM_APPLIED);
        tb_optim_report ru;
        assert_int_equal(tb_optim_step(&u, be, &q, &rc.training, 1, 1, &ru), TB_OPTIM_APPLIED);
        assert_true(rep.overflow == 0 && fabs(rep.grad_norm - ru.grad_norm) <= 1e-15 * ru.grad_norm);
        assert_memory_equal(p.param, q.param, p.total * sizeof(double));
    }
    assert_true(o.loss_scale == 1024); /* doubled after 2 finite steps */
    /* At scale 1 an overflow is an ordinary non-finite step. */
    o.loss_scale = 1;
    p.grad[0] = NAN;
    assert_int_equal(tb_optim_step(&o, be, &p, &rc.training, 1, 1, &rep), TB_OPTIM_SKIPPED);
    assert_true(rep.overflow == 0 && o.nan_retries == 1 && o.lr_scale == 0.75);
    free(saved);
    tb_params_free(&p);
    tb_params_free(&q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_equals_naive_loop_bitwise),
        cmocka_unit_test(test_sumsq_and_all_finite),
        cmocka_unit_test(test_adamw_matches_formula),
        cmocka_unit_test(test_schedule_warmup_cosine_floor),
        cmocka_unit_test(test_clipping_accumulation_and_groups),
        cmocka_unit_test(test_nonfinite_skips_reduces_lr_and_gives_up),
        cmocka_unit_test(test_loss_scale_overflow_halves_grows_and_divides_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
