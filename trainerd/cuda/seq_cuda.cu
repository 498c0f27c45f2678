/* The seq family on CUDA: the retention core (MODEL.md 6 'retnet') in the quadratic
 * form, forward and backward, as one op out_r = Σ_o c γ^|r-o| (a_r · b_o) cv_o over a
 * range of o. Sequences of 16 tokens or more with heads up to 128 run in tiles
 * (k_ret_tiled); the rest one warp per output row (k_ret_rows: lanes split the head's
 * channels, q·k by warp shuffles in a fixed pattern, o ascending). Deterministic either
 * way (no atomics). γ^|t-s| is powf (the CPU multiplies outward; they differ by
 * rounding). */
#include <cuda_bf16.h>
#include "cuda_internal.cuh"
#include "ret_tc_kernels.cuh"

#define RET_WARPS 4
#define RET_MAX_PER_LANE 8 /* hs <= 256 */

/* MODEL.md 6: γ_h (in double, then cast, as the CPU). */
/* out_r (+)= Σ_o c γ^|r-o| (a_r · b_o) cv_o over o ≤ r (range 0), o ≥ r (range 1) or all
 * o (range 2); rows r and o within one (b, h); tensors (B, T, H*hs). */
__global__ void k_ret_rows(float *out, const float *a, const float *b, const float *cv, int B, int T,
                           int H, int hs, int range, int accumulate, float c) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t row = (size_t)blockIdx.x * RET_WARPS + warp; /* (b·T + t)·H + h */
    if (row >= (size_t)B * T * H) return;
    int h = (int)(row % H);
    size_t bt = row / H;
    int t = (int)(bt % T);
    size_t b0 = bt - t; /* b·T */
    size_t ld = (size_t)H * hs;
    const float *ar = a + bt * ld + (size_t)h * hs;
    float g = tbc_ret_gamma(h, H);
    float acc[RET_MAX_PER_LANE];
    float av[RET_MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < RET_MAX_PER_LANE; i++) {
        int d = lane + 32 * i;
        acc[i] = 0;
        av[i] = d < hs ? ar[d] : 0.0f;
    }
    int o0 = range == 1 ? t : 0, o1 = range == 0 ? t : T - 1;
    for (int o = o0; o <= o1; o++) {
        const float *bo = b + (b0 + o) * ld + (size_t)h * hs;
        const float *co = cv + (b0 + o) * ld + (size_t)h * hs;
        float p = 0;
#pragma unroll
        for (int i = 0; i < RET_MAX_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < hs) p += av[i] * bo[d];
        }
        for (int s = 16; s > 0; s >>= 1) p += __shfl_xor_sync(0xffffffffu, p, s);
        float w = c * powf(g, (float)(o > t ? o - t : t - o)) * p;
#pragma unroll
        for (int i = 0; i < RET_MAX_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < hs) acc[i] += w * co[d];
        }
    }
    float *orow = out + bt * ld + (size_t)h * hs;
#pragma unroll
    for (int i = 0; i < RET_MAX_PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < hs) orow[d] = accumulate ? orow[d] + acc[i] : acc[i];
    }
}

/* The same op in tiles (for T beyond a few rows): block per (64 rows r, head, batch) of
 * 128 threads; over 32-row tiles of o inside the range: S = a bᵀ (each thread 4 rows x 4
 * o), W = c γ^|r-o| S masked, out += W cv (each thread 4 rows x HS/8 channels). Tiles
 * outside the range are skipped (half the work for the causal directions). Each out
 * element has one writer and a fixed order: deterministic. */
#define RT_BR 64
#define RT_BC 32
#define RT_LD (RT_BC + 1)
template <int HS>
__global__ void __launch_bounds__(128)
    k_ret_tiled(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc, int T,
                int H, int hs, int range, int accumulate, float c) {
    constexpr int NC = HS / 8;
    extern __shared__ float sm[];
    float *AT = sm;               /* [HS][RT_BR] */
    float *BT = AT + HS * RT_BR;  /* [HS][RT_LD] */
    float *Cs = BT + HS * RT_LD;  /* [RT_BC][HS] */
    float *Ws = Cs + RT_BC * HS;  /* [RT_BR][RT_LD] */
    int tid = threadIdx.x, ty = tid / 8, tx = tid % 8;
    int r0 = blockIdx.x * RT_BR, h = blockIdx.y, bb = blockIdx.z;
    size_t ld = (size_t)H * hs, base = (size_t)bb * T * ld + (size_t)h * hs;
    float g = gam ? gam[h] : tbc_ret_gamma(h, H);
    if (cc) c = cc[h];
    tbc_load_tile_t<HS, 128>(AT, RT_BR, a + base, ld, r0, RT_BR, T, hs);
    float acc[4][NC];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int cc = 0; cc < NC; cc++) acc[i][cc] = 0;
    int rlast = r0 + RT_BR - 1 < T - 1 ? r0 + RT_BR - 1 : T - 1;
    int o_begin = range == 1 ? (r0 / RT_BC) * RT_BC : 0, o_end = range == 0 ? rlast + 1 : T;
    for (int o0 = o_begin; o0 < o_end; o0 += RT_BC) {
        __syncthreads();
        tbc_load_tile_t<HS, 128>(BT, RT_LD, b + base, ld, o0, RT_BC, T, hs);
        for (int e = tid; e < RT_BC * HS; e += 128) {
            int o = e / HS, d = e % HS;
            Cs[e] = (o0 + o < T && d < hs) ? cv[base + (size_t)(o0 + o) * ld + d] : 0.0f;
        }
        __syncthreads();
        float s[4][4];
        tbc_tile_dot<HS, 4>(s, AT, RT_BR, BT, RT_LD, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = r0 + ty + 16 * i;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int o = o0 + tx + 8 * j;
                int in = r < T && o < T && (range == 2 || (range == 0 ? o <= r : o >= r));
                Ws[(ty + 16 * i) * RT_LD + tx + 8 * j] =
                    in ? c * powf(g, (float)(o > r ? o - r : r - o)) * s[i][j] : 0.0f;
            }
        }
        __syncthreads();
        tbc_tile_wv<HS>(acc, Ws, RT_LD, Cs, T - o0 < RT_BC ? T - o0 : RT_BC, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = r0 + ty + 16 * i;
        if (r >= T) continue;
        float *orow = out + base + (size_t)r * ld;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            int d = tx + 8 * cc;
            if (d < hs) orow[d] = accumulate ? orow[d] + acc[i][cc] : acc[i][cc];
        }
    }
}

static size_t rt_smem(int HS) { return (size_t)4 * (HS * RT_BR + HS * RT_LD + RT_BC * HS + RT_BR * RT_LD); }

/* The tiled kernel for head size HS if the GPU's shared memory takes it. */
template <int HS>
static int rt_launch(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc,
                     int B, int T, int H, int hs, int range, int accumulate, float c) {
    static int state;
    size_t smem = rt_smem(HS);
    if (!tbc_smem_allow(k_ret_tiled<HS>, smem, 1024, &state) || B > 65535 || H > 65535) return -1;
    dim3 grid((unsigned)((T + RT_BR - 1) / RT_BR), (unsigned)H, (unsigned)B);
    k_ret_tiled<HS><<<grid, 128, smem, tbc_g->stream>>>(out, a, b, cv, gam, cc, T, H, hs, range, accumulate, c);
    TBC_LAUNCHED();
    return 0;
}

/* The tensor-core tiles (ret_tc_kernels.cuh) for head size HS, if shared memory takes them. */
template <int HS>
static int rtc_launch(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc,
                      int B, int T, int H, int hs, int range, int accumulate, float c) {
    static int state;
    size_t smem = tbc_ret_tc_smem(HS);
    if (!tbc_smem_allow(k_ret_tc<HS>, smem, 1024, &state) || B > 65535 || H > 65535) return -1;
    dim3 grid((unsigned)((T + RTC_BR - 1) / RTC_BR), (unsigned)H, (unsigned)B);
    k_ret_tc<HS><<<grid, TC_THREADS, smem, tbc_g->stream>>>(out, a, b, cv, gam, cc, T, H, hs, range, accumulate, c);
    TBC_LAUNCHED();
    return 0;
}

int tbc_decay_tiled(float *out, const float *a, const float *b, const float *cv, const float *gam, const float *cc,
                    int B, int T, int H, int hs, int range, int accumulate) {
    if (T < 16 || hs <= 0 || hs > 128 || B <= 0 || H <= 0) return -1;
    float c = (float)(1.0 / sqrt((double)hs));
    /* bf16 tensor cores when turned on (tb_cuda_tensor_core_tiles) in the bf16 mode */
    if ((tbc_g->tc_tiles & TB_CUDA_TC_RET) && tbc_g->prec == TB_PREC_BF16 && tbc_g->cc_major >= 8) {
        int rc = hs <= 32   ? rtc_launch<32>(out, a, b, cv, gam, cc, B, T, H, hs, range, accumulate, c)
                 : hs <= 64 ? rtc_launch<64>(out, a, b, cv, gam, cc, B, T, H, hs, range, accumulate, c)
                            : rtc_launch<128>(out, a, b, cv, gam, cc, B, T, H, hs, range, accumulate, c);
        if (rc == 0) return 0;
    }
    return hs <= 32   ? rt_launch<32>(out, a, b, cv, gam, cc, B, T, H, hs, range, accumulate, c)
           : hs <= 64 ? rt_launch<64>(out, a, b, cv, gam, cc, B, T, H, hs, range, accumulate, c)
                      : rt_launch<128>(out, a, b, cv, gam, cc, B, T, H, hs, range, accumulate, c);
}

static void ret_launch(float *out, const float *a, const float *b, const float *cv, int B, int T, int H,
                       int hs, int range, int accumulate) {
    if (hs > 32 * RET_MAX_PER_LANE)
        tbc_fatal("retention", __FILE__, __LINE__, "head size above 256 is not supported on CUDA yet");
    size_t rows = (size_t)B * T * H;
    if (!rows || hs <= 0) return;
    float c = (float)(1.0 / sqrt((double)hs));
    /* tiles where the sequence fills them; the row kernel for short sequences and heads
     * above 128 */
    if (tbc_decay_tiled(out, a, b, cv, NULL, NULL, B, T, H, hs, range, accumulate) == 0) return;
    k_ret_rows<<<(unsigned)((rows + RET_WARPS - 1) / RET_WARPS), 32 * RET_WARPS, 0, tbc_g->stream>>>(
        out, a, b, cv, B, T, H, hs, range, accumulate, c);
    TBC_LAUNCHED();
}

static void cu_retention_forward(real *y, const real *q, const real *k, const real *v, int B, int T, int H,
                                 int hs, int bidirectional, const struct tb_backend *be) {
    (void)be;
    ret_launch(y, q, k, v, B, T, H, hs, bidirectional ? 2 : 0, 0);
}

/* dq_t += Σ_s w_ts (dy_t·v_s) k_s;  dk_s += Σ_t w_ts (dy_t·v_s) q_t;
 * dv_s += Σ_t w_ts (q_t·k_s) dy_t, with w_ts = c γ^|t-s| [s ≤ t unless bidirectional]. */
static void cu_retention_backward(real *dq, real *dk, real *dv, const real *dy, const real *q,
                                  const real *k, const real *v, int B, int T, int H, int hs,
                                  int bidirectional, const struct tb_backend *be) {
    (void)be;
    int fwd = bidirectional ? 2 : 0, rev = bidirectional ? 2 : 1;
    ret_launch(dq, dy, v, k, B, T, H, hs, fwd, 1);
    ret_launch(dk, v, dy, q, B, T, H, hs, rev, 1);
    ret_launch(dv, k, q, dy, B, T, H, hs, rev, 1);
}

void tbc_ops_seq_init(tb_ops_seq *ops) {
    ops->retention_forward = cu_retention_forward;
    ops->retention_backward = cu_retention_backward;
    tbc_seq_more_init(ops);
    tbc_scan_init(ops);
    tbc_moe_init(ops);
}
