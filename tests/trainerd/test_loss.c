/* Masked cross-entropy and accuracy (MODEL.md section 8): hand-computed small cases,
 * ignored labels, no supervised position, argmax ties (lowest index), fp64 gradient
 * check of the logits and the accumulation property. */
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
#include "layers/loss.h"

static void test_cross_entropy_hand_case_ignore_and_ties(void **state) {
    (void)state;
    /* row 0: [1, 2, 2] label 1: tie between 1 and 2 -> argmax 1 = label (correct);
     * row 1: ignored; row 2: [0, 0, 0] label 2: argmax 0 (wrong). */
    real z[9] = {1, 2, 2, 5, -1, 0, 0, 0, 0}, lse[3];
    int32_t y[3] = {1, -100, 2};
    tb_ce_result r;
    loss_forward(tb_backend_cpu(), &r, lse, z, y, 3, 3);
    double ce0 = log(exp(1) + 2 * exp(2)) - 2, ce2 = log(3.0);
    assert_int_equal(r.count, 2);
    assert_int_equal(r.correct, 1);
    assert_true(fabs(r.loss - (ce0 + ce2) / 2) < 1e-14);
    assert_true(r.accuracy == 0.5);
    int32_t none[3] = {-100, -100, -100};
    loss_forward(tb_backend_cpu(), &r, lse, z, none, 3, 3);
    assert_true(r.loss == 0 && r.accuracy == 0 && r.count == 0);
    real dz[9] = {7, 7, 7, 7, 7, 7, 7, 7, 7}; /* no supervised row: zeros written */
    loss_backward(tb_backend_cpu(), dz, lse, z, none, loss_count_labels(none, 3, 3), 1, 3, 3);
    for (int i = 0; i < 9; i++) assert_true(dz[i] == 0);
    tb_err err;
    assert_int_equal(loss_check_labels(&err, y, 3, 3), 0);
    y[0] = 3;
    assert_int_equal(loss_check_labels(&err, y, 3, 3), -1);
}

typedef struct ce_ctx {
    real *z, *lse;
    int32_t *y;
    size_t n;
    int V;
} ce_ctx;

static double ce_loss(void *v) {
    ce_ctx *c = v;
    tb_ce_result r;
    loss_forward(tb_backend_cpu(), &r, c->lse, c->z, c->y, c->n, c->V);
    return r.loss;
}

static void test_cross_entropy_gradcheck_written_and_in_place(void **state) {
    (void)state;
    size_t shapes[2][2] = {{5, 7}, {13, 50}};
    for (int s = 0; s < 2; s++) {
        ce_ctx c = {.n = shapes[s][0], .V = (int)shapes[s][1]};
        size_t m = c.n * c.V;
        c.z = malloc(sizeof(real) * m), c.lse = malloc(sizeof(real) * c.n);
        c.y = malloc(sizeof(int32_t) * c.n);
        gc_fill_uniform(c.z, m, 3.0, 51, (uint32_t)s);
        for (size_t t = 0; t < c.n; t++) c.y[t] = t % 3 == 1 ? -100 : (int32_t)((t * 5) % c.V);
        ce_loss(&c);
        real *dz = calloc(m, sizeof(real));
        loss_backward(tb_backend_cpu(), dz, c.lse, c.z, c.y, loss_count_labels(c.y, c.n, c.V), 1.0,
                      c.n, c.V);
        gc_result r = gc_check(ce_loss, &c, c.z, dz, m, 400, "ce.logits");
        printf("cross-entropy n=%zu V=%d: max rel err %.3e\n", c.n, c.V, r.max_rel);
        assert_true(r.max_rel <= 1e-6);
        /* written, not added: a second call over a gradient full of garbage gives the same
         * bits, and so does the call in place over the logits (the model's one buffer) */
        real *dz1 = malloc(sizeof(real) * m);
        for (size_t i = 0; i < m; i++) dz1[i] = (real)(1e3 + (double)i);
        loss_backward(tb_backend_cpu(), dz1, c.lse, c.z, c.y, loss_count_labels(c.y, c.n, c.V), 1.0,
                      c.n, c.V);
        assert_memory_equal(dz1, dz, sizeof(real) * m);
        real *zin = malloc(sizeof(real) * m);
        memcpy(zin, c.z, sizeof(real) * m);
        loss_backward(tb_backend_cpu(), zin, c.lse, zin, c.y, loss_count_labels(c.y, c.n, c.V), 1.0,
                      c.n, c.V);
        assert_memory_equal(zin, dz, sizeof(real) * m);
        free(dz), free(dz1), free(zin), free(c.z), free(c.lse), free(c.y);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cross_entropy_hand_case_ignore_and_ties),
        cmocka_unit_test(test_cross_entropy_gradcheck_written_and_in_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
