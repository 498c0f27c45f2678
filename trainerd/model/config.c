#include "config.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const tb_group_names[TB_GROUP_COUNT] = {"embeddings", "norms", "ode", "retnet",
                                                    "mamba", "attention", "other"};

#define OFF(m) offsetof(tb_run_config, m)
#define F_INT(k, m, d, lo, hi, h) {k, TB_CFG_INT, OFF(m), 0, d, lo, hi, NULL, h}
#define F_DBL(k, m, d, lo, hi, h) {k, TB_CFG_DOUBLE, OFF(m), 0, d, lo, hi, NULL, h}
#define F_BOOL(k, m, d, h) {k, TB_CFG_BOOL, OFF(m), 0, d, 1, 0, NULL, h}
#define F_ENUM(k, m, d, ch, h) {k, TB_CFG_ENUM, OFF(m), 0, d, 1, 0, ch, h}
#define F_STR(k, m, d, h) {k, TB_CFG_STRING, OFF(m), sizeof(((tb_run_config *)0)->m), d, 1, 0, NULL, h}
#define F_LIST(k, m, d, ch, h) {k, TB_CFG_STRLIST, OFF(m), 0, d, 1, 0, ch, h}
#define F_SEC(k, h) {k, TB_CFG_SECTION, 0, 0, NULL, 1, 0, NULL, h}

#define GROUP_FIELDS(gname, gi, lr_def, wd_def)                                                      \
    F_DBL("training.optimizer.parameters.adamw-lr_" gname, training.group[gi].lr, lr_def, 0, 10, \
          "peak learning rate of the " gname " group (MODEL.md section 10)"),                \
        F_DBL("training.optimizer.parameters.adamw-wd_" gname, training.group[gi].wd, wd_def, 0,  \
              10, "decoupled weight decay of the " gname " group"),                          \
        F_LIST("training.optimizer.parameters.adamw-betas_" gname, training.group[gi].betas,  \
               "[0.9, 0.95]", NULL, "AdamW (beta1, beta2) of the " gname " group"),          \
        F_DBL("training.optimizer.parameters.adamw-eps_" gname, training.group[gi].eps,       \
              "1e-8", 0, 1, "AdamW epsilon of the " gname " group")

static const tb_cfg_field run_fields[] = {
    F_STR("model_class", model_class, "tormented",
          "the reference's model class name; informational (the model is set by `model:`)"),
    F_SEC("model", "architecture (MODEL.md section 1); the reference's keys load unchanged"),
    F_INT("model.vocab_size", model.vocab_size, "50000", 2, 1 << 24, "vocabulary size V"),
    F_INT("model.hidden_size", model.hidden_size, "2048", 2, 65536, "hidden size C"),
    F_INT("model.num_layers", model.num_layers, "12", 1, 4096, "physical layers"),
    F_INT("model.num_loops", model.num_loops, "2", 1, 64,
          "passes over the physical layers (parameters shared across loops)"),
    F_INT("model.num_heads", model.num_heads, "16", 1, 4096, "attention heads H"),
    F_INT("model.retention_heads", model.retention_heads, "8", 1, 4096, "retention heads"),
    F_INT("model.num_experts", model.num_experts, "8", 1, 1024, "MoE experts E"),
    F_INT("model.top_k_experts", model.top_k_experts, "2", 1, 1024, "experts per token K"),
    F_DBL("model.dropout", model.dropout, "0.1", 0, 0.999,
          "dropout on the embedding output and attention probabilities"),
    F_ENUM("model.ode_solver", model.ode_solver, "rk4", "rk4|euler", "ODE block solver"),
    F_INT("model.ode_steps", model.ode_steps, "2", 1, 1024, "ODE steps S (dt = 1/S)"),
    F_BOOL("model.use_bitnet", model.use_bitnet, "true",
           "ternary BitLinear projections (false: plain linear)"),
    F_ENUM("model.norm_type", model.norm_type, "dynamic_tanh",
           "dynamic_tanh|dyt|derf|layer_norm|rms_norm", "norm of every norm site"),
    F_LIST("model.layer_pattern", model.layer_pattern,
           "[retnet, ode, mamba, titan_attn, retnet, ode, mamba, titan_attn, retnet, ode, "
           "mamba, titan_attn]",
           TB_MIXER_CHOICES, "mixer of physical layer i is pattern[i mod len]"),
    F_BOOL("model.use_factorized_embedding", model.use_factorized_embedding, "false",
           "embedding table [V, Cl] then (conv and) BitLinear(Cl -> C)"),
    F_INT("model.factorized_embedding_dim", model.factorized_embedding_dim, "128", 1, 65536,
          "Cl of the factorized embedding"),
    F_BOOL("model.use_embedding_conv", model.use_embedding_conv, "true",
           "Conv1d over T in the factorized embedding (ignored for the plain one)"),
    F_INT("model.embedding_conv_kernel", model.embedding_conv_kernel, "3", 1, 1024,
          "kernel of that Conv1d"),
    F_DBL("model.hope_base", model.hope_base, "10000", 1, 1e12, "position-encoding base"),
    F_DBL("model.hope_damping", model.hope_damping, "0.01", 0, 100,
          "damping of hope_hyperbolic"),
    F_BOOL("model.use_hope", model.use_hope, "true",
           "HoPE on titan attention (when pos_encoding is absent)"),
    F_BOOL("model.use_moe", model.use_moe, "true", "mixture of experts (false: dense FFN)"),
    F_INT("model.ffn_hidden_size", model.ffn_hidden_size, "0", 0, 1 << 20,
          "expert / FFN hidden size F (0: 2C)"),
    F_ENUM("model.ffn_activation", model.ffn_activation, "silu", "silu|gelu",
           "expert / FFN activation"),
    F_INT("model.num_kv_heads", model.num_kv_heads, "0", 0, 4096,
          "tb: key/value heads for GQA (0: num_heads)"),
    F_ENUM("model.pos_encoding", model.pos_encoding, "auto", "hope|hope_hyperbolic|rope|none|auto",
           "tb: position encoding of titan attention (auto: use_hope picks hope or none)"),
    F_BOOL("model.moe_renormalize", model.moe_renormalize, "true",
           "tb: renormalise the top-K gates (false reproduces the reference)"),
    F_DBL("model.moe_capacity_factor", model.moe_capacity_factor, "1.25", 0, 1024,
          "tb: expert capacity factor (0: no limit)"),
    F_INT("model.mamba_d_state", model.mamba_d_state, "16", 1, 4096, "tb: Mamba state size N"),
    F_INT("model.mamba_d_conv", model.mamba_d_conv, "4", 1, 1024, "tb: Mamba conv kernel"),
    F_BOOL("model.titan_memory", model.titan_memory, "true", "tb: Titan memory in Mamba"),
    F_ENUM("model.activation_recompute", model.activation_recompute, "false", "false|true|ode",
           "tb: layers that keep only their input and recompute their activations in the "
           "backward (true: every layer, ode: the ODE layers, whose rk4 evaluations hold most "
           "of the activations); same results, more compute"),
    F_BOOL("model.retention_bidirectional", model.retention_bidirectional, "false",
           "tb: bidirectional retention"),
    F_DBL("model.lambda_bal", model.lambda_bal, "0.01", 0, 1e6, "tb: weight of L_bal"),
    F_DBL("model.lambda_ode", model.lambda_ode, "0.0", 0, 1e6, "tb: weight of L_ode"),

    F_SEC("training", "optimisation (MODEL.md section 10); the reference's keys load unchanged"),
    F_INT("training.batch_size", training.batch_size, "2", 1, 1 << 20, "micro-batch size B"),
    F_INT("training.dataloader_workers", training.dataloader_workers, "2", 0, 4096,
          "reference key; unused by tb (prefetchd has its own workers)"),
    F_INT("training.max_length", training.max_length, "512", 2, 1 << 20, "sequence length T"),
    F_DBL("training.mlm_probability", training.mlm_probability, "0.15", 0, 1,
          "share of masked positions (DESIGN.md MLM masking)"),
    F_DBL("training.mlm_mask_share", training.mlm_mask_share, "0.8", 0.2, 1,
          "tb: [MASK] share of the chosen positions, 0.2 / 0.4 / 0.6 / 0.8 / 1, the rest\n"
          "split evenly between a random id and the unchanged id (tb-train-local's training\n"
          "batches; held-out ones keep 80/10/10; tb-trainerd's come from prefetchd's\n"
          "data.mask_share)"),
    F_INT("training.max_samples", training.max_samples, "20000000", 0, INT64_MAX / 2,
          "reference key; unused by tb"),
    F_INT("training.dataset_batch_size", training.dataset_batch_size, "25000", 0, INT64_MAX / 2,
          "reference key; unused by tb"),
    F_INT("training.num_workers", training.num_workers, "8", 0, 4096,
          "reference key; unused by tb"),
    F_STR("training.cache_dir", training.cache_dir, "", "reference key; unused by tb"),
    F_BOOL("training.use_amp", training.use_amp, "false",
           "mixed precision on GPUs (ignored on the CPU, which trains in fp32)"),
    F_INT("training.gradient_accumulation_steps", training.gradient_accumulation_steps, "4", 1,
          1 << 20, "micro-batches per optimizer step"),
    F_STR("training.task", training.task, "mlm", "reference key; only mlm"),
    F_SEC("training.optimizer", "optimizer"),
    F_ENUM("training.optimizer.optimizer_class", training.optimizer_class, "adamw", "adamw",
           "only adamw"),
    F_SEC("training.optimizer.parameters", "per-group hyper-parameters"),
    GROUP_FIELDS("embeddings", TB_GROUP_EMBEDDINGS, "1e-4", "0.01"),
    GROUP_FIELDS("norms", TB_GROUP_NORMS, "2e-4", "0.001"),
    GROUP_FIELDS("ode", TB_GROUP_ODE, "5e-5", "0.01"),
    GROUP_FIELDS("retnet", TB_GROUP_RETNET, "1.5e-4", "0.01"),
    GROUP_FIELDS("mamba", TB_GROUP_MAMBA, "1e-4", "0.01"),
    GROUP_FIELDS("attention", TB_GROUP_ATTENTION, "1e-4", "0.01"),
    GROUP_FIELDS("other", TB_GROUP_OTHER, "1e-4", "0.01"),
    F_INT("training.scheduler_total_steps", training.scheduler_total_steps, "10000", 1,
          INT64_MAX / 2, "optimizer steps of the schedule"),
    F_DBL("training.scheduler_warmup_ratio", training.scheduler_warmup_ratio, "0.1", 0, 1,
          "linear warm-up share of total steps"),
    F_ENUM("training.scheduler_type", training.scheduler_type, "cosine", "cosine|constant",
           "after warm-up: cosine to min_lr_ratio, or constant"),
    F_DBL("training.grad_clip_max_norm", training.grad_clip_max_norm, "1.0", 0, 1e12,
          "global gradient-norm clip (0: off)"),
    F_DBL("training.inf_post_clip_threshold", training.inf_post_clip_threshold, "100.0", 0,
          1e30, "reference key; unused by tb (non-finite values are detected exactly)"),
    F_INT("training.max_nan_retries", training.max_nan_retries, "3", 0, 1000,
          "retries with lr x nan_lr_factor after a non-finite step"),
    F_INT("training.checkpoint_every_n_steps", training.checkpoint_every_n_steps, "500", 0,
          INT64_MAX / 2, "rolling checkpoint interval (0: off)"),
    F_INT("training.max_rolling_checkpoints", training.max_rolling_checkpoints, "3", 0, 1000,
          "rolling checkpoints kept"),
    F_INT("training.num_best_checkpoints", training.num_best_checkpoints, "2", 0, 1000,
          "best-by-loss checkpoints kept"),
    F_INT("training.nan_check_interval", training.nan_check_interval, "10", 0, 1 << 20,
          "reference key; tb checks every step"),
    F_BOOL("training.log_gradient_stats", training.log_gradient_stats, "true",
           "publish per-component gradient norms"),
    F_INT("training.gradient_log_interval", training.gradient_log_interval, "10", 1, 1 << 20,
          "steps between gradient-norm records"),
    F_BOOL("training.use_galore", training.use_galore, "false",
           "reference key; GaLore is not implemented (must stay false)"),
    F_INT("training.galore_rank", training.galore_rank, "64", 0, 1 << 20, "reference key; unused"),
    F_INT("training.galore_update_interval", training.galore_update_interval, "1", 0, 1 << 20,
          "reference key; unused"),
    F_DBL("training.galore_scale", training.galore_scale, "1.0", 0, 1e6, "reference key; unused"),
    F_INT("training.galore_max_dim", training.galore_max_dim, "4096", 0, 1 << 30,
          "reference key; unused"),
    F_DBL("training.min_lr_ratio", training.min_lr_ratio, "0.1", 0, 1,
          "tb: cosine floor as a share of the peak learning rate"),
    F_DBL("training.nan_lr_factor", training.nan_lr_factor, "0.75", 0, 1,
          "tb: learning-rate factor applied on each non-finite retry"),
    F_INT("training.seed", training.seed, "1234", 0, INT64_MAX, "tb: seed of init and dropout"),
    F_ENUM("training.precision", training.precision, "auto", "auto|fp32|bf16|fp16",
           "tb: GEMM precision on GPUs (auto: with use_amp bf16 where the GPU has it, else "
           "fp16; without use_amp fp32); masters, optimizer and storage stay fp32"),
    F_DBL("training.loss_scale_init", training.loss_scale_init, "1024", 1, 1e30,
          "tb: fp16 only: first dynamic loss scale (halved on each overflowing step)"),
    F_INT("training.loss_scale_growth_interval", training.loss_scale_growth_interval, "1000", 1,
          INT64_MAX / 2, "tb: fp16 only: finite steps in a row before the loss scale doubles"),
};

static const tb_cfg_schema run_schema = {"tb-trainerd", run_fields,
                                         sizeof run_fields / sizeof run_fields[0]};

const tb_cfg_schema *tb_run_config_schema(void) { return &run_schema; }

int tb_run_config_fields(tb_cfg_field *out, size_t cap, size_t base) {
    if (cap < run_schema.count) return -1;
    for (size_t i = 0; i < run_schema.count; i++) {
        out[i] = run_fields[i];
        if (out[i].type != TB_CFG_SECTION) out[i].offset += base;
    }
    return (int)run_schema.count;
}

int tb_run_config_defaults(tb_run_config *rc, tb_err *err) {
    memset(rc, 0, sizeof *rc);
    return tb_cfg_defaults(rc, &run_schema, err);
}

static void set_pattern(tb_model_config *mc, const char *const *items, int n) {
    mc->layer_pattern.count = n;
    for (int i = 0; i < n; i++)
        snprintf(mc->layer_pattern.items[i], sizeof mc->layer_pattern.items[i], "%s", items[i]);
}

int tb_run_config_preset(tb_run_config *rc, const char *preset, tb_err *err) {
    if (tb_run_config_defaults(rc, err)) return -1;
    static const char *const std_pattern[] = {"retnet", "titan_attn", "retnet",
                                              "mamba",  "titan_attn", "ode"};
    tb_model_config *m = &rc->model;
    set_pattern(m, std_pattern, 6);
    m->vocab_size = 50000;
    m->num_experts = 4;
    m->top_k_experts = 2;
    m->dropout = 0.1;
    m->ode_solver = TB_CFG_ODE_RK4;
    m->use_hope = 1;
    m->use_moe = 1;
    m->ffn_activation = TB_CFG_ACT_SILU;
    m->num_loops = 2;
    m->embedding_conv_kernel = 3;
    rc->training.max_length = 512;
    if (!strcmp(preset, "tiny")) {
        m->vocab_size = 8000;
        m->hidden_size = 128;
        m->num_layers = 6;
        m->num_heads = 4;
        m->retention_heads = 4;
        m->ode_steps = 2;
        m->use_bitnet = 1;
        m->norm_type = TB_CFG_NORM_DERF;
        m->use_factorized_embedding = 1;
        m->factorized_embedding_dim = 64;
        m->use_embedding_conv = 1;
        m->ffn_hidden_size = 256;
    } else if (!strcmp(preset, "mini")) {
        m->hidden_size = 384;
        m->num_layers = 6;
        m->num_heads = 6;
        m->retention_heads = 6;
        m->ode_steps = 2;
        m->use_bitnet = 0;
        m->norm_type = TB_CFG_NORM_DERF;
        m->use_factorized_embedding = 1;
        m->factorized_embedding_dim = 128;
        m->use_embedding_conv = 1;
        m->ffn_hidden_size = 768;
    } else if (!strcmp(preset, "frankenstein")) {
        m->hidden_size = 1024;
        m->num_layers = 12;
        m->num_heads = 16;
        m->retention_heads = 8;
        m->ode_steps = 4;
        m->use_bitnet = 1;
        m->norm_type = TB_CFG_NORM_DYNAMIC_TANH;
        m->use_factorized_embedding = 0;
        m->factorized_embedding_dim = 128;
        m->use_embedding_conv = 0;
        m->ffn_hidden_size = 2048;
    } else if (!strcmp(preset, "ultra")) {
        m->hidden_size = 2048;
        m->num_layers = 12;
        m->num_heads = 16;
        m->retention_heads = 8;
        m->ode_steps = 2;
        m->use_bitnet = 1;
        m->norm_type = TB_CFG_NORM_DYNAMIC_TANH;
        m->use_factorized_embedding = 1;
        m->factorized_embedding_dim = 128;
        m->use_embedding_conv = 1;
        m->ffn_hidden_size = 4096;
    } else {
        return tb_err_set(err, "preset: unknown preset '%s' (tiny, mini, frankenstein, ultra)",
                          preset);
    }
    snprintf(rc->model_class, sizeof rc->model_class, "%s", preset);
    return tb_run_config_finish(rc, err);
}

int tb_run_config_load(tb_run_config *rc, const char *path, tb_err *err) {
    if (tb_run_config_defaults(rc, err)) return -1;
    if (tb_cfg_load_file(rc, &run_schema, path, NULL, err)) return -1;
    if (tb_run_config_finish(rc, err)) return tb_err_wrap(err, "%s", path);
    return 0;
}

static int mixer_from_name(const char *s) {
    static const char *const names[TB_MIXER_COUNT] = {"retnet",       "titan_attn", "standard_attn",
                                                      "sigmoid_attn", "mamba",      "ode"};
    for (int i = 0; i < TB_MIXER_COUNT; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

int tb_model_config_finish(tb_model_config *mc, tb_err *err) {
    int64_t C = mc->hidden_size;
    if (mc->layer_pattern.count < 1)
        return tb_err_set(err, "model.layer_pattern: empty");
    if (mc->layer_pattern.count > TB_MAX_PATTERN)
        return tb_err_set(err, "model.layer_pattern: %d entries (max %d)",
                          mc->layer_pattern.count, TB_MAX_PATTERN);
    mc->pattern_len = mc->layer_pattern.count;
    int need_attn = 0, need_ret = 0, need_mamba = 0;
    for (int i = 0; i < mc->pattern_len; i++) {
        int k = mixer_from_name(mc->layer_pattern.items[i]);
        if (k < 0)
            return tb_err_set(err, "model.layer_pattern[%d]: unknown mixer '%s' (%s)", i,
                              mc->layer_pattern.items[i], TB_MIXER_CHOICES);
        mc->pattern[i] = k;
        if (k == TB_MIXER_RETNET) need_ret = 1;
        else if (k == TB_MIXER_MAMBA) need_mamba = 1;
        else need_attn = 1;
    }
    if ((need_attn || need_mamba) && C % mc->num_heads)
        return tb_err_set(err, "model.num_heads: %lld does not divide hidden_size %lld",
                          (long long)mc->num_heads, (long long)C);
    int64_t kv = tb_mc_kv_heads(mc);
    if (need_attn && (kv > mc->num_heads || mc->num_heads % kv))
        return tb_err_set(err, "model.num_kv_heads: %lld does not divide num_heads %lld",
                          (long long)kv, (long long)mc->num_heads);
    if (need_ret && C % mc->retention_heads)
        return tb_err_set(err, "model.retention_heads: %lld does not divide hidden_size %lld",
                          (long long)mc->retention_heads, (long long)C);
    if (mc->use_moe && mc->top_k_experts > mc->num_experts)
        return tb_err_set(err, "model.top_k_experts: %lld exceeds num_experts %lld",
                          (long long)mc->top_k_experts, (long long)mc->num_experts);
    if (mc->pos_encoding == TB_CFG_POS_AUTO) mc->pos_encoding = mc->use_hope ? TB_CFG_POS_HOPE : TB_CFG_POS_NONE;
    return 0;
}

int tb_run_config_finish(tb_run_config *rc, tb_err *err) {
    if (tb_model_config_finish(&rc->model, err)) return -1;
    tb_train_config *t = &rc->training;
    {
        double tenths = t->mlm_mask_share * 10.0, k = round(tenths);
        if (fabs(tenths - k) > 1e-9 || fmod(k, 2.0) != 0.0)
            return tb_err_set(err, "training.mlm_mask_share: %g is not one of 0.2, 0.4, 0.6, 0.8, 1",
                              t->mlm_mask_share);
    }
    for (int g = 0; g < TB_GROUP_COUNT; g++) {
        tb_group_hparams *h = &t->group[g];
        if (h->betas.count != 2)
            return tb_err_set(err, "training.optimizer.parameters.adamw-betas_%s: %d values, need 2",
                              tb_group_names[g], h->betas.count);
        double b[2];
        for (int i = 0; i < 2; i++) {
            char *end;
            errno = 0;
            b[i] = strtod(h->betas.items[i], &end);
            if (errno || end == h->betas.items[i] || *end || !(b[i] >= 0 && b[i] < 1))
                return tb_err_set(err,
                                  "training.optimizer.parameters.adamw-betas_%s[%d]: '%s' is not "
                                  "a number in [0, 1)",
                                  tb_group_names[g], i, h->betas.items[i]);
        }
        h->beta1 = b[0];
        h->beta2 = b[1];
    }
    if (t->use_galore)
        return tb_err_set(err, "training.use_galore: true is not supported by tb");
    return 0;
}
