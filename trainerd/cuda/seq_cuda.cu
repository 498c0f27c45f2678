/* The seq family on CUDA: so far only the retention core (MODEL.md 6 'retnet') in the
 * quadratic form, forward and backward. One warp per output row (b, t, h): lanes split
 * the head's channels, q·k dot products reduce by warp shuffles in a fixed pattern, and
 * the sum over the other index runs in ascending order, so results are deterministic
 * (no atomics). γ^|t-s| is powf (the CPU multiplies outward; they differ by rounding). */
#include "cuda_internal.cuh"

#define RET_WARPS 4
#define RET_MAX_PER_LANE 8 /* hs <= 256 */

/* MODEL.md 6: γ_h (in double, then cast, as the CPU). */
__device__ float ret_gamma(int h, int H) {
    if (H == 1) return (float)(1.0 - 1.0 / 32.0);
    double l0 = log(1.0 / 32.0), l1 = log(1.0 / 512.0);
    return (float)(1.0 - exp(l0 + (l1 - l0) * (double)h / (double)(H - 1)));
}

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
    float g = ret_gamma(h, H);
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

static void ret_launch(float *out, const float *a, const float *b, const float *cv, int B, int T, int H,
                       int hs, int range, int accumulate) {
    if (hs > 32 * RET_MAX_PER_LANE)
        tbc_fatal("retention", __FILE__, __LINE__, "head size above 256 is not supported on CUDA yet");
    size_t rows = (size_t)B * T * H;
    if (!rows || hs <= 0) return;
    float c = (float)(1.0 / sqrt((double)hs));
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
