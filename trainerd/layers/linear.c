#include "linear.h"
#include "../backend.h"

size_t linear_codes_bytes(int in, int out) {
    return (size_t)in * (size_t)out;
}

/* Counts rounded up to 4 reals, so that a region that starts 16-byte aligned keeps its
 * parts aligned (cuBLASLt's int8 and tensor-core kernels want 16-byte operands; the MoE
 * lays the experts' regions one after the other). */
static size_t r4(size_t n) {
    return (n + 3) & ~(size_t)3;
}

/* stats (ntok, 3) then x_q packed as int8 into whole reals, each part rounded by r4. */
static size_t xq_reals(size_t ntok, int in) {
    return (ntok * (size_t)in + sizeof(real) - 1) / sizeof(real);
}

size_t linear_act_count(const tb_linear *p, size_t ntok) {
    return p->bitnet ? r4(3 * ntok) + r4(xq_reals(ntok, p->in)) : 0;
}

size_t linear_xq_offset(size_t ntok) {
    return r4(3 * ntok);
}

size_t linear_scratch_count(const tb_linear *p, size_t ntok) {
    return p->bitnet ? ntok * (size_t)p->in : 0;
}

void linear_refresh(const tb_backend *be, const tb_linear *p) {
    if (!p->bitnet) return;
    be->dense.bitlinear_quant_w(p->wq, p->sw, p->w, (size_t)p->in * (size_t)p->out);
}

void linear_forward(const tb_backend *be, real *y, real *act, const real *x, const tb_linear *p,
                    size_t ntok) {
    if (!p->bitnet) {
        be->dense.linear_fwd(y, x, p->w, ntok, p->in, p->out);
        return;
    }
    be->dense.bitlinear_quant_x((int8_t *)(act + linear_xq_offset(ntok)), act, x, ntok, p->in);
    linear_forward_same_x(be, y, act, x, p, ntok);
}

void linear_backward(const tb_backend *be, real *dx, real *scratch, const real *dy,
                     const real *act, const real *x, const tb_linear *p, size_t ntok) {
    if (!p->bitnet) {
        be->dense.linear_bwd(dx, p->dw, dy, x, p->w, ntok, p->in, p->out);
        return;
    }
    const real *stats = act;
    const int8_t *xq = (const int8_t *)(act + linear_xq_offset(ntok));
    be->dense.bitlinear_bwd(dx, p->dw, scratch, dy, x, xq, stats, p->wq, p->sw, ntok, p->in,
                            p->out);
}

void linear_backward_set(const tb_backend *be, real *dx, real *scratch, const real *dy,
                         const real *act, const real *x, const tb_linear *p, size_t ntok) {
    if (!p->bitnet) { /* plain linear_bwd has no writing form */
        be->core.fill(dx, R(0.0), ntok * (size_t)p->in);
        linear_backward(be, dx, scratch, dy, act, x, p, ntok);
        return;
    }
    const real *stats = act;
    const int8_t *xq = (const int8_t *)(act + linear_xq_offset(ntok));
    be->dense.bitlinear_bwd_set(dx, p->dw, scratch, dy, x, xq, stats, p->wq, p->sw, ntok, p->in,
                                p->out);
}

void linear_forward_groups(const tb_backend *be, real *y, real *act, const real *x,
                           const tb_linear *p, int G, size_t rows) {
    if (G <= 0 || rows == 0) return;
    size_t n = (size_t)G * rows, in = (size_t)p[0].in, out = (size_t)p[0].out;
    if (!p[0].bitnet) {
        for (int g = 0; g < G; g++)
            be->dense.linear_fwd(y + g * rows * out, x + g * rows * in, p[g].w, rows, p[g].in,
                                 p[g].out);
        return;
    }
    real *stats = act;
    int8_t *xq = (int8_t *)(act + linear_xq_offset(n));
    be->dense.bitlinear_quant_x(xq, stats, x, n, p[0].in);
    for (int g = 0; g < G; g++)
        be->dense.bitlinear_fwd(y + g * rows * out, xq + g * rows * in, stats + 3 * g * rows,
                                p[g].wq, p[g].sw, rows, p[g].in, p[g].out);
}

void linear_backward_groups_set(const tb_backend *be, real *dx, real *scratch, const real *dy,
                                const real *act, const real *x, const tb_linear *p, int G,
                                size_t rows) {
    if (G <= 0 || rows == 0) return;
    size_t n = (size_t)G * rows, in = (size_t)p[0].in, out = (size_t)p[0].out;
    if (!p[0].bitnet) {
        be->core.fill(dx, R(0.0), n * in);
        for (int g = 0; g < G; g++)
            be->dense.linear_bwd(dx + g * rows * in, p[g].dw, dy + g * rows * out,
                                 x + g * rows * in, p[g].w, rows, p[g].in, p[g].out);
        return;
    }
    const real *stats = act;
    const int8_t *xq = (const int8_t *)(act + linear_xq_offset(n));
    for (int g = 0; g < G; g++)
        be->dense.bitlinear_bwd_set(dx + g * rows * in, p[g].dw, scratch, dy + g * rows * out,
                                    x + g * rows * in, xq + g * rows * in, stats + 3 * g * rows,
                                    p[g].wq, p[g].sw, rows, p[g].in, p[g].out);
}

int linear_same_x(const tb_linear *a, const tb_linear *b) {
    return a->bitnet && b->bitnet && a->in == b->in;
}

void linear_forward_same_x(const tb_backend *be, real *y, const real *act, const real *x,
                           const tb_linear *p, size_t ntok) {
    if (!p->bitnet) {
        be->dense.linear_fwd(y, x, p->w, ntok, p->in, p->out);
        return;
    }
    const real *stats = act;
    const int8_t *xq = (const int8_t *)(act + linear_xq_offset(ntok));
    be->dense.bitlinear_fwd(y, xq, stats, p->wq, p->sw, ntok, p->in, p->out);
}
