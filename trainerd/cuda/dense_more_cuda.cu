/* The dense family on CUDA, continued: dropout (Philox on the device, the CPU's mask bit
 * for bit), embedding gather and its scatter-add (stable sort of token ids, then one
 * owner per id adding the rows in token order: the CPU's order, no atomics), Conv1d
 * (im2col + one cuBLASLt GEMM each way; col2im sums taps in a fixed order) and the
 * position encoding (element-wise, the CPU's expression order). */
#include "cuda_internal.cuh"
extern "C" {
#include "layers/dropout.h"
}

#define EW 256
#define GRID_STRIDE(i, n)                                                              \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);           \
         i += (size_t)gridDim.x * blockDim.x)

static inline cudaStream_t S(void) { return tbc_g->stream; }

/* ---- dropout -------------------------------------------------------------------- */

__global__ void k_dropout_fwd(float *y, const float *x, tbc_drop d, uint32_t site, size_t n) {
    GRID_STRIDE(i, n) y[i] = x[i] * tbc_drop_factor(d, site, i);
}
__global__ void k_dropout_bwd(float *dx, const float *dy, tbc_drop d, uint32_t site, size_t n) {
    GRID_STRIDE(i, n) dx[i] += d.active ? dy[i] * tbc_drop_factor(d, site, i) : dy[i];
}

static void cu_dropout_fwd(real *y, const real *x, const tb_dropout *d, uint32_t site, size_t n) {
    if (!n) return;
    tbc_drop dd = tbc_drop_make(d);
    if (!dd.active) {
        if (y != x) {
            TBC_CHECK(cudaMemcpyAsync(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice, S()));
            tbc_op_sync();
        }
        return;
    }
    k_dropout_fwd<<<tbc_blocks(n, EW), EW, 0, S()>>>(y, x, dd, site, n);
    TBC_LAUNCHED();
}
static void cu_dropout_bwd(real *dx, const real *dy, const tb_dropout *d, uint32_t site, size_t n) {
    if (!n) return;
    k_dropout_bwd<<<tbc_blocks(n, EW), EW, 0, S()>>>(dx, dy, tbc_drop_make(d), site, n);
    TBC_LAUNCHED();
}

/* ---- embedding ------------------------------------------------------------------ */

__global__ void k_embed_fwd(float *out, const int32_t *ids, const float *table, size_t n, int C) {
    GRID_STRIDE(e, n * (size_t)C) {
        size_t t = e / C;
        out[e] = table[(size_t)ids[t] * C + (e - t * C)];
    }
}

static void cu_embed_fwd(real *out, const int32_t *ids, const real *table, size_t n, int C) {
    if (!n || C <= 0) return;
    k_embed_fwd<<<tbc_blocks(n * C, EW), EW, 0, S()>>>(out, ids, table, n, C);
    TBC_LAUNCHED();
}

__global__ void k_iota(int32_t *v, int n) {
    GRID_STRIDE(i, (size_t)n) v[i] = (int32_t)i;
}

/* After a stable sort by destination row: position p is a segment head when its key
 * differs from p-1's; the head's block adds every source row of its segment, in order
 * (times scale[source row] when scale is not NULL). */
__global__ void k_segment_add(float *dst, const float *src, const int32_t *key, const int32_t *val,
                              const float *scale, int n, int C) {
    for (int p = blockIdx.x; p < n; p += gridDim.x) {
        int r = key[p];
        if (r == TBC_SEGMENT_SKIP || (p > 0 && key[p - 1] == r)) continue;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = dst[(size_t)r * C + c];
            for (int q = p; q < n && key[q] == r; q++) {
                float g = src[(size_t)val[q] * C + c];
                acc += scale ? scale[val[q]] * g : g;
            }
            dst[(size_t)r * C + c] = acc;
        }
    }
}

void tbc_segment_add(float *dst, const float *src, const int32_t *key, const int32_t *val,
                     const float *scale, int n, int C) {
    unsigned g = (unsigned)(n < 65535 * 4 ? n : 65535 * 4);
    k_segment_add<<<g, C < 256 ? 128 : 256, 0, S()>>>(dst, src, key, val, scale, n, C);
    TBC_LAUNCHED();
}

static void cu_embed_bwd(real *dtable, const real *dout, const int32_t *ids, size_t n, int C) {
    if (!n || C <= 0) return;
    if (n > 0x7fffffff) tbc_fatal("embed_bwd", __FILE__, __LINE__, "more than 2^31-1 tokens");
    int nn = (int)n;
    int32_t *vin = (int32_t *)tbc_scratch(TBC_SCR_SORT_VIN, n * 4);
    int32_t *ko = (int32_t *)tbc_scratch(TBC_SCR_SORT_KOUT, n * 4);
    int32_t *vo = (int32_t *)tbc_scratch(TBC_SCR_SORT_VOUT, n * 4);
    k_iota<<<tbc_blocks(n, EW), EW, 0, S()>>>(vin, nn);
    TBC_LAUNCHED();
    tbc_sort_pairs(ko, vo, ids, vin, nn, 31);
    tbc_segment_add(dtable, dout, ko, vo, NULL, nn, C);
}

/* ---- Conv1d (channels-last, padding k/2, first T outputs) ----------------------- */

/* col[r, j·C + i] = x[b, t + j - pad, i] (0 outside [0, T)). */
__global__ void k_im2col(float *col, const float *x, int B, int T, int C, int k) {
    size_t kc = (size_t)k * C;
    GRID_STRIDE(e, (size_t)B * T * kc) {
        size_t r = e / kc;
        int rem = (int)(e - r * kc), j = rem / C, i = rem - j * C;
        int t = (int)(r % T), ts = t + j - k / 2;
        col[e] = ts < 0 || ts >= T ? 0.0f : x[(r - t + ts) * C + i];
    }
}
/* wr[o, j·C + i] = w[o, i, j]. */
__global__ void k_conv_repack(float *wr, const float *w, int C, int k) {
    size_t kc = (size_t)k * C;
    GRID_STRIDE(e, (size_t)C * kc) {
        size_t o = e / kc;
        int rem = (int)(e - o * kc), j = rem / C, i = rem - j * C;
        wr[e] = w[(o * C + i) * k + j];
    }
}
__global__ void k_conv_unpack_add(float *dw, const float *dwr, int C, int k) {
    size_t kc = (size_t)k * C;
    GRID_STRIDE(e, (size_t)C * kc) {
        size_t o = e / kc;
        int rem = (int)(e - o * kc), j = rem / C, i = rem - j * C;
        dw[(o * C + i) * k + j] += dwr[e];
    }
}
__global__ void k_bias_rows(float *y, const float *bias, size_t rows, int C) {
    GRID_STRIDE(e, rows * C) y[e] = bias[e % C];
}
/* dx[b, s, i] += Σ_j dcol[b, s - j + pad, j·C + i] over valid rows, j ascending. */
__global__ void k_col2im_add(float *dx, const float *dcol, int B, int T, int C, int k) {
    size_t kc = (size_t)k * C;
    GRID_STRIDE(e, (size_t)B * T * C) {
        size_t r = e / C;
        int i = (int)(e - r * C), s = (int)(r % T);
        float acc = dx[e];
        for (int j = 0; j < k; j++) {
            int t = s - j + k / 2;
            if (t < 0 || t >= T) continue;
            acc += dcol[(r - s + t) * kc + (size_t)j * C + i];
        }
        dx[e] = acc;
    }
}

static void cu_conv1d_fwd(real *y, const real *x, const real *w, const real *bias, int B, int T, int C, int k) {
    size_t rows = (size_t)B * T, kc = (size_t)k * C;
    if (!rows || C <= 0) return;
    k_bias_rows<<<tbc_blocks(rows * C, EW), EW, 0, S()>>>(y, bias, rows, C);
    TBC_LAUNCHED();
    if (k <= 0) return;
    float *col = (float *)tbc_scratch(TBC_SCR_CONV_COL, rows * kc * 4);
    float *wr = (float *)tbc_scratch(TBC_SCR_CONV_W, (size_t)C * kc * 4);
    k_im2col<<<tbc_blocks(rows * kc, EW), EW, 0, S()>>>(col, x, B, T, C, k);
    TBC_LAUNCHED();
    k_conv_repack<<<tbc_blocks((size_t)C * kc, EW), EW, 0, S()>>>(wr, w, C, k);
    TBC_LAUNCHED();
    tbc_gemm(y, col, wr, (int)rows, C, (int)kc, 0, 1, (int)kc, (int)kc, C, 1.0f, 1.0f, NULL);
}

static void cu_conv1d_bwd(real *dx, real *dw, real *dbias, const real *dy, const real *x, const real *w, int B,
                          int T, int C, int k) {
    size_t rows = (size_t)B * T, kc = (size_t)k * C;
    if (!rows || C <= 0) return;
    tbc_colsum_add(dbias, dy, rows, C, C);
    if (k <= 0) return;
    float *col = (float *)tbc_scratch(TBC_SCR_CONV_COL, rows * kc * 4);
    float *wr = (float *)tbc_scratch(TBC_SCR_CONV_W, (size_t)C * kc * 4);
    float *dcol = (float *)tbc_scratch(TBC_SCR_CONV_D, rows * kc * 4);
    float *dwr = (float *)tbc_scratch(TBC_SCR_CONV_DW, (size_t)C * kc * 4);
    k_im2col<<<tbc_blocks(rows * kc, EW), EW, 0, S()>>>(col, x, B, T, C, k);
    TBC_LAUNCHED();
    k_conv_repack<<<tbc_blocks((size_t)C * kc, EW), EW, 0, S()>>>(wr, w, C, k);
    TBC_LAUNCHED();
    /* dwr = dyᵀ col (C, kC); dcol = dy wr (rows, kC). */
    tbc_gemm(dwr, dy, col, C, (int)kc, (int)rows, 1, 0, C, (int)kc, (int)kc, 1.0f, 0.0f, NULL);
    k_conv_unpack_add<<<tbc_blocks((size_t)C * kc, EW), EW, 0, S()>>>(dw, dwr, C, k);
    TBC_LAUNCHED();
    tbc_gemm(dcol, dy, wr, (int)rows, (int)kc, C, 0, 0, C, (int)kc, (int)kc, 1.0f, 0.0f, NULL);
    k_col2im_add<<<tbc_blocks(rows * C, EW), EW, 0, S()>>>(dx, dcol, B, T, C, k);
    TBC_LAUNCHED();
}

/* ---- position encoding ---------------------------------------------------------- */

/* One thread per (row, head, pair); pair index P (odd hs) copies the last channel. */
__global__ void k_posenc(float *y, const float *x, const float *a, const float *b, float s01, float s10,
                         size_t n, int T, int H, int hs, size_t ld) {
    int P = hs / 2, Q = P + (hs & 1);
    GRID_STRIDE(e, n * H * (size_t)Q) {
        size_t rh = e / Q;
        int i = (int)(e - rh * Q);
        size_t r = rh / H;
        int h = (int)(rh - r * H);
        const float *xr = x + r * ld + (size_t)h * hs;
        float *yr = y + r * ld + (size_t)h * hs;
        if (i == P) {
            yr[hs - 1] = xr[hs - 1];
            continue;
        }
        int t = (int)(r % T);
        float av = a[(size_t)t * P + i], bv = b[(size_t)t * P + i];
        float x0 = xr[2 * i], x1 = xr[2 * i + 1];
        yr[2 * i] = av * x0 + s01 * bv * x1;
        yr[2 * i + 1] = s10 * bv * x0 + av * x1;
    }
}

static void cu_posenc_apply(real *y, const real *x, const real *a, const real *b, int hyperbolic, int transpose,
                            size_t n, int T, int H, int hs, size_t ld) {
    if (!n || H <= 0 || hs <= 0) return;
    float s01 = hyperbolic ? 1.0f : -1.0f, s10 = 1.0f;
    if (transpose) {
        float tmp = s01;
        s01 = s10;
        s10 = tmp;
    }
    size_t work = n * H * (size_t)(hs / 2 + (hs & 1));
    k_posenc<<<tbc_blocks(work, EW), EW, 0, S()>>>(y, x, a, b, s01, s10, n, T, H, hs, ld);
    TBC_LAUNCHED();
}

void tbc_dense_more_init(tb_ops_dense *ops) {
    ops->dropout_fwd = cu_dropout_fwd;
    ops->dropout_bwd = cu_dropout_bwd;
    ops->embed_fwd = cu_embed_fwd;
    ops->embed_bwd = cu_embed_bwd;
    ops->conv1d_fwd = cu_conv1d_fwd;
    ops->conv1d_bwd = cu_conv1d_bwd;
    ops->posenc_apply = cu_posenc_apply;
}
