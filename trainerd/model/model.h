/* The whole model (MODEL.md section 8) over the op interface:
 *   embedding -> dropout -> logical layers l = 0 .. L·loops - 1 (physical l mod L,
 *   mixer pattern[i mod len]), each h = x + Mixer(N1(x)); out = h + FFN(N2(h))
 *   -> final norm -> head -> masked CE (+ λ_bal · mean L_bal + λ_ode · L_ode), accuracy.
 * Parameters live in the registry's flat buffers (params.h); activations in one arena
 * sized at creation for a maximum (B, T) (the "measure pass"): nothing is allocated by
 * forward or backward. */
#ifndef TB_MODEL_MODEL_H
#define TB_MODEL_MODEL_H
#include <stddef.h>
#include <stdint.h>
#include "../backend.h"
#include "../layers/attention.h"
#include "../layers/dropout.h"
#include "../layers/embedding.h"
#include "../layers/linear.h"
#include "../layers/mamba.h"
#include "../layers/moe.h"
#include "../layers/norm.h"
#include "../layers/ode.h"
#include "../layers/retention.h"
#include "config.h"
#include "params.h"
#include "tb_err.h"

/* One micro-batch. labels: -100 where not supervised. key_mask NULL: no padding. */
typedef struct tb_batch {
    const int32_t *ids;      // (B, T)
    const int32_t *labels;   // (B, T)
    const uint8_t *key_mask; // (B, T) nonzero = real token, or NULL
    int B, T;
} tb_batch;

typedef struct tb_fwd_result {
    double loss;      /* CE + λ_bal · L̄_bal + λ_ode · L_ode */
    double ce, accuracy;
    double l_bal;     /* mean over MoE evaluations (0 without MoE) */
    double l_ode;     /* mean over (ODE evaluation, step) of mean(k1²) */
    int64_t count, correct;
} tb_fwd_result;

/* Dropout of one forward/backward pair: the counter is the micro-step (optimizer step ·
 * accumulation + micro index), so every micro-batch draws distinct masks. */
typedef struct tb_dropout_ctx {
    uint64_t seed;
    uint32_t counter;
    int enabled;
} tb_dropout_ctx;

/* A physical layer's parameter structs (pointers into the registry's buffers). */
typedef struct tb_block {
    int mixer; /* tb_mixer_kind */
    tb_norm n1, n2;
    tb_attention attn;
    tb_ode ode;
    tb_retention ret;
    tb_mamba mamba;
    int use_moe;
    tb_moe moe;  /* up / down point into tb_model.expert_linears */
    tb_ffn ffn;  /* use_moe false */
} tb_block;

/* Arena pointers of a logical layer. */
typedef struct tb_lstore {
    real *x;      // (B, T, C) layer input
    real *n1act, *u;    // N1 stats, u = N1(x) (B, T, C); u, v: buffers shared by all
                        // layers, rebuilt by the backward
    real *mact;   // mixer activations
    real *h;      // (B, T, C)
    real *n2act, *v;    // N2 stats, v = N2(h)
    real *fact;   // FFN activations
} tb_lstore;

/* Phases of the step that tb_model_profile times. */
enum {
    TB_PHASE_EMBED = 0,
    TB_PHASE_NORMS,  /* N1, N2 of every layer */
    TB_PHASE_ODE,
    TB_PHASE_RETNET,
    TB_PHASE_MAMBA,
    TB_PHASE_ATTN,
    TB_PHASE_FFN,    /* MoE or dense FFN, residual adds */
    TB_PHASE_HEAD,   /* final norm, head, loss */
    TB_PHASE_COUNT
};
extern const char *const tb_phase_names[TB_PHASE_COUNT];

/* Parts of the activation arena, for the memory report (tb_model_arena_part_bytes): the
 * logical layers' inputs, norm outputs and norm state (x, u, h, v); each mixer kind's
 * activations; the FFN / MoE activations; embedding, final norm, head, logits and loss;
 * the backward's gradients of the layer walk and its scratch. */
enum {
    TB_ARENA_LAYER_IO,
    TB_ARENA_ODE,
    TB_ARENA_RETNET,
    TB_ARENA_MAMBA,
    TB_ARENA_ATTN,
    TB_ARENA_FFN,
    TB_ARENA_RECOMPUTE, /* the region the recomputed layers share */
    TB_ARENA_HEAD,
    TB_ARENA_BACKWARD,
    TB_ARENA_PARTS
};
extern const char *const tb_arena_part_names[TB_ARENA_PARTS];

typedef struct tb_model {
    tb_params p;
    tb_model_config cfg;
    const tb_backend *be;
    int maxB, maxT;
    int nlogical;
    tb_embedding emb;
    tb_block *blocks;   /* cfg.num_layers */
    tb_norm final_norm;
    tb_linear head;
    tb_linear *linears; /* every linear, for refresh */
    tb_linear *expert_linears; /* 2 · E per physical layer (MoE up, down) */
    int nlinears;
    /* arena (sized for maxB · maxT tokens) */
    real *arena;
    size_t arena_count;
    size_t arena_parts[TB_ARENA_PARTS]; /* reals of arena by part (tb_arena_part_names) */
    real *emb_act, *x_final, *fn_act, *y_final, *head_act, *logits, *loss_act;
    tb_lstore *ls;      /* nlogical */
    /* backward scratch */
    real *dlogits, *dx, *dh, *du, *dv, *scratch;
    double *ode_sums;   /* per (logical layer, step): Σ k1², host copy of ode_sq */
    double *ode_sq;     /* the same in backend memory (written by the forward's ops) */
    real *lbal;         /* per logical layer: L_bal of its MoE evaluation */
    int n_ode_evals;
    /* activation_recompute: per logical layer 1 when it keeps only its input and shares
     * one activation region with the others so marked; rec_last: the highest such (-1). */
    unsigned char *rec;
    int rec_last;
    /* Phase timing (tb_model_profile): seconds per phase, forward [0] and backward [1]. */
    int profile;
    double prof[2][TB_PHASE_COUNT];
    /* last forward */
    int B, T;
    tb_dropout_ctx drop;
} tb_model;

/* Builds the registry, allocates parameters and the arena for up to maxB x maxT. */
int tb_model_create(tb_model *m, const tb_model_config *mc, const tb_backend *be, int maxB,
                    int maxT, tb_err *err);
void tb_model_free(tb_model *m);
/* Parameters from the seed (MODEL.md 9), then derived buffers. */
void tb_model_init(tb_model *m, uint64_t seed);
/* Recompute derived buffers (BitLinear codes) after params changed (step, load). */
void tb_model_refresh(tb_model *m);
/* Reals of arena the model holds (for logs). */
/* Model FLOPs of one training step per token (forward, then a backward counted as twice
 * the forward) at sequence length T, from a finished config: every projection 2·in·out,
 * attention and retention 4·T·C per evaluation (QKᵀ and P·V over all T keys), each ODE
 * evaluation counted, top-K experts per token (capacity drops ignored), router, factorized
 * embedding projection and Conv1d, head; the Mamba scan 9·Di·N and the Titan memory
 * 4·C·hs (update and read). Element-wise work (norms, activations, softmax) and the
 * optimizer are not counted, as in the usual MFU convention. */
double tb_model_train_flops_per_token(const tb_model_config *c, int T);
size_t tb_model_arena_bytes(const tb_model *m);
/* Bytes of one part of the arena (TB_ARENA_*); the parts add up to tb_model_arena_bytes. */
size_t tb_model_arena_part_bytes(const tb_model *m, int part);

/* Forward of one micro-batch; validates ids and labels (outside input). */
int tb_model_forward(tb_model *m, const tb_batch *b, const tb_dropout_ctx *d,
                     tb_fwd_result *res, tb_err *err);
/* Backward of the last forward: every parameter gradient += dL/dθ · grad_scale. */
void tb_model_backward(tb_model *m, const tb_batch *b, double grad_scale);

/* Phase timing for finding where a step's time goes: when on, forward and backward wait
 * for the backend after each phase (a one-byte to_host) and add its wall time to
 * m->prof; this serialises an asynchronous backend, so the step itself gets slower.
 * Off by default. */
void tb_model_profile(tb_model *m, int on);

/* The tensors of the registry, by mixer, as the layer structs see them (tests). */
const tb_block *tb_model_block(const tb_model *m, int physical);

#endif
