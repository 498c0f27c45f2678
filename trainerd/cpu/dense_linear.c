/* Plain linear and BitLinear kernels (MODEL.md section 2). Single-threaded, blocked so
 * that a block of rows stays in cache; per element every reduction runs in ascending
 * index order onto the existing value as fused multiply-adds (r_fma: one rounding per
 * term, the CPU GEMM's contract), so results do not depend on the blocking. */
#include <math.h>
#include <string.h>
#include "dense_cpu.h"
#include "vmath.h"

#define ROW_BLOCK 16 /* tokens per block */

/* y (n,out) = x (n,in) · wᵀ: dot products of contiguous rows. */
void dense_cpu_linear_fwd(real *y, const real *x, const real *w, size_t n, int in, int out) {
    for (size_t t0 = 0; t0 < n; t0 += ROW_BLOCK) {
        size_t t1 = t0 + ROW_BLOCK < n ? t0 + ROW_BLOCK : n;
        for (int o = 0; o < out; o++) {
            const real *wr = w + (size_t)o * in;
            for (size_t t = t0; t < t1; t++) {
                const real *xr = x + t * in;
                real s = 0;
                for (int j = 0; j < in; j++) s = r_fma(xr[j], wr[j], s);
                y[t * out + o] = s;
            }
        }
    }
}

/* dx (n,in) += dy (n,out) · w (out,in)  (i-k-j) and dw (out,in) += dyᵀ · x (blocked on t). */
void dense_cpu_linear_bwd(real *dx, real *dw, const real *dy, const real *x, const real *w,
                          size_t n, int in, int out) {
    if (dx) {
        for (size_t t = 0; t < n; t++) {
            real *dxr = dx + t * in;
            const real *dyr = dy + t * out;
            for (int o = 0; o < out; o++) {
                real a = dyr[o];
                const real *wr = w + (size_t)o * in;
                for (int j = 0; j < in; j++) dxr[j] = r_fma(a, wr[j], dxr[j]);
            }
        }
    }
    if (dw) {
        for (size_t t0 = 0; t0 < n; t0 += ROW_BLOCK) {
            size_t t1 = t0 + ROW_BLOCK < n ? t0 + ROW_BLOCK : n;
            for (int o = 0; o < out; o++) {
                real *dwr = dw + (size_t)o * in;
                for (size_t t = t0; t < t1; t++) {
                    real a = dy[t * out + o];
                    const real *xr = x + t * in;
                    for (int j = 0; j < in; j++) dwr[j] = r_fma(a, xr[j], dwr[j]);
                }
            }
        }
    }
}

static inline TB_BODY void dense_cpu_bitlinear_quant_w_body(int8_t *wq, real *sw, const real *w,
                                                             size_t count) {
    double s = 0;
    for (size_t i = 0; i < count; i++) s += fabs((double)w[i]);
    real mean = count ? (real)(s / (double)count) : R(0.0);
    real scale = R(1.0) / (mean > R(1e-5) ? mean : R(1e-5));
    for (size_t i = 0; i < count; i++) {
        real q = r_rint(w[i] * scale);
        wq[i] = (int8_t)(q > 1 ? 1 : q < -1 ? -1 : q);
    }
    *sw = scale;
}
TB_AVX2_TWIN(void, dense_cpu_bitlinear_quant_w,
             (int8_t *wq, real *sw, const real *w, size_t count), (wq, sw, w, count))

/* s_x and codes of one row from x̂ = (x - mean) rstd. */
static inline TB_BODY void quant_x_codes(int8_t *q, real *st, const real *xr, real mean,
                                         real rstd, int in) {
    real amax = 0;
    for (int j = 0; j < in; j++) {
        real a = r_fabs((xr[j] - mean) * rstd);
        if (a > amax) amax = a;
    }
    real sx = R(127.0) / (amax > R(1e-5) ? amax : R(1e-5));
    for (int j = 0; j < in; j++) {
        real c = r_rint(((xr[j] - mean) * rstd) * sx);
        q[j] = (int8_t)(c > 127 ? 127 : c < -128 ? -128 : c);
    }
    st[0] = mean;
    st[1] = rstd;
    st[2] = sx;
}

/* LN0 statistics in double; x̂ in real; s_x and codes from x̂. Rows go four at a time
 * through the two sums: each row's sum still runs in ascending j (the same bits), and the
 * four independent chains overlap instead of each add waiting on the one before. */
static inline TB_BODY void dense_cpu_bitlinear_quant_x_body(int8_t *xq, real *stats,
                                                             const real *x, size_t n, int in) {
    size_t t = 0;
    for (; t + 4 <= n; t += 4) {
        const real *x0 = x + t * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int j = 0; j < in; j++) {
            s0 += x0[j];
            s1 += x1[j];
            s2 += x2[j];
            s3 += x3[j];
        }
        real m0 = (real)(s0 / in), m1 = (real)(s1 / in), m2 = (real)(s2 / in),
             m3 = (real)(s3 / in);
        double v0 = 0, v1 = 0, v2 = 0, v3 = 0;
        for (int j = 0; j < in; j++) {
            double d0 = (double)(x0[j] - m0), d1 = (double)(x1[j] - m1);
            double d2 = (double)(x2[j] - m2), d3 = (double)(x3[j] - m3);
            v0 += d0 * d0;
            v1 += d1 * d1;
            v2 += d2 * d2;
            v3 += d3 * d3;
        }
        quant_x_codes(xq + t * in, stats + 3 * t, x0, m0, (real)(1.0 / sqrt(v0 / in + 1e-5)), in);
        quant_x_codes(xq + (t + 1) * in, stats + 3 * (t + 1), x1, m1,
                      (real)(1.0 / sqrt(v1 / in + 1e-5)), in);
        quant_x_codes(xq + (t + 2) * in, stats + 3 * (t + 2), x2, m2,
                      (real)(1.0 / sqrt(v2 / in + 1e-5)), in);
        quant_x_codes(xq + (t + 3) * in, stats + 3 * (t + 3), x3, m3,
                      (real)(1.0 / sqrt(v3 / in + 1e-5)), in);
    }
    for (; t < n; t++) {
        const real *xr = x + t * in;
        double s = 0;
        for (int j = 0; j < in; j++) s += xr[j];
        real mean = (real)(s / in);
        double v = 0;
        for (int j = 0; j < in; j++) {
            double d = (double)(xr[j] - mean);
            v += d * d;
        }
        quant_x_codes(xq + t * in, stats + 3 * t, xr, mean, (real)(1.0 / sqrt(v / in + 1e-5)), in);
    }
}
TB_AVX2_TWIN(void, dense_cpu_bitlinear_quant_x,
             (int8_t *xq, real *stats, const real *x, size_t n, int in), (xq, stats, x, n, in))

void dense_cpu_bitlinear_fwd(real *y, const int8_t *xq, const real *stats, const int8_t *wq,
                             const real *sw, size_t n, int in, int out) {
    real s_w = *sw;
    for (size_t t0 = 0; t0 < n; t0 += ROW_BLOCK) {
        size_t t1 = t0 + ROW_BLOCK < n ? t0 + ROW_BLOCK : n;
        for (int o = 0; o < out; o++) {
            const int8_t *wr = wq + (size_t)o * in;
            for (size_t t = t0; t < t1; t++) {
                const int8_t *xr = xq + t * in;
                int32_t acc = 0;
                for (int j = 0; j < in; j++) acc += (int32_t)xr[j] * (int32_t)wr[j];
                y[t * out + o] = (real)acc / (stats[3 * t + 2] * s_w);
            }
        }
    }
}

void dense_cpu_bitlinear_bwd(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                             const int8_t *xq, const real *stats, const int8_t *wq,
                             const real *sw, size_t n, int in, int out) {
    /* dw += dyᵀ · x̃ with x̃ = x_q / s_x staged in dxhat. */
    for (size_t t = 0; t < n; t++)
        for (int j = 0; j < in; j++)
            dxhat[t * in + j] = (real)xq[t * in + j] / stats[3 * t + 2];
    dense_cpu_linear_bwd(NULL, dw, dy, dxhat, NULL, n, in, out);
    if (!dx) return;
    /* dx̂ = dy · w̃, w̃ = w_q / s_w ∈ {c, -c, 0} with c = 1 / s_w. */
    real c = R(1.0) / *sw;
    for (size_t t = 0; t < n; t++) {
        real *g = dxhat + t * in;
        const real *dyr = dy + t * out;
        for (int j = 0; j < in; j++) g[j] = 0;
        for (int o = 0; o < out; o++) {
            const int8_t *wr = wq + (size_t)o * in;
            real a = dyr[o];
            for (int j = 0; j < in; j++)
                g[j] = r_fma(a, wr[j] > 0 ? c : wr[j] < 0 ? -c : R(0.0), g[j]);
        }
        /* LN0ᵀ: dx += rstd (g - mean(g) - x̂ mean(g ⊙ x̂)). */
        const real *xr = x + t * in;
        real mean = stats[3 * t], rstd = stats[3 * t + 1];
        double sg = 0, sgx = 0;
        for (int j = 0; j < in; j++) {
            real xh = (xr[j] - mean) * rstd;
            sg += g[j];
            sgx += (double)(g[j] * xh);
        }
        real mg = (real)(sg / in), mgx = (real)(sgx / in);
        real *dxr = dx + t * in;
        for (int j = 0; j < in; j++) {
            real xh = (xr[j] - mean) * rstd;
            dxr[j] += rstd * (g[j] - mg - xh * mgx);
        }
    }
}
