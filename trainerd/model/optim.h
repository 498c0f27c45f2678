/* The optimizer step (MODEL.md section 10): global gradient norm and clipping, AdamW
 * per parameter group (lr, wd, betas, eps from the `training:` block), linear warm-up +
 * cosine to a floor, gradient accumulation (gradients summed over micro-batches and
 * divided here), non-finite detection with skip and retry at lr x nan_lr_factor. */
#ifndef TB_MODEL_OPTIM_H
#define TB_MODEL_OPTIM_H
#include <stdint.h>
#include "../backend.h"
#include "config.h"
#include "params.h"

typedef struct tb_optim {
    int64_t step;      /* optimizer updates applied so far (AdamW's t - 1) */
    double lr_scale;   /* product of non-finite retry factors and operator scaling (1) */
    int nan_retries;   /* consecutive non-finite steps */
    /* Dynamic loss scale (fp16 GEMMs; 1 and off otherwise): the backward runs on the loss
     * times loss_scale and the step divides it out. A step whose loss is finite but whose
     * gradients are not is an overflow: no update, the scale halves (not below 1), and no
     * non-finite retry is counted while the scale is above 1. After
     * training.loss_scale_growth_interval applied steps in a row the scale doubles. */
    int loss_scaling;
    double loss_scale;
    int64_t scale_good_steps;
} tb_optim;

typedef enum tb_optim_status {
    TB_OPTIM_APPLIED = 0,   /* update applied */
    TB_OPTIM_SKIPPED,       /* non-finite gradients (or loss): no update, lr_scale reduced */
    TB_OPTIM_GAVE_UP,       /* more than max_nan_retries consecutive skips: the caller
                               writes an emergency checkpoint and exits (DESIGN.md) */
} tb_optim_status;

typedef struct tb_optim_report {
    double grad_norm;                 /* global, of the averaged gradient, before clipping */
    double group_norm[TB_GROUP_COUNT];
    double clip;                      /* factor applied (1 = none) */
    double lr;                        /* learning rate of the `other` group this step */
    double sched;                     /* schedule factor in (0, 1] */
    double loss_scale;                /* the scale this step's gradients carried (1: off) */
    int overflow;                     /* 1: skipped for a gradient overflow (scale halved) */
} tb_optim_report;

void tb_optim_init(tb_optim *o);
/* Schedule multiplier of the peak lr for 0-based update `step`: (step+1)/W during the
 * W = floor(warmup_ratio · total) warm-up steps, then min + (1 - min)(1 + cos(π p))/2
 * with p = (step - W)/(total - W) clamped to [0, 1] (cosine), or 1 (constant). */
double tb_sched_factor(const tb_train_config *t, int64_t step);

/* out[i] = Σ grad² of registry tensor i, in registry order (core.sumsq_many: one wait for
 * all). Returns -1 when out of memory (out untouched). */
int tb_optim_grad_sumsq(const tb_backend *be, const tb_params *p, double *out);

/* One update from the gradients summed over `micro` micro-batches (p->grad). loss_finite:
 * 0 when the caller saw a non-finite loss (treated like non-finite gradients). Zeroes the
 * gradients in every case. The caller refreshes derived buffers (BitLinear codes) after
 * TB_OPTIM_APPLIED. */
tb_optim_status tb_optim_step(tb_optim *o, const tb_backend *be, tb_params *p,
                              const tb_train_config *t, int micro, int loss_finite,
                              tb_optim_report *rep);

#endif
