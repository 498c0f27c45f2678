/* Attention core (MODEL.md section 6): softmax or sigmoid over keys with a key padding
 * mask, GQA, dropout on P from the counter-based RNG; probs (B, H, T, T) are kept for
 * backward.
 *
 * Per (b, h) the products QKᵀ, P̃V, dO Vᵀ, P̃ᵀdO, dS K and dSᵀQ go through the core GEMM
 * (each element a sum in ascending index order); the row-wise softmax and dropout steps
 * are plain loops. Work is split over threads by a fixed partition of the (b, kv head)
 * pairs: a task owns every query head of its kv group, so dk/dv of a pair are written by
 * one thread, heads in ascending order, and results do not depend on the thread count. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "vmath.h"
#include "core_cpu.h"
#include "dense_cpu.h"

#define SIG_EPS 1e-6
#define ATTN_MAX_THREADS 16

typedef struct attn_job {
    real *out, *probs, *rowstat, *dq, *dk, *dv;
    const real *dout, *cprobs, *crowstat, *q, *k, *v;
    size_t ldq, ldkv;
    const uint8_t *key_mask;
    int sigmoid;
    const tb_dropout *d;
    uint32_t site;
    int B, T, H, Hkv, hs;
    int backward;
    int ntasks, nparts;
} attn_job;

/* Forward of one (b, h): scratch pt (T, T) holds P̃ = P (/ D) ⊙ mask. */
static void attn_fwd_bh(const attn_job *J, int b, int h, real *pt) {
    int T = J->T, hs = J->hs, kh = h / (J->H / J->Hkv);
    real scale = (real)(1.0 / sqrt((double)hs));
    int drop = dropout_active(J->d);
    size_t ldo = (size_t)J->H * hs;
    const uint8_t *km = J->key_mask ? J->key_mask + (size_t)b * T : NULL;
    size_t row0 = ((size_t)b * J->H + h) * T;
    real *P = J->probs + row0 * T;
    const real *qb = J->q + (size_t)b * T * J->ldq + (size_t)h * hs;
    const real *kb = J->k + (size_t)b * T * J->ldkv + (size_t)kh * hs;
    const real *vb = J->v + (size_t)b * T * J->ldkv + (size_t)kh * hs;
    tb_cpu_gemm_serial(P, qb, kb, T, T, hs, 0, 1, (int)J->ldq, (int)J->ldkv, T, scale, 0);
    for (int i = 0; i < T; i++) {
        real *p = P + (size_t)i * T, *ptr = pt + (size_t)i * T;
        size_t row = row0 + i;
        real mx = -INFINITY;
        int any = 0;
        for (int j = 0; j < T; j++) {
            if (km && !km[j]) {
                p[j] = 0;
                continue;
            }
            if (p[j] > mx) mx = p[j];
            any = 1;
        }
        if (J->sigmoid) {
            double s = 0;
            for (int j = 0; j < T; j++) p[j] = -p[j];
            tb_vexp(p, p, (size_t)T);
            for (int j = 0; j < T; j++) {
                if (km && !km[j]) {
                    p[j] = 0;
                    continue;
                }
                p[j] = R(1.0) / (R(1.0) + p[j]);
                s += p[j];
            }
            J->rowstat[row] = (real)(s + SIG_EPS);
        } else if (any) {
            double s = 0;
            for (int j = 0; j < T; j++) p[j] = p[j] - mx;
            tb_vexp(p, p, (size_t)T);
            for (int j = 0; j < T; j++) {
                if (km && !km[j]) {
                    p[j] = 0;
                    continue;
                }
                s += p[j];
            }
            real inv = (real)(1.0 / s);
            for (int j = 0; j < T; j++) p[j] *= inv;
            J->rowstat[row] = (real)((double)mx + log(s));
        } else {
            J->rowstat[row] = 0;
        }
        if (J->sigmoid) {
            real den = J->rowstat[row];
            for (int j = 0; j < T; j++) ptr[j] = p[j] / den;
        } else {
            memcpy(ptr, p, (size_t)T * sizeof(real));
        }
        if (drop) {
            real m[1024];
            for (int j0 = 0; j0 < T; j0 += 1024) {
                int n = T - j0 < 1024 ? T - j0 : 1024;
                dense_cpu_dropout_factors(m, J->d, J->site, row * T + j0, (size_t)n);
                for (int j = 0; j < n; j++) ptr[j0 + j] *= m[j];
            }
        }
    }
    real *ob = J->out + (size_t)b * T * ldo + (size_t)h * hs;
    tb_cpu_gemm_serial(ob, pt, vb, T, hs, T, 0, 0, T, (int)J->ldkv, (int)ldo, 1, 0);
}

/* Backward of one (b, h): scratch pt (T, T) for P̃, g (T, T) for dP̃ then dS. */
static void attn_bwd_bh(const attn_job *J, int b, int h, real *pt, real *g) {
    int T = J->T, hs = J->hs, kh = h / (J->H / J->Hkv);
    real scale = (real)(1.0 / sqrt((double)hs));
    int drop = dropout_active(J->d);
    size_t ldo = (size_t)J->H * hs;
    size_t row0 = ((size_t)b * J->H + h) * T;
    const real *P = J->cprobs + row0 * T;
    const real *go = J->dout + (size_t)b * T * ldo + (size_t)h * hs;
    const real *qb = J->q + (size_t)b * T * J->ldq + (size_t)h * hs;
    const real *kb = J->k + (size_t)b * T * J->ldkv + (size_t)kh * hs;
    const real *vb = J->v + (size_t)b * T * J->ldkv + (size_t)kh * hs;
    real *dqb = J->dq + (size_t)b * T * J->ldq + (size_t)h * hs;
    real *dkb = J->dk + (size_t)b * T * J->ldkv + (size_t)kh * hs;
    real *dvb = J->dv + (size_t)b * T * J->ldkv + (size_t)kh * hs;
    /* dP̃ = dO Vᵀ */
    tb_cpu_gemm_serial(g, go, vb, T, T, hs, 0, 1, (int)ldo, (int)J->ldkv, T, 1, 0);
    for (int i = 0; i < T; i++) {
        size_t row = row0 + i;
        const real *p = P + (size_t)i * T;
        real *ptr = pt + (size_t)i * T, *dp = g + (size_t)i * T;
        real den = J->sigmoid ? J->crowstat[row] : R(1.0);
        real m[1024];
        /* P̃_j = P_j m_j (/ D); dP_j = dP̃_j m_j; Σ_j P_j dP_j. */
        double s = 0;
        for (int j0 = 0; j0 < T; j0 += 1024) {
            int n = T - j0 < 1024 ? T - j0 : 1024;
            if (drop) dense_cpu_dropout_factors(m, J->d, J->site, row * T + j0, (size_t)n);
            for (int jj = 0; jj < n; jj++) {
                int j = j0 + jj;
                if (p[j] == 0) {
                    ptr[j] = 0;
                    dp[j] = 0;
                    continue;
                }
                real mj = drop ? m[jj] : R(1.0);
                real pj = J->sigmoid ? p[j] / den : p[j];
                ptr[j] = pj * mj;
                dp[j] *= mj;
                s += (double)pj * dp[j];
            }
        }
        real sp = (real)s;
        /* softmax: ds = P (dP - Σ P dP); sigmoid: ds = W(1-W) (dP - Σ P dP) / D. */
        for (int j = 0; j < T; j++) {
            if (p[j] == 0) continue;
            real ds = J->sigmoid ? p[j] * (R(1.0) - p[j]) * (dp[j] - sp) / den
                                 : p[j] * (dp[j] - sp);
            dp[j] = ds * scale;
        }
    }
    /* dV += P̃ᵀ dO; dQ += dS K; dK += dSᵀ Q (accumulated onto the gradients). */
    tb_cpu_gemm_serial(dvb, pt, go, T, hs, T, 1, 0, T, (int)ldo, (int)J->ldkv, 1, 1);
    tb_cpu_gemm_serial(dqb, g, kb, T, hs, T, 0, 0, T, (int)J->ldkv, (int)J->ldq, 1, 1);
    tb_cpu_gemm_serial(dkb, g, qb, T, hs, T, 1, 0, T, (int)J->ldq, (int)J->ldkv, 1, 1);
}

typedef struct attn_part {
    const attn_job *job;
    int part;
} attn_part;

static void *attn_part_run(void *arg) {
    const attn_part *ap = arg;
    const attn_job *J = ap->job;
    int t0 = (int)((int64_t)J->ntasks * ap->part / J->nparts);
    int t1 = (int)((int64_t)J->ntasks * (ap->part + 1) / J->nparts);
    if (t0 >= t1) return NULL;
    size_t tt = (size_t)J->T * (size_t)J->T;
    real *scr = malloc(2 * tt * sizeof(real));
    if (!scr) abort(); /* out of memory in a kernel: a broken invariant for us */
    int group = J->H / J->Hkv;
    for (int t = t0; t < t1; t++) {
        int b = t / J->Hkv, kh = t % J->Hkv;
        for (int h = kh * group; h < (kh + 1) * group; h++) {
            if (J->backward) attn_bwd_bh(J, b, h, scr, scr + tt);
            else attn_fwd_bh(J, b, h, scr);
        }
    }
    free(scr);
    return NULL;
}

/* Runs the tasks (b, kv head) over min(threads, tasks) parts; part 0 on this thread. */
static void attn_run(attn_job *J) {
    J->ntasks = J->B * J->Hkv;
    int n = tb_cpu_threads();
    if (n > ATTN_MAX_THREADS) n = ATTN_MAX_THREADS;
    if (n > J->ntasks) n = J->ntasks;
    if (n < 1) n = 1;
    J->nparts = n;
    attn_part parts[ATTN_MAX_THREADS];
    pthread_t tid[ATTN_MAX_THREADS];
    int started[ATTN_MAX_THREADS] = {0};
    for (int p = 0; p < n; p++) parts[p] = (attn_part){J, p};
    for (int p = 1; p < n; p++)
        started[p] = pthread_create(&tid[p], NULL, attn_part_run, &parts[p]) == 0;
    attn_part_run(&parts[0]);
    for (int p = 1; p < n; p++) {
        if (started[p]) pthread_join(tid[p], NULL);
        else attn_part_run(&parts[p]); /* no thread: same partition, run here */
    }
}

void dense_cpu_attn_fwd(real *out, real *probs, real *rowstat, const real *q, const real *k,
                        const real *v, size_t ldq, size_t ldkv, const uint8_t *key_mask,
                        int sigmoid, const tb_dropout *d, uint32_t site, int B, int T, int H,
                        int Hkv, int hs) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    attn_job J = {.out = out, .probs = probs, .rowstat = rowstat, .q = q, .k = k, .v = v,
                  .ldq = ldq, .ldkv = ldkv, .key_mask = key_mask, .sigmoid = sigmoid, .d = d,
                  .site = site, .B = B, .T = T, .H = H, .Hkv = Hkv, .hs = hs, .backward = 0};
    attn_run(&J);
}

void dense_cpu_attn_bwd(real *dq, real *dk, real *dv, real *work, const real *dout,
                        const real *out, const real *probs, const real *rowstat, const real *q, const real *k,
                        const real *v, size_t ldq, size_t ldkv, const uint8_t *key_mask,
                        int sigmoid, const tb_dropout *d, uint32_t site, int B, int T, int H,
                        int Hkv, int hs) {
    (void)work;     /* the per-thread scratch is allocated per call */
    (void)out;      /* P is kept: Σ P dP comes from it */
    (void)key_mask; /* masked keys have probs = 0, skipped */
    if (B <= 0 || T <= 0 || H <= 0) return;
    attn_job J = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .cprobs = probs,
                  .crowstat = rowstat, .q = q, .k = k, .v = v, .ldq = ldq, .ldkv = ldkv,
                  .key_mask = key_mask, .sigmoid = sigmoid, .d = d, .site = site, .B = B,
                  .T = T, .H = H, .Hkv = Hkv, .hs = hs, .backward = 1};
    attn_run(&J);
}
