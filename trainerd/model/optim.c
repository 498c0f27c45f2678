#include "optim.h"
#include <stdlib.h>
#include <math.h>
#include <string.h>

void tb_optim_init(tb_optim *o) {
    memset(o, 0, sizeof *o);
    o->lr_scale = 1.0;
    o->loss_scale = 1.0;
}

double tb_sched_factor(const tb_train_config *t, int64_t step) {
    int64_t total = t->scheduler_total_steps > 0 ? t->scheduler_total_steps : 1;
    int64_t warm = (int64_t)floor(t->scheduler_warmup_ratio * (double)total);
    if (step < warm) return (double)(step + 1) / (double)warm;
    if (t->scheduler_type != 0) return 1.0; /* constant */
    double p = total > warm ? (double)(step - warm) / (double)(total - warm) : 1.0;
    if (p > 1) p = 1;
    if (p < 0) p = 0;
    double mn = t->min_lr_ratio;
    return mn + (1 - mn) * 0.5 * (1 + cos(M_PI * p));
}

int tb_optim_grad_sumsq(const tb_backend *be, const tb_params *p, double *out) {
    if (p->count <= 0) return 0;
    size_t *off = malloc((size_t)p->count * 2 * sizeof *off);
    if (!off) return -1;
    size_t *num = off + p->count;
    for (int i = 0; i < p->count; i++) off[i] = p->t[i].offset, num[i] = p->t[i].numel;
    be->core.sumsq_many(out, p->grad, off, num, p->count);
    free(off);
    return 0;
}

tb_optim_status tb_optim_step(tb_optim *o, const tb_backend *be, tb_params *p,
                              const tb_train_config *t, int micro, int loss_finite,
                              tb_optim_report *rep) {
    tb_optim_report r;
    memset(&r, 0, sizeof r);
    double ls = o->loss_scaling && o->loss_scale > 0 ? o->loss_scale : 1.0;
    double inv = 1.0 / (micro > 0 ? micro : 1) / ls;
    r.loss_scale = ls;
    /* Norms per group in registry order (a fixed summation order). */
    double total = 0;
    double *ss = malloc((size_t)(p->count > 0 ? p->count : 1) * sizeof *ss);
    if (!ss || tb_optim_grad_sumsq(be, p, ss)) { /* out of memory: one range at a time */
        free(ss);
        ss = NULL;
    }
    for (int i = 0; i < p->count; i++) {
        const tb_tensor *tt = &p->t[i];
        double s = ss ? ss[i] : be->core.sumsq(p->grad + tt->offset, tt->numel);
        r.group_norm[tt->group] += s;
        total += s;
    }
    free(ss);
    for (int g = 0; g < TB_GROUP_COUNT; g++) r.group_norm[g] = sqrt(r.group_norm[g]) * inv;
    r.grad_norm = sqrt(total) * inv;
    r.sched = tb_sched_factor(t, o->step);
    r.lr = t->group[TB_GROUP_OTHER].lr * r.sched * o->lr_scale;
    r.clip = 1.0;
    tb_optim_status st = TB_OPTIM_APPLIED;
    if (loss_finite && !isfinite(r.grad_norm) && o->loss_scaling && ls > 1) {
        /* fp16 overflow of the scaled gradients: skip, halve the scale. */
        o->loss_scale = ls / 2 > 1 ? ls / 2 : 1;
        o->scale_good_steps = 0;
        r.overflow = 1;
        st = TB_OPTIM_SKIPPED;
    } else if (!loss_finite || !isfinite(r.grad_norm)) {
        /* DESIGN.md: skip the update, retry with lr x 0.75, give up after max retries. */
        o->nan_retries++;
        o->lr_scale *= t->nan_lr_factor;
        st = o->nan_retries > t->max_nan_retries ? TB_OPTIM_GAVE_UP : TB_OPTIM_SKIPPED;
    } else {
        o->nan_retries = 0;
        /* torch.nn.utils.clip_grad_norm_: factor max / (norm + 1e-6), capped at 1. */
        if (t->grad_clip_max_norm > 0 && r.grad_norm > t->grad_clip_max_norm)
            r.clip = t->grad_clip_max_norm / (r.grad_norm + 1e-6);
        double bc1[TB_GROUP_COUNT], bc2[TB_GROUP_COUNT];
        int64_t step1 = o->step + 1;
        for (int g = 0; g < TB_GROUP_COUNT; g++) {
            bc1[g] = 1 - pow(t->group[g].beta1, (double)step1);
            bc2[g] = 1 - pow(t->group[g].beta2, (double)step1);
        }
        /* One adamw per run of adjacent tensors of one group (the same hyperparameters,
         * contiguous in the flat buffers): element-wise, so the same values as one call a
         * tensor, in far fewer launches on a GPU. */
        for (int i = 0; i < p->count;) {
            const tb_tensor *tt = &p->t[i];
            size_t off = tt->offset, end = off + tt->numel;
            int j = i + 1;
            while (j < p->count && p->t[j].group == tt->group && p->t[j].offset == end)
                end += p->t[j++].numel;
            const tb_group_hparams *h = &t->group[tt->group];
            double lr = h->lr * r.sched * o->lr_scale;
            be->core.adamw(p->param + off, p->m + off, p->v + off, p->grad + off, end - off, lr,
                           h->wd, h->beta1, h->beta2, h->eps, bc1[tt->group], bc2[tt->group],
                           inv * r.clip);
            i = j;
        }
        o->step++;
        if (o->loss_scaling && ++o->scale_good_steps >= t->loss_scale_growth_interval) {
            o->loss_scale = ls * 2;
            o->scale_good_steps = 0;
        }
    }
    be->core.fill(p->grad, R(0.0), p->total);
    if (rep) *rep = r;
    return st;
}
