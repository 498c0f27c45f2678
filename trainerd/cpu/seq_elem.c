/* Element-wise ops of the Mamba and MoE layers on the CPU: silu / exact gelu, softplus
 * with a bias (dt_proj), a ⊙ silu(g) gating, column-slice copies. */
#include "../backend.h"
#include <math.h>
#include "vmath.h"

/* Loops over [0, n) in stack-sized chunks: i0, m. */
#define CHUNKS(n)                                                                          \
    for (size_t i0 = 0, m; i0 < (n) && (m = (n) - i0 < TB_VCHUNK ? (n) - i0 : TB_VCHUNK);  \
         i0 += TB_VCHUNK)

/* The loops around the sigmoid, 8 at a time on AVX2 in the fp32 build: the same IEEE
 * operations in the same order per element (no FMA: the library is -ffp-contract=off), so
 * the same bits as the scalar loop, which finishes the tail. Each returns how many elements
 * it did; VEC8 gives 0 where there is no AVX2 and in the fp64 build. */
#ifndef TB_REAL_DOUBLE
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))
#define VEC8(call) (__builtin_cpu_supports("avx2") ? (call) : 0)

AVX2 static size_t silu_fwd8(float *y, const float *x, const float *s, size_t m) {
    size_t i = 0;
    for (; i + 8 <= m; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(s + i)));
    return i;
}

/* dx += dy s (1 + x (1 - s)) */
AVX2 static size_t silu_bwd8(float *dx, const float *dy, const float *x, const float *s,
                             size_t m) {
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m256 sv = _mm256_loadu_ps(s + i), xv = _mm256_loadu_ps(x + i);
        __m256 f = _mm256_add_ps(one, _mm256_mul_ps(xv, _mm256_sub_ps(one, sv)));
        __m256 g = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(dy + i), sv), f);
        _mm256_storeu_ps(dx + i, _mm256_add_ps(_mm256_loadu_ps(dx + i), g));
    }
    return i;
}

/* y = a g s */
AVX2 static size_t mul_silu_fwd8(float *y, const float *a, const float *g, const float *s,
                                 size_t m) {
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m256 ag = _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(g + i));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(ag, _mm256_loadu_ps(s + i)));
    }
    return i;
}

/* da += d g s, dg += d a s (1 + g (1 - s)) */
AVX2 static size_t mul_silu_bwd8(float *da, float *dg, const float *dy, const float *a,
                                 const float *g, const float *s, size_t m) {
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), sv = _mm256_loadu_ps(s + i);
        __m256 d = _mm256_loadu_ps(dy + i);
        __m256 ta = _mm256_mul_ps(_mm256_mul_ps(d, gv), sv);
        _mm256_storeu_ps(da + i, _mm256_add_ps(_mm256_loadu_ps(da + i), ta));
        __m256 f = _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, sv)));
        __m256 tg = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(a + i)), sv), f);
        _mm256_storeu_ps(dg + i, _mm256_add_ps(_mm256_loadu_ps(dg + i), tg));
    }
    return i;
}
#else
#define VEC8(call) 0
#endif

static real sigm(real x) {
    return x >= 0 ? R(1.0) / (R(1.0) + r_exp(-x)) : r_exp(x) / (R(1.0) + r_exp(x));
}

static void cpu_act_forward(real *y, const real *x, size_t n, int kind,
                            const struct tb_backend *be) {
    (void)be;
    real t[TB_VCHUNK];
    if (kind == TB_ACT_GELU) {
        /* libm's erf: 1 + erf cancels for negative x, where the vector erf's extra ulp
         * would show as a relative error of 1e-4 in y. */
        for (size_t i = 0; i < n; i++)
            y[i] = R(0.5) * x[i] * (R(1.0) + r_erf(x[i] * (real)M_SQRT1_2));
    } else {
        CHUNKS(n) {
            tb_vsigmoid(t, x + i0, m);
            for (size_t i = VEC8(silu_fwd8(y + i0, x + i0, t, m)); i < m; i++)
                y[i0 + i] = x[i0 + i] * t[i];
        }
    }
}

static void cpu_act_backward(real *dx, const real *dy, const real *x, size_t n, int kind,
                             const struct tb_backend *be) {
    (void)be;
    if (kind == TB_ACT_GELU) {
        /* d/dx [x Φ(x)] = Φ(x) + x φ(x). */
        /* libm, as the forward (1 + erf cancels for negative x). */
        const real inv_sqrt_2pi = (real)(0.5 * M_2_SQRTPI * M_SQRT1_2);
        for (size_t i = 0; i < n; i++) {
            real cdf = R(0.5) * (R(1.0) + r_erf(x[i] * (real)M_SQRT1_2));
            real pdf = inv_sqrt_2pi * r_exp(R(-0.5) * x[i] * x[i]);
            dx[i] += dy[i] * (cdf + x[i] * pdf);
        }
    } else {
        real sg[TB_VCHUNK];
        CHUNKS(n) {
            tb_vsigmoid(sg, x + i0, m);
            for (size_t i = VEC8(silu_bwd8(dx + i0, dy + i0, x + i0, sg, m)); i < m; i++) {
                real s = sg[i], xv = x[i0 + i];
                dx[i0 + i] += dy[i0 + i] * s * (R(1.0) + xv * (R(1.0) - s));
            }
        }
    }
}

static void cpu_softplus_bias_forward(real *y, const real *x, const real *bias, size_t rows,
                                      int cols, const struct tb_backend *be) {
    (void)be;
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t e = r * (size_t)cols + (size_t)c;
            real z = x[e] + bias[c];
            y[e] = z > 20 ? z : r_log1p(r_exp(z));
        }
}

static void cpu_softplus_bias_backward(real *dx, real *dbias, const real *dy, const real *x,
                                       const real *bias, size_t rows, int cols,
                                       const struct tb_backend *be) {
    (void)be;
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t e = r * (size_t)cols + (size_t)c;
            real z = x[e] + bias[c];
            real g = dy[e] * (z > 20 ? R(1.0) : sigm(z));
            dx[e] += g;
            dbias[c] += g;
        }
}

static void cpu_mul_silu_forward(real *y, const real *a, const real *g, size_t rows, int cols,
                                 int lda, int ldg, const struct tb_backend *be) {
    (void)be;
    real sg[TB_VCHUNK];
    for (size_t r = 0; r < rows; r++) {
        const real *gr = g + r * (size_t)ldg, *ar = a + r * (size_t)lda;
        real *yr = y + r * (size_t)cols;
        CHUNKS((size_t)cols) {
            tb_vsigmoid(sg, gr + i0, m);
            for (size_t c = VEC8(mul_silu_fwd8(yr + i0, ar + i0, gr + i0, sg, m)); c < m; c++)
                yr[i0 + c] = ar[i0 + c] * gr[i0 + c] * sg[c];
        }
    }
}

static void cpu_mul_silu_backward(real *da, real *dg, const real *dy, const real *a,
                                  const real *g, size_t rows, int cols, int lda, int ldg,
                                  const struct tb_backend *be) {
    (void)be;
    real sg[TB_VCHUNK];
    for (size_t r = 0; r < rows; r++) {
        const real *gr = g + r * (size_t)ldg, *ar = a + r * (size_t)lda;
        const real *dyr = dy + r * (size_t)cols;
        real *dar = da + r * (size_t)lda, *dgr = dg + r * (size_t)ldg;
        CHUNKS((size_t)cols) {
            tb_vsigmoid(sg, gr + i0, m);
            size_t c0 = VEC8(mul_silu_bwd8(dar + i0, dgr + i0, dyr + i0, ar + i0, gr + i0, sg, m));
            for (size_t c = c0; c < m; c++) {
                real gv = gr[i0 + c], s = sg[c], d = dyr[i0 + c];
                dar[i0 + c] += d * gv * s;
                dgr[i0 + c] += d * ar[i0 + c] * s * (R(1.0) + gv * (R(1.0) - s));
            }
        }
    }
}

static void cpu_copy_cols(real *dst, const real *src, size_t rows, int cols, int ldd, int lds,
                          const struct tb_backend *be) {
    (void)be;
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[r * (size_t)ldd + (size_t)c] = src[r * (size_t)lds + (size_t)c];
}

static void cpu_add_cols(real *dst, const real *src, size_t rows, int cols, int ldd, int lds,
                         const struct tb_backend *be) {
    (void)be;
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[r * (size_t)ldd + (size_t)c] += src[r * (size_t)lds + (size_t)c];
}

void tb_cpu_seq_elem_init(tb_ops_seq *ops);
void tb_cpu_seq_elem_init(tb_ops_seq *ops) {
    ops->act_forward = cpu_act_forward;
    ops->act_backward = cpu_act_backward;
    ops->softplus_bias_forward = cpu_softplus_bias_forward;
    ops->softplus_bias_backward = cpu_softplus_bias_backward;
    ops->mul_silu_forward = cpu_mul_silu_forward;
    ops->mul_silu_backward = cpu_mul_silu_backward;
    ops->copy_cols = cpu_copy_cols;
    ops->add_cols = cpu_add_cols;
}
