/* One training step over the model (MODEL.md sections 8-10): forward and backward of
 * each micro-batch (gradients summed), then the optimizer update (averaging, clipping,
 * AdamW, schedule, non-finite skip/retry) and the BitLinear refresh. Saving and loading
 * the trainer's state: model.safetensors (weights, section 11 names) and
 * optimizer.safetensors (AdamW moments as NAME.exp_avg / NAME.exp_avg_sq, with the step,
 * lr scale, retry count, dropout counter and seed in __metadata__, plus the caller's
 * extra pairs such as a data cursor). */
#ifndef TB_MODEL_TRAIN_H
#define TB_MODEL_TRAIN_H
#include <stdint.h>
#include "config.h"
#include "model.h"
#include "optim.h"
#include "safetensors.h"

typedef struct tb_trainer {
    tb_run_config rc;
    tb_model model;
    tb_optim opt;
    uint64_t seed;
    uint64_t micro_seen; /* micro-batches run so far: the dropout counter */
    /* Parallel micro-batches (tb_trainer_set_parallel): replicas of the model, one per
     * micro-batch after the first, with their own activations and gradients. */
    tb_model *rep;
    int nrep;
    int precision; /* the GEMM precision in effect (tb_precision; training.precision) */
} tb_trainer;

/* "fp32", "bf16" or "fp16". */
const char *tb_precision_name(int mode);
/* training.precision (and use_amp) applied to the backend; fp16 turns on o's dynamic loss
 * scale at loss_scale_init. Returns the mode in effect (tb_precision). */
int tb_precision_setup(const tb_backend *be, const tb_train_config *t, tb_optim *o);

typedef struct tb_step_result {
    double loss, ce, accuracy, l_bal, l_ode; /* means over the micro-batches */
    int64_t count, correct;                   /* supervised positions, summed */
    int64_t tokens;                           /* B·T summed */
    tb_optim_report opt;
    tb_optim_status status;
} tb_step_result;

/* Model for up to maxB x maxT, parameters initialised from rc->training.seed. */
int tb_trainer_create(tb_trainer *tr, const tb_run_config *rc, const tb_backend *be, int maxB,
                      int maxT, tb_err *err);
void tb_trainer_free(tb_trainer *tr);
/* Host views of n (<= 3) of the registry's role buffers (param, grad, m, v; dev[i]) for
 * host-side work such as safetensors I/O: the buffers themselves on a host-memory
 * backend, else host copies staged through the memory interface. put copies the staged
 * copies back when `back`, and releases them. */
typedef struct tb_host_roles {
    real *buf[3];
    int staged;
} tb_host_roles;
int tb_host_roles_get(tb_host_roles *h, const tb_backend *be, const tb_params *p,
                      real *const *dev, int n, tb_err *err);
void tb_host_roles_put(tb_host_roles *h, const tb_backend *be, const tb_params *p,
                       real *const *dev, int n, int back);

/* Parallel micro-batches, for backends that run models concurrently (core.threads; the
 * CPU): up to nmicro micro-batches of a step each get their own model (the trainer's and
 * nmicro - 1 replicas holding copies of its weights), run at once on up to core.threads()
 * threads, and each computes its gradient from zero in its own buffer; the step then sums
 * them in micro-batch order. The result is the same whatever the thread count (it
 * differs in the last bits from the sequential accumulation, where micro-batch 1 adds
 * onto micro-batch 0's partial sums). nmicro <= 1 turns it off. Costs one parameter and
 * gradient copy and one activation arena per replica. -1 when the backend cannot. */
int tb_trainer_set_parallel(tb_trainer *tr, int nmicro, tb_err *err);
/* One optimizer step over nmicro micro-batches. Returns -1 only for bad input (ids or
 * labels out of range); a non-finite step is reported in res->status. */
int tb_trainer_step(tb_trainer *tr, const tb_batch *micro, int nmicro, tb_step_result *res,
                    tb_err *err);

#define TB_TRAINER_META_MAX 32
/* Writes dir/model.safetensors and dir/optimizer.safetensors (dir is created). */
int tb_trainer_save(const tb_trainer *tr, const char *dir, const tb_st_meta *extra, int nextra,
                    tb_err *err);
/* Reads both files into a trainer created with the same config; meta (cap entries) gets
 * the optimizer file's metadata for the caller's own keys. */
int tb_trainer_load(tb_trainer *tr, const char *dir, tb_st_meta *meta, int cap, int *nmeta,
                    tb_err *err);

#endif
