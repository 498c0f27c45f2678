/* Device code of the Mamba selective scan (scan_cuda.cu has the contract), also built by
 * the CPU emulation of tests/cuda_emu. A warp packs 32 / LN channels (b, i), LN lanes per
 * channel (LN = the state size N rounded up to 8, 16 or 32), lane n of a channel's group
 * holding state component n: with N = 16 two channels share a warp. Blocks of SC_WARPS
 * warps; blockIdx.y = b.
 * Time runs in chunks of SC_L steps (the checkpoint interval). A chunk's inputs are staged
 * in shared memory by the whole block (sc_stage: coalesced loads, issued one chunk ahead so
 * that their latency hides behind the current chunk's recurrence, where the old kernels
 * paid one memory latency a step); each lane reads its rows into registers and runs the
 * chunk's recurrence there (loops fully unrolled, static indexing), then writes the
 * chunk's outputs.
 * The sums over n of the chunk's SC_L steps share one xor tree (sc_sum_steps): each level
 * halves the values a lane holds, so SC_L steps cost about as many shuffles as one did;
 * the pairs added are the ones of a per-step xor tree, so the sums keep its bits. The
 * steps of a partial last chunk past T load zeros and are never stored: the backward meets
 * them first, where they leave the carries and accumulators at +0. */
#ifndef TB_SCAN_KERNELS_CUH
#define TB_SCAN_KERNELS_CUH

#define SC_WARPS 16
#define SC_L 8

/* v[k]: the calling lane's term of chunk step k. Sums each step over the LN lanes of the
 * lane's group, with the xor tree v += shfl_xor(v, s), s = LN / 2 .. 1: at the levels
 * where a lane holds m > 1 values, it keeps half (the upper half where its bit s is set),
 * sends the other half to lane ^ s and adds what comes back (the same pairs as the per-step
 * tree; a + b = b + a bit for bit). Returns the sum of step sc_step<LN>(n) (in v[0]). */
template <int LN>
__device__ __forceinline__ float sc_sum_steps(float (&v)[SC_L], int n) {
    static_assert(SC_L <= LN && (SC_L & (SC_L - 1)) == 0, "SC_L: a power of two, at most 8");
#pragma unroll
    for (int s = LN / 2; s > 0; s >>= 1) {
        int m = SC_L * s / LN; /* values kept at this level; 0: one value left */
        if (m > 0) {
            bool up = n & s;
#pragma unroll
            for (int k = 0; k < m; k++) {
                float send = up ? v[k] : v[k + m], keep = up ? v[k + m] : v[k];
                v[k] = keep + __shfl_xor_sync(0xffffffffu, send, s);
            }
        } else v[0] += __shfl_xor_sync(0xffffffffu, v[0], s);
    }
    return v[0];
}

/* The chunk step whose sum sc_sum_steps leaves in lane n: its LN / SC_L lanes share it. */
template <int LN>
__device__ __forceinline__ int sc_step(int n) {
    return n / (LN / SC_L);
}

/* v[sc_step<LN>(n)] by the selects of sc_sum_steps's tree (no indexing by a variable,
 * which would put v in local memory). */
template <int LN>
__device__ __forceinline__ float sc_pick(const float (&v)[SC_L], int n) {
    float p[SC_L];
#pragma unroll
    for (int k = 0; k < SC_L; k++) p[k] = v[k];
#pragma unroll
    for (int m = SC_L / 2; m > 0; m >>= 1) {
        bool up = n & (m * (LN / SC_L));
#pragma unroll
        for (int k = 0; k < m; k++) p[k] = up ? p[k + m] : p[k];
    }
    return p[0];
}

/* A chunk's inputs staged in shared memory as rows of SC_L steps (a lane reads its 8 values
 * of a row as two float4): NC rows per channel array (dt, x and, backward, dy), one per
 * channel of the block, then LN rows of Bm and LN of Cm (zero past N), rows shared by the
 * block's warps. Loading is coalesced (consecutive threads, consecutive channels or n) and
 * split in two: load() issues the next chunk's global loads into registers before the
 * current chunk's recurrence, so their latency hides behind it; store() writes them to
 * shared memory after. Out-of-range steps and channels load zeros. */
template <int LN, int NC>
struct sc_stage {
    static constexpr int CPB = SC_WARPS * 32 / LN, ROWS = NC * CPB + 2 * LN;
    static constexpr int SLOTS = (ROWS * SC_L + 32 * SC_WARPS - 1) / (32 * SC_WARPS);
    float v[SLOTS];

    __device__ __forceinline__ void load(const float *s0, const float *s1, const float *s2, const float *Bm,
                                         const float *Cm, int t0, int T, int Di, int N, int ld) {
#pragma unroll
        for (int q = 0; q < SLOTS; q++) {
            int idx = threadIdx.x + q * 32 * SC_WARPS, r = idx - NC * CPB * SC_L;
            int t = t0 + (r < 0 ? idx / CPB : r / LN) % SC_L;
            v[q] = 0;
            if (idx >= ROWS * SC_L || t >= T) continue;
            size_t row = (size_t)blockIdx.y * T + t;
            if (r < 0) {
                int c = blockIdx.x * CPB + idx % CPB;
                int a = idx / (CPB * SC_L);
                const float *p = a == 0 ? s0 : a == 1 ? s1 : s2;
                if (c < Di) v[q] = p[row * Di + c];
            } else if (r % LN < N) {
                /* the array chosen first, then indexed: GCC 12 at -O0 with the sanitizers
                 * (the CPU emulation's Debug build) loaded r for only one arm of
                 * (r < LN · SC_L ? Bm : Cm)[... r % LN] and read past Cm */
                const float *bc = r < LN * SC_L ? Bm : Cm;
                v[q] = bc[row * ld + r % LN];
            }
        }
    }
    __device__ __forceinline__ void store(float (*s)[SC_L]) const {
#pragma unroll
        for (int q = 0; q < SLOTS; q++) {
            int idx = threadIdx.x + q * 32 * SC_WARPS;
            if (idx >= ROWS * SC_L) continue;
            if (idx < NC * CPB * SC_L) s[idx / (CPB * SC_L) * CPB + idx % CPB][idx / CPB % SC_L] = v[q];
            else {
                int r = idx - NC * CPB * SC_L;
                s[NC * CPB + r / (LN * SC_L) * LN + r % LN][r / LN % SC_L] = v[q];
            }
        }
    }
};

/* Row r of a stage into registers. */
__device__ __forceinline__ void sc_row(float (&v)[SC_L], const float (*s)[SC_L], int r) {
    const float4 *p = reinterpret_cast<const float4 *>(s[r]);
#pragma unroll
    for (int q = 0; q < SC_L / 4; q++) {
        float4 f = p[q];
        v[4 * q] = f.x, v[4 * q + 1] = f.y, v[4 * q + 2] = f.z, v[4 * q + 3] = f.w;
    }
}

/* Chunk ch's stage is double-buffered: one barrier a chunk (the buffer written at chunk ch
 * was last read at chunk ch - 2, before every thread passed chunk ch - 1's barrier). */
template <int LN>
__global__ void __launch_bounds__(32 * SC_WARPS)
k_scan_fwd(float *__restrict__ y, float *__restrict__ states, const float *__restrict__ xc,
           const float *__restrict__ delta, const float *__restrict__ A_log, const float *__restrict__ Bm,
           const float *__restrict__ Cm, const float *__restrict__ D, int T, int Di, int N, int ld) {
    constexpr int CPW = 32 / LN;
    using stage = sc_stage<LN, 2>;
    alignas(16) __shared__ float stg[2][stage::ROWS][SC_L];
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, n = lane % LN, cl = w * CPW + lane / LN;
    int i0 = (blockIdx.x * SC_WARPS + w) * CPW, i = i0 + lane / LN, b = blockIdx.y;
    int wlive = i0 < Di, live = i < Di, on = live && n < N, j = sc_step<LN>(n);
    int wr = live && n % (LN / SC_L) == 0; /* this lane stores step j's y */
    float A = on ? -expf(A_log[(size_t)i * N + n]) : 0.0f, h = 0, Dv = live ? D[i] : 0.0f;
    int nch = (T + SC_L - 1) / SC_L;
    stage st;
    st.load(delta, xc, nullptr, Bm, Cm, 0, T, Di, N, ld);
    for (int ch = 0; ch < nch; ch++) {
        int t0 = ch * SC_L;
        float(*s)[SC_L] = stg[ch & 1];
        st.store(s);
        __syncthreads();
        if (ch + 1 < nch) st.load(delta, xc, nullptr, Bm, Cm, t0 + SC_L, T, Di, N, ld);
        if (!wlive) continue; /* warp-uniform: the group sums below need every lane */
        float dt[SC_L], x[SC_L], bn[SC_L], cn[SC_L], v[SC_L];
        sc_row(dt, s, cl);
        sc_row(x, s, stage::CPB + cl);
        sc_row(bn, s, 2 * stage::CPB + n);
        sc_row(cn, s, 2 * stage::CPB + LN + n);
#pragma unroll
        for (int k = 0; k < SC_L; k++) {
            h = expf(dt[k] * A) * h + dt[k] * bn[k] * x[k];
            if (!on) h = 0;
            v[k] = h * cn[k];
        }
        if (on && t0 + SC_L <= T) states[(((size_t)b * nch + ch) * Di + i) * N + n] = h;
        float acc = sc_sum_steps<LN>(v, n), xj = sc_pick<LN>(x, n);
        if (wr && t0 + j < T) y[((size_t)b * T + t0 + j) * Di + i] = Dv * xj + acc;
    }
}

/* Per chunk, last to first: recompute the chunk's states from the checkpoint (h and
 * exp(Δ A) in registers), run the reverse recurrence, then reduce the Bm / Cm terms
 * over the block's channels (shared memory; B and C by different threads) while storing
 * the next chunk's stage, whose loads (and the lanes' checkpoint, ddelta and dxc) were
 * issued before the recurrence. */
template <int LN>
__global__ void __launch_bounds__(32 * SC_WARPS)
k_scan_bwd(float *__restrict__ dxc, float *__restrict__ ddelta, float *__restrict__ pB, float *__restrict__ pC,
           float *__restrict__ pA, float *__restrict__ pD, const float *__restrict__ dy,
           const float *__restrict__ states, const float *__restrict__ xc, const float *__restrict__ delta,
           const float *__restrict__ A_log, const float *__restrict__ Bm, const float *__restrict__ Cm,
           const float *__restrict__ D, int T, int Di, int N, int ld) {
    constexpr int CPW = 32 / LN;
    using stage = sc_stage<LN, 3>;
    static_assert(2 * SC_L * LN <= 32 * SC_WARPS, "one reduction per thread");
    alignas(16) __shared__ float stg[stage::ROWS][SC_L];
    __shared__ float cBC[2][SC_WARPS][SC_L][32]; /* the Bm, Cm terms of the chunk */
    int w = threadIdx.x / 32, lane = threadIdx.x % 32, n = lane % LN, cl = w * CPW + lane / LN;
    int i0 = (blockIdx.x * SC_WARPS + w) * CPW, i = i0 + lane / LN, b = blockIdx.y, tiles = gridDim.x;
    int wlive = i0 < Di, live = i < Di, on = live && n < N, j = sc_step<LN>(n);
    int wr = live && n % (LN / SC_L) == 0; /* this lane updates step j's ddelta, dxc */
    float A = on ? -expf(A_log[(size_t)i * N + n]) : 0.0f, Dv = live ? D[i] : 0.0f;
    float carry = 0, dAl = 0, dDacc = 0;
    int nch = (T + SC_L - 1) / SC_L;
    stage st;
    /* the lane's checkpoint (state before chunk ch) and step j's ddelta, dxc */
    auto lane_in = [&](int ch, float &h0, float &ddo, float &dxo) {
        int t0 = ch * SC_L;
        size_t ej = ((size_t)b * T + t0 + j) * Di + i;
        int wrj = wr && t0 + j < T;
        h0 = on && t0 > 0 ? states[(((size_t)b * nch + ch - 1) * Di + i) * N + n] : 0.0f;
        ddo = wrj ? ddelta[ej] : 0.0f, dxo = wrj ? dxc[ej] : 0.0f;
    };
    float h0, ddo, dxo;
    st.load(delta, xc, dy, Bm, Cm, (nch - 1) * SC_L, T, Di, N, ld);
    lane_in(nch - 1, h0, ddo, dxo);
    st.store(stg);
    __syncthreads();
    for (int ch = nch - 1; ch >= 0; ch--) {
        int t0 = ch * SC_L;
        float h0n = 0, ddon = 0, dxon = 0;
        if (ch > 0) {
            st.load(delta, xc, dy, Bm, Cm, t0 - SC_L, T, Di, N, ld);
            lane_in(ch - 1, h0n, ddon, dxon);
        }
        if (wlive) { /* warp-uniform: the group sums below need every lane */
            float dt[SC_L], x[SC_L], bn[SC_L], gc[SC_L], a[SC_L], hs[SC_L], dd[SC_L], dx[SC_L], gj;
            sc_row(dt, stg, cl);
            sc_row(x, stg, stage::CPB + cl);
            sc_row(bn, stg, 3 * stage::CPB + n);
            {
                float g[SC_L], cn[SC_L];
                sc_row(g, stg, 2 * stage::CPB + cl);
                sc_row(cn, stg, 3 * stage::CPB + LN + n);
                float h = h0;
#pragma unroll
                for (int k = 0; k < SC_L; k++) {
                    a[k] = expf(dt[k] * A);
                    h = a[k] * h + dt[k] * bn[k] * x[k];
                    if (!on) h = 0;
                    hs[k] = h;
                    cBC[1][w][k][lane] = on ? g[k] * h : 0.0f;
                    gc[k] = g[k] * cn[k];
                }
#pragma unroll
                for (int k = SC_L - 1; k >= 0; k--) dDacc += g[k] * x[k];
                gj = sc_pick<LN>(g, n);
            }
#pragma unroll
            for (int k = SC_L - 1; k >= 0; k--) {
                float hprev = k > 0 ? hs[k - 1] : h0;
                float dh = on ? gc[k] + carry : 0.0f;
                float da = dh * hprev;
                dd[k] = da * a[k] * A + dh * bn[k] * x[k];
                dAl += da * a[k] * dt[k] * A;
                dx[k] = dh * dt[k] * bn[k];
                cBC[0][w][k][lane] = dh * dt[k] * x[k];
                carry = dh * a[k];
            }
            float ddj = sc_sum_steps<LN>(dd, n), dxj = sc_sum_steps<LN>(dx, n);
            if (wr && t0 + j < T) {
                size_t ej = ((size_t)b * T + t0 + j) * Di + i;
                ddelta[ej] = ddo + ddj;
                dxc[ej] = dxo + gj * Dv + dxj;
            }
        } else {
#pragma unroll
            for (int k = 0; k < SC_L; k++) cBC[0][w][k][lane] = cBC[1][w][k][lane] = 0;
        }
        __syncthreads();
        /* Bm (c = 0) / Cm (c = 1) partials of this block's channels, in channel order (warp,
         * then group) */
        int c = threadIdx.x / (SC_L * LN), tt = threadIdx.x / LN % SC_L, nn = threadIdx.x % LN;
        if (c < 2 && t0 + tt < T && nn < N) {
            float s = 0;
#pragma unroll
            for (int ww = 0; ww < SC_WARPS; ww++)
#pragma unroll
                for (int sub = 0; sub < CPW; sub++) s += cBC[c][ww][tt][sub * LN + nn];
            (c ? pC : pB)[(((size_t)b * T + t0 + tt) * tiles + blockIdx.x) * N + nn] = s;
        }
        if (ch > 0) st.store(stg);
        h0 = h0n, ddo = ddon, dxo = dxon;
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
