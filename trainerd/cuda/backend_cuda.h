/* The CUDA backend (issue 6): the op table of trainerd/backend.h on one CUDA device.
 *
 * Memory: every tensor pointer an op receives is DEVICE memory (tb_cuda_malloc), except
 * - the arrays of parameter pointers of norm_fwd / norm_bwd (host arrays holding device
 *   pointers), and
 * - scalar results returned to the caller (core.sumsq, core.all_finite return values;
 *   dense.xent_fwd's sum / count / correct and dense.sum_squares' out): HOST pointers;
 *   those ops synchronise the backend's stream.
 * Every op runs on the backend's one stream, in call order. A CUDA or cuBLAS failure
 * inside an op is a broken invariant: it prints the call, file, line and CUDA message to
 * stderr and aborts (ops return void). Set-up failures return an error message instead.
 * Ops not implemented yet are NULL in the table (trainerd/cuda/README.md lists them). */
#ifndef TB_BACKEND_CUDA_H
#define TB_BACKEND_CUDA_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "tb_err.h"
#include "backend.h"

/* Number of usable CUDA devices; 0 when the runtime or driver reports none or fails. */
int tb_cuda_device_count(void);

/* The CUDA backend on device 0 (created on the first call, then shared). NULL with a
 * message in err when there is no device or set-up fails. */
const tb_backend *tb_backend_cuda(tb_err *err);

/* Device memory and transfers (synchronous with the backend's stream). */
void *tb_cuda_malloc(size_t bytes, tb_err *err);
void tb_cuda_free(void *p);
int tb_cuda_h2d(void *dst, const void *src, size_t bytes, tb_err *err);
int tb_cuda_d2h(void *dst, const void *src, size_t bytes, tb_err *err);
/* Synchronous mode (on by default): every op waits for the stream before returning, as
 * the model's layers still touch some activations on the host between ops; the core
 * family's memory interface (mem_alloc etc.) hands out managed memory for that. Off:
 * ops only enqueue (op-level use where every host access goes through tb_cuda_d2h). */
void tb_cuda_set_sync(int on);
/* 1: softmax attention keeps P and runs the plain kernels (the path of GPUs whose
 * shared memory is too small for the fused kernels; TB_CUDA_ATTN=plain at start-up).
 * Models created afterwards follow it. */
void tb_cuda_force_plain_attention(int on);
/* In the bf16 mode (sm_80+) run on bf16 tensor cores: the fused softmax attention
 * (TB_CUDA_TC_ATTN), the retention / decay tiles (TB_CUDA_TC_RET); 1 (the default) means
 * both, 0 neither: fp32 CUDA cores, as in the fp32 and fp16 modes. At start-up:
 * TB_CUDA_TC unset or 1, attn, ret, or 0. */
#define TB_CUDA_TC_ATTN 2
#define TB_CUDA_TC_RET 4
void tb_cuda_tensor_core_tiles(int on);
/* 1: fp32 GEMMs through cuBLASLt (faster; its own summation order) instead of the kernel
 * in the CPU's order (TB_CUDA_FP32_GEMM=cublas at start-up). */
void tb_cuda_fp32_gemm_cublas(int on);
/* Waits for the backend's stream; reports any pending CUDA error. */
int tb_cuda_sync(tb_err *err);
/* GEMM descriptor-cache statistics (entries, hits, misses) for tests. */
void tb_cuda_gemm_cache_stats(int *entries, long *hits, long *misses);
/* The cache's slot count, how many entries a full table evicted so far, and how many
 * calls cuBLASLt refused the bucket's algorithm and ran their exact shape's own. */
void tb_cuda_gemm_cache_more(int *capacity, long *evictions, long *bucket_uses);
/* Algorithm buckets chosen by timing (TB_CUDA_GEMM_TUNE), and of those, how many did not
 * keep cuBLASLt's first choice. */
void tb_cuda_gemm_tune_stats(long *tuned, long *changed);

#ifdef __cplusplus
}
#endif
#endif
