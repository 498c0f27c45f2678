/* The selective scan of the Mamba block (MODEL.md 6 'mamba') and its causal depthwise
 * Conv1d, on the CPU.
 *
 * Scan: A = -exp(A_log), h_{-1} = 0,
 *   h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t Bm_t) xc_t,   y_t = h_t Cm_t + D ⊙ xc_t.
 * Every state h_t is stored by the forward (B·T·Di·N reals) and read back by the
 * reverse-time backward; each state component (i, n) is an independent scalar recurrence,
 * so the backward runs one reverse pass per (b, i, n) with a scalar carry
 *   dh_t = dy_t[i] Cm_t[n] + exp(Δ_{t+1} A) dh_{t+1}. */
#include "vmath.h"
#include "../backend.h"
#include <math.h>

/* Forward, per (b, i) and blocks of SCAN_NB state components, so that A = -exp(A_log)
 * is computed once per block rather than once per token. */
#define SCAN_NB 64

static void cpu_scan_forward(real *y, real *states, const real *xc, const real *delta,
                             const real *A_log, const real *Bm, const real *Cm, const real *D,
                             int B, int T, int Di, int N, int ld_bc, const struct tb_backend *be) {
    (void)be;
    size_t sDi = (size_t)Di, sN = (size_t)N, sld = (size_t)ld_bc;
    real A[SCAN_NB];
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Di; i++)
            for (int n0 = 0; n0 < N; n0 += SCAN_NB) {
                int nn = N - n0 < SCAN_NB ? N - n0 : SCAN_NB;
                for (int j = 0; j < nn; j++) A[j] = -r_exp(A_log[(size_t)i * sN + (size_t)(n0 + j)]);
                for (int t = 0; t < T; t++) {
                    size_t row = (size_t)b * (size_t)T + (size_t)t, e = row * sDi + (size_t)i;
                    const real *bt = Bm + row * sld + n0, *ct = Cm + row * sld + n0;
                    real dt = delta[e], x = xc[e];
                    real *hcur = states + e * sN + (size_t)n0;
                    const real *hprev = t > 0 ? hcur - sDi * sN : NULL;
                    real acc = 0, av[SCAN_NB];
                    for (int j = 0; j < nn; j++) av[j] = dt * A[j];
                    tb_vexp(av, av, (size_t)nn);
                    for (int j = 0; j < nn; j++) {
                        real a = av[j];
                        real hv = (hprev ? a * hprev[j] : 0) + dt * bt[j] * x;
                        hcur[j] = hv;
                        acc += hv * ct[j];
                    }
                    y[e] = (n0 == 0 ? D[i] * x : y[e]) + acc;
                }
            }
}

#ifndef TB_REAL_DOUBLE
#include <immintrin.h>
/* The backward's reverse pass for 8 state components n0..n0+7 of one (b, i) at once, in
 * the fp32 build on AVX2: lane j is the scalar recurrence of n0 + j, the same IEEE
 * operations in the same order (no FMA: the library is -ffp-contract=off), and the lanes'
 * terms of ddelta[e] and dxc[e] are added one lane after another, n ascending, as the
 * scalar loop over n adds them: the same bits as the scalar pass, with contiguous loads
 * of states, Bm, Cm instead of one strided load per (t, n). */
__attribute__((target("avx2"))) static void scan_backward8(
    real *dxc, real *ddelta, real *dA_log, real *dBm, real *dCm, const real *dy,
    const real *states, const real *xc, const real *delta, const real *A_log, const real *Bm,
    const real *Cm, size_t r0, int T, int i, int n0, size_t sDi, size_t sN, size_t sld) {
    float A[8], av[TB_VCHUNK * 8], tdd[8], tdx[8];
    for (int j = 0; j < 8; j++) A[j] = -r_exp(A_log[(size_t)i * sN + (size_t)(n0 + j)]);
    const __m256 Av = _mm256_loadu_ps(A);
    __m256 carry = _mm256_setzero_ps(), dAl = _mm256_setzero_ps();
    for (int t = T - 1; t >= 0; t--) {
        size_t row = r0 + (size_t)t, e = row * sDi + (size_t)i;
        int c = (T - 1 - t) % TB_VCHUNK;
        if (c == 0) {
            int m = t + 1 < TB_VCHUNK ? t + 1 : TB_VCHUNK;
            for (int q = 0; q < m; q++) {
                __m256 d = _mm256_set1_ps(delta[(r0 + (size_t)(t - q)) * sDi + (size_t)i]);
                _mm256_storeu_ps(av + 8 * q, _mm256_mul_ps(d, Av));
            }
            tb_vexp(av, av, (size_t)m * 8);
        }
        __m256 dt = _mm256_set1_ps(delta[e]), x = _mm256_set1_ps(xc[e]);
        __m256 dye = _mm256_set1_ps(dy[e]);
        size_t bc = row * sld + (size_t)n0;
        __m256 bn = _mm256_loadu_ps(Bm + bc), cm = _mm256_loadu_ps(Cm + bc);
        __m256 hcur = _mm256_loadu_ps(states + e * sN + (size_t)n0);
        __m256 hprev = t > 0 ? _mm256_loadu_ps(states + (e - sDi) * sN + (size_t)n0)
                             : _mm256_setzero_ps();
        __m256 a = _mm256_loadu_ps(av + 8 * c);
        __m256 dh = _mm256_add_ps(_mm256_mul_ps(dye, cm), carry);
        _mm256_storeu_ps(dCm + bc, _mm256_add_ps(_mm256_loadu_ps(dCm + bc), _mm256_mul_ps(dye, hcur)));
        __m256 da = _mm256_mul_ps(dh, hprev);
        __m256 daa = _mm256_mul_ps(da, a);
        _mm256_storeu_ps(tdd, _mm256_add_ps(_mm256_mul_ps(daa, Av),
                                            _mm256_mul_ps(_mm256_mul_ps(dh, bn), x)));
        dAl = _mm256_add_ps(dAl, _mm256_mul_ps(_mm256_mul_ps(daa, dt), Av));
        __m256 dhdt = _mm256_mul_ps(dh, dt);
        _mm256_storeu_ps(dBm + bc, _mm256_add_ps(_mm256_loadu_ps(dBm + bc), _mm256_mul_ps(dhdt, x)));
        _mm256_storeu_ps(tdx, _mm256_mul_ps(dhdt, bn));
        carry = _mm256_mul_ps(dh, a);
        float sd = ddelta[e], sx = dxc[e];
        for (int j = 0; j < 8; j++) sd += tdd[j];
        for (int j = 0; j < 8; j++) sx += tdx[j];
        ddelta[e] = sd;
        dxc[e] = sx;
    }
    float dal[8];
    _mm256_storeu_ps(dal, dAl);
    for (int j = 0; j < 8; j++) dA_log[(size_t)i * sN + (size_t)(n0 + j)] += dal[j];
}
#endif

static void cpu_scan_backward(real *dxc, real *ddelta, real *dA_log, real *dBm, real *dCm,
                              real *dD, const real *dy, const real *states, const real *xc,
                              const real *delta, const real *A_log, const real *Bm,
                              const real *Cm, const real *D, int B, int T, int Di, int N,
                              int ld_bc, const struct tb_backend *be) {
    (void)be;
    size_t sDi = (size_t)Di, sN = (size_t)N, sld = (size_t)ld_bc;
    for (int b = 0; b < B; b++) {
        size_t r0 = (size_t)b * (size_t)T;
        for (int i = 0; i < Di; i++) {
            real dDi = 0;
            for (int t = 0; t < T; t++) {
                size_t e = (r0 + (size_t)t) * sDi + (size_t)i;
                dDi += dy[e] * xc[e];
                dxc[e] += dy[e] * D[i];
            }
            dD[i] += dDi;
            int n = 0;
#ifndef TB_REAL_DOUBLE
            if (__builtin_cpu_supports("avx2"))
                for (; n + 8 <= N; n += 8)
                    scan_backward8(dxc, ddelta, dA_log, dBm, dCm, dy, states, xc, delta, A_log,
                                   Bm, Cm, r0, T, i, n, sDi, sN, sld);
#endif
            for (; n < N; n++) {
                real A = -r_exp(A_log[(size_t)i * sN + (size_t)n]);
                real carry = 0, dAl = 0, av[TB_VCHUNK];
                for (int t = T - 1; t >= 0; t--) {
                    size_t row = r0 + (size_t)t, e = row * sDi + (size_t)i;
                    /* a_t for the chunk of steps ending at t, as the forward computed them */
                    int c = (T - 1 - t) % TB_VCHUNK;
                    if (c == 0) {
                        int m = t + 1 < TB_VCHUNK ? t + 1 : TB_VCHUNK;
                        for (int q = 0; q < m; q++)
                            av[q] = delta[(r0 + (size_t)(t - q)) * sDi + (size_t)i] * A;
                        tb_vexp(av, av, (size_t)m);
                    }
                    real dt = delta[e], x = xc[e], bn = Bm[row * sld + (size_t)n];
                    real hcur = states[e * sN + (size_t)n];
                    real hprev = t > 0 ? states[(e - sDi) * sN + (size_t)n] : 0;
                    real a = av[c];
                    real dh = dy[e] * Cm[row * sld + (size_t)n] + carry;
                    dCm[row * sld + (size_t)n] += dy[e] * hcur;
                    real da = dh * hprev; /* ∂L/∂a_t */
                    ddelta[e] += da * a * A + dh * bn * x;
                    dAl += da * a * dt * A; /* ∂A/∂A_log = A */
                    dBm[row * sld + (size_t)n] += dh * dt * x;
                    dxc[e] += dh * dt * bn;
                    carry = dh * a;
                }
                dA_log[(size_t)i * sN + (size_t)n] += dAl;
            }
        }
    }
}

static void cpu_conv_causal_forward(real *y, const real *x, const real *w, const real *bias,
                                    int B, int T, int Di, int k, const struct tb_backend *be) {
    (void)be;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * (size_t)T + (size_t)t;
            for (int i = 0; i < Di; i++) {
                real acc = bias[i];
                for (int j = 0; j < k; j++) {
                    int ts = t - (k - 1) + j;
                    if (ts < 0) continue;
                    acc += w[(size_t)i * (size_t)k + (size_t)j] *
                           x[((size_t)b * (size_t)T + (size_t)ts) * (size_t)Di + (size_t)i];
                }
                y[row * (size_t)Di + (size_t)i] = acc;
            }
        }
}

static void cpu_conv_causal_backward(real *dx, real *dw, real *dbias, const real *dy,
                                     const real *x, const real *w, int B, int T, int Di, int k,
                                     const struct tb_backend *be) {
    (void)be;
    for (int i = 0; i < Di; i++) {
        real db = 0;
        for (int j = 0; j < k; j++) {
            real dwj = 0;
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                    int ts = t - (k - 1) + j;
                    if (ts < 0) continue;
                    size_t e = ((size_t)b * (size_t)T + (size_t)t) * (size_t)Di + (size_t)i;
                    size_t es = ((size_t)b * (size_t)T + (size_t)ts) * (size_t)Di + (size_t)i;
                    dwj += dy[e] * x[es];
                    dx[es] += dy[e] * w[(size_t)i * (size_t)k + (size_t)j];
                }
            dw[(size_t)i * (size_t)k + (size_t)j] += dwj;
        }
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                db += dy[((size_t)b * (size_t)T + (size_t)t) * (size_t)Di + (size_t)i];
        dbias[i] += db;
    }
}

void tb_cpu_seq_scan_init(tb_ops_seq *ops);
void tb_cpu_seq_scan_init(tb_ops_seq *ops) {
    ops->scan_forward = cpu_scan_forward;
    ops->scan_backward = cpu_scan_backward;
    ops->scan_state_every = 1;
    ops->conv_causal_forward = cpu_conv_causal_forward;
    ops->conv_causal_backward = cpu_conv_causal_backward;
}
