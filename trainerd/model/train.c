#include "train.h"
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/stat.h>

int tb_trainer_create(tb_trainer *tr, const tb_run_config *rc, const tb_backend *be, int maxB,
                      int maxT, tb_err *err) {
    memset(tr, 0, sizeof *tr);
    tr->rc = *rc;
    tr->seed = (uint64_t)rc->training.seed;
    if (tb_model_create(&tr->model, &rc->model, be, maxB, maxT, err)) return -1;
    tb_model_init(&tr->model, tr->seed);
    tb_optim_init(&tr->opt);
    tr->precision = tb_precision_setup(be, &rc->training, &tr->opt);
    return 0;
}

int tb_precision_setup(const tb_backend *be, const tb_train_config *t, tb_optim *o) {
    int want = t->precision == TB_CFG_PREC_FP32   ? TB_PREC_FP32
               : t->precision == TB_CFG_PREC_BF16 ? TB_PREC_BF16
               : t->precision == TB_CFG_PREC_FP16 ? TB_PREC_FP16
               : t->use_amp                       ? TB_PREC_AUTO
                                                  : TB_PREC_FP32;
    int mode = be->core.set_precision ? be->core.set_precision(want) : TB_PREC_FP32;
    o->loss_scaling = mode == TB_PREC_FP16;
    o->loss_scale = o->loss_scaling ? t->loss_scale_init : 1.0;
    o->scale_good_steps = 0;
    return mode;
}

const char *tb_precision_name(int mode) {
    return mode == TB_PREC_BF16 ? "bf16" : mode == TB_PREC_FP16 ? "fp16" : "fp32";
}

/* The factor the backward seeds its gradients with (the dynamic loss scale, or 1). */
static double grad_seed(const tb_trainer *tr) {
    return tr->opt.loss_scaling ? tr->opt.loss_scale : 1.0;
}

static void free_replicas(tb_trainer *tr) {
    for (int i = 0; i < tr->nrep; i++) tb_model_free(&tr->rep[i]);
    free(tr->rep);
    tr->rep = NULL;
    tr->nrep = 0;
}

void tb_trainer_free(tb_trainer *tr) {
    free_replicas(tr);
    tb_model_free(&tr->model);
    memset(tr, 0, sizeof *tr);
}

int tb_trainer_set_parallel(tb_trainer *tr, int nmicro, tb_err *err) {
    const tb_backend *be = tr->model.be;
    free_replicas(tr);
    if (nmicro <= 1) return 0;
    if (!be->core.host_memory || !be->core.threads || !be->core.thread_solo)
        return tb_err_set(err, "parallel micro-batches: the %s backend runs one model at a time",
                          be->name);
    tr->rep = calloc((size_t)nmicro - 1, sizeof *tr->rep);
    if (!tr->rep) return tb_err_set(err, "parallel micro-batches: out of memory");
    for (int i = 0; i < nmicro - 1; i++) {
        if (tb_model_create(&tr->rep[i], &tr->rc.model, be, tr->model.maxB, tr->model.maxT,
                            err)) {
            free_replicas(tr);
            return tb_err_wrap(err, "parallel micro-batches: replica %d", i + 1);
        }
        tr->nrep = i + 1;
    }
    return 0;
}

/* ---- parallel micro-batches ---- */

typedef struct micro_job {
    tb_model *m;
    const tb_batch *b;
    tb_dropout_ctx d;
    tb_fwd_result f;
    double gseed;
    int failed;
    tb_err err;
} micro_job;

static void micro_run(micro_job *j) {
    j->failed = tb_model_forward(j->m, j->b, &j->d, &j->f, &j->err) != 0;
    if (!j->failed && isfinite(j->f.loss)) tb_model_backward(j->m, j->b, j->gseed);
}

static void *micro_thread(void *arg) {
    micro_job *j = arg;
    j->m->be->core.thread_solo(1);
    micro_run(j);
    j->m->be->core.thread_solo(0);
    return NULL;
}

/* Runs micro-batches [0, n) on models 0 .. n-1 (the trainer's, then replicas), up to
 * `threads` at once, each from a zeroed gradient; then the trainer's gradient += each
 * replica's, in order. */
static void run_parallel(tb_trainer *tr, micro_job *jobs, int n) {
    const tb_backend *be = tr->model.be;
    tb_params *p0 = &tr->model.p;
    for (int i = 1; i < n; i++) {
        tb_params *pr = &tr->rep[i - 1].p;
        memcpy(pr->param, p0->param, p0->total * sizeof(real));
        if (p0->codes_total) memcpy(pr->codes, p0->codes, p0->codes_total);
        if (p0->scales_total) memcpy(pr->scales, p0->scales, p0->scales_total * sizeof(real));
        be->core.fill(pr->grad, R(0.0), pr->total);
    }
    int threads = be->core.threads();
    if (threads < 1) threads = 1;
    for (int w0 = 0; w0 < n; w0 += threads) {
        int w1 = w0 + threads < n ? w0 + threads : n;
        pthread_t tid[w1 - w0];
        int started[w1 - w0];
        for (int i = w0 + 1; i < w1; i++)
            started[i - w0] = pthread_create(&tid[i - w0], NULL, micro_thread, &jobs[i]) == 0;
        micro_thread(&jobs[w0]);
        for (int i = w0 + 1; i < w1; i++) {
            if (started[i - w0]) pthread_join(tid[i - w0], NULL);
            else micro_thread(&jobs[i]); /* no thread: run it here, same result */
        }
    }
    for (int i = 1; i < n; i++) be->core.axpy(p0->grad, R(1.0), tr->rep[i - 1].p.grad, p0->total);
}

int tb_trainer_step(tb_trainer *tr, const tb_batch *micro, int nmicro, tb_step_result *res,
                    tb_err *err) {
    tb_step_result r;
    memset(&r, 0, sizeof r);
    int finite = 1, naccum = nmicro;
    if (tr->nrep > 0 && nmicro > 1 && nmicro <= tr->nrep + 1) {
        micro_job jobs[nmicro];
        memset(jobs, 0, sizeof jobs);
        for (int i = 0; i < nmicro; i++) {
            jobs[i].m = i ? &tr->rep[i - 1] : &tr->model;
            jobs[i].b = &micro[i];
            jobs[i].d = (tb_dropout_ctx){tr->seed, (uint32_t)(tr->micro_seen + (uint64_t)i),
                                         tr->rc.model.dropout > 0};
            jobs[i].gseed = grad_seed(tr);
        }
        run_parallel(tr, jobs, nmicro);
        for (int i = 0; i < nmicro; i++)
            if (jobs[i].failed) {
                tr->model.be->core.fill(tr->model.p.grad, R(0.0), tr->model.p.total);
                if (err) *err = jobs[i].err;
                return tb_err_wrap(err, "micro-batch %d", i);
            }
        tr->micro_seen += (uint64_t)nmicro;
        for (int i = 0; i < nmicro; i++) {
            const tb_fwd_result *f = &jobs[i].f;
            if (!isfinite(f->loss)) finite = 0;
            r.loss += f->loss / nmicro;
            r.ce += f->ce / nmicro;
            r.l_bal += f->l_bal / nmicro;
            r.l_ode += f->l_ode / nmicro;
            r.count += f->count;
            r.correct += f->correct;
            r.tokens += (int64_t)micro[i].B * micro[i].T;
        }
        goto update; /* past the sequential loop */
    }
    for (int i = 0; i < nmicro; i++) {
        tb_dropout_ctx d = {tr->seed, (uint32_t)tr->micro_seen, tr->rc.model.dropout > 0};
        tb_fwd_result f;
        if (tb_model_forward(&tr->model, &micro[i], &d, &f, err)) {
            /* Bad input: drop what this step accumulated so the next one starts clean. */
            tr->model.be->core.fill(tr->model.p.grad, R(0.0), tr->model.p.total);
            return tb_err_wrap(err, "micro-batch %d", i);
        }
        tr->micro_seen++;
        if (!isfinite(f.loss)) finite = 0;
        else tb_model_backward(&tr->model, &micro[i], grad_seed(tr));
        r.loss += f.loss / nmicro;
        r.ce += f.ce / nmicro;
        r.l_bal += f.l_bal / nmicro;
        r.l_ode += f.l_ode / nmicro;
        r.count += f.count;
        r.correct += f.correct;
        r.tokens += (int64_t)micro[i].B * micro[i].T;
    }
update:
    r.accuracy = r.count ? (double)r.correct / (double)r.count : 0;
    r.status = tb_optim_step(&tr->opt, tr->model.be, &tr->model.p, &tr->rc.training, naccum,
                             finite, &r.opt);
    if (r.status == TB_OPTIM_APPLIED) tb_model_refresh(&tr->model);
    *res = r;
    return 0;
}

int tb_host_roles_get(tb_host_roles *h, const tb_backend *be, const tb_params *p,
                      real *const *dev, int n, tb_err *err) {
    memset(h, 0, sizeof *h);
    if (be->core.host_memory) {
        for (int i = 0; i < n; i++) h->buf[i] = dev[i];
        return 0;
    }
    h->staged = 1;
    for (int i = 0; i < n; i++) {
        h->buf[i] = malloc((p->total ? p->total : 1) * sizeof(real));
        if (!h->buf[i]) {
            for (int j = 0; j < i; j++) free(h->buf[j]);
            return tb_err_set(err, "checkpoint: cannot stage %zu reals on the host", p->total);
        }
        be->core.to_host(h->buf[i], dev[i], p->total * sizeof(real));
    }
    return 0;
}

void tb_host_roles_put(tb_host_roles *h, const tb_backend *be, const tb_params *p,
                      real *const *dev, int n, int back) {
    if (!h->staged) return;
    for (int i = 0; i < n; i++) {
        if (back) be->core.to_device(dev[i], h->buf[i], p->total * sizeof(real));
        free(h->buf[i]);
    }
}

static int meta_add(tb_st_meta *m, int *n, const char *k, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int meta_add(tb_st_meta *m, int *n, const char *k, const char *fmt, ...) {
    if (*n >= TB_TRAINER_META_MAX) return -1;
    snprintf(m[*n].key, sizeof m[*n].key, "%s", k);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m[*n].value, sizeof m[*n].value, fmt, ap);
    va_end(ap);
    (*n)++;
    return 0;
}

int tb_trainer_save(const tb_trainer *tr, const char *dir, const tb_st_meta *extra, int nextra,
                    tb_err *err) {
    if (mkdir(dir, 0755) && errno != EEXIST)
        return tb_err_set(err, "%s: cannot create: %s", dir, strerror(errno));
    char path[4096];
    const tb_params *p = &tr->model.p;
    tb_st_meta meta[TB_TRAINER_META_MAX];
    int n = 0;
    meta_add(meta, &n, "format", "tb");
    meta_add(meta, &n, "model_class", "%s", tr->rc.model_class);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const tb_backend *be = tr->model.be;
    real *const wdev[] = {p->param}, *const odev[] = {p->m, p->v};
    tb_host_roles hw, ho;
    if (tb_host_roles_get(&hw, be, p, wdev, 1, err)) return -1;
    tb_st_role w[] = {{hw.buf[0], ""}};
    int rv = tb_st_write(path, p, w, 1, meta, n, err);
    tb_host_roles_put(&hw, be, p, wdev, 1, 0);
    if (rv) return -1;
    n = 0;
    meta_add(meta, &n, "step", "%" PRId64, tr->opt.step);
    meta_add(meta, &n, "lr_scale", "%.17g", tr->opt.lr_scale);
    meta_add(meta, &n, "nan_retries", "%d", tr->opt.nan_retries);
    meta_add(meta, &n, "loss_scale", "%.17g", tr->opt.loss_scale);
    meta_add(meta, &n, "loss_scale_good_steps", "%" PRId64, tr->opt.scale_good_steps);
    meta_add(meta, &n, "micro_seen", "%" PRIu64, tr->micro_seen);
    meta_add(meta, &n, "seed", "%" PRIu64, tr->seed);
    for (int i = 0; i < nextra && n < TB_TRAINER_META_MAX; i++) meta[n++] = extra[i];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (tb_host_roles_get(&ho, be, p, odev, 2, err)) return -1;
    tb_st_role o[] = {{ho.buf[0], ".exp_avg"}, {ho.buf[1], ".exp_avg_sq"}};
    rv = tb_st_write(path, p, o, 2, meta, n, err);
    tb_host_roles_put(&ho, be, p, odev, 2, 0);
    return rv;
}

static int meta_num(const tb_st_meta *m, int n, const char *key, const char *path, double *out,
                    tb_err *err) {
    const char *v = tb_st_meta_get(m, n, key);
    char *end;
    if (!v) return tb_err_set(err, "%s: __metadata__ lacks '%s'", path, key);
    errno = 0;
    *out = strtod(v, &end);
    if (errno || end == v || *end) return tb_err_set(err, "%s: __metadata__.%s: bad number '%s'", path, key, v);
    return 0;
}

int tb_trainer_load(tb_trainer *tr, const char *dir, tb_st_meta *meta, int cap, int *nmeta,
                    tb_err *err) {
    char path[4096];
    tb_params *p = &tr->model.p;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const tb_backend *be = tr->model.be;
    real *const wdev[] = {p->param}, *const odev[] = {p->m, p->v};
    tb_host_roles hw, ho;
    if (tb_host_roles_get(&hw, be, p, wdev, 1, err)) return -1;
    tb_st_role w[] = {{hw.buf[0], ""}};
    int rv = tb_st_read(path, p, w, 1, NULL, 0, NULL, err);
    tb_host_roles_put(&hw, be, p, wdev, 1, rv == 0);
    if (rv) return -1;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (tb_host_roles_get(&ho, be, p, odev, 2, err)) return -1;
    tb_st_role o[] = {{ho.buf[0], ".exp_avg"}, {ho.buf[1], ".exp_avg_sq"}};
    tb_st_meta mm[TB_TRAINER_META_MAX];
    int n = 0;
    rv = tb_st_read(path, p, o, 2, mm, TB_TRAINER_META_MAX, &n, err);
    tb_host_roles_put(&ho, be, p, odev, 2, rv == 0);
    if (rv) return -1;
    double step, scale, retries, micro, seed;
    if (meta_num(mm, n, "step", path, &step, err) || meta_num(mm, n, "lr_scale", path, &scale, err) ||
        meta_num(mm, n, "nan_retries", path, &retries, err) ||
        meta_num(mm, n, "micro_seen", path, &micro, err) || meta_num(mm, n, "seed", path, &seed, err))
        return -1;
    /* Integers are written exactly; read the big ones back as integers. */
    tr->opt.step = (int64_t)strtoll(tb_st_meta_get(mm, n, "step"), NULL, 10);
    tr->opt.lr_scale = scale;
    tr->opt.nan_retries = (int)retries;
    tr->micro_seen = strtoull(tb_st_meta_get(mm, n, "micro_seen"), NULL, 10);
    tr->seed = strtoull(tb_st_meta_get(mm, n, "seed"), NULL, 10);
    /* The loss scale (fp16): checkpoints older than it have none (scale as configured). */
    if (tb_st_meta_get(mm, n, "loss_scale")) {
        double ls, good;
        if (meta_num(mm, n, "loss_scale", path, &ls, err) ||
            meta_num(mm, n, "loss_scale_good_steps", path, &good, err))
            return -1;
        if (tr->opt.loss_scaling) {
            tr->opt.loss_scale = ls;
            tr->opt.scale_good_steps = (int64_t)good;
        }
    }
    (void)step;
    (void)micro;
    (void)seed;
    tr->model.be->core.fill(p->grad, R(0.0), p->total);
    tb_model_refresh(&tr->model);
    if (meta) {
        int k = 0;
        for (int i = 0; i < n && k < cap; i++) meta[k++] = mm[i];
        if (nmeta) *nmeta = k;
    }
    return 0;
}
