#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../backend.h"
#include "core_cpu.h"

static void *cpu_mem_alloc(size_t bytes) { return calloc(bytes ? bytes : 1, 1); }
static void cpu_mem_free(void *p) { free(p); }
static void cpu_mem_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memcpy(dst, src, bytes);
}
static void cpu_mem_set(void *p, int value, size_t bytes) {
    if (bytes) memset(p, value, bytes);
}

/* The CPU is the reference: its GEMMs stay in the build's precision whatever is asked. */
static int cpu_set_precision(int mode) {
    (void)mode;
    return TB_PREC_FP32;
}

static void cpu_fill(real *x, real value, size_t n) {
    /* +0.0 is all-zero bytes (IEEE 754); memset's wide stores clear the gradient
     * buffers (dlogits alone is B·T·V reals) several times faster than this loop. */
    if (value == 0 && !signbit(value)) {
        if (n) memset(x, 0, n * sizeof(real));
        return;
    }
    for (size_t i = 0; i < n; i++) x[i] = value;
}

static void cpu_copy(real *y, const real *x, size_t n) {
    if (y != x) memmove(y, x, n * sizeof(real));
}

static void cpu_axpy(real *y, real a, const real *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void cpu_scale(real *x, real a, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

static void cpu_axpby(real *z, real a, const real *x, real b, const real *y, size_t n) {
    for (size_t i = 0; i < n; i++) z[i] = a * x[i] + b * y[i];
}

static double cpu_sumsq(const real *x, size_t n) {
    /* Four partial sums (fixed order) let the compiler vectorise without reassociation. */
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) s[j] += (double)x[i + j] * (double)x[i + j];
    for (; i < n; i++) s[0] += (double)x[i] * (double)x[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static void cpu_sumsq_many(double *out, const real *base, const size_t *offset, const size_t *n,
                           int count) {
    for (int i = 0; i < count; i++) out[i] = cpu_sumsq(base + offset[i], n[i]);
}

static int cpu_all_finite(const real *x, size_t n) {
    /* x * 0 is 0 for finite x and NaN for inf/NaN; summing keeps the loop branch-free. */
    real acc = 0;
    for (size_t i = 0; i < n; i++) acc += x[i] * 0;
    return acc == 0;
}

static void cpu_adamw(real *w, real *m, real *v, const real *g, size_t n, double lr, double wd,
                      double b1, double b2, double eps, double bc1, double bc2, double gscale) {
    const real rb1 = (real)b1, rb2 = (real)b2, c1 = (real)(1 - b1), c2 = (real)(1 - b2);
    const real decay = (real)(1 - lr * wd), step = (real)(lr / bc1);
    const real rbc2 = (real)(1 / sqrt(bc2)), reps = (real)eps, gs = (real)gscale;
    for (size_t i = 0; i < n; i++) {
        real gi = g[i] * gs;
        real mi = rb1 * m[i] + c1 * gi;
        real vi = rb2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step * mi / (r_sqrt(vi) * rbc2 + reps);
    }
}

void tb_cpu_ops_core_init(tb_ops_core *ops) {
    ops->host_memory = 1;
    ops->threads = tb_cpu_threads;
    ops->thread_solo = tb_cpu_thread_solo;
    ops->mem_alloc = cpu_mem_alloc;
    ops->mem_free = cpu_mem_free;
    ops->to_device = cpu_mem_copy;
    ops->to_host = cpu_mem_copy;
    ops->mem_set = cpu_mem_set;
    ops->gemm = tb_cpu_gemm;
    ops->set_precision = cpu_set_precision;
    ops->fill = cpu_fill;
    ops->copy = cpu_copy;
    ops->axpy = cpu_axpy;
    ops->scale = cpu_scale;
    ops->axpby = cpu_axpby;
    ops->sumsq = cpu_sumsq;
    ops->sumsq_many = cpu_sumsq_many;
    ops->all_finite = cpu_all_finite;
    ops->adamw = cpu_adamw;
}
