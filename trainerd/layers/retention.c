#include "retention.h"
#include "../backend.h"

/* Activation layout, ntok = B·T rows of C: q, k, v, g, y, yn = Nr(y), z = yn ⊙ silu(g),
 * then the five linears' acts (q, k, v, g, o; k, v and g use q's where they may, the
 * input u being the same: linear_same_x) and the norm's. */
typedef struct ret_act {
    real *q, *k, *v, *g, *y, *yn, *z, *lq, *lk, *lv, *lg, *lo, *nr;
    size_t total;
} ret_act;

static ret_act ret_layout(real *base, const tb_retention *p, size_t ntok) {
    ret_act a;
    size_t n = ntok * (size_t)p->C, off = 0;
    real **seq[7] = {&a.q, &a.k, &a.v, &a.g, &a.y, &a.yn, &a.z};
    for (int i = 0; i < 7; i++, off += n) *seq[i] = base ? base + off : NULL;
    const tb_linear *lin[5] = {&p->q, &p->k, &p->v, &p->g, &p->o};
    real **lact[5] = {&a.lq, &a.lk, &a.lv, &a.lg, &a.lo};
    for (int i = 0; i < 5; i++) {
        if (i >= 1 && i <= 3 && linear_same_x(&p->q, lin[i])) {
            *lact[i] = a.lq;
            continue;
        }
        *lact[i] = base ? base + off : NULL;
        off += linear_act_count(lin[i], ntok);
    }
    a.nr = base ? base + off : NULL;
    off += norm_act_count(p->norm.type, ntok);
    a.total = off;
    return a;
}

size_t retention_act_count(const tb_retention *p, int B, int T) {
    return ret_layout(NULL, p, (size_t)B * (size_t)T).total;
}

static size_t lin_scratch_max(const tb_retention *p, size_t ntok) {
    const tb_linear *lin[5] = {&p->q, &p->k, &p->v, &p->g, &p->o};
    size_t m = 0;
    for (int i = 0; i < 5; i++) {
        size_t s = linear_scratch_count(lin[i], ntok);
        if (s > m) m = s;
    }
    return m;
}

size_t retention_scratch_count(const tb_retention *p, int B, int T) {
    size_t ntok = (size_t)B * (size_t)T;
    return 5 * ntok * (size_t)p->C + lin_scratch_max(p, ntok);
}

void retention_forward(const tb_backend *be, real *out, real *act, const real *u,
                       const tb_retention *p, int B, int T) {
    size_t ntok = (size_t)B * (size_t)T;
    int C = p->C;
    ret_act a = ret_layout(act, p, ntok);
    linear_forward(be, a.q, a.lq, u, &p->q, ntok);
    const tb_linear *kvg[3] = {&p->k, &p->v, &p->g};
    real *ys[3] = {a.k, a.v, a.g}, *acts[3] = {a.lk, a.lv, a.lg};
    for (int i = 0; i < 3; i++) {
        if (acts[i] == a.lq) linear_forward_same_x(be, ys[i], a.lq, u, kvg[i], ntok);
        else linear_forward(be, ys[i], acts[i], u, kvg[i], ntok);
    }
    be->seq.retention_forward(a.y, a.q, a.k, a.v, B, T, p->H, C / p->H, p->bidirectional, be);
    norm_forward(be, a.yn, a.nr, a.y, &p->norm, ntok);
    be->seq.mul_silu_forward(a.z, a.yn, a.g, ntok, C, C, C, be);
    linear_forward(be, out, a.lo, a.z, &p->o, ntok);
}

void retention_backward(const tb_backend *be, real *du, real *scratch, const real *dout,
                        const real *act, const real *u, const tb_retention *p, int B, int T) {
    size_t ntok = (size_t)B * (size_t)T, n = ntok * (size_t)p->C;
    int C = p->C;
    ret_act a = ret_layout((real *)act, p, ntok);
    real *s0 = scratch, *s1 = scratch + n, *s2 = scratch + 2 * n, *s3 = scratch + 3 * n,
         *s4 = scratch + 4 * n, *ls = scratch + 5 * n;
    /* z -> out */
    real *dz = s0;
    linear_backward_set(be, dz, ls, dout, a.lo, a.z, &p->o, ntok);
    /* z = yn ⊙ silu(g) */
    real *dyn = s1, *dg = s2;
    be->core.fill(dyn, 0, n);
    be->core.fill(dg, 0, n);
    be->seq.mul_silu_backward(dyn, dg, dz, a.yn, a.g, ntok, C, C, C, be);
    /* yn = Nr(y) */
    real *dy = s0;
    norm_backward_to(be, dy, NULL, dyn, a.nr, a.y, &p->norm, ntok);
    /* y = Retention(q, k, v) */
    real *dq = s1, *dk = s3, *dv = s4;
    be->core.fill(dq, 0, n);
    be->core.fill(dk, 0, n);
    be->core.fill(dv, 0, n);
    be->seq.retention_backward(dq, dk, dv, dy, a.q, a.k, a.v, B, T, p->H, C / p->H,
                               p->bidirectional, be);
    linear_backward(be, du, ls, dq, a.lq, u, &p->q, ntok);
    linear_backward(be, du, ls, dk, a.lk, u, &p->k, ntok);
    linear_backward(be, du, ls, dv, a.lv, u, &p->v, ntok);
    linear_backward(be, du, ls, dg, a.lg, u, &p->g, ntok);
}
