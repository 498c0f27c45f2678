/* The retnet mixer (MODEL.md 6 'retnet'):
 *   q, k, v, g = lin(C -> C)(u);  y = Retention(q, k, v) (H heads, hs = C/H, γ_h per head,
 *   causal unless bidirectional);  out = o(Nr(y) ⊙ silu(g)), o = lin(C -> C), Nr its own
 *   norm over C. No xPos, no group norm (as the reference).
 * Parameter names (section 11): mixer.{q_proj,k_proj,v_proj,g_proj,out_proj}.weight,
 * mixer.norm.* ; the registry (model/params.c) owns names, shapes and init; model code
 * fills this struct from it. Padding flows through (section 6). */
#ifndef TB_RETENTION_H
#define TB_RETENTION_H
#include <stddef.h>
#include "../real.h"
#include "linear.h"
#include "norm.h"

struct tb_backend;

typedef struct tb_retention {
    tb_linear q, k, v, g, o; /* each (C, C) */
    tb_norm norm;            /* Nr over C */
    int C, H;                /* H = retention_heads; hs = C / H */
    int bidirectional;       /* retention_bidirectional */
} tb_retention;

/* Reals of activation storage forward writes and backward reads. */
size_t retention_act_count(const tb_retention *p, int B, int T);
/* Reals of scratch backward needs. */
size_t retention_scratch_count(const tb_retention *p, int B, int T);

void retention_forward(const struct tb_backend *be,
                       real *out,      // (B, T, C)
                       real *act,      // retention_act_count
                       const real *u,  // (B, T, C)
                       const tb_retention *p, int B, int T);
/* du += ..., every projection's dw and the norm's dp += ... */
void retention_backward(const struct tb_backend *be,
                        real *du,         // (B, T, C) +=
                        real *scratch,    // retention_scratch_count
                        const real *dout, // (B, T, C)
                        const real *act,  // from retention_forward
                        const real *u,    // (B, T, C)
                        const tb_retention *p, int B, int T);

#endif
