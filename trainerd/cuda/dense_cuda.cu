/* The dense family on CUDA: plain linear (cuBLASLt), BitLinear (quantisers that
 * reproduce the CPU's roundings, an exact int32 integer product, the STE backward),
 * the five norms, the masked cross-entropy, and two element-wise helpers.
 * Reductions are deterministic (fixed trees, no atomics). Per-row statistics are summed
 * in double like the CPU; only the summation order differs, so the float statistics
 * (and hence the BitLinear codes) match the CPU unless a double sum lands within a
 * rounding of a float boundary (tests check codes for equality). */
#include <cuda_bf16.h>
#include "cuda_internal.cuh"
#include "dense_kernels.cuh"
extern "C" {
#include "layers/norm.h"
}

#define ROW_THREADS 256
#define GRID_STRIDE(i, n)                                                              \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);           \
         i += (size_t)gridDim.x * blockDim.x)

static inline cudaStream_t S(void) { return tbc_g->stream; }

/* Parameter tensors per norm type (layers/norm.h), without linking the model library. */
static int norm_nprm(int type) {
    static const int n[5] = {2, 3, 4, 2, 1};
    return type >= 0 && type < 5 ? n[type] : 0;
}

/* ---- plain linear --------------------------------------------------------------- */

static void cu_linear_fwd(real *y, const real *x, const real *w, size_t n, int in, int out) {
    tbc_gemm(y, x, w, (int)n, out, in, 0, 1, in, in, out, 1.0f, 0.0f, NULL);
}

static void cu_linear_bwd(real *dx, real *dw, const real *dy, const real *x, const real *w,
                          size_t n, int in, int out) {
    if (dx) tbc_gemm(dx, dy, w, (int)n, in, out, 0, 0, out, in, in, 1.0f, 1.0f, NULL);
    if (dw) tbc_gemm(dw, dy, x, out, in, (int)n, 1, 0, out, in, in, 1.0f, 1.0f, NULL);
}

/* ---- BitLinear ------------------------------------------------------------------ */

__global__ void k_quant_w_scale(float *sw, const double *sum_abs, size_t count) {
    float mean = count ? (float)(*sum_abs / (double)count) : 0.0f;
    *sw = 1.0f / (mean > 1e-5f ? mean : 1e-5f);
}

__global__ void k_quant_w_codes(int8_t *wq, const float *sw, const float *w, size_t count) {
    float s = *sw;
    GRID_STRIDE(i, count) {
        float q = rintf(w[i] * s);
        wq[i] = (int8_t)(q > 1 ? 1 : q < -1 ? -1 : q);
    }
}

static void cu_bitlinear_quant_w(int8_t *wq, real *sw, const real *w, size_t count) {
    double *sum = (double *)tbc_scratch(TBC_SCR_RESULT, sizeof(double));
    tbc_reduce_float(sum, w, count, TBC_RED_ABS);
    k_quant_w_scale<<<1, 1, 0, S()>>>(sw, sum, count);
    TBC_LAUNCHED();
    if (count) {
        k_quant_w_codes<<<tbc_blocks(count, 256), 256, 0, S()>>>(wq, sw, w, count);
        TBC_LAUNCHED();
    }
}

/* bitlinear_quant_w_many: the scale of each range (a thread a range, k_quant_w_scale's
 * expression), then the codes of all ranges (blockIdx.y the range, k_quant_w_codes's). */
__global__ void k_quant_w_scale_many(float *scales, const double *sum_abs, const tb_quant_w_range *r, int m) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m) return;
    size_t count = r[i].count;
    float mean = count ? (float)(sum_abs[i] / (double)count) : 0.0f;
    scales[r[i].scale] = 1.0f / (mean > 1e-5f ? mean : 1e-5f);
}

__global__ void k_quant_w_codes_many(int8_t *codes, const float *scales, const float *w,
                                     const tb_quant_w_range *r) {
    tb_quant_w_range q = r[blockIdx.y];
    float s = scales[q.scale];
    const float *wr = w + q.w_off;
    int8_t *cr = codes + q.code_off;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < q.count; i += (size_t)gridDim.x * blockDim.x) {
        float v = rintf(wr[i] * s);
        cr[i] = (int8_t)(v > 1 ? 1 : v < -1 ? -1 : v);
    }
}

static void cu_bitlinear_quant_w_many(int8_t *codes, real *scales, const real *w,
                                      const tb_quant_w_range *r, int n) {
    if (n <= 0) return;
    size_t *off = (size_t *)malloc((size_t)n * 2 * sizeof(size_t));
    if (!off) tbc_fatal("malloc", __FILE__, __LINE__, "out of host memory for the quantiser ranges");
    size_t *cnt = off + n, most = 0;
    for (int i = 0; i < n; i++) {
        off[i] = r[i].w_off, cnt[i] = r[i].count;
        if (cnt[i] > most) most = cnt[i];
    }
    double *sum = (double *)tbc_scratch(TBC_SCR_RESULT, (size_t)n * sizeof(double));
    tbc_reduce_many(sum, w, off, cnt, n, TBC_RED_ABS);
    free(off);
    tb_quant_w_range *dr = (tb_quant_w_range *)tbc_scratch(TBC_SCR_QW_RANGES, (size_t)n * sizeof *r);
    /* pageable source: the call returns once r is staged */
    TBC_CHECK(cudaMemcpyAsync(dr, r, (size_t)n * sizeof *r, cudaMemcpyHostToDevice, S()));
    k_quant_w_scale_many<<<(unsigned)((n + 127) / 128), 128, 0, S()>>>(scales, sum, dr, n);
    TBC_LAUNCHED();
    if (!most) return;
    /* blocks a range: enough for the largest (capped; the loop strides), a range a y */
    size_t bx = (most + 1023) / 1024;
    if (bx > 512) bx = 512;
    for (int y0 = 0; y0 < n; y0 += 65535) {
        int m = n - y0 < 65535 ? n - y0 : 65535;
        k_quant_w_codes_many<<<dim3((unsigned)bx, (unsigned)m), 256, 0, S()>>>(codes, scales, w, dr + y0);
        TBC_LAUNCHED();
    }
}

/* One block per token row: mean and variance in double, the float roundings of the CPU
 * (x - mean, · rstd, · s_x, rint) element by element. */
__global__ void k_quant_x(int8_t *xq, float *stats, const float *x, int in) {
    __shared__ double shd[ROW_THREADS];
    __shared__ float shf[ROW_THREADS];
    size_t t = blockIdx.x;
    const float *xr = x + t * in;
    double s = 0;
    for (int j = threadIdx.x; j < in; j += blockDim.x) s += xr[j];
    s = tbc_block_sum_d(s, shd);
    float mean = (float)(s / in);
    double v = 0;
    for (int j = threadIdx.x; j < in; j += blockDim.x) {
        double d = (double)(xr[j] - mean);
        v += d * d;
    }
    v = tbc_block_sum_d(v, shd);
    float rstd = (float)(1.0 / sqrt(v / in + 1e-5));
    float amax = 0;
    for (int j = threadIdx.x; j < in; j += blockDim.x) amax = fmaxf(amax, fabsf((xr[j] - mean) * rstd));
    amax = tbc_block_max_f(amax, shf);
    float sx = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    for (int j = threadIdx.x; j < in; j += blockDim.x) {
        float c = rintf(((xr[j] - mean) * rstd) * sx);
        xq[t * in + j] = (int8_t)(c > 127 ? 127 : c < -128 ? -128 : c);
    }
    if (threadIdx.x == 0) {
        stats[3 * t] = mean;
        stats[3 * t + 1] = rstd;
        stats[3 * t + 2] = sx;
    }
}

/* Rows of up to 2048 values: a warp per row, the row in registers (dense_kernels.cuh); 8
 * rows per block. Wider rows: a block per row. */
#define DK_ROWS 8
static unsigned dk_blocks(size_t n) { return (unsigned)((n + DK_ROWS - 1) / DK_ROWS); }

static void cu_bitlinear_quant_x(int8_t *xq, real *stats, const real *x, size_t n, int in) {
    if (!n) return;
    if (n / DK_ROWS < 65535u * 1024u && in <= 2048) {
        unsigned g = dk_blocks(n), th = 32 * DK_ROWS;
        if (in <= 256) k_quant_x_warp<8><<<g, th, 0, S()>>>(xq, stats, x, n, in);
        else if (in <= 512) k_quant_x_warp<16><<<g, th, 0, S()>>>(xq, stats, x, n, in);
        else if (in <= 1024) k_quant_x_warp<32><<<g, th, 0, S()>>>(xq, stats, x, n, in);
        else k_quant_x_warp<64><<<g, th, 0, S()>>>(xq, stats, x, n, in);
    } else {
        k_quant_x<<<(unsigned)n, ROW_THREADS, 0, S()>>>(xq, stats, x, in);
    }
    TBC_LAUNCHED();
}

/* Integer product y[t,o] = Σ_j xq[t,j]·wq[o,j] in int32 (exact in any order: |terms|
 * <= 128, in < 2^24), then y = acc / (s_x · s_w) exactly as the CPU rounds it.
 * Tiles of BT tokens × BO outputs, BK codes of the reduction per stage. */
#define BL_T 32
#define BL_O 32
#define BL_K 64
__global__ void k_bitlinear_fwd(float *y, const int8_t *xq, const float *stats, const int8_t *wq,
                                const float *sw, int n, int in, int out) {
    __shared__ int8_t xs[BL_T][BL_K + 4];
    __shared__ int8_t ws[BL_O][BL_K + 4];
    int tx = threadIdx.x, ty = threadIdx.y; /* 32 × 8 threads; each does 4 tokens */
    int t0 = blockIdx.y * BL_T, o0 = blockIdx.x * BL_O;
    int acc[4] = {0, 0, 0, 0};
    int lin = ty * 32 + tx;
    for (int k0 = 0; k0 < in; k0 += BL_K) {
        for (int e = lin; e < BL_T * BL_K; e += 256) {
            int r = e / BL_K, k = e % BL_K;
            int t = t0 + r, o = o0 + r;
            xs[r][k] = (t < n && k0 + k < in) ? xq[(size_t)t * in + k0 + k] : (int8_t)0;
            ws[r][k] = (o < out && k0 + k < in) ? wq[(size_t)o * in + k0 + k] : (int8_t)0;
        }
        __syncthreads();
        for (int k = 0; k < BL_K; k++) {
            int wv = ws[tx][k];
#pragma unroll
            for (int i = 0; i < 4; i++) acc[i] += (int)xs[ty + 8 * i][k] * wv;
        }
        __syncthreads();
    }
    int o = o0 + tx;
    if (o >= out) return;
    float s_w = *sw;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int t = t0 + ty + 8 * i;
        if (t < n) y[(size_t)t * out + o] = (float)acc[i] / (stats[3 * (size_t)t + 2] * s_w);
    }
}

/* y = acc / (s_x · s_w) in place over the int32 products cuBLASLt wrote into y. */
__global__ void k_bitlinear_scale(float *y, const float *stats, const float *sw, size_t n, int out) {
    float s_w = *sw;
    GRID_STRIDE(i, n * (size_t)out) {
        int acc = ((const int *)y)[i];
        y[i] = (float)acc / (stats[3 * (i / out) + 2] * s_w);
    }
}

static void cu_bitlinear_fwd(real *y, const int8_t *xq, const real *stats, const int8_t *wq,
                             const real *sw, size_t n, int in, int out) {
    if (!n || out <= 0) return;
    /* int8 tensor cores through cuBLASLt where it takes the shape, else the tiled kernel. */
    if (n <= (size_t)INT32_MAX && tbc_gemm_s8((int32_t *)y, xq, wq, (int)n, in, out) == 0) {
        if (out % 4 == 0 && ((uintptr_t)y & 15) == 0) /* 16-byte accesses (dense_kernels.cuh) */
            k_bitlinear_scale4<<<tbc_blocks(n * (size_t)out / 4, 256), 256, 0, S()>>>(y, stats, sw, n, out);
        else
            k_bitlinear_scale<<<tbc_blocks(n * (size_t)out, 256), 256, 0, S()>>>(y, stats, sw, n, out);
        TBC_LAUNCHED();
        return;
    }
    dim3 grid((unsigned)((out + BL_O - 1) / BL_O), (unsigned)((n + BL_T - 1) / BL_T));
    k_bitlinear_fwd<<<grid, dim3(32, 8), 0, S()>>>(y, xq, stats, wq, sw, (int)n, in, out);
    TBC_LAUNCHED();
}

__global__ void k_xtilde(float *xt, const int8_t *xq, const float *stats, size_t n, int in) {
    GRID_STRIDE(i, n * (size_t)in) xt[i] = (float)xq[i] / stats[3 * (i / in) + 2];
}

__global__ void k_wtilde(float *wt, const int8_t *wq, const float *sw, size_t count) {
    float c = 1.0f / *sw;
    GRID_STRIDE(i, count) wt[i] = wq[i] > 0 ? c : wq[i] < 0 ? -c : 0.0f;
}

/* LN0ᵀ per row: dx += rstd (g - mean(g) - x̂ mean(g ⊙ x̂)) (SET: dx = ..., k_ln0_bwd_warp). */
template <bool SET>
__global__ void k_ln0_bwd(float *dx, const float *g_all, const float *x, const float *stats, int in) {
    __shared__ double sh[ROW_THREADS];
    size_t t = blockIdx.x;
    const float *g = g_all + t * in, *xr = x + t * in;
    float mean = stats[3 * t], rstd = stats[3 * t + 1];
    double sg = 0, sgx = 0;
    for (int j = threadIdx.x; j < in; j += blockDim.x) {
        float xh = (xr[j] - mean) * rstd;
        sg += g[j];
        sgx += (double)(g[j] * xh);
    }
    sg = tbc_block_sum_d(sg, sh);
    sgx = tbc_block_sum_d(sgx, sh);
    float mg = (float)(sg / in), mgx = (float)(sgx / in);
    for (int j = threadIdx.x; j < in; j += blockDim.x) {
        float xh = (xr[j] - mean) * rstd;
        float v = rstd * (g[j] - mg - xh * mgx);
        if (SET) dx[t * in + j] = v;
        else dx[t * in + j] += v;
    }
}

/* LN0ᵀ onto dx from g = dL/dx̂ (the backward's last stage, both precisions). */
template <bool SET>
static void ln0_bwd_t(real *dx, const real *g, const real *x, const real *stats, size_t n, int in) {
    if (n / DK_ROWS < 65535u * 1024u && in <= 2048) {
        unsigned gr = dk_blocks(n), th = 32 * DK_ROWS;
        if (in <= 256) k_ln0_bwd_warp<8, SET><<<gr, th, 0, S()>>>(dx, g, x, stats, n, in);
        else if (in <= 512) k_ln0_bwd_warp<16, SET><<<gr, th, 0, S()>>>(dx, g, x, stats, n, in);
        else if (in <= 1024) k_ln0_bwd_warp<32, SET><<<gr, th, 0, S()>>>(dx, g, x, stats, n, in);
        else k_ln0_bwd_warp<64, SET><<<gr, th, 0, S()>>>(dx, g, x, stats, n, in);
    } else {
        k_ln0_bwd<SET><<<(unsigned)n, ROW_THREADS, 0, S()>>>(dx, g, x, stats, in);
    }
    TBC_LAUNCHED();
}

static void ln0_bwd(real *dx, const real *g, const real *x, const real *stats, size_t n, int in, int set) {
    if (set) ln0_bwd_t<true>(dx, g, x, stats, n, in);
    else ln0_bwd_t<false>(dx, g, x, stats, n, in);
}

/* The bf16 mode's operands: dy, x̃ and Ŵ rounded to bf16 (the rounding FAST_16BF allows;
 * x̃ and Ŵ are the float expressions of k_xtilde / k_wtilde, then rounded; on the eight-code
 * path x̃ is c · (1 / s_x), see there), all three in
 * one launch (fewer launches on a path where the host sets the pace): blocks [0, b1) take
 * dy, [b1, b2) x̃, [b2, gridDim.x) Ŵ, each range grid-striding over its own values, four
 * at a time where its vec bit (1 dy, 2 x̃, 4 Ŵ) says the sizes and alignments allow. */
struct bl_ops {
    __nv_bfloat16 *dyb, *xtb, *wtb;
    const float *dy, *stats, *sw;
    const int8_t *xq, *wq;
    size_t nout, nin, cnt;
    int in, vec;
    unsigned b1, b2;
};
__device__ __forceinline__ __nv_bfloat16 bl_wcode(int8_t q, __nv_bfloat16 p, __nv_bfloat16 m, __nv_bfloat16 z) {
    return q > 0 ? p : q < 0 ? m : z;
}
__global__ void k_bl_bf16_operands(bl_ops o) {
    unsigned b = blockIdx.x, lo = b < o.b1 ? 0 : b < o.b2 ? o.b1 : o.b2;
    unsigned hi = b < o.b1 ? o.b1 : b < o.b2 ? o.b2 : gridDim.x;
    size_t start = (size_t)(b - lo) * blockDim.x + threadIdx.x, stride = (size_t)(hi - lo) * blockDim.x;
    if (b < o.b1) {
        if (o.vec & 1)
            for (size_t q = start; q < o.nout / 4; q += stride) {
                float4 v = reinterpret_cast<const float4 *>(o.dy)[q];
                __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
                uint2 u;
                u.x = *reinterpret_cast<unsigned *>(&a), u.y = *reinterpret_cast<unsigned *>(&b);
                reinterpret_cast<uint2 *>(o.dyb)[q] = u; /* one 8-byte store */
            }
        else
            for (size_t i = start; i < o.nout; i += stride) o.dyb[i] = __float2bfloat16_rn(o.dy[i]);
    } else if (b < o.b2) {
        if (o.vec & 8) { /* eight codes a thread: an 8-byte load, a 16-byte store */
            /* The row in 32 bits where the codes allow (a 64-bit division per thread was
             * most of this range's instructions), and x̃ = c · (1 / s_x): one division per
             * eight codes, within an fp32 ulp of c / s_x before the bf16 rounding. */
            bool narrow = o.nin < ((size_t)1 << 32);
            unsigned in8 = (unsigned)o.in / 8;
            for (size_t q = start; q < o.nin / 8; q += stride) {
                uint2 w = reinterpret_cast<const uint2 *>(o.xq)[q];
                const int8_t *c = reinterpret_cast<const int8_t *>(&w);
                size_t row = narrow ? (size_t)((unsigned)q / in8) : q / in8;
                float r = 1.0f / o.stats[3 * row + 2];
                __nv_bfloat162 h[4];
#pragma unroll
                for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn((float)c[2 * k] * r, (float)c[2 * k + 1] * r);
                reinterpret_cast<uint4 *>(o.xtb)[q] = *reinterpret_cast<uint4 *>(h);
            }
        } else if (o.vec & 2)
            for (size_t q = start; q < o.nin / 4; q += stride) {
                char4 c = reinterpret_cast<const char4 *>(o.xq)[q];
                float sx = o.stats[3 * (q * 4 / o.in) + 2];
                __nv_bfloat162 *d = reinterpret_cast<__nv_bfloat162 *>(o.xtb) + 2 * q;
                d[0] = __floats2bfloat162_rn((float)c.x / sx, (float)c.y / sx);
                d[1] = __floats2bfloat162_rn((float)c.z / sx, (float)c.w / sx);
            }
        else
            for (size_t i = start; i < o.nin; i += stride)
                o.xtb[i] = __float2bfloat16_rn((float)o.xq[i] / o.stats[3 * (i / o.in) + 2]);
    } else {
        float c = 1.0f / *o.sw;
        __nv_bfloat16 p = __float2bfloat16_rn(c), m = __float2bfloat16_rn(-c), z = __float2bfloat16_rn(0.0f);
        if (o.vec & 4)
            for (size_t q = start; q < o.cnt / 4; q += stride) {
                char4 w = reinterpret_cast<const char4 *>(o.wq)[q];
                __nv_bfloat162 a, e;
                a.x = bl_wcode(w.x, p, m, z), a.y = bl_wcode(w.y, p, m, z);
                e.x = bl_wcode(w.z, p, m, z), e.y = bl_wcode(w.w, p, m, z);
                __nv_bfloat162 *d = reinterpret_cast<__nv_bfloat162 *>(o.wtb) + 2 * q;
                d[0] = a, d[1] = e;
            }
        else
            for (size_t i = start; i < o.cnt; i += stride) o.wtb[i] = bl_wcode(o.wq[i], p, m, z);
    }
}

/* The bf16 mode's STE backward: both GEMMs on bf16 operands (tbc_gemm_bf16) instead of
 * fp32 inputs, which cuBLASLt runs on TF32 kernels at half the bf16 rate. dxhat is left
 * untouched when dx is NULL (x̃ lives in scratch here). */
static void bitlinear_bwd_bf16(real *dx, real *dw, real *dxhat, const real *dy, const real *x, const int8_t *xq,
                               const real *stats, const int8_t *wq, const real *sw, size_t n, int in, int out,
                               int set) {
    size_t nin = n * (size_t)in, nout = n * (size_t)out, cnt = (size_t)out * in;
    bl_ops o;
    memset(&o, 0, sizeof o);
    o.dyb = (__nv_bfloat16 *)tbc_scratch(TBC_SCR_BL_DY, nout * 2);
    o.xtb = (__nv_bfloat16 *)tbc_scratch(TBC_SCR_BL_XT, nin * 2);
    o.wtb = dx ? (__nv_bfloat16 *)tbc_scratch(TBC_SCR_WTILDE, cnt * 2) : NULL;
    o.dy = dy, o.stats = stats, o.sw = sw, o.xq = xq, o.wq = wq;
    o.nout = nout, o.nin = nin, o.cnt = dx ? cnt : 0, o.in = in;
    o.vec = (nout % 4 == 0 && ((uintptr_t)dy & 15) == 0 && ((uintptr_t)o.dyb & 7) == 0 ? 1 : 0) |
            (in % 4 == 0 && ((uintptr_t)xq & 3) == 0 ? 2 : 0) | (cnt % 4 == 0 && ((uintptr_t)wq & 3) == 0 ? 4 : 0) |
            (in % 8 == 0 && ((uintptr_t)xq & 7) == 0 && ((uintptr_t)o.xtb & 15) == 0 ? 8 : 0);
    unsigned n1 = tbc_blocks(o.vec & 1 ? nout / 4 : nout, 256);
    unsigned n2 = tbc_blocks(o.vec & 8 ? nin / 8 : o.vec & 2 ? nin / 4 : nin, 256);
    unsigned n3 = dx ? tbc_blocks(o.vec & 4 ? cnt / 4 : cnt, 256) : 0;
    o.b1 = n1, o.b2 = n1 + n2;
    k_bl_bf16_operands<<<n1 + n2 + n3, 256, 0, S()>>>(o);
    TBC_LAUNCHED();
    const __nv_bfloat16 *dyb = o.dyb, *xtb = o.xtb, *wtb = o.wtb;
    tbc_gemm_bf16(dw, dyb, xtb, out, in, (int)n, 1, 0, out, in, in, 1.0f, 1.0f);
    if (!dx) return;
    tbc_gemm_bf16(dxhat, dyb, wtb, (int)n, in, out, 0, 0, out, in, in, 1.0f, 0.0f);
    ln0_bwd(dx, dxhat, x, stats, n, in, set);
}

/* set: dx = LN0ᵀ(dxhat) (bitlinear_bwd_set) instead of dx +=. */
static void bitlinear_bwd_any(real *dx, real *dw, real *dxhat, const real *dy, const real *x, const int8_t *xq,
                              const real *stats, const int8_t *wq, const real *sw, size_t n, int in, int out,
                              int set) {
    if (!n) return;
    if (tbc_g->prec == TB_PREC_BF16) {
        bitlinear_bwd_bf16(dx, dw, dxhat, dy, x, xq, stats, wq, sw, n, in, out, set);
        return;
    }
    size_t nin = n * (size_t)in, cnt = (size_t)out * in;
    if (in % 4 == 0 && ((uintptr_t)dxhat & 15) == 0 && ((uintptr_t)xq & 3) == 0)
        k_xtilde4<<<tbc_blocks(nin / 4, 256), 256, 0, S()>>>(dxhat, xq, stats, n, in);
    else
        k_xtilde<<<tbc_blocks(nin, 256), 256, 0, S()>>>(dxhat, xq, stats, n, in);
    TBC_LAUNCHED();
    tbc_gemm(dw, dy, dxhat, out, in, (int)n, 1, 0, out, in, in, 1.0f, 1.0f, NULL);
    if (!dx) return;
    float *wt = (float *)tbc_scratch(TBC_SCR_WTILDE, cnt * sizeof(float));
    if (cnt % 4 == 0 && ((uintptr_t)wt & 15) == 0 && ((uintptr_t)wq & 3) == 0)
        k_wtilde4<<<tbc_blocks(cnt / 4, 256), 256, 0, S()>>>(wt, wq, sw, cnt);
    else
        k_wtilde<<<tbc_blocks(cnt, 256), 256, 0, S()>>>(wt, wq, sw, cnt);
    TBC_LAUNCHED();
    tbc_gemm(dxhat, dy, wt, (int)n, in, out, 0, 0, out, in, in, 1.0f, 0.0f, NULL);
    ln0_bwd(dx, dxhat, x, stats, n, in, set);
}

static void cu_bitlinear_bwd(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                             const int8_t *xq, const real *stats, const int8_t *wq,
                             const real *sw, size_t n, int in, int out) {
    bitlinear_bwd_any(dx, dw, dxhat, dy, x, xq, stats, wq, sw, n, in, out, 0);
}

static void cu_bitlinear_bwd_set(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                                 const int8_t *xq, const real *stats, const int8_t *wq,
                                 const real *sw, size_t n, int in, int out) {
    bitlinear_bwd_any(dx, dw, dxhat, dy, x, xq, stats, wq, sw, n, in, out, 1);
}

/* ---- norms ---------------------------------------------------------------------- */

/* DT_EPS, LN_EPS, RMS_EPS: dense_kernels.cuh */

typedef struct norm_prm {
    const float *p[TB_NORM_MAX_PARAMS];
} norm_prm;
typedef struct norm_dprm {
    float *p[TB_NORM_MAX_PARAMS];
} norm_dprm;

/* Row statistics: mean (float) and the double sum of squared deviations. */
__device__ void row_mean_m2(const float *xr, int C, double *sh, float *mean, double *m2) {
    double s = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) s += xr[j];
    s = tbc_block_sum_d(s, sh);
    float m = (float)(s / C);
    double v = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        double d = (double)(xr[j] - m);
        v += d * d;
    }
    *m2 = tbc_block_sum_d(v, sh);
    *mean = m;
}

__global__ void k_norm_fwd_rows(float *y, float *stats, const float *x, norm_prm P, int type, int C) {
    __shared__ double sh[ROW_THREADS];
    size_t t = blockIdx.x;
    const float *xr = x + t * C;
    float *yr = y + t * C;
    if (type == TB_NORM_DYNAMIC_TANH) {
        float mean;
        double m2;
        row_mean_m2(xr, C, sh, &mean, &m2);
        float sd = (float)sqrt(m2 / (C - 1));
        float r = 1.0f / (sd + (float)DT_EPS);
        for (int j = threadIdx.x; j < C; j += blockDim.x)
            yr[j] = tanhf(P.p[0][j] * ((xr[j] - mean) * r) + P.p[1][j]);
        if (threadIdx.x == 0) stats[2 * t] = mean, stats[2 * t + 1] = sd;
    } else if (type == TB_NORM_LAYER_NORM) {
        float mean;
        double m2;
        row_mean_m2(xr, C, sh, &mean, &m2);
        float rstd = (float)(1.0 / sqrt(m2 / C + LN_EPS));
        for (int j = threadIdx.x; j < C; j += blockDim.x)
            yr[j] = ((xr[j] - mean) * rstd) * P.p[0][j] + P.p[1][j];
        if (threadIdx.x == 0) stats[2 * t] = mean, stats[2 * t + 1] = rstd;
    } else { /* rms_norm */
        double s = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) s += (double)xr[j] * xr[j];
        s = tbc_block_sum_d(s, sh);
        float r = (float)(1.0 / sqrt(s / C + RMS_EPS));
        for (int j = threadIdx.x; j < C; j += blockDim.x) yr[j] = (xr[j] * r) * P.p[0][j];
        if (threadIdx.x == 0) stats[2 * t] = r, stats[2 * t + 1] = 0;
    }
}

__global__ void k_norm_fwd_elem(float *y, const float *x, norm_prm P, int type, size_t n, int C) {
    GRID_STRIDE(i, n * (size_t)C) {
        int j = (int)(i % C);
        if (type == TB_NORM_DYT) y[i] = P.p[1][j] * tanhf(P.p[0][0] * x[i]) + P.p[2][j];
        else y[i] = P.p[2][j] * erff(P.p[0][0] * x[i] + P.p[1][0]) + P.p[3][j];
    }
}

/* ---- dynamic_tanh over 16-byte rows (C % 4 == 0, C <= 2048, aligned) -------------
 * A thread per four columns (blockDim = C / 4 rounded up to a power of two, >= 32); the
 * per-row sums in double through a fixed tree (xor within warps, then warp 0 over the
 * warps' partials). The float expressions of k_dyt_norm_fwd_warp / _bwd_warp; only the
 * order of the double sums differs. */
__device__ __forceinline__ double2 dv_block_sum2(double a, double b, double2 *sh) {
    for (int s = 16; s > 0; s >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, s);
        b += __shfl_xor_sync(0xffffffffu, b, s);
    }
    int w = threadIdx.x / 32, nw = blockDim.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* sh free from the previous call */
    if (lane == 0) sh[w] = make_double2(a, b);
    __syncthreads();
    if (w == 0) {
        double2 v = lane < nw ? sh[lane] : make_double2(0.0, 0.0);
        for (int s = 16; s > 0; s >>= 1) {
            v.x += __shfl_xor_sync(0xffffffffu, v.x, s);
            v.y += __shfl_xor_sync(0xffffffffu, v.y, s);
        }
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

/* One value through dv_block_sum2's tree (its .x): the forward's two sums have no second
 * value, and shuffling a zero alongside cost as many shuffles again. */
__device__ __forceinline__ double dv_block_sum(double a, double *sh) {
    for (int s = 16; s > 0; s >>= 1) a += __shfl_xor_sync(0xffffffffu, a, s);
    int w = threadIdx.x / 32, nw = blockDim.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* sh free from the previous call */
    if (lane == 0) sh[w] = a;
    __syncthreads();
    if (w == 0) {
        a = lane < nw ? sh[lane] : 0.0;
        for (int s = 16; s > 0; s >>= 1) a += __shfl_xor_sync(0xffffffffu, a, s);
        if (lane == 0) sh[32] = a;
    }
    __syncthreads();
    return sh[32];
}

/* x - mean is computed once and kept in v (no extra registers: 32 on sm_90, as before). */
__global__ void __launch_bounds__(512) k_dyt_fwd_vec(float *y, float *stats, const float *x, const float *al, const float *be, int C) {
    __shared__ double sh[33];
    size_t t = blockIdx.x;
    int j = 4 * threadIdx.x;
    bool in = j < C;
    float4 v = in ? *reinterpret_cast<const float4 *>(x + t * C + j) : make_float4(0, 0, 0, 0);
    float mu = (float)(dv_block_sum(in ? (((double)v.x + v.y) + v.z) + v.w : 0.0, sh) / C);
    v.x -= mu, v.y -= mu, v.z -= mu, v.w -= mu;
    double d0 = (double)v.x, d1 = (double)v.y, d2 = (double)v.z, d3 = (double)v.w;
    double m2 = dv_block_sum(in ? ((d0 * d0 + d1 * d1) + d2 * d2) + d3 * d3 : 0.0, sh);
    float sd = (float)sqrt(m2 / (C - 1));
    float r = 1.0f / (sd + (float)DT_EPS);
    if (in) {
        float4 a = *reinterpret_cast<const float4 *>(al + j), b = *reinterpret_cast<const float4 *>(be + j), o;
        o.x = tanhf(a.x * (v.x * r) + b.x);
        o.y = tanhf(a.y * (v.y * r) + b.y);
        o.z = tanhf(a.z * (v.z * r) + b.z);
        o.w = tanhf(a.w * (v.w * r) + b.w);
        *reinterpret_cast<float4 *>(y + t * C + j) = o;
    }
    if (threadIdx.x == 0) stats[2 * t] = mu, stats[2 * t + 1] = sd;
}

/* Backward, fused with the column sums: block b takes rows [b·R, b·R + R) in order (the
 * next row's x, dy, statistics and old dx loaded before the current row's sums and store:
 * with the statistics and dx read after the block sum, each row had waited for two memory
 * round trips in a row), adds dx, and keeps per
 * column Σ dz·x̂ and Σ dz (dz = dy (1 - y²)) in double over its rows; part[b][0|1][j]
 * then go to k_norm_bwd_cols_final (chunks in order). */
#define DYT_BWD_ROWS 8
__device__ __forceinline__ void dyt_col(float x, float g, float a, float b, float mean, float r, float *dz,
                                        float *xm, float *xh) {
    *xm = x - mean;
    *xh = *xm * r;
    float yv = tanhf(a * *xh + b);
    *dz = g * (1.0f - yv * yv);
}

/* MAXT: the block size bound (256: three blocks an SM, the register cap that keeps them). */
template <int MAXT>
__global__ void __launch_bounds__(MAXT, MAXT <= 256 ? 3 : 1)
    k_dyt_bwd_vec(float *dx, const float *base, double *part, const float *dy, const float *stats, const float *x,
                  const float *al, const float *be, size_t n, int C) {
    __shared__ double2 sh[33];
    int j = 4 * threadIdx.x;
    bool in = j < C;
    size_t t0 = (size_t)blockIdx.x * DYT_BWD_ROWS, t1 = t0 + DYT_BWD_ROWS < n ? t0 + DYT_BWD_ROWS : n;
    float4 a = make_float4(0, 0, 0, 0), b = a, xv = a, gv = a, ov = a;
    if (in) {
        a = *reinterpret_cast<const float4 *>(al + j);
        b = *reinterpret_cast<const float4 *>(be + j);
        xv = *reinterpret_cast<const float4 *>(x + t0 * C + j);
        gv = *reinterpret_cast<const float4 *>(dy + t0 * C + j);
        if (base) ov = *reinterpret_cast<const float4 *>(base + t0 * C + j);
    }
    float2 sv = t0 < t1 ? make_float2(stats[2 * t0], stats[2 * t0 + 1]) : make_float2(0, 0);
    double c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
    for (size_t t = t0; t < t1; t++) {
        float4 xc = xv, gc = gv, o = ov;
        float mean = sv.x, sd = sv.y;
        if (t + 1 < t1) { /* the next row in flight during this one's sums */
            sv = make_float2(stats[2 * t + 2], stats[2 * t + 3]);
            if (in) {
                xv = *reinterpret_cast<const float4 *>(x + (t + 1) * C + j);
                gv = *reinterpret_cast<const float4 *>(dy + (t + 1) * C + j);
                if (base) ov = *reinterpret_cast<const float4 *>(base + (t + 1) * C + j);
            }
        }
        float r = 1.0f / (sd + (float)DT_EPS);
        float dz[4], xm[4], xh[4], dxh[4];
        dyt_col(xc.x, gc.x, a.x, b.x, mean, r, &dz[0], &xm[0], &xh[0]);
        dyt_col(xc.y, gc.y, a.y, b.y, mean, r, &dz[1], &xm[1], &xh[1]);
        dyt_col(xc.z, gc.z, a.z, b.z, mean, r, &dz[2], &xm[2], &xh[2]);
        dyt_col(xc.w, gc.w, a.w, b.w, mean, r, &dz[3], &xm[3], &xh[3]);
        dxh[0] = dz[0] * a.x, dxh[1] = dz[1] * a.y, dxh[2] = dz[2] * a.z, dxh[3] = dz[3] * a.w;
        double sg = 0, sgd = 0;
        if (in) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                sg += dxh[k];
                sgd += (double)dxh[k] * (double)xm[k];
                c0[k] += dz[k] * xh[k];
                c1[k] += dz[k];
            }
        }
        double2 sums = dv_block_sum2(sg, sgd, sh);
        float mg = (float)(sums.x / C);
        float coef = sd > 0 ? (float)((double)r * r * sums.y / ((C - 1) * (double)sd)) : 0.0f;
        if (in) {
            o.x += r * (dxh[0] - mg) - coef * xm[0];
            o.y += r * (dxh[1] - mg) - coef * xm[1];
            o.z += r * (dxh[2] - mg) - coef * xm[2];
            o.w += r * (dxh[3] - mg) - coef * xm[3];
            *reinterpret_cast<float4 *>(dx + t * C + j) = o;
        }
    }
    if (in) {
        double *p0 = part + ((size_t)blockIdx.x * 2) * C + j, *p1 = p0 + C;
#pragma unroll
        for (int k = 0; k < 4; k++) p0[k] = c0[k], p1[k] = c1[k];
    }
}

/* TB_CUDA_DYT_WARP=1 (read once): the warp-per-row dynamic_tanh kernels instead (a bench
 * switch, to compare in one run). */
static int getenv_dyt_warp(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("TB_CUDA_DYT_WARP");
        v = e && *e && *e != '0';
    }
    return v;
}

/* Whether the 16-byte dynamic_tanh kernels take this call; their block size. */
static unsigned dyt_vec_threads(int C, const void *a, const void *b, const void *c, const void *d,
                                const void *e = NULL) {
    if (C % 4 || C > 2048 || C < 8 || getenv_dyt_warp()) return 0; /* <= 512 threads */
    if (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d | (uintptr_t)e) % 16) return 0;
    unsigned th = 32;
    while (th < (unsigned)(C / 4)) th *= 2;
    return th;
}

static void cu_norm_fwd(real *y, real *stats, const real *x, const real *const *prm, int type,
                        size_t n, int C) {
    if (!n) return;
    norm_prm P = {{NULL, NULL, NULL, NULL}};
    for (int i = 0; i < norm_nprm(type); i++) P.p[i] = prm[i];
    unsigned th = 0;
    if (type == TB_NORM_DYT || type == TB_NORM_DERF) {
        k_norm_fwd_elem<<<tbc_blocks(n * (size_t)C, 256), 256, 0, S()>>>(y, x, P, type, n, C);
    } else if (type == TB_NORM_DYNAMIC_TANH && n < 0x7fffffffu &&
               (th = dyt_vec_threads(C, y, x, P.p[0], P.p[1]))) {
        k_dyt_fwd_vec<<<(unsigned)n, th, 0, S()>>>(y, stats, x, P.p[0], P.p[1], C);
    } else if (type == TB_NORM_DYNAMIC_TANH && C <= 2048 && n / DK_ROWS < 65535u * 1024u) {
        /* a warp per row, the row in registers (dense_kernels.cuh) */
        unsigned g = dk_blocks(n), th = 32 * DK_ROWS;
        if (C <= 256) k_dyt_norm_fwd_warp<8><<<g, th, 0, S()>>>(y, stats, x, P.p[0], P.p[1], n, C);
        else if (C <= 512) k_dyt_norm_fwd_warp<16><<<g, th, 0, S()>>>(y, stats, x, P.p[0], P.p[1], n, C);
        else if (C <= 1024) k_dyt_norm_fwd_warp<32><<<g, th, 0, S()>>>(y, stats, x, P.p[0], P.p[1], n, C);
        else k_dyt_norm_fwd_warp<64><<<g, th, 0, S()>>>(y, stats, x, P.p[0], P.p[1], n, C);
    } else {
        k_norm_fwd_rows<<<(unsigned)n, ROW_THREADS, 0, S()>>>(y, stats, x, P, type, C);
    }
    TBC_LAUNCHED();
}

/* Backward, part 1: one block per row computes dx (+=) and, for dyt / derf, the row's
 * double partials of the scalar-parameter gradients (rowpart[2t], rowpart[2t+1]). */
__global__ void k_norm_bwd_rows(float *dx, double *rowpart, const float *dy, const float *stats,
                                const float *x, norm_prm P, int type, int C) {
    __shared__ double sh[ROW_THREADS];
    size_t t = blockIdx.x;
    const float *xr = x + t * C, *g = dy + t * C;
    float *dxr = dx + t * C;
    const double two_over_sqrt_pi = 1.1283791670955126;
    if (type == TB_NORM_DYNAMIC_TANH) {
        float mean = stats[2 * t], sd = stats[2 * t + 1];
        float r = 1.0f / (sd + (float)DT_EPS);
        double sg = 0, sgd = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float xh = (xr[j] - mean) * r;
            float yv = tanhf(P.p[0][j] * xh + P.p[1][j]);
            float dxh = g[j] * (1.0f - yv * yv) * P.p[0][j];
            sg += dxh;
            sgd += (double)dxh * (double)(xr[j] - mean);
        }
        sg = tbc_block_sum_d(sg, sh);
        sgd = tbc_block_sum_d(sgd, sh);
        float mg = (float)(sg / C);
        float coef = sd > 0 ? (float)((double)r * r * sgd / ((C - 1) * (double)sd)) : 0.0f;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float xh = (xr[j] - mean) * r;
            float yv = tanhf(P.p[0][j] * xh + P.p[1][j]);
            float dxh = g[j] * (1.0f - yv * yv) * P.p[0][j];
            dxr[j] += r * (dxh - mg) - coef * (xr[j] - mean);
        }
    } else if (type == TB_NORM_LAYER_NORM) {
        float mean = stats[2 * t], rstd = stats[2 * t + 1];
        double sg = 0, sgx = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float xh = (xr[j] - mean) * rstd;
            float gw = g[j] * P.p[0][j];
            sg += gw;
            sgx += (double)gw * xh;
        }
        sg = tbc_block_sum_d(sg, sh);
        sgx = tbc_block_sum_d(sgx, sh);
        float mg = (float)(sg / C), mgx = (float)(sgx / C);
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float xh = (xr[j] - mean) * rstd;
            dxr[j] += rstd * (g[j] * P.p[0][j] - mg - xh * mgx);
        }
    } else if (type == TB_NORM_RMS_NORM) {
        float r = stats[2 * t];
        double sgx = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) sgx += (double)(g[j] * P.p[0][j]) * xr[j];
        sgx = tbc_block_sum_d(sgx, sh);
        float coef = (float)((double)r * r * r * sgx / C);
        for (int j = threadIdx.x; j < C; j += blockDim.x) dxr[j] += r * g[j] * P.p[0][j] - coef * xr[j];
    } else if (type == TB_NORM_DYT) {
        float a = P.p[0][0];
        double ga = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float th = tanhf(a * xr[j]);
            float du = g[j] * P.p[1][j] * (1.0f - th * th);
            ga += (double)du * xr[j];
            dxr[j] += du * a;
        }
        ga = tbc_block_sum_d(ga, sh);
        if (threadIdx.x == 0) rowpart[2 * t] = ga, rowpart[2 * t + 1] = 0;
    } else { /* derf */
        float a = P.p[0][0], s = P.p[1][0];
        double ga = 0, gs = 0;
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float u = a * xr[j] + s;
            float du = g[j] * P.p[2][j] * (float)two_over_sqrt_pi * expf(-u * u);
            ga += (double)du * xr[j];
            gs += du;
            dxr[j] += du * a;
        }
        ga = tbc_block_sum_d(ga, sh);
        gs = tbc_block_sum_d(gs, sh);
        if (threadIdx.x == 0) rowpart[2 * t] = ga, rowpart[2 * t + 1] = gs;
    }
}

/* The per-column (vector) parameter gradients: two sums over rows per column, (v0, v1)
 * into the type's two vector tensors. */
__device__ __forceinline__ void norm_col_terms(int type, const float *xr, const float *g, int j,
                                               float s0, float s1, norm_prm P, float *v0, float *v1) {
    if (type == TB_NORM_DYNAMIC_TANH) {
        float xh = (xr[j] - s0) * (1.0f / (s1 + (float)DT_EPS));
        float yv = tanhf(P.p[0][j] * xh + P.p[1][j]);
        float dz = g[j] * (1.0f - yv * yv);
        *v0 = dz * xh, *v1 = dz;
    } else if (type == TB_NORM_LAYER_NORM) {
        *v0 = g[j] * ((xr[j] - s0) * s1), *v1 = g[j];
    } else if (type == TB_NORM_RMS_NORM) {
        *v0 = g[j] * (xr[j] * s0), *v1 = 0;
    } else if (type == TB_NORM_DYT) {
        *v0 = g[j] * tanhf(P.p[0][0] * xr[j]), *v1 = g[j];
    } else {
        *v0 = g[j] * erff(P.p[0][0] * xr[j] + P.p[1][0]), *v1 = g[j];
    }
}

/* Part 2: block (column tile, row chunk) sums its rows in ascending order into
 * part[chunk][2][C] (double). Part 3 sums the chunks in ascending order into dprm. */
#define COL_THREADS 128
__global__ void k_norm_bwd_cols(double *part, const float *dy, const float *stats, const float *x,
                                norm_prm P, int type, size_t n, int C, size_t chunk) {
    int j = blockIdx.x * COL_THREADS + threadIdx.x;
    if (j >= C) return;
    size_t r0 = blockIdx.y * chunk, r1 = r0 + chunk < n ? r0 + chunk : n;
    double a0 = 0, a1 = 0;
    for (size_t t = r0; t < r1; t++) {
        float s0 = stats ? stats[2 * t] : 0.0f, s1 = stats ? stats[2 * t + 1] : 0.0f;
        float v0, v1;
        norm_col_terms(type, x + t * C, dy + t * C, j, s0, s1, P, &v0, &v1);
        a0 += v0;
        a1 += v1;
    }
    part[((size_t)blockIdx.y * 2) * C + j] = a0;
    part[((size_t)blockIdx.y * 2 + 1) * C + j] = a1;
}

/* Block of 32 columns x 32 groups: group g sums chunks g, g + 32, ... in order, then the
 * 32 group sums are added in group order (a fixed order: deterministic). */
#define COLF_GROUPS 32
__global__ void k_norm_bwd_cols_final(float *d0, float *d1, const double *part, int nchunks, int C) {
    __shared__ double sh[2][COLF_GROUPS][32];
    int cx = threadIdx.x % 32, g = threadIdx.x / 32;
    int j = blockIdx.x * 32 + cx;
    double a0 = 0, a1 = 0;
    if (j < C)
        for (int c = g; c < nchunks; c += COLF_GROUPS) {
            a0 += part[((size_t)c * 2) * C + j];
            a1 += part[((size_t)c * 2 + 1) * C + j];
        }
    sh[0][g][cx] = a0, sh[1][g][cx] = a1;
    __syncthreads();
    if (g || j >= C) return;
    a0 = 0, a1 = 0;
    for (int k = 0; k < COLF_GROUPS; k++) a0 += sh[0][k][cx], a1 += sh[1][k][cx];
    d0[j] += (float)a0;
    if (d1) d1[j] += (float)a1;
}
static void norm_cols_final(float *d0, float *d1, const double *part, int nchunks, int C) {
    k_norm_bwd_cols_final<<<(unsigned)((C + 31) / 32), 32 * COLF_GROUPS, 0, S()>>>(d0, d1, part, nchunks, C);
    TBC_LAUNCHED();
}

/* Scalars: dprm[0][0] += Σ rowpart[2t], and for derf dprm[1][0] += Σ rowpart[2t+1]. */
__global__ void k_norm_bwd_scalars(float *da, float *ds, const double *rowpart, size_t n) {
    __shared__ double sh[ROW_THREADS];
    double a = 0, s = 0;
    for (size_t t = threadIdx.x; t < n; t += blockDim.x) a += rowpart[2 * t], s += rowpart[2 * t + 1];
    a = tbc_block_sum_d(a, sh);
    s = tbc_block_sum_d(s, sh);
    if (threadIdx.x == 0) {
        *da += (float)a;
        if (ds) *ds += (float)s;
    }
}

/* base: dx's start (NULL: zeros; dx: the += form), read by the fused dynamic_tanh kernel
 * as it goes, else put in dx first (cu_norm_bwd_to). */
static void norm_bwd_any(real *dx, const real *base, real *const *dprm, const real *dy, const real *stats,
                         const real *x, const real *const *prm, int type, size_t n, int C) {
    if (!n) return;
    norm_prm P = {{NULL, NULL, NULL, NULL}};
    for (int i = 0; i < norm_nprm(type); i++) P.p[i] = prm[i];
    int scal = type == TB_NORM_DYT || type == TB_NORM_DERF;
    double *rowpart = scal ? (double *)tbc_scratch(TBC_SCR_NORM_ROWS, 2 * n * sizeof(double)) : NULL;
    unsigned th = 0;
    if (type == TB_NORM_DYNAMIC_TANH && n / DYT_BWD_ROWS < 0x7fffffffu &&
        (th = dyt_vec_threads(C, dx, dy, x, P.p[0], P.p[1])) && (!base || !((uintptr_t)base & 15))) {
        /* the rows and the column sums in one pass (k_dyt_bwd_vec) */
        int nchunks = (int)((n + DYT_BWD_ROWS - 1) / DYT_BWD_ROWS);
        double *part = (double *)tbc_scratch(TBC_SCR_NORM_COLS, (size_t)nchunks * 2 * C * sizeof(double));
        if (th <= 256)
            k_dyt_bwd_vec<256><<<(unsigned)nchunks, th, 0, S()>>>(dx, base, part, dy, stats, x, P.p[0], P.p[1], n, C);
        else k_dyt_bwd_vec<512><<<(unsigned)nchunks, th, 0, S()>>>(dx, base, part, dy, stats, x, P.p[0], P.p[1], n, C);
        TBC_LAUNCHED();
        norm_cols_final(dprm[0], dprm[1], part, nchunks, C);
        return;
    }
    if (base != dx) { /* the other kernels add into dx */
        if (base) TBC_CHECK(cudaMemcpyAsync(dx, base, n * C * sizeof(real), cudaMemcpyDeviceToDevice, S()));
        else TBC_CHECK(cudaMemsetAsync(dx, 0, n * C * sizeof(real), S()));
    }
    if (type == TB_NORM_DYNAMIC_TANH && C <= 2048 && n / DK_ROWS < 65535u * 1024u) {
        unsigned g = dk_blocks(n), th = 32 * DK_ROWS;
        if (C <= 256) k_dyt_norm_bwd_warp<8><<<g, th, 0, S()>>>(dx, dy, stats, x, P.p[0], P.p[1], n, C);
        else if (C <= 512) k_dyt_norm_bwd_warp<16><<<g, th, 0, S()>>>(dx, dy, stats, x, P.p[0], P.p[1], n, C);
        else if (C <= 1024) k_dyt_norm_bwd_warp<32><<<g, th, 0, S()>>>(dx, dy, stats, x, P.p[0], P.p[1], n, C);
        else k_dyt_norm_bwd_warp<64><<<g, th, 0, S()>>>(dx, dy, stats, x, P.p[0], P.p[1], n, C);
    } else {
        k_norm_bwd_rows<<<(unsigned)n, ROW_THREADS, 0, S()>>>(dx, rowpart, dy, stats, x, P, type, C);
    }
    TBC_LAUNCHED();
    size_t chunk = n / 256 + 1 < 32 ? 32 : n / 256 + 1;
    int nchunks = (int)((n + chunk - 1) / chunk);
    double *part = (double *)tbc_scratch(TBC_SCR_NORM_COLS, (size_t)nchunks * 2 * C * sizeof(double));
    dim3 grid((unsigned)((C + COL_THREADS - 1) / COL_THREADS), (unsigned)nchunks);
    const float *st = scal ? NULL : stats;
    k_norm_bwd_cols<<<grid, COL_THREADS, 0, S()>>>(part, dy, st, x, P, type, n, C, chunk);
    TBC_LAUNCHED();
    /* The vector tensors: dynamic_tanh alpha, beta = 0, 1; layer_norm 0, 1; rms 0;
     * dyt gamma, beta = 1, 2; derf gamma, beta = 2, 3. */
    float *d0, *d1;
    switch ((tb_norm_type)type) {
    case TB_NORM_DYT: d0 = dprm[1], d1 = dprm[2]; break;
    case TB_NORM_DERF: d0 = dprm[2], d1 = dprm[3]; break;
    case TB_NORM_RMS_NORM: d0 = dprm[0], d1 = NULL; break;
    default: d0 = dprm[0], d1 = dprm[1]; break;
    }
    norm_cols_final(d0, d1, part, nchunks, C);
    if (scal) {
        k_norm_bwd_scalars<<<1, ROW_THREADS, 0, S()>>>(dprm[0], type == TB_NORM_DERF ? dprm[1] : NULL,
                                                      rowpart, n);
        TBC_LAUNCHED();
    }
}

static void cu_norm_bwd(real *dx, real *const *dprm, const real *dy, const real *stats, const real *x,
                        const real *const *prm, int type, size_t n, int C) {
    norm_bwd_any(dx, dx, dprm, dy, stats, x, prm, type, n, C);
}

static void cu_norm_bwd_to(real *dx, const real *base, real *const *dprm, const real *dy, const real *stats,
                           const real *x, const real *const *prm, int type, size_t n, int C) {
    norm_bwd_any(dx, base, dprm, dy, stats, x, prm, type, n, C);
}

/* ---- masked cross-entropy ------------------------------------------------------- */

/* One block per row: argmax (lowest index on ties), Σ exp in double, lse; per-row loss
 * and flags into rows[t] = (loss, supervised, correct). */
__global__ void k_xent_rows(float *lse, double *rows, const float *logits, const int32_t *labels, int V) {
    __shared__ double shd[ROW_THREADS];
    __shared__ float shv[ROW_THREADS];
    __shared__ int shi[ROW_THREADS];
    size_t t = blockIdx.x;
    int32_t y = labels[t];
    if (y < 0 || y >= V) {
        if (threadIdx.x == 0) lse[t] = 0, rows[3 * t] = 0, rows[3 * t + 1] = 0, rows[3 * t + 2] = 0;
        return;
    }
    const float *z = logits + t * V;
    float m = -INFINITY;
    int am = V;
    for (int j = threadIdx.x; j < V; j += blockDim.x) /* ascending j: the first wins ties */
        if (am == V || z[j] > m) m = z[j], am = j;
    shv[threadIdx.x] = m;
    shi[threadIdx.x] = am;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float m2 = shv[threadIdx.x + s];
            int i2 = shi[threadIdx.x + s];
            if (m2 > shv[threadIdx.x] || (m2 == shv[threadIdx.x] && i2 < shi[threadIdx.x]))
                shv[threadIdx.x] = m2, shi[threadIdx.x] = i2;
        }
        __syncthreads();
    }
    m = shv[0];
    am = shi[0];
    double e = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) e += exp((double)(z[j] - m));
    e = tbc_block_sum_d(e, shd);
    if (threadIdx.x == 0) {
        float l = m + (float)log(e);
        lse[t] = l;
        rows[3 * t] = (double)(l - z[y]);
        rows[3 * t + 1] = 1;
        rows[3 * t + 2] = am == y;
    }
}

__global__ void k_xent_total(double *out, const double *rows, size_t n) {
    __shared__ double sh[ROW_THREADS];
    double a = 0, b = 0, c = 0;
    for (size_t t = threadIdx.x; t < n; t += blockDim.x) a += rows[3 * t], b += rows[3 * t + 1], c += rows[3 * t + 2];
    a = tbc_block_sum_d(a, sh);
    b = tbc_block_sum_d(b, sh);
    c = tbc_block_sum_d(c, sh);
    if (threadIdx.x == 0) out[0] = a, out[1] = b, out[2] = c;
}

static void cu_xent_fwd(real *lse, double *sum, int64_t *count, int64_t *correct, const real *logits,
                        const int32_t *labels, size_t n, int V) {
    double h[3] = {0, 0, 0};
    if (n) {
        double *rows = (double *)tbc_scratch(TBC_SCR_XENT_ROWS, 3 * n * sizeof(double));
        double *out = (double *)tbc_scratch(TBC_SCR_RESULT, 3 * sizeof(double));
        k_xent_rows<<<(unsigned)n, ROW_THREADS, 0, S()>>>(lse, rows, logits, labels, V);
        TBC_LAUNCHED();
        k_xent_total<<<1, ROW_THREADS, 0, S()>>>(out, rows, n);
        TBC_LAUNCHED();
        TBC_CHECK(cudaMemcpyAsync(h, out, sizeof h, cudaMemcpyDeviceToHost, S()));
        TBC_CHECK(cudaStreamSynchronize(S()));
    }
    *sum = h[0];
    *count = (int64_t)h[1]; /* counts are exact in double below 2^53 */
    *correct = (int64_t)h[2];
}

__global__ void k_xent_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *labels,
                           float scale, size_t n, int V) {
    GRID_STRIDE(i, n * (size_t)V) {
        size_t t = i / V;
        int j = (int)(i % V);
        int32_t y = labels[t];
        float v = 0.0f; /* unsupervised rows: 0 (dlogits may be logits: read, then written) */
        if (y >= 0 && y < V) {
            v = scale * expf(logits[i] - lse[t]);
            if (j == y) v -= scale;
        }
        dlogits[i] = v;
    }
}

static void cu_xent_bwd(real *dlogits, const real *logits, const real *lse, const int32_t *labels,
                        real scale, size_t n, int V) {
    if (!n) return;
    k_xent_bwd<<<tbc_blocks(n * (size_t)V, 256), 256, 0, S()>>>(dlogits, logits, lse, labels, scale, n, V);
    TBC_LAUNCHED();
}

/* ---- element-wise helpers ------------------------------------------------------- */

/* V: four values a thread (tbc_vec4), n then counts float4s. */
template <bool V>
__global__ void k_axpy3(float *y, const float *x, float a, const float *z, size_t n) {
    if (V)
        GRID_STRIDE(q, n) {
            float4 u = reinterpret_cast<const float4 *>(x)[q], v = reinterpret_cast<const float4 *>(z)[q];
            u.x = u.x + a * v.x, u.y = u.y + a * v.y, u.z = u.z + a * v.z, u.w = u.w + a * v.w;
            reinterpret_cast<float4 *>(y)[q] = u;
        }
    else
        GRID_STRIDE(i, n) y[i] = x[i] + a * z[i];
}

static void cu_axpy(real *y, const real *x, real a, const real *z, size_t n) {
    if (!n) return;
    if (tbc_vec4(n, y, x, z)) k_axpy3<true><<<tbc_blocks(n / 4, 256), 256, 0, S()>>>(y, x, a, z, n / 4);
    else k_axpy3<false><<<tbc_blocks(n, 256), 256, 0, S()>>>(y, x, a, z, n);
    TBC_LAUNCHED();
}

static void cu_sum_squares(double *out, const real *z, size_t n) {
    double *d = (double *)tbc_scratch(TBC_SCR_RESULT, sizeof(double));
    tbc_reduce_float(d, z, n, TBC_RED_SQUARE);
    TBC_CHECK(cudaMemcpyAsync(out, d, sizeof(double), cudaMemcpyDeviceToHost, S()));
    TBC_CHECK(cudaStreamSynchronize(S()));
}

static void cu_sum_squares_dev(double *out, const real *z, size_t n) {
    tbc_reduce_float(out, z, n, TBC_RED_SQUARE);
}

void tbc_ops_dense_init(tb_ops_dense *ops) {
    ops->linear_fwd = cu_linear_fwd;
    ops->linear_bwd = cu_linear_bwd;
    ops->bitlinear_quant_w = cu_bitlinear_quant_w;
    ops->bitlinear_quant_w_many = cu_bitlinear_quant_w_many;
    ops->bitlinear_quant_x = cu_bitlinear_quant_x;
    ops->bitlinear_fwd = cu_bitlinear_fwd;
    ops->bitlinear_bwd = cu_bitlinear_bwd;
    ops->bitlinear_bwd_set = cu_bitlinear_bwd_set;
    ops->norm_fwd = cu_norm_fwd;
    ops->norm_bwd = cu_norm_bwd;
    ops->norm_bwd_to = cu_norm_bwd_to;
    ops->xent_fwd = cu_xent_fwd;
    ops->xent_bwd = cu_xent_bwd;
    ops->axpy = cu_axpy;
    ops->sum_squares = cu_sum_squares;
    ops->sum_squares_dev = cu_sum_squares_dev;
    tbc_dense_more_init(ops);
    tbc_attn_init(ops);
}
