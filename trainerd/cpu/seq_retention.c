/* Decayed linear attention on the CPU: the retention core (MODEL.md 6 'retnet') and the
 * Titan memory read (MODEL.md 6 'mamba', paper eq. 31-32), which is the same kernel:
 * M_t = a M_{t-1} + (1-a) kn_t v_tᵀ, r_t = M_tᵀ qn_t unrolls to
 * r_t = (1-a) Σ_{s≤t} a^{t-s} (qn_t·kn_s) v_s, i.e. retention with γ = a and the scale
 * 1/sqrt(hs) replaced by c = 1-a.
 *
 * Both are evaluated in the quadratic form, per (b, h):
 *   y_t = Σ_s c γ^|t-s| [s ≤ t unless bidirectional] (q_t·k_s) v_s.
 * The backward recomputes q_t·k_s and dy_t·v_s, so the forward stores nothing. Powers of
 * γ are built by repeated multiplication outward from the diagonal, in the same order in
 * the forward and the backward. */
#include "../backend.h"
#include <math.h>
#include <stdlib.h>

#define EPS_L2 1e-12

typedef struct decay_shape {
    int B, T, H, hs, bidir;
} decay_shape;

static inline size_t at(const decay_shape *s, int b, int t, int h) {
    return ((size_t)b * (size_t)s->T + (size_t)t) * (size_t)s->H * (size_t)s->hs +
           (size_t)h * (size_t)s->hs;
}

static inline real dotr(const real *a, const real *b, int n) {
    real acc = 0;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void decay_forward(real *y, const real *q, const real *k, const real *v,
                          const real *gam, const real *cc, const decay_shape *sh) {
    int hs = sh->hs;
    for (int b = 0; b < sh->B; b++)
        for (int h = 0; h < sh->H; h++) {
            real g = gam[h], c = cc[h];
            for (int t = 0; t < sh->T; t++) {
                real *yt = y + at(sh, b, t, h);
                const real *qt = q + at(sh, b, t, h);
                for (int d = 0; d < hs; d++) yt[d] = 0;
                real pw = 1; /* γ^(t-s) */
                for (int s = t; s >= 0; s--) {
                    real w = c * pw * dotr(qt, k + at(sh, b, s, h), hs);
                    const real *vs = v + at(sh, b, s, h);
                    for (int d = 0; d < hs; d++) yt[d] += w * vs[d];
                    pw *= g;
                }
                if (sh->bidir) {
                    pw = g;
                    for (int s = t + 1; s < sh->T; s++) {
                        real w = c * pw * dotr(qt, k + at(sh, b, s, h), hs);
                        const real *vs = v + at(sh, b, s, h);
                        for (int d = 0; d < hs; d++) yt[d] += w * vs[d];
                        pw *= g;
                    }
                }
            }
        }
}

/* Backward of decay_forward. If qraw/kraw are given, q and k are the L2-normalised
 * qraw/kraw (per head, max(‖x‖, EPS_L2)) and the gradients go through the normalisation
 * into dq/dk: with n = max(‖x‖, eps), x̂ = x/n, d x = (d x̂ - x̂ (x̂·d x̂)) / n when
 * ‖x‖ > eps, d x = d x̂ / eps otherwise. dgam/dc may be NULL. */
static void decay_backward(real *dq, real *dk, real *dv, real *dgam, real *dc, const real *dy,
                           const real *q, const real *k, const real *v, const real *qraw,
                           const real *kraw, const real *gam, const real *cc,
                           const decay_shape *sh) {
    int hs = sh->hs, T = sh->T;
    for (int b = 0; b < sh->B; b++)
        for (int h = 0; h < sh->H; h++) {
            real g = gam[h], c = cc[h];
            real acc_g = 0, acc_c = 0;
            /* dq_t = Σ_s c γ^n (dy_t·v_s) k_s, plus ∂/∂γ and ∂/∂c. */
            for (int t = 0; t < T; t++) {
                const real *qt = q + at(sh, b, t, h), *dyt = dy + at(sh, b, t, h);
                real *dqt = dq + at(sh, b, t, h);
                real inv = 1, proj = 0, beta = 0;
                if (qraw) {
                    real nrm = r_sqrt(dotr(qraw + at(sh, b, t, h), qraw + at(sh, b, t, h), hs));
                    proj = nrm > EPS_L2 ? 1 : 0;
                    inv = R(1.0) / (nrm > EPS_L2 ? nrm : (real)EPS_L2);
                }
                for (int pass = 0; pass < 1 + sh->bidir; pass++) {
                    int s0 = pass == 0 ? t : t + 1, s1 = pass == 0 ? -1 : T, ds = pass == 0 ? -1 : 1;
                    real pw = pass == 0 ? 1 : g, pm1 = pass == 0 ? 0 : 1; /* γ^n, γ^(n-1) */
                    int n = pass == 0 ? 0 : 1;
                    for (int s = s0; s != s1; s += ds) {
                        const real *ks = k + at(sh, b, s, h);
                        real gdot = dotr(dyt, v + at(sh, b, s, h), hs);
                        real score = dotr(qt, ks, hs);
                        real alpha = c * pw * gdot;
                        for (int d = 0; d < hs; d++) dqt[d] += inv * alpha * ks[d];
                        beta += alpha * score;
                        acc_c += pw * score * gdot;
                        if (n > 0) acc_g += c * (real)n * pm1 * score * gdot;
                        pm1 = pw;
                        pw *= g;
                        n++;
                    }
                }
                if (proj != 0)
                    for (int d = 0; d < hs; d++) dqt[d] -= inv * beta * qt[d];
            }
            if (dgam) dgam[h] += acc_g;
            if (dc) dc[h] += acc_c;
            /* dk_s = Σ_t c γ^n (dy_t·v_s) q_t;  dv_s = Σ_t c γ^n (q_t·k_s) dy_t. */
            for (int s = 0; s < T; s++) {
                const real *ks = k + at(sh, b, s, h), *vs = v + at(sh, b, s, h);
                real *dks = dk + at(sh, b, s, h), *dvs = dv + at(sh, b, s, h);
                real inv = 1, proj = 0, beta = 0;
                if (kraw) {
                    real nrm = r_sqrt(dotr(kraw + at(sh, b, s, h), kraw + at(sh, b, s, h), hs));
                    proj = nrm > EPS_L2 ? 1 : 0;
                    inv = R(1.0) / (nrm > EPS_L2 ? nrm : (real)EPS_L2);
                }
                for (int pass = 0; pass < 1 + sh->bidir; pass++) {
                    int t0 = pass == 0 ? s : s - 1, t1 = pass == 0 ? T : -1, dt = pass == 0 ? 1 : -1;
                    real pw = pass == 0 ? 1 : g;
                    for (int t = t0; t != t1; t += dt) {
                        const real *qt = q + at(sh, b, t, h), *dyt = dy + at(sh, b, t, h);
                        real gdot = dotr(dyt, vs, hs);
                        real score = dotr(qt, ks, hs);
                        real wg = c * pw * gdot, ws = c * pw * score;
                        for (int d = 0; d < hs; d++) {
                            dks[d] += inv * wg * qt[d];
                            dvs[d] += ws * dyt[d];
                        }
                        beta += wg * score;
                        pw *= g;
                    }
                }
                if (proj != 0)
                    for (int d = 0; d < hs; d++) dks[d] -= inv * beta * ks[d];
            }
        }
}

/* γ_h of MODEL.md 6 'retnet' (in double, then cast). */
static real retention_gamma(int h, int H) {
    if (H == 1) return (real)(1.0 - 1.0 / 32.0);
    double l0 = log(1.0 / 32.0), l1 = log(1.0 / 512.0);
    return (real)(1.0 - exp(l0 + (l1 - l0) * (double)h / (double)(H - 1)));
}

#define SEQ_MAX_HEADS 1024

static void cpu_retention_forward(real *y, const real *q, const real *k, const real *v, int B,
                                  int T, int H, int hs, int bidirectional,
                                  const struct tb_backend *be) {
    (void)be;
    if (H > SEQ_MAX_HEADS) abort();
    real gam[SEQ_MAX_HEADS] = {0}, cc[SEQ_MAX_HEADS] = {0};
    for (int h = 0; h < H; h++) {
        gam[h] = retention_gamma(h, H);
        cc[h] = (real)(1.0 / sqrt((double)hs));
    }
    decay_shape sh = {B, T, H, hs, bidirectional != 0};
    decay_forward(y, q, k, v, gam, cc, &sh);
}

static void cpu_retention_backward(real *dq, real *dk, real *dv, const real *dy, const real *q,
                                   const real *k, const real *v, int B, int T, int H, int hs,
                                   int bidirectional, const struct tb_backend *be) {
    (void)be;
    if (H > SEQ_MAX_HEADS) abort();
    real gam[SEQ_MAX_HEADS] = {0}, cc[SEQ_MAX_HEADS] = {0};
    for (int h = 0; h < H; h++) {
        gam[h] = retention_gamma(h, H);
        cc[h] = (real)(1.0 / sqrt((double)hs));
    }
    decay_shape sh = {B, T, H, hs, bidirectional != 0};
    decay_backward(dq, dk, dv, NULL, NULL, dy, q, k, v, NULL, NULL, gam, cc, &sh);
}

static real sigmoid_r(real x) {
    return x >= 0 ? R(1.0) / (R(1.0) + r_exp(-x)) : r_exp(x) / (R(1.0) + r_exp(x));
}

static void l2norm_heads(real *xn, const real *x, size_t rows, int H, int hs) {
    for (size_t r = 0; r < rows * (size_t)H; r++) {
        const real *xr = x + r * (size_t)hs;
        real *yr = xn + r * (size_t)hs;
        real nrm = r_sqrt(dotr(xr, xr, hs));
        real inv = R(1.0) / (nrm > EPS_L2 ? nrm : (real)EPS_L2);
        for (int d = 0; d < hs; d++) yr[d] = xr[d] * inv;
    }
}

static void cpu_titan_forward(real *r, real *qn, real *kn, const real *q, const real *k,
                              const real *v, const real *decay, int B, int T, int H, int hs,
                              const struct tb_backend *be) {
    (void)be;
    if (H > SEQ_MAX_HEADS) abort();
    real gam[SEQ_MAX_HEADS] = {0}, cc[SEQ_MAX_HEADS] = {0};
    for (int h = 0; h < H; h++) {
        gam[h] = sigmoid_r(decay[h]);
        cc[h] = R(1.0) - gam[h];
    }
    size_t rows = (size_t)B * (size_t)T;
    l2norm_heads(qn, q, rows, H, hs);
    l2norm_heads(kn, k, rows, H, hs);
    decay_shape sh = {B, T, H, hs, 0};
    decay_forward(r, qn, kn, v, gam, cc, &sh);
}

static void cpu_titan_backward(real *dq, real *dk, real *dv, real *ddecay, const real *dr,
                               const real *q, const real *k, const real *qn, const real *kn,
                               const real *v, const real *decay, int B, int T, int H, int hs,
                               const struct tb_backend *be) {
    (void)be;
    if (H > SEQ_MAX_HEADS) abort();
    real gam[SEQ_MAX_HEADS] = {0}, cc[SEQ_MAX_HEADS] = {0}, dg[SEQ_MAX_HEADS] = {0}, dc[SEQ_MAX_HEADS] = {0};
    for (int h = 0; h < H; h++) {
        gam[h] = sigmoid_r(decay[h]);
        cc[h] = R(1.0) - gam[h];
        dg[h] = dc[h] = 0;
    }
    decay_shape sh = {B, T, H, hs, 0};
    decay_backward(dq, dk, dv, dg, dc, dr, qn, kn, v, q, k, gam, cc, &sh);
    /* a = σ(decay), c = 1 - a: d decay = (dγ - dc) a (1 - a). */
    for (int h = 0; h < H; h++) ddecay[h] += (dg[h] - dc[h]) * gam[h] * (R(1.0) - gam[h]);
}

void tb_cpu_seq_retention_init(tb_ops_seq *ops);
void tb_cpu_seq_retention_init(tb_ops_seq *ops) {
    ops->retention_forward = cpu_retention_forward;
    ops->retention_backward = cpu_retention_backward;
    ops->titan_forward = cpu_titan_forward;
    ops->titan_backward = cpu_titan_backward;
}
