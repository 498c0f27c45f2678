/* Fused softmax attention on the tensor cores, for the bf16 mode (sm_80+): the op contract
 * of flash_cuda.cu (no stored P, rowstat = log-sum-exp, the same dropout draws), with every
 * product an mma.sync m16n8k16 on bf16 operands with fp32 accumulation. q, k, v, dO stay
 * fp32 in the model's memory; each call first stages them once as bf16 (k_fat_prep: round
 * to nearest even, per-head row-major blocks padded to whole 64-row tiles, tc_fat_ws), and
 * P and dS are rounded to bf16 where they enter a product (the rounding of the bf16 mode's
 * GEMMs; softmax statistics, dS's factors and every sum stay fp32).
 * The forward's two products are the exception: q, k, v and P enter them as bf16 pairs
 * hi + lo, and S = Ql Khᵀ + Qh Klᵀ + Qh Khᵀ (tc_mm_ss3), O = Pl Vh + Ph Vl + Ph Vh
 * (tc_mm_rs3), ~2^-16 relative instead of 2^-8. For S because an error e in a score
 * multiplies its probability by exp(e) (scores of a few tens put plain bf16's output
 * 3.7e-2 off; split, 3e-3). For O because the forward's output feeds discrete decisions
 * downstream: the MoE router's top-K. With bf16 P (output ~2.5e-3 off) one token of the
 * tiny model's layer 4 changed experts on the H100 (2026-11-23: L_bal 2e-5 off instead of
 * 3e-7, that layer's output 5.6% off, two gradient tensors past 2e-2); split, the forward
 * is as close to the CPU as the fp32 kernel's. Four more mma per tile in the forward; the
 * backward's products (gradients only) stay plain bf16, with the split scores.
 * Dropout: the keep bits of the whole call (a 64-bit word per row and 64-key tile, the
 * same Philox draws as tbc_drop_factor) are drawn by the staging launch, once per call.
 *
 * Kernels (128 threads = 4 warps; warp w owns 16 rows of the block's 64); K, V, Q and dO
 * tiles stream through two shared-memory stages by cp.async, a tile ahead of the compute:
 *   k_fat_fwd     block per (64 queries, head, batch): over 64-key tiles S = Q Kᵀ (16 x 64
 *                 per warp in registers), online softmax in exp2 units, O += P̃ V with P̃
 *                 taken from S's accumulator registers as the A operand (no shared-memory
 *                 round trip), out = O / l and lse.
 *   k_fat_bwd_kv  block per (64 keys, kv head, batch): over the group's query heads in order
 *                 and BQ-query tiles, Sᵀ = K Qᵀ and dP̃ᵀ = V dOᵀ, dS = P (dP̃ m - D) /
 *                 sqrt(hs), dv += P̃ᵀ dO, dk += dSᵀ Q; stores dSᵀ in bf16 (Tp x Tp a head).
 *   k_fat_dq      block per (64 queries, head, batch): dq += dS K over 64-key tiles of the
 *                 stored dSᵀ (no recomputation of S, P or dP̃).
 * Fragment layouts are PTX's for mma.m16n8k16 (lane = 4 g + t): A holds rows g, g + 8 and
 * columns 2t, 2t + 1, 2t + 8, 2t + 9; B columns (n) g and rows (k) 2t, 2t + 1, 2t + 8,
 * 2t + 9; C rows g, g + 8 and columns 2t, 2t + 1. Shared tiles are row-major [row][cols +
 * 8]; fragments come by ldmatrix, through its transposing form where k runs along a tile's
 * rows (V, dO and Q as B over tokens, dSᵀ as A). The 8-element pad puts the eight 16-byte
 * rows of each ldmatrix in distinct banks.
 * Every sum runs in a fixed order and each output element has one writer: no atomics, the
 * same inputs give the same bits. HS in {32, 64, 128} (hs padded with zeros). */
#include <cuda_bf16.h>
#include "cuda_internal.cuh"
#include "flash_tc_kernels.cuh"

static inline cudaStream_t S(void) { return tbc_g->stream; }


/* Whether the tensor-core kernels serve head size hs here: turned on (TB_CUDA_TC=1 or
 * tb_cuda_tensor_core_tiles), the bf16 mode (sm_80+), and the tiles fit the block's
 * shared memory (+ the kernels' static arrays). */
int tbc_flash_tc_fits(int hs) {
    if (!(tbc_g->tc_tiles & TB_CUDA_TC_ATTN) || tbc_g->prec != TB_PREC_BF16 || tbc_g->cc_major < 8) return 0;
    int HS = hs <= 32 ? 32 : hs <= 64 ? 64 : hs <= 128 ? 128 : 0;
    if (!HS) return 0;
    size_t need = tc_fat_smem_fwd(HS);
    if (tc_fat_smem_q(HS) > need) need = tc_fat_smem_q(HS);
    if (tc_fat_smem_kv(HS, tbc_g->tc_split) > need) need = tc_fat_smem_kv(HS, tbc_g->tc_split);
    return need + 5120 <= tbc_smem_optin_limit();
}

/* The staged operands of one call (tc_fat_ws) in their scratch region, and the k_fat_prep
 * launch that fills them. */
static tc_fat_ws tc_ws(int B, int T, int H, int Hkv, int HS) {
    size_t n = tc_fat_ws_elems(B, T, H, Hkv, HS);
    return tc_fat_ws_carve((tc_bf16 *)tbc_scratch(TBC_SCR_ATTN_TC, n * sizeof(tc_bf16)), B, T, H, Hkv, HS);
}
/* Stages the jobs and, with dropout, draws the call's keep bits (TBC_SCR_ATTN_DROP) in the
 * same launch; returns the bits (NULL without dropout). */
template <int HS>
static const uint64_t *tc_prep(tc_prep_jobs &J, const tbc_drop &d, uint32_t site, int B, int T, int H, int hs) {
    if (!tc_prep_fits(B, T, H, HS))
        tbc_fatal("attention", __FILE__, __LINE__, "tensor-core staging above 2^32 elements a tensor");
    uint64_t *dm = d.active ? (uint64_t *)tbc_scratch(TBC_SCR_ATTN_DROP, tc_drop_words(B, T, H) * sizeof(uint64_t))
                            : NULL;
    tc_prep_drop(J, d, site, B, T, H, dm);
    size_t blocks = tc_prep_blocks(B, T, H, HS), cap = (size_t)tbc_g->sm_count * 16;
    unsigned gx = (unsigned)(blocks < cap ? blocks : cap);
    k_fat_prep<HS><<<gx * tc_prep_tasks(J), 256, 0, S()>>>(J, T, tc_fat_tp(T), hs, B);
    TBC_LAUNCHED();
    return J.dm;
}

template <int HS, int SPLIT>
static void tc_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
                   const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    static int allowed;
    tc_fat_ws ws = tc_ws(B, T, H, Hkv, HS);
    tc_prep_jobs J = tc_prep_fwd_jobs(ws, SPLIT, q, k, v, ldq, ldkv, H, Hkv);
    const uint64_t *dm = tc_prep<HS>(J, d, site, B, T, H, hs);
    size_t smem = tc_fat_smem_fwd(HS);
    tbc_smem_allow(k_fat_fwd<HS, SPLIT>, smem, 0, &allowed);
    dim3 grid((unsigned)(tc_fat_tp(T) / TC_BR), (unsigned)H, (unsigned)B);
    float sl2 = (float)(1.0 / sqrt((double)hs)) * TC_LOG2E;
    k_fat_fwd<HS, SPLIT><<<grid, TC_THREADS, smem, S()>>>(out, lse, ws, mask, dm, d.scale, T, tc_fat_tp(T), H, Hkv,
                                                          hs, sl2);
    TBC_LAUNCHED();
}

template <int HS, int SPLIT>
static void tc_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                   const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                   tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs, int set) {
    constexpr int BQ = tc_fat_bq(HS);
    static int allowed_q, allowed_kv;
    float scale = (float)(1.0 / sqrt((double)hs));
    int Tp = tc_fat_tp(T);
    tc_fat_ws ws = tc_ws(B, T, H, Hkv, HS);
    tc_prep_jobs J = tc_prep_bwd_jobs(ws, SPLIT, q, dout, k, v, ldq, ldkv, H, Hkv, hs);
    const uint64_t *dm = tc_prep<HS>(J, d, site, B, T, H, hs);
    size_t sq = tc_fat_smem_q(HS), skv = tc_fat_smem_kv(HS, SPLIT);
    tbc_smem_allow(k_fat_dq<HS, SPLIT>, sq, 0, &allowed_q);
    tbc_smem_allow(k_fat_bwd_kv<HS, BQ, SPLIT>, skv, 0, &allowed_kv);
    /* dSᵀ (bf16, Tp x Tp per head) from the dk / dv kernel to the dq kernel; the plain
     * kernels' dS slot (never in use at the same time) */
    tc_bf16 *dst = (tc_bf16 *)tbc_scratch(TBC_SCR_ATTN_DS, (size_t)B * H * Tp * Tp * sizeof(tc_bf16));
    dim3 gkv((unsigned)(Tp / TC_BR), (unsigned)Hkv, (unsigned)B);
    k_fat_bwd_kv<HS, BQ, SPLIT><<<gkv, TC_THREADS, skv, S()>>>(dk, dv, dst, lse, D, ws, ldkv, mask, dm, d.scale, T,
                                                               Tp, H, Hkv, hs, scale, set);
    TBC_LAUNCHED();
    dim3 gq((unsigned)(Tp / TC_BR), (unsigned)H, (unsigned)B);
    k_fat_dq<HS, SPLIT><<<gq, TC_THREADS, sq, S()>>>(dq, dst, ws, ldq, T, Tp, H, Hkv, hs, set);
    TBC_LAUNCHED();
}

/* The head-size class and the split products (tbc_g->tc_split) as template arguments. */
#define TC_DISPATCH(fn, ...)                                                                             \
    do {                                                                                                 \
        int sp_ = tbc_g->tc_split;                                                                       \
        if (hs <= 32) sp_ == 3 ? fn<32, 3>(__VA_ARGS__) : sp_ == 1 ? fn<32, 1>(__VA_ARGS__) : sp_ == 0 ? fn<32, 0>(__VA_ARGS__) : fn<32, 7>(__VA_ARGS__); \
        else if (hs <= 64)                                                                               \
            sp_ == 3 ? fn<64, 3>(__VA_ARGS__) : sp_ == 1 ? fn<64, 1>(__VA_ARGS__) : sp_ == 0 ? fn<64, 0>(__VA_ARGS__) : fn<64, 7>(__VA_ARGS__); \
        else sp_ == 3 ? fn<128, 3>(__VA_ARGS__) : sp_ == 1 ? fn<128, 1>(__VA_ARGS__) : sp_ == 0 ? fn<128, 0>(__VA_ARGS__) : fn<128, 7>(__VA_ARGS__); \
    } while (0)

void tbc_flash_tc_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq,
                      size_t ldkv, const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv,
                      int hs) {
    TC_DISPATCH(tc_fwd, out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs);
}

void tbc_flash_tc_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                      const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                      tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs, int set) {
    TC_DISPATCH(tc_bwd, dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs, set);
}
