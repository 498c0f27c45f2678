/* The five norms (MODEL.md section 3): fp64 gradient checks of inputs and every parameter
 * tensor on two shapes (odd C included), parameters moved off their init so every term
 * is exercised; and the accumulation property. */
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
#include "layers/norm.h"

typedef struct norm_ctx {
    tb_norm p;
    real *x, *y, *act, *G;
    size_t n;
} norm_ctx;

static double norm_loss(void *v) {
    norm_ctx *c = v;
    norm_forward(tb_backend_cpu(), c->y, c->act, c->x, &c->p, c->n);
    return gc_dot(c->y, c->G, c->n * c->p.C);
}

static void run_norm(tb_norm_type type, size_t n, int C, uint32_t tag, double *worst) {
    norm_ctx c;
    memset(&c, 0, sizeof(c));
    c.n = n;
    c.p.type = type;
    c.p.C = C;
    int np = norm_param_count(type);
    for (int i = 0; i < np; i++) {
        size_t sz = norm_param_size(type, i, C);
        c.p.p[i] = malloc(sizeof(real) * sz);
        c.p.dp[i] = calloc(sz, sizeof(real));
        norm_param_init(type, i, c.p.p[i], C);
        real *noise = malloc(sizeof(real) * sz);
        gc_fill_uniform(noise, sz, 0.3, 5, tag * 8 + (uint32_t)i);
        for (size_t j = 0; j < sz; j++) c.p.p[i][j] += noise[j];
        free(noise);
    }
    c.x = malloc(sizeof(real) * n * C);
    c.y = malloc(sizeof(real) * n * C);
    c.G = malloc(sizeof(real) * n * C);
    c.act = malloc(sizeof(real) * (norm_act_count(type, n) + 1));
    gc_fill_uniform(c.x, n * C, 1.5, 6, tag);
    gc_fill_uniform(c.G, n * C, 1.0, 7, tag);
    norm_loss(&c);
    real *dx = calloc(n * C, sizeof(real));
    norm_backward(tb_backend_cpu(), dx, c.G, c.act, c.x, &c.p, n);
    char name[64];
    snprintf(name, sizeof(name), "%s.x (n=%zu C=%d)", norm_type_name(type), n, C);
    gc_result r = gc_check(norm_loss, &c, c.x, dx, n * C, 300, name);
    if (r.max_rel > *worst) *worst = r.max_rel;
    assert_true(r.max_rel <= 1e-6);
    for (int i = 0; i < np; i++) {
        snprintf(name, sizeof(name), "%s.%s", norm_type_name(type), norm_param_name(type, i));
        r = gc_check(norm_loss, &c, c.p.p[i], c.p.dp[i], norm_param_size(type, i, C), 300, name);
        if (r.max_rel > *worst) *worst = r.max_rel;
        assert_true(r.max_rel <= 1e-6);
    }
    /* accumulation: a second backward doubles every gradient */
    real *dx1 = malloc(sizeof(real) * n * C);
    memcpy(dx1, dx, sizeof(real) * n * C);
    real *dp1[TB_NORM_MAX_PARAMS];
    for (int i = 0; i < np; i++) {
        size_t sz = norm_param_size(type, i, C);
        dp1[i] = malloc(sizeof(real) * sz);
        memcpy(dp1[i], c.p.dp[i], sizeof(real) * sz);
    }
    norm_backward(tb_backend_cpu(), dx, c.G, c.act, c.x, &c.p, n);
    for (size_t j = 0; j < n * C; j++) assert_true(fabs(dx[j] - 2 * dx1[j]) <= 1e-12 * fabs(dx1[j]));
    for (int i = 0; i < np; i++) {
        for (size_t j = 0; j < norm_param_size(type, i, C); j++)
            assert_true(fabs(c.p.dp[i][j] - 2 * dp1[i][j]) <= 1e-12 * fabs(dp1[i][j]) + 1e-300);
        free(dp1[i]), free(c.p.p[i]), free(c.p.dp[i]);
    }
    free(dx1), free(dx), free(c.x), free(c.y), free(c.G), free(c.act);
}

static void check_type(tb_norm_type type) {
    double worst = 0;
    run_norm(type, 5, 12, 1, &worst);
    run_norm(type, 14, 7, 2, &worst);
    printf("%s: max rel err %.3e\n", norm_type_name(type), worst);
}

/* norm_backward_to: base NULL gives the bits of a zero fill then norm_backward, without
 * reading dx (NaN there stays out); a base buffer the bits of a copy then norm_backward;
 * base == dx is norm_backward; the parameter gradients add the same either way. */
static void test_backward_to_matches_fill_or_copy_then_backward(void **state) {
    (void)state;
    const size_t n = 9;
    const int C = 13;
    for (int type = 0; type < 5; type++) {
        tb_norm p;
        memset(&p, 0, sizeof p);
        p.type = (tb_norm_type)type, p.C = C;
        int np = norm_param_count(p.type);
        real *dpa[TB_NORM_MAX_PARAMS], *dpb[TB_NORM_MAX_PARAMS];
        for (int i = 0; i < np; i++) {
            size_t sz = norm_param_size(p.type, i, C);
            p.p[i] = malloc(sizeof(real) * sz);
            gc_fill_uniform(p.p[i], sz, 0.4, 11, (uint32_t)(type * 8 + i));
            for (size_t j = 0; j < sz; j++) p.p[i][j] += R(1.0);
            dpa[i] = calloc(sz, sizeof(real)), dpb[i] = calloc(sz, sizeof(real));
        }
        real *x = malloc(sizeof(real) * n * C), *y = malloc(sizeof(real) * n * C),
             *g = malloc(sizeof(real) * n * C), *base = malloc(sizeof(real) * n * C),
             *act = malloc(sizeof(real) * (norm_act_count(p.type, n) + 1)),
             *want = malloc(sizeof(real) * n * C), *got = malloc(sizeof(real) * n * C);
        gc_fill_uniform(x, n * C, 1.5, 12, (uint32_t)type);
        gc_fill_uniform(g, n * C, 1.0, 13, (uint32_t)type);
        gc_fill_uniform(base, n * C, 1.0, 14, (uint32_t)type);
        norm_forward(tb_backend_cpu(), y, act, x, &p, n);
        for (int form = 0; form < 3; form++) { /* base NULL, another buffer, dx itself */
            for (int i = 0; i < np; i++) p.dp[i] = dpa[i];
            if (form == 1) memcpy(want, base, sizeof(real) * n * C);
            else if (form == 2) memcpy(want, g, sizeof(real) * n * C);
            else memset(want, 0, sizeof(real) * n * C);
            norm_backward(tb_backend_cpu(), want, g, act, x, &p, n);
            for (int i = 0; i < np; i++) p.dp[i] = dpb[i];
            if (form == 2) memcpy(got, g, sizeof(real) * n * C);
            else for (size_t j = 0; j < n * C; j++) got[j] = (real)NAN;
            norm_backward_to(tb_backend_cpu(), got, form == 0 ? NULL : form == 1 ? base : got, g, act, x,
                             &p, n);
            assert_memory_equal(got, want, sizeof(real) * n * C);
            for (int i = 0; i < np; i++)
                assert_memory_equal(dpb[i], dpa[i], sizeof(real) * norm_param_size(p.type, i, C));
        }
        for (int i = 0; i < np; i++) free(p.p[i]), free(dpa[i]), free(dpb[i]);
        free(x), free(y), free(g), free(base), free(act), free(want), free(got);
    }
}

static void test_dynamic_tanh_gradcheck(void **s) { (void)s; check_type(TB_NORM_DYNAMIC_TANH); }
static void test_dyt_gradcheck(void **s) { (void)s; check_type(TB_NORM_DYT); }
static void test_derf_gradcheck(void **s) { (void)s; check_type(TB_NORM_DERF); }
static void test_layer_norm_gradcheck(void **s) { (void)s; check_type(TB_NORM_LAYER_NORM); }
static void test_rms_norm_gradcheck(void **s) { (void)s; check_type(TB_NORM_RMS_NORM); }

/* dynamic_tanh uses the unbiased std with eps outside the sqrt: check one row by hand. */
static void test_dynamic_tanh_unbiased_std_eps_outside_sqrt(void **state) {
    (void)state;
    real x[4] = {1, 2, 3, 6}, y[4], act[2], alpha[4] = {1, 1, 1, 1}, beta[4] = {0, 0, 0, 0};
    real da[4], db[4];
    tb_norm p = {.type = TB_NORM_DYNAMIC_TANH, .C = 4, .p = {alpha, beta}, .dp = {da, db}};
    norm_forward(tb_backend_cpu(), y, act, x, &p, 1);
    double sd = sqrt((4.0 + 1.0 + 0.0 + 9.0) / 3.0); /* mean 3 */
    for (int j = 0; j < 4; j++) assert_true(fabs(y[j] - tanh((x[j] - 3.0) / (sd + 1e-6))) < 1e-15);
}

static void test_norm_names_and_counts(void **state) {
    (void)state;
    tb_norm_type t;
    assert_int_equal(norm_type_parse("derf", &t), 0);
    assert_int_equal(t, TB_NORM_DERF);
    assert_int_equal(norm_type_parse("batch_norm", &t), -1);
    assert_string_equal(norm_param_name(TB_NORM_DERF, 1), "s");
    assert_int_equal(norm_param_total(TB_NORM_DERF, 128), 2 + 2 * 128);
    assert_int_equal(norm_param_total(TB_NORM_DYT, 128), 1 + 2 * 128);
    assert_int_equal(norm_param_total(TB_NORM_DYNAMIC_TANH, 128), 2 * 128);
    assert_int_equal(norm_param_total(TB_NORM_RMS_NORM, 128), 128);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dynamic_tanh_gradcheck),
        cmocka_unit_test(test_dyt_gradcheck),
        cmocka_unit_test(test_derf_gradcheck),
        cmocka_unit_test(test_layer_norm_gradcheck),
        cmocka_unit_test(test_rms_norm_gradcheck),
        cmocka_unit_test(test_dynamic_tanh_unbiased_std_eps_outside_sqrt),
        cmocka_unit_test(test_norm_names_and_counts),
        cmocka_unit_test(test_backward_to_matches_fill_or_copy_then_backward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
