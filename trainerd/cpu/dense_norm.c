/* The five norms of MODEL.md section 3 (types of layers/norm.h). Per-token statistics in
 * double; scalar-parameter gradients (dyt alpha, derf alpha and s) summed in double. */
#include <math.h>
#include <string.h>
#include "dense_cpu.h"
#include "vmath.h"
#include "../layers/norm.h"

/* Loops over a row's [0, C) in stack-sized chunks: j0, m. */
#define ROW_CHUNKS(C)                                                                      \
    for (int j0 = 0, m; j0 < (C) && (m = (C) - j0 < TB_VCHUNK ? (C) - j0 : TB_VCHUNK);    \
         j0 += TB_VCHUNK)

#define DT_EPS 1e-6 /* dynamic_tanh: outside the sqrt */
#define LN_EPS 1e-5
#define RMS_EPS 1e-6

static void row_mean_var(const real *x, int C, int unbiased, real *mean, double *var) {
    double s = 0;
    for (int j = 0; j < C; j++) s += x[j];
    real m = (real)(s / C);
    double v = 0;
    for (int j = 0; j < C; j++) {
        double d = (double)(x[j] - m);
        v += d * d;
    }
    *mean = m;
    *var = v / (unbiased ? C - 1 : C);
}

void dense_cpu_norm_fwd(real *y, real *stats, const real *x, const real *const *prm, int type,
                        size_t n, int C) {
    for (size_t t = 0; t < n; t++) {
        const real *xr = x + t * C;
        real *yr = y + t * C;
        switch ((tb_norm_type)type) {
        case TB_NORM_DYNAMIC_TANH: {
            real mean;
            double var;
            row_mean_var(xr, C, 1, &mean, &var);
            real sd = (real)sqrt(var);
            real r = R(1.0) / (sd + (real)DT_EPS);
            for (int j = 0; j < C; j++) yr[j] = prm[0][j] * ((xr[j] - mean) * r) + prm[1][j];
            tb_vtanh(yr, yr, (size_t)C);
            stats[2 * t] = mean;
            stats[2 * t + 1] = sd;
            break;
        }
        case TB_NORM_DYT: {
            real a = prm[0][0], th[TB_VCHUNK];
            ROW_CHUNKS(C) {
                for (int j = 0; j < m; j++) th[j] = a * xr[j0 + j];
                tb_vtanh(th, th, (size_t)m);
                for (int j = 0; j < m; j++) yr[j0 + j] = prm[1][j0 + j] * th[j] + prm[2][j0 + j];
            }
            break;
        }
        case TB_NORM_DERF: {
            real a = prm[0][0], s = prm[1][0], ef[TB_VCHUNK];
            ROW_CHUNKS(C) {
                for (int j = 0; j < m; j++) ef[j] = a * xr[j0 + j] + s;
                tb_verf(ef, ef, (size_t)m);
                for (int j = 0; j < m; j++) yr[j0 + j] = prm[2][j0 + j] * ef[j] + prm[3][j0 + j];
            }
            break;
        }
        case TB_NORM_LAYER_NORM: {
            real mean;
            double var;
            row_mean_var(xr, C, 0, &mean, &var);
            real rstd = (real)(1.0 / sqrt(var + LN_EPS));
            for (int j = 0; j < C; j++) yr[j] = ((xr[j] - mean) * rstd) * prm[0][j] + prm[1][j];
            stats[2 * t] = mean;
            stats[2 * t + 1] = rstd;
            break;
        }
        case TB_NORM_RMS_NORM: {
            double s = 0;
            for (int j = 0; j < C; j++) s += (double)xr[j] * xr[j];
            real r = (real)(1.0 / sqrt(s / C + RMS_EPS));
            for (int j = 0; j < C; j++) yr[j] = (xr[j] * r) * prm[0][j];
            stats[2 * t] = r;
            stats[2 * t + 1] = 0;
            break;
        }
        }
    }
}

/* dynamic_tanh's y = tanh(α ⊙ x̂ + β) for row elements [j0, j0 + m), x̂ = (x - mean) r:
 * the forward's values, recomputed by the backward's two passes. */
static void dyn_tanh_chunk(real *yc, const real *const *prm, const real *x, int j0, int m,
                           real mean, real r) {
    for (int j = 0; j < m; j++) yc[j] = prm[0][j0 + j] * ((x[j] - mean) * r) + prm[1][j0 + j];
    tb_vtanh(yc, yc, (size_t)m);
}

void dense_cpu_norm_bwd(real *dx, real *const *dprm, const real *dy, const real *stats,
                        const real *x, const real *const *prm, int type, size_t n, int C) {
    double ga = 0, gs = 0; /* scalar-parameter gradients */
    const double two_over_sqrt_pi = 1.1283791670955126;
    for (size_t t = 0; t < n; t++) {
        const real *xr = x + t * C;
        const real *g = dy + t * C;
        real *dxr = dx + t * C;
        switch ((tb_norm_type)type) {
        case TB_NORM_DYNAMIC_TANH: {
            /* x̂ = d r, r = 1/(σ+ε), σ² = Σd²/(C-1):
             * dx_i = r (dx̂_i - mean dx̂) - r² (Σ_j dx̂_j d_j) d_i / ((C-1) σ). */
            real mean = stats[2 * t], sd = stats[2 * t + 1];
            real r = R(1.0) / (sd + (real)DT_EPS);
            double sg = 0, sgd = 0;
            real yc[TB_VCHUNK];
            ROW_CHUNKS(C) {
                dyn_tanh_chunk(yc, prm, xr + j0, j0, m, mean, r);
                for (int jj = 0; jj < m; jj++) {
                    int j = j0 + jj;
                    real xh = (xr[j] - mean) * r;
                    real yv = yc[jj];
                    real dz = g[j] * (R(1.0) - yv * yv);
                    dprm[0][j] += dz * xh;
                    dprm[1][j] += dz;
                    real dxh = dz * prm[0][j];
                    sg += dxh;
                    sgd += (double)dxh * (double)(xr[j] - mean);
                }
            }
            real mg = (real)(sg / C);
            real coef = sd > 0 ? (real)((double)r * r * sgd / ((C - 1) * (double)sd)) : R(0.0);
            ROW_CHUNKS(C) {
                dyn_tanh_chunk(yc, prm, xr + j0, j0, m, mean, r);
                for (int jj = 0; jj < m; jj++) {
                    int j = j0 + jj;
                    real yv = yc[jj];
                    real dxh = g[j] * (R(1.0) - yv * yv) * prm[0][j];
                    dxr[j] += r * (dxh - mg) - coef * (xr[j] - mean);
                }
            }
            break;
        }
        case TB_NORM_DYT: {
            real a = prm[0][0], tc[TB_VCHUNK];
            ROW_CHUNKS(C) {
                for (int j = 0; j < m; j++) tc[j] = a * xr[j0 + j];
                tb_vtanh(tc, tc, (size_t)m);
                for (int jj = 0; jj < m; jj++) {
                    int j = j0 + jj;
                    real th = tc[jj];
                    dprm[1][j] += g[j] * th;
                    dprm[2][j] += g[j];
                    real du = g[j] * prm[1][j] * (R(1.0) - th * th);
                    ga += (double)du * xr[j];
                    dxr[j] += du * a;
                }
            }
            break;
        }
        case TB_NORM_DERF: {
            real a = prm[0][0], s = prm[1][0], ef[TB_VCHUNK], ex[TB_VCHUNK];
            ROW_CHUNKS(C) {
                for (int j = 0; j < m; j++) {
                    real u = a * xr[j0 + j] + s;
                    ef[j] = u;
                    ex[j] = -u * u;
                }
                tb_verf(ef, ef, (size_t)m);
                tb_vexp(ex, ex, (size_t)m);
                for (int jj = 0; jj < m; jj++) {
                    int j = j0 + jj;
                    dprm[2][j] += g[j] * ef[jj];
                    dprm[3][j] += g[j];
                    real du = g[j] * prm[2][j] * (real)two_over_sqrt_pi * ex[jj];
                    ga += (double)du * xr[j];
                    gs += du;
                    dxr[j] += du * a;
                }
            }
            break;
        }
        case TB_NORM_LAYER_NORM: {
            real mean = stats[2 * t], rstd = stats[2 * t + 1];
            double sg = 0, sgx = 0;
            for (int j = 0; j < C; j++) {
                real xh = (xr[j] - mean) * rstd;
                dprm[0][j] += g[j] * xh;
                dprm[1][j] += g[j];
                real gw = g[j] * prm[0][j];
                sg += gw;
                sgx += (double)gw * xh;
            }
            real mg = (real)(sg / C), mgx = (real)(sgx / C);
            for (int j = 0; j < C; j++) {
                real xh = (xr[j] - mean) * rstd;
                dxr[j] += rstd * (g[j] * prm[0][j] - mg - xh * mgx);
            }
            break;
        }
        case TB_NORM_RMS_NORM: {
            /* y = x r w, r = (mean x² + ε)^(-1/2): dx_i = r g_i w_i - r³ x_i Σ_j(g_j w_j x_j)/C. */
            real r = stats[2 * t];
            double sgx = 0;
            for (int j = 0; j < C; j++) {
                dprm[0][j] += g[j] * (xr[j] * r);
                sgx += (double)(g[j] * prm[0][j]) * xr[j];
            }
            real coef = (real)((double)r * r * r * sgx / C);
            for (int j = 0; j < C; j++) dxr[j] += r * g[j] * prm[0][j] - coef * xr[j];
            break;
        }
        }
    }
    if (type == TB_NORM_DYT) dprm[0][0] += (real)ga;
    if (type == TB_NORM_DERF) {
        dprm[0][0] += (real)ga;
        dprm[1][0] += (real)gs;
    }
}

void dense_cpu_norm_bwd_to(real *dx, const real *base, real *const *dprm, const real *dy,
                           const real *stats, const real *x, const real *const *prm, int type,
                           size_t n, int C) {
    if (base != dx) {
        if (base) memmove(dx, base, n * (size_t)C * sizeof *dx);
        else memset(dx, 0, n * (size_t)C * sizeof *dx); /* +0.0: all zero bits */
    }
    dense_cpu_norm_bwd(dx, dprm, dy, stats, x, prm, type, n, C);
}
