/* Element-wise ops of the Mamba and MoE layers on the CPU: silu / exact gelu, softplus
 * with a bias (dt_proj), a ⊙ silu(g) gating, column-slice copies. */
#include "../backend.h"
#include <math.h>

static real sigm(real x) {
    return x >= 0 ? R(1.0) / (R(1.0) + r_exp(-x)) : r_exp(x) / (R(1.0) + r_exp(x));
}

static void cpu_act_forward(real *y, const real *x, size_t n, int kind,
                            const struct tb_backend *be) {
    (void)be;
    if (kind == TB_ACT_GELU) {
        for (size_t i = 0; i < n; i++)
            y[i] = R(0.5) * x[i] * (R(1.0) + r_erf(x[i] * (real)M_SQRT1_2));
    } else {
        for (size_t i = 0; i < n; i++) y[i] = x[i] * sigm(x[i]);
    }
}

static void cpu_act_backward(real *dx, const real *dy, const real *x, size_t n, int kind,
                             const struct tb_backend *be) {
    (void)be;
    if (kind == TB_ACT_GELU) {
        /* d/dx [x Φ(x)] = Φ(x) + x φ(x). */
        const real inv_sqrt_2pi = (real)(0.5 * M_2_SQRTPI * M_SQRT1_2);
        for (size_t i = 0; i < n; i++) {
            real cdf = R(0.5) * (R(1.0) + r_erf(x[i] * (real)M_SQRT1_2));
            real pdf = inv_sqrt_2pi * r_exp(R(-0.5) * x[i] * x[i]);
            dx[i] += dy[i] * (cdf + x[i] * pdf);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            real s = sigm(x[i]);
            dx[i] += dy[i] * s * (R(1.0) + x[i] * (R(1.0) - s));
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
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            real gv = g[r * (size_t)ldg + (size_t)c];
            y[r * (size_t)cols + (size_t)c] = a[r * (size_t)lda + (size_t)c] * gv * sigm(gv);
        }
}

static void cpu_mul_silu_backward(real *da, real *dg, const real *dy, const real *a,
                                  const real *g, size_t rows, int cols, int lda, int ldg,
                                  const struct tb_backend *be) {
    (void)be;
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            real gv = g[r * (size_t)ldg + (size_t)c], s = sigm(gv);
            real d = dy[r * (size_t)cols + (size_t)c];
            da[r * (size_t)lda + (size_t)c] += d * gv * s;
            dg[r * (size_t)ldg + (size_t)c] +=
                d * a[r * (size_t)lda + (size_t)c] * s * (R(1.0) + gv * (R(1.0) - s));
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
