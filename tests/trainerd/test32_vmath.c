/* The CPU kernels' array math (trainerd/cpu/vmath.h) in the fp32 build: exp, erf, tanh
 * and the sigmoid within 4 ulp of the exact value (the double-precision function rounded
 * to float) over their working ranges, special values exact, and every element the same
 * bits wherever it sits in the array (the padded tail goes through the same function). */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "cpu/vmath.h"
#include "tb_rng.h"

enum { N = 4099 }; /* not a multiple of 8 */

static double ulps(float got, double exact) {
    float e = (float)exact;
    if (got == e) return 0;
    float mag = fabsf(e);
    float step = nextafterf(mag, INFINITY) - mag;
    if (mag < FLT_MIN) step = nextafterf(0, 1); /* subnormal: the spacing there */
    return fabs((double)got - exact) / step;
}

typedef void (*vfn)(float *, const float *, size_t);

static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

static void check(const char *name, vfn f, double (*ref)(double), float lo, float hi,
                  double max_ulps) {
    static float x[N], y[N], one[1];
    tb_rng r;
    tb_rng_init(&r, 11, TB_RNG_TEST, 5, 0, 0);
    for (int i = 0; i < N; i++) x[i] = lo + (hi - lo) * tb_rng_uniform_f(&r);
    f(y, x, N);
    double worst = 0;
    int at = 0;
    for (int i = 0; i < N; i++) {
        double u = ulps(y[i], ref((double)x[i]));
        if (u > worst) worst = u, at = i;
    }
    printf("%s on [%g, %g]: max %.2f ulp at x = %.9g\n", name, (double)lo, (double)hi, worst,
           (double)x[at]);
    assert_true(worst <= max_ulps);
    /* the same bits wherever the element sits: one at a time, and in place */
    for (int i = 0; i < N; i += 97) {
        f(one, &x[i], 1);
        if (memcmp(one, &y[i], sizeof one)) fail_msg("%s: element %d differs alone", name, i);
    }
    static float z[N];
    memcpy(z, x, sizeof z);
    f(z, z, N);
    assert_memory_equal(z, y, sizeof z);
}

static void test_accuracy_and_position_independence(void **s) {
    (void)s;
    check("exp", tb_vexp, exp, -87.0f, 88.0f, 4);
    check("exp", tb_vexp, exp, -1.0f, 1.0f, 4);
    check("erf", tb_verf, erf, -4.5f, 4.5f, 4);
    check("erf", tb_verf, erf, -0.5f, 0.5f, 4);
    check("tanh", tb_vtanh, tanh, -10.0f, 10.0f, 4);
    check("tanh", tb_vtanh, tanh, -0.3f, 0.3f, 4);
    check("sigmoid", tb_vsigmoid, sigmoid_d, -80.0f, 80.0f, 4);
}

static void test_special_values(void **s) {
    (void)s;
    float x[9] = {-INFINITY, INFINITY, -200.0f, 200.0f, 0.0f, -0.0f, 20.0f, -20.0f, 1.0f}, y[9];
    tb_vexp(y, x, 9);
    assert_true(y[0] == 0 && isinf(y[1]) && y[2] == 0 && isinf(y[3]) && y[4] == 1 && y[5] == 1);
    tb_verf(y, x, 9);
    assert_true(y[0] == -1 && y[1] == 1 && y[2] == -1 && y[3] == 1 && y[4] == 0);
    tb_vtanh(y, x, 9);
    assert_true(y[0] == -1 && y[1] == 1 && y[6] == 1 && y[7] == -1 && y[4] == 0);
    tb_vsigmoid(y, x, 9);
    assert_true(y[0] == 0 && y[1] == 1 && y[3] == 1 && y[4] == 0.5f && y[2] >= 0 && y[2] < 1e-30f);
}

/* The vector sigmoid is the scalar formula 8 at a time: e = exp(-|x|) from tb_vexp, then
 * 1 / (1 + e) or e / (1 + e) by the sign, each a correctly rounded division: same bits. */
static void test_sigmoid_is_the_scalar_formula_bitwise(void **s) {
    (void)s;
    static float x[N], e[N], y[N], ref[N];
    tb_rng r;
    tb_rng_init(&r, 12, TB_RNG_TEST, 5, 0, 0);
    for (int i = 0; i < N; i++) x[i] = -100.0f + 200.0f * tb_rng_uniform_f(&r);
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, FLT_MIN, -FLT_MIN,
                             1e-40f, -1e-40f, 88.0f, -88.0f, 104.0f, -104.0f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x[3 * i] = special[i];
    for (int i = 0; i < 512; i++) x[N - 1 - i] = (i % 2 ? -1.0f : 1.0f) * (float)i * 1e-3f;
    for (int i = 0; i < N; i++) e[i] = -fabsf(x[i]);
    tb_vexp(e, e, N);
    for (int i = 0; i < N; i++) ref[i] = x[i] >= 0 ? 1.0f / (1.0f + e[i]) : e[i] / (1.0f + e[i]);
    tb_vsigmoid(y, x, N);
    assert_memory_equal(y, ref, sizeof y);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accuracy_and_position_independence),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_sigmoid_is_the_scalar_formula_bitwise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
