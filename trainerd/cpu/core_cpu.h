/* Internal to the CPU backend's core family. */
#ifndef TB_CORE_CPU_H
#define TB_CORE_CPU_H
#include "../real.h"
#include "../ops/ops_dense.h"

struct tb_backend;
void tb_cpu_gemm(real *c, const real *a, const real *b, int M, int N, int K, int ta, int tb,
                 int lda, int ldb, int ldc, real alpha, real beta, const struct tb_backend *be);
/* tb_cpu_gemm on the calling thread only (same results): for callers that split work
 * over their own threads. */
void tb_cpu_gemm_serial(real *c, const real *a, const real *b, int M, int N, int K, int ta,
                        int tb, int lda, int ldb, int ldc, real alpha, real beta);
/* Threads the calling thread's kernels may use: the GEMM pool's (TB_CPU_THREADS, default
 * the online CPUs, at most 16), or 1 on a thread inside tb_cpu_thread_solo(1). */
int tb_cpu_threads(void);
/* Nested on / off: while on, every kernel called from this thread runs on it alone. */
void tb_cpu_thread_solo(int on);
/* Replaces the dense family's linear and BitLinear kernels by GEMM-backed ones with
 * bitwise-identical results (core_linear.c); TB_CPU_REFERENCE=1 in the environment
 * keeps the reference loops. */
void tb_cpu_core_accelerate_dense(tb_ops_dense *d);
/* The GEMM-backed BitLinear kernels it installs (global: multi-versioned, see vmath.h). */
void tb_cpu_fast_bitlinear_fwd(real *y, const int8_t *xq, const real *stats, const int8_t *wq,
                               const real *sw, size_t n, int in, int out);
void tb_cpu_fast_bitlinear_bwd(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                               const int8_t *xq, const real *stats, const int8_t *wq,
                               const real *sw, size_t n, int in, int out);

#endif
