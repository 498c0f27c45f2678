/* The parameter registry: every tensor of the model (MODEL.md section 11 names and
 * PyTorch shapes, physical layers), its initialisation (section 9), its AdamW group
 * (section 10, from the owning layer) and its offset in the flat buffers.
 *
 * One flat allocation per role: param, grad, m, v (tb_params.total reals each), plus the
 * derived BitLinear buffers (recomputed after each optimizer step): `codes` (int8, a
 * BitLinear weight of numel n owns n codes at codes_offset) and `scales` (one s_w each,
 * at scale_index).
 * Layers get pointers into these buffers through the index tables below (model.c fills
 * the layer helpers' parameter structs from them). */
#ifndef TB_MODEL_PARAMS_H
#define TB_MODEL_PARAMS_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"
#include "config.h"
#include "tb_err.h"

typedef enum tb_init_kind {
    TB_INIT_UNIFORM = 0, /* U(-a, a) */
    TB_INIT_NORMAL,      /* N(0, a^2) */
    TB_INIT_CONST,       /* a */
    TB_INIT_A_LOG,       /* [Di, N]: ln(n + 1) (MODEL.md section 6, mamba) */
    TB_INIT_DT_BIAS,     /* softplus^-1(exp(U(ln a, ln b))) */
} tb_init_kind;

typedef struct tb_tensor {
    char name[128];
    int ndim;
    int64_t shape[4];
    size_t numel;
    size_t offset;          /* in param / grad / m / v */
    size_t codes_offset;    /* BitLinear: into codes; else SIZE_MAX */
    size_t scale_index;     /* BitLinear: into scales; else SIZE_MAX */
    int group;              /* tb_group */
    int init;               /* tb_init_kind */
    double init_a, init_b;
    int layer;              /* physical layer, -1 outside the layers */
    int bitlinear;          /* weight of a BitLinear (quantised when use_bitnet) */
} tb_tensor;

/* Tensor indices of a norm site (-1 where the norm type lacks the parameter). */
typedef struct tb_norm_ix {
    int alpha, s, gamma, beta, weight, bias;
} tb_norm_ix;

/* Tensor indices of one physical layer (-1 where absent). The projections: attention
 * q, k, v, o; retnet q, k, v, g, o + mnorm; ode qkv, o + mnorm (ode_func.norm); mamba
 * in_proj, conv_w, conv_b, x_proj, dt_w, dt_b, a_log, d, mem_q, mem_k, mem_v, mem_decay,
 * o (out_proj). FFN: router + expert_up[e] (experts.e.0) / expert_down[e] (experts.e.2),
 * or ffn_up / ffn_down (ffn.0 / ffn.2). */
typedef struct tb_layer_ix {
    int mixer; /* tb_mixer_kind */
    tb_norm_ix norm1, norm2, mnorm;
    int q, k, v, g, o, qkv;
    int in_proj, conv_w, conv_b, x_proj, dt_w, dt_b, a_log, d, mem_q, mem_k, mem_v, mem_decay;
    int router, ffn_up, ffn_down;
    int *expert_up, *expert_down; /* num_experts each (NULL without MoE) */
} tb_layer_ix;

typedef struct tb_params {
    tb_model_config cfg;
    int count;
    tb_tensor *t;     /* count */
    size_t total;     /* reals per role */
    size_t codes_total;   /* int8 codes */
    size_t scales_total;  /* reals */
    /* index tables */
    int emb, emb_conv_w, emb_conv_b, emb_proj; /* emb = table ([V, C] or [V, Cl]) */
    int head;
    tb_norm_ix final_norm;
    tb_layer_ix *layers; /* num_layers (physical) */
    /* flat buffers (NULL until tb_params_alloc) */
    real *param, *grad, *m, *v, *scales;
    int8_t *codes;
} tb_params;

/* Builds the registry from a finished config (no tensor memory). */
int tb_params_build(tb_params *p, const tb_model_config *mc, tb_err *err);
/* Allocates param, grad, m, v (zeroed), codes and scales. */
int tb_params_alloc(tb_params *p, tb_err *err);
void tb_params_free(tb_params *p);
/* Initialises every parameter from the seed (MODEL.md section 9): tensor i draws from
 * the Philox stream (seed, TB_RNG_INIT, i, 0, 0) in element order. */
void tb_params_init(tb_params *p, uint64_t seed);
/* Index of a tensor by name, or -1. */
int tb_params_find(const tb_params *p, const char *name);

static inline real *tb_params_w(const tb_params *p, int i) {
    return i < 0 ? NULL : p->param + p->t[i].offset;
}
static inline real *tb_params_dw(const tb_params *p, int i) {
    return i < 0 ? NULL : p->grad + p->t[i].offset;
}

/* Number of parameters of a config without building anything (MODEL.md section 1). */
int64_t tb_params_count(const tb_model_config *mc);

#endif
