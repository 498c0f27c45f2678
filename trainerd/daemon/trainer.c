#include "trainer.h"
#include "backend_pick.h"
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/model.h"
#include "model/optim.h"
#include "model/safetensors.h"
#include "model/train.h"
#include "model/train.h"
#include "tb_log.h"
#include "tb_crc32c.h"

const char *const td_comp_names[TD_COMP_COUNT] = {
    "embeddings", "attention", "ode", "retnet", "mamba", "moe_experts", "router", "norms", "head"};

struct td_trainer {
    td_config cfg;
    const tb_backend *be;
    tb_model m;
    tb_optim o;
    int *comp; /* per tensor: TD_COMP_* */
    /* accumulators of the current step */
    int micro;
    double loss_sum, ce_sum, bal_sum, ode_sum;
    int64_t count, correct, tokens;
    int nonfinite;
    json_t *last_bad; /* per-tensor non-finite report of the last skipped step */
    int precision;    /* tb_precision in effect */
};

static int comp_of(const tb_tensor *t) {
    if (strstr(t->name, ".experts.") || strstr(t->name, ".ffn.")) return TD_COMP_EXPERTS;
    if (strstr(t->name, ".router.")) return TD_COMP_ROUTER;
    if (!strncmp(t->name, "head.", 5)) return TD_COMP_HEAD;
    switch (t->group) {
    case TB_GROUP_EMBEDDINGS: return TD_COMP_EMBEDDINGS;
    case TB_GROUP_NORMS: return TD_COMP_NORMS;
    case TB_GROUP_ODE: return TD_COMP_ODE;
    case TB_GROUP_RETNET: return TD_COMP_RETNET;
    case TB_GROUP_MAMBA: return TD_COMP_MAMBA;
    case TB_GROUP_ATTENTION: return TD_COMP_ATTENTION;
    default: return TD_COMP_EXPERTS;
    }
}

td_trainer *td_trainer_create(const td_config *cfg, tb_err *err) {
    td_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        tb_err_set(err, "trainer: out of memory");
        return NULL;
    }
    t->cfg = *cfg;
    static const char *const backend_names[] = {"auto", "cpu", "cuda"}; /* TD_BACKEND_CHOICES */
    int no_device;
    t->be = tb_backend_pick(backend_names[cfg->backend], &no_device, err);
    if (!t->be) {
        tb_err_wrap(err, "daemon.backend");
        free(t);
        return NULL;
    }
    const tb_train_config *tc = &cfg->run.training;
    if (tb_model_create(&t->m, &cfg->run.model, t->be, (int)tc->batch_size, (int)tc->max_length,
                        err)) {
        free(t);
        return NULL;
    }
    tb_model_init(&t->m, (uint64_t)tc->seed);
    tb_optim_init(&t->o);
    t->precision = tb_precision_setup(t->be, tc, &t->o);
    t->comp = calloc((size_t)t->m.p.count, sizeof *t->comp);
    if (!t->comp) {
        tb_model_free(&t->m);
        free(t);
        tb_err_set(err, "trainer: out of memory");
        return NULL;
    }
    for (int i = 0; i < t->m.p.count; i++) t->comp[i] = comp_of(&t->m.p.t[i]);
    return t;
}

void td_trainer_free(td_trainer *t) {
    if (!t) return;
    tb_model_free(&t->m);
    free(t->comp);
    if (t->last_bad) json_decref(t->last_bad);
    free(t);
}

int td_trainer_check_batch(const td_trainer *t, const int32_t *ids, const int32_t *labels, int B,
                           int T, tb_err *err) {
    if (B < 1 || T < 1 || B > t->m.maxB || T > t->m.maxT)
        return tb_err_set(err, "batch shape %d x %d outside 1..%d x 1..%d (training.batch_size, "
                               "training.max_length)", B, T, t->m.maxB, t->m.maxT);
    int64_t V = t->cfg.run.model.vocab_size;
    size_t n = (size_t)B * (size_t)T;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V)
            return tb_err_set(err, "batch ids[%zu] = %d outside [0, %lld) (model.vocab_size)", i,
                              ids[i], (long long)V);
        if (labels[i] != -100 && (labels[i] < 0 || labels[i] >= V))
            return tb_err_set(err, "batch labels[%zu] = %d: not -100 and outside [0, %lld)", i,
                              labels[i], (long long)V);
    }
    return 0;
}

int td_trainer_micro(td_trainer *t, const int32_t *ids, const int32_t *labels,
                     const uint8_t *key_mask, int B, int T, int micro, int force_nan,
                     tb_err *err) {
    tb_batch b = {.ids = ids, .labels = labels, .key_mask = key_mask, .B = B, .T = T};
    int64_t accum = t->cfg.run.training.gradient_accumulation_steps;
    tb_dropout_ctx d = {.seed = (uint64_t)t->cfg.run.training.seed,
                        .counter = (uint32_t)(t->o.step * accum + micro),
                        .enabled = t->cfg.run.model.dropout > 0};
    tb_fwd_result res;
    if (tb_model_forward(&t->m, &b, &d, &res, err)) return -1;
    double loss = force_nan ? NAN : res.loss;
    if (!isfinite(loss)) {
        t->nonfinite = 1;
    } else {
        tb_model_backward(&t->m, &b, t->o.loss_scaling ? t->o.loss_scale : 1.0);
    }
    t->micro++;
    t->loss_sum += loss;
    t->ce_sum += res.ce;
    t->bal_sum += res.l_bal;
    t->ode_sum += res.l_ode;
    t->count += res.count;
    t->correct += res.correct;
    t->tokens += (int64_t)B * T;
    return 0;
}

static void note_nonfinite(td_trainer *t) {
    if (t->last_bad) json_decref(t->last_bad);
    json_t *arr = json_array();
    const tb_params *p = &t->m.p;
    /* weights and gradients on the host (staged copies on a device backend) */
    real *dev[2] = {p->param, p->grad};
    tb_host_roles h;
    tb_err err = {{0}};
    if (tb_host_roles_get(&h, t->be, p, dev, 2, &err)) {
        tb_log_write(TB_LOG_WARN, "non-finite report: %s", err.msg);
        t->last_bad = arr;
        return;
    }
    for (int i = 0; i < p->count; i++) {
        const tb_tensor *tt = &p->t[i];
        size_t bad_w = 0, bad_g = 0;
        double maxw = 0, maxg = 0;
        for (size_t k = 0; k < tt->numel; k++) {
            double w = h.buf[0][tt->offset + k], g = h.buf[1][tt->offset + k];
            if (!isfinite(w)) bad_w++;
            else if (fabs(w) > maxw) maxw = fabs(w);
            if (!isfinite(g)) bad_g++;
            else if (fabs(g) > maxg) maxg = fabs(g);
        }
        if (!bad_w && !bad_g) continue;
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(tt->name));
        json_object_set_new(o, "nonfinite_params", json_integer((json_int_t)bad_w));
        json_object_set_new(o, "nonfinite_grads", json_integer((json_int_t)bad_g));
        json_object_set_new(o, "max_abs_param", json_real(maxw));
        json_object_set_new(o, "max_abs_grad", json_real(maxg));
        json_array_append_new(arr, o);
    }
    tb_host_roles_put(&h, t->be, p, dev, 2, 0);
    t->last_bad = arr;
}

void td_trainer_apply(td_trainer *t, td_step_result *r) {
    memset(r, 0, sizeof *r);
    int micro = t->micro > 0 ? t->micro : 1;
    r->loss = t->loss_sum / micro;
    r->ce = t->ce_sum / micro;
    r->l_bal = t->bal_sum / micro;
    r->l_ode = t->ode_sum / micro;
    r->accuracy = t->count ? (double)t->correct / (double)t->count : 0;
    r->tokens = t->tokens;
    r->supervised = t->count;
    r->nonfinite_loss = t->nonfinite || !isfinite(r->loss);
    double comp[TD_COMP_COUNT] = {0};
    int bad = 0;
    const tb_params *p = &t->m.p;
    double *ss = malloc((size_t)(p->count > 0 ? p->count : 1) * sizeof *ss);
    if (ss && tb_optim_grad_sumsq(t->be, p, ss)) {
        free(ss);
        ss = NULL;
    }
    for (int i = 0; i < p->count; i++) {
        double s = ss ? ss[i] : t->be->core.sumsq(p->grad + p->t[i].offset, p->t[i].numel);
        if (!isfinite(s)) bad = 1;
        comp[t->comp[i]] += s;
    }
    free(ss);
    double ls = t->o.loss_scaling ? t->o.loss_scale : 1.0; /* the gradients carry it */
    for (int c = 0; c < TD_COMP_COUNT; c++) r->comp_norm[c] = sqrt(comp[c]) / micro / ls;
    if (bad && !r->nonfinite_loss && ls > 1) bad = 0; /* an fp16 overflow: no report */
    if (bad || r->nonfinite_loss) note_nonfinite(t);
    tb_optim_report rep;
    tb_optim_status st = tb_optim_step(&t->o, t->be, &t->m.p, &t->cfg.run.training, micro,
                                       !r->nonfinite_loss, &rep);
    r->grad_norm = rep.grad_norm;
    r->clip = rep.clip;
    r->lr = rep.lr;
    r->sched = rep.sched;
    r->overflow = rep.overflow;
    if (st == TB_OPTIM_APPLIED) {
        tb_model_refresh(&t->m);
        r->status = TD_STEP_APPLIED;
    } else {
        r->status = st == TB_OPTIM_GAVE_UP ? TD_STEP_GAVE_UP : TD_STEP_SKIPPED;
    }
    t->micro = 0;
    t->loss_sum = t->ce_sum = t->bal_sum = t->ode_sum = 0;
    t->count = t->correct = t->tokens = 0;
    t->nonfinite = 0;
}

int td_trainer_eval(td_trainer *t, const int32_t *ids, const int32_t *labels,
                    const uint8_t *key_mask, int B, int T, double *loss, int64_t *count,
                    int64_t *correct, tb_err *err) {
    tb_batch b = {.ids = ids, .labels = labels, .key_mask = key_mask, .B = B, .T = T};
    tb_dropout_ctx d = {.seed = 0, .counter = 0, .enabled = 0};
    tb_fwd_result res;
    if (tb_model_forward(&t->m, &b, &d, &res, err)) return -1;
    *loss = res.ce;
    *count = res.count;
    *correct = res.correct;
    return 0;
}

int64_t td_trainer_step(const td_trainer *t) { return t->o.step; }
double td_trainer_lr_scale(const td_trainer *t) { return t->o.lr_scale; }
void td_trainer_set_lr_scale(td_trainer *t, double s) { t->o.lr_scale = s; }
int td_trainer_nan_retries(const td_trainer *t) { return t->o.nan_retries; }
void td_trainer_set_nan_retries(td_trainer *t, int n) { t->o.nan_retries = n; }
void td_trainer_set_step(td_trainer *t, int64_t step) { t->o.step = step; }
int64_t td_trainer_params(const td_trainer *t) { return (int64_t)t->m.p.total; }
const char *td_trainer_backend(const td_trainer *t) { return t->be->name; }

double td_trainer_flops_per_token(const td_trainer *t, int T) {
    return tb_model_train_flops_per_token(&t->m.cfg, T);
}

double td_trainer_loss_scale(const td_trainer *t) { return t->o.loss_scale; }
void td_trainer_set_loss_scale(td_trainer *t, double s) {
    if (t->o.loss_scaling && s >= 1) t->o.loss_scale = s;
}
const char *td_trainer_precision(const td_trainer *t) { return tb_precision_name(t->precision); }

void td_trainer_memory(const td_trainer *t, double *held_gb, double *device_gb) {
    double h = 0, d = 0;
    if (t->be->core.mem_info) t->be->core.mem_info(&h, &d);
    *held_gb = h / 1073741824.0;
    *device_gb = d / 1073741824.0;
}

int td_trainer_write(const td_trainer *t, const char *dir, tb_err *err) {
    char path[4096], step[32];
    snprintf(step, sizeof step, "%lld", (long long)t->o.step);
    tb_st_meta meta[2];
    memset(meta, 0, sizeof meta);
    snprintf(meta[0].key, sizeof meta[0].key, "format");
    snprintf(meta[0].value, sizeof meta[0].value, "pt");
    snprintf(meta[1].key, sizeof meta[1].key, "step");
    snprintf(meta[1].value, sizeof meta[1].value, "%s", step);
    /* host views (staged copies on a device backend) */
    const tb_params *p = &t->m.p;
    real *dev[3] = {p->param, p->m, p->v};
    tb_host_roles h;
    if (tb_host_roles_get(&h, t->be, p, dev, 3, err)) return -1;
    tb_st_role w = {h.buf[0], ""};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = tb_st_write(path, p, &w, 1, meta, 2, err);
    tb_st_role mv[2] = {{h.buf[1], ".exp_avg"}, {h.buf[2], ".exp_avg_sq"}};
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (rc == 0) rc = tb_st_write(path, p, mv, 2, meta, 2, err);
    tb_host_roles_put(&h, t->be, p, dev, 3, 0);
    return rc;
}

int td_trainer_read(td_trainer *t, const char *dir, tb_err *err) {
    char path[4096];
    /* into host views, copied to the backend only when both files were read */
    tb_params *p = &t->m.p;
    real *dev[3] = {p->param, p->m, p->v};
    tb_host_roles h;
    if (tb_host_roles_get(&h, t->be, p, dev, 3, err)) return -1;
    tb_st_role w = {h.buf[0], ""};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = tb_st_read(path, p, &w, 1, NULL, 0, NULL, err);
    tb_st_role mv[2] = {{h.buf[1], ".exp_avg"}, {h.buf[2], ".exp_avg_sq"}};
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (rc == 0) rc = tb_st_read(path, p, mv, 2, NULL, 0, NULL, err);
    tb_host_roles_put(&h, t->be, p, dev, 3, rc == 0);
    if (rc) return -1;
    t->be->core.fill(t->m.p.grad, R(0.0), t->m.p.total);
    tb_model_refresh(&t->m);
    t->micro = 0;
    t->loss_sum = t->ce_sum = t->bal_sum = t->ode_sum = 0;
    t->count = t->correct = t->tokens = 0;
    t->nonfinite = 0;
    return 0;
}

int td_trainer_dump_nonfinite(const td_trainer *t, const char *path, const td_step_result *r,
                              tb_err *err) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(t->o.step));
    json_object_set_new(o, "loss", isfinite(r->loss) ? json_real(r->loss) : json_string("nonfinite"));
    json_object_set_new(o, "grad_norm",
                        isfinite(r->grad_norm) ? json_real(r->grad_norm) : json_string("nonfinite"));
    json_object_set_new(o, "lr_scale", json_real(t->o.lr_scale));
    json_object_set_new(o, "nan_retries", json_integer(t->o.nan_retries));
    json_object_set_new(o, "nonfinite_loss", json_boolean(r->nonfinite_loss));
    json_t *comp = json_object();
    for (int c = 0; c < TD_COMP_COUNT; c++)
        json_object_set_new(comp, td_comp_names[c], isfinite(r->comp_norm[c])
                                                        ? json_real(r->comp_norm[c])
                                                        : json_string("nonfinite"));
    json_object_set_new(o, "grad_norm_by_component", comp);
    json_object_set_new(o, "tensors", t->last_bad ? json_incref(t->last_bad) : json_array());
    int rc = json_dump_file(o, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (rc) return tb_err_set(err, "debug dump %s: cannot write", path);
    return 0;
}

uint32_t td_trainer_param_crc(const td_trainer *t) {
    real *dev[1] = {t->m.p.param};
    tb_host_roles h;
    if (tb_host_roles_get(&h, t->be, &t->m.p, dev, 1, NULL)) return 0;
    uint32_t crc = tb_crc32c(0, h.buf[0], t->m.p.total * sizeof(real));
    tb_host_roles_put(&h, t->be, &t->m.p, dev, 1, 0);
    return crc;
}
