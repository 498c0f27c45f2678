/* Position encodings (MODEL.md section 5): table values against the formulas, odd hs
 * leaves the last channel, and fp64 gradient checks of x (backward = transpose) for
 * hope, hope_hyperbolic and rope on even and odd hs. */
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
#include "layers/posenc.h"

typedef struct pe_ctx {
    real *x, *y, *tab, *G;
    tb_pos_kind kind;
    int B, T, H, hs;
} pe_ctx;

static double pe_loss(void *v) {
    pe_ctx *c = v;
    posenc_forward(tb_backend_cpu(), c->y, c->x, c->tab, c->kind, c->B, c->T, c->H, c->hs,
                   (size_t)c->H * c->hs);
    return gc_dot(c->y, c->G, (size_t)c->B * c->T * c->H * c->hs);
}

static void test_posenc_gradcheck_even_and_odd_hs(void **state) {
    (void)state;
    tb_pos_kind kinds[3] = {TB_POS_HOPE, TB_POS_HOPE_HYPERBOLIC, TB_POS_ROPE};
    int shapes[2][4] = {{1, 5, 2, 6}, {2, 7, 3, 5}};
    for (int k = 0; k < 3; k++)
        for (int s = 0; s < 2; s++) {
            pe_ctx c = {.kind = kinds[k], .B = shapes[s][0], .T = shapes[s][1], .H = shapes[s][2], .hs = shapes[s][3]};
            size_t m = (size_t)c.B * c.T * c.H * c.hs;
            c.x = malloc(sizeof(real) * m), c.y = malloc(sizeof(real) * m), c.G = malloc(sizeof(real) * m);
            c.tab = malloc(sizeof(real) * (posenc_table_count(c.T, c.hs) + 1));
            posenc_table(c.tab, c.kind, 10000, 0.01, 2, c.T, c.hs);
            gc_fill_uniform(c.x, m, 1, 61, (uint32_t)(k * 2 + s));
            gc_fill_uniform(c.G, m, 1, 62, (uint32_t)(k * 2 + s));
            pe_loss(&c);
            real *dx = malloc(sizeof(real) * m);
            posenc_backward(tb_backend_cpu(), dx, c.G, c.tab, c.kind, c.B, c.T, c.H, c.hs, (size_t)c.H * c.hs);
            char name[64];
            snprintf(name, sizeof(name), "%s hs=%d", posenc_kind_name(c.kind), c.hs);
            gc_result r = gc_check(pe_loss, &c, c.x, dx, m, 400, name);
            assert_true(r.max_rel <= 1e-6);
            if (c.hs & 1) /* the odd last channel passes unchanged */
                for (size_t t = 0; t < (size_t)c.B * c.T * c.H; t++)
                    assert_true(c.y[t * c.hs + c.hs - 1] == c.x[t * c.hs + c.hs - 1]);
            free(c.x), free(c.y), free(c.G), free(c.tab), free(dx);
        }
}

static void test_posenc_tables_match_formulas(void **state) {
    (void)state;
    int T = 20, hs = 8, P = 4, l = 3;
    real *tab = malloc(sizeof(real) * posenc_table_count(T, hs));
    double g = 1 + 0.05 * l;
    posenc_table(tab, TB_POS_HOPE, 10000, 0.01, l, T, hs);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < P; i++) {
            double th = t * exp(-log(10000.0) * i / (P - 1)) * g;
            assert_true(fabs(tab[t * P + i] - cos(th)) < 1e-15);
            assert_true(fabs(tab[T * P + t * P + i] - sin(th)) < 1e-15);
        }
    posenc_table(tab, TB_POS_HOPE_HYPERBOLIC, 10000, 0.01, l, T, hs);
    for (int t = 0; t < T; t++) {
        double th = fmin(t * g, 12.0), rho = exp(-0.01 * g * t); /* i = 0: f = 1, clamped */
        assert_true(fabs(tab[t * P] - rho * cosh(th)) <= 1e-15 * rho * cosh(th));
    }
    posenc_table(tab, TB_POS_ROPE, 10000, 0.01, l, T, hs);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < P; i++)
            assert_true(fabs(tab[t * P + i] - cos(t * pow(10000.0, -2.0 * i / hs))) < 1e-15);
    posenc_table(tab, TB_POS_HOPE, 10000, 0.01, 0, T, 2); /* P = 1: f_0 = 1 */
    for (int t = 0; t < T; t++) assert_true(fabs(tab[t] - cos((double)t)) < 1e-15);
    free(tab);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_posenc_gradcheck_even_and_odd_hs),
        cmocka_unit_test(test_posenc_tables_match_formulas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
