/* Fused softmax attention on CUDA, fp32 (the op contract of ops_dense.h attn_fwd /
 * attn_bwd with probs == NULL): P is never stored. The forward walks the keys in tiles
 * with a running row maximum and sum (online softmax) and writes out = P̃ v and the row's
 * log-sum-exp; the backward recomputes P = exp(s - lse) tile by tile.
 *
 * Kernels (128 threads; thread (ty, tx) = (tid / 8, tid % 8)):
 *   k_fa_fwd      block per (64 queries, head, batch): S = Q Kᵀ over 32-key tiles, each
 *                 thread 4 rows x 4 keys; online softmax (row reductions over the 8 lanes
 *                 of a row by fixed xor shuffles); O += P̃ V, each thread 4 rows x HS/8
 *                 channels.
 *   k_fa_rowdot   D = rowsum(dO ∘ O) per (b, h, i), one warp per row, fixed shuffle tree.
 *   k_fa_bwd_q    block per (64 queries, head, batch): over 32-key tiles S, dP̃ = dO Vᵀ,
 *                 dS = P (dP̃ m - D) / sqrt(hs), dq += dS K.
 *   k_fa_bwd_kv   block per (BK keys, kv head, batch): over the group's query heads in
 *                 order and 32-query tiles, Sᵀ, dP̃ᵀ, dv += P̃ᵀ dO, dk += dSᵀ Q.
 * Every sum runs in a fixed order and each output element has one writer: no atomics, the
 * same inputs give the same bits. Products use fmaf explicitly (the library is built
 * without FMA contraction). The head size is padded to HS in {32, 64, 128} with zeros;
 * larger heads, sigmoid attention and GPUs whose per-block shared memory is too small
 * for these tiles take the plain kernels of attn_cuda.cu (with stored P). Dropout factors
 * are the Philox draws of the plain path and the CPU, element ((b·H + h)·T + i)·T + j;
 * with T % 4 == 0 each tile draws them one Philox block per 4 elements into shared
 * keep flags (tbc_keep_tile), else per element. */
#include "cuda_internal.cuh"

#define FA_THREADS 128
#define FA_BR 64 /* queries per block (forward, dq) */
#define FA_BC 32 /* keys per tile (forward, dq); queries per tile (dk, dv) */
#define FA_LD (FA_BC + 1)

static inline cudaStream_t S(void) { return tbc_g->stream; }

__device__ __forceinline__ float fa_rowmax8(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
}
__device__ __forceinline__ float fa_rowsum8(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v + __shfl_xor_sync(0xffffffffu, v, 4);
}

/* rows x HS tile, transposed (tbc_load_tile_t with this file's block size). */
template <int HS>
__device__ __forceinline__ void fa_load_t(float *dst, int ldd, const float *src, size_t ld, int r0, int rows,
                                          int T, int hs) {
    tbc_load_tile_t<HS, FA_THREADS>(dst, ldd, src, ld, r0, rows, T, hs);
}

template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
    k_fa_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
             const uint8_t *mask, tbc_drop d, uint32_t site, int T, int H, int Hkv, int hs, float scale) {
    constexpr int NC = HS / 8;
    extern __shared__ float sm[];
    float *QT = sm;                 /* [HS][FA_BR] */
    float *KT = QT + HS * FA_BR;    /* [HS][FA_LD] */
    float *Vs = KT + HS * FA_LD;    /* [FA_BC][HS] */
    float *Ps = Vs + FA_BC * HS;    /* [FA_BR][FA_LD] */
    __shared__ int km[FA_BC];
    __shared__ uint8_t keep[FA_BR * FA_BC];
    int tid = threadIdx.x, ty = tid / 8, tx = tid % 8;
    int i0 = blockIdx.x * FA_BR, h = blockIdx.y, b = blockIdx.z;
    int kh = h / (H / Hkv);
    const float *qb = q + (size_t)b * T * ldq + (size_t)h * hs;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kh * hs;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kh * hs;
    size_t rowbase = ((size_t)b * H + h) * T;
    fa_load_t<HS>(QT, FA_BR, qb, ldq, i0, FA_BR, T, hs);
    float acc[4][NC], m[4], l[4];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        m[a] = -INFINITY;
        l[a] = 0;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[a][cc] = 0;
    }
    for (int j0 = 0; j0 < T; j0 += FA_BC) {
        __syncthreads();
        fa_load_t<HS>(KT, FA_LD, kb, ldkv, j0, FA_BC, T, hs);
        for (int e = tid; e < FA_BC * HS; e += FA_THREADS) {
            int j = e / HS, c = e % HS;
            Vs[e] = (j0 + j < T && c < hs) ? vb[(size_t)(j0 + j) * ldkv + c] : 0.0f;
        }
        if (tid < FA_BC) {
            int j = j0 + tid;
            km[tid] = j < T && (!mask || mask[(size_t)b * T + j]);
        }
        if (tbc_keep_ok(d, T)) tbc_keep_tile<FA_BR, FA_BC, FA_THREADS>(keep, d, site, rowbase, i0, j0, T);
        __syncthreads();
        float s[4][4];
        tbc_tile_dot<HS, 4>(s, QT, FA_BR, KT, FA_LD, ty, tx);
#pragma unroll
        for (int a = 0; a < 4; a++) {
            int r = ty + 16 * a, i = i0 + r;
            float mt = -INFINITY;
#pragma unroll
            for (int bb = 0; bb < 4; bb++) {
                s[a][bb] = km[tx + 8 * bb] ? s[a][bb] * scale : -INFINITY;
                mt = fmaxf(mt, s[a][bb]);
            }
            mt = fa_rowmax8(mt);
            float mn = fmaxf(m[a], mt);
            float alpha = mn == -INFINITY ? 1.0f : expf(m[a] - mn);
            float rs = 0;
#pragma unroll
            for (int bb = 0; bb < 4; bb++) {
                int j = tx + 8 * bb;
                float p = s[a][bb] == -INFINITY ? 0.0f : expf(s[a][bb] - mn);
                rs += p;
                if (d.active && p != 0 && i < T)
                    p *= tbc_keep_ok(d, T) ? (keep[r * FA_BC + j] ? d.scale : 0.0f)
                                          : tbc_drop_factor(d, site, (rowbase + i) * T + j0 + j);
                Ps[r * FA_LD + j] = p;
            }
            rs = fa_rowsum8(rs);
            l[a] = l[a] * alpha + rs;
            m[a] = mn;
#pragma unroll
            for (int cc = 0; cc < NC; cc++) acc[a][cc] *= alpha;
        }
        __syncthreads();
        tbc_tile_wv<HS>(acc, Ps, FA_LD, Vs, T - j0 < FA_BC ? T - j0 : FA_BC, ty, tx);
    }
    size_t ldo = (size_t)H * hs;
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int i = i0 + ty + 16 * a;
        if (i >= T) continue;
        float inv = l[a] > 0 ? 1.0f / l[a] : 0.0f;
        float *o = out + ((size_t)b * T + i) * ldo + (size_t)h * hs;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            int c = tx + 8 * cc;
            if (c < hs) o[c] = acc[a][cc] * inv;
        }
        if (tx == 0) lse[rowbase + i] = l[a] > 0 ? m[a] + logf(l[a]) : 0.0f;
    }
}

/* D[(b·H + h)·T + i] = Σ_c dO ∘ O over the head's channels: one warp per row. */
/* Four rows a warp at a time, their loads issued before any sum (one row's two loads a lane
 * left the warp waiting a memory round trip per row); row indices in 32 bits where they
 * fit. Each row's sum is the same expression as before (lane c: fma over c, c + 32, ...;
 * then the fixed xor tree). */
__global__ void k_fa_rowdot(float *D, const float *dout, const float *out, int B, int T, int H, int hs) {
    constexpr int RW = 4;
    int lane = threadIdx.x % 32;
    size_t rows = (size_t)B * H * T, warps = (size_t)gridDim.x * (blockDim.x / 32);
    bool narrow = rows < ((size_t)1 << 32);
    for (size_t r0 = ((size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * RW; r0 < rows; r0 += warps * RW) {
        float s[RW];
#pragma unroll
        for (int k = 0; k < RW; k++) {
            size_t row = r0 + k;
            s[k] = 0;
            if (row >= rows) continue;
            size_t bh = narrow ? (size_t)((unsigned)row / (unsigned)T) : row / T;
            int i = (int)(row - bh * T), h = (int)(bh % H);
            size_t b = bh / H, off = (b * T + i) * ((size_t)H * hs) + (size_t)h * hs;
            for (int c = lane; c < hs; c += 32) s[k] = fmaf(dout[off + c], out[off + c], s[k]);
        }
#pragma unroll
        for (int k = 0; k < RW; k++) {
#pragma unroll
            for (int w = 16; w > 0; w >>= 1) s[k] += __shfl_xor_sync(0xffffffffu, s[k], w);
            if (lane == 0 && r0 + k < rows) D[r0 + k] = s[k];
        }
    }
}

template <int HS>
__global__ void __launch_bounds__(FA_THREADS)
    k_fa_bwd_q(float *dq, const float *dout, const float *lse, const float *Dg, const float *q, const float *k,
               const float *v, size_t ldq, size_t ldkv, const uint8_t *mask, tbc_drop d, uint32_t site, int T,
               int H, int Hkv, int hs, float scale) {
    constexpr int NC = HS / 8;
    extern __shared__ float sm[];
    float *QT = sm;               /* [HS][FA_BR] */
    float *OT = QT + HS * FA_BR;  /* dO: [HS][FA_BR] */
    float *KT = OT + HS * FA_BR;  /* [HS][FA_LD] */
    float *VT = KT + HS * FA_LD;  /* [HS][FA_LD] */
    float *SS = VT + HS * FA_LD;  /* dS: [FA_BR][FA_LD] */
    __shared__ float sl[FA_BR], sD[FA_BR];
    __shared__ int km[FA_BC];
    __shared__ uint8_t keep[FA_BR * FA_BC];
    int tid = threadIdx.x, ty = tid / 8, tx = tid % 8;
    int i0 = blockIdx.x * FA_BR, h = blockIdx.y, b = blockIdx.z;
    int kh = h / (H / Hkv);
    size_t ldo = (size_t)H * hs, rowbase = ((size_t)b * H + h) * T;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kh * hs;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kh * hs;
    fa_load_t<HS>(QT, FA_BR, q + (size_t)b * T * ldq + (size_t)h * hs, ldq, i0, FA_BR, T, hs);
    fa_load_t<HS>(OT, FA_BR, dout + (size_t)b * T * ldo + (size_t)h * hs, ldo, i0, FA_BR, T, hs);
    if (tid < FA_BR) {
        int i = i0 + tid;
        sl[tid] = i < T ? lse[rowbase + i] : 0.0f;
        sD[tid] = i < T ? Dg[rowbase + i] : 0.0f;
    }
    float acc[4][NC];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[a][cc] = 0;
    for (int j0 = 0; j0 < T; j0 += FA_BC) {
        __syncthreads();
        fa_load_t<HS>(KT, FA_LD, kb, ldkv, j0, FA_BC, T, hs);
        fa_load_t<HS>(VT, FA_LD, vb, ldkv, j0, FA_BC, T, hs);
        if (tid < FA_BC) {
            int j = j0 + tid;
            km[tid] = j < T && (!mask || mask[(size_t)b * T + j]);
        }
        if (tbc_keep_ok(d, T)) tbc_keep_tile<FA_BR, FA_BC, FA_THREADS>(keep, d, site, rowbase, i0, j0, T);
        __syncthreads();
        float s[4][4], dp[4][4];
        tbc_tile_dot<HS, 4>(s, QT, FA_BR, KT, FA_LD, ty, tx);
        tbc_tile_dot<HS, 4>(dp, OT, FA_BR, VT, FA_LD, ty, tx);
#pragma unroll
        for (int a = 0; a < 4; a++) {
            int r = ty + 16 * a, i = i0 + r;
#pragma unroll
            for (int bb = 0; bb < 4; bb++) {
                int j = tx + 8 * bb;
                float p = km[j] && i < T ? expf(s[a][bb] * scale - sl[r]) : 0.0f;
                float ds = 0;
                if (p != 0) {
                    float mf = !d.active        ? 1.0f
                               : tbc_keep_ok(d, T) ? (keep[r * FA_BC + j] ? d.scale : 0.0f)
                                                  : tbc_drop_factor(d, site, (rowbase + i) * T + j0 + j);
                    ds = p * (dp[a][bb] * mf - sD[r]) * scale;
                }
                SS[r * FA_LD + j] = ds;
            }
        }
        __syncthreads();
        int nj = T - j0 < FA_BC ? T - j0 : FA_BC;
        for (int j = 0; j < nj; j++) {
            float dsv[4];
#pragma unroll
            for (int a = 0; a < 4; a++) dsv[a] = SS[(ty + 16 * a) * FA_LD + j];
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                float kk = KT[(tx + 8 * cc) * FA_LD + j];
#pragma unroll
                for (int a = 0; a < 4; a++) acc[a][cc] = fmaf(dsv[a], kk, acc[a][cc]);
            }
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        int i = i0 + ty + 16 * a;
        if (i >= T) continue;
        float *g = dq + ((size_t)b * T + i) * ldq + (size_t)h * hs;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            int c = tx + 8 * cc;
            if (c < hs) g[c] += acc[a][cc];
        }
    }
}

/* BK keys per block, each thread BK / 16 keys (rows ty + 16 a) x HS / 8 channels. */
template <int HS, int BK>
__global__ void __launch_bounds__(FA_THREADS)
    k_fa_bwd_kv(float *dk, float *dv, const float *dout, const float *lse, const float *Dg, const float *q,
                const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask, tbc_drop d,
                uint32_t site, int T, int H, int Hkv, int hs, float scale) {
    constexpr int NC = HS / 8, NA = BK / 16, LK = BK + 1;
    extern __shared__ float sm[];
    float *KT = sm;               /* [HS][LK] */
    float *VT = KT + HS * LK;     /* [HS][LK] */
    float *QT = VT + HS * LK;     /* [HS][FA_LD] */
    float *OT = QT + HS * FA_LD;  /* dO: [HS][FA_LD] */
    float *PT = OT + HS * FA_LD;  /* P̃ᵀ: [BK][FA_LD] */
    float *ST = PT + BK * FA_LD;  /* dSᵀ: [BK][FA_LD] */
    __shared__ float sl[FA_BC], sD[FA_BC];
    __shared__ int km[BK];
    __shared__ uint8_t keep[FA_BC * BK]; /* [query][key] */
    int tid = threadIdx.x, ty = tid / 8, tx = tid % 8;
    int j0 = blockIdx.x * BK, kh = blockIdx.y, b = blockIdx.z;
    int group = H / Hkv;
    size_t ldo = (size_t)H * hs;
    fa_load_t<HS>(KT, LK, k + (size_t)b * T * ldkv + (size_t)kh * hs, ldkv, j0, BK, T, hs);
    fa_load_t<HS>(VT, LK, v + (size_t)b * T * ldkv + (size_t)kh * hs, ldkv, j0, BK, T, hs);
    if (tid < BK) {
        int j = j0 + tid;
        km[tid] = j < T && (!mask || mask[(size_t)b * T + j]);
    }
    float ak[NA][NC], av[NA][NC];
#pragma unroll
    for (int a = 0; a < NA; a++)
#pragma unroll
        for (int cc = 0; cc < NC; cc++) ak[a][cc] = av[a][cc] = 0;
    for (int g = 0; g < group; g++) {
        int h = kh * group + g;
        size_t rowbase = ((size_t)b * H + h) * T;
        const float *qb = q + (size_t)b * T * ldq + (size_t)h * hs;
        const float *ob = dout + (size_t)b * T * ldo + (size_t)h * hs;
        for (int i0 = 0; i0 < T; i0 += FA_BC) {
            __syncthreads();
            fa_load_t<HS>(QT, FA_LD, qb, ldq, i0, FA_BC, T, hs);
            fa_load_t<HS>(OT, FA_LD, ob, ldo, i0, FA_BC, T, hs);
            if (tid < FA_BC) {
                int i = i0 + tid;
                sl[tid] = i < T ? lse[rowbase + i] : 0.0f;
                sD[tid] = i < T ? Dg[rowbase + i] : 0.0f;
            }
            if (tbc_keep_ok(d, T)) tbc_keep_tile<FA_BC, BK, FA_THREADS>(keep, d, site, rowbase, i0, j0, T);
            __syncthreads();
            float s[NA][4], dp[NA][4];
            tbc_tile_dot<HS, NA>(s, KT, LK, QT, FA_LD, ty, tx);
            tbc_tile_dot<HS, NA>(dp, VT, LK, OT, FA_LD, ty, tx);
#pragma unroll
            for (int a = 0; a < NA; a++) {
                int jr = ty + 16 * a;
#pragma unroll
                for (int bb = 0; bb < 4; bb++) {
                    int ic = tx + 8 * bb, i = i0 + ic;
                    float p = km[jr] && i < T ? expf(s[a][bb] * scale - sl[ic]) : 0.0f;
                    float pt = 0, ds = 0;
                    if (p != 0) {
                        float mf = !d.active        ? 1.0f
                                   : tbc_keep_ok(d, T) ? (keep[ic * BK + jr] ? d.scale : 0.0f)
                                                      : tbc_drop_factor(d, site, (rowbase + i) * T + j0 + jr);
                        pt = p * mf;
                        ds = p * (dp[a][bb] * mf - sD[ic]) * scale;
                    }
                    PT[jr * FA_LD + ic] = pt;
                    ST[jr * FA_LD + ic] = ds;
                }
            }
            __syncthreads();
            int ni = T - i0 < FA_BC ? T - i0 : FA_BC;
            for (int i = 0; i < ni; i++) {
                float pv[NA], sv[NA];
#pragma unroll
                for (int a = 0; a < NA; a++) {
                    pv[a] = PT[(ty + 16 * a) * FA_LD + i];
                    sv[a] = ST[(ty + 16 * a) * FA_LD + i];
                }
#pragma unroll
                for (int cc = 0; cc < NC; cc++) {
                    int c = tx + 8 * cc;
                    float ov = OT[c * FA_LD + i], qv = QT[c * FA_LD + i];
#pragma unroll
                    for (int a = 0; a < NA; a++) {
                        av[a][cc] = fmaf(pv[a], ov, av[a][cc]);
                        ak[a][cc] = fmaf(sv[a], qv, ak[a][cc]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < NA; a++) {
        int j = j0 + ty + 16 * a;
        if (j >= T) continue;
        size_t off = ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            int c = tx + 8 * cc;
            if (c < hs) {
                dk[off + c] += ak[a][cc];
                dv[off + c] += av[a][cc];
            }
        }
    }
}

/* Shared memory of each kernel for head size HS (bytes, the dynamic part). */
static size_t fa_smem_fwd(int HS) { return (size_t)4 * (HS * FA_BR + HS * FA_LD + FA_BC * HS + FA_BR * FA_LD); }
static size_t fa_smem_q(int HS) { return (size_t)4 * (2 * HS * FA_BR + 2 * HS * FA_LD + FA_BR * FA_LD); }
static int fa_bk(int HS) { return HS > 64 ? 32 : 64; }
static size_t fa_smem_kv(int HS) {
    int BK = fa_bk(HS);
    return (size_t)4 * (2 * HS * (BK + 1) + 2 * HS * FA_LD + 2 * BK * FA_LD);
}
static int fa_hs(int hs) { return hs <= 32 ? 32 : hs <= 64 ? 64 : hs <= 128 ? 128 : 0; }

int tbc_flash_fits(int hs) {
    int HS = fa_hs(hs);
    if (!HS) return 0;
    size_t need = fa_smem_fwd(HS);
    if (fa_smem_q(HS) > need) need = fa_smem_q(HS);
    if (fa_smem_kv(HS) > need) need = fa_smem_kv(HS);
    return need + 4096 <= tbc_smem_optin_limit(); /* + the kernels' static arrays */
}

static void fa_check(int B, int T, int H, int Hkv, int hs) {
    if (Hkv <= 0 || H % Hkv) tbc_fatal("attn", __FILE__, __LINE__, "H is not a multiple of Hkv");
    if (H > 65535 || B > 65535) tbc_fatal("attn", __FILE__, __LINE__, "more than 65535 heads or batch rows");
    if (!tbc_flash_fits(hs)) tbc_fatal("attn", __FILE__, __LINE__, "head size too large for the fused kernel");
    (void)T;
}

template <int HS>
static void fa_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
                   const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    static int allowed;
    size_t smem = fa_smem_fwd(HS);
    tbc_smem_allow(k_fa_fwd<HS>, smem, 0, &allowed); /* fits: fa_check ran tbc_flash_fits */
    dim3 g((unsigned)((T + FA_BR - 1) / FA_BR), (unsigned)H, (unsigned)B);
    k_fa_fwd<HS><<<g, FA_THREADS, smem, S()>>>(out, lse, q, k, v, ldq, ldkv, mask, d, site, T, H, Hkv, hs,
                                               (float)(1.0 / sqrt((double)hs)));
    TBC_LAUNCHED();
}

template <int HS>
static void fa_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                   const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                   tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    constexpr int BK = HS > 64 ? 32 : 64;
    static int allowed_q, allowed_kv;
    float scale = (float)(1.0 / sqrt((double)hs));
    size_t sq = fa_smem_q(HS), skv = fa_smem_kv(HS);
    tbc_smem_allow(k_fa_bwd_q<HS>, sq, 0, &allowed_q);
    tbc_smem_allow(k_fa_bwd_kv<HS, BK>, skv, 0, &allowed_kv);
    dim3 gq((unsigned)((T + FA_BR - 1) / FA_BR), (unsigned)H, (unsigned)B);
    k_fa_bwd_q<HS><<<gq, FA_THREADS, sq, S()>>>(dq, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, T, H, Hkv, hs,
                                                scale);
    TBC_LAUNCHED();
    dim3 gkv((unsigned)((T + BK - 1) / BK), (unsigned)Hkv, (unsigned)B);
    k_fa_bwd_kv<HS, BK><<<gkv, FA_THREADS, skv, S()>>>(dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, T, H,
                                                       Hkv, hs, scale);
    TBC_LAUNCHED();
}

void tbc_flash_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
                   const uint8_t *mask, const struct tb_dropout *d, uint32_t site, int B, int T, int H, int Hkv,
                   int hs) {
    if (B <= 0 || T <= 0 || H <= 0 || hs <= 0) return;
    fa_check(B, T, H, Hkv, hs);
    tbc_drop dd = tbc_drop_make(d);
    if (tbc_flash_tc_fits(hs)) {
        tbc_flash_tc_fwd(out, lse, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs);
        return;
    }
    switch (fa_hs(hs)) {
    case 32: fa_fwd<32>(out, lse, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs); break;
    case 64: fa_fwd<64>(out, lse, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs); break;
    default: fa_fwd<128>(out, lse, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs); break;
    }
}

void tbc_flash_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                   const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                   const struct tb_dropout *d, uint32_t site, int B, int T, int H, int Hkv, int hs, int set) {
    if (B <= 0 || T <= 0 || H <= 0 || hs <= 0) return;
    fa_check(B, T, H, Hkv, hs);
    tbc_drop dd = tbc_drop_make(d);
    size_t rows = (size_t)B * H * T;
    float *D = (float *)tbc_scratch(TBC_SCR_ATTN_D, rows * sizeof(float));
    k_fa_rowdot<<<tbc_blocks((rows + 3) / 4, 8), 256, 0, S()>>>(D, dout, out, B, T, H, hs);
    TBC_LAUNCHED();
    if (tbc_flash_tc_fits(hs)) {
        tbc_flash_tc_bwd(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs, set);
        return;
    }
    if (set) tbc_attn_zero_grads(dq, dk, dv, ldq, ldkv, B, T, H, Hkv, hs); /* these kernels add */
    switch (fa_hs(hs)) {
    case 32: fa_bwd<32>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs); break;
    case 64: fa_bwd<64>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs); break;
    default: fa_bwd<128>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, dd, site, B, T, H, Hkv, hs); break;
    }
}
