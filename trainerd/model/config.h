/* Model and training configuration: the reference's `model:` and `training:` keys
 * (MODEL.md section 1, the reference's configs/mini.yaml and frankenstein.yaml), our
 * additions, and the presets tiny, mini, frankenstein and ultra.
 *
 * The schema is table-driven (common/tb_config.h). A daemon that adds its own blocks
 * (`daemon:`) copies these fields into its schema with tb_run_config_fields(). */
#ifndef TB_MODEL_CONFIG_H
#define TB_MODEL_CONFIG_H
#include <stddef.h>
#include <stdint.h>
#include "tb_config.h"
#include "tb_err.h"

/* Enum orders match the `choices` strings of the schema (config.c). */
typedef enum tb_mixer_kind {
    TB_MIXER_RETNET = 0,
    TB_MIXER_TITAN_ATTN,
    TB_MIXER_STANDARD_ATTN,
    TB_MIXER_SIGMOID_ATTN,
    TB_MIXER_MAMBA,
    TB_MIXER_ODE,
    TB_MIXER_COUNT
} tb_mixer_kind;
#define TB_MIXER_CHOICES "retnet|titan_attn|standard_attn|sigmoid_attn|mamba|ode"

typedef enum tb_cfg_norm {
    TB_CFG_NORM_DYNAMIC_TANH = 0,
    TB_CFG_NORM_DYT,
    TB_CFG_NORM_DERF,
    TB_CFG_NORM_LAYER_NORM,
    TB_CFG_NORM_RMS_NORM,
} tb_cfg_norm;

typedef enum tb_cfg_pos {
    TB_CFG_POS_HOPE = 0,
    TB_CFG_POS_HOPE_HYPERBOLIC,
    TB_CFG_POS_ROPE,
    TB_CFG_POS_NONE,
    TB_CFG_POS_AUTO, /* config only: use_hope picks hope or none (tb_model_config_finish) */
} tb_cfg_pos;

typedef enum tb_cfg_ode { TB_CFG_ODE_RK4 = 0, TB_CFG_ODE_EULER } tb_cfg_ode;
typedef enum tb_cfg_act { TB_CFG_ACT_SILU = 0, TB_CFG_ACT_GELU } tb_cfg_act;

#define TB_MAX_PATTERN 64

/* `model:` block. Integers are int64_t and booleans int because the schema stores them so;
 * after tb_model_config_finish() the derived fields below are valid. */
typedef struct tb_model_config {
    int64_t vocab_size, hidden_size, num_layers, num_loops, num_heads, retention_heads;
    int64_t num_experts, top_k_experts;
    double dropout;
    int ode_solver;  /* tb_cfg_ode */
    int64_t ode_steps;
    int use_bitnet;
    int norm_type;   /* tb_cfg_norm */
    tb_cfg_strlist layer_pattern;
    int use_factorized_embedding;
    int64_t factorized_embedding_dim;
    int use_embedding_conv;
    int64_t embedding_conv_kernel;
    double hope_base, hope_damping;
    int use_hope, use_moe;
    int64_t ffn_hidden_size; /* 0 = 2C */
    int ffn_activation;      /* tb_cfg_act */
    /* additions (MODEL.md section 1) */
    int64_t num_kv_heads;    /* 0 = num_heads */
    int pos_encoding;        /* tb_cfg_pos; TB_CFG_POS_AUTO until finished */
    int moe_renormalize;
    double moe_capacity_factor;
    int64_t mamba_d_state, mamba_d_conv;
    int titan_memory, retention_bidirectional;
    int activation_recompute; /* tb_cfg_recompute: layers replayed in the backward */
    double lambda_bal, lambda_ode;
    /* derived by tb_model_config_finish */
    int pattern_len;
    int pattern[TB_MAX_PATTERN]; /* tb_mixer_kind */
} tb_model_config;

/* AdamW parameter groups (MODEL.md section 10), in the reference's key order. */
typedef enum tb_group {
    TB_GROUP_EMBEDDINGS = 0,
    TB_GROUP_NORMS,
    TB_GROUP_ODE,
    TB_GROUP_RETNET,
    TB_GROUP_MAMBA,
    TB_GROUP_ATTENTION,
    TB_GROUP_OTHER, /* experts, router, head, dense ffn */
    TB_GROUP_COUNT
} tb_group;
extern const char *const tb_group_names[TB_GROUP_COUNT];

typedef struct tb_group_hparams {
    double lr, wd, eps;
    tb_cfg_strlist betas; /* the reference writes [0.9, 0.95]; parsed by finish */
    double beta1, beta2;  /* derived */
} tb_group_hparams;

/* `training:` block: the reference's keys (accepted; the ones tb does not use are
 * documented as such in the schema help) plus ours. */
typedef struct tb_train_config {
    int64_t batch_size, dataloader_workers, max_length;
    double mlm_probability;
    double mlm_mask_share; /* tb: [MASK] share of the chosen positions (0.8) */
    int64_t max_samples, dataset_batch_size, num_workers;
    char cache_dir[TB_CFG_STR_MAX];
    int use_amp;
    int64_t gradient_accumulation_steps;
    char task[32];
    int optimizer_class; /* only adamw */
    tb_group_hparams group[TB_GROUP_COUNT];
    int64_t scheduler_total_steps;
    double scheduler_warmup_ratio;
    int scheduler_type; /* cosine | constant */
    double grad_clip_max_norm, inf_post_clip_threshold;
    int64_t max_nan_retries, checkpoint_every_n_steps, max_rolling_checkpoints;
    int64_t num_best_checkpoints, nan_check_interval;
    int log_gradient_stats;
    int64_t gradient_log_interval;
    int use_galore;
    int64_t galore_rank, galore_update_interval;
    double galore_scale;
    int64_t galore_max_dim;
    /* ours */
    double min_lr_ratio;   /* cosine floor as a share of the peak (0.1) */
    double nan_lr_factor;  /* lr x this on each non-finite retry (0.75) */
    int64_t seed;
    int precision;         /* tb_cfg_prec: GEMM precision on GPUs */
    double loss_scale_init;             /* fp16: first dynamic loss scale (1024) */
    int64_t loss_scale_growth_interval; /* fp16: finite steps before the scale doubles */
} tb_train_config;

/* model.activation_recompute. */
typedef enum tb_cfg_recompute {
    TB_CFG_RECOMPUTE_NONE = 0,
    TB_CFG_RECOMPUTE_ALL,
    TB_CFG_RECOMPUTE_ODE,
} tb_cfg_recompute;

/* training.precision. auto: with use_amp, bf16 where the GPU has it, else fp16; without,
 * fp32. The CPU always computes in fp32. */
typedef enum tb_cfg_prec {
    TB_CFG_PREC_AUTO = 0,
    TB_CFG_PREC_FP32,
    TB_CFG_PREC_BF16,
    TB_CFG_PREC_FP16,
} tb_cfg_prec;

/* A whole trainer config file minus the daemon block. */
typedef struct tb_run_config {
    char model_class[64];
    tb_model_config model;
    tb_train_config training;
} tb_run_config;

/* Schema over tb_run_config (model_class, model.*, training.*). */
const tb_cfg_schema *tb_run_config_schema(void);
/* Copies the schema's fields into out (cap entries) with offsets shifted by base, for a
 * daemon struct that embeds a tb_run_config at offset base. Returns the count or -1. */
int tb_run_config_fields(tb_cfg_field *out, size_t cap, size_t base);

/* Defaults (the reference's UltraConfig defaults and ours). */
int tb_run_config_defaults(tb_run_config *rc, tb_err *err);
/* Defaults, then the preset's values. Presets: tiny, mini, frankenstein, ultra. */
int tb_run_config_preset(tb_run_config *rc, const char *preset, tb_err *err);
/* Defaults, then the file, then finish. */
int tb_run_config_load(tb_run_config *rc, const char *path, tb_err *err);
/* Derives pattern, pos_encoding, betas; checks cross-key constraints (C % H, kv heads,
 * top_k <= experts, ...). Idempotent. */
int tb_run_config_finish(tb_run_config *rc, tb_err *err);
int tb_model_config_finish(tb_model_config *mc, tb_err *err);

/* Derived sizes. */
static inline int64_t tb_mc_ffn(const tb_model_config *mc) {
    return mc->ffn_hidden_size > 0 ? mc->ffn_hidden_size : 2 * mc->hidden_size;
}
static inline int64_t tb_mc_kv_heads(const tb_model_config *mc) {
    return mc->num_kv_heads > 0 ? mc->num_kv_heads : mc->num_heads;
}
/* Mamba dt rank R = ceil(C/16). */
static inline int64_t tb_mc_dt_rank(const tb_model_config *mc) {
    return (mc->hidden_size + 15) / 16;
}
static inline int tb_mc_layer_mixer(const tb_model_config *mc, int64_t physical) {
    return mc->pattern[physical % mc->pattern_len];
}

#endif
