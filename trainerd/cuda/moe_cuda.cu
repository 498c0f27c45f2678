/* MoE routing, gather and scatter on CUDA (MODEL.md 7), with no host synchronisation:
 * route: a thread per token (softmax, top-K, gates: the CPU's sequential float order);
 * a block per expert counts its assignments and sums its probability column (fixed
 * trees); one thread forms the capacity-limited offsets and L_bal; a block per expert
 * then ranks its assignments in token order (block scan), keeps the first `capacity`,
 * writes `order` and marks the rest dropped in sel. Gather/scatter backward-sums go
 * through a stable sort by token (tbc_sort_pairs) and one owner per token adding its
 * rows in `order` order: the CPU's order, no atomics. */
#include <math.h>
#include "cuda_internal.cuh"
#include "moe_kernels.cuh"

#define EW 256
static inline cudaStream_t S(void) { return tbc_g->stream; }

__global__ void k_moe_token(float *probs, int32_t *sel, float *gate, const float *logits, int ntok, int E, int K,
                            int renorm) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= ntok) return;
    const float *lt = logits + (size_t)t * E;
    float *pt = probs + (size_t)t * E;
    float mx = lt[0];
    for (int e = 1; e < E; e++)
        if (lt[e] > mx) mx = lt[e];
    float sum = 0;
    for (int e = 0; e < E; e++) sum += (pt[e] = expf(lt[e] - mx));
    for (int e = 0; e < E; e++) pt[e] /= sum;
    int32_t *st = sel + (size_t)t * K;
    float psum = 0;
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int jj = 0; jj < j; jj++) taken |= st[jj] == e;
            if (taken) continue;
            if (best < 0 || pt[e] > pt[best]) best = e;
        }
        st[j] = best;
        psum += pt[best];
    }
    for (int j = 0; j < K; j++) gate[(size_t)t * K + j] = renorm ? pt[st[j]] / psum : pt[st[j]];
}

/* Block e: cnt[e] = #{a : sel[a] == e or -1-e}; pe[e] = Σ_t probs[t, e] (double). */
__global__ void k_moe_count(double *pe, long long *cnt, const int32_t *sel, const float *probs, int ntok, int E,
                            int K, int with_probs) {
    __shared__ double sh[EW];
    int e = blockIdx.x;
    size_t A = (size_t)ntok * K;
    double c = 0, p = 0;
    for (size_t a = threadIdx.x; a < A; a += EW) c += sel[a] == e || sel[a] == -1 - e;
    if (with_probs)
        for (int t = threadIdx.x; t < ntok; t += EW) p += probs[(size_t)t * E + e];
    c = tbc_block_sum_d(c, sh);
    p = tbc_block_sum_d(p, sh);
    if (threadIdx.x == 0) {
        cnt[e] = (long long)c;
        if (with_probs) pe[e] = p;
    }
}

__global__ void k_moe_offsets(int32_t *offsets, float *lbal, const long long *cnt, const double *pe, long long cap,
                              int ntok, int E, int K) {
    if (threadIdx.x || blockIdx.x) return;
    offsets[0] = 0;
    double lb = 0;
    for (int e = 0; e < E; e++) {
        long long kept = cnt[e] < cap ? cnt[e] : cap;
        offsets[e + 1] = offsets[e] + (int32_t)kept;
        lb += ((double)cnt[e] / ((double)K * (double)ntok)) * (pe[e] / (double)ntok);
    }
    lbal[0] = (float)((double)E * lb);
}

/* Block e ranks its assignments in token order: the first cap are kept (order), the rest
 * marked -1-e in sel. Other blocks only read entries equal to their own expert, and this
 * block only rewrites entries equal to e, so the blocks do not interfere. */
__global__ void k_moe_place(int32_t *order, int32_t *sel, const int32_t *offsets, long long cap, int ntok, int K) {
    __shared__ int wsum[EW / 32];
    __shared__ long long base;
    int e = blockIdx.x, lane = threadIdx.x % 32, w = threadIdx.x / 32;
    size_t A = (size_t)ntok * K;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    for (size_t a0 = 0; a0 < A; a0 += EW) {
        size_t a = a0 + threadIdx.x;
        int flag = a < A && sel[a] == e;
        unsigned m = __ballot_sync(0xffffffffu, flag);
        int excl = __popc(m & ((1u << lane) - 1u));
        if (lane == 0) wsum[w] = __popc(m);
        __syncthreads();
        int before = 0, total = 0;
        for (int k = 0; k < EW / 32; k++) {
            if (k < w) before += wsum[k];
            total += wsum[k];
        }
        long long rank = base + before + excl;
        if (flag) {
            if (rank < cap)
                order[offsets[e] + rank] = (int32_t)a;
            else
                sel[a] = -1 - e;
        }
        __syncthreads();
        if (threadIdx.x == 0) base += total;
        __syncthreads();
    }
}

static long long moe_cap(double cf, int K, int ntok, int E) {
    return cf > 0 ? (long long)ceil(cf * (double)K * (double)ntok / (double)E) : (long long)INT64_MAX;
}

static void cu_moe_route_forward(real *probs, int32_t *sel, real *gate, int32_t *order, int32_t *offsets, real *lbal,
                                 const real *logits, int ntok, int E, int K, int renorm, double cf,
                                 const struct tb_backend *be) {
    (void)be;
    if (E > TB_MOE_MAX_EXPERTS || K > E || K < 1 || E < 1)
        tbc_fatal("moe_route_forward", __FILE__, __LINE__, "E or K out of range");
    double *pe = (double *)tbc_scratch(TBC_SCR_SEQ_A, (size_t)E * sizeof(double));
    long long *cnt = (long long *)tbc_scratch(TBC_SCR_SEQ_B, (size_t)E * sizeof(long long));
    if (ntok > 0) {
        k_moe_token<<<(ntok + 127) / 128, 128, 0, S()>>>(probs, sel, gate, logits, ntok, E, K, renorm);
        TBC_LAUNCHED();
    }
    k_moe_count<<<E, EW, 0, S()>>>(pe, cnt, sel, probs, ntok, E, K, 1);
    TBC_LAUNCHED();
    long long cap = moe_cap(cf, K, ntok, E);
    k_moe_offsets<<<1, 1, 0, S()>>>(offsets, lbal, cnt, pe, cap, ntok > 0 ? ntok : 1, E, K);
    TBC_LAUNCHED();
    k_moe_place<<<E, EW, 0, S()>>>(order, sel, offsets, cap, ntok, K);
    TBC_LAUNCHED();
}

__global__ void k_moe_dbal(float *dbal, const long long *cnt, float bal_scale, int ntok, int E, int K) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    dbal[e] = (float)((double)bal_scale * (double)E * ((double)cnt[e] / ((double)K * (double)ntok)) / (double)ntok);
}

__global__ void k_moe_route_bwd(float *dlogits, const float *dgate, const float *probs, const int32_t *sel,
                                const float *dbal, int ntok, int E, int K, int renorm) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= ntok) return;
    float dp[TB_MOE_MAX_EXPERTS];
    const float *pt = probs + (size_t)t * E, *dg = dgate + (size_t)t * K;
    const int32_t *st = sel + (size_t)t * K;
    for (int e = 0; e < E; e++) dp[e] = dbal[e];
    if (renorm) {
        float Ssum = 0, cross = 0;
        for (int j = 0; j < K; j++) {
            int e = st[j] >= 0 ? st[j] : -1 - st[j];
            Ssum += pt[e];
        }
        for (int j = 0; j < K; j++)
            if (st[j] >= 0) cross += dg[j] * pt[st[j]];
        for (int j = 0; j < K; j++) {
            int e = st[j] >= 0 ? st[j] : -1 - st[j];
            dp[e] += (st[j] >= 0 ? dg[j] / Ssum : 0) - cross / (Ssum * Ssum);
        }
    } else {
        for (int j = 0; j < K; j++)
            if (st[j] >= 0) dp[st[j]] += dg[j];
    }
    float dot = 0;
    for (int e = 0; e < E; e++) dot += pt[e] * dp[e];
    float *dl = dlogits + (size_t)t * E;
    for (int e = 0; e < E; e++) dl[e] += pt[e] * (dp[e] - dot);
}

static void cu_moe_route_backward(real *dlogits, const real *dgate, const real *probs, const int32_t *sel,
                                  real bal_scale, int ntok, int E, int K, int renorm, const struct tb_backend *be) {
    (void)be;
    if (E > TB_MOE_MAX_EXPERTS || E < 1) tbc_fatal("moe_route_backward", __FILE__, __LINE__, "E out of range");
    if (ntok <= 0) return;
    long long *cnt = (long long *)tbc_scratch(TBC_SCR_SEQ_B, (size_t)E * sizeof(long long));
    float *dbal = (float *)tbc_scratch(TBC_SCR_SEQ_C, (size_t)E * sizeof(float));
    k_moe_count<<<E, EW, 0, S()>>>(NULL, cnt, sel, probs, ntok, E, K, 0);
    TBC_LAUNCHED();
    k_moe_dbal<<<(E + 127) / 128, 128, 0, S()>>>(dbal, cnt, bal_scale, ntok, E, K);
    TBC_LAUNCHED();
    k_moe_route_bwd<<<(ntok + 127) / 128, 128, 0, S()>>>(dlogits, dgate, probs, sel, dbal, ntok, E, K, renorm);
    TBC_LAUNCHED();
}

/* Row copies of the MoE ops: a block row (blockIdx.y, grid-striding) per row, threads over
 * its columns, 16 bytes a thread where the row length and the bases allow (tbc_vec4): no
 * 64-bit division per element (what the element-per-thread forms spent most of their time
 * on), the same values. */
static dim3 moe_row_grid(int rows, int cols) {
    unsigned gx = (unsigned)((cols + EW - 1) / EW);
    return dim3(gx < 64 ? gx : 64, (unsigned)(rows < 65535 ? rows : 65535));
}

/* xe[j, ·] = x[order[j] / K, ·], or zero for a padding row (order[j] < 0). */
template <bool V4>
__global__ void k_moe_gather(float *xe, const float *x, const int32_t *order, int n, int K, int C) {
    int nc = V4 ? C / 4 : C;
    for (int j = blockIdx.y; j < n; j += gridDim.y) {
        int a = order[j];
        const float *src = a < 0 ? NULL : x + (size_t)(a / K) * C;
        float *dst = xe + (size_t)j * C;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < nc; c += gridDim.x * blockDim.x) {
            if (V4)
                reinterpret_cast<float4 *>(dst)[c] =
                    src ? reinterpret_cast<const float4 *>(src)[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            else
                dst[c] = src ? src[c] : 0.0f;
        }
    }
}

static void cu_moe_gather(real *xe, const real *x, const int32_t *order, int n, int K, int C,
                          const struct tb_backend *be) {
    (void)be;
    if (n <= 0 || C <= 0) return;
    if (tbc_vec4((size_t)C, xe, x, x))
        k_moe_gather<true><<<moe_row_grid(n, C / 4), EW, 0, S()>>>(xe, x, order, n, K, C);
    else
        k_moe_gather<false><<<moe_row_grid(n, C), EW, 0, S()>>>(xe, x, order, n, K, C);
    TBC_LAUNCHED();
}

/* keys[j] = order[j] / K (the token), vals[j] = j; scale[j] = gate[order[j]] if gate.
 * A padding row (order[j] < 0) gets key TBC_SEGMENT_SKIP: sorted last, added nowhere. */
__global__ void k_moe_keys(int32_t *keys, int32_t *vals, float *scale, const int32_t *order, const float *gate, int n,
                           int K) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    int a = order[j];
    keys[j] = a < 0 ? TBC_SEGMENT_SKIP : a / K;
    vals[j] = j;
    if (gate) scale[j] = a < 0 ? 0.0f : gate[a];
}

/* pad[e·P + i] = order[offsets[e] + i] for i below expert e's count, else -1; slot[that
 * assignment] = e·P + i. */
__global__ void k_moe_pad_order(int32_t *pad, int32_t *slot, const int32_t *order, const int32_t *offsets, int E,
                                int P) {
    size_t r = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (r >= (size_t)E * P) return;
    int e = (int)(r / P), i = (int)(r - (size_t)e * P);
    int o = offsets[e];
    int a = i < offsets[e + 1] - o ? order[o + i] : -1;
    pad[r] = a;
    if (a >= 0) slot[a] = (int32_t)r;
}

static void cu_moe_pad_order(int32_t *pad, int32_t *slot, const int32_t *order, const int32_t *offsets, int E,
                             int P, const struct tb_backend *be) {
    (void)be;
    if (E <= 0 || P <= 0) return;
    k_moe_pad_order<<<tbc_blocks((size_t)E * P, EW), EW, 0, S()>>>(pad, slot, order, offsets, E, P);
    TBC_LAUNCHED();
}

/* dst[t, c] += Σ (gate[a] ·) src[slot[a], c] (SET: dst = 0 + Σ ..., dst not read) over token
 * t's kept assignments a (sel[a] >= 0)
 * in ascending slot order (expert order; the next smallest slot found by a scan of the K,
 * which are distinct): the CPU's sequence of adds, no sort. A block row per token (the
 * ordered slots and gates found once, by thread 0, into shared memory), threads over the
 * columns as in k_moe_gather. */
template <bool GATED, bool V4, bool SET = false>
__global__ void k_moe_slots_sum(float *dst, const float *src, const float *gate, const int32_t *sel,
                                const int32_t *slot, int ntok, int K, int C) {
    __shared__ int rs[TB_MOE_MAX_EXPERTS];
    __shared__ float rg[TB_MOE_MAX_EXPERTS];
    __shared__ int nr;
    int nc = V4 ? C / 4 : C;
    for (int t = blockIdx.y; t < ntok; t += gridDim.y) {
        if (threadIdx.x == 0) {
            const int32_t *st = sel + (size_t)t * K, *sl = slot + (size_t)t * K;
            int prev = -1, m = 0;
            for (int j = 0; j < K; j++) {
                int best = -1, bs = 0;
                for (int k = 0; k < K; k++) {
                    if (st[k] < 0) continue;
                    int v = sl[k];
                    if (v > prev && (best < 0 || v < bs)) best = k, bs = v;
                }
                if (best < 0) break;
                rs[m] = bs;
                rg[m++] = GATED ? gate[(size_t)t * K + best] : 1.0f;
                prev = bs;
            }
            nr = m;
        }
        __syncthreads();
        float *d = dst + (size_t)t * C;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < nc; c += gridDim.x * blockDim.x) {
            if (V4) {
                float4 acc = SET ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : reinterpret_cast<const float4 *>(d)[c];
                for (int r = 0; r < nr; r++) {
                    float4 x = reinterpret_cast<const float4 *>(src + (size_t)rs[r] * C)[c];
                    float g = rg[r];
                    acc.x += GATED ? g * x.x : x.x, acc.y += GATED ? g * x.y : x.y;
                    acc.z += GATED ? g * x.z : x.z, acc.w += GATED ? g * x.w : x.w;
                }
                reinterpret_cast<float4 *>(d)[c] = acc;
            } else {
                float acc = SET ? 0.0f : d[c];
                for (int r = 0; r < nr; r++) {
                    float x = src[(size_t)rs[r] * C + c];
                    acc += GATED ? rg[r] * x : x;
                }
                d[c] = acc;
            }
        }
        __syncthreads(); /* every thread is done with this token's slots */
    }
}

template <bool GATED, bool SET = false>
static void moe_slots_sum(float *dst, const float *src, const float *gate, const int32_t *sel, const int32_t *slot,
                          int ntok, int K, int C) {
    if (ntok <= 0 || C <= 0) return;
    if (tbc_vec4((size_t)C, dst, src, src))
        k_moe_slots_sum<GATED, true, SET>
            <<<moe_row_grid(ntok, C / 4), EW, 0, S()>>>(dst, src, gate, sel, slot, ntok, K, C);
    else
        k_moe_slots_sum<GATED, false, SET><<<moe_row_grid(ntok, C), EW, 0, S()>>>(dst, src, gate, sel, slot, ntok, K, C);
    TBC_LAUNCHED();
}

static void cu_moe_scatter_slots(real *out, const real *ye, const real *gate, const int32_t *sel, const int32_t *slot,
                                 int ntok, int K, int C, const struct tb_backend *be) {
    (void)be;
    moe_slots_sum<true>(out, ye, gate, sel, slot, ntok, K, C);
}

static void cu_moe_scatter_slots_set(real *out, const real *ye, const real *gate, const int32_t *sel,
                                     const int32_t *slot, int ntok, int K, int C, const struct tb_backend *be) {
    (void)be;
    moe_slots_sum<true, true>(out, ye, gate, sel, slot, ntok, K, C);
}

static void cu_moe_gather_backward_slots_set(real *dx, const real *dxe, const int32_t *sel, const int32_t *slot,
                                             int ntok, int K, int C, const struct tb_backend *be) {
    (void)be;
    moe_slots_sum<false, true>(dx, dxe, NULL, sel, slot, ntok, K, C);
}

static void cu_moe_gather_backward_slots(real *dx, const real *dxe, const int32_t *sel, const int32_t *slot,
                                         int ntok, int K, int C, const struct tb_backend *be) {
    (void)be;
    moe_slots_sum<false>(dx, dxe, NULL, sel, slot, ntok, K, C);
}

static void moe_token_sum(float *dst, const float *src, const int32_t *order, const float *gate, int n, int K, int C) {
    if (n <= 0 || C <= 0) return;
    int32_t *kin = (int32_t *)tbc_scratch(TBC_SCR_SORT_KIN, (size_t)n * 4);
    int32_t *vin = (int32_t *)tbc_scratch(TBC_SCR_SORT_VIN, (size_t)n * 4);
    int32_t *ko = (int32_t *)tbc_scratch(TBC_SCR_SORT_KOUT, (size_t)n * 4);
    int32_t *vo = (int32_t *)tbc_scratch(TBC_SCR_SORT_VOUT, (size_t)n * 4);
    float *scale = gate ? (float *)tbc_scratch(TBC_SCR_SEQ_D, (size_t)n * 4) : NULL;
    k_moe_keys<<<(n + 255) / 256, 256, 0, S()>>>(kin, vin, scale, order, gate, n, K);
    TBC_LAUNCHED();
    tbc_sort_pairs(ko, vo, kin, vin, n, 31);
    tbc_segment_add(dst, src, ko, vo, scale, n, C);
}

static void cu_moe_gather_backward(real *dx, const real *dxe, const int32_t *order, int n, int K, int C,
                                   const struct tb_backend *be) {
    (void)be;
    moe_token_sum(dx, dxe, order, NULL, n, K, C);
}

static void cu_moe_scatter(real *out, const real *ye, const real *gate, const int32_t *order, int n, int K, int C,
                           const struct tb_backend *be) {
    (void)be;
    moe_token_sum(out, ye, order, gate, n, K, C);
}

template <bool SET>
static void moe_scatter_bwd(real *dye, real *dgate, const real *dout, const real *ye, const real *gate,
                            const int32_t *order, int n, int K, int C) {
    if (n <= 0) return;
    /* 8 warps (rows) per block */
    k_moe_scatter_bwd<SET><<<(unsigned)((n + 7) / 8), 256, 0, S()>>>(C > 0 ? dye : NULL, dgate, dout, ye, gate,
                                                                     order, n, K, C);
    TBC_LAUNCHED();
}
static void cu_moe_scatter_backward(real *dye, real *dgate, const real *dout, const real *ye, const real *gate,
                                    const int32_t *order, int n, int K, int C, const struct tb_backend *be) {
    (void)be;
    moe_scatter_bwd<false>(dye, dgate, dout, ye, gate, order, n, K, C);
}
static void cu_moe_scatter_backward_set(real *dye, real *dgate, const real *dout, const real *ye, const real *gate,
                                        const int32_t *order, int n, int K, int C, const struct tb_backend *be) {
    (void)be;
    moe_scatter_bwd<true>(dye, dgate, dout, ye, gate, order, n, K, C);
}

void tbc_moe_init(tb_ops_seq *ops) {
    ops->moe_route_forward = cu_moe_route_forward;
    ops->moe_route_backward = cu_moe_route_backward;
    ops->moe_pad_order = cu_moe_pad_order;
    ops->moe_scatter_slots = cu_moe_scatter_slots;
    ops->moe_scatter_slots_set = cu_moe_scatter_slots_set;
    ops->moe_gather_backward_slots_set = cu_moe_gather_backward_slots_set;
    ops->moe_gather_backward_slots = cu_moe_gather_backward_slots;
    ops->moe_gather = cu_moe_gather;
    ops->moe_gather_backward = cu_moe_gather_backward;
    ops->moe_scatter = cu_moe_scatter;
    ops->moe_scatter_backward = cu_moe_scatter_backward;
    ops->moe_scatter_backward_set = cu_moe_scatter_backward_set;
}
