/* Softmax and sigmoid attention mixers (MODEL.md section 6):
 *   titan_attn: q = lin(C -> C), k, v = lin(C -> Hkv·hs), o = lin(C -> C); position
 *     encoding on q and k; P = softmax(q kᵀ / sqrt(hs)); dropout on P; out = o(P v).
 *   standard_attn: the same without position encoding.
 *   sigmoid_attn: no position encoding; W = σ(q kᵀ / sqrt(hs)), P = W / (ΣW + 1e-6).
 * Key padding mask (nonzero = real token) on every variant; a query whose keys are all
 * masked gets P = 0. Dropout site TB_DROPOUT_SITE_ATTN. Parameter names (section 11):
 * mixer.{q_proj,k_proj,v_proj,out_proj}.weight. */
#ifndef TB_ATTENTION_H
#define TB_ATTENTION_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"
#include "linear.h"
#include "posenc.h"
#include "dropout.h"

struct tb_backend;

typedef enum tb_attn_kind {
    TB_ATTN_TITAN = 0,
    TB_ATTN_STANDARD,
    TB_ATTN_SIGMOID,
} tb_attn_kind;

typedef struct tb_attention {
    tb_linear q, k, v, o; /* q, o: (C, C); k, v: (Hkv·hs, C) */
    tb_attn_kind kind;
    int C, H, Hkv;        /* hs = C / H; H % Hkv == 0 */
    tb_pos_kind pos;      /* titan only (standard and sigmoid ignore it) */
    double pos_base, pos_damping;
    int recompute_probs;  /* 0: P (B, H, T, T) is stored for the backward; 1: the backend
                           * recomputes it (dense.attn_recomputes; softmax only) */
} tb_attention;

size_t attention_act_count(const tb_attention *p, int B, int T);
size_t attention_scratch_count(const tb_attention *p, int B, int T);

/* Frees the device copies of the position tables held for backend be (a backend without
 * host memory keeps each table it uploaded, per thread, until this call: tb_model_free
 * makes it). */
void attention_release_tables(const struct tb_backend *be);

/* out = mixer(u). layer: logical layer (HoPE's g). */
void attention_forward(const struct tb_backend *be,
                       real *out,               // (B, T, C)
                       real *act,               // attention_act_count
                       const real *u,           // (B, T, C)
                       const tb_attention *p,
                       const uint8_t *key_mask, // (B, T) nonzero = attend, or NULL
                       const tb_dropout *d,     // or NULL
                       int layer, int B, int T);
/* du += ..., every projection's dw += ... */
void attention_backward(const struct tb_backend *be,
                        real *du,                // (B, T, C) +=
                        real *scratch,           // attention_scratch_count
                        const real *dout,        // (B, T, C)
                        const real *act, const real *u, const tb_attention *p,
                        const uint8_t *key_mask, const tb_dropout *d, int layer, int B, int T);

#endif
