/* BitLinear and the plain linear (MODEL.md section 2), one type with a `bitnet` flag.
 *
 * BitLinear forward over ntok tokens:
 *   x̂ = LN0(x) per token (no affine, eps 1e-5, biased variance),
 *   s_x = 127 / max(max_j |x̂_j|, 1e-5),  x_q = clamp(rint(x̂ · s_x), -128, 127),
 *   s_w = 1 / max(mean |W|, 1e-5),       w_q = clamp(rint(W · s_w), -1, 1),
 *   y = (real)(Σ_j x_q w_q as int32) / (s_x · s_w)       (rint = round half to even).
 * Backward (straight-through; s_x, s_w constants), with x̃ = x_q / s_x, w̃ = w_q / s_w:
 *   dx̂ = dy · w̃,  dW += dyᵀ · x̃,  dx += LN0ᵀ(dx̂),
 *   LN0ᵀ(g) = rstd · (g - mean(g) - x̂ · mean(g ⊙ x̂)).
 * Plain (bitnet = 0): y = x Wᵀ; dx += dy W; dW += dyᵀ x.
 *
 * The codes w_q and the scale s_w are derived buffers: linear_refresh() recomputes them
 * from w once after every optimizer step (and after init / load), never per forward. */
#ifndef TB_LINEAR_H
#define TB_LINEAR_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"

struct tb_backend;

typedef struct tb_linear {
    real *w, *dw;  /* (out, in) weight and its gradient, in the flat buffers */
    int8_t *wq;    /* (out, in) ternary codes; bitnet only (NULL otherwise) */
    real *sw;      /* [1] s_w; bitnet only */
    int in, out;
    int bitnet;
} tb_linear;

/* Bytes of codes (wq) a BitLinear of this shape needs: out · in. */
size_t linear_codes_bytes(int in, int out);

/* Reals of activation storage forward writes and backward reads, for ntok tokens.
 * BitLinear: per token (mean, rstd, s_x) then x_q as int8 packed into reals
 * (3·ntok + ceil(ntok·in / sizeof(real))). Plain: 0 (backward reads the input x). */
size_t linear_act_count(const tb_linear *p, size_t ntok);
/* Where a BitLinear act's int8 codes start, in reals after its per-token stats. */
size_t linear_xq_offset(size_t ntok);
/* Reals of scratch backward needs (BitLinear: dx̂, ntok·in; plain: 0). */
size_t linear_scratch_count(const tb_linear *p, size_t ntok);

/* Recompute wq and sw from w (bitnet only; no-op for plain). */
void linear_refresh(const struct tb_backend *be, const tb_linear *p);

/* y = linear(x). act: linear_act_count reals (may be NULL when that count is 0). */
void linear_forward(const struct tb_backend *be,
                    real *y,        // (ntok, out)
                    real *act,      // linear_act_count
                    const real *x,  // (ntok, in)
                    const tb_linear *p, size_t ntok);

/* dx += ..., p->dw += ...; dx may be NULL (no input gradient wanted). x is the same input
 * forward saw; act what forward wrote; scratch: linear_scratch_count reals. */
void linear_backward(const struct tb_backend *be,
                     real *dx,          // (ntok, in) +=, or NULL
                     real *scratch,     // linear_scratch_count
                     const real *dy,    // (ntok, out)
                     const real *act,   // linear_act_count
                     const real *x,     // (ntok, in)
                     const tb_linear *p, size_t ntok);
/* As linear_backward with dx = ... (dx not NULL; its contents are not read): the same
 * values as zeroing dx and calling linear_backward; a BitLinear's goes through
 * dense.bitlinear_bwd_set (no separate fill where the backend writes dx directly). */
void linear_backward_set(const struct tb_backend *be, real *dx, real *scratch, const real *dy,
                         const real *act, const real *x, const tb_linear *p, size_t ntok);

/* G linears of one shape and kind (p[0 .. G-1], e.g. the MoE's experts) over G stacked
 * groups of `rows` rows: group g is rows g·rows .. of x (in) and y (out). act holds
 * linear_act_count(&p[0], G·rows) reals laid out as one linear's over all G·rows rows
 * (a BitLinear's activation quantiser runs once over them all: it is per row); the
 * values of linear_forward per group. scratch of the backward: linear_scratch_count(&p[0],
 * rows) reals. */
void linear_forward_groups(const struct tb_backend *be, real *y, real *act, const real *x,
                           const tb_linear *p, int G, size_t rows);
/* Whether b may use a's act for the same input x (both BitLinears of the same width: the
 * activation codes and scales depend on x alone), and linear_forward of such a b from the
 * act a linear_forward of a wrote: the values of linear_forward, without quantising x
 * again. Layers whose projections share an input keep one act for all of them. */
int linear_same_x(const tb_linear *a, const tb_linear *b);
void linear_forward_same_x(const struct tb_backend *be, real *y, const real *act, const real *x,
                           const tb_linear *p, size_t ntok);
/* The writing backward of linear_forward_groups: dx = ... (all G·rows rows), p[g].dw += ...;
 * the values of linear_backward_set per group. */
void linear_backward_groups_set(const struct tb_backend *be, real *dx, real *scratch,
                                const real *dy, const real *act, const real *x,
                                const tb_linear *p, int G, size_t rows);

#endif
