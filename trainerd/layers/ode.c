#include "ode.h"
#include "../backend.h"

/* Activations of one evaluation of f (n = B·T): zin (n, C) its input, norm stats,
 * xn = Nf(zin) (n, C), qkv act, qkv (n, 3C), probs (B, H, T, T), rowstat (B, H, T),
 * a (n, C), o act, k = f(zin) (n, C). Evaluations are stored step-major. */
typedef struct ode_layout {
    size_t zin, nact, xn, qact, qkv, probs, rowstat, a, oact, k, per_eval;
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
    l.xn = o, o += n * C;
    l.qact = o, o += linear_act_count(&p->qkv, n);
    l.qkv = o, o += 3 * n * C;
    l.probs = o, o += p->recompute_probs ? 0 : (size_t)B * p->H * T * T;
    l.rowstat = o, o += (size_t)B * p->H * T;
    l.a = o, o += n * C;
    l.oact = o, o += linear_act_count(&p->o, n);
    l.k = o, o += n * C;
    l.per_eval = o;
    return l;
}

size_t ode_act_count(const tb_ode *p, int B, int T) {
    return layout(p, B, T).per_eval * (size_t)p->steps * stages(p);
}

static size_t lin_scratch(const tb_ode *p, size_t n) {
    size_t a = linear_scratch_count(&p->qkv, n), b = linear_scratch_count(&p->o, n);
    return a > b ? a : b;
}

/* gz, acc, gk, gin, da, dxn (n, C) each, dqkv (n, 3C), linear scratch, work (T). */
size_t ode_scratch_count(const tb_ode *p, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C;
    return 9 * n * C + lin_scratch(p, n) + (size_t)T;
}

/* k = f(zin) for the evaluation whose activations start at e. */
static void f_forward(const tb_backend *be, real *e, const ode_layout *l, const tb_ode *p,
                      const uint8_t *key_mask, const tb_dropout *d, uint32_t site, int B,
                      int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C;
    int hs = p->C / p->H;
    norm_forward(be, e + l->xn, e + l->nact, e + l->zin, &p->norm, n);
    linear_forward(be, e + l->qkv, e + l->qact, e + l->xn, &p->qkv, n);
    real *qkv = e + l->qkv;
    be->dense.attn_fwd(e + l->a, p->recompute_probs ? NULL : e + l->probs, e + l->rowstat, qkv,
                       qkv + C, qkv + 2 * C,
                       3 * C, 3 * C, key_mask, 0, d, site, B, T, p->H, p->H, hs);
    linear_forward(be, e + l->k, e + l->oact, e + l->a, &p->o, n);
}

double ode_forward(const tb_backend *be, real *out, real *act, const real *u, const tb_ode *p,
                   const uint8_t *key_mask, const tb_dropout *d, int B, int T) {
    ode_layout l = layout(p, B, T);
    size_t n = (size_t)B * T, nc = n * (size_t)p->C;
    int ns = stages(p);
    real dt = R(1.0) / (real)p->steps;
    double lode = 0;
    if (out != u) be->core.copy(out, u, nc);
    for (int s = 0; s < p->steps; s++) {
        real *ev[4];
        for (int st = 0; st < ns; st++) ev[st] = act + l.per_eval * ((size_t)s * ns + st);
        uint32_t site = TB_DROPOUT_SITE_ATTN + (uint32_t)(s * ns);
        be->core.copy(ev[0] + l.zin, out, nc);
        f_forward(be, ev[0], &l, p, key_mask, d, site, B, T);
        if (!p->rk4) {
            be->dense.axpy(out, out, dt, ev[0] + l.k, nc);
            continue;
        }
        /* k2 = f(z + dt/2 k1), k3 = f(z + dt/2 k2), k4 = f(z + dt k3) */
        real c[3] = {dt / 2, dt / 2, dt};
        for (int st = 1; st < 4; st++) {
            be->dense.axpy(ev[st] + l.zin, out, c[st - 1], ev[st - 1] + l.k, nc);
            f_forward(be, ev[st], &l, p, key_mask, d, site + (uint32_t)st, B, T);
        }
        /* z += dt/6 (k1 + 2 k2 + 2 k3 + k4) */
        real w[4] = {dt / 6, dt / 3, dt / 3, dt / 6};
        for (int st = 0; st < 4; st++) be->dense.axpy(out, out, w[st], ev[st] + l.k, nc);
    }
    /* L_ode's mean(k1²) per step, read after the whole block is queued (each step's k1
     * stays in its own slice of act): a GPU backend waits once here, not once per step in
     * the middle of the block. The same sums in the same order as per step. */
    for (int s = 0; s < p->steps; s++) {
        double ss;
        be->dense.sum_squares(&ss, act + l.per_eval * ((size_t)s * ns) + l.k, nc);
        lode += ss / (double)nc;
    }
    return lode;
}

/* gin += fᵀ(gk) for the evaluation at e. */
static void f_backward(const tb_backend *be, real *gin, const real *gk, const real *e,
                       const ode_layout *l, const tb_ode *p, const uint8_t *key_mask,
                       const tb_dropout *d, uint32_t site, real *da, real *dxn, real *dqkv,
                       real *lscr, real *work, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C;
    int hs = p->C / p->H;
    be->core.fill(da, R(0.0), n * C);
    linear_backward(be, da, lscr, gk, e + l->oact, e + l->a, &p->o, n);
    be->core.fill(dqkv, R(0.0), 3 * n * C);
    const real *qkv = e + l->qkv;
    be->dense.attn_bwd(dqkv, dqkv + C, dqkv + 2 * C, work, da, e + l->a,
                       p->recompute_probs ? NULL : e + l->probs, e + l->rowstat, qkv,
                       qkv + C, qkv + 2 * C, 3 * C, 3 * C, key_mask, 0, d, site, B, T, p->H,
                       p->H, hs);
    be->core.fill(dxn, R(0.0), n * C);
    linear_backward(be, dxn, lscr, dqkv, e + l->qact, e + l->xn, &p->qkv, n);
    norm_backward(be, gin, dxn, e + l->nact, e + l->zin, &p->norm, n);
}

void ode_backward(const tb_backend *be, real *du, real *scratch, const real *dout,
                  const real *act, const real *u, const tb_ode *p, const uint8_t *key_mask,
                  const tb_dropout *d, real g_ode, int B, int T) {
    (void)u; /* stored as the first evaluation's zin */
    ode_layout l = layout(p, B, T);
    size_t n = (size_t)B * T, nc = n * (size_t)p->C;
    int ns = stages(p);
    real dt = R(1.0) / (real)p->steps;
    real *gz = scratch, *acc = gz + nc, *gk = acc + nc, *gin = gk + nc, *da = gin + nc;
    real *dxn = da + nc, *dqkv = dxn + nc, *lscr = dqkv + 3 * nc, *work = lscr + lin_scratch(p, n);
    real kscale = g_ode * R(2.0) / (real)nc; /* d mean(k1²) / dk1 = 2 k1 / nc */
    be->core.copy(gz, dout, nc);
    for (int s = p->steps - 1; s >= 0; s--) {
        const real *ev[4];
        for (int st = 0; st < ns; st++) ev[st] = act + l.per_eval * ((size_t)s * ns + st);
        uint32_t site = TB_DROPOUT_SITE_ATTN + (uint32_t)(s * ns);
        be->core.copy(acc, gz, nc);
        if (p->rk4) {
            /* z' = z + Σ w_st k_st, k_st = f(z + c_st k_{st-1}). */
            real w[4] = {dt / 6, dt / 3, dt / 3, dt / 6};
            real c[4] = {0, dt / 2, dt / 2, dt};
            for (int st = 3; st >= 0; st--) {
                /* gk = w_st gz + c_{st+1} gin (gin of stage st+1). Stage 3 has no
                 * successor: 0 times a zeroed gin adds +0, so w_3 gz + 0 keeps its bits
                 * (a -0 product becomes +0). gin is then the zeroed output of f_backward. */
                if (st == 3) be->core.fill(gin, R(0.0), nc);
                be->core.axpby(gk, w[st], gz, st < 3 ? c[st + 1] : R(0.0), gin, nc);
                if (st == 0 && g_ode != 0) be->dense.axpy(gk, gk, kscale, ev[0] + l.k, nc);
                if (st < 3) be->core.fill(gin, R(0.0), nc);
                f_backward(be, gin, gk, ev[st], &l, p, key_mask, d, site + (uint32_t)st, da,
                           dxn, dqkv, lscr, work, B, T);
                be->dense.axpy(acc, acc, R(1.0), gin, nc);
            }
        } else {
            be->core.copy(gk, gz, nc);
            be->core.scale(gk, dt, nc); /* gk = dt gz */
            if (g_ode != 0) be->dense.axpy(gk, gk, kscale, ev[0] + l.k, nc);
            be->core.fill(gin, R(0.0), nc);
            f_backward(be, gin, gk, ev[0], &l, p, key_mask, d, site, da, dxn, dqkv, lscr, work,
                       B, T);
            be->dense.axpy(acc, acc, R(1.0), gin, nc);
        }
        real *t = gz;
        gz = acc;
        acc = t;
    }
    be->dense.axpy(du, du, R(1.0), gz, nc);
}
