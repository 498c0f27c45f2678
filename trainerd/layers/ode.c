#include "ode.h"
#include "../backend.h"

/* Activations of one evaluation of f (n = B·T): zin (n, C) its input, norm stats, qkv
 * act, qkv (n, 3C), probs (B, H, T, T), rowstat (B, H, T), a (n, C), o act. Evaluations
 * are stored step-major; after them, k1 = f(z) of each step (n, C), which L_ode's
 * gradient reads. Not kept: xn = Nf(zin) (rebuilt by the backward from zin, the same
 * bits) and the stages' k beyond k1 (consumed by the forward as they come). */
typedef struct ode_layout {
    size_t zin, nact, qact, qkv, probs, rowstat, a, oact, per_eval, k1;
} ode_layout;

static int stages(const tb_ode *p) {
    return p->rk4 ? 4 : 1;
}

static ode_layout layout(const tb_ode *p, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C;
    ode_layout l;
    size_t o = 0;
    l.zin = o, o += n * C;
    l.nact = o, o += norm_act_count(p->norm.type, n);
    l.qact = o, o += linear_act_count(&p->qkv, n);
    l.qkv = o, o += 3 * n * C;
    l.probs = o, o += p->recompute_probs ? 0 : (size_t)B * p->H * T * T;
    l.rowstat = o, o += (size_t)B * p->H * T;
    l.a = o, o += n * C;
    l.oact = o, o += linear_act_count(&p->o, n);
    l.per_eval = o;
    l.k1 = o * (size_t)p->steps * (size_t)stages(p);
    return l;
}

/* k1 of step s. */
static size_t k1_at(const ode_layout *l, size_t nc, int s) {
    return l->k1 + (size_t)s * nc;
}

size_t ode_act_count(const tb_ode *p, int B, int T) {
    return layout(p, B, T).k1 + (size_t)p->steps * (size_t)B * (size_t)T * (size_t)p->C;
}

static size_t lin_scratch(const tb_ode *p, size_t n) {
    size_t a = linear_scratch_count(&p->qkv, n), b = linear_scratch_count(&p->o, n);
    return a > b ? a : b;
}

/* Scratch (n, C) parts: xn = Nf(zin) and its norm stats (forward and backward); the
 * forward's stage k; the backward's gz, acc, gk, gin, da, dxn, dqkv (3C), linear scratch,
 * work (T). */
typedef struct ode_scr {
    real *xn, *nact, *k, *gz, *acc, *gk, *gin, *da, *dxn, *dqkv, *lin, *work;
    size_t total;
} ode_scr;

static ode_scr scr_layout(real *base, const tb_ode *p, int B, int T) {
    size_t n = (size_t)B * T, nc = n * (size_t)p->C, off = 0;
    ode_scr s;
    real **part[11] = {&s.xn, &s.nact, &s.k, &s.gz, &s.acc, &s.gk, &s.gin, &s.da, &s.dxn, &s.dqkv, &s.lin};
    size_t len[11] = {nc, norm_act_count(p->norm.type, n), nc, nc, nc, nc, nc, nc, nc, 3 * nc, lin_scratch(p, n)};
    for (int i = 0; i < 11; i++) {
        *part[i] = base ? base + off : NULL;
        off += (len[i] + 3) & ~(size_t)3;
    }
    s.work = base ? base + off : NULL;
    s.total = off + (size_t)T;
    return s;
}

size_t ode_scratch_count(const tb_ode *p, int B, int T) {
    return scr_layout(NULL, p, B, T).total;
}

/* k = f(zin) for the evaluation whose activations start at e; xn: scratch. */
static void f_forward(const tb_backend *be, real *k, real *e, real *xn, const ode_layout *l,
                      const tb_ode *p, const uint8_t *key_mask, const tb_dropout *d,
                      uint32_t site, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C;
    int hs = p->C / p->H;
    norm_forward(be, xn, e + l->nact, e + l->zin, &p->norm, n);
    linear_forward(be, e + l->qkv, e + l->qact, xn, &p->qkv, n);
    real *qkv = e + l->qkv;
    be->dense.attn_fwd(e + l->a, p->recompute_probs ? NULL : e + l->probs, e + l->rowstat, qkv,
                       qkv + C, qkv + 2 * C,
                       3 * C, 3 * C, key_mask, 0, d, site, B, T, p->H, p->H, hs);
    linear_forward(be, k, e + l->oact, e + l->a, &p->o, n);
}

double ode_lode(const double *k1_sq, const tb_ode *p, int B, int T) {
    size_t nc = (size_t)B * (size_t)T * (size_t)p->C;
    double lode = 0;
    for (int s = 0; s < p->steps; s++) lode += k1_sq[s] / (double)nc;
    return lode;
}

void ode_forward(const tb_backend *be, real *out, real *act, real *scratch, const real *u,
                 const tb_ode *p, const uint8_t *key_mask, const tb_dropout *d, int B, int T,
                 double *k1_sq) {
    ode_layout l = layout(p, B, T);
    ode_scr w = scr_layout(scratch, p, B, T);
    size_t n = (size_t)B * T, nc = n * (size_t)p->C;
    int ns = stages(p);
    real dt = R(1.0) / (real)p->steps;
    /* z of step s is its first evaluation's stored input; each step's sums go straight
     * into the next step's (out after the last), the values of keeping z in out and
     * copying it at each step */
    real *z = act + l.zin;
    be->core.copy(z, u, nc);
    for (int s = 0; s < p->steps; s++) {
        real *ev[4];
        for (int st = 0; st < ns; st++) ev[st] = act + l.per_eval * ((size_t)s * ns + st);
        real *k1 = act + k1_at(&l, nc, s);
        real *dst = s + 1 < p->steps ? act + l.per_eval * ((size_t)(s + 1) * ns) + l.zin : out;
        uint32_t site = TB_DROPOUT_SITE_ATTN + (uint32_t)(s * ns);
        f_forward(be, k1, ev[0], w.xn, &l, p, key_mask, d, site, B, T);
        if (!p->rk4) {
            be->dense.axpy(dst, z, dt, k1, nc);
            z = dst;
            continue;
        }
        /* k2 = f(z + dt/2 k1), k3 = f(z + dt/2 k2), k4 = f(z + dt k3); z + dt/6 (k1 + 2 k2 +
         * 2 k3 + k4) added stage by stage into dst (the same sums in the same order as
         * adding the four after the last stage) */
        real c[3] = {dt / 2, dt / 2, dt};
        real wt[4] = {dt / 6, dt / 3, dt / 3, dt / 6};
        be->dense.axpy(dst, z, wt[0], k1, nc);
        for (int st = 1; st < 4; st++) {
            be->dense.axpy(ev[st] + l.zin, z, c[st - 1], st == 1 ? k1 : w.k, nc);
            f_forward(be, w.k, ev[st], w.xn, &l, p, key_mask, d, site + (uint32_t)st, B, T);
            be->dense.axpy(dst, dst, wt[st], w.k, nc);
        }
        z = dst;
    }
    /* L_ode's Σ k1² per step (each step's k1 stays in its own slice of act) into the
     * caller's backend buffer, read later with other results (ode_lode) */
    for (int s = 0; s < p->steps; s++) be->dense.sum_squares_dev(k1_sq + s, act + k1_at(&l, nc, s), nc);
}

/* gin = fᵀ(gk) for the evaluation at e (xn rebuilt from zin in w->xn), the bits of
 * zeroing gin and adding. */
static void f_backward(const tb_backend *be, real *gin, const real *gk, const real *e,
                       const ode_layout *l, const tb_ode *p, const uint8_t *key_mask,
                       const tb_dropout *d, uint32_t site, const ode_scr *w, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C;
    int hs = p->C / p->H;
    real *da = w->da, *dqkv = w->dqkv, *dxn = w->dxn;
    linear_backward_set(be, da, w->lin, gk, e + l->oact, e + l->a, &p->o, n);
    const real *qkv = e + l->qkv;
    be->dense.attn_bwd_set(dqkv, dqkv + C, dqkv + 2 * C, w->work, da, e + l->a,
                       p->recompute_probs ? NULL : e + l->probs, e + l->rowstat, qkv,
                       qkv + C, qkv + 2 * C, 3 * C, 3 * C, key_mask, 0, d, site, B, T, p->H,
                       p->H, hs);
    norm_forward(be, w->xn, w->nact, e + l->zin, &p->norm, n);
    linear_backward_set(be, dxn, w->lin, dqkv, e + l->qact, w->xn, &p->qkv, n);
    norm_backward_to(be, gin, NULL, dxn, e + l->nact, e + l->zin, &p->norm, n);
}

void ode_backward(const tb_backend *be, real *du, real *scratch, const real *dout,
                  const real *act, const real *u, const tb_ode *p, const uint8_t *key_mask,
                  const tb_dropout *d, real g_ode, int B, int T) {
    (void)u; /* stored as the first evaluation's zin */
    ode_layout l = layout(p, B, T);
    ode_scr w = scr_layout(scratch, p, B, T);
    size_t n = (size_t)B * T, nc = n * (size_t)p->C;
    int ns = stages(p);
    real dt = R(1.0) / (real)p->steps;
    real *gz = w.gz, *acc = w.acc, *gk = w.gk, *gin = w.gin;
    real kscale = g_ode * R(2.0) / (real)nc; /* d mean(k1²) / dk1 = 2 k1 / nc */
    be->core.copy(gz, dout, nc);
    for (int s = p->steps - 1; s >= 0; s--) {
        const real *ev[4];
        for (int st = 0; st < ns; st++) ev[st] = act + l.per_eval * ((size_t)s * ns + st);
        const real *k1 = act + k1_at(&l, nc, s);
        uint32_t site = TB_DROPOUT_SITE_ATTN + (uint32_t)(s * ns);
        /* acc = gz + the stages' gin, the first one added as it is written (the bits of a
         * copy and an add) */
        if (p->rk4) {
            /* z' = z + Σ w_st k_st, k_st = f(z + c_st k_{st-1}). */
            real wt[4] = {dt / 6, dt / 3, dt / 3, dt / 6};
            real c[4] = {0, dt / 2, dt / 2, dt};
            for (int st = 3; st >= 0; st--) {
                /* gk = w_st gz + c_{st+1} gin (gin of stage st+1). Stage 3 has no
                 * successor: 0 times a zeroed gin adds +0, so w_3 gz + 0 keeps its bits
                 * (a -0 product becomes +0). f_backward then writes gin. */
                if (st == 3) be->core.fill(gin, R(0.0), nc);
                be->core.axpby(gk, wt[st], gz, st < 3 ? c[st + 1] : R(0.0), gin, nc);
                if (st == 0 && g_ode != 0) be->dense.axpy(gk, gk, kscale, k1, nc);
                f_backward(be, gin, gk, ev[st], &l, p, key_mask, d, site + (uint32_t)st, &w, B, T);
                be->dense.axpy(acc, st == 3 ? gz : acc, R(1.0), gin, nc);
            }
        } else {
            be->core.copy(gk, gz, nc);
            be->core.scale(gk, dt, nc); /* gk = dt gz */
            if (g_ode != 0) be->dense.axpy(gk, gk, kscale, k1, nc);
            f_backward(be, gin, gk, ev[0], &l, p, key_mask, d, site, &w, B, T);
            be->dense.axpy(acc, gz, R(1.0), gin, nc);
        }
        real *t = gz;
        gz = acc;
        acc = t;
    }
    be->dense.axpy(du, du, R(1.0), gz, nc);
}
