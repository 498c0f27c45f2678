/* The decay tiles of the retention core (and of Titan's memory read, seq_more_cuda.cu) on
 * bf16 tensor cores: out_r (+)= Σ_o c γ^|r-o| (a_r · b_o) cv_o over o ≤ r (range 0), o ≥ r
 * (range 1) or all o (range 2), rows within one (b, h) of (B, T, H·hs) tensors: the op of
 * k_ret_tiled (seq_cuda.cu) with both products an mma.sync m16n8k16 (tc_tiles.cuh). Block
 * per (64 rows r, head, batch) of 4 warps (16 rows each); over 64-row tiles of o inside
 * the range: S = a bᵀ (16 x 64 per warp in registers), W = c γ^|r-o| S masked in place, out
 * += W cv with W taken from the accumulator registers. Operands rounded to bf16 as they
 * are staged (a, b, cv) or enter a product (W); sums in fp32; one writer per out element,
 * fixed order. Used in the bf16 mode when the tensor-core tiles are on (tbc_decay_tiled).
 * Device code only, also built by the CPU emulation of tests/cuda_emu. */
#ifndef TB_RET_TC_KERNELS_CUH
#define TB_RET_TC_KERNELS_CUH
#include "tc_tiles.cuh"

#define RTC_BR 64 /* rows r per block */
#define RTC_BC 64 /* rows o per tile */

/* γ_h of MODEL.md's retnet (head h of H), in double as the CPU derives it. */
__device__ __forceinline__ float tbc_ret_gamma(int h, int H) {
    if (H == 1) return (float)(1.0 - 1.0 / 32.0);
    double l0 = log(1.0 / 32.0), l1 = log(1.0 / 512.0);
    return (float)(1.0 - exp(l0 + (l1 - l0) * (double)h / (double)(H - 1)));
}

template <int HS>
__global__ void __launch_bounds__(TC_THREADS)
    k_ret_tc(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc, int T,
             int H, int hs, int range, int accumulate, float c) {
    constexpr int LH = HS + 8, LC = RTC_BC + 8, NT = RTC_BC / 8, NO = HS / 8;
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *As = (tc_bf16 *)tc_sm;  /* [RTC_BR][LH] */
    tc_bf16 *Bs = As + RTC_BR * LH;  /* [RTC_BC][LH] */
    tc_bf16 *Ct = Bs + RTC_BC * LH;  /* cv transposed: [HS][LC] */
    int tid = threadIdx.x, w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
    int r0 = blockIdx.x * RTC_BR, h = blockIdx.y, bb = blockIdx.z;
    size_t ld = (size_t)H * hs, base = (size_t)bb * T * ld + (size_t)h * hs;
    float gm = gam ? gam[h] : tbc_ret_gamma(h, H);
    if (cc) c = cc[h];
    tc_stage<HS, RTC_BR>(As, NULL, a + base, ld, r0, T, hs);
    float acc[NO][4];
    tc_zero(acc);
    int r[2] = {r0 + w * 16 + g, r0 + w * 16 + g + 8}; /* the thread's two rows */
    int rlast = r0 + RTC_BR - 1 < T - 1 ? r0 + RTC_BR - 1 : T - 1;
    int o_begin = range == 1 ? r0 : 0, o_end = range == 0 ? rlast + 1 : T; /* r0 % RTC_BC == 0 */
    /* c γ^|o - r| of the tile pair, by o - r - (o0 - r0) + RTC_BC - 1 (the 2 RTC_BC - 1
     * offsets a 64 x 64 tile pair spans): one powf per offset instead of per element, the
     * same values (c * powf(γ, |d|), then times s, as before). */
    __shared__ float dec[2 * RTC_BC];
    for (int o0 = o_begin; o0 < o_end; o0 += RTC_BC) {
        __syncthreads();
        tc_stage<HS, RTC_BC>(Bs, NULL, b + base, ld, o0, T, hs);
        tc_stage<HS, RTC_BC>(NULL, Ct, cv + base, ld, o0, T, hs);
        for (int k = tid; k < 2 * RTC_BC - 1; k += TC_THREADS) {
            int d = o0 - r0 + k - (RTC_BC - 1);
            dec[k] = c * powf(gm, (float)(d < 0 ? -d : d));
        }
        __syncthreads();
        float s[NT][4];
        tc_zero(s);
        tc_gemm_ss<HS, NT>(s, As + w * 16 * LH, LH, Bs, LH, g, t);
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int rr = r[e >> 1], o = o0 + n * 8 + 2 * t + (e & 1);
                bool in = rr < T && o < T && (range == 2 || (range == 0 ? o <= rr : o >= rr));
                s[n][e] = in ? dec[o - rr - (o0 - r0) + RTC_BC - 1] * s[n][e] : 0.0f;
            }
        tc_gemm_rs<RTC_BC / 16, NO>(acc, s, Ct, LC, g, t);
    }
#pragma unroll
    for (int ai = 0; ai < 2; ai++) {
        if (r[ai] >= T) continue;
        float *orow = out + base + (size_t)r[ai] * ld;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int d = n * 8 + 2 * t + e;
                if (d < hs) orow[d] = accumulate ? orow[d] + acc[n][2 * ai + e] : acc[n][2 * ai + e];
            }
    }
}

/* Dynamic shared memory of k_ret_tc<HS> (bytes). */
static inline size_t tbc_ret_tc_smem(int HS) {
    return 2 * ((size_t)(RTC_BR + RTC_BC) * (HS + 8) + (size_t)HS * (RTC_BC + 8));
}
#endif
