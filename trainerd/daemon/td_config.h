/* tb-trainerd's configuration: the model-core `model:` and `training:` blocks
 * (trainerd/model/config.h) plus `daemon:` (sockets, paths, loop), `validation:` and
 * `debug:` (test hooks). deploy/trainerd.example.yaml is written from this schema by
 * `tb-trainerd --print-example-config`. */
#ifndef TD_CONFIG_H
#define TD_CONFIG_H
#include <stdint.h>
#include "model/config.h"
#include "tb_err.h"

typedef enum td_preset { TD_PRESET_NONE = 0, TD_PRESET_TINY, TD_PRESET_MINI, TD_PRESET_FRANKENSTEIN, TD_PRESET_ULTRA } td_preset;
#define TD_PRESET_CHOICES "none|tiny|mini|frankenstein|ultra"
typedef enum td_backend_choice { TD_BACKEND_AUTO = 0, TD_BACKEND_CPU, TD_BACKEND_CUDA } td_backend_choice;
#define TD_BACKEND_CHOICES "auto|cpu|cuda"

typedef struct td_config {
    tb_run_config run;
    /* daemon: */
    int preset;
    char feed_endpoint[TB_CFG_STR_MAX];
    char control_endpoint[TB_CFG_STR_MAX];
    char metrics_endpoint[TB_CFG_STR_MAX];
    char checkpoint_dir[TB_CFG_STR_MAX];
    char csv_path[TB_CFG_STR_MAX];
    int log_level;           /* index into "error|warn|notice|info|debug" */
    int64_t rank, world, credit;
    int64_t max_steps;          /* 0: training.scheduler_total_steps */
    int64_t progress_every;     /* progress log line every N steps */
    int64_t feed_timeout_ms;    /* log a warning when no batch arrives for this long */
    double peak_flops;          /* for MFU */
    double loss_ema_beta;       /* moving average of the loss */
    double spike_factor;        /* loss > factor x moving average ... */
    int64_t spike_steps;        /* ... for this many consecutive steps -> rollback */
    int64_t spike_warmup;       /* steps before spike detection starts */
    int checkpoint_on_epoch;
    int watchdog;
    int backend;             /* index into TD_BACKEND_CHOICES */
    char curve_secret_key_file[TB_CFG_STR_MAX];
    char curve_allowed_dir[TB_CFG_STR_MAX];
    char feed_server_key_file[TB_CFG_STR_MAX];
    char feed_client_key_file[TB_CFG_STR_MAX];
    int64_t wait_subscribers;    /* hold the first step until this many trainerd.step subscribers */
    int64_t wait_subscribers_ms; /* ... or this long */
    /* validation: */
    char val_manifest[TB_CFG_STR_MAX];
    char val_tokenizer[TB_CFG_STR_MAX];
    int64_t val_every;           /* 0: never */
    int64_t val_batches;
    int64_t val_seed;
    int64_t val_batch_size;      /* 0: training.batch_size */
    int64_t val_seq_len;         /* 0: training.max_length */
    double val_mask_prob;
    int val_packing;
    /* debug: */
    int64_t debug_nan_at_step, debug_nan_count;
    int64_t debug_spike_at_step, debug_spike_count;
    double debug_spike_loss;
    int64_t debug_step_sleep_ms;
    int64_t debug_ckpt_sleep_ms;
} td_config;

const tb_cfg_schema *td_config_schema(void);

/* Loads path (NULL: defaults only): defaults, then the preset named by daemon.preset (in
 * the file or in the overrides), then the file's keys, then the overrides ("key=value"),
 * then checks. Errors are "file:line: key: why" (exit 78). */
int td_config_load(td_config *c, const char *path, const char *const *overrides, int nover,
                   tb_err *err);

/* The values a run used (a checkpoint's state.msgpack config text: every key, so no
 * preset is applied), then the overrides, then checks. name labels errors. */
int td_config_load_text(td_config *c, const char *name, const char *text,
                        const char *const *overrides, int nover, tb_err *err);

/* Total steps to train: daemon.max_steps or training.scheduler_total_steps. */
int64_t td_config_total_steps(const td_config *c);

#endif
