/* Determinism (STYLE.md): the same seed gives bitwise-identical losses over 10 steps
 * (dropout on, gradient accumulation 2); save -> reload -> continue gives the same
 * losses, weights and AdamW moments as an uninterrupted run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>
#include "train_util.h"

enum { B = 2, T = 24, STEPS = 10, ACC = 2 };

static void run_steps(tb_trainer *tr, int from, int to, double *losses) {
    int V = (int)tr->rc.model.vocab_size;
    int32_t ids[ACC][B * T], labels[ACC][B * T];
    tb_err err = {{0}};
    for (int s = from; s < to; s++) {
        tb_batch mb[ACC];
        for (int a = 0; a < ACC; a++) {
            test_make_batch(ids[a], labels[a], B, T, V, (uint32_t)(s * ACC + a));
            mb[a] = (tb_batch){ids[a], labels[a], NULL, B, T};
        }
        tb_step_result r;
        if (tb_trainer_step(tr, mb, ACC, &r, &err)) fail_msg("%s", err.msg);
        assert_int_equal(r.status, TB_OPTIM_APPLIED);
        losses[s] = r.loss;
    }
}

static void make(tb_trainer *tr) {
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(test_small_config(&rc, &err), 0);
    if (tb_trainer_create(tr, &rc, tb_backend_cpu(), B, T, &err)) fail_msg("%s", err.msg);
}

static void test_same_seed_gives_bitwise_identical_losses(void **s) {
    (void)s;
    tb_trainer a, b;
    make(&a);
    make(&b);
    double la[STEPS], lb[STEPS];
    run_steps(&a, 0, STEPS, la);
    run_steps(&b, 0, STEPS, lb);
    for (int i = 0; i < STEPS; i++) printf("step %d loss %.9g\n", i, la[i]);
    assert_memory_equal(la, lb, sizeof la);
    assert_memory_equal(a.model.p.param, b.model.p.param, a.model.p.total * sizeof(real));
    /* and it trained: the weights moved */
    tb_trainer c;
    make(&c);
    assert_memory_not_equal(a.model.p.param, c.model.p.param, a.model.p.total * sizeof(real));
    tb_trainer_free(&a);
    tb_trainer_free(&b);
    tb_trainer_free(&c);
}

/* model.activation_recompute: the backward replays each layer's forward from its input;
 * losses, weights and moments equal the stored-activation run bit for bit (dropout on,
 * every mixer kind of the tiny pattern, two loops), in a smaller arena. */
static void test_activation_recompute_is_bitwise_identical(void **s) {
    (void)s;
    tb_trainer a;
    make(&a);
    double la[STEPS];
    run_steps(&a, 0, STEPS, la);
    for (int mode = TB_CFG_RECOMPUTE_ALL; mode <= TB_CFG_RECOMPUTE_ODE; mode++) {
        tb_trainer b;
        tb_run_config rc;
        tb_err err = {{0}};
        assert_int_equal(test_small_config(&rc, &err), 0);
        rc.model.activation_recompute = mode;
        if (tb_trainer_create(&b, &rc, tb_backend_cpu(), B, T, &err)) fail_msg("%s", err.msg);
        printf("arena %zu bytes stored, %zu with recompute mode %d\n", tb_model_arena_bytes(&a.model),
               tb_model_arena_bytes(&b.model), mode);
        assert_true(tb_model_arena_bytes(&b.model) < tb_model_arena_bytes(&a.model));
        /* The memory report's parts cover the arena exactly; the recompute region is
         * there only with recompute. */
        const tb_model *pm[2] = {&a.model, &b.model};
        for (int k = 0; k < 2; k++) {
            size_t sum = 0;
            for (int part = 0; part < TB_ARENA_PARTS; part++) sum += tb_model_arena_part_bytes(pm[k], part);
            assert_int_equal(sum, tb_model_arena_bytes(pm[k]));
            assert_int_equal(tb_model_arena_part_bytes(pm[k], TB_ARENA_RECOMPUTE) > 0, k == 1);
        }
        double lb[STEPS];
        run_steps(&b, 0, STEPS, lb);
        assert_memory_equal(la, lb, sizeof la);
        assert_memory_equal(a.model.p.param, b.model.p.param, a.model.p.total * sizeof(real));
        assert_memory_equal(a.model.p.m, b.model.p.m, a.model.p.total * sizeof(real));
        assert_memory_equal(a.model.p.v, b.model.p.v, a.model.p.total * sizeof(real));
        tb_trainer_free(&b);
    }
    tb_trainer_free(&a);
}

static void test_save_reload_continue_equals_uninterrupted(void **s) {
    (void)s;
    tb_trainer a, b, c;
    tb_err err = {{0}};
    make(&a);
    make(&b);
    double la[STEPS], lb[STEPS];
    run_steps(&a, 0, STEPS, la);
    run_steps(&b, 0, STEPS / 2, lb);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/det_ckpt_%d", TB_BINARY_DIR, (int)getpid());
    tb_st_meta cursor = {"data_cursor", "5"};
    if (tb_trainer_save(&b, dir, &cursor, 1, &err)) fail_msg("%s", err.msg);
    tb_trainer_free(&b);
    make(&c); /* fresh process state: different from b's */
    tb_st_meta meta[TB_TRAINER_META_MAX];
    int n = 0;
    if (tb_trainer_load(&c, dir, meta, TB_TRAINER_META_MAX, &n, &err)) fail_msg("%s", err.msg);
    assert_string_equal(tb_st_meta_get(meta, n, "data_cursor"), "5");
    assert_int_equal(c.opt.step, STEPS / 2);
    run_steps(&c, STEPS / 2, STEPS, lb);
    assert_memory_equal(la, lb, sizeof la);
    size_t bytes = a.model.p.total * sizeof(real);
    assert_memory_equal(a.model.p.param, c.model.p.param, bytes);
    assert_memory_equal(a.model.p.m, c.model.p.m, bytes);
    assert_memory_equal(a.model.p.v, c.model.p.v, bytes);
    assert_int_equal(a.micro_seen, c.micro_seen);
    char path[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    unlink(path);
    rmdir(dir);
    tb_trainer_free(&a);
    tb_trainer_free(&c);
}

/* Parallel micro-batches (tb_trainer_set_parallel): the first step's loss equals the
 * sequential one bit for bit (same weights, same forward), the update equals it up to the
 * order of the gradient sum, and running the micro-batches one at a time (the calling
 * thread solo, so core.threads() is 1) gives the same bits as running them at once. */
static void test_parallel_micro_batches_match_sequential_and_ignore_threads(void **s) {
    (void)s;
    tb_trainer a, b, c;
    tb_err err = {{0}};
    make(&a);
    make(&b);
    make(&c);
    if (tb_trainer_set_parallel(&b, ACC, &err) || tb_trainer_set_parallel(&c, ACC, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(b.nrep, ACC - 1);
    assert_true(b.model.be->core.threads() >= 2); /* TB_CPU_THREADS=3 below */
    double la[STEPS], lb[STEPS], lc[STEPS];
    run_steps(&a, 0, 1, la);
    run_steps(&b, 0, 1, lb);
    assert_memory_equal(&la[0], &lb[0], sizeof la[0]);
    double lr = 0, dmax = 0;
    for (int g = 0; g < TB_GROUP_COUNT; g++)
        if (a.rc.training.group[g].lr > lr) lr = a.rc.training.group[g].lr;
    for (size_t i = 0; i < a.model.p.total; i++) {
        double d = fabs((double)a.model.p.param[i] - (double)b.model.p.param[i]);
        if (d > dmax) dmax = d;
    }
    printf("parallel vs sequential after one step: max |dw| %.3g (peak lr %.3g)\n", dmax, lr);
    assert_true(dmax <= 1e-3 * lr);
    run_steps(&b, 1, STEPS, lb);
    c.model.be->core.thread_solo(1);
    assert_int_equal(c.model.be->core.threads(), 1);
    run_steps(&c, 0, STEPS, lc);
    c.model.be->core.thread_solo(0);
    assert_memory_equal(lb, lc, sizeof lb);
    assert_memory_equal(b.model.p.param, c.model.p.param, b.model.p.total * sizeof(real));
    /* a bad micro-batch in a parallel step: an error naming it, gradients cleared */
    int V = (int)b.rc.model.vocab_size;
    int32_t ids[ACC][B * T], labels[ACC][B * T];
    tb_batch mb[ACC];
    for (int i = 0; i < ACC; i++) {
        test_make_batch(ids[i], labels[i], B, T, V, (uint32_t)(100 + i));
        mb[i] = (tb_batch){ids[i], labels[i], NULL, B, T};
    }
    ids[1][3] = V + 7;
    tb_step_result r;
    assert_int_equal(tb_trainer_step(&b, mb, ACC, &r, &err), -1);
    printf("bad micro-batch: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "micro-batch 1"));
    for (size_t i = 0; i < b.model.p.total; i++) assert_true(b.model.p.grad[i] == 0);
    tb_trainer_free(&a);
    tb_trainer_free(&b);
    tb_trainer_free(&c);
}

int main(void) {
    setenv("TB_CPU_THREADS", "3", 1); /* before the CPU backend starts its pool */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parallel_micro_batches_match_sequential_and_ignore_threads),
        cmocka_unit_test(test_same_seed_gives_bitwise_identical_losses),
        cmocka_unit_test(test_activation_recompute_is_bitwise_identical),
        cmocka_unit_test(test_save_reload_continue_equals_uninterrupted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
