#include "mamba.h"
#include "../backend.h"

/* Activation layout over ntok = B·T rows (widths in brackets):
 * xz [2Di], xb [Di], xconv [Di] (conv output, pre-silu), xc [Di], dbc [R+2N] (x_proj
 * output: δ | Bm | Cm), dl [R] (δ, contiguous for dt_proj), dtr [Di] (dt_proj output,
 * pre-softplus), dlt [Di] (Δ), ys [Di] (scan output), yg [Di] (ys ⊙ silu(z)),
 * states [Di·N] per kept state (the backend's spacing, tb_scan_states_count); Titan: qm, km, vm, qn, kn, r [C each]; then the linears' acts. */
typedef struct mb_act {
    real *xz, *xb, *xconv, *xc, *dbc, *dl, *dtr, *dlt, *ys, *yg, *states;
    real *qm, *km, *vm, *qn, *kn, *r;
    real *l_in, *l_x, *l_dt, *l_out, *l_q, *l_k, *l_v;
    size_t total;
} mb_act;

static real *take(real *base, size_t *off, size_t n) {
    real *p = base ? base + *off : NULL;
    *off += n;
    return p;
}

static mb_act mb_layout(real *base, const tb_mamba *p, int B, int T) {
    size_t ntok = (size_t)B * (size_t)T;
    mb_act a;
    size_t off = 0, Di = (size_t)p->Di, C = (size_t)p->C, W = (size_t)(p->R + 2 * p->N);
    a.xz = take(base, &off, ntok * 2 * Di);
    a.xb = take(base, &off, ntok * Di);
    a.xconv = take(base, &off, ntok * Di);
    a.xc = take(base, &off, ntok * Di);
    a.dbc = take(base, &off, ntok * W);
    a.dl = take(base, &off, ntok * (size_t)p->R);
    a.dtr = take(base, &off, ntok * Di);
    a.dlt = take(base, &off, ntok * Di);
    a.ys = take(base, &off, ntok * Di);
    a.yg = take(base, &off, ntok * Di);
    a.states = take(base, &off, (tb_scan_states_count(p->state_every, B, T, p->Di, p->N) + 3) & ~(size_t)3);
    size_t nt = p->titan ? ntok * C : 0;
    a.qm = take(base, &off, nt);
    a.km = take(base, &off, nt);
    a.vm = take(base, &off, nt);
    a.qn = take(base, &off, nt);
    a.kn = take(base, &off, nt);
    a.r = take(base, &off, nt);
    a.l_in = take(base, &off, linear_act_count(&p->in_proj, ntok));
    a.l_x = take(base, &off, linear_act_count(&p->x_proj, ntok));
    a.l_dt = take(base, &off, linear_act_count(&p->dt_proj, ntok));
    a.l_out = take(base, &off, linear_act_count(&p->out_proj, ntok));
    /* the memory projections read u as in_proj does: its act where they may (linear_same_x) */
    const tb_linear *mem[3] = {&p->mem_q, &p->mem_k, &p->mem_v};
    real **lm[3] = {&a.l_q, &a.l_k, &a.l_v};
    for (int i = 0; i < 3; i++)
        *lm[i] = !p->titan ? take(base, &off, 0)
                 : linear_same_x(&p->in_proj, mem[i]) ? a.l_in
                                                      : take(base, &off, linear_act_count(mem[i], ntok));
    a.total = off;
    return a;
}

size_t mamba_act_count(const tb_mamba *p, int B, int T) {
    return mb_layout(NULL, p, B, T).total;
}

/* Scratch: the gradient buffers of the backward, then the largest linear scratch. */
typedef struct mb_scr {
    real *dyg, *dxz, *dys, *dxc, *ddlt, *ddbc, *ddtr, *ddl, *dxconv, *dxb, *dqm, *dkm, *dvm;
    real *lin;
    size_t total;
} mb_scr;

static mb_scr mb_scratch(real *base, const tb_mamba *p, size_t ntok) {
    mb_scr s;
    size_t off = 0, Di = (size_t)p->Di, C = (size_t)p->C;
    s.dyg = take(base, &off, ntok * Di);
    s.dxz = take(base, &off, ntok * 2 * Di);
    s.dys = take(base, &off, ntok * Di);
    s.dxc = take(base, &off, ntok * Di);
    s.ddlt = take(base, &off, ntok * Di);
    s.ddbc = take(base, &off, ntok * (size_t)(p->R + 2 * p->N));
    s.ddtr = take(base, &off, ntok * Di);
    s.ddl = take(base, &off, ntok * (size_t)p->R);
    s.dxconv = take(base, &off, ntok * Di);
    s.dxb = take(base, &off, ntok * Di);
    size_t nt = p->titan ? ntok * C : 0;
    s.dqm = take(base, &off, nt);
    s.dkm = take(base, &off, nt);
    s.dvm = take(base, &off, nt);
    const tb_linear *lin[7] = {&p->in_proj, &p->x_proj, &p->dt_proj, &p->out_proj,
                               &p->mem_q, &p->mem_k, &p->mem_v};
    size_t m = 0;
    for (int i = 0; i < (p->titan ? 7 : 4); i++) {
        size_t c = linear_scratch_count(lin[i], ntok);
        if (c > m) m = c;
    }
    s.lin = take(base, &off, m);
    s.total = off;
    return s;
}

size_t mamba_scratch_count(const tb_mamba *p, int B, int T) {
    return mb_scratch(NULL, p, (size_t)B * (size_t)T).total;
}

void mamba_forward(const tb_backend *be, real *out, real *act, const real *u, const tb_mamba *p,
                   int B, int T) {
    size_t ntok = (size_t)B * (size_t)T;
    int Di = p->Di, R = p->R, N = p->N, W = R + 2 * N;
    mb_act a = mb_layout(act, p, B, T);
    linear_forward(be, a.xz, a.l_in, u, &p->in_proj, ntok);
    be->seq.copy_cols(a.xb, a.xz, ntok, Di, Di, 2 * Di, be);
    be->seq.conv_causal_forward(a.xconv, a.xb, p->conv_w, p->conv_b, B, T, Di, p->k, be);
    be->seq.act_forward(a.xc, a.xconv, ntok * (size_t)Di, TB_ACT_SILU, be);
    linear_forward(be, a.dbc, a.l_x, a.xc, &p->x_proj, ntok);
    be->seq.copy_cols(a.dl, a.dbc, ntok, R, R, W, be);
    linear_forward(be, a.dtr, a.l_dt, a.dl, &p->dt_proj, ntok);
    be->seq.softplus_bias_forward(a.dlt, a.dtr, p->dt_b, ntok, Di, be);
    be->seq.scan_forward(a.ys, a.states, a.xc, a.dlt, p->A_log, a.dbc + R, a.dbc + R + N, p->D,
                         B, T, Di, N, W, be);
    be->seq.mul_silu_forward(a.yg, a.ys, a.xz + Di, ntok, Di, Di, 2 * Di, be);
    linear_forward(be, out, a.l_out, a.yg, &p->out_proj, ntok);
    if (p->titan) {
        int C = p->C;
        const tb_linear *mem[3] = {&p->mem_q, &p->mem_k, &p->mem_v};
        real *ym[3] = {a.qm, a.km, a.vm}, *lm[3] = {a.l_q, a.l_k, a.l_v};
        for (int i = 0; i < 3; i++) {
            if (lm[i] == a.l_in) linear_forward_same_x(be, ym[i], a.l_in, u, mem[i], ntok);
            else linear_forward(be, ym[i], lm[i], u, mem[i], ntok);
        }
        be->seq.titan_forward(a.r, a.qn, a.kn, a.qm, a.km, a.vm, p->mem_decay, B, T, p->H,
                              C / p->H, be);
        be->core.axpy(out, R(1.0), a.r, ntok * (size_t)C);
    }
}

void mamba_backward(const tb_backend *be, real *du, real *scratch, const real *dout,
                    const real *act, const real *u, const tb_mamba *p, int B, int T) {
    size_t ntok = (size_t)B * (size_t)T, nD = ntok * (size_t)p->Di;
    int Di = p->Di, R = p->R, N = p->N, W = R + 2 * N;
    mb_act a = mb_layout((real *)act, p, B, T);
    mb_scr s = mb_scratch(scratch, p, ntok);
    if (p->titan) {
        int C = p->C;
        size_t nC = ntok * (size_t)C;
        be->core.fill(s.dqm, 0, nC);
        be->core.fill(s.dkm, 0, nC);
        be->core.fill(s.dvm, 0, nC);
        be->seq.titan_backward(s.dqm, s.dkm, s.dvm, p->dmem_decay, dout, a.qm, a.km, a.qn, a.kn,
                               a.vm, p->mem_decay, B, T, p->H, C / p->H, be);
        linear_backward(be, du, s.lin, s.dqm, a.l_q, u, &p->mem_q, ntok);
        linear_backward(be, du, s.lin, s.dkm, a.l_k, u, &p->mem_k, ntok);
        linear_backward(be, du, s.lin, s.dvm, a.l_v, u, &p->mem_v, ntok);
    }
    /* out_proj */
    linear_backward_set(be, s.dyg, s.lin, dout, a.l_out, a.yg, &p->out_proj, ntok);
    /* yg = ys ⊙ silu(z): dz lands in the second half of dxz */
    be->core.fill(s.dys, 0, nD);
    be->core.fill(s.dxz, 0, 2 * nD);
    be->seq.mul_silu_backward(s.dys, s.dxz + Di, s.dyg, a.ys, a.xz + Di, ntok, Di, Di, 2 * Di, be);
    /* scan */
    be->core.fill(s.dxc, 0, nD);
    be->core.fill(s.ddlt, 0, nD);
    be->core.fill(s.ddbc, 0, ntok * (size_t)W);
    be->seq.scan_backward(s.dxc, s.ddlt, p->dA_log, s.ddbc + R, s.ddbc + R + N, p->dD, s.dys,
                          a.states, a.xc, a.dlt, p->A_log, a.dbc + R, a.dbc + R + N, p->D, B, T,
                          Di, N, W, be);
    /* Δ = softplus(dt_proj(δ) + bias) */
    be->core.fill(s.ddtr, 0, nD);
    be->seq.softplus_bias_backward(s.ddtr, p->ddt_b, s.ddlt, a.dtr, p->dt_b, ntok, Di, be);
    linear_backward_set(be, s.ddl, s.lin, s.ddtr, a.l_dt, a.dl, &p->dt_proj, ntok);
    be->seq.add_cols(s.ddbc, s.ddl, ntok, R, W, R, be);
    /* x_proj, then xc = silu(conv(xb)) */
    linear_backward(be, s.dxc, s.lin, s.ddbc, a.l_x, a.xc, &p->x_proj, ntok);
    be->core.fill(s.dxconv, 0, nD);
    be->seq.act_backward(s.dxconv, s.dxc, a.xconv, nD, TB_ACT_SILU, be);
    be->core.fill(s.dxb, 0, nD);
    be->seq.conv_causal_backward(s.dxb, p->dconv_w, p->dconv_b, s.dxconv, a.xb, p->conv_w, B, T,
                                 Di, p->k, be);
    be->seq.add_cols(s.dxz, s.dxb, ntok, Di, 2 * Di, Di, be);
    linear_backward(be, du, s.lin, s.dxz, a.l_in, u, &p->in_proj, ntok);
}
