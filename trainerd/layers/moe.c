#include "moe.h"
#include <stdlib.h>
#include "../backend.h"

/* Parts rounded up to 4 reals: 16-byte aligned when the base is (linear.c r4). */
static real *take(real *base, size_t *off, size_t n) {
    real *p = base ? base + *off : NULL;
    *off += (n + 3) & ~(size_t)3;
    return p;
}

/* int32 arrays carved out of a real buffer. */
static size_t i32_reals(size_t n) {
    return (n * sizeof(int32_t) + sizeof(real) - 1) / sizeof(real);
}

/* Activation layout: logits, probs (ntok, E); gate (ntok, K); lbal (1); sel, order
 * (ntok·K int32); offsets (E+1 int32); per kept assignment j (grouped by expert as
 * `order`): he (F, pre-activation), ye (C); router act; then the experts'
 * linear acts, expert after expert, each sized for its own row count. Their sum is
 * bounded by the act count for all ntok·K rows plus 8 E (linear_act_count is affine in
 * the row count up to one ceil and two roundings to 4 reals per call). An expert's
 * gathered input xe and activated hidden ae = act(he) are not kept: the forward builds
 * them in the scratch (moe_scr) and the backward rebuilds them there (a gather and an
 * element-wise op, the same bits), 2 · K · (C + F) reals a token fewer. */
typedef struct moe_act {
    real *logits, *probs, *gate, *lbal, *he, *ye, *l_router, *l_up, *l_down;
    int32_t *sel, *order, *offsets;
    size_t up_cap, down_cap, total;
} moe_act;

static moe_act moe_layout(real *base, const tb_moe *p, size_t ntok) {
    moe_act a;
    size_t off = 0, nK = ntok * (size_t)p->K, E = (size_t)p->E;
    a.logits = take(base, &off, ntok * E);
    a.probs = take(base, &off, ntok * E);
    a.gate = take(base, &off, nK);
    a.lbal = take(base, &off, 1);
    a.sel = (int32_t *)take(base, &off, i32_reals(nK));
    a.order = (int32_t *)take(base, &off, i32_reals(nK));
    a.offsets = (int32_t *)take(base, &off, i32_reals(E + 1));
    a.he = take(base, &off, nK * (size_t)p->F);
    a.ye = take(base, &off, nK * (size_t)p->C);
    a.l_router = take(base, &off, linear_act_count(&p->router, ntok));
    a.up_cap = linear_act_count(&p->up[0], nK) + 8 * E;
    a.down_cap = linear_act_count(&p->down[0], nK) + 8 * E;
    a.l_up = take(base, &off, a.up_cap);
    a.l_down = take(base, &off, a.down_cap);
    a.total = off;
    return a;
}

/* The routing's per-expert row ranges on the host, where the GEMM sizes are chosen:
 * one to_host of E+1 int32 (it waits for the routing op). */
static void offsets_to_host(const tb_backend *be, int32_t *off, const moe_act *a, int E) {
    if (E > TB_MOE_MAX_EXPERTS) abort(); /* bind rejects it */
    be->core.to_host(off, a->offsets, ((size_t)E + 1) * sizeof(int32_t));
}

size_t moe_act_count(const tb_moe *p, size_t ntok) {
    return moe_layout(NULL, p, ntok).total;
}

static size_t lin_scratch_max(const tb_moe *p, size_t ntok) {
    size_t m = linear_scratch_count(&p->router, ntok);
    for (int e = 0; e < p->E; e++) {
        size_t s = linear_scratch_count(&p->up[e], ntok);
        if (s > m) m = s;
        s = linear_scratch_count(&p->down[e], ntok);
        if (s > m) m = s;
    }
    return m;
}

/* Scratch, per expert at most ntok rows: xe (C), ae (F) (forward and backward); dgate
 * (ntok·K), dlogits (ntok·E), dye, dxe (C), dae, dhe (F) (backward); then the largest
 * linear scratch. Parts rounded to 4 reals (the experts' operands stay 16-byte aligned). */
typedef struct moe_scr {
    real *xe, *ae, *dgate, *dlogits, *dye, *dxe, *dae, *dhe, *lin;
    size_t total;
} moe_scr;

static moe_scr moe_scr_layout(real *base, const tb_moe *p, size_t ntok) {
    moe_scr s;
    size_t off = 0, C = (size_t)p->C, F = (size_t)p->F;
    s.xe = take(base, &off, ntok * C);
    s.ae = take(base, &off, ntok * F);
    s.dgate = take(base, &off, ntok * (size_t)p->K);
    s.dlogits = take(base, &off, ntok * (size_t)p->E);
    s.dye = take(base, &off, ntok * C);
    s.dxe = take(base, &off, ntok * C);
    s.dae = take(base, &off, ntok * F);
    s.dhe = take(base, &off, ntok * F);
    s.lin = take(base, &off, lin_scratch_max(p, ntok));
    s.total = off;
    return s;
}

size_t moe_scratch_count(const tb_moe *p, size_t ntok) {
    return moe_scr_layout(NULL, p, ntok).total;
}

void moe_forward(const tb_backend *be, real *out, real *lbal, real *act, real *scratch,
                 const real *v, const tb_moe *p, size_t ntok) {
    moe_act a = moe_layout(act, p, ntok);
    moe_scr s = moe_scr_layout(scratch, p, ntok);
    int C = p->C, F = p->F, K = p->K;
    linear_forward(be, a.logits, a.l_router, v, &p->router, ntok);
    be->seq.moe_route_forward(a.probs, a.sel, a.gate, a.order, a.offsets, a.lbal, a.logits,
                              (int)ntok, p->E, K, p->renormalize, p->capacity_factor, be);
    be->core.fill(out, 0, ntok * (size_t)C);
    int32_t offsets[TB_MOE_MAX_EXPERTS + 1];
    offsets_to_host(be, offsets, &a, p->E);
    size_t uo = 0, dn = 0;
    for (int e = 0; e < p->E; e++) {
        size_t j0 = (size_t)offsets[e], n = (size_t)offsets[e + 1] - j0;
        if (n == 0) continue;
        real *xe = s.xe, *he = a.he + j0 * (size_t)F, *ae = s.ae, *ye = a.ye + j0 * (size_t)C;
        real *lu = a.l_up + uo, *ld = a.l_down + dn;
        uo += linear_act_count(&p->up[e], n);
        dn += linear_act_count(&p->down[e], n);
        if (uo > a.up_cap || dn > a.down_cap) abort(); /* broken layout invariant */
        be->seq.moe_gather(xe, v, a.order + j0, (int)n, K, C, be);
        linear_forward(be, he, lu, xe, &p->up[e], n);
        be->seq.act_forward(ae, he, n * (size_t)F, p->act, be);
        linear_forward(be, ye, ld, ae, &p->down[e], n);
        be->seq.moe_scatter(out, ye, a.gate, a.order + j0, (int)n, K, C, be);
    }
    be->core.copy(lbal, a.lbal, 1);
}

void moe_backward(const tb_backend *be, real *dv, real *scratch, const real *dout,
                  real bal_scale, const real *act, const real *v, const tb_moe *p,
                  size_t ntok) {
    moe_act a = moe_layout((real *)act, p, ntok);
    moe_scr s = moe_scr_layout(scratch, p, ntok);
    int C = p->C, F = p->F, K = p->K;
    real *dgate = s.dgate, *dlogits = s.dlogits, *dye = s.dye, *dxe = s.dxe;
    real *dae = s.dae, *dhe = s.dhe, *ls = s.lin, *xe = s.xe, *ae = s.ae;
    be->core.fill(dgate, 0, ntok * (size_t)K);
    int32_t offsets[TB_MOE_MAX_EXPERTS + 1];
    offsets_to_host(be, offsets, &a, p->E);
    size_t uo = 0, dn = 0;
    for (int e = 0; e < p->E; e++) {
        size_t j0 = (size_t)offsets[e], n = (size_t)offsets[e + 1] - j0;
        if (n == 0) continue;
        const real *he = a.he + j0 * (size_t)F, *ye = a.ye + j0 * (size_t)C;
        const real *lu = a.l_up + uo, *ld = a.l_down + dn;
        uo += linear_act_count(&p->up[e], n);
        dn += linear_act_count(&p->down[e], n);
        /* the forward's xe and ae again (moe_act) */
        be->seq.moe_gather(xe, v, a.order + j0, (int)n, K, C, be);
        be->seq.act_forward(ae, he, n * (size_t)F, p->act, be);
        be->seq.moe_scatter_backward_set(dye, dgate, dout, ye, a.gate, a.order + j0, (int)n, K, C, be);
        linear_backward_set(be, dae, ls, dye, ld, ae, &p->down[e], n);
        be->seq.act_backward_set(dhe, dae, he, n * (size_t)F, p->act, be);
        linear_backward_set(be, dxe, ls, dhe, lu, xe, &p->up[e], n);
        be->seq.moe_gather_backward(dv, dxe, a.order + j0, (int)n, K, C, be);
    }
    be->core.fill(dlogits, 0, ntok * (size_t)p->E);
    be->seq.moe_route_backward(dlogits, dgate, a.probs, a.sel, bal_scale, (int)ntok, p->E, K,
                               p->renormalize, be);
    linear_backward(be, dv, ls, dlogits, a.l_router, v, &p->router, ntok);
}

/* Dense FFN: act layout h (F, pre-activation), a (F), then the two linears' acts. */
size_t ffn_act_count(const tb_ffn *p, size_t ntok) {
    return 2 * ntok * (size_t)p->F + linear_act_count(&p->up, ntok) +
           linear_act_count(&p->down, ntok);
}

size_t ffn_scratch_count(const tb_ffn *p, size_t ntok) {
    size_t su = linear_scratch_count(&p->up, ntok), sd = linear_scratch_count(&p->down, ntok);
    return 2 * ntok * (size_t)p->F + (su > sd ? su : sd);
}

void ffn_forward(const tb_backend *be, real *out, real *act, const real *v, const tb_ffn *p,
                 size_t ntok) {
    size_t nF = ntok * (size_t)p->F;
    real *h = act, *a = act + nF, *lu = a + nF, *ld = lu + linear_act_count(&p->up, ntok);
    linear_forward(be, h, lu, v, &p->up, ntok);
    be->seq.act_forward(a, h, nF, p->act, be);
    linear_forward(be, out, ld, a, &p->down, ntok);
}

void ffn_backward(const tb_backend *be, real *dv, real *scratch, const real *dout,
                  const real *act, const real *v, const tb_ffn *p, size_t ntok) {
    size_t nF = ntok * (size_t)p->F;
    const real *h = act, *a = act + nF, *lu = a + nF, *ld = lu + linear_act_count(&p->up, ntok);
    real *da = scratch, *dh = scratch + nF, *ls = scratch + 2 * nF;
    linear_backward_set(be, da, ls, dout, ld, a, &p->down, ntok);
    be->seq.act_backward_set(dh, da, h, nF, p->act, be);
    linear_backward(be, dv, ls, dh, lu, v, &p->up, ntok);
}
