/* Decayed linear attention on the CPU: the retention core (MODEL.md 6 'retnet') and the
 * Titan memory read (MODEL.md 6 'mamba', paper eq. 31-32), which is the same kernel:
 * M_t = a M_{t-1} + (1-a) kn_t v_tᵀ, r_t = M_tᵀ qn_t unrolls to
 * r_t = (1-a) Σ_{s≤t} a^{t-s} (qn_t·kn_s) v_s, i.e. retention with γ = a and the scale
 * 1/sqrt(hs) replaced by c = 1-a.
 *
 * Both are evaluated in the quadratic form, per (b, h):
 *   y_t = Σ_s c γ^|t-s| [s ≤ t unless bidirectional] (q_t·k_s) v_s.
 * The backward recomputes q_t·k_s and dy_t·v_s, so the forward stores nothing. Powers of
 * γ are built by repeated multiplication (γ^n = γ^(n-1)·γ), the same table in the
 * forward and the backward. Per (b, h) the products Q Kᵀ, W V, dY Vᵀ and the gradient
 * products go through the core GEMM (each element summed in ascending index order). */
#include "../backend.h"
#include "core_cpu.h"
#include <math.h>
#include <pthread.h>
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

/* Scratch of one thread: pw (T) powers of γ, three (T, T) matrices, two (T) rows. */
static real *decay_scratch(int T) {
    size_t tt = (size_t)T * (size_t)T;
    real *p = malloc((3 * tt + 3 * (size_t)T) * sizeof(real));
    if (!p) abort(); /* out of memory in a kernel: a broken invariant for us */
    return p;
}

/* γ^n for n < T by repeated multiplication (the same values in forward and backward). */
static void decay_powers(real *pw, real g, int T) {
    pw[0] = 1;
    for (int n = 1; n < T; n++) pw[n] = pw[n - 1] * g;
}

static inline int decay_keep(const decay_shape *sh, int t, int s) {
    return s <= t || sh->bidir;
}

/* One head h of every batch row: S = Q Kᵀ, W = c γ^|t-s| S (masked), Y = W V. */
static void decay_forward_h(real *y, const real *q, const real *k, const real *v, real g,
                            real c, const decay_shape *sh, int h, real *scr) {
    int T = sh->T, hs = sh->hs, ld = sh->H * hs;
    real *pw = scr, *S = scr + 3 * (size_t)T;
    decay_powers(pw, g, T);
    for (int b = 0; b < sh->B; b++) {
        size_t o = at(sh, b, 0, h);
        tb_cpu_gemm_serial(S, q + o, k + o, T, T, hs, 0, 1, ld, ld, T, 1, 0);
        for (int t = 0; t < T; t++) {
            real *st = S + (size_t)t * T;
            for (int s = 0; s < T; s++) {
                int n = s <= t ? t - s : s - t;
                st[s] = decay_keep(sh, t, s) ? c * pw[n] * st[s] : 0;
            }
        }
        tb_cpu_gemm_serial(y + o, S, v + o, T, hs, T, 0, 0, T, ld, ld, 1, 0);
    }
}

/* The radial part of the L2 normalisation's backward, per row t of head h: where
 * ‖raw_t‖ > EPS_L2, dx_t -= beta_t · x̂_t / ‖raw_t‖ (x̂ the normalised row). */
static void l2_backward_radial(real *dx, const real *xhat, const real *raw, const real *beta,
                               const decay_shape *sh, int b, int h) {
    int T = sh->T, hs = sh->hs;
    for (int t = 0; t < T; t++) {
        const real *x = raw + at(sh, b, t, h), *xt = xhat + at(sh, b, t, h);
        real nrm = r_sqrt(dotr(x, x, hs));
        if (!(nrm > EPS_L2)) continue;
        real inv = R(1.0) / nrm;
        real *dxt = dx + at(sh, b, t, h);
        for (int d = 0; d < hs; d++) dxt[d] -= inv * beta[t] * xt[d];
    }
}

/* Backward of decay_forward_h. If qraw/kraw are given, q and k are the L2-normalised
 * qraw/kraw (per head, max(‖x‖, EPS_L2)) and the gradients go through the normalisation
 * into dq/dk: with n = max(‖x‖, eps), x̂ = x/n, d x = (d x̂ - x̂ (x̂·d x̂)) / n when
 * ‖x‖ > eps, d x = d x̂ / eps otherwise. dgam/dc may be NULL.
 * With G = dY Vᵀ and S = Q Kᵀ: A = c γ^n G (masked); dq_t = inv_t Σ_s A_ts k_s,
 * dk_s = inv_s Σ_t A_ts q_t, dv_s = Σ_t c γ^n S_ts dy_t. */
static void decay_backward_h(real *dq, real *dk, real *dv, real *dgam, real *dc, const real *dy,
                             const real *q, const real *k, const real *v, const real *qraw,
                             const real *kraw, real g, real c, const decay_shape *sh, int h,
                             real *scr) {
    int T = sh->T, hs = sh->hs, ld = sh->H * hs;
    size_t tt = (size_t)T * (size_t)T;
    real *pw = scr, *betaq = scr + T, *betak = scr + 2 * (size_t)T;
    real *G = scr + 3 * (size_t)T, *S = G + tt, *A2 = S + tt;
    decay_powers(pw, g, T);
    real acc_g = 0, acc_c = 0;
    for (int b = 0; b < sh->B; b++) {
        size_t o = at(sh, b, 0, h);
        tb_cpu_gemm_serial(G, dy + o, v + o, T, T, hs, 0, 1, ld, ld, T, 1, 0);
        tb_cpu_gemm_serial(S, q + o, k + o, T, T, hs, 0, 1, ld, ld, T, 1, 0);
        for (int t = 0; t < T; t++) betaq[t] = betak[t] = 0;
        for (int t = 0; t < T; t++) {
            real inv_t = 1;
            if (qraw) {
                const real *x = qraw + at(sh, b, t, h);
                real nrm = r_sqrt(dotr(x, x, hs));
                inv_t = R(1.0) / (nrm > EPS_L2 ? nrm : (real)EPS_L2);
            }
            real *gt = G + (size_t)t * T, *st = S + (size_t)t * T, *a2 = A2 + (size_t)t * T;
            real bq = 0;
            for (int s = 0; s < T; s++) {
                if (!decay_keep(sh, t, s)) {
                    gt[s] = st[s] = a2[s] = 0;
                    continue;
                }
                int n = s <= t ? t - s : s - t;
                real p = pw[n], gdot = gt[s], score = st[s];
                real alpha = c * p * gdot;
                bq += alpha * score;
                betak[s] += alpha * score;
                acc_c += p * score * gdot;
                if (n > 0) acc_g += c * (real)n * pw[n - 1] * score * gdot;
                gt[s] = inv_t * alpha; /* -> dq */
                a2[s] = alpha;         /* -> dk, scaled by inv_s below */
                st[s] = c * p * score; /* -> dv */
            }
            betaq[t] = bq;
        }
        /* dk's per-key scale inv_s goes onto A2's columns. */
        if (kraw)
            for (int s = 0; s < T; s++) {
                const real *x = kraw + at(sh, b, s, h);
                real nrm = r_sqrt(dotr(x, x, hs));
                real inv_s = R(1.0) / (nrm > EPS_L2 ? nrm : (real)EPS_L2);
                for (int t = 0; t < T; t++) A2[(size_t)t * T + s] *= inv_s;
            }
        tb_cpu_gemm_serial(dq + o, G, k + o, T, hs, T, 0, 0, T, ld, ld, 1, 1);
        tb_cpu_gemm_serial(dk + o, A2, q + o, T, hs, T, 1, 0, T, ld, ld, 1, 1);
        tb_cpu_gemm_serial(dv + o, S, dy + o, T, hs, T, 1, 0, T, ld, ld, 1, 1);
        if (qraw) l2_backward_radial(dq, q, qraw, betaq, sh, b, h);
        if (kraw) l2_backward_radial(dk, k, kraw, betak, sh, b, h);
    }
    if (dgam) dgam[h] += acc_g;
    if (dc) dc[h] += acc_c;
}

/* Heads split over threads by a fixed partition (a head, all its batch rows, on one
 * thread), so every output and dgam/dc element has one writer and one summation order. */
typedef struct decay_job {
    real *y, *dq, *dk, *dv, *dgam, *dc;
    const real *dy, *q, *k, *v, *qraw, *kraw, *gam, *cc;
    const decay_shape *sh;
    int backward, nparts;
} decay_job;

typedef struct decay_part {
    const decay_job *job;
    int part;
} decay_part;

static void *decay_part_run(void *arg) {
    const decay_part *dp = arg;
    const decay_job *J = dp->job;
    int H = J->sh->H;
    int h0 = (int)((int64_t)H * dp->part / J->nparts);
    int h1 = (int)((int64_t)H * (dp->part + 1) / J->nparts);
    if (h0 >= h1) return NULL;
    real *scr = decay_scratch(J->sh->T);
    for (int h = h0; h < h1; h++) {
        if (J->backward)
            decay_backward_h(J->dq, J->dk, J->dv, J->dgam, J->dc, J->dy, J->q, J->k, J->v,
                             J->qraw, J->kraw, J->gam[h], J->cc[h], J->sh, h, scr);
        else
            decay_forward_h(J->y, J->q, J->k, J->v, J->gam[h], J->cc[h], J->sh, h, scr);
    }
    free(scr);
    return NULL;
}

#define DECAY_MAX_THREADS 16

static void decay_run(decay_job *J) {
    if (J->sh->B <= 0 || J->sh->T <= 0 || J->sh->H <= 0) return;
    int n = tb_cpu_threads();
    if (n > DECAY_MAX_THREADS) n = DECAY_MAX_THREADS;
    if (n > J->sh->H) n = J->sh->H;
    if (n < 1) n = 1;
    J->nparts = n;
    decay_part parts[DECAY_MAX_THREADS];
    pthread_t tid[DECAY_MAX_THREADS];
    int started[DECAY_MAX_THREADS] = {0};
    for (int p = 0; p < n; p++) parts[p] = (decay_part){J, p};
    for (int p = 1; p < n; p++)
        started[p] = pthread_create(&tid[p], NULL, decay_part_run, &parts[p]) == 0;
    decay_part_run(&parts[0]);
    for (int p = 1; p < n; p++) {
        if (started[p]) pthread_join(tid[p], NULL);
        else decay_part_run(&parts[p]); /* no thread: same partition, run here */
    }
}

static void decay_forward(real *y, const real *q, const real *k, const real *v,
                          const real *gam, const real *cc, const decay_shape *sh) {
    decay_job J = {.y = y, .q = q, .k = k, .v = v, .gam = gam, .cc = cc, .sh = sh};
    decay_run(&J);
}

static void decay_backward(real *dq, real *dk, real *dv, real *dgam, real *dc, const real *dy,
                           const real *q, const real *k, const real *v, const real *qraw,
                           const real *kraw, const real *gam, const real *cc,
                           const decay_shape *sh) {
    decay_job J = {.dq = dq, .dk = dk, .dv = dv, .dgam = dgam, .dc = dc, .dy = dy, .q = q,
                   .k = k, .v = v, .qraw = qraw, .kraw = kraw, .gam = gam, .cc = cc,
                   .sh = sh, .backward = 1};
    decay_run(&J);
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
