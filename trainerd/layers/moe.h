/* The feed-forward block (MODEL.md 7): a sparse mixture of experts, or one dense FFN.
 *
 * MoE over ntok = B·T tokens (b-major): logits = router(v) (plain linear C -> E, no bias);
 * p = softmax(logits); top-K by a stable descending sort (ties: lower index); gates
 * renormalised over the top K or not (moe_renormalize); capacity ceil(cf·K·ntok/E) per
 * expert (cf = 0: none), accepted in token order, a dropped assignment contributes 0 and
 * the token keeps its other gate; expert e: lin(C -> F), act (silu | exact gelu),
 * lin(F -> C); out = Σ_e g_e expert_e(v), summed in expert order.
 * L_bal = E Σ_e f_e P_e (f_e counted before drops) is written to *lbal; the backward
 * adds bal_scale · ∂L_bal (bal_scale = λ_bal / number of MoE evaluations).
 * Dense (use_moe false): out = down(act(up(v))).
 * Parameter names (section 11): router.weight, experts.{e}.0.weight, experts.{e}.2.weight |
 * ffn.0.weight, ffn.2.weight; the registry (model/params.c) owns names, shapes and init.
 * With a capacity (cf > 0) and fixed_rows the experts run at a fixed size with no host
 * synchronisation (the model asks for it where the backend's memory is off the host;
 * on the host, reading the routing costs nothing and the padding rows would):
 * P rows each (the capacity, at most ntok, rounded up to 16), laid out by moe_pad_order;
 * a row past an expert's kept count is padding (zero input, output never added), so the
 * values are those of the kept rows alone; the gather, activation, scatter and the
 * BitLinear activation quantiser run once over all E·P rows, each expert's GEMMs keep one
 * shape from step to step. Otherwise (no capacity, cf = 0, where an expert may get any
 * number of rows up to ntok, or fixed_rows 0) the expert loop reads the routing offsets
 * on the host (a device backend copies E+1 int32 back, once in the forward and once in
 * the backward) and runs each expert over its kept rows. Both give the same values. */
#ifndef TB_MOE_H
#define TB_MOE_H
#include <stddef.h>
#include "../real.h"
#include "linear.h"

struct tb_backend;

typedef struct tb_moe {
    tb_linear router;     /* (E, C), plain (bitnet = 0) */
    tb_linear *up, *down; /* E each: up (F, C) = experts.e.0, down (C, F) = experts.e.2 */
    int C, F, E, K;
    int act;              /* tb_act_kind (ops/ops_seq.h) */
    int renormalize;      /* moe_renormalize */
    double capacity_factor; /* moe_capacity_factor; 0 = no limit */
    int fixed_rows;       /* 1: the fixed-capacity layout when there is a capacity (the
                           * model sets it where the backend's memory is off the host) */
} tb_moe;

size_t moe_act_count(const tb_moe *p, size_t ntok);
size_t moe_scratch_count(const tb_moe *p, size_t ntok);

void moe_forward(const struct tb_backend *be,
                 real *out,     // (ntok, C)
                 real *lbal,    // (1) L_bal of this evaluation
                 real *act,     // moe_act_count
                 real *scratch, // moe_scratch_count (the experts' transient operands)
                 const real *v, // (ntok, C)
                 const tb_moe *p, size_t ntok);
/* dv += ..., router and expert dw += ... */
void moe_backward(const struct tb_backend *be,
                  real *dv,         // (ntok, C) +=
                  real *scratch,    // moe_scratch_count
                  const real *dout, // (ntok, C)
                  real bal_scale,   // λ_bal / number of MoE evaluations
                  const real *act,  // from moe_forward
                  const real *v,    // (ntok, C)
                  const tb_moe *p, size_t ntok);
/* The same with dv written (the bits of a zero fill then moe_backward, without the fill). */
void moe_backward_set(const struct tb_backend *be, real *dv, real *scratch, const real *dout,
                      real bal_scale, const real *act, const real *v, const tb_moe *p,
                      size_t ntok);

typedef struct tb_ffn {
    tb_linear up, down; /* ffn.0 (F, C), ffn.2 (C, F) */
    int C, F;
    int act;            /* tb_act_kind */
} tb_ffn;

size_t ffn_act_count(const tb_ffn *p, size_t ntok);
size_t ffn_scratch_count(const tb_ffn *p, size_t ntok);
void ffn_forward(const struct tb_backend *be,
                 real *out,     // (ntok, C)
                 real *act,     // ffn_act_count
                 const real *v, // (ntok, C)
                 const tb_ffn *p, size_t ntok);
void ffn_backward(const struct tb_backend *be,
                  real *dv,         // (ntok, C) +=
                  real *scratch,    // ffn_scratch_count
                  const real *dout, // (ntok, C)
                  const real *act,  // from ffn_forward
                  const real *v,    // (ntok, C)
                  const tb_ffn *p, size_t ntok);

#endif
