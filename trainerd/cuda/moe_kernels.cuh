/* Device code of the MoE ops (moe_cuda.cu) that the CPU emulation of tests/cuda_emu also
 * builds. */
#ifndef TB_MOE_KERNELS_CUH
#define TB_MOE_KERNELS_CUH

/* The scatter's backward, a warp per expert row j (rows j = blockIdx.x · warps + warp):
 * with a = order[j] (token a / K, slot a % K), dye[j, c] += gate[a] · dout[a / K, c] and
 * dgate[a] += Σ_c dout[a / K, c] · ye[j, c]; lane l takes c ≡ l (mod 32) ascending, the 32
 * partial sums meet in a fixed xor tree: reads coalesced, one pass, deterministic. Each a
 * appears once in order, so each dgate element has one writer. SET: dye = ... (not read). */
template <bool SET>
__global__ void k_moe_scatter_bwd(float *dye, float *dgate, const float *dout, const float *ye, const float *gate,
                                  const int32_t *order, int n, int K, int C) {
    int lane = threadIdx.x % 32;
    int j = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (j >= n) return; /* the whole warp leaves together */
    int a = order[j];
    if (a < 0) { /* padding: no dgate; the writing form zeroes its dye row */
        if (SET && dye)
            for (int c = lane; c < C; c += 32) dye[(size_t)j * C + c] = 0.0f;
        return;
    }
    float g = gate[a];
    const float *d = dout + (size_t)(a / K) * C, *y = ye + (size_t)j * C;
    float *dy = dye ? dye + (size_t)j * C : NULL;
    float acc = 0;
    for (int c = lane; c < C; c += 32) {
        float dv = d[c];
        if (dy) {
            if (SET) dy[c] = g * dv;
            else dy[c] += g * dv;
        }
        acc += dv * y[c];
    }
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) dgate[a] += acc;
}
#endif
