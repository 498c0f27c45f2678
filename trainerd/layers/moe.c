#include "moe.h"
#include <math.h>
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

/* Rows per expert in the fixed-capacity layout: the capacity ceil(cf·K·ntok/E) (computed
 * in double, as the routing op does), at most ntok (a token picks an expert once),
 * rounded up to 16 (whole 16-byte rows of int8 codes for every expert's slice). 0 when
 * there is no capacity (cf = 0) or the layer runs the host path (fixed_rows 0): then the
 * per-expert row counts are read on the host. */
static size_t moe_rows(const tb_moe *p, size_t ntok) {
    if (!p->fixed_rows || !(p->capacity_factor > 0) || ntok == 0) return 0;
    double c = ceil(p->capacity_factor * (double)p->K * (double)ntok / (double)p->E);
    size_t P = c < (double)ntok ? (size_t)c : ntok;
    return (P + 15) & ~(size_t)15;
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
/* With a capacity (moe_rows P > 0) the experts' rows are laid out at a fixed size: pad
 * (E·P int32) and its inverse slot (ntok·K int32: each kept assignment's row), both from
 * moe_pad_order, then he (E·P, F), ye (E·P, C) and the two grouped linear acts over E·P
 * rows (linear_forward_groups); expert e owns rows e·P ..; rows past its kept count are
 * padding (zero input, ignored output). The token sums (scatter, gather backward) go by
 * slot, token by token in expert order. No row count is read on the host and every
 * expert GEMM has the same shape on every step. */
typedef struct moe_act {
    real *logits, *probs, *gate, *lbal, *he, *ye, *l_router, *l_up, *l_down;
    int32_t *sel, *order, *offsets, *pad, *slot;
    size_t up_cap, down_cap, total, P;
} moe_act;

static moe_act moe_layout(real *base, const tb_moe *p, size_t ntok) {
    moe_act a;
    size_t off = 0, nK = ntok * (size_t)p->K, E = (size_t)p->E;
    a.P = moe_rows(p, ntok);
    size_t rows = a.P ? E * a.P : nK; /* the experts' rows, all together */
    a.logits = take(base, &off, ntok * E);
    a.probs = take(base, &off, ntok * E);
    a.gate = take(base, &off, nK);
    a.lbal = take(base, &off, 1);
    a.sel = (int32_t *)take(base, &off, i32_reals(nK));
    a.order = (int32_t *)take(base, &off, i32_reals(nK));
    a.offsets = (int32_t *)take(base, &off, i32_reals(E + 1));
    a.pad = a.P ? (int32_t *)take(base, &off, i32_reals(rows)) : NULL;
    a.slot = a.P ? (int32_t *)take(base, &off, i32_reals(nK)) : NULL;
    a.he = take(base, &off, rows * (size_t)p->F);
    a.ye = take(base, &off, rows * (size_t)p->C);
    a.l_router = take(base, &off, linear_act_count(&p->router, ntok));
    a.up_cap = linear_act_count(&p->up[0], rows) + (a.P ? 0 : 8 * E);
    a.down_cap = linear_act_count(&p->down[0], rows) + (a.P ? 0 : 8 * E);
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

static size_t lin_scratch_max(const tb_moe *p, size_t ntok, size_t rows) {
    size_t m = linear_scratch_count(&p->router, ntok);
    for (int e = 0; e < p->E; e++) {
        size_t s = linear_scratch_count(&p->up[e], rows);
        if (s > m) m = s;
        s = linear_scratch_count(&p->down[e], rows);
        if (s > m) m = s;
    }
    return m;
}

/* Scratch. Without a capacity, per expert at most ntok rows: xe (C), ae (F) (forward and
 * backward); dgate (ntok·K), dlogits (ntok·E), dye, dxe (C), dae, dhe (F) (backward);
 * then the largest linear scratch. With one (P rows an expert), all E·P rows at once: xe
 * (C), ae (F); dgate, dlogits; dye (C), dae (F); dhe takes ae's place (ae is dead once the
 * down projection's backward has run) and dxe dye's (likewise). Parts rounded to 4 reals
 * (the experts' operands stay 16-byte aligned). */
typedef struct moe_scr {
    real *xe, *ae, *dgate, *dlogits, *dye, *dxe, *dae, *dhe, *lin;
    size_t total;
} moe_scr;

static moe_scr moe_scr_layout(real *base, const tb_moe *p, size_t ntok) {
    moe_scr s;
    size_t off = 0, C = (size_t)p->C, F = (size_t)p->F, P = moe_rows(p, ntok);
    size_t rows = P ? (size_t)p->E * P : ntok;
    s.xe = take(base, &off, rows * C);
    s.ae = take(base, &off, rows * F);
    s.dgate = take(base, &off, ntok * (size_t)p->K);
    s.dlogits = take(base, &off, ntok * (size_t)p->E);
    s.dye = take(base, &off, rows * C);
    s.dxe = P ? s.dye : take(base, &off, rows * C);
    s.dae = take(base, &off, rows * F);
    s.dhe = P ? s.ae : take(base, &off, rows * F);
    s.lin = take(base, &off, lin_scratch_max(p, ntok, P ? P : ntok));
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
    if (a.P) { /* fixed capacity: every expert at once, no host synchronisation */
        int rows = p->E * (int)a.P;
        be->seq.moe_pad_order(a.pad, a.slot, a.order, a.offsets, p->E, (int)a.P, be);
        be->seq.moe_gather(s.xe, v, a.pad, rows, K, C, be);
        linear_forward_groups(be, a.he, a.l_up, s.xe, p->up, p->E, a.P);
        be->seq.act_forward(s.ae, a.he, (size_t)rows * (size_t)F, p->act, be);
        linear_forward_groups(be, a.ye, a.l_down, s.ae, p->down, p->E, a.P);
        be->seq.moe_scatter_slots_set(out, a.ye, a.gate, a.sel, a.slot, (int)ntok, K, C, be);
        be->core.copy(lbal, a.lbal, 1);
        return;
    }
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

/* The experts' backward without a capacity: expert by expert over the kept rows, whose
 * counts are read on the host. */
static void experts_backward_dynamic(const tb_backend *be, real *dv, const moe_scr *s,
                                     const real *dout, const moe_act *a, const real *v,
                                     const tb_moe *p) {
    int C = p->C, F = p->F, K = p->K;
    int32_t offsets[TB_MOE_MAX_EXPERTS + 1];
    offsets_to_host(be, offsets, a, p->E);
    size_t uo = 0, dn = 0;
    for (int e = 0; e < p->E; e++) {
        size_t j0 = (size_t)offsets[e], n = (size_t)offsets[e + 1] - j0;
        if (n == 0) continue;
        const real *he = a->he + j0 * (size_t)F, *ye = a->ye + j0 * (size_t)C;
        const real *lu = a->l_up + uo, *ld = a->l_down + dn;
        uo += linear_act_count(&p->up[e], n);
        dn += linear_act_count(&p->down[e], n);
        /* the forward's xe and ae again (moe_act) */
        be->seq.moe_gather(s->xe, v, a->order + j0, (int)n, K, C, be);
        be->seq.act_forward(s->ae, he, n * (size_t)F, p->act, be);
        be->seq.moe_scatter_backward_set(s->dye, s->dgate, dout, ye, a->gate, a->order + j0,
                                         (int)n, K, C, be);
        linear_backward_set(be, s->dae, s->lin, s->dye, ld, s->ae, &p->down[e], n);
        be->seq.act_backward_set(s->dhe, s->dae, he, n * (size_t)F, p->act, be);
        linear_backward_set(be, s->dxe, s->lin, s->dhe, lu, s->xe, &p->up[e], n);
        be->seq.moe_gather_backward(dv, s->dxe, a->order + j0, (int)n, K, C, be);
    }
}

/* With a capacity: all experts' E·P rows at once (moe_forward's layout). dhe is written
 * over ae and dxe over dye (moe_scr_layout), each dead by then. */
static void experts_backward_fixed(const tb_backend *be, real *dv, const moe_scr *s,
                                   const real *dout, const moe_act *a, const real *v,
                                   const tb_moe *p, size_t ntok, int set) {
    int C = p->C, K = p->K, rows = p->E * (int)a->P;
    size_t rF = (size_t)rows * (size_t)p->F;
    be->seq.moe_gather(s->xe, v, a->pad, rows, K, C, be);
    be->seq.act_forward(s->ae, a->he, rF, p->act, be);
    be->seq.moe_scatter_backward_set(s->dye, s->dgate, dout, a->ye, a->gate, a->pad, rows, K,
                                     C, be);
    linear_backward_groups_set(be, s->dae, s->lin, s->dye, a->l_down, s->ae, p->down, p->E,
                               a->P);
    be->seq.act_backward_set(s->dhe, s->dae, a->he, rF, p->act, be);
    linear_backward_groups_set(be, s->dxe, s->lin, s->dhe, a->l_up, s->xe, p->up, p->E, a->P);
    if (set) be->seq.moe_gather_backward_slots_set(dv, s->dxe, a->sel, a->slot, (int)ntok, K, C, be);
    else be->seq.moe_gather_backward_slots(dv, s->dxe, a->sel, a->slot, (int)ntok, K, C, be);
}

/* set: dv written (its first write on the fixed-capacity path is the slot sums'; the
 * dynamic path zeroes it first) */
static void moe_backward_any(const tb_backend *be, real *dv, real *scratch, const real *dout,
                             real bal_scale, const real *act, const real *v, const tb_moe *p,
                             size_t ntok, int set) {
    moe_act a = moe_layout((real *)act, p, ntok);
    moe_scr s = moe_scr_layout(scratch, p, ntok);
    be->core.fill(s.dgate, 0, ntok * (size_t)p->K);
    if (a.P) {
        experts_backward_fixed(be, dv, &s, dout, &a, v, p, ntok, set);
    } else {
        if (set) be->core.fill(dv, 0, ntok * (size_t)p->C);
        experts_backward_dynamic(be, dv, &s, dout, &a, v, p);
    }
    be->core.fill(s.dlogits, 0, ntok * (size_t)p->E);
    be->seq.moe_route_backward(s.dlogits, s.dgate, a.probs, a.sel, bal_scale, (int)ntok, p->E,
                               p->K, p->renormalize, be);
    linear_backward(be, dv, s.lin, s.dlogits, a.l_router, v, &p->router, ntok);
}

void moe_backward(const tb_backend *be, real *dv, real *scratch, const real *dout,
                  real bal_scale, const real *act, const real *v, const tb_moe *p,
                  size_t ntok) {
    moe_backward_any(be, dv, scratch, dout, bal_scale, act, v, p, ntok, 0);
}

void moe_backward_set(const tb_backend *be, real *dv, real *scratch, const real *dout,
                      real bal_scale, const real *act, const real *v, const tb_moe *p,
                      size_t ntok) {
    moe_backward_any(be, dv, scratch, dout, bal_scale, act, v, p, ntok, 1);
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
