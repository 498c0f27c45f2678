/* Private to trainerd/cuda/: the backend context, error checks, scratch memory and the
 * deterministic reduction helpers shared by the op files. */
#ifndef TB_CUDA_INTERNAL_CUH
#define TB_CUDA_INTERNAL_CUH
#include <cuda_runtime.h>
#include <cublasLt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "backend_cuda.h"

/* Failures inside ops are broken invariants: report where and abort. */
#define TBC_CHECK(call)                                                                 \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess) tbc_fatal(#call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
    } while (0)
#define TBC_CHECK_LT(call)                                                              \
    do {                                                                                \
        cublasStatus_t s_ = (call);                                                     \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                \
            tbc_fatal(#call, __FILE__, __LINE__, cublasLtGetStatusString(s_));          \
    } while (0)
/* After every kernel launch (and every other asynchronous call an op may end with):
 * checks the launch and, in synchronous mode, waits for the stream (tbc_op_sync). */
#define TBC_LAUNCHED()                  \
    do {                                \
        TBC_CHECK(cudaGetLastError());  \
        tbc_op_sync();                  \
    } while (0)

void tbc_fatal(const char *call, const char *file, int line, const char *msg);

/* Scratch slots: each op owns a slot id so buffers in use at the same time never alias.
 * A slot grows (cudaFree + cudaMalloc after a stream sync) and is never shrunk; the
 * measure pass before step 0 sizes them, so the steady state allocates nothing. */
enum {
    TBC_SCR_REDUCE = 0, /* partial sums of the reductions (reduce_*) */
    TBC_SCR_REDUCE_RANGES, /* sumsq_many: the (offset, n) pairs of its ranges */
    TBC_SCR_RESULT,     /* small device results copied to the host */
    TBC_SCR_WTILDE,     /* bitlinear_bwd: w̃ as float */
    TBC_SCR_NORM_COLS,  /* norm_bwd: per-chunk column partial sums */
    TBC_SCR_NORM_ROWS,  /* norm_bwd: per-row scalar partials */
    TBC_SCR_XENT_ROWS,  /* xent_fwd: per-row loss / flags */
    TBC_SCR_SORT_KIN,   /* tbc_sort_pairs callers: keys in */
    TBC_SCR_SORT_VIN,   /* values in */
    TBC_SCR_SORT_KOUT,  /* keys out */
    TBC_SCR_SORT_VOUT,  /* values out */
    TBC_SCR_SORT_TMP,   /* CUB's temporary storage */
    TBC_SCR_COLSUM,     /* tbc_colsum_add: per-chunk column partials */
    TBC_SCR_CONV_COL,   /* conv1d: im2col of x */
    TBC_SCR_CONV_W,     /* conv1d: repacked weight (C, k·C) */
    TBC_SCR_CONV_D,     /* conv1d_bwd: d(col) */
    TBC_SCR_CONV_DW,    /* conv1d_bwd: d(repacked weight) */
    TBC_SCR_ATTN_DS,    /* attn_bwd: dS (B, H, T, T) */
    TBC_SCR_ATTN_D,     /* fused attn_bwd: D = rowsum(dO ∘ O) (B, H, T) */
    TBC_SCR_ATTN_TC,    /* tensor-core attention: bf16 q, k, v, dO (flash_tc_kernels.cuh tc_fat_ws) */
    TBC_SCR_ATTN_DROP,  /* tensor-core attention: dropout keep bits (k_fat_dropmask) */
    TBC_SCR_BL_DY,      /* bitlinear_bwd, bf16 mode: dy as bf16 */
    TBC_SCR_BL_XT,      /* bitlinear_bwd, bf16 mode: x̃ as bf16 */
    TBC_SCR_QW_RANGES,  /* bitlinear_quant_w_many: its tensors' ranges */
    TBC_SCR_SEQ_A,      /* seq ops: first partial buffer */
    TBC_SCR_SEQ_B,      /* seq ops: second partial buffer */
    TBC_SCR_SEQ_C,      /* seq ops: third partial buffer */
    TBC_SCR_SEQ_D,      /* seq ops: fourth partial buffer */
    TBC_SCR_COUNT
};

/* Descriptor cache slots, keyed with M and K rounded up to TBC_BUCKET (backend_cuda.cu
 * tbc_gemm): the MoE's expert GEMMs, whose row count changes on every call, reuse an
 * entry by resizing its layouts. A full table evicts the key's home slot. */
#define TBC_GEMM_CACHE 2048
/* Algorithm buckets (backend_cuda.cu gemm_entry_build): M and K rounded up to TBC_BUCKET;
 * bucket keys carry prec + TBC_BUCKET_MARK. */
#define TBC_BUCKET 256
#define TBC_BUCKETS 512
#define TBC_BUCKET_MARK 1000

typedef struct tbc_gemm_entry {
    int used;
    int M, N, K, ta, tb, lda, ldb, ldc, align, prec; /* the key */
    int cm, ck; /* the M and K the layouts hold now */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    int unsupported; /* 1: the bucket got no algorithm (each call asks for its exact shape's);
                      * 2: int8 layouts refused (the callers fall back) */
    int tuned;       /* bucket: its algorithm chosen by timing (gemm_tune) */
    int tune_pending; /* entry: its bucket's algorithm is still to be timed, at this call */
} tbc_gemm_entry;

typedef struct tbc_ctx {
    int device;
    int sm_count;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace; /* cuBLASLt workspace */
    size_t workspace_bytes;
    void *scratch[TBC_SCR_COUNT];
    size_t scratch_cap[TBC_SCR_COUNT];
    tbc_gemm_entry gemm[TBC_GEMM_CACHE];
    tbc_gemm_entry bucket[TBC_BUCKETS];
    long gemm_hits, gemm_misses, gemm_evictions, gemm_exact_uses;
    int sync_ops; /* 1: every op waits for the stream before returning (tb_cuda_set_sync) */
    int managed;  /* 1: mem_alloc gives managed memory (TB_CUDA_MANAGED=1) */
    int prec;     /* GEMM precision (tb_precision: FP32, BF16 or FP16) */
    int cc_major; /* compute capability */
    int attn_plain; /* 1: softmax attention keeps P (the plain kernels; TB_CUDA_ATTN=plain) */
    int tc_split;   /* TB_CUDA_TC_SPLIT (bench only): which products of the tensor-core
                     * attention are split (flash_tc_kernels.cuh, TC_SPLIT_DEFAULT) */
    int tc_tiles;   /* TB_CUDA_TC_ATTN | TB_CUDA_TC_RET: in the bf16 mode those kernels run on
                     * bf16 tensor cores (flash_tc_cuda.cu, ret_tc_kernels.cuh; TB_CUDA_TC,
                     * tb_cuda_tensor_core_tiles; both by default); 0: fp32 CUDA cores */
    double held_bytes; /* mem_alloc + scratch + workspace, for mem_info */
    int gemm_tune;   /* TB_CUDA_GEMM_TUNE: 0 cuBLASLt's first choice for every bucket; 1 int8
                      * buckets timed; 2 (default) every bucket timed, float ones among the
                      * candidates whose output has the first choice's bits (gemm_tune) */
    int gemm_tune_log; /* TB_CUDA_GEMM_TUNE_LOG=1: each timing to stderr */
    long gemm_tuned, gemm_tune_faster;
    int fp32_cublas; /* 1: fp32 GEMMs through cuBLASLt (TB_CUDA_FP32_GEMM=cublas), not in the
                      * CPU's order (gemm_ordered_cuda.cu) */
} tbc_ctx;

/* The one context (the dense family's ops take no backend argument). */
extern tbc_ctx *tbc_g;

/* Synchronous mode (off by default; on with TB_CUDA_MANAGED=1 or tb_cuda_set_sync(1)):
 * each op's work is finished when it returns, for callers that touch managed memory on
 * the host between ops, and to localise a failing kernel. */
static inline void tbc_op_sync(void) {
    if (tbc_g->sync_ops) TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
}

void *tbc_scratch(int slot, size_t bytes);

/* Deterministic reductions: a fixed grid of TBC_RED_BLOCKS blocks, each thread a fixed
 * grid-stride set, then a fixed shared-memory tree, then one block over the partials in
 * a fixed tree: the same inputs give the same bits on every run. */
#define TBC_RED_BLOCKS 256
#define TBC_RED_THREADS 256
enum { TBC_RED_ABS = 0, TBC_RED_SQUARE = 1, TBC_RED_NONFINITE = 2 };
/* *out_dev (device double) = Σ f(x[i]), f by kind (NONFINITE: count of non-finite). */
void tbc_reduce_float(double *out_dev, const float *x, size_t n, int kind);
/* out_dev[i] = the same over range i = base[offset[i] .. + n[i]) for count ranges (host
 * arrays), in a few launches: the same bits as one tbc_reduce_float a range. */
void tbc_reduce_many(double *out_dev, const float *base, const size_t *offset, const size_t *n,
                     int count, int kind);

/* Block-wide double sum over blockDim.x threads (power of two <= 1024), fixed tree.
 * sh: blockDim.x doubles of shared memory. Every thread gets the result. */
__device__ __forceinline__ double tbc_block_sum_d(double v, double *sh) {
    int t = threadIdx.x;
    __syncthreads();
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float tbc_block_max_f(float v, float *sh) {
    int t = threadIdx.x;
    __syncthreads();
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

static inline unsigned tbc_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535u * 16u ? 65535u * 16u : (b ? b : 1));
}

/* Element-wise kernels four values a thread (16-byte loads and stores) when the length is a
 * multiple of 4 and every pointer is 16-byte aligned; the same values either way. */
static inline bool tbc_vec4(size_t n, const void *a, const void *b, const void *c) {
    return n % 4 == 0 && (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0;
}

#include "cuda_drop.cuh"

/* Stable sort of (key, value) int32 pairs by the key's bits [0, end_bit) (keys >= 0),
 * CUB radix sort on the context's stream; temporary storage in TBC_SCR_SORT_TMP. */
void tbc_sort_pairs(int32_t *kout, int32_t *vout, const int32_t *kin, const int32_t *vin, int n, int end_bit);

/* Rows sorted by destination (key, stable), source row val[p]: each destination row gets
 * its source rows added in sorted order (times scale[val[p]] when scale is not NULL);
 * rows keyed TBC_SEGMENT_SKIP (the largest 31-bit key) are added nowhere. */
#define TBC_SEGMENT_SKIP 0x7fffffff
void tbc_segment_add(float *dst, const float *src, const int32_t *key, const int32_t *val, const float *scale,
                     int n, int C);

/* dst[c] += Σ_r src[r·ld + c] (r < rows, c < cols): per-chunk partials in double over a
 * fixed split of the rows, then the chunks summed in order: deterministic. */
void tbc_colsum_add(float *dst, const float *src, size_t rows, int cols, size_t ld);

/* rows x HS tile of a (tokens, ld) tensor starting at row r0 (of T), transposed into
 * dst[c·ldd + r], zero outside (r0 + r >= T or c >= hs); NT threads share the work. */
template <int HS, int NT>
__device__ __forceinline__ void tbc_load_tile_t(float *dst, int ldd, const float *src, size_t ld, int r0, int rows,
                                                int T, int hs) {
    for (int e = threadIdx.x; e < rows * HS; e += NT) {
        int r = e / HS, c = e % HS;
        float x = 0;
        if (r0 + r < T && c < hs) x = src[(size_t)(r0 + r) * ld + c];
        dst[c * ldd + r] = x;
    }
}

/* Dynamic shared memory for tiled kernels. tbc_smem_optin_limit: the most a block may
 * opt into on this device (queried once). tbc_smem_allow: whether `bytes` (plus `slack`)
 * fits; the first call that fits raises the kernel's limit. *state caches the answer per
 * kernel instantiation (0 unknown, 1 fits and raised, -1 does not fit). */
static inline size_t tbc_smem_optin_limit(void) {
    static size_t lim = 0;
    if (!lim) {
        int v = 0;
        TBC_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, tbc_g->device));
        lim = v > 0 ? (size_t)v : 48 * 1024;
    }
    return lim;
}
template <typename K>
static inline int tbc_smem_allow(K kernel, size_t bytes, size_t slack, int *state) {
    if (!*state) {
        *state = bytes + slack <= tbc_smem_optin_limit() ? 1 : -1;
        if (*state == 1)
            TBC_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    }
    return *state == 1;
}

/* The NA x 4 register tile of a product of two transposed shared tiles: s[a][b] = Σ over
 * c < HS (ascending, fmaf) of A[c·lda + ty + 16 a] · B[c·ldb + tx + 8 b]. Used by the
 * fused attention, the retention and the Titan tiles; two products over the same c run
 * as two calls (each sum keeps its order, so the bits are those of one fused loop). */
template <int HS, int NA>
__device__ __forceinline__ void tbc_tile_dot(float (&s)[NA][4], const float *A, int lda, const float *B, int ldb,
                                             int ty, int tx) {
#pragma unroll
    for (int a = 0; a < NA; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) s[a][b] = 0;
#pragma unroll 8
    for (int c = 0; c < HS; c++) {
        float av[NA], bv[4];
#pragma unroll
        for (int a = 0; a < NA; a++) av[a] = A[c * lda + ty + 16 * a];
#pragma unroll
        for (int b = 0; b < 4; b++) bv[b] = B[c * ldb + tx + 8 * b];
#pragma unroll
        for (int a = 0; a < NA; a++)
#pragma unroll
            for (int b = 0; b < 4; b++) s[a][b] = fmaf(av[a], bv[b], s[a][b]);
    }
}

/* The weighted-sum step of the 64-row x 32 tiles (fused attention, retention, Titan
 * memory): acc[i][k] += Σ_{o < no} W[(ty + 16 i)·ldw + o] · V[o·HS + tx + 8 k], o ascending,
 * one fused multiply-add each (thread (ty, tx) owns rows ty + 16 i and channels tx + 8 k). */
template <int HS>
__device__ __forceinline__ void tbc_tile_wv(float (&acc)[4][HS / 8], const float *W, int ldw, const float *V,
                                            int no, int ty, int tx) {
    for (int o = 0; o < no; o++) {
        float wv[4];
#pragma unroll
        for (int i = 0; i < 4; i++) wv[i] = W[(ty + 16 * i) * ldw + o];
#pragma unroll
        for (int k = 0; k < HS / 8; k++) {
            float vv = V[o * HS + tx + 8 * k];
#pragma unroll
            for (int i = 0; i < 4; i++) acc[i][k] = fmaf(wv[i], vv, acc[i][k]);
        }
    }
}

/* out_r (+)= Σ_o c_h γ_h^|r-o| (a_r · b_o) cv_o over o ≤ r (range 0), o ≥ r (1) or all o
 * (2), per head h of (B, T, H*hs) tensors, in tiles (seq_cuda.cu): γ_h, c_h from the
 * device arrays gam, cc, or (NULL) retention's γ_h and 1/sqrt(hs). Returns 0 when
 * launched, -1 when the shape is not for tiles (T < 16, hs > 128, shared memory too
 * small): the caller uses its row kernel. */
int tbc_decay_tiled(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc,
                    int B, int T, int H, int hs, int range, int accumulate);

/* Family init (filled by dense_cuda.cu etc.). */
void tbc_dense_more_init(tb_ops_dense *ops);
void tbc_attn_init(tb_ops_dense *ops);
/* Fused softmax attention (flash_cuda.cu): no stored P, rowstat = log-sum-exp. */
int tbc_flash_fits(int hs);
void tbc_flash_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
                   const uint8_t *mask, const struct tb_dropout *d, uint32_t site, int B, int T, int H, int Hkv,
                   int hs);
/* set: dq, dk, dv written (=), their old contents not read (attn_bwd_set). */
void tbc_flash_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                   const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                   const struct tb_dropout *d, uint32_t site, int B, int T, int H, int Hkv, int hs, int set);
/* Zeroes the gradients an attention backward accumulates into: dq (B·T rows of H·hs,
 * row stride ldq), dk and dv (rows of Hkv·hs, stride ldkv). */
void tbc_attn_zero_grads(float *dq, float *dk, float *dv, size_t ldq, size_t ldkv, int B, int T, int H, int Hkv,
                         int hs);
/* The tensor-core kernels behind tbc_flash_fwd / _bwd in the bf16 mode (flash_tc_cuda.cu);
 * D = rowsum(dO ∘ O) per (b, h, i), computed by the caller. */
int tbc_flash_tc_fits(int hs);
void tbc_flash_tc_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq,
                      size_t ldkv, const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv,
                      int hs);
void tbc_flash_tc_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                      const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                      tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs, int set);
void tbc_seq_more_init(tb_ops_seq *ops);
void tbc_scan_init(tb_ops_seq *ops);
void tbc_moe_init(tb_ops_seq *ops);
void tbc_ops_core_init(tb_ops_core *ops);
void tbc_ops_dense_init(tb_ops_dense *ops);
void tbc_ops_seq_init(tb_ops_seq *ops);
void tbc_gemm(float *c, const float *a, const float *b, int M, int N, int K, int ta, int tb,
              int lda, int ldb, int ldc, float alpha, float beta, const struct tb_backend *be);
/* c (n, out) int32 = x (n, in) · w (out, in)ᵀ on int8 codes (cuBLASLt, int32 accumulation:
 * exact). Returns 0, or -1 where cuBLASLt has no int8 algorithm for the shape (sizes not
 * multiples of 4, say): nothing was launched and the caller uses its own kernel. */
/* c (fp32) = alpha op(a) op(b) + beta c with a and b bf16 (row-major, tbc_gemm's
 * conventions), fp32 accumulation: the bf16 mode's GEMMs whose operands are rounded to
 * bf16 by the caller (BitLinear's backward). Cached as tbc_gemm, under TBC_PREC_BF16IN. */
#define TBC_PREC_BF16IN (-16)
void tbc_gemm_bf16(float *c, const void *a, const void *b, int M, int N, int K, int ta, int tb, int lda, int ldb,
                   int ldc, float alpha, float beta);
int tbc_gemm_s8(int32_t *c, const int8_t *x, const int8_t *w, int n, int in, int out);
/* The core gemm's contract in the CPU's order (ascending k, one fused multiply-add each). */
void tbc_gemm_ordered(float *c, const float *a, const float *b, int M, int N, int K, int ta, int tb, int lda,
                      int ldb, int ldc, float alpha, float beta);
#endif
