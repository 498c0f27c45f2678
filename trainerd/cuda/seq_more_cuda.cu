/* The seq family on CUDA, continued: the element-wise ops of the Mamba and MoE layers
 * (the CPU's expressions), the causal depthwise conv (each output and each input
 * gradient owned by one thread, taps in the CPU's order; weight and bias gradients by
 * fixed row chunks summed in order) and the Titan memory read (the retention kernel's
 * quadratic form with per-head γ = σ(decay), c = 1 - γ, L2-normalised q and k; dγ and dc
 * per-row partials reduced per head in a fixed order). No atomics. */
#include "cuda_internal.cuh"

#define EW 256
#define GRID_STRIDE(i, n)                                                              \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);           \
         i += (size_t)gridDim.x * blockDim.x)

static inline cudaStream_t S(void) { return tbc_g->stream; }

__device__ __forceinline__ float sigm(float x) {
    return x >= 0 ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
}

/* ---- element-wise ---------------------------------------------------------------- */

/* The activation and its backward per element (the CPU's expressions). */
__device__ __forceinline__ float act_f(float v, int gelu) {
    return gelu ? 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)) : v * sigm(v);
}
__device__ __forceinline__ float act_g(float v, float d, int gelu) {
    if (gelu) {
        const float inv_sqrt_2pi = (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);
        float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        return d * (cdf + v * pdf);
    }
    float s = sigm(v);
    return d * s * (1.0f + v * (1.0f - s));
}

/* VEC: four elements a thread through 16-byte loads and stores (n % 4 == 0, every buffer
 * 16-byte aligned), the same per-element values. */
template <bool VEC>
__global__ void k_act_fwd(float *y, const float *x, size_t n, int gelu) {
    if (VEC) {
        GRID_STRIDE(q, n / 4) {
            float4 v = reinterpret_cast<const float4 *>(x)[q];
            v.x = act_f(v.x, gelu), v.y = act_f(v.y, gelu), v.z = act_f(v.z, gelu), v.w = act_f(v.w, gelu);
            reinterpret_cast<float4 *>(y)[q] = v;
        }
    } else {
        GRID_STRIDE(i, n) y[i] = act_f(x[i], gelu);
    }
}
/* SET: dx = ... (not read) instead of dx += ... (act_backward_set). */
template <bool SET, bool VEC>
__global__ void k_act_bwd(float *dx, const float *dy, const float *x, size_t n, int gelu) {
    if (VEC) {
        GRID_STRIDE(q, n / 4) {
            float4 v = reinterpret_cast<const float4 *>(x)[q], d = reinterpret_cast<const float4 *>(dy)[q], o;
            o.x = act_g(v.x, d.x, gelu), o.y = act_g(v.y, d.y, gelu), o.z = act_g(v.z, d.z, gelu);
            o.w = act_g(v.w, d.w, gelu);
            float4 *dq = reinterpret_cast<float4 *>(dx) + q;
            if (!SET) {
                float4 a = *dq;
                o.x = a.x + o.x, o.y = a.y + o.y, o.z = a.z + o.z, o.w = a.w + o.w;
            }
            *dq = o;
        }
    } else {
        GRID_STRIDE(i, n) {
            float g = act_g(x[i], dy[i], gelu);
            if (SET) dx[i] = g;
            else dx[i] += g;
        }
    }
}
static bool act_vec(size_t n, const void *a, const void *b, const void *c = NULL) {
    return n % 4 == 0 && (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0;
}
static void cu_act_forward(real *y, const real *x, size_t n, int kind, const struct tb_backend *be) {
    (void)be;
    if (!n) return;
    int g = kind == TB_ACT_GELU;
    if (act_vec(n, y, x)) k_act_fwd<true><<<tbc_blocks(n / 4, EW), EW, 0, S()>>>(y, x, n, g);
    else k_act_fwd<false><<<tbc_blocks(n, EW), EW, 0, S()>>>(y, x, n, g);
    TBC_LAUNCHED();
}
template <bool SET>
static void act_backward(real *dx, const real *dy, const real *x, size_t n, int kind) {
    if (!n) return;
    int g = kind == TB_ACT_GELU;
    if (act_vec(n, dx, dy, x)) k_act_bwd<SET, true><<<tbc_blocks(n / 4, EW), EW, 0, S()>>>(dx, dy, x, n, g);
    else k_act_bwd<SET, false><<<tbc_blocks(n, EW), EW, 0, S()>>>(dx, dy, x, n, g);
    TBC_LAUNCHED();
}
static void cu_act_backward(real *dx, const real *dy, const real *x, size_t n, int kind, const struct tb_backend *be) {
    (void)be;
    act_backward<false>(dx, dy, x, n, kind);
}
static void cu_act_backward_set(real *dx, const real *dy, const real *x, size_t n, int kind,
                                const struct tb_backend *be) {
    (void)be;
    act_backward<true>(dx, dy, x, n, kind);
}

__global__ void k_softplus_fwd(float *y, const float *x, const float *bias, size_t rows, int cols) {
    GRID_STRIDE(e, rows * cols) {
        float z = x[e] + bias[e % cols];
        y[e] = z > 20 ? z : log1pf(expf(z));
    }
}
/* g = dy σ(z) goes to dx and to g (scratch) for the column sum into dbias. */
__global__ void k_softplus_bwd(float *dx, float *g, const float *dy, const float *x, const float *bias, size_t rows,
                               int cols) {
    GRID_STRIDE(e, rows * cols) {
        float z = x[e] + bias[e % cols];
        float gv = dy[e] * (z > 20 ? 1.0f : sigm(z));
        dx[e] += gv;
        g[e] = gv;
    }
}
static void cu_softplus_bias_forward(real *y, const real *x, const real *bias, size_t rows, int cols,
                                     const struct tb_backend *be) {
    (void)be;
    if (!rows || cols <= 0) return;
    k_softplus_fwd<<<tbc_blocks(rows * cols, EW), EW, 0, S()>>>(y, x, bias, rows, cols);
    TBC_LAUNCHED();
}
static void cu_softplus_bias_backward(real *dx, real *dbias, const real *dy, const real *x, const real *bias,
                                      size_t rows, int cols, const struct tb_backend *be) {
    (void)be;
    if (!rows || cols <= 0) return;
    float *g = (float *)tbc_scratch(TBC_SCR_SEQ_A, rows * cols * 4);
    k_softplus_bwd<<<tbc_blocks(rows * cols, EW), EW, 0, S()>>>(dx, g, dy, x, bias, rows, cols);
    TBC_LAUNCHED();
    tbc_colsum_add(dbias, g, rows, cols, (size_t)cols);
}

__global__ void k_mul_silu_fwd(float *y, const float *a, const float *g, size_t rows, int cols, int lda, int ldg) {
    GRID_STRIDE(e, rows * cols) {
        size_t r = e / cols, c = e - r * cols;
        float gv = g[r * ldg + c];
        y[e] = a[r * lda + c] * gv * sigm(gv);
    }
}
__global__ void k_mul_silu_bwd(float *da, float *dg, const float *dy, const float *a, const float *g, size_t rows,
                               int cols, int lda, int ldg) {
    GRID_STRIDE(e, rows * cols) {
        size_t r = e / cols, c = e - r * cols;
        float gv = g[r * ldg + c], s = sigm(gv), d = dy[e];
        da[r * lda + c] += d * gv * s;
        dg[r * ldg + c] += d * a[r * lda + c] * s * (1.0f + gv * (1.0f - s));
    }
}
static void cu_mul_silu_forward(real *y, const real *a, const real *g, size_t rows, int cols, int lda, int ldg,
                                const struct tb_backend *be) {
    (void)be;
    if (!rows || cols <= 0) return;
    k_mul_silu_fwd<<<tbc_blocks(rows * cols, EW), EW, 0, S()>>>(y, a, g, rows, cols, lda, ldg);
    TBC_LAUNCHED();
}
static void cu_mul_silu_backward(real *da, real *dg, const real *dy, const real *a, const real *g, size_t rows,
                                 int cols, int lda, int ldg, const struct tb_backend *be) {
    (void)be;
    if (!rows || cols <= 0) return;
    k_mul_silu_bwd<<<tbc_blocks(rows * cols, EW), EW, 0, S()>>>(da, dg, dy, a, g, rows, cols, lda, ldg);
    TBC_LAUNCHED();
}

__global__ void k_cols(float *dst, const float *src, size_t rows, int cols, int ldd, int lds, int add) {
    GRID_STRIDE(e, rows * cols) {
        size_t r = e / cols, c = e - r * cols;
        float v = src[r * lds + c];
        dst[r * ldd + c] = add ? dst[r * ldd + c] + v : v;
    }
}
static void cu_copy_cols(real *dst, const real *src, size_t rows, int cols, int ldd, int lds,
                         const struct tb_backend *be) {
    (void)be;
    if (!rows || cols <= 0) return;
    k_cols<<<tbc_blocks(rows * cols, EW), EW, 0, S()>>>(dst, src, rows, cols, ldd, lds, 0);
    TBC_LAUNCHED();
}
static void cu_add_cols(real *dst, const real *src, size_t rows, int cols, int ldd, int lds,
                        const struct tb_backend *be) {
    (void)be;
    if (!rows || cols <= 0) return;
    k_cols<<<tbc_blocks(rows * cols, EW), EW, 0, S()>>>(dst, src, rows, cols, ldd, lds, 1);
    TBC_LAUNCHED();
}

/* ---- causal depthwise conv -------------------------------------------------------- */

__global__ void k_cconv_fwd(float *y, const float *x, const float *w, const float *bias, int B, int T, int Di, int k) {
    GRID_STRIDE(e, (size_t)B * T * Di) {
        size_t r = e / Di;
        int i = (int)(e - r * Di), t = (int)(r % T);
        float acc = bias[i];
        for (int j = 0; j < k; j++) {
            int ts = t - (k - 1) + j;
            if (ts < 0) continue;
            acc += w[(size_t)i * k + j] * x[(r - t + ts) * Di + i];
        }
        y[e] = acc;
    }
}
/* dx[b, s, i] += Σ_j dy[b, s + k-1-j, i] w[i, j] (j ascending, as the CPU). */
__global__ void k_cconv_dx(float *dx, const float *dy, const float *w, int B, int T, int Di, int k) {
    GRID_STRIDE(e, (size_t)B * T * Di) {
        size_t r = e / Di;
        int i = (int)(e - r * Di), s = (int)(r % T);
        float acc = dx[e];
        for (int j = 0; j < k; j++) {
            int t = s + (k - 1) - j;
            if (t >= T) continue;
            acc += dy[(r - s + t) * Di + i] * w[(size_t)i * k + j];
        }
        dx[e] = acc;
    }
}
/* part[chunk, i, j] (j < k: Σ dy x_shifted; j = k: Σ dy) over a chunk of rows, double. */
__global__ void k_cconv_dw_part(double *part, const float *dy, const float *x, int B, int T, int Di, int k,
                                size_t per) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Di) return;
    size_t rows = (size_t)B * T, r0 = blockIdx.y * per, r1 = r0 + per < rows ? r0 + per : rows;
    double *p = part + ((size_t)blockIdx.y * Di + i) * (k + 1);
    for (int j = 0; j <= k; j++) {
        double s = 0;
        for (size_t r = r0; r < r1; r++) {
            float g = dy[r * Di + i];
            if (j == k) {
                s += g;
                continue;
            }
            int t = (int)(r % T), ts = t - (k - 1) + j;
            if (ts >= 0) s += (double)g * x[(r - t + ts) * Di + i];
        }
        p[j] = s;
    }
}
__global__ void k_cconv_dw_final(float *dw, float *dbias, const double *part, int Di, int k, int chunks) {
    GRID_STRIDE(e, (size_t)Di * (k + 1)) {
        size_t i = e / (k + 1);
        int j = (int)(e - i * (k + 1));
        double s = 0;
        for (int c = 0; c < chunks; c++) s += part[((size_t)c * Di + i) * (k + 1) + j];
        if (j == k)
            dbias[i] += (float)s;
        else
            dw[i * k + j] += (float)s;
    }
}

static void cu_conv_causal_forward(real *y, const real *x, const real *w, const real *bias, int B, int T, int Di,
                                   int k, const struct tb_backend *be) {
    (void)be;
    size_t n = (size_t)B * T * Di;
    if (!n) return;
    k_cconv_fwd<<<tbc_blocks(n, EW), EW, 0, S()>>>(y, x, w, bias, B, T, Di, k);
    TBC_LAUNCHED();
}
static void cu_conv_causal_backward(real *dx, real *dw, real *dbias, const real *dy, const real *x, const real *w,
                                    int B, int T, int Di, int k, const struct tb_backend *be) {
    (void)be;
    size_t rows = (size_t)B * T, n = rows * Di;
    if (!n) return;
    k_cconv_dx<<<tbc_blocks(n, EW), EW, 0, S()>>>(dx, dy, w, B, T, Di, k);
    TBC_LAUNCHED();
    /* chunks of 32 rows (at most 256 chunks): a thread walks its chunk with a dependent
     * load per row, so short chunks and many threads hide the latency (with 256-row
     * chunks the frankenstein Mamba layers' dw took 639 µs a call, seventh session's
     * kernel table) */
    size_t chunks = (rows + 31) / 32;
    if (chunks > 256) chunks = 256;
    size_t per = (rows + chunks - 1) / chunks;
    chunks = (rows + per - 1) / per;
    double *part = (double *)tbc_scratch(TBC_SCR_SEQ_A, chunks * Di * (size_t)(k + 1) * sizeof(double));
    dim3 g((unsigned)((Di + 127) / 128), (unsigned)chunks);
    k_cconv_dw_part<<<g, 128, 0, S()>>>(part, dy, x, B, T, Di, k, per);
    TBC_LAUNCHED();
    k_cconv_dw_final<<<tbc_blocks((size_t)Di * (k + 1), EW), EW, 0, S()>>>(dw, dbias, part, Di, k, (int)chunks);
    TBC_LAUNCHED();
}

/* ---- Titan memory read ------------------------------------------------------------- */

#define TI_WARPS 4
#define TI_PER_LANE 8 /* hs <= 256 */
#define TI_EPS 1e-12f

/* One warp per (token, head): xn = x / max(‖x‖, eps); inv_out[row] = 1 / max(‖x‖, eps),
 * proj_out[row] = ‖x‖ > eps. */
__global__ void k_l2norm_heads(float *xn, const float *x, size_t rows, int hs) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t r = (size_t)blockIdx.x * TI_WARPS + warp;
    if (r >= rows) return;
    const float *xr = x + r * hs;
    float s = 0;
    for (int d = lane; d < hs; d += 32) s += xr[d] * xr[d];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float nrm = sqrtf(s);
    float inv = 1.0f / (nrm > TI_EPS ? nrm : TI_EPS);
    for (int d = lane; d < hs; d += 32) xn[r * hs + d] = xr[d] * inv;
}

/* Row r of head h (tokens b·T + t), the other index o over range 0 (o ≤ r) or 1 (o ≥ r):
 *   w = c γ^|r-o| (a_r · b_o);  acc += w cv_o.
 * proj (not NULL): the row's unit vector; score = proj_r · cv_o; beta += w score and the
 * result is inv (acc - beta proj_r) with inv, the projection switch, from raw's norm.
 * part (not NULL, range 0 only): per-row partials (Σ γ^n score (a·b), Σ c n γ^(n-1) score
 * (a·b)) for dc and dγ. out = acc (accumulate 0) or out += result. */
__global__ void k_decay_rows(float *out, double *part, const float *a, const float *b, const float *cv,
                             const float *proj, const float *raw, const float *gam, const float *cc, int B, int T,
                             int H, int hs, int range, int accumulate) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t row = (size_t)blockIdx.x * TI_WARPS + warp; /* (b·T + t)·H + h */
    if (row >= (size_t)B * T * H) return;
    int h = (int)(row % H);
    size_t bt = row / H;
    int t = (int)(bt % T);
    size_t b0 = bt - t, ld = (size_t)H * hs;
    size_t off = bt * ld + (size_t)h * hs;
    float g = gam[h], c = cc[h];
    float acc[TI_PER_LANE], av[TI_PER_LANE], pv[TI_PER_LANE];
#pragma unroll
    for (int i = 0; i < TI_PER_LANE; i++) {
        int d = lane + 32 * i;
        acc[i] = 0;
        av[i] = d < hs ? a[off + d] : 0.0f;
        pv[i] = proj && d < hs ? proj[off + d] : 0.0f;
    }
    float beta = 0;
    double pc = 0, pg = 0;
    int o0 = range == 1 ? t : 0, o1 = range == 0 ? t : T - 1;
    for (int o = o0; o <= o1; o++) {
        size_t oo = (b0 + o) * ld + (size_t)h * hs;
        float p = 0, sc = 0;
#pragma unroll
        for (int i = 0; i < TI_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < hs) {
                p += av[i] * b[oo + d];
                if (proj) sc += pv[i] * cv[oo + d];
            }
        }
        for (int s = 16; s > 0; s >>= 1) {
            p += __shfl_xor_sync(0xffffffffu, p, s);
            sc += __shfl_xor_sync(0xffffffffu, sc, s);
        }
        int n = o > t ? o - t : t - o;
        float pw = powf(g, (float)n);
        float w = c * pw * p;
#pragma unroll
        for (int i = 0; i < TI_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < hs) acc[i] += w * cv[oo + d];
        }
        beta += w * sc;
        if (part) {
            pc += (double)(pw * sc * p);
            if (n > 0) pg += (double)(c * (float)n * powf(g, (float)(n - 1)) * sc * p);
        }
    }
    float inv = 1.0f;
    if (proj) {
        float s = 0;
        for (int d = lane; d < hs; d += 32) s += raw[off + d] * raw[off + d];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        float nrm = sqrtf(s);
        inv = 1.0f / (nrm > TI_EPS ? nrm : TI_EPS);
        if (!(nrm > TI_EPS)) beta = 0;
    }
#pragma unroll
    for (int i = 0; i < TI_PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < hs) {
            float r = proj ? inv * acc[i] - inv * beta * pv[i] : acc[i];
            out[off + d] = accumulate ? out[off + d] + r : r;
        }
    }
    if (part && lane == 0) {
        part[2 * row] = pc;
        part[2 * row + 1] = pg;
    }
}

/* k_decay_rows with proj (the dq and dk passes) in tiles: block per (64 rows r, head,
 * batch) of 128 threads, 32-row tiles of o inside the range; per tile S = a bᵀ and
 * SC = proj cvᵀ, w = c γ^n S, acc += w cv, beta += w SC and, with part, the dc / dγ
 * partials in double; the row sums over the 8 lanes of a row by fixed xor shuffles. Same
 * results as the row kernel up to summation order.
 *
 * Thread (ty, tx) = (tid / 8, tid % 8) owns rows 4 ty + i (i < 4): o = o0 + tx + 8 j
 * (j < 4) of S and SC, channels 32 m + 4 tx + e (e < 4) of acc. Every operand it reads
 * per step is one 16-byte shared load (a float4 feeds 16 or 32 fmaf, not 4), which is why
 * the shared tiles are laid out as below; the o a thread owns and the order of every sum
 * (c ascending per S / SC entry, o ascending per acc entry, this thread's o then the xor
 * tree per beta / pc / pg) are those of the plain 4 x 4 tiling, so the bits are too.
 * Layouts (float offsets; the XORs keep 16-byte groups whole and make the loaders'
 * transposing stores and the products' loads free of bank conflicts):
 *   AT, PT [HS][64]:  (c, r) at c·64 + (r ^ 4 (c & 7))
 *   BT, CT [HS][32]:  (c, o) at c·32 + ((4 (o & 7) + o / 8) ^ 4 (c & 7)), so that o = tx + 8 j
 *                     (j < 4) are one float4
 *   Cs     [32][HS]:  (o, c) at o·HS + (c ^ 8 ((o / 8) & 3))
 *   Wt     [32][68]:  (o, r) at o·68 + r (the pad spreads the epilogue's float4 stores)
 * A warp whose 16 rows the tile masks entirely skips its S / SC products (their w is 0
 * either way); the weighted sum runs all 32 o: w and cv are 0 past T, fmaf(0, 0, acc)
 * is acc. */
#define TT_BR 64
#define TT_BC 32
#define TT_LW (TT_BR + 4)
__device__ __forceinline__ int tt_rix(int c, int r) { return c * TT_BR + (r ^ ((c & 7) << 2)); }
__device__ __forceinline__ int tt_cix(int c, int o) {
    return c * TT_BC + ((((o & 7) << 2) | (o >> 3)) ^ ((c & 7) << 2));
}
template <int HS>
__device__ __forceinline__ int tt_six(int o, int c) {
    return o * HS + (c ^ (((o >> 3) & 3) << 3));
}

/* The tile loaders: a thread issues a chunk of 8 global loads (per tensor) before its
 * first shared store, so that a chunk costs one L2 round trip rather than one per load.
 * A warp reads 4 rows x 8 channels 8 cb + x (x < 8; full 32-byte sectors) and stores
 * to 32 banks; every shared offset a thread stores to is a per-thread base plus a
 * constant, nothing for the compiler to keep in registers across the o loop. */
#define TT_CHUNK(HS) ((HS) / 8 < 8 ? (HS) / 8 : 8)

/* 64 rows x HS of a (tokens, ld) tensor from row r0 into AT's layout, zero outside; a
 * thread's rows are 4 rb + rr (rb = warp + 4 k, k < 4), channels x + 8 cb. */
template <int HS>
__device__ __forceinline__ void tt_load_rows(float *dst, const float *src, size_t ld, int r0, int T, int hs) {
    constexpr int CH = TT_CHUNK(HS);
    int w = threadIdx.x >> 5, x = threadIdx.x & 7, rr = (threadIdx.x >> 3) & 3;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int rb = w + 4 * k, r = 4 * rb + rr;
        bool rin = r0 + r < T;
        const float *row = src + (size_t)(r0 + (rin ? r : 0)) * ld + x;
        int t = 64 * x + 4 * (rb ^ x) + rr; /* tt_rix(8 cb + x, r) - 512 cb */
#pragma unroll
        for (int cb0 = 0; cb0 < HS / 8; cb0 += CH) {
            float v[CH];
#pragma unroll
            for (int q = 0; q < CH; q++) v[q] = rin && 8 * (cb0 + q) + x < hs ? row[8 * (cb0 + q)] : 0.0f;
#pragma unroll
            for (int q = 0; q < CH; q++) dst[t + 512 * (cb0 + q)] = v[q];
        }
    }
}

/* 32 rows of b into BT's layout and of cv into CT's and Cs's, zero outside; a thread's
 * rows are u + 8 jj (u = warp, warp + 4), channels x + 8 cb. */
template <int HS>
__device__ __forceinline__ void tt_load_cols(float *BT, float *CT, float *Cs, const float *b, const float *cv,
                                             size_t ld, int o0, int T, int hs) {
    constexpr int CH = TT_CHUNK(HS);
    int w = threadIdx.x >> 5, x = threadIdx.x & 7, jj = (threadIdx.x >> 3) & 3;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        int u = w + 4 * half, o = u + 8 * jj;
        bool rin = o0 + o < T;
        size_t row = (size_t)(o0 + (rin ? o : 0)) * ld + x;
        int t = 32 * x + 4 * (u ^ x) + jj; /* tt_cix(8 cb + x, o) - 256 cb */
#pragma unroll
        for (int cb0 = 0; cb0 < HS / 8; cb0 += CH) {
            float xb[CH], xc[CH];
#pragma unroll
            for (int q = 0; q < CH; q++) {
                bool in = rin && 8 * (cb0 + q) + x < hs;
                xb[q] = in ? b[row + 8 * (cb0 + q)] : 0.0f;
                xc[q] = in ? cv[row + 8 * (cb0 + q)] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < CH; q++) {
                BT[t + 256 * (cb0 + q)] = xb[q];
                CT[t + 256 * (cb0 + q)] = xc[q];
                Cs[tt_six<HS>(o, 8 * (cb0 + q) + x)] = xc[q];
            }
        }
    }
}

template <int HS>
__global__ void __launch_bounds__(128)
    k_titan_proj_tiled(float *out, double *part, const float *a, const float *b, const float *cv, const float *proj,
                       const float *raw, const float *gam, const float *cc, int T, int H, int hs, int range) {
    constexpr int NC = HS / 8;
    extern __shared__ __align__(16) float sm[];
    float *AT = sm;              /* [HS][TT_BR] */
    float *PT = AT + HS * TT_BR; /* proj: [HS][TT_BR] */
    float *BT = PT + HS * TT_BR; /* [HS][TT_BC] */
    float *CT = BT + HS * TT_BC; /* cv transposed: [HS][TT_BC] */
    float *Cs = CT + HS * TT_BC; /* cv: [TT_BC][HS] */
    float *Wt = Cs + TT_BC * HS; /* w transposed: [TT_BC][TT_LW] */
    int tid = threadIdx.x, ty = tid / 8, tx = tid % 8;
    /* Blocks start x (head) fastest, then y (batch), then z: the row tiles with the most
     * o tiles (the last for range 0, the first for range 1) first, the short ones last to
     * fill the tail. */
    int rb = range == 0 ? (int)(gridDim.z - 1 - blockIdx.z) : (int)blockIdx.z;
    int r0 = rb * TT_BR, h = blockIdx.x, bb = blockIdx.y;
    size_t ld = (size_t)H * hs, base = (size_t)bb * T * ld + (size_t)h * hs;
    float g = gam[h], c = cc[h];
    tt_load_rows<HS>(AT, a + base, ld, r0, T, hs);
    tt_load_rows<HS>(PT, proj + base, ld, r0, T, hs);
    float acc[4][NC], beta[4];
    double pc[4], pg[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        beta[i] = 0, pc[i] = 0, pg[i] = 0;
#pragma unroll
        for (int k = 0; k < NC; k++) acc[i][k] = 0;
    }
    int rlast = r0 + TT_BR - 1 < T - 1 ? r0 + TT_BR - 1 : T - 1;
    int o_begin = range == 1 ? r0 : 0, o_end = range == 0 ? rlast + 1 : T;
    /* This warp's rows [rw, rw + 15]. */
    int rw = r0 + 16 * (tid / 32);
    /* γ^n and γ^(n-1), n = |o - r|, by o - r - (o0 - r0) + TT_BR - 1 (the offsets a tile
     * pair spans): one powf each per offset instead of per element, the same values. */
    __shared__ float pwt[TT_BR + TT_BC], pw1t[TT_BR + TT_BC];
    for (int o0 = o_begin; o0 < o_end; o0 += TT_BC) {
        __syncthreads();
        tt_load_cols<HS>(BT, CT, Cs, b + base, cv + base, ld, o0, T, hs);
        for (int k = tid; k < TT_BR + TT_BC - 1; k += 128) {
            int d = o0 - r0 + k - (TT_BR - 1), n = d < 0 ? -d : d;
            pwt[k] = powf(g, (float)n);
            pw1t[k] = n > 0 ? powf(g, (float)(n - 1)) : 0.0f;
        }
        __syncthreads();
        float sv[4][4], sc[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) sv[i][j] = 0, sc[i][j] = 0;
        bool masked = rw >= T || (range == 0 ? o0 > rw + 15 : o0 + TT_BC - 1 < rw);
        if (!masked) {
#pragma unroll 8
            for (int k = 0; k < HS; k++) {
                float4 av = *(const float4 *)&AT[tt_rix(k, 4 * ty)], pv = *(const float4 *)&PT[tt_rix(k, 4 * ty)];
                float4 bv = *(const float4 *)&BT[tt_cix(k, tx)], cw = *(const float4 *)&CT[tt_cix(k, tx)];
                const float ar[4] = {av.x, av.y, av.z, av.w}, pr[4] = {pv.x, pv.y, pv.z, pv.w};
                const float br[4] = {bv.x, bv.y, bv.z, bv.w}, cr[4] = {cw.x, cw.y, cw.z, cw.w};
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        sv[i][j] = fmaf(ar[i], br[j], sv[i][j]);
                        sc[i][j] = fmaf(pr[i], cr[j], sc[i][j]);
                    }
            }
        }
        float wr[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int r = r0 + 4 * ty + i;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int o = o0 + tx + 8 * j;
                float w = 0;
                if (r < T && o < T && (range == 0 ? o <= r : o >= r)) {
                    int n = o > r ? o - r : r - o, k = o - r - (o0 - r0) + TT_BR - 1;
                    float pw = pwt[k];
                    w = c * pw * sv[i][j];
                    beta[i] += w * sc[i][j];
                    if (part) {
                        pc[i] += (double)(pw * sc[i][j] * sv[i][j]);
                        if (n > 0) pg[i] += (double)(c * (float)n * pw1t[k] * sc[i][j] * sv[i][j]);
                    }
                }
                wr[j][i] = w;
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
            *(float4 *)&Wt[(tx + 8 * j) * TT_LW + 4 * ty] = make_float4(wr[j][0], wr[j][1], wr[j][2], wr[j][3]);
        __syncthreads();
#pragma unroll 8
        for (int o = 0; o < TT_BC; o++) {
            float4 wv = *(const float4 *)&Wt[o * TT_LW + 4 * ty];
            const float wq[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
            for (int m = 0; m < HS / 32; m++) {
                float4 vv = *(const float4 *)&Cs[tt_six<HS>(o, 32 * m + 4 * tx)];
                const float vq[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[i][4 * m + e] = fmaf(wq[i], vq[e], acc[i][4 * m + e]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int rl = 4 * ty + i, r = r0 + rl;
        float bsum = beta[i], nsq = 0;
        double c1 = pc[i], c2 = pg[i];
        size_t off = base + (size_t)(r < T ? r : 0) * ld;
#pragma unroll
        for (int k = 0; k < NC; k++) {
            int d = tx + 8 * k;
            float x = r < T && d < hs ? raw[off + d] : 0.0f;
            nsq += x * x;
        }
#pragma unroll
        for (int m = 1; m < 8; m <<= 1) {
            bsum += __shfl_xor_sync(0xffffffffu, bsum, m);
            nsq += __shfl_xor_sync(0xffffffffu, nsq, m);
            c1 += __shfl_xor_sync(0xffffffffu, c1, m);
            c2 += __shfl_xor_sync(0xffffffffu, c2, m);
        }
        if (r >= T) continue;
        float nrm = sqrtf(nsq);
        float inv = 1.0f / (nrm > TI_EPS ? nrm : TI_EPS);
        if (!(nrm > TI_EPS)) bsum = 0;
#pragma unroll
        for (int k = 0; k < NC; k++) {
            int d = 32 * (k / 4) + 4 * tx + k % 4;
            if (d < hs) out[off + d] += inv * acc[i][k] - inv * bsum * PT[tt_rix(d, rl)];
        }
        if (part && tx == 0) {
            size_t row = ((size_t)bb * T + r) * H + h;
            part[2 * row] = c1;
            part[2 * row + 1] = c2;
        }
    }
}

static size_t tt_smem(int HS) {
    return (size_t)4 * (2 * HS * TT_BR + 3 * HS * TT_BC + TT_BC * TT_LW);
}

template <int HS>
static int tt_launch(float *out, double *part, const float *a, const float *b, const float *cv, const float *proj,
                     const float *raw, const float *gam, const float *cc, int B, int T, int H, int hs, int range) {
    static int state;
    size_t smem = tt_smem(HS);
    int nr = (T + TT_BR - 1) / TT_BR;
    if (!tbc_smem_allow(k_titan_proj_tiled<HS>, smem, 1024, &state) || B > 65535 || nr > 65535) return -1;
    dim3 grid((unsigned)H, (unsigned)B, (unsigned)nr);
    k_titan_proj_tiled<HS><<<grid, 128, smem, S()>>>(out, part, a, b, cv, proj, raw, gam, cc, T, H, hs, range);
    TBC_LAUNCHED();
    return 0;
}

/* The proj passes in tiles where the shape allows (T >= 16, hs <= 128); -1: use rows. */
static int titan_proj_tiled(float *out, double *part, const float *a, const float *b, const float *cv,
                            const float *proj, const float *raw, const float *gam, const float *cc, int B, int T,
                            int H, int hs, int range) {
    if (T < 16 || hs <= 0 || hs > 128) return -1;
    return hs <= 32   ? tt_launch<32>(out, part, a, b, cv, proj, raw, gam, cc, B, T, H, hs, range)
           : hs <= 64 ? tt_launch<64>(out, part, a, b, cv, proj, raw, gam, cc, B, T, H, hs, range)
                      : tt_launch<128>(out, part, a, b, cv, proj, raw, gam, cc, B, T, H, hs, range);
}

__global__ void k_titan_params(float *gam, float *cc, const float *decay, int H) {
    int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= H) return;
    float g = sigm(decay[h]);
    gam[h] = g;
    cc[h] = 1.0f - g;
}

/* One block per head: dc and dγ summed over rows (b, t) in a fixed tree; then
 * ddecay += (dγ - dc) γ (1 - γ). */
__global__ void k_titan_ddecay(float *ddecay, const double *part, const float *gam, size_t bt, int H) {
    __shared__ double sh[256];
    int h = blockIdx.x;
    double sc = 0, sg = 0;
    for (size_t r = threadIdx.x; r < bt; r += blockDim.x) {
        sc += part[2 * (r * H + h)];
        sg += part[2 * (r * H + h) + 1];
    }
    sc = tbc_block_sum_d(sc, sh);
    sg = tbc_block_sum_d(sg, sh);
    if (threadIdx.x == 0) {
        float g = gam[h];
        ddecay[h] += ((float)sg - (float)sc) * g * (1.0f - g);
    }
}

static void titan_check(int hs) {
    if (hs > 32 * TI_PER_LANE) tbc_fatal("titan", __FILE__, __LINE__, "head size above 256 is not supported on CUDA yet");
}

static void cu_titan_forward(real *r, real *qn, real *kn, const real *q, const real *k, const real *v,
                             const real *decay, int B, int T, int H, int hs, const struct tb_backend *be) {
    (void)be;
    size_t rows = (size_t)B * T * H;
    if (!rows || hs <= 0) return;
    titan_check(hs);
    float *gc = (float *)tbc_scratch(TBC_SCR_SEQ_B, (size_t)2 * H * 4);
    k_titan_params<<<(H + 127) / 128, 128, 0, S()>>>(gc, gc + H, decay, H);
    TBC_LAUNCHED();
    unsigned nb = (unsigned)((rows + TI_WARPS - 1) / TI_WARPS);
    k_l2norm_heads<<<nb, 32 * TI_WARPS, 0, S()>>>(qn, q, rows, hs);
    TBC_LAUNCHED();
    k_l2norm_heads<<<nb, 32 * TI_WARPS, 0, S()>>>(kn, k, rows, hs);
    TBC_LAUNCHED();
    if (tbc_decay_tiled(r, qn, kn, v, gc, gc + H, B, T, H, hs, 0, 0) == 0) return;
    k_decay_rows<<<nb, 32 * TI_WARPS, 0, S()>>>(r, NULL, qn, kn, v, NULL, NULL, gc, gc + H, B, T, H, hs, 0, 0);
    TBC_LAUNCHED();
}

static void cu_titan_backward(real *dq, real *dk, real *dv, real *ddecay, const real *dr, const real *q,
                              const real *k, const real *qn, const real *kn, const real *v, const real *decay, int B,
                              int T, int H, int hs, const struct tb_backend *be) {
    (void)be;
    size_t rows = (size_t)B * T * H;
    if (!rows || hs <= 0) return;
    titan_check(hs);
    float *gc = (float *)tbc_scratch(TBC_SCR_SEQ_B, (size_t)2 * H * 4);
    double *part = (double *)tbc_scratch(TBC_SCR_SEQ_C, rows * 2 * sizeof(double));
    k_titan_params<<<(H + 127) / 128, 128, 0, S()>>>(gc, gc + H, decay, H);
    TBC_LAUNCHED();
    unsigned nb = (unsigned)((rows + TI_WARPS - 1) / TI_WARPS);
    /* dq_t: a = dr_t, b = v_s, cv = kn_s, proj = qn_t (raw q), s ≤ t, with partials. */
    if (titan_proj_tiled(dq, part, dr, v, kn, qn, q, gc, gc + H, B, T, H, hs, 0)) {
        k_decay_rows<<<nb, 32 * TI_WARPS, 0, S()>>>(dq, part, dr, v, kn, qn, q, gc, gc + H, B, T, H, hs, 0, 1);
        TBC_LAUNCHED();
    }
    /* dk_s: a = v_s, b = dr_t, cv = qn_t, proj = kn_s (raw k), t ≥ s. */
    if (titan_proj_tiled(dk, NULL, v, dr, qn, kn, k, gc, gc + H, B, T, H, hs, 1)) {
        k_decay_rows<<<nb, 32 * TI_WARPS, 0, S()>>>(dk, NULL, v, dr, qn, kn, k, gc, gc + H, B, T, H, hs, 1, 1);
        TBC_LAUNCHED();
    }
    /* dv_s: a = kn_s, b = qn_t, cv = dr_t, t ≥ s (in tiles where the shape allows). */
    if (tbc_decay_tiled(dv, kn, qn, dr, gc, gc + H, B, T, H, hs, 1, 1)) {
        k_decay_rows<<<nb, 32 * TI_WARPS, 0, S()>>>(dv, NULL, kn, qn, dr, NULL, NULL, gc, gc + H, B, T, H, hs, 1,
                                                    1);
        TBC_LAUNCHED();
    }
    k_titan_ddecay<<<H, 256, 0, S()>>>(ddecay, part, gc, (size_t)B * T, H);
    TBC_LAUNCHED();
}

void tbc_seq_more_init(tb_ops_seq *ops) {
    ops->act_forward = cu_act_forward;
    ops->act_backward = cu_act_backward;
    ops->act_backward_set = cu_act_backward_set;
    ops->softplus_bias_forward = cu_softplus_bias_forward;
    ops->softplus_bias_backward = cu_softplus_bias_backward;
    ops->mul_silu_forward = cu_mul_silu_forward;
    ops->mul_silu_backward = cu_mul_silu_backward;
    ops->copy_cols = cu_copy_cols;
    ops->add_cols = cu_add_cols;
    ops->conv_causal_forward = cu_conv_causal_forward;
    ops->conv_causal_backward = cu_conv_causal_backward;
    ops->titan_forward = cu_titan_forward;
    ops->titan_backward = cu_titan_backward;
}
