/* Fused softmax attention on the tensor cores, for the bf16 mode (sm_80+): the op contract
 * of flash_cuda.cu (no stored P, rowstat = log-sum-exp, the same dropout draws), with every
 * product an mma.sync m16n8k16 on bf16 operands with fp32 accumulation. q, k, v, dO stay
 * fp32 in memory; each tile is rounded to bf16 (round to nearest even) as it is staged in
 * shared memory, and P and dS are rounded to bf16 where they enter a product (the rounding
 * of the bf16 mode's GEMMs; softmax statistics, dS's factors and every sum stay fp32).
 *
 * Kernels (128 threads = 4 warps; warp w owns 16 rows of the block's 64):
 *   k_fat_fwd     block per (64 queries, head, batch): over 64-key tiles S = Q Kᵀ (16 x 64
 *                 per warp in registers), online softmax in exp2 units, O += P̃ V with P̃
 *                 taken from S's accumulator registers as the A operand (no shared-memory
 *                 round trip), out = O / l and lse.
 *   k_fat_bwd_q   block per (64 queries, head, batch): over 64-key tiles S and dP̃ = dO Vᵀ,
 *                 dS = P (dP̃ m - D) / sqrt(hs), dq += dS K.
 *   k_fat_bwd_kv  block per (64 keys, kv head, batch): over the group's query heads in order
 *                 and BQ-query tiles, Sᵀ = K Qᵀ and dP̃ᵀ = V dOᵀ, dv += P̃ᵀ dO, dk += dSᵀ Q.
 * Fragment layouts are PTX's for mma.m16n8k16 (lane = 4 g + t): A holds rows g, g + 8 and
 * columns 2t, 2t + 1, 2t + 8, 2t + 9; B columns (n) g and rows (k) 2t, 2t + 1, 2t + 8,
 * 2t + 9; C rows g, g + 8 and columns 2t, 2t + 1. Shared tiles are stored so both operands
 * read 32-bit pairs along k: row-major [row][HS + 8] for Q, K, V, dO as A or as a B whose
 * k is the channel, transposed [channel][rows + 8] where k runs over tokens. The 8-element
 * pad makes each fragment load hit 32 distinct banks.
 * Every sum runs in a fixed order and each output element has one writer: no atomics, the
 * same inputs give the same bits. HS in {32, 64, 128} (hs padded with zeros). */
#include <cuda_bf16.h>
#include "cuda_internal.cuh"
#include "flash_tc_kernels.cuh"

static inline cudaStream_t S(void) { return tbc_g->stream; }

static int tc_bq(int HS) { return HS > 64 ? 32 : 64; }
static size_t tc_smem_fwd(int HS) { return 2 * ((size_t)(TC_BR + TC_BC) * (HS + 8) + (size_t)HS * (TC_BC + 8)); }
static size_t tc_smem_q(int HS) { return 2 * ((size_t)(2 * TC_BR + 2 * TC_BC) * (HS + 8) + (size_t)HS * (TC_BC + 8)); }
static size_t tc_smem_kv(int HS) {
    size_t bq = (size_t)tc_bq(HS);
    return 2 * ((2 * TC_BR + 2 * bq) * (HS + 8) + 2 * (size_t)HS * (bq + 8));
}

/* Whether the tensor-core kernels serve head size hs here: turned on (TB_CUDA_TC=1 or
 * tb_cuda_tensor_core_tiles), the bf16 mode (sm_80+), and the tiles fit the block's
 * shared memory (+ the kernels' static arrays). */
int tbc_flash_tc_fits(int hs) {
    if (!(tbc_g->tc_tiles & TB_CUDA_TC_ATTN) || tbc_g->prec != TB_PREC_BF16 || tbc_g->cc_major < 8) return 0;
    int HS = hs <= 32 ? 32 : hs <= 64 ? 64 : hs <= 128 ? 128 : 0;
    if (!HS) return 0;
    size_t need = tc_smem_fwd(HS);
    if (tc_smem_q(HS) > need) need = tc_smem_q(HS);
    if (tc_smem_kv(HS) > need) need = tc_smem_kv(HS);
    return need + 5120 <= tbc_smem_optin_limit();
}

template <int HS>
static void tc_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
                   const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    static int allowed;
    size_t smem = tc_smem_fwd(HS);
    tbc_smem_allow(k_fat_fwd<HS>, smem, 0, &allowed);
    dim3 grid((unsigned)((T + TC_BR - 1) / TC_BR), (unsigned)H, (unsigned)B);
    float sl2 = (float)(1.0 / sqrt((double)hs)) * TC_LOG2E;
    k_fat_fwd<HS><<<grid, TC_THREADS, smem, S()>>>(out, lse, q, k, v, ldq, ldkv, mask, d, site, T, H, Hkv, hs, sl2);
    TBC_LAUNCHED();
}

template <int HS>
static void tc_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                   const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                   tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    constexpr int BQ = HS > 64 ? 32 : 64;
    static int allowed_q, allowed_kv;
    float scale = (float)(1.0 / sqrt((double)hs));
    size_t sq = tc_smem_q(HS), skv = tc_smem_kv(HS);
    tbc_smem_allow(k_fat_bwd_q<HS>, sq, 0, &allowed_q);
    tbc_smem_allow(k_fat_bwd_kv<HS, BQ>, skv, 0, &allowed_kv);
    dim3 gq((unsigned)((T + TC_BR - 1) / TC_BR), (unsigned)H, (unsigned)B);
    k_fat_bwd_q<HS><<<gq, TC_THREADS, sq, S()>>>(dq, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, T, H, Hkv, hs,
                                                 scale);
    TBC_LAUNCHED();
    dim3 gkv((unsigned)((T + TC_BR - 1) / TC_BR), (unsigned)Hkv, (unsigned)B);
    k_fat_bwd_kv<HS, BQ><<<gkv, TC_THREADS, skv, S()>>>(dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, T,
                                                        H, Hkv, hs, scale);
    TBC_LAUNCHED();
}

void tbc_flash_tc_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq,
                      size_t ldkv, const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv,
                      int hs) {
    if (hs <= 32) tc_fwd<32>(out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
    else if (hs <= 64) tc_fwd<64>(out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
    else tc_fwd<128>(out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
}

void tbc_flash_tc_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                      const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                      tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    if (hs <= 32) tc_bwd<32>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
    else if (hs <= 64) tc_bwd<64>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
    else tc_bwd<128>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
}
