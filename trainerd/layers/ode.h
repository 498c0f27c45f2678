/* The ODE mixer (MODEL.md section 6 'ode'): f(z) = o(Attn(qkv(Nf(z)))) with a fused
 * qkv = lin(C -> 3C) laid out s·C + h·hs + d (s = 0, 1, 2 for q, k, v), o = lin(C -> C),
 * softmax attention with the key padding mask, no position encoding, dropout on P.
 * z(0) = u, S steps of dt = 1/S, rk4 or euler; the output is z(1).
 * Backward: exact gradients of the discrete steps. Forward stores every evaluation's
 * stage input and its activations (S·stages evaluations) except Nf(zin), which the
 * backward rebuilds (an element-wise norm, the same bits), and keeps k1 of each step;
 * the backward walks them in reverse.
 * L_ode: forward returns Σ_steps mean(k1²) over all B·T·C elements (the model divides
 * the sum over ODE layers by (#evaluations · S)); backward takes g_ode = dL/d(that sum).
 * Dropout site of evaluation e = step·stages + stage: TB_DROPOUT_SITE_ATTN + e.
 * Names (section 11): mixer.ode_func.{qkv,out_proj}.weight, mixer.ode_func.norm.*. */
#ifndef TB_ODE_H
#define TB_ODE_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"
#include "linear.h"
#include "norm.h"
#include "dropout.h"

struct tb_backend;

typedef struct tb_ode {
    tb_norm norm;   /* Nf */
    tb_linear qkv;  /* (3C, C) */
    tb_linear o;    /* (C, C) */
    int C, H;
    int steps;      /* S >= 1 */
    int rk4;        /* 1: rk4, 0: euler */
    int recompute_probs; /* 1: the backend keeps no P (dense.attn_recomputes) */
} tb_ode;

size_t ode_act_count(const tb_ode *p, int B, int T);
size_t ode_scratch_count(const tb_ode *p, int B, int T);

/* out = z(1); Σ k1² of each step is queued into k1_sq (backend memory, p->steps doubles,
 * dense.sum_squares_dev): nothing is waited for; ode_lode forms Σ_steps mean(k1²) from a
 * host copy. */
void ode_forward(const struct tb_backend *be,
                   real *out,               // (B, T, C)
                   real *act,               // ode_act_count
                   real *scratch,           // ode_scratch_count (transient)
                   const real *u,           // (B, T, C)
                   const tb_ode *p,
                   const uint8_t *key_mask, // (B, T) or NULL
                   const tb_dropout *d, int B, int T, double *k1_sq);
/* Σ_steps mean(k1²) from the per-step Σ k1² that ode_forward queued (a host copy). */
double ode_lode(const double *k1_sq, const tb_ode *p, int B, int T);
/* du += ..., parameter grads += ...; g_ode = dL/d(forward's return value). */
void ode_backward(const struct tb_backend *be,
                  real *du,                 // (B, T, C) +=
                  real *scratch,            // ode_scratch_count
                  const real *dout,         // (B, T, C)
                  const real *act, const real *u, const tb_ode *p,
                  const uint8_t *key_mask, const tb_dropout *d, real g_ode, int B, int T);

#endif
