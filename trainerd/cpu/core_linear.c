/* GEMM-backed CPU implementations of the dense family's linear and BitLinear ops
 * (ops/ops_dense.h), installed over the scalar reference loops by backend_cpu.c. Each
 * gives bitwise the same results as those loops: tb_cpu_gemm sums every element over
 * the reduction index in ascending order, accumulating onto the existing value where
 * the op says "+=" (alpha = beta = 1), and the BitLinear integer product is exact in
 * real arithmetic (|Σ x_q w_q| <= 128 · in < 2^24 for in < 2^17; wider inputs keep the
 * reference kernel). Scratch: per-thread buffers that grow on first use (the first step),
 * never in the steady state. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "../backend.h"
#include "core_cpu.h"
#include "vmath.h"

typedef struct scratch {
    real *p;
    size_t cap;
} scratch;

static _Thread_local scratch s_a, s_b;
/* Threads that exit (the trainer's parallel micro-batch threads) free their scratch: a
 * key per buffer whose destructor frees it. */
static pthread_key_t key_a, key_b;
static pthread_once_t keys_once = PTHREAD_ONCE_INIT;
static void keys_make(void) {
    pthread_key_create(&key_a, free);
    pthread_key_create(&key_b, free);
}

static real *grow(scratch *s, size_t n) {
    if (n > s->cap) {
        real *p = realloc(s->p, n * sizeof(real));
        if (!p) abort(); /* out of memory inside a kernel: a broken invariant */
        s->p = p;
        s->cap = n;
        pthread_once(&keys_once, keys_make);
        pthread_setspecific(s == &s_a ? key_a : key_b, p);
    }
    return s->p;
}

#define EXACT_IN (1 << 17)

static void (*ref_bitlinear_fwd)(real *, const int8_t *, const real *, const int8_t *,
                                 const real *, size_t, int, int);
static void (*ref_bitlinear_bwd)(real *, real *, real *, const real *, const real *,
                                 const int8_t *, const real *, const int8_t *, const real *,
                                 size_t, int, int);

static void fast_linear_fwd(real *y, const real *x, const real *w, size_t n, int in, int out) {
    tb_cpu_gemm(y, x, w, (int)n, out, in, 0, 1, in, in, out, R(1.0), R(0.0), NULL);
}

static void fast_linear_bwd(real *dx, real *dw, const real *dy, const real *x, const real *w,
                            size_t n, int in, int out) {
    if (dx) tb_cpu_gemm(dx, dy, w, (int)n, in, out, 0, 0, out, in, in, R(1.0), R(1.0), NULL);
    if (dw) tb_cpu_gemm(dw, dy, x, out, in, (int)n, 1, 0, out, in, in, R(1.0), R(1.0), NULL);
}

static inline TB_BODY void tb_cpu_fast_bitlinear_fwd_body(real *y, const int8_t *xq,
                                                            const real *stats, const int8_t *wq,
                                                            const real *sw, size_t n, int in,
                                                            int out) {
    if (in >= EXACT_IN) {
        ref_bitlinear_fwd(y, xq, stats, wq, sw, n, in, out);
        return;
    }
    real *xr = grow(&s_a, n * (size_t)in), *wr = grow(&s_b, (size_t)out * (size_t)in);
    for (size_t i = 0; i < n * (size_t)in; i++) xr[i] = (real)xq[i];
    for (size_t i = 0; i < (size_t)out * (size_t)in; i++) wr[i] = (real)wq[i];
    tb_cpu_gemm(y, xr, wr, (int)n, out, in, 0, 1, in, in, out, R(1.0), R(0.0), NULL);
    real s_w = *sw;
    for (size_t t = 0; t < n; t++) {
        real d = stats[3 * t + 2] * s_w;
        real *yr = y + t * (size_t)out;
        for (int o = 0; o < out; o++) yr[o] = yr[o] / d;
    }
}
TB_AVX2_TWIN(void, tb_cpu_fast_bitlinear_fwd,
             (real *y, const int8_t *xq, const real *stats, const int8_t *wq, const real *sw,
              size_t n, int in, int out),
             (y, xq, stats, wq, sw, n, in, out))

static inline TB_BODY void tb_cpu_fast_bitlinear_bwd_body(real *dx, real *dw, real *dxhat,
                                                            const real *dy, const real *x,
                                                            const int8_t *xq, const real *stats,
                                                            const int8_t *wq, const real *sw,
                                                            size_t n, int in, int out) {
    if (in >= EXACT_IN) {
        ref_bitlinear_bwd(dx, dw, dxhat, dy, x, xq, stats, wq, sw, n, in, out);
        return;
    }
    /* dw += dyᵀ · x̃ with x̃ = x_q / s_x staged in dxhat. */
    for (size_t t = 0; t < n; t++)
        for (int j = 0; j < in; j++)
            dxhat[t * (size_t)in + j] = (real)xq[t * (size_t)in + j] / stats[3 * t + 2];
    tb_cpu_gemm(dw, dy, dxhat, out, in, (int)n, 1, 0, out, in, in, R(1.0), R(1.0), NULL);
    if (!dx) return;
    /* dx̂ = dy · w̃, w̃ = w_q / s_w ∈ {c, -c, 0} with c = 1 / s_w. */
    real c = R(1.0) / *sw;
    real *wt = grow(&s_b, (size_t)out * (size_t)in);
    for (size_t i = 0; i < (size_t)out * (size_t)in; i++)
        wt[i] = wq[i] > 0 ? c : wq[i] < 0 ? -c : R(0.0);
    tb_cpu_gemm(dxhat, dy, wt, (int)n, in, out, 0, 0, out, in, in, R(1.0), R(0.0), NULL);
    /* LN0ᵀ: dx += rstd (g - mean(g) - x̂ mean(g ⊙ x̂)) (layers/linear.h). */
    for (size_t t = 0; t < n; t++) {
        const real *g = dxhat + t * (size_t)in, *xr = x + t * (size_t)in;
        real mean = stats[3 * t], rstd = stats[3 * t + 1];
        double sg = 0, sgx = 0;
        for (int j = 0; j < in; j++) {
            real xh = (xr[j] - mean) * rstd;
            sg += g[j];
            sgx += (double)(g[j] * xh);
        }
        real mg = (real)(sg / in), mgx = (real)(sgx / in);
        real *dxr = dx + t * (size_t)in;
        for (int j = 0; j < in; j++) {
            real xh = (xr[j] - mean) * rstd;
            dxr[j] += rstd * (g[j] - mg - xh * mgx);
        }
    }
}
TB_AVX2_TWIN(void, tb_cpu_fast_bitlinear_bwd,
             (real *dx, real *dw, real *dxhat, const real *dy, const real *x, const int8_t *xq,
              const real *stats, const int8_t *wq, const real *sw, size_t n, int in, int out),
             (dx, dw, dxhat, dy, x, xq, stats, wq, sw, n, in, out))

void tb_cpu_core_accelerate_dense(tb_ops_dense *d) {
    ref_bitlinear_fwd = d->bitlinear_fwd;
    ref_bitlinear_bwd = d->bitlinear_bwd;
    d->linear_fwd = fast_linear_fwd;
    d->linear_bwd = fast_linear_bwd;
    d->bitlinear_fwd = tb_cpu_fast_bitlinear_fwd;
    d->bitlinear_bwd = tb_cpu_fast_bitlinear_bwd;
}
