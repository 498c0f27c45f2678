/* The Mamba selective scan on CUDA (MODEL.md 6 'mamba'), A = -exp(A_log), h_{-1} = 0:
 *   h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t Bm_t) xc_t;  y_t = h_t Cm_t + D ⊙ xc_t.
 * One warp per (b, channel i), lane n per state component (N <= 32), time sequential.
 * Chunked recompute: the forward writes the state only at chunk ends
 * (t ≡ SC_L - 1 mod SC_L) into `states` (other rows are left untouched); the backward walks
 * the chunks in reverse, recomputes the chunk's SC_L states from the previous checkpoint
 * into shared memory, and runs the reverse-time recurrence. Bm / Cm gradients (summed over
 * channels) are reduced across the block's warps in shared memory and across blocks by a
 * second kernel in a fixed order; A_log and D gradients (summed over the batch) likewise.
 * No atomics. */
#include "cuda_internal.cuh"

#define SC_WARPS 16
#define SC_L 8

static inline cudaStream_t S(void) { return tbc_g->stream; }

__global__ void __launch_bounds__(32 * SC_WARPS)
k_scan_fwd(float *y, float *states, const float *xc, const float *delta, const float *A_log, const float *Bm,
           const float *Cm, const float *D, int T, int Di, int N, int ld) {
    int w = threadIdx.x / 32, n = threadIdx.x % 32;
    int i = blockIdx.x * SC_WARPS + w, b = blockIdx.y;
    if (i >= Di) return;
    int on = n < N;
    float A = on ? -expf(A_log[(size_t)i * N + n]) : 0.0f, h = 0, Dv = D[i];
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)b * T + t, e = row * Di + i;
        float dt = delta[e], x = xc[e];
        float bn = on ? Bm[row * ld + n] : 0.0f, cn = on ? Cm[row * ld + n] : 0.0f;
        h = expf(dt * A) * h + dt * bn * x;
        if (!on) h = 0;
        float acc = h * cn;
        for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
        if (n == 0) y[e] = Dv * x + acc;
        if (on && t % SC_L == SC_L - 1) states[e * N + n] = h;
    }
}

__global__ void __launch_bounds__(32 * SC_WARPS)
k_scan_bwd(float *dxc, float *ddelta, float *pB, float *pC, float *pA, float *pD, const float *dy,
           const float *states, const float *xc, const float *delta, const float *A_log, const float *Bm,
           const float *Cm, const float *D, int T, int Di, int N, int ld) {
    __shared__ float hb[SC_WARPS][SC_L][32], cB[SC_WARPS][SC_L][32], cC[SC_WARPS][SC_L][32];
    int w = threadIdx.x / 32, n = threadIdx.x % 32;
    int i = blockIdx.x * SC_WARPS + w, b = blockIdx.y, tiles = gridDim.x;
    int live = i < Di, on = live && n < N;
    float A = on ? -expf(A_log[(size_t)i * N + n]) : 0.0f, Dv = live ? D[i] : 0.0f;
    float carry = 0, dAl = 0, dDacc = 0;
    int nch = (T + SC_L - 1) / SC_L;
    for (int ch = nch - 1; ch >= 0; ch--) {
        int t0 = ch * SC_L, t1 = t0 + SC_L < T ? t0 + SC_L : T;
        float h0 = 0;
        if (live) {
            if (on && t0 > 0) h0 = states[(((size_t)b * T + t0 - 1) * Di + i) * N + n];
            float h = h0;
            for (int t = t0; t < t1; t++) {
                size_t row = (size_t)b * T + t, e = row * Di + i;
                float dt = delta[e], x = xc[e], bn = on ? Bm[row * ld + n] : 0.0f;
                h = expf(dt * A) * h + dt * bn * x;
                if (!on) h = 0;
                hb[w][t - t0][n] = h;
            }
            for (int t = t1 - 1; t >= t0; t--) {
                size_t row = (size_t)b * T + t, e = row * Di + i;
                float dt = delta[e], x = xc[e], g = dy[e];
                float bn = on ? Bm[row * ld + n] : 0.0f, cn = on ? Cm[row * ld + n] : 0.0f;
                float hcur = hb[w][t - t0][n], hprev = t > t0 ? hb[w][t - t0 - 1][n] : h0;
                float a = expf(dt * A);
                float dh = on ? g * cn + carry : 0.0f;
                float da = dh * hprev;
                float dd = da * a * A + dh * bn * x;
                dAl += da * a * dt * A;
                float dxn = dh * dt * bn;
                cB[w][t - t0][n] = dh * dt * x;
                cC[w][t - t0][n] = on ? g * hcur : 0.0f;
                carry = dh * a;
                for (int s = 16; s > 0; s >>= 1) {
                    dd += __shfl_xor_sync(0xffffffffu, dd, s);
                    dxn += __shfl_xor_sync(0xffffffffu, dxn, s);
                }
                if (n == 0) {
                    ddelta[e] += dd;
                    dxc[e] = dxc[e] + g * Dv + dxn;
                    dDacc += g * x;
                }
            }
        } else {
            for (int tt = 0; tt < SC_L; tt++) cB[w][tt][n] = cC[w][tt][n] = 0;
        }
        __syncthreads();
        for (int it = threadIdx.x; it < SC_L * 32; it += 32 * SC_WARPS) {
            int tt = it / 32, nn = it % 32;
            if (t0 + tt >= t1 || nn >= N) continue;
            float sb = 0, sc = 0;
            for (int ww = 0; ww < SC_WARPS; ww++) {
                sb += cB[ww][tt][nn];
                sc += cC[ww][tt][nn];
            }
            size_t o = (((size_t)b * T + t0 + tt) * tiles + blockIdx.x) * N + nn;
            pB[o] = sb;
            pC[o] = sc;
        }
        __syncthreads();
    }
    if (on) pA[((size_t)b * Di + i) * N + n] = dAl;
    if (live && n == 0) pD[(size_t)b * Di + i] = dDacc;
}

__global__ void k_scan_bc_final(float *dBm, float *dCm, const float *pB, const float *pC, size_t rows, int tiles,
                                int N, int ld) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < rows * N; e += (size_t)gridDim.x * blockDim.x) {
        size_t r = e / N;
        int n = (int)(e - r * N);
        float sb = 0, sc = 0;
        for (int k = 0; k < tiles; k++) {
            sb += pB[(r * tiles + k) * N + n];
            sc += pC[(r * tiles + k) * N + n];
        }
        dBm[r * ld + n] += sb;
        dCm[r * ld + n] += sc;
    }
}

/* Parameter gradients: add the per-batch partials in batch order (as the CPU does). */
__global__ void k_scan_param_final(float *dA_log, float *dD, const float *pA, const float *pD, int B, int Di, int N) {
    size_t total = (size_t)Di * N + Di;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        if (e < (size_t)Di * N) {
            float v = dA_log[e];
            for (int b = 0; b < B; b++) v += pA[(size_t)b * Di * N + e];
            dA_log[e] = v;
        } else {
            size_t i = e - (size_t)Di * N;
            float v = dD[i];
            for (int b = 0; b < B; b++) v += pD[(size_t)b * Di + i];
            dD[i] = v;
        }
    }
}

static void scan_check(int N, int B) {
    if (N > 32) tbc_fatal("scan", __FILE__, __LINE__, "state size N above 32 is not supported on CUDA yet");
    if (B > 65535) tbc_fatal("scan", __FILE__, __LINE__, "batch above 65535");
}

static void cu_scan_forward(real *y, real *states, const real *xc, const real *delta, const real *A_log,
                            const real *Bm, const real *Cm, const real *D, int B, int T, int Di, int N, int ld_bc,
                            const struct tb_backend *be) {
    (void)be;
    if (B <= 0 || T <= 0 || Di <= 0 || N <= 0) return;
    scan_check(N, B);
    dim3 g((unsigned)((Di + SC_WARPS - 1) / SC_WARPS), (unsigned)B);
    k_scan_fwd<<<g, 32 * SC_WARPS, 0, S()>>>(y, states, xc, delta, A_log, Bm, Cm, D, T, Di, N, ld_bc);
    TBC_LAUNCHED();
}

static void cu_scan_backward(real *dxc, real *ddelta, real *dA_log, real *dBm, real *dCm, real *dD, const real *dy,
                             const real *states, const real *xc, const real *delta, const real *A_log,
                             const real *Bm, const real *Cm, const real *D, int B, int T, int Di, int N, int ld_bc,
                             const struct tb_backend *be) {
    (void)be;
    if (B <= 0 || T <= 0 || Di <= 0 || N <= 0) return;
    scan_check(N, B);
    int tiles = (Di + SC_WARPS - 1) / SC_WARPS;
    size_t rows = (size_t)B * T;
    float *pB = (float *)tbc_scratch(TBC_SCR_SEQ_A, rows * tiles * N * 4);
    float *pC = (float *)tbc_scratch(TBC_SCR_SEQ_B, rows * tiles * N * 4);
    float *pA = (float *)tbc_scratch(TBC_SCR_SEQ_C, (size_t)B * Di * N * 4);
    float *pD = (float *)tbc_scratch(TBC_SCR_SEQ_D, (size_t)B * Di * 4);
    dim3 g((unsigned)tiles, (unsigned)B);
    k_scan_bwd<<<g, 32 * SC_WARPS, 0, S()>>>(dxc, ddelta, pB, pC, pA, pD, dy, states, xc, delta, A_log, Bm, Cm, D, T,
                                             Di, N, ld_bc);
    TBC_LAUNCHED();
    k_scan_bc_final<<<tbc_blocks(rows * N, 256), 256, 0, S()>>>(dBm, dCm, pB, pC, rows, tiles, N, ld_bc);
    TBC_LAUNCHED();
    k_scan_param_final<<<tbc_blocks((size_t)Di * N + Di, 256), 256, 0, S()>>>(dA_log, dD, pA, pD, B, Di, N);
    TBC_LAUNCHED();
}

void tbc_scan_init(tb_ops_seq *ops) {
    ops->scan_forward = cu_scan_forward;
    ops->scan_backward = cu_scan_backward;
}
