/* Helpers of the CUDA-vs-CPU tests: device buffers, random fills, the error measure.
 * Relative error of a tensor: max_i |gpu_i - cpu_i| / max(max_i |cpu_i|, 1e-30). */
#ifndef TB_CUDA_TEST_UTIL_H
#define TB_CUDA_TEST_UTIL_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend_cuda.h"

#define CT_SKIP_CODE 77
#define CT_TOL 1e-5
#define CT_TOL_BF16 2e-2 /* issue 6's bound for the bf16 mode */

static const tb_backend *ct_gpu, *ct_cpu;

/* Exit 77 (ctest SKIP) when there is no device; else set the two backends. */
static inline void ct_init_or_skip(void) {
    if (tb_cuda_device_count() <= 0) {
        printf("SKIP: no CUDA device\n");
        exit(CT_SKIP_CODE);
    }
    tb_err err = {{0}};
    ct_gpu = tb_backend_cuda(&err);
    if (!ct_gpu) {
        fprintf(stderr, "tb_backend_cuda: %s\n", err.msg);
        exit(1);
    }
    ct_cpu = tb_backend_cpu();
    /* The bf16 cases check the CUDA-core kernels (what runs where the tiles do not: below
     * sm_80, head sizes over 128); the tensor-core tiles, on by default in the bf16 mode,
     * have tests of their own that turn them on. */
    tb_cuda_tensor_core_tiles(0);
    /* CT_FILTER=pattern runs only the matching tests (cmocka's filter: * and ? wildcards),
     * e.g. compute-sanitizer on the tensor-core tests alone */
    const char *f = getenv("CT_FILTER");
    if (f && *f) cmocka_set_test_filter(f);
}

static uint64_t ct_state = 0x9E3779B97F4A7C15ull;
static inline double ct_u01(void) {
    ct_state ^= ct_state << 13;
    ct_state ^= ct_state >> 7;
    ct_state ^= ct_state << 17;
    return (double)(ct_state >> 11) / 9007199254740992.0;
}
static inline void ct_fill(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)ct_u01();
}
static inline void *ct_hmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) abort();
    return p;
}

/* Device copy of a host buffer (abort on failure: tests). */
static inline void *ct_up(const void *h, size_t bytes) {
    tb_err err = {{0}};
    void *d = tb_cuda_malloc(bytes, &err);
    if (!d || (bytes && tb_cuda_h2d(d, h, bytes, &err))) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    return d;
}
/* Device buffer poisoned with NaN bytes (0xFF): unwritten outputs show up. */
static inline void *ct_poisoned(size_t bytes) {
    void *h = ct_hmalloc(bytes);
    memset(h, 0xFF, bytes);
    void *d = ct_up(h, bytes);
    free(h);
    return d;
}
static inline void ct_down(void *h, const void *d, size_t bytes) {
    tb_err err = {{0}};
    if (tb_cuda_sync(&err) || (bytes && tb_cuda_d2h(h, d, bytes, &err))) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
}

static inline double ct_rel_err(const float *gpu, const float *cpu, size_t n) {
    double dmax = 0, rmax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)gpu[i] - (double)cpu[i]);
        if (!(d <= dmax)) dmax = d; /* NaN propagates */
        if (fabs((double)cpu[i]) > rmax) rmax = fabs((double)cpu[i]);
    }
    return dmax / (rmax > 1e-30 ? rmax : 1e-30);
}

/* Worst error seen per op name, printed at the end. */
#define CT_MAX_OPS 64
static struct { const char *name; double worst; int checks; } ct_ops[CT_MAX_OPS];
static int ct_nops;
static inline void ct_record(const char *name, double e) {
    int i;
    for (i = 0; i < ct_nops; i++)
        if (!strcmp(ct_ops[i].name, name)) break;
    if (i == ct_nops && ct_nops < CT_MAX_OPS) ct_ops[ct_nops++].name = name;
    if (i < CT_MAX_OPS) {
        if (!(e <= ct_ops[i].worst)) ct_ops[i].worst = e;
        ct_ops[i].checks++;
    }
}
static inline void ct_summary(void) {
    printf("%-28s %8s %12s\n", "op/tensor", "checks", "max rel err");
    for (int i = 0; i < ct_nops; i++)
        printf("%-28s %8d %12.3e\n", ct_ops[i].name, ct_ops[i].checks, ct_ops[i].worst);
}

/* A tensor on both sides: host h (the CPU's) and device d (the GPU's). */
typedef struct ct_t {
    float *h, *d;
    size_t n;
} ct_t;
static inline ct_t ct_rand(size_t n, float lo, float hi) {
    ct_t t = {ct_hmalloc(n * 4), NULL, n};
    ct_fill(t.h, n, lo, hi);
    t.d = ct_up(t.h, n * 4);
    return t;
}
/* Output: host left for the CPU op, device poisoned. */
static inline ct_t ct_out(size_t n) {
    ct_t t = {ct_hmalloc(n * 4), ct_poisoned(n * 4), n};
    memset(t.h, 0, n * 4);
    return t;
}
static inline void ct_tfree(ct_t t) {
    free(t.h);
    tb_cuda_free(t.d);
}
/* Upload t.h over t.d again (an accumulating op's starting values, for a repeat run). */
static inline void ct_reset(ct_t t) {
    tb_err err = {{0}};
    if (t.n && tb_cuda_h2d(t.d, t.h, t.n * 4, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
}
/* A fresh host copy of t.d. */
static inline float *ct_fetch(ct_t t) {
    float *g = ct_hmalloc(t.n * 4);
    ct_down(g, t.d, t.n * 4);
    return g;
}
/* Download t.d and compare with t.h; returns the error (also recorded under name). */
static inline double ct_cmp(const char *name, ct_t t) {
    float *g = ct_hmalloc(t.n * 4);
    ct_down(g, t.d, t.n * 4);
    double e = ct_rel_err(g, t.h, t.n);
    ct_record(name, e);
    free(g);
    return e;
}
#endif
