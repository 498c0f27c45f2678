#include "gradcheck.h"
#include <math.h>
#include <stdio.h>
#include "tb_rng.h"

static double max3(double a, double b, double c) {
    double m = a > b ? a : b;
    return m > c ? m : c;
}

gc_result gc_check(gc_loss_fn loss, void *ctx, double *param, const double *grad, size_t n,
                   size_t max_checks, const char *name) {
    gc_result res = {0};
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(grad[i]) > gmax) gmax = fabs(grad[i]);
    double floor_ = 1e-6 * (gmax > 1 ? gmax : 1);
    size_t count = n <= max_checks ? n : max_checks;
    for (size_t c = 0; c < count; c++) {
        size_t i = (count == n || count < 2) ? c : (size_t)((double)c * (double)(n - 1) / (double)(count - 1));
        double saved = param[i];
        double h = 1e-5 * (fabs(saved) > 1 ? fabs(saved) : 1);
        param[i] = saved + h;
        double lp = loss(ctx);
        param[i] = saved - h;
        double lm = loss(ctx);
        param[i] = saved;
        double num = (lp - lm) / (2 * h);
        double rel = fabs(grad[i] - num) / max3(fabs(grad[i]), fabs(num), floor_);
        if (rel > res.max_rel || res.checked == 0) {
            res.max_rel = rel;
            res.worst = i;
            res.analytic = grad[i];
            res.numeric = num;
        }
        res.checked++;
    }
    loss(ctx); /* leave the forward state as it was at the unperturbed point */
    printf("gradcheck %s: n=%zu, checked=%zu, max_rel=%.3e at %zu (a=%.10e, n=%.10e)\n", name,
           n, res.checked, res.max_rel, res.worst, res.analytic, res.numeric);
    return res;
}

void gc_fill_uniform(double *x, size_t n, double scale, uint64_t seed, uint32_t tag) {
    tb_rng r;
    tb_rng_init(&r, seed, TB_RNG_TEST, tag, 0, 0);
    for (size_t i = 0; i < n; i++) x[i] = (2 * tb_rng_uniform(&r) - 1) * scale;
}

double gc_dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
