/* The Mamba mixer with its selective scan and the Titan memory (MODEL.md 6 'mamba'):
 *   [xb, z] = in_proj(u) (C -> 2Di, xb the first Di channels);
 *   xc = silu(conv(xb)), causal depthwise Conv1d (weight [Di, 1, k], bias [Di]);
 *   [δ, Bm, Cm] = x_proj(xc) (Di -> R + 2N);  Δ = softplus(dt_proj(δ)) (plain linear
 *   [Di, R] with bias);  A = -exp(A_log);  y = scan(xc, Δ, A, Bm, Cm, D);  y = y ⊙ silu(z);
 *   out = out_proj(y) (Di -> C) + r, r the Titan memory read of qm, km, vm =
 *   mem_{q,k,v}_proj(u) (C -> C) with H heads, when titan_memory.
 * Parameter names (section 11): mixer.{in_proj,x_proj,out_proj}.weight,
 * mixer.conv1d.{weight,bias}, mixer.dt_proj.{weight,bias}, mixer.A_log, mixer.D,
 * mixer.mem_{q,k,v}_proj.weight, mixer.mem_decay; the registry (model/params.c) owns
 * names, shapes and init; model code fills this struct from it. Causal in t. */
#ifndef TB_MAMBA_H
#define TB_MAMBA_H
#include <stddef.h>
#include "../real.h"
#include "linear.h"

struct tb_backend;

typedef struct tb_mamba {
    tb_linear in_proj;             /* (2Di, C) */
    tb_linear x_proj;              /* (R + 2N, Di) */
    tb_linear dt_proj;             /* (Di, R), always plain (bitnet = 0) */
    tb_linear out_proj;            /* (C, Di) */
    tb_linear mem_q, mem_k, mem_v; /* (C, C), used when titan */
    real *conv_w, *dconv_w;        /* (Di, 1, k) */
    real *conv_b, *dconv_b;        /* (Di) */
    real *dt_b, *ddt_b;            /* (Di) dt_proj.bias */
    real *A_log, *dA_log;          /* (Di, N) */
    real *D, *dD;                  /* (Di) */
    real *mem_decay, *dmem_decay;  /* (H), used when titan */
    int C, Di, N, R, k;            /* Di = 2C, R = ceil(C/16), N = mamba_d_state, k = d_conv */
    int H;                         /* Titan memory heads (num_heads), hs = C / H */
    int titan;                     /* titan_memory */
    int state_every;               /* the backend's seq.scan_state_every (0: every state) */
} tb_mamba;

size_t mamba_act_count(const tb_mamba *p, int B, int T);
size_t mamba_scratch_count(const tb_mamba *p, int B, int T);

void mamba_forward(const struct tb_backend *be,
                   real *out,     // (B, T, C)
                   real *act,     // mamba_act_count
                   const real *u, // (B, T, C)
                   const tb_mamba *p, int B, int T);
/* du += ..., every parameter gradient += ... */
void mamba_backward(const struct tb_backend *be,
                    real *du,         // (B, T, C) +=
                    real *scratch,    // mamba_scratch_count
                    const real *dout, // (B, T, C)
                    const real *act,  // from mamba_forward
                    const real *u,    // (B, T, C)
                    const tb_mamba *p, int B, int T);

#endif
