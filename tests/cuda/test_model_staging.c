/* The model's staging paths for backends whose memory is not host memory (ops_core.h's
 * memory interface with host_memory = 0), checked without a GPU: the CPU backend's ops
 * with host_memory cleared and counting memory functions. The model must then initialise
 * through a host buffer and one copy, stage the batch, read L_bal through to_host and
 * stage checkpoints, and give results bit-identical to the plain CPU backend: two
 * training steps (dropout on, MoE, ODE), then a checkpoint written from the staged side
 * and loaded into a plain one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "model/train.h"
#include "tb_rng.h"

static tb_backend staged;
static long n_alloc, n_free, n_to_device, n_to_host;

static void *st_alloc(size_t bytes) {
    n_alloc++;
    return calloc(bytes ? bytes : 1, 1);
}
static void st_free(void *p) {
    n_free++;
    free(p);
}
static void st_to_device(void *dst, const void *src, size_t bytes) {
    n_to_device++;
    memcpy(dst, src, bytes);
}
static void st_to_host(void *dst, const void *src, size_t bytes) {
    n_to_host++;
    memcpy(dst, src, bytes);
}

static const tb_backend *staged_backend(void) {
    staged = *tb_backend_cpu();
    staged.name = "staged-cpu";
    staged.core.host_memory = 0;
    staged.core.mem_alloc = st_alloc;
    staged.core.mem_free = st_free;
    staged.core.to_device = st_to_device;
    staged.core.to_host = st_to_host;
    return &staged;
}

static void make_batch(tb_batch *b, int32_t *ids, int32_t *labels, uint8_t *mask, int B, int T,
                       int V, uint32_t k) {
    tb_rng r;
    tb_rng_init(&r, 3, TB_RNG_TEST, k, 0, 0);
    size_t n = (size_t)B * T;
    for (size_t i = 0; i < n; i++) {
        ids[i] = (int32_t)tb_rng_below(&r, (uint32_t)V);
        labels[i] = i % 3 == 0 ? (int32_t)tb_rng_below(&r, (uint32_t)V) : -100;
        mask[i] = i % (size_t)T != (size_t)T - 1;
    }
    *b = (tb_batch){ids, labels, mask, B, T};
}

static void test_staged_backend_trains_and_checkpoints_bit_identical_to_host(void **s) {
    (void)s;
    tb_err err = {{0}};
    tb_run_config rc;
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    rc.model.lambda_ode = 0.1;
    rc.training.seed = 99;
    const int B = 2, T = 16, V = (int)rc.model.vocab_size;
    static tb_trainer host, st, back;
    if (tb_trainer_create(&host, &rc, tb_backend_cpu(), B, T, &err)) fail_msg("%s", err.msg);
    if (tb_trainer_create(&st, &rc, staged_backend(), B, T, &err)) fail_msg("%s", err.msg);
    /* params + grad + m + v + codes + scales, arena, L_bal/staging, the ODE's k1 sums */
    assert_int_equal(n_alloc, 9);
    assert_true(n_to_device >= 1); /* the initialisation went through a host buffer */
    const tb_params *ph = &host.model.p, *ps = &st.model.p;
    size_t bytes = ph->total * sizeof(real);
    assert_memory_equal(ph->param, ps->param, bytes);
    size_t n = (size_t)B * T;
    int32_t *ids = malloc(n * 4), *labels = malloc(n * 4);
    uint8_t *mask = malloc(n);
    assert_non_null(ids);
    assert_non_null(labels);
    assert_non_null(mask);
    for (int step = 0; step < 2; step++) {
        tb_batch b;
        make_batch(&b, ids, labels, mask, B, T, V, (uint32_t)step);
        long dev_before = n_to_device, host_before = n_to_host;
        tb_step_result rh, rs;
        assert_int_equal(tb_trainer_step(&host, &b, 1, &rh, &err), 0);
        assert_int_equal(tb_trainer_step(&st, &b, 1, &rs, &err), 0);
        assert_true(n_to_device >= dev_before + 3); /* ids, labels, mask */
        assert_true(n_to_host > host_before);       /* L_bal of each logical layer */
        printf("step %d: loss %.9f / %.9f, l_bal %.9g / %.9g\n", step, rh.loss, rs.loss,
               rh.l_bal, rs.l_bal);
        assert_memory_equal(&rh.loss, &rs.loss, sizeof rh.loss);
        assert_memory_equal(&rh.l_bal, &rs.l_bal, sizeof rh.l_bal);
        assert_memory_equal(&rh.l_ode, &rs.l_ode, sizeof rh.l_ode);
        assert_true(rh.l_bal > 0);
        assert_memory_equal(ph->param, ps->param, bytes);
        assert_memory_equal(ph->m, ps->m, bytes);
    }
    char dir[] = "/tmp/tb_staging_XXXXXX";
    assert_non_null(mkdtemp(dir));
    long host_before = n_to_host;
    if (tb_trainer_save(&st, dir, NULL, 0, &err)) fail_msg("%s", err.msg);
    assert_int_equal(n_to_host, host_before + 3); /* param, m, v */
    if (tb_trainer_create(&back, &rc, tb_backend_cpu(), B, T, &err)) fail_msg("%s", err.msg);
    if (tb_trainer_load(&back, dir, NULL, 0, NULL, &err)) fail_msg("%s", err.msg);
    assert_memory_equal(back.model.p.param, ps->param, bytes);
    assert_memory_equal(back.model.p.m, ps->m, bytes);
    assert_memory_equal(back.model.p.v, ps->v, bytes);
    /* and back into a staged trainer */
    long dev_before = n_to_device;
    tb_trainer_free(&back);
    if (tb_trainer_create(&back, &rc, &staged, B, T, &err)) fail_msg("%s", err.msg);
    dev_before = n_to_device;
    if (tb_trainer_load(&back, dir, NULL, 0, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(n_to_device, dev_before + 3);
    assert_memory_equal(back.model.p.param, ps->param, bytes);
    assert_memory_equal(back.model.p.v, ps->v, bytes);
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    unlink(path);
    rmdir(dir);
    free(ids);
    free(labels);
    free(mask);
    tb_trainer_free(&back);
    tb_trainer_free(&host);
    tb_trainer_free(&st);
    assert_int_equal(n_alloc, n_free);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_staged_backend_trains_and_checkpoints_bit_identical_to_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
