/* The decay tiles of the retention core (and of Titan's memory read, seq_more_cuda.cu) on
 * bf16 tensor cores: out_r (+)= Σ_o c γ^|r-o| (a_r · b_o) cv_o over o ≤ r (range 0), o ≥ r
 * (range 1) or all o (range 2), rows within one (b, h) of (B, T, H·hs) tensors: the op of
 * k_ret_tiled (seq_cuda.cu) with both products an mma.sync m16n8k16 (tc_tiles.cuh). Block
 * per (64 rows r, head, batch) of 4 warps (16 rows each); over 64-row tiles of o inside
 * the range: S = a bᵀ (16 x 64 per warp in registers), W = c γ^|r-o| S masked in place, out
 * += W cv with W taken from the accumulator registers. Operands rounded to bf16 as they
 * are staged (a, b, cv) or enter a product (W); sums in fp32; one writer per out element,
 * fixed order. Used in the bf16 mode when the tensor-core tiles are on (tbc_decay_tiled).
 *
 * Staging: the fp32 b and cv rows of the next o-tile are copied into a raw fp32 buffer by
 * cp.async while the warps multiply the current one, so the load latency hides behind the
 * products but for the first tile (a synchronous load -> convert -> store staging per tile
 * left the kernel waiting on loads most of its time). Each tile is then rounded to bf16 in shared
 * memory (Bs, Cs row-major; the products read them by ldmatrix) in one pass. a is staged
 * once the same way and kept as the warp's A fragments in registers, which leaves room for
 * the raw buffer at two blocks per SM at HS 128. Blocks run the longest rows first (see
 * rtc_tile). Device code only, also built by the CPU emulation of tests/cuda_emu. */
#ifndef TB_RET_TC_KERNELS_CUH
#define TB_RET_TC_KERNELS_CUH
#include "tc_tiles.cuh"

#define RTC_BR 64 /* rows r per block */
#define RTC_BC 64 /* rows o per tile (= RTC_BR: a is staged through the o-tile buffers) */

/* γ_h of MODEL.md's retnet (head h of H), in double as the CPU derives it. */
__device__ __forceinline__ float tbc_ret_gamma(int h, int H) {
    if (H == 1) return (float)(1.0 - 1.0 / 32.0);
    double l0 = log(1.0 / 32.0), l1 = log(1.0 / 512.0);
    return (float)(1.0 - exp(l0 + (l1 - l0) * (double)h / (double)(H - 1)));
}

/* Rows r0 .. r0 + RTC_BC - 1 (those below T), columns < hs of a (tokens, ld) fp32 tensor
 * into the raw tile R[RTC_BC][HS] by asynchronous copies (16 bytes where v4: hs % 4 == 0
 * and 16-byte aligned rows); the rest of R is left as it is (rtc_round zeroes it). */
template <int HS>
__device__ __forceinline__ void rtc_fetch(float *R, const float *src, size_t ld, int r0, int T, int hs, bool v4) {
    /* thread tid takes columns d .. d + 3 of rows tid / CPR + i·RS: one column test, and
     * the row pointer advanced rather than recomputed (registers are short at HS 128) */
    constexpr int CPR = HS / 4, RS = TC_THREADS / CPR;
    static_assert(RS * CPR == TC_THREADS && RTC_BC % RS == 0, "tile not a multiple of the block");
    int d = ((int)threadIdx.x % CPR) * 4, r = (int)threadIdx.x / CPR;
    if (d >= hs) return;
    const float *p = src + (size_t)(r0 + r) * ld + d;
    float *q = R + r * HS + d;
#pragma unroll 4
    for (int i = 0; i < RTC_BC / RS && r0 + r + i * RS < T; i++, p += RS * ld, q += RS * HS) {
        if (v4) tc_cp16(q, p);
        else
            for (int e = 0; e < 4 && d + e < hs; e++) tc_cp<4>(q + e, p + e);
    }
}

/* The raw tile R (rows from r0) rounded to bf16 into S[RTC_BC][HS + 8], zero at rows >= T
 * and columns >= hs: the values tc_stage gave (round to nearest even, one element each). */
template <int HS>
__device__ __forceinline__ void rtc_round(tc_bf16 *S, const float *R, int r0, int T, int hs) {
    constexpr int CPR = HS / 4, RS = TC_THREADS / CPR;
    int d = ((int)threadIdx.x % CPR) * 4, r = (int)threadIdx.x / CPR;
    bool d0 = d < hs, d1 = d + 1 < hs, d2 = d + 2 < hs, d3 = d + 3 < hs;
#pragma unroll 4
    for (int i = 0; i < RTC_BC / RS; i++) {
        int ri = r + i * RS;
        float4 x = *reinterpret_cast<const float4 *>(R + ri * HS + d);
        bool rin = r0 + ri < T;
        uint32_t *o = reinterpret_cast<uint32_t *>(S + ri * (HS + 8) + d);
        o[0] = tc_pack(rin && d0 ? x.x : 0.0f, rin && d1 ? x.y : 0.0f);
        o[1] = tc_pack(rin && d2 ? x.z : 0.0f, rin && d3 ? x.w : 0.0f);
    }
}

/* The block's row tile, head and batch. Blocks are taken from a linear index whose slowest
 * part is the row tile, so that the GPU, which starts blocks roughly in that order, starts
 * the tiles with the most o-tiles (the last rows of a causal range, the first of an
 * anti-causal one) first and the short ones fill the tail of the last wave. */
__device__ __forceinline__ void rtc_tile(int range, int H, int &rt, int &h, int &bb) {
    unsigned nhb = gridDim.y * gridDim.z, l = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned i = l / nhb, hb = l % nhb;
    rt = (int)(range == 0 ? gridDim.x - 1 - i : i);
    h = (int)(hb % (unsigned)H), bb = (int)(hb / (unsigned)H);
}

template <int HS>
__global__ void __launch_bounds__(TC_THREADS)
    k_ret_tc(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc, int T,
             int H, int hs, int range, int accumulate, float c) {
    constexpr int LH = HS + 8, NT = RTC_BC / 8, NO = HS / 8, KA = HS / 16;
    static_assert(RTC_BR == RTC_BC, "a is staged through the o-tile buffers");
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *Bs = (tc_bf16 *)tc_sm;            /* b, bf16: [RTC_BC][LH] */
    tc_bf16 *Cs = Bs + RTC_BC * LH;            /* cv (a before the loop), bf16: [RTC_BC][LH] */
    float *Rb = (float *)(Cs + RTC_BC * LH);   /* the next tile's raw b: [RTC_BC][HS] */
    float *Rc = Rb + RTC_BC * HS;              /* raw cv (a before the loop): [RTC_BC][HS] */
    int tid = threadIdx.x, w = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    int rt, h, bb;
    rtc_tile(range, H, rt, h, bb);
    int r0 = rt * RTC_BR;
    size_t ld = (size_t)H * hs, base = (size_t)bb * T * ld + (size_t)h * hs;
    bool v4 = hs % 4 == 0 && (((uintptr_t)a | (uintptr_t)b | (uintptr_t)cv) & 15) == 0;
    float gm = gam ? gam[h] : tbc_ret_gamma(h, H);
    if (cc) c = cc[h];
    int r[2] = {r0 + w * 16 + g, r0 + w * 16 + g + 8}; /* the thread's two rows */
    int rlast = r0 + RTC_BR - 1 < T - 1 ? r0 + RTC_BR - 1 : T - 1;
    int o_begin = range == 1 ? r0 : 0, o_end = range == 0 ? rlast + 1 : T; /* r0 % RTC_BC == 0 */
    /* a and the first tile's b in flight together; a rounded through Cs into the warp's A
     * fragments, then the first cv fetched into the raw buffer a leaves free */
    rtc_fetch<HS>(Rc, a + base, ld, r0, T, hs, v4);
    rtc_fetch<HS>(Rb, b + base, ld, o_begin, T, hs, v4);
    tc_cp_commit();
    tc_cp_wait<0>();
    __syncthreads();
    rtc_round<HS>(Cs, Rc, r0, T, hs);
    __syncthreads();
    rtc_fetch<HS>(Rc, cv + base, ld, o_begin, T, hs, v4);
    tc_cp_commit();
    uint32_t af[KA][4];
#pragma unroll
    for (int kc = 0; kc < KA; kc++) tc_frag_a(af[kc], Cs + w * 16 * LH, LH, kc, lane);
    float acc[NO][4];
    tc_zero(acc);
    /* c γ^|o - r| of the tile pair, by o - r - (o0 - r0) + RTC_BC - 1 (the 2 RTC_BC - 1
     * offsets a 64 x 64 tile pair spans): one powf per offset instead of per element, the
     * same values (c * powf(γ, |d|), then times s, as before). */
    __shared__ float dec[2 * RTC_BC];
    for (int o0 = o_begin; o0 < o_end; o0 += RTC_BC) {
        /* this tile's raw rows have landed and every warp is done with the last tile's
         * bf16 tiles (and with the A fragments' reads of Cs) */
        tc_cp_wait<0>();
        __syncthreads();
        rtc_round<HS>(Bs, Rb, o0, T, hs);
        rtc_round<HS>(Cs, Rc, o0, T, hs);
        for (int k = tid; k < 2 * RTC_BC - 1; k += TC_THREADS) {
            int d = o0 - r0 + k - (RTC_BC - 1);
            dec[k] = c * powf(gm, (float)(d < 0 ? -d : d));
        }
        __syncthreads();
        /* the next tile's copies run during this tile's products */
        if (o0 + RTC_BC < o_end) {
            rtc_fetch<HS>(Rb, b + base, ld, o0 + RTC_BC, T, hs, v4);
            rtc_fetch<HS>(Rc, cv + base, ld, o0 + RTC_BC, T, hs, v4);
            tc_cp_commit();
        }
        float s[NT][4];
        tc_zero(s);
        /* S = a bᵀ, each accumulator summed over k-chunks in order as tc_gemm_ss did */
#pragma unroll
        for (int kc = 0; kc < KA; kc++)
#pragma unroll
            for (int p = 0; p < NT / 2; p++) {
                uint32_t bf[4];
                tc_frag_bn(bf, Bs, LH, p, kc, lane);
                tc_mma(s[2 * p], af[kc][0], af[kc][1], af[kc][2], af[kc][3], bf[0], bf[1]);
                tc_mma(s[2 * p + 1], af[kc][0], af[kc][1], af[kc][2], af[kc][3], bf[2], bf[3]);
            }
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int rr = r[e >> 1], o = o0 + n * 8 + 2 * t + (e & 1);
                bool in = rr < T && o < T && (range == 2 || (range == 0 ? o <= rr : o >= rr));
                s[n][e] = in ? dec[o - rr - (o0 - r0) + RTC_BC - 1] * s[n][e] : 0.0f;
            }
        tc_mm_rs<RTC_BC / 16, NO>(acc, s, Cs, LH, lane); /* cv k-major: tc_frag_bk */
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

/* Dynamic shared memory of k_ret_tc<HS> (bytes): the bf16 b and cv tiles and their raw
 * fp32 copies. */
static inline size_t tbc_ret_tc_smem(int HS) {
    return (size_t)RTC_BC * (2 * 2 * (HS + 8) + 2 * 4 * HS);
}
#endif
