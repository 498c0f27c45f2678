/* Op family "core" of the backend table (see trainerd/backend.h for conventions):
 * GEMM, element-wise helpers, reductions, and the optimizer's fused passes.
 *
 * Determinism: every op gives bitwise-identical results for identical inputs on one
 * backend; the CPU GEMM splits work by output rows only, so each output element is
 * always summed in the same order (k ascending, fused multiply-adds) whatever the thread
 * count. */
#ifndef TB_OPS_CORE_H
#define TB_OPS_CORE_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"

struct tb_backend;

/* GEMM precision (MODEL.md section 10, training.precision): fp32 products; bf16 products
 * with fp32 accumulation, inputs and outputs (sm_80+); fp16 likewise (GPUs without bf16,
 * trained with a dynamic loss scale). AUTO asks the backend for its best mixed mode. */
typedef enum tb_precision {
    TB_PREC_FP32 = 0,
    TB_PREC_BF16,
    TB_PREC_FP16,
    TB_PREC_AUTO,
} tb_precision;

typedef struct tb_ops_core {
    /* Memory of the backend's tensors (the model's flat buffers and arena). host_memory
     * is 1 when that memory is ordinary host memory the caller may read and write
     * directly (CPU); otherwise the model stages through to_device / to_host.
     * mem_alloc: zeroed, NULL on failure; to_host waits for every op issued before it. */
    int host_memory;
    /* Concurrent models (host-memory backends; NULL elsewhere): how many threads the
     * calling thread's ops may use (1 inside thread_solo), and a nested per-thread switch
     * that keeps every op issued by the calling thread on that thread (thread_solo(1) ...
     * thread_solo(0)), so a caller may run that many models' forward and backward passes
     * on its own threads at once. Results do not depend on either. */
    int (*threads)(void);
    void (*thread_solo)(int on);
    void *(*mem_alloc)(size_t bytes);
    void (*mem_free)(void *p);
    void (*to_device)(void *dst, const void *src, size_t bytes); /* host -> backend */
    void (*to_host)(void *dst, const void *src, size_t bytes);   /* backend -> host */
    void (*mem_set)(void *p, int value, size_t bytes);

    /* Row-major GEMM: c = alpha · op(a) · op(b) + beta · c, with op(a) (M, K) and op(b)
     * (K, N). ta = 0: a is (M, K) with row stride lda; ta = 1: a is (K, M) (lda).
     * tb = 0: b is (K, N) (ldb); tb = 1: b is (N, K) (ldb). c is (M, N) with row stride
     * ldc. beta = 0 ignores c's old contents (NaN included). Each c element is the sum
     * over k in ascending order, then alpha, then + beta · c; with alpha = beta = 1 it is
     * accumulated onto c instead (c + a0·b0 + a1·b1 + ..., the order of a "+=" loop).
     * On the CPU every term is a fused multiply-add (acc = fma(a, b, acc)). */
    void (*gemm)(real *c, const real *a, const real *b, int M, int N, int K, int ta, int tb,
                 int lda, int ldb, int ldc, real alpha, real beta, const struct tb_backend *be);
    /* The GEMMs' precision from now on (tb_precision); returns the mode in effect (a
     * backend without the asked one keeps fp32; the CPU always does). Storage, the other
     * ops and the optimizer's master weights stay fp32. BitLinear's products on integer
     * codes stay exact in bf16 and fp16 (integers up to 256 / 2048 are representable and
     * the sums are fp32). */
    int (*set_precision)(int mode);
    /* Device memory (NULL on host-memory backends): bytes this backend holds (its
     * allocations, scratch and library workspace) and bytes in use on the whole device
     * (total - free: every process and the CUDA context included). */
    void (*mem_info)(double *held_bytes, double *device_used_bytes);

    void (*fill)(real *x, real value, size_t n);
    void (*copy)(real *y, const real *x, size_t n);
    /* y += a · x */
    void (*axpy)(real *y, real a, const real *x, size_t n);
    /* x *= a */
    void (*scale)(real *x, real a, size_t n);
    /* z = a · x + b · y, each element computed as exactly that expression (two products,
     * one sum, no fused multiply-add); z may equal x or y. */
    void (*axpby)(real *z, real a, const real *x, real b, const real *y, size_t n);

    /* Σ x² accumulated in double (global gradient norm, L_ode). */
    double (*sumsq)(const real *x, size_t n);
    /* out[i] = sumsq(base + offset[i], n[i]) for i < count, the same value sumsq gives,
     * with one wait for all of them (the per-tensor gradient norms of a step). */
    void (*sumsq_many)(double *out, const real *base, const size_t *offset, const size_t *n,
                       int count);
    /* 1 when every element is finite. */
    int (*all_finite)(const real *x, size_t n);

    /* AdamW over n elements (MODEL.md section 10), g scaled by gscale first (clipping
     * and accumulation averaging folded in):
     *   g' = gscale · g; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'²;
     *   w -= lr · wd · w;  w -= lr · (m / bc1) / (sqrt(v / bc2) + eps)
     * with bc1 = 1 - b1^t, bc2 = 1 - b2^t (t = 1-based step), decoupled decay as
     * torch.optim.AdamW (decay applied before the Adam step, on the old w). */
    void (*adamw)(real *w, real *m, real *v, const real *g, size_t n, double lr, double wd,
                  double b1, double b2, double eps, double bc1, double bc2, double gscale);
} tb_ops_core;

#endif
