/* The Mamba selective scan on CUDA (MODEL.md 6 'mamba'), A = -exp(A_log), h_{-1} = 0:
 *   h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t Bm_t) xc_t;  y_t = h_t Cm_t + D ⊙ xc_t.
 * A warp per 32 / LN channels (b, i), LN lanes per channel (N rounded up to 8, 16 or 32),
 * lane n of a group per state component (N <= 32), time sequential (scan_kernels.cuh).
 * Chunked recompute: the forward keeps the state only at chunk ends (t ≡ SC_L - 1 mod
 * SC_L), row b·ceil(T / SC_L) + t / SC_L of `states` (scan_state_every = SC_L: the model
 * allocates an eighth of the per-token states); the backward walks the chunks in reverse,
 * recomputes the chunk's SC_L states from the previous checkpoint in registers, and runs
 * the reverse-time recurrence. Both kernels stage a chunk's inputs in shared memory one
 * chunk ahead and keep the chunk in registers (scan_kernels.cuh), so the sequential steps
 * wait on no memory load; results are bit-identical to the step-by-step formulation (same
 * operations, same order, same xor trees). Bm / Cm gradients (summed over channels) are
 * reduced across the block's warps in shared memory and across blocks by a second kernel
 * in a fixed order; A_log and D gradients (summed over the batch) likewise.
 * No atomics. */
#include "cuda_internal.cuh"
#include "scan_kernels.cuh"

static inline cudaStream_t S(void) { return tbc_g->stream; }

/* Lanes per channel: N rounded up to 8, 16 or 32. */
static int sc_lanes(int N) { return N <= 8 ? 8 : N <= 16 ? 16 : 32; }

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
    int ln = sc_lanes(N), cpb = SC_WARPS * (32 / ln);
    dim3 g((unsigned)((Di + cpb - 1) / cpb), (unsigned)B);
    if (ln == 8) k_scan_fwd<8><<<g, 32 * SC_WARPS, 0, S()>>>(y, states, xc, delta, A_log, Bm, Cm, D, T, Di, N, ld_bc);
    else if (ln == 16)
        k_scan_fwd<16><<<g, 32 * SC_WARPS, 0, S()>>>(y, states, xc, delta, A_log, Bm, Cm, D, T, Di, N, ld_bc);
    else k_scan_fwd<32><<<g, 32 * SC_WARPS, 0, S()>>>(y, states, xc, delta, A_log, Bm, Cm, D, T, Di, N, ld_bc);
    TBC_LAUNCHED();
}

static void cu_scan_backward(real *dxc, real *ddelta, real *dA_log, real *dBm, real *dCm, real *dD, const real *dy,
                             const real *states, const real *xc, const real *delta, const real *A_log,
                             const real *Bm, const real *Cm, const real *D, int B, int T, int Di, int N, int ld_bc,
                             const struct tb_backend *be) {
    (void)be;
    if (B <= 0 || T <= 0 || Di <= 0 || N <= 0) return;
    scan_check(N, B);
    int ln = sc_lanes(N), cpb = SC_WARPS * (32 / ln);
    int tiles = (Di + cpb - 1) / cpb;
    size_t rows = (size_t)B * T;
    float *pB = (float *)tbc_scratch(TBC_SCR_SEQ_A, rows * tiles * N * 4);
    float *pC = (float *)tbc_scratch(TBC_SCR_SEQ_B, rows * tiles * N * 4);
    float *pA = (float *)tbc_scratch(TBC_SCR_SEQ_C, (size_t)B * Di * N * 4);
    float *pD = (float *)tbc_scratch(TBC_SCR_SEQ_D, (size_t)B * Di * 4);
    dim3 g((unsigned)tiles, (unsigned)B);
    if (ln == 8)
        k_scan_bwd<8><<<g, 32 * SC_WARPS, 0, S()>>>(dxc, ddelta, pB, pC, pA, pD, dy, states, xc, delta, A_log, Bm, Cm,
                                                    D, T, Di, N, ld_bc);
    else if (ln == 16)
        k_scan_bwd<16><<<g, 32 * SC_WARPS, 0, S()>>>(dxc, ddelta, pB, pC, pA, pD, dy, states, xc, delta, A_log, Bm,
                                                     Cm, D, T, Di, N, ld_bc);
    else
        k_scan_bwd<32><<<g, 32 * SC_WARPS, 0, S()>>>(dxc, ddelta, pB, pC, pA, pD, dy, states, xc, delta, A_log, Bm,
                                                     Cm, D, T, Di, N, ld_bc);
    TBC_LAUNCHED();
    k_scan_bc_final<<<tbc_blocks(rows * N, 256), 256, 0, S()>>>(dBm, dCm, pB, pC, rows, tiles, N, ld_bc);
    TBC_LAUNCHED();
    k_scan_param_final<<<tbc_blocks((size_t)Di * N + Di, 256), 256, 0, S()>>>(dA_log, dD, pA, pD, B, Di, N);
    TBC_LAUNCHED();
}

void tbc_scan_init(tb_ops_seq *ops) {
    ops->scan_forward = cu_scan_forward;
    ops->scan_backward = cu_scan_backward;
    ops->scan_state_every = SC_L;
}
