/* The device code of the tensor-core fused attention (flash_tc_cuda.cu has the contract,
 * the layouts and the launchers). A header so tests/cuda_emu can build the same kernels
 * for its CPU emulation of a thread block (TBC_EMU: its own bf16 type, barriers, shuffles
 * and an mma that follows the PTX fragment layouts); the includer has included
 * cuda_drop.cuh (and, with CUDA, cuda_bf16.h). */
#ifndef TB_FLASH_TC_KERNELS_CUH
#define TB_FLASH_TC_KERNELS_CUH
#include "tc_tiles.cuh"

#define TC_BR 64 /* rows per block: queries (forward, dq) or keys (dk, dv) */
#define TC_BC 64 /* keys per tile (forward, dq) */

/* The dropout factor of element (query row r of the tile, key column c of the tile). */
__device__ __forceinline__ float tc_drop(const tbc_drop &d, const uint8_t *keep, int kidx, uint32_t site,
                                         uint64_t elem, int T) {
    return tbc_keep_ok(d, T) ? (keep[kidx] ? d.scale : 0.0f) : tbc_drop_factor(d, site, elem);
}

/* Queries per tile of k_fat_bwd_kv (fewer registers for HS 128), and each kernel's dynamic
 * shared memory in bytes (the tiles listed at the kernel). */
static constexpr int tc_fat_bq(int HS) { return HS > 64 ? 32 : 64; }
static inline size_t tc_fat_smem_fwd(int HS) {
    return 2 * ((size_t)(2 * TC_BR + 2 * TC_BC) * (HS + 8) + 2 * (size_t)HS * (TC_BC + 8));
}
static inline size_t tc_fat_smem_q(int HS) {
    return 2 * ((size_t)(3 * TC_BR + 3 * TC_BC) * (HS + 8) + (size_t)HS * (TC_BC + 8));
}
static inline size_t tc_fat_smem_kv(int HS) {
    size_t bq = (size_t)tc_fat_bq(HS);
    return 2 * ((3 * TC_BR + 3 * bq) * (HS + 8) + 2 * (size_t)HS * (bq + 8));
}

#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

/* SPLIT (a bench switch; the build's default is TC_SPLIT_DEFAULT): bit 0, the scores as a
 * split product (tc_gemm_ss3); bit 1, the forward's output too (tc_gemm_rs3). */
#define TC_SPLIT_DEFAULT 3

template <int HS, int SPLIT>
__global__ void __launch_bounds__(TC_THREADS)
    k_fat_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
              const uint8_t *mask, tbc_drop d, uint32_t site, int T, int H, int Hkv, int hs, float sl2) {
    constexpr int LH = HS + 8, LC = TC_BC + 8, NT = TC_BC / 8, NO = HS / 8;
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *Qs = (tc_bf16 *)tc_sm;  /* [TC_BR][LH] */
    tc_bf16 *Ql = Qs + TC_BR * LH;   /* Q - Qs: [TC_BR][LH] */
    tc_bf16 *Ks = Ql + TC_BR * LH;   /* [TC_BC][LH] */
    tc_bf16 *Kl = Ks + TC_BC * LH;   /* K - Ks: [TC_BC][LH] */
    tc_bf16 *Vt = Kl + TC_BC * LH;   /* [HS][LC] */
    tc_bf16 *Vl = Vt + HS * LC;      /* V - Vt: [HS][LC] */
    __shared__ int km[TC_BC];
    __shared__ uint8_t keep[TC_BR * TC_BC];
    int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    int i0 = blockIdx.x * TC_BR, h = blockIdx.y, b = blockIdx.z;
    int kh = h / (H / Hkv);
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kh * hs;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kh * hs;
    size_t rowbase = ((size_t)b * H + h) * T;
    tc_stage<HS, TC_BR, SPLIT & 1>(Qs, NULL, q + (size_t)b * T * ldq + (size_t)h * hs, ldq, i0, T, hs, Ql);
    float o[NO][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
    tc_zero(o);
    int r[2] = {w * 16 + g, w * 16 + g + 8}; /* the thread's two rows in the tile */
    for (int j0 = 0; j0 < T; j0 += TC_BC) {
        __syncthreads();
        tc_stage<HS, TC_BC, SPLIT & 1>(Ks, NULL, kb, ldkv, j0, T, hs, Kl);
        tc_stage<HS, TC_BC, false, (SPLIT & 2) != 0>(NULL, Vt, vb, ldkv, j0, T, hs, NULL, Vl);
        if (tid < TC_BC) {
            int j = j0 + tid;
            km[tid] = j < T && (!mask || mask[(size_t)b * T + j]);
        }
        if (tbc_keep_ok(d, T)) tbc_keep_tile<TC_BR, TC_BC, TC_THREADS>(keep, d, site, rowbase, i0, j0, T);
        __syncthreads();
        float s[NT][4];
        tc_zero(s);
        if (SPLIT & 1) tc_gemm_ss3<HS, NT>(s, Qs + w * 16 * LH, Ql + w * 16 * LH, LH, Ks, Kl, LH, g, t);
        else tc_gemm_ss<HS, NT>(s, Qs + w * 16 * LH, LH, Ks, LH, g, t);
        float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] = km[n * 8 + 2 * t + (e & 1)] ? s[n][e] * sl2 : -INFINITY;
                mt[e >> 1] = fmaxf(mt[e >> 1], s[n][e]);
            }
        float alpha[2], mn[2], rs[2] = {0, 0};
#pragma unroll
        for (int a = 0; a < 2; a++) {
            mt[a] = fmaxf(mt[a], __shfl_xor_sync(0xffffffffu, mt[a], 1));
            mt[a] = fmaxf(mt[a], __shfl_xor_sync(0xffffffffu, mt[a], 2));
            mn[a] = fmaxf(m[a], mt[a]);
            alpha[a] = mn[a] == -INFINITY ? 1.0f : exp2f(m[a] - mn[a]);
            m[a] = mn[a];
        }
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int a = e >> 1, j = n * 8 + 2 * t + (e & 1), i = i0 + r[a];
                float p = s[n][e] == -INFINITY ? 0.0f : exp2f(s[n][e] - mn[a]);
                rs[a] += p;
                if (d.active && p != 0 && i < T)
                    p *= tc_drop(d, keep, r[a] * TC_BC + j, site, (rowbase + i) * T + j0 + j, T);
                s[n][e] = p;
            }
#pragma unroll
        for (int a = 0; a < 2; a++) l[a] = l[a] * alpha[a] + rs[a]; /* per-lane partial, same alpha per row */
#pragma unroll
        for (int n = 0; n < NO; n++) {
            o[n][0] *= alpha[0], o[n][1] *= alpha[0];
            o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        }
        if (SPLIT & 2) tc_gemm_rs3<TC_BC / 16, NO>(o, s, Vt, Vl, LC, g, t);
        else tc_gemm_rs<TC_BC / 16, NO>(o, s, Vt, LC, g, t);
    }
    size_t ldo = (size_t)H * hs;
#pragma unroll
    for (int a = 0; a < 2; a++) {
        float la = l[a];
        la += __shfl_xor_sync(0xffffffffu, la, 1);
        la += __shfl_xor_sync(0xffffffffu, la, 2);
        int i = i0 + r[a];
        if (i >= T) continue;
        float inv = la > 0 ? 1.0f / la : 0.0f;
        float *orow = out + ((size_t)b * T + i) * ldo + (size_t)h * hs;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int c = n * 8 + 2 * t + e;
                if (c < hs) orow[c] = o[n][2 * a + e] * inv;
            }
        if (t == 0) lse[rowbase + i] = la > 0 ? (m[a] + log2f(la)) * TC_LN2 : 0.0f;
    }
}

template <int HS, int SPLIT>
__global__ void __launch_bounds__(TC_THREADS)
    k_fat_bwd_q(float *dq, const float *dout, const float *lse, const float *Dg, const float *q, const float *k,
                const float *v, size_t ldq, size_t ldkv, const uint8_t *mask, tbc_drop d, uint32_t site, int T,
                int H, int Hkv, int hs, float scale) {
    constexpr int LH = HS + 8, LC = TC_BC + 8, NT = TC_BC / 8, NO = HS / 8;
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *Qs = (tc_bf16 *)tc_sm;  /* [TC_BR][LH] */
    tc_bf16 *Ql = Qs + TC_BR * LH;   /* Q - Qs: [TC_BR][LH] */
    tc_bf16 *Os = Ql + TC_BR * LH;   /* dO: [TC_BR][LH] */
    tc_bf16 *Ks = Os + TC_BR * LH;   /* [TC_BC][LH] */
    tc_bf16 *Kl = Ks + TC_BC * LH;   /* K - Ks: [TC_BC][LH] */
    tc_bf16 *Vs = Kl + TC_BC * LH;   /* [TC_BC][LH] */
    tc_bf16 *Kt = Vs + TC_BC * LH;   /* [HS][LC] */
    __shared__ int km[TC_BC];
    __shared__ uint8_t keep[TC_BR * TC_BC];
    int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    int i0 = blockIdx.x * TC_BR, h = blockIdx.y, b = blockIdx.z;
    int kh = h / (H / Hkv);
    size_t ldo = (size_t)H * hs, rowbase = ((size_t)b * H + h) * T;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kh * hs;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kh * hs;
    tc_stage<HS, TC_BR, SPLIT & 1>(Qs, NULL, q + (size_t)b * T * ldq + (size_t)h * hs, ldq, i0, T, hs, Ql);
    tc_stage<HS, TC_BR>(Os, NULL, dout + (size_t)b * T * ldo + (size_t)h * hs, ldo, i0, T, hs);
    int r[2] = {w * 16 + g, w * 16 + g + 8};
    float sl[2], sD[2];
#pragma unroll
    for (int a = 0; a < 2; a++) {
        int i = i0 + r[a];
        sl[a] = i < T ? lse[rowbase + i] * TC_LOG2E : 0.0f;
        sD[a] = i < T ? Dg[rowbase + i] : 0.0f;
    }
    float acc[NO][4];
    tc_zero(acc);
    float sl2 = scale * TC_LOG2E;
    for (int j0 = 0; j0 < T; j0 += TC_BC) {
        __syncthreads();
        tc_stage<HS, TC_BC, SPLIT & 1>(Ks, Kt, kb, ldkv, j0, T, hs, Kl);
        tc_stage<HS, TC_BC>(Vs, NULL, vb, ldkv, j0, T, hs);
        if (tid < TC_BC) {
            int j = j0 + tid;
            km[tid] = j < T && (!mask || mask[(size_t)b * T + j]);
        }
        if (tbc_keep_ok(d, T)) tbc_keep_tile<TC_BR, TC_BC, TC_THREADS>(keep, d, site, rowbase, i0, j0, T);
        __syncthreads();
        float s[NT][4], dp[NT][4];
        tc_zero(s), tc_zero(dp);
        if (SPLIT & 1) tc_gemm_ss3<HS, NT>(s, Qs + w * 16 * LH, Ql + w * 16 * LH, LH, Ks, Kl, LH, g, t);
        else tc_gemm_ss<HS, NT>(s, Qs + w * 16 * LH, LH, Ks, LH, g, t);
        tc_gemm_ss<HS, NT>(dp, Os + w * 16 * LH, LH, Vs, LH, g, t);
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int a = e >> 1, j = n * 8 + 2 * t + (e & 1), i = i0 + r[a];
                float p = km[j] && i < T ? exp2f(s[n][e] * sl2 - sl[a]) : 0.0f;
                float ds = 0;
                if (p != 0) {
                    float mf = d.active ? tc_drop(d, keep, r[a] * TC_BC + j, site, (rowbase + i) * T + j0 + j, T)
                                        : 1.0f;
                    ds = p * (dp[n][e] * mf - sD[a]) * scale;
                }
                s[n][e] = ds;
            }
        tc_gemm_rs<TC_BC / 16, NO>(acc, s, Kt, LC, g, t);
    }
#pragma unroll
    for (int a = 0; a < 2; a++) {
        int i = i0 + r[a];
        if (i >= T) continue;
        float *gq = dq + ((size_t)b * T + i) * ldq + (size_t)h * hs;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int c = n * 8 + 2 * t + e;
                if (c < hs) gq[c] += acc[n][2 * a + e];
            }
    }
}

/* BQ queries per tile (fewer registers for HS 128). */
template <int HS, int BQ, int SPLIT>
__global__ void __launch_bounds__(TC_THREADS)
    k_fat_bwd_kv(float *dk, float *dv, const float *dout, const float *lse, const float *Dg, const float *q,
                 const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask, tbc_drop d,
                 uint32_t site, int T, int H, int Hkv, int hs, float scale) {
    constexpr int LH = HS + 8, LQ = BQ + 8, NT = BQ / 8, NO = HS / 8;
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *Ks = (tc_bf16 *)tc_sm;  /* [TC_BR][LH] */
    tc_bf16 *Kl = Ks + TC_BR * LH;   /* K - Ks: [TC_BR][LH] */
    tc_bf16 *Vs = Kl + TC_BR * LH;   /* [TC_BR][LH] */
    tc_bf16 *Qs = Vs + TC_BR * LH;   /* [BQ][LH] */
    tc_bf16 *Ql = Qs + BQ * LH;      /* Q - Qs: [BQ][LH] */
    tc_bf16 *Os = Ql + BQ * LH;      /* dO: [BQ][LH] */
    tc_bf16 *Qt = Os + BQ * LH;      /* [HS][LQ] */
    tc_bf16 *Ot = Qt + HS * LQ;      /* dO: [HS][LQ] */
    __shared__ float sl[BQ], sD[BQ];
    __shared__ uint8_t keep[BQ * TC_BR]; /* [query][key] */
    int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    int j0 = blockIdx.x * TC_BR, kh = blockIdx.y, b = blockIdx.z;
    int group = H / Hkv;
    size_t ldo = (size_t)H * hs;
    tc_stage<HS, TC_BR, SPLIT & 1>(Ks, NULL, k + (size_t)b * T * ldkv + (size_t)kh * hs, ldkv, j0, T, hs, Kl);
    tc_stage<HS, TC_BR>(Vs, NULL, v + (size_t)b * T * ldkv + (size_t)kh * hs, ldkv, j0, T, hs);
    int jr[2] = {w * 16 + g, w * 16 + g + 8}; /* the thread's two key rows in the block */
    bool kin[2];
#pragma unroll
    for (int a = 0; a < 2; a++) {
        int j = j0 + jr[a];
        kin[a] = j < T && (!mask || mask[(size_t)b * T + j]);
    }
    float ak[NO][4], av[NO][4];
    tc_zero(ak), tc_zero(av);
    float sl2 = scale * TC_LOG2E;
    for (int gi = 0; gi < group; gi++) {
        int h = kh * group + gi;
        size_t rowbase = ((size_t)b * H + h) * T;
        const float *qb = q + (size_t)b * T * ldq + (size_t)h * hs;
        const float *ob = dout + (size_t)b * T * ldo + (size_t)h * hs;
        for (int i0 = 0; i0 < T; i0 += BQ) {
            __syncthreads();
            tc_stage<HS, BQ, SPLIT & 1>(Qs, Qt, qb, ldq, i0, T, hs, Ql);
            tc_stage<HS, BQ>(Os, Ot, ob, ldo, i0, T, hs);
            if (tid < BQ) {
                int i = i0 + tid;
                sl[tid] = i < T ? lse[rowbase + i] * TC_LOG2E : 0.0f;
                sD[tid] = i < T ? Dg[rowbase + i] : 0.0f;
            }
            if (tbc_keep_ok(d, T)) tbc_keep_tile<BQ, TC_BR, TC_THREADS>(keep, d, site, rowbase, i0, j0, T);
            __syncthreads();
            float s[NT][4], dp[NT][4];
            tc_zero(s), tc_zero(dp);
            if (SPLIT & 1) tc_gemm_ss3<HS, NT>(s, Ks + w * 16 * LH, Kl + w * 16 * LH, LH, Qs, Ql, LH, g, t);
            else tc_gemm_ss<HS, NT>(s, Ks + w * 16 * LH, LH, Qs, LH, g, t);
            tc_gemm_ss<HS, NT>(dp, Vs + w * 16 * LH, LH, Os, LH, g, t);
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int a = e >> 1, ic = n * 8 + 2 * t + (e & 1), i = i0 + ic, j = j0 + jr[a];
                    float p = kin[a] && i < T ? exp2f(s[n][e] * sl2 - sl[ic]) : 0.0f;
                    float pt = 0, ds = 0;
                    if (p != 0) {
                        float mf = d.active ? tc_drop(d, keep, ic * TC_BR + jr[a], site, (rowbase + i) * T + j, T)
                                            : 1.0f;
                        pt = p * mf;
                        ds = p * (dp[n][e] * mf - sD[ic]) * scale;
                    }
                    s[n][e] = pt;
                    dp[n][e] = ds;
                }
            tc_gemm_rs<BQ / 16, NO>(av, s, Ot, LQ, g, t);
            tc_gemm_rs<BQ / 16, NO>(ak, dp, Qt, LQ, g, t);
        }
    }
#pragma unroll
    for (int a = 0; a < 2; a++) {
        int j = j0 + jr[a];
        if (j >= T) continue;
        size_t off = ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int c = n * 8 + 2 * t + e;
                if (c < hs) {
                    dk[off + c] += ak[n][2 * a + e];
                    dv[off + c] += av[n][2 * a + e];
                }
            }
    }
}

#endif
