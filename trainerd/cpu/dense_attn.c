/* Attention core (MODEL.md section 6): softmax or sigmoid over keys with a key padding
 * mask, GQA, dropout on P from the counter-based RNG. A plain row-at-a-time loop; probs
 * (B, H, T, T) are kept for backward. */
#include <math.h>
#include <string.h>
#include "dense_cpu.h"

#define SIG_EPS 1e-6

static real dotr(const real *a, const real *b, int n) {
    real s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void dense_cpu_attn_fwd(real *out, real *probs, real *rowstat, const real *q, const real *k,
                        const real *v, size_t ldq, size_t ldkv, const uint8_t *key_mask,
                        int sigmoid, const tb_dropout *d, uint32_t site, int B, int T, int H,
                        int Hkv, int hs) {
    real scale = (real)(1.0 / sqrt((double)hs));
    int group = H / Hkv;
    int drop = dropout_active(d);
    size_t ldo = (size_t)H * hs;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / group;
            for (int i = 0; i < T; i++) {
                size_t row = ((size_t)b * H + h) * T + i;
                real *p = probs + row * T;
                const real *qi = q + ((size_t)b * T + i) * ldq + (size_t)h * hs;
                real mx = -INFINITY;
                int any = 0;
                for (int j = 0; j < T; j++) {
                    if (key_mask && !key_mask[(size_t)b * T + j]) {
                        p[j] = 0;
                        continue;
                    }
                    const real *kj = k + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
                    p[j] = dotr(qi, kj, hs) * scale;
                    if (p[j] > mx) mx = p[j];
                    any = 1;
                }
                if (sigmoid) {
                    double s = 0;
                    for (int j = 0; j < T; j++) {
                        if (key_mask && !key_mask[(size_t)b * T + j]) continue;
                        p[j] = R(1.0) / (R(1.0) + r_exp(-p[j]));
                        s += p[j];
                    }
                    rowstat[row] = (real)(s + SIG_EPS);
                } else if (any) {
                    double s = 0;
                    for (int j = 0; j < T; j++) {
                        if (key_mask && !key_mask[(size_t)b * T + j]) continue;
                        p[j] = r_exp(p[j] - mx);
                        s += p[j];
                    }
                    real inv = (real)(1.0 / s);
                    for (int j = 0; j < T; j++) p[j] *= inv;
                    rowstat[row] = 0;
                } else {
                    rowstat[row] = 0;
                }
                real den = sigmoid ? rowstat[row] : R(1.0);
                real *o = out + ((size_t)b * T + i) * ldo + (size_t)h * hs;
                for (int c = 0; c < hs; c++) o[c] = 0;
                for (int j = 0; j < T; j++) {
                    if (p[j] == 0) continue;
                    real pj = sigmoid ? p[j] / den : p[j];
                    if (drop) pj *= dropout_factor(d, site, row * T + j);
                    const real *vj = v + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
                    for (int c = 0; c < hs; c++) o[c] += pj * vj[c];
                }
            }
        }
}

void dense_cpu_attn_bwd(real *dq, real *dk, real *dv, real *work, const real *dout,
                        const real *probs, const real *rowstat, const real *q, const real *k,
                        const real *v, size_t ldq, size_t ldkv, const uint8_t *key_mask,
                        int sigmoid, const tb_dropout *d, uint32_t site, int B, int T, int H,
                        int Hkv, int hs) {
    real scale = (real)(1.0 / sqrt((double)hs));
    int group = H / Hkv;
    int drop = dropout_active(d);
    size_t ldo = (size_t)H * hs;
    real *dp = work; /* (T) dL/dP of the current row */
    (void)key_mask;  /* masked keys have probs = 0, skipped below */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / group;
            for (int i = 0; i < T; i++) {
                size_t row = ((size_t)b * H + h) * T + i;
                const real *p = probs + row * T;
                const real *go = dout + ((size_t)b * T + i) * ldo + (size_t)h * hs;
                real den = sigmoid ? rowstat[row] : R(1.0);
                /* dP̃_j = go · v_j; dv_j += P̃_j go; dP_j = dP̃_j m_j; Σ_j P_j dP_j. */
                double s = 0;
                for (int j = 0; j < T; j++) {
                    dp[j] = 0;
                    if (p[j] == 0) continue;
                    real m = drop ? dropout_factor(d, site, row * T + j) : R(1.0);
                    real pj = sigmoid ? p[j] / den : p[j];
                    const real *vj = v + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
                    real *dvj = dv + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
                    real pt = pj * m;
                    if (pt != 0)
                        for (int c = 0; c < hs; c++) dvj[c] += pt * go[c];
                    dp[j] = dotr(go, vj, hs) * m;
                    s += (double)pj * dp[j];
                }
                real sp = (real)s;
                const real *qi = q + ((size_t)b * T + i) * ldq + (size_t)h * hs;
                real *dqi = dq + ((size_t)b * T + i) * ldq + (size_t)h * hs;
                for (int j = 0; j < T; j++) {
                    if (p[j] == 0) continue;
                    /* softmax: ds = P (dP - Σ P dP); sigmoid: ds = W(1-W) (dP - Σ P dP) / D. */
                    real ds = sigmoid ? p[j] * (R(1.0) - p[j]) * (dp[j] - sp) / den
                                      : p[j] * (dp[j] - sp);
                    ds *= scale;
                    const real *kj = k + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
                    real *dkj = dk + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
                    for (int c = 0; c < hs; c++) {
                        dqi[c] += ds * kj[c];
                        dkj[c] += ds * qi[c];
                    }
                }
            }
        }
}
