/* Device code of the Mamba selective scan (scan_cuda.cu has the contract), also built by
 * the CPU emulation of tests/cuda_emu. A warp packs 32 / LN channels (b, i), LN lanes per
 * channel (LN = the state size N rounded up to 8, 16 or 32), lane n of a channel's group
 * holding state component n: with N = 16 two channels share a warp, and the sums over n
 * are LN-lane xor trees inside the group. Blocks of SC_WARPS warps; blockIdx.y = b. */
#ifndef TB_SCAN_KERNELS_CUH
#define TB_SCAN_KERNELS_CUH

#define SC_WARPS 16
#define SC_L 8

/* Sum over the LN lanes of the calling lane's group, fixed xor tree. */
template <int LN>
__device__ __forceinline__ float sc_group_sum(float v) {
#pragma unroll
    for (int s = LN / 2; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
    return v;
}

template <int LN>
__global__ void __launch_bounds__(32 * SC_WARPS)
k_scan_fwd(float *y, float *states, const float *xc, const float *delta, const float *A_log, const float *Bm,
           const float *Cm, const float *D, int T, int Di, int N, int ld) {
    constexpr int CPW = 32 / LN;
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, n = lane % LN;
    int i0 = (blockIdx.x * SC_WARPS + w) * CPW, i = i0 + lane / LN, b = blockIdx.y;
    if (i0 >= Di) return; /* the whole warp: no channel of it is live */
    int live = i < Di, on = live && n < N;
    float A = on ? -expf(A_log[(size_t)i * N + n]) : 0.0f, h = 0, Dv = live ? D[i] : 0.0f;
    size_t nch = (size_t)(T + SC_L - 1) / SC_L;
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)b * T + t, e = row * Di + i;
        float dt = live ? delta[e] : 0.0f, x = live ? xc[e] : 0.0f;
        float bn = on ? Bm[row * ld + n] : 0.0f, cn = on ? Cm[row * ld + n] : 0.0f;
        h = expf(dt * A) * h + dt * bn * x;
        if (!on) h = 0;
        float acc = sc_group_sum<LN>(h * cn);
        if (live && n == 0) y[e] = Dv * x + acc;
        if (on && t % SC_L == SC_L - 1) states[(((size_t)b * nch + t / SC_L) * Di + i) * N + n] = h;
    }
}

template <int LN>
__global__ void __launch_bounds__(32 * SC_WARPS)
k_scan_bwd(float *dxc, float *ddelta, float *pB, float *pC, float *pA, float *pD, const float *dy,
           const float *states, const float *xc, const float *delta, const float *A_log, const float *Bm,
           const float *Cm, const float *D, int T, int Di, int N, int ld) {
    constexpr int CPW = 32 / LN;
    __shared__ float hb[SC_WARPS][SC_L][32], cB[SC_WARPS][SC_L][32], cC[SC_WARPS][SC_L][32];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, n = lane % LN;
    int i0 = (blockIdx.x * SC_WARPS + w) * CPW, i = i0 + lane / LN, b = blockIdx.y, tiles = gridDim.x;
    int wlive = i0 < Di, live = i < Di, on = live && n < N;
    float A = on ? -expf(A_log[(size_t)i * N + n]) : 0.0f, Dv = live ? D[i] : 0.0f;
    float carry = 0, dAl = 0, dDacc = 0;
    int nch = (T + SC_L - 1) / SC_L;
    for (int ch = nch - 1; ch >= 0; ch--) {
        int t0 = ch * SC_L, t1 = t0 + SC_L < T ? t0 + SC_L : T;
        float h0 = 0;
        if (wlive) { /* warp-uniform: the group sums below need every lane */
            if (on && t0 > 0) h0 = states[(((size_t)b * nch + ch - 1) * Di + i) * N + n];
            float h = h0;
            for (int t = t0; t < t1; t++) {
                size_t row = (size_t)b * T + t, e = row * Di + i;
                float dt = live ? delta[e] : 0.0f, x = live ? xc[e] : 0.0f, bn = on ? Bm[row * ld + n] : 0.0f;
                h = expf(dt * A) * h + dt * bn * x;
                if (!on) h = 0;
                hb[w][t - t0][lane] = h;
            }
            for (int t = t1 - 1; t >= t0; t--) {
                size_t row = (size_t)b * T + t, e = row * Di + i;
                float dt = live ? delta[e] : 0.0f, x = live ? xc[e] : 0.0f, g = live ? dy[e] : 0.0f;
                float bn = on ? Bm[row * ld + n] : 0.0f, cn = on ? Cm[row * ld + n] : 0.0f;
                float hcur = hb[w][t - t0][lane], hprev = t > t0 ? hb[w][t - t0 - 1][lane] : h0;
                float a = expf(dt * A);
                float dh = on ? g * cn + carry : 0.0f;
                float da = dh * hprev;
                float dd = da * a * A + dh * bn * x;
                dAl += da * a * dt * A;
                float dxn = dh * dt * bn;
                cB[w][t - t0][lane] = dh * dt * x;
                cC[w][t - t0][lane] = on ? g * hcur : 0.0f;
                carry = dh * a;
                dd = sc_group_sum<LN>(dd);
                dxn = sc_group_sum<LN>(dxn);
                if (live && n == 0) {
                    ddelta[e] += dd;
                    dxc[e] = dxc[e] + g * Dv + dxn;
                    dDacc += g * x;
                }
            }
        } else {
            for (int tt = 0; tt < SC_L; tt++) cB[w][tt][lane] = cC[w][tt][lane] = 0;
        }
        __syncthreads();
        /* Bm / Cm partials of this block's channels, in channel order (warp, then group) */
        for (int it = threadIdx.x; it < SC_L * LN; it += 32 * SC_WARPS) {
            int tt = it / LN, nn = it % LN;
            if (t0 + tt >= t1 || nn >= N) continue;
            float sb = 0, sc = 0;
            for (int ww = 0; ww < SC_WARPS; ww++)
                for (int sub = 0; sub < CPW; sub++) {
                    sb += cB[ww][tt][sub * LN + nn];
                    sc += cC[ww][tt][sub * LN + nn];
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
#endif
