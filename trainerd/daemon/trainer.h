/* The training state of one rank over the model library (trainerd/model/): model,
 * AdamW, schedule, dropout counter, non-finite handling, and their files in a
 * checkpoint (model.safetensors, optimizer.safetensors). Opaque so the daemon's
 * feed code (proto's tb_batch) and the model's tb_batch never meet in one file.
 * Backend-neutral: it talks to the model through the op table only. */
#ifndef TD_TRAINER_H
#define TD_TRAINER_H
#include <stdint.h>
#include "td_config.h"
#include "tb_err.h"

typedef struct td_trainer td_trainer;

/* Per-component gradient norms (of the averaged gradient, before clipping). */
enum {
    TD_COMP_EMBEDDINGS = 0,
    TD_COMP_ATTENTION,
    TD_COMP_ODE,
    TD_COMP_RETNET,
    TD_COMP_MAMBA,
    TD_COMP_EXPERTS, /* MoE experts (or the dense FFN) */
    TD_COMP_ROUTER,
    TD_COMP_NORMS,
    TD_COMP_HEAD,
    TD_COMP_COUNT
};
extern const char *const td_comp_names[TD_COMP_COUNT];

typedef enum td_step_status {
    TD_STEP_APPLIED = 0,
    TD_STEP_SKIPPED,  /* non-finite: no update, lr x nan_lr_factor */
    TD_STEP_GAVE_UP,  /* too many consecutive skips: emergency checkpoint and exit 3 */
} td_step_status;

typedef struct td_step_result {
    td_step_status status;
    double loss, accuracy, ce, l_bal, l_ode; /* means over the step's micro-batches */
    int64_t tokens, supervised;
    double grad_norm, clip, lr, sched;
    double comp_norm[TD_COMP_COUNT];
    int nonfinite_loss;
    int overflow; /* skipped for an fp16 gradient overflow (the loss scale halved, lr kept) */
} td_step_result;

/* Builds the model for cfg (CPU backend; the CUDA backend when it lands is picked here),
 * initialised from training.seed. */
td_trainer *td_trainer_create(const td_config *cfg, tb_err *err);
void td_trainer_free(td_trainer *t);

/* Checks a batch from outside before anything trains on it: shape against the arena
 * (B <= training.batch_size, T <= training.max_length), ids in [0, vocab), labels -100
 * or in [0, vocab). */
int td_trainer_check_batch(const td_trainer *t, const int32_t *ids, const int32_t *labels,
                           int B, int T, tb_err *err);

/* Forward + backward of one micro-batch (gradients accumulate). micro: index in the
 * step (0 .. accumulation-1); keys the dropout masks with the step. force_nan: test hook. */
int td_trainer_micro(td_trainer *t, const int32_t *ids, // (B, T)
                     const int32_t *labels,             // (B, T)
                     const uint8_t *key_mask,           // (B, T) or NULL
                     int B, int T, int micro, int force_nan, tb_err *err);

/* Applies the accumulated micro-batches: norms, clip, AdamW (or skip when non-finite).
 * Fills r and resets the accumulators. */
void td_trainer_apply(td_trainer *t, td_step_result *r);

/* Evaluation of one batch without dropout and without touching gradients. */
int td_trainer_eval(td_trainer *t, const int32_t *ids, const int32_t *labels,
                    const uint8_t *key_mask, int B, int T, double *loss, int64_t *count,
                    int64_t *correct, tb_err *err);

/* Optimizer steps applied so far; the operator's and the stability code's lr scale. */
int64_t td_trainer_step(const td_trainer *t);
double td_trainer_lr_scale(const td_trainer *t);
void td_trainer_set_lr_scale(td_trainer *t, double s);
int td_trainer_nan_retries(const td_trainer *t);
void td_trainer_set_nan_retries(td_trainer *t, int n);
void td_trainer_set_step(td_trainer *t, int64_t step);
/* Parameters and model FLOPs per token of a training step (tb_model_train_flops_per_token)
 * for MFU. */
int64_t td_trainer_params(const td_trainer *t);
double td_trainer_flops_per_token(const td_trainer *t, int T);
/* fp16's dynamic loss scale (1 in other modes; set ignored there) and the GEMM precision
 * in effect ("fp32", "bf16", "fp16"; training.precision). */
double td_trainer_loss_scale(const td_trainer *t);
void td_trainer_set_loss_scale(td_trainer *t, double s);
const char *td_trainer_precision(const td_trainer *t);
/* GiB this backend holds and GiB in use on its device (0 and 0 on the CPU). */
void td_trainer_memory(const td_trainer *t, double *held_gb, double *device_gb);
/* Name of the backend ("cpu"). */
const char *td_trainer_backend(const td_trainer *t);

/* The checkpoint files: model.safetensors (fp32 weights, MODEL.md 11 names) and
 * optimizer.safetensors (AdamW m and v as NAME.exp_avg / NAME.exp_avg_sq, step in the
 * metadata). */
int td_trainer_write(const td_trainer *t, const char *dir, tb_err *err);
int td_trainer_read(td_trainer *t, const char *dir, tb_err *err);

/* Writes a JSON debug dump of the non-finite state (per tensor: name, count of non-finite
 * parameters and gradients, max |value|) to path. */
int td_trainer_dump_nonfinite(const td_trainer *t, const char *path, const td_step_result *r,
                              tb_err *err);

/* crc32c of the parameter buffer (tests compare runs bit for bit). */
uint32_t td_trainer_param_crc(const td_trainer *t);

#endif
