/* The event loop of tb-trainerd. States (td_run_state), transitions:
 *   STARTING -> RUNNING   first BATCH arrived after resume (READY=1 is sent then)
 *   RUNNING  -> PAUSED    control "pause"; PAUSED -> RUNNING: control "resume"
 *   any      -> STOPPING  SIGTERM/SIGINT or control "stop" (STOPPING=1); the loop
 *                         finishes the current step, checkpoints and exits 0
 *   RUNNING  -> DONE      daemon.max_steps reached: final checkpoint, exit 0
 *   RUNNING  -> FAILED    non-finite after max retries: emergency checkpoint, exit 3
 * Reload (SIGHUP or control "reload") keeps the state: RELOADING=1, the config file is read
 * again and the keys of td_reload_keys applied, then READY=1 and STATUS= (not while
 * STARTING, before the first READY, nor while STOPPING). */
#include "daemon.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>
#include "checkpoint.h"
#include "records.h"
#include "sockets.h"
#include "state.h"
#include "tb_clock.h"
#include "tb_endpoint.h"
#include "tb_log.h"
#include "tb_notify.h"
#include "tb_proto_ctl.h"
#include "tb_proto_feed.h"
#include "tb_signal.h"
#include "trainer.h"
#include "validation.h"

typedef enum td_run_state {
    TD_RS_STARTING = 0,
    TD_RS_RUNNING,
    TD_RS_PAUSED,
    TD_RS_STOPPING,
} td_run_state;
static const char *const rs_names[] = {"starting", "running", "paused", "stopping"};

#define QMAX 1024

typedef struct td_daemon {
    td_config *cfg;
    const td_config_source *src;
    const char *config_yaml;
    td_trainer *tr;
    td_state st;
    void *zctx, *feed, *ctl, *pub;
    tb_zap *zap;
    int ctl_lock, pub_lock;
    FILE *csv;
    td_run_state rs;
    int64_t total_steps, accum;
    /* received batches, oldest first; the first `accum` form the current step */
    tb_batch q[QMAX];
    int qn;
    int micro;           /* micro-batches of the current step already run */
    uint64_t granted;    /* CREDIT sent minus batches received (or refused) */
    uint64_t pub_seq;
    int ctl_owed;        /* a control request waits for a checkpoint at the step boundary */
    uint64_t ctl_owed_id;
    int want_ckpt;       /* manual checkpoint at the next step boundary */
    int want_stop;
    int stopping_sent;
    int64_t spike_run;
    int64_t forced_nan_left, forced_spike_left;
    /* timing */
    double step_t0, wait_t0, wait_ms;
    int waiting;
    double last_loss, last_tps;
    double run_t0;
    int64_t run_step0;
    uint64_t refused;
    char last_ckpt[TD_CKPT_NAME_MAX];
    int64_t last_ckpt_step;
    /* validation */
    td_valset val;
    int have_val;
    double val_loss; /* of the last evaluation; NaN before the first */
    /* metrics subscribers (XPUB subscription messages for a prefix of trainerd.step) */
    int64_t subs;
    int gate_open;   /* daemon.wait_subscribers satisfied (or given up) */
    double gate_t0;
    uint64_t dup_dropped;
    uint64_t gaps;   /* batches refused because one before them never came */
    int want_rehello; /* after a gap: HELLO again with the cursor */
    double rehello_t; /* when the last gap's HELLO went out (mono s) */
    double wd_period, wd_next; /* systemd watchdog: ping period (s), next ping (mono s) */
} td_daemon;

/* WATCHDOG=1 when due; called from the loop and inside long work (steps, checkpoints). */
static void watchdog_tick(td_daemon *d) {
    if (d->wd_period <= 0) return;
    double now = tb_clock_mono_s();
    if (now >= d->wd_next) {
        tb_notify_watchdog();
        d->wd_next = now + d->wd_period;
    }
}

/* Best-K checkpoints rank by validation loss when validation is configured, else by the
 * moving average of the training loss. */
static double ckpt_metric(const td_daemon *d) { return d->have_val ? d->val_loss : d->st.loss_ema; }

/* ---------------------------------------------------------------- metrics */

static void publish(td_daemon *d, const char *topic, tb_kvmap *fields) {
    tb_metrics m;
    memset(&m, 0, sizeof m);
    snprintf(m.topic, sizeof m.topic, "%s", topic);
    m.seq = ++d->pub_seq;
    m.time = tb_clock_wall_s();
    m.fields = *fields;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_err err;
    if (tb_proto_encode_metrics(&pk, &m, &err)) {
        tb_warn("metrics %s: %s", topic, err.msg);
    } else {
        /* PUB never blocks: a slow subscriber loses messages at its HWM. */
        if (zmq_send(d->pub, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
            zmq_send(d->pub, sb.data, sb.size, ZMQ_DONTWAIT);
    }
    msgpack_sbuffer_destroy(&sb);
}

static void event(td_daemon *d, const char *name, const char *detail, double value) {
    tb_kvmap m = {0};
    tb_err err;
    tb_kvmap_add_str(&m, "event", name, &err);
    tb_kvmap_add_int(&m, "global_step", d->st.step, &err);
    if (detail) tb_kvmap_add_str(&m, "detail", detail, &err);
    if (!isnan(value)) tb_kvmap_add_double(&m, "value", value, &err);
    publish(d, "trainerd.event", &m);
    tb_kvmap_free(&m);
}

/* ---------------------------------------------------------------- feed */

static int feed_send(td_daemon *d, int (*enc)(msgpack_packer *, void *, tb_err *), void *arg,
                     const char *what) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_err err;
    int rc = enc(&pk, arg, &err);
    if (rc) tb_error("feed %s: %s", what, err.msg);
    else if (zmq_send(d->feed, sb.data, sb.size, 0) < 0) {
        tb_error("feed %s: send: %s", what, zmq_strerror(zmq_errno()));
        rc = -1;
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}
static int enc_hello(msgpack_packer *pk, void *a, tb_err *e) { return tb_proto_encode_hello(pk, a, e); }
static int enc_credit(msgpack_packer *pk, void *a, tb_err *e) {
    return tb_proto_encode_credit(pk, *(uint32_t *)a, e);
}
static int enc_ack(msgpack_packer *pk, void *a, tb_err *e) {
    return tb_proto_encode_ack(pk, *(uint64_t *)a, e);
}

static void feed_credit(td_daemon *d, uint32_t n) {
    if (!n) return;
    if (!feed_send(d, enc_credit, &n, "CREDIT")) d->granted += n;
}

static int feed_hello(td_daemon *d) {
    tb_hello h;
    memset(&h, 0, sizeof h);
    h.rank = (uint32_t)d->cfg->rank;
    h.world = (uint32_t)d->cfg->world;
    h.has_cursor = d->st.has_cursor;
    if (h.has_cursor) h.cursor = d->st.cursor; /* borrowed, not freed here */
    snprintf(h.client, sizeof h.client, "tb-trainerd[%d] rank %u", (int)getpid(), h.rank);
    return feed_send(d, enc_hello, &h, "HELLO");
}

/* One message from the feed: a BATCH is checked and queued, or refused with a log line
 * (and its credit given back, so training goes on). */
static void feed_recv_one(td_daemon *d, zmq_msg_t *msg) {
    const void *buf = zmq_msg_data(msg);
    size_t len = zmq_msg_size(msg);
    tb_err err;
    tb_proto_type type;
    if (tb_proto_peek_type(&type, buf, len, &err)) {
        tb_error("feed: refused a message of %zu bytes: %s", len, err.msg);
        goto refused;
    }
    if (type != TB_PROTO_BATCH) {
        tb_error("feed: unexpected %s message; ignored", tb_proto_type_name(type));
        return;
    }
    tb_batch b;
    if (tb_proto_decode_batch(buf, len, &b, &err)) {
        tb_error("feed: refused BATCH: %s", err.msg);
        goto refused;
    }
    if (td_trainer_check_batch(d->tr, b.ids, b.labels, (int)b.B, (int)b.T, &err)) {
        tb_error("feed: refused BATCH seq %llu: %s", (unsigned long long)b.seq, err.msg);
        tb_batch_free(&b);
        goto refused;
    }
    if (b.seq % (uint64_t)d->cfg->world != (uint64_t)d->cfg->rank) {
        tb_error("feed: refused BATCH seq %llu: not for rank %lld of %lld",
                 (unsigned long long)b.seq, (long long)d->cfg->rank, (long long)d->cfg->world);
        tb_batch_free(&b);
        goto refused;
    }
    uint64_t newest = d->qn ? d->q[d->qn - 1].seq : d->st.last_seq;
    if ((d->qn || d->st.has_cursor) && b.seq <= newest) {
        tb_warn("feed: BATCH seq %llu already seen (newest %llu); dropped",
                (unsigned long long)b.seq, (unsigned long long)newest);
        tb_batch_free(&b);
        goto refused;
    }
    if ((d->qn || d->st.has_cursor) && b.seq != newest + (uint64_t)d->cfg->world) {
        /* Taking it would skip a batch: refuse it and ask again from the cursor (the
         * feed re-sends everything after it), so nothing is lost. */
        tb_error("feed: BATCH seq %llu arrived before %llu: refused; sending HELLO again",
                 (unsigned long long)b.seq, (unsigned long long)(newest + (uint64_t)d->cfg->world));
        tb_batch_free(&b);
        d->gaps++;
        d->want_rehello = 1;
        goto refused;
    }
    if (d->qn == QMAX) {
        tb_error("feed: queue full; BATCH seq %llu dropped", (unsigned long long)b.seq);
        tb_batch_free(&b);
        goto refused;
    }
    d->q[d->qn++] = b;
    if (d->granted) d->granted--;
    return;
refused:
    d->refused++;
    {
        tb_kvmap m = {0};
        tb_kvmap_add_str(&m, "event", "batch_refused", &err);
        tb_kvmap_add_str(&m, "detail", err.msg, &err);
        publish(d, "trainerd.event", &m);
        tb_kvmap_free(&m);
    }
    if (d->granted) d->granted--;
    feed_credit(d, 1);
}

/* The feed may have lost us (prefetchd restarted with a fresh ring, or our HELLO went to a
 * dead peer): say HELLO again with the cursor of the last applied batch and grant the
 * credit afresh. Batches not yet consumed are dropped (prefetchd re-sends everything after
 * the cursor); ones it re-sends that a step in progress already consumed are dropped as
 * already seen. */
static void feed_rehello(td_daemon *d) {
    for (int i = d->micro; i < d->qn; i++) tb_batch_free(&d->q[i]);
    d->qn = d->micro;
    d->granted = 0;
    if (!feed_hello(d)) feed_credit(d, (uint32_t)d->cfg->credit);
}

/* XPUB subscription messages: byte 1 = subscribe, 0 = unsubscribe, then the topic. */
static void pub_subscriptions(td_daemon *d) {
    static const char step_topic[] = "trainerd.step";
    for (;;) {
        char buf[256];
        int n = zmq_recv(d->pub, buf, sizeof buf, ZMQ_DONTWAIT);
        if (n < 0) return;
        if (n < 1 || n > (int)sizeof buf) continue;
        size_t tl = (size_t)n - 1;
        if (tl > strlen(step_topic) || memcmp(buf + 1, step_topic, tl)) continue;
        if (buf[0] == 1) d->subs++;
        else if (buf[0] == 0 && d->subs > 0) d->subs--;
    }
}

static void feed_drain(td_daemon *d) {
    for (;;) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, d->feed, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return;
        }
        feed_recv_one(d, &msg);
        zmq_msg_close(&msg);
    }
}

/* ---------------------------------------------------------------- checkpoints */

typedef struct ckpt_ctx {
    td_daemon *d;
} ckpt_ctx;

static int ckpt_writer(const char *dir, void *arg, tb_err *err) {
    ckpt_ctx *c = arg;
    td_daemon *d = c->d;
    watchdog_tick(d);
    if (td_trainer_write(d->tr, dir, err)) return -1;
    watchdog_tick(d);
    char p[4096];
    snprintf(p, sizeof p, "%s/state.msgpack", dir);
    d->st.lr_scale = td_trainer_lr_scale(d->tr);
    d->st.nan_retries = td_trainer_nan_retries(d->tr);
    d->st.loss_scale = td_trainer_loss_scale(d->tr);
    d->st.dropout_counter = d->st.step * d->accum;
    d->st.total_steps = d->total_steps;
    if (td_state_write(p, &d->st, err)) return -1;
    if (d->cfg->debug_ckpt_sleep_ms > 0) {
        struct timespec ts = {d->cfg->debug_ckpt_sleep_ms / 1000,
                              (d->cfg->debug_ckpt_sleep_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static const char *const ckpt_files[] = {"model.safetensors", "optimizer.safetensors",
                                         "state.msgpack"};

static int checkpoint(td_daemon *d, unsigned tags, double metric, td_ckpt_info *out) {
    ckpt_ctx c = {d};
    tb_err err;
    td_ckpt_info info;
    double t0 = tb_clock_mono_s();
    if (td_ckpt_save(d->cfg->checkpoint_dir, d->st.step, tags, metric, ckpt_files, 3,
                     ckpt_writer, &c, &info, &err)) {
        tb_error("checkpoint failed (the previous ones are intact): %s", err.msg);
        event(d, "checkpoint_failed", err.msg, NAN);
        return -1;
    }
    tb_info("checkpoint %s/%s (step %lld, %.0f ms)", d->cfg->checkpoint_dir, info.name,
            (long long)d->st.step, (tb_clock_mono_s() - t0) * 1e3);
    snprintf(d->last_ckpt, sizeof d->last_ckpt, "%s", info.name);
    d->last_ckpt_step = d->st.step;
    event(d, "checkpoint", info.name, (double)d->st.step);
    const tb_train_config *tc = &d->cfg->run.training;
    int rm = td_ckpt_retain(d->cfg->checkpoint_dir, (int)tc->max_rolling_checkpoints,
                            (int)tc->num_best_checkpoints, &err);
    if (rm < 0) tb_warn("checkpoint retention: %s", err.msg);
    if (out) *out = info;
    return 0;
}

/* Loads a checkpoint directory into the trainer and *st (freed first). */
static int load_checkpoint(td_daemon *d, const char *name, td_state *st, tb_err *err) {
    char dir[4096], p[4200];
    snprintf(dir, sizeof dir, "%s/%s", d->cfg->checkpoint_dir, name);
    snprintf(p, sizeof p, "%s/state.msgpack", dir);
    td_state ns;
    if (td_state_read(p, &ns, err)) return -1;
    if (td_trainer_read(d->tr, dir, err)) {
        td_state_free(&ns);
        return -1;
    }
    td_trainer_set_step(d->tr, ns.step);
    td_trainer_set_lr_scale(d->tr, ns.lr_scale);
    td_trainer_set_nan_retries(d->tr, (int)ns.nan_retries);
    td_trainer_set_loss_scale(d->tr, ns.loss_scale);
    td_state_free(st);
    *st = ns;
    return 0;
}

/* Newest valid checkpoint that also loads; torn or corrupt ones are skipped (logged). */
static int resume(td_daemon *d) {
    tb_err err;
    int n;
    td_ckpt_info *v;
    td_ckpt_clean_tmp(d->cfg->checkpoint_dir, &err);
    if (td_ckpt_scan(d->cfg->checkpoint_dir, 1, &v, &n, &err)) {
        tb_error("%s", err.msg);
        return -1;
    }
    int found = 0;
    for (int i = 0; i < n && !found; i++) {
        if (!v[i].valid) continue;
        if (load_checkpoint(d, v[i].name, &d->st, &err)) {
            tb_warn("checkpoint %s skipped: %s", v[i].name, err.msg);
            continue;
        }
        tb_notice("resumed from %s/%s: step %lld, %llu batches applied, last seq %llu",
                  d->cfg->checkpoint_dir, v[i].name, (long long)d->st.step,
                  (unsigned long long)d->st.batches_applied, (unsigned long long)d->st.last_seq);
        snprintf(d->last_ckpt, sizeof d->last_ckpt, "%s", v[i].name);
        d->last_ckpt_step = d->st.step;
        found = 1;
    }
    free(v);
    if (!found) tb_notice("no valid checkpoint in %s: starting from step 0", d->cfg->checkpoint_dir);
    return 0;
}

/* ---------------------------------------------------------------- control */

static void ctl_reply(td_daemon *d, uint64_t id, int ok, const char *error, tb_kvmap *result) {
    tb_reply r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.ok = ok;
    r.error = (char *)error;
    if (result) r.result = *result;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_err err;
    if (tb_proto_encode_reply(&pk, &r, &err)) {
        tb_error("control reply: %s", err.msg);
        msgpack_sbuffer_clear(&sb);
        r.ok = false;
        r.error = "internal: reply encoding failed";
        memset(&r.result, 0, sizeof r.result);
        tb_proto_encode_reply(&pk, &r, &err);
    }
    zmq_send(d->ctl, sb.data, sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
}

static void status_map(td_daemon *d, tb_kvmap *m) {
    tb_err err;
    tb_kvmap_add_str(m, "state", rs_names[d->rs], &err);
    tb_kvmap_add_str(m, "backend", td_trainer_backend(d->tr), &err);
    tb_kvmap_add_str(m, "precision", td_trainer_precision(d->tr), &err);
    tb_kvmap_add_int(m, "global_step", d->st.step, &err);
    tb_kvmap_add_int(m, "total_steps", d->total_steps, &err);
    tb_kvmap_add_int(m, "epoch", d->st.epoch, &err);
    tb_kvmap_add_double(m, "loss", d->last_loss, &err);
    tb_kvmap_add_double(m, "loss_ema", d->st.loss_ema, &err);
    tb_kvmap_add_double(m, "tokens_per_s", d->last_tps, &err);
    tb_kvmap_add_double(m, "lr_scale", td_trainer_lr_scale(d->tr), &err);
    tb_kvmap_add_int(m, "batches_applied", (int64_t)d->st.batches_applied, &err);
    tb_kvmap_add_int(m, "last_seq", d->st.has_cursor ? (int64_t)d->st.last_seq : -1, &err);
    tb_kvmap_add_int(m, "queued", d->qn, &err);
    tb_kvmap_add_int(m, "refused", (int64_t)d->refused, &err);
    tb_kvmap_add_int(m, "feed_gaps", (int64_t)d->gaps, &err);
    tb_kvmap_add_str(m, "last_checkpoint", d->last_ckpt, &err);
    tb_kvmap_add_int(m, "pid", getpid(), &err);
}

/* ---------------------------------------------------------------- reload */

/* Keys whose running values the loop reads afresh at each use, so a reload can change
 * them. The model, the training shape and schedule (the trainer holds its own copy),
 * sockets, paths, rank/world, validation set and the debug fault counters cannot. */
const char *const td_reload_keys[] = {
    "daemon.log_level",
    "daemon.progress_every",
    "daemon.feed_timeout_ms",
    "daemon.peak_flops",
    "daemon.loss_ema_beta",
    "daemon.spike_factor",
    "daemon.spike_steps",
    "daemon.spike_warmup",
    "daemon.checkpoint_on_epoch",
    "training.checkpoint_every_n_steps",
    "training.max_rolling_checkpoints",
    "training.num_best_checkpoints",
    "validation.every_n_steps",
    "debug.step_sleep_ms",
    "debug.checkpoint_sleep_ms",
    NULL,
};

static int reload_key(const char *key) {
    for (int i = 0; td_reload_keys[i]; i++)
        if (!strcmp(td_reload_keys[i], key)) return 1;
    return 0;
}

/* Whether field f holds the same value in a and b; *sz gets its size in bytes. */
static int field_same(const tb_cfg_field *f, const td_config *a, const td_config *b, size_t *sz) {
    const char *pa = (const char *)a + f->offset, *pb = (const char *)b + f->offset;
    switch (f->type) {
    case TB_CFG_INT: *sz = sizeof(int64_t); return !memcmp(pa, pb, *sz);
    case TB_CFG_DOUBLE: *sz = sizeof(double); return !memcmp(pa, pb, *sz);
    case TB_CFG_BOOL:
    case TB_CFG_ENUM: *sz = sizeof(int); return *(const int *)pa == *(const int *)pb;
    case TB_CFG_STRING: *sz = f->size; return !strncmp(pa, pb, f->size);
    case TB_CFG_STRLIST: {
        const tb_cfg_strlist *la = (const tb_cfg_strlist *)pa, *lb = (const tb_cfg_strlist *)pb;
        *sz = sizeof *la;
        if (la->count != lb->count) return 0;
        for (int i = 0; i < la->count; i++)
            if (strcmp(la->items[i], lb->items[i])) return 0;
        return 1;
    }
    default: *sz = 0; return 1;
    }
}

static void list_add(char *list, size_t cap, const char *key) {
    size_t n = strlen(list);
    if (n + strlen(key) + 3 >= cap) return;
    snprintf(list + n, cap - n, "%s%s", n ? ", " : "", key);
}

/* Reads the config file again (the same path and --set overrides) and applies the keys of
 * td_reload_keys. Returns 0 when the new config is in force. Returns -1 with err when the
 * config has an error (nothing applied: the running config stays whole) or when it changes
 * keys that cannot change at run time (those keep their running values, each is logged;
 * the reloadable changes are applied). res gets "changed" (and "refused"). */
static int reload_config(td_daemon *d, tb_kvmap *res, tb_err *err) {
    if (!d->src) return tb_err_set(err, "reload: the daemon was started without a config source");
    const char *path = d->src->path ? d->src->path : "(no file: defaults and --set)";
    const tb_cfg_schema *s = td_config_schema();
    td_config *nc = calloc(1, sizeof *nc);
    if (!s || !nc) {
        free(nc);
        return tb_err_set(err, "reload: out of memory");
    }
    tb_err e;
    if (td_config_load(nc, d->src->path, d->src->overrides, d->src->nover, &e)) {
        free(nc);
        return tb_err_set(err, "reload rejected, running config kept: %s", e.msg);
    }
    char changed[1024] = "", refused[1024] = "";
    int nref = 0, nchg = 0;
    for (size_t i = 0; i < s->count; i++) {
        const tb_cfg_field *f = &s->fields[i];
        size_t sz;
        if (f->type == TB_CFG_SECTION || field_same(f, d->cfg, nc, &sz)) continue;
        if (reload_key(f->key)) {
            memcpy((char *)d->cfg + f->offset, (const char *)nc + f->offset, sz);
            list_add(changed, sizeof changed, f->key);
            nchg++;
        } else {
            tb_error("reload: %s: %s cannot change at run time; keeping the running value "
                     "(restart tb-trainerd to apply it)", path, f->key);
            list_add(refused, sizeof refused, f->key);
            nref++;
        }
    }
    free(nc);
    if (nchg) {
        static const char *const lvl_names[] = {"error", "warn", "notice", "info", "debug"};
        tb_log_level lvl;
        if (!tb_log_level_parse(lvl_names[d->cfg->log_level], &lvl)) tb_log_init(NULL, lvl);
        /* Checkpoints store the values in force. */
        char *yaml = NULL;
        size_t ylen = 0;
        FILE *ms = open_memstream(&yaml, &ylen);
        if (ms) {
            int wrc = tb_cfg_write_values(ms, d->cfg, s);
            if (fclose(ms) == 0 && wrc == 0) {
                free(d->st.config_yaml);
                d->st.config_yaml = yaml;
                yaml = NULL;
            }
            free(yaml);
        }
    }
    tb_kvmap_add_str(res, "changed", changed, &e);
    if (nref) tb_kvmap_add_str(res, "refused", refused, &e);
    tb_notice("reload of %s: %s%s%s", path, nchg ? "applied " : "no reloadable key changed",
              changed, nref ? " (some keys refused)" : "");
    event(d, "reload", nchg ? changed : NULL, (double)nchg);
    if (nref)
        return tb_err_set(err, "%s: %s cannot change at run time (running values kept; restart "
                               "to apply)%s%s", path, refused, nchg ? "; applied: " : "",
                          changed);
    return 0;
}

static void notify_status(td_daemon *d) {
    if (isnan(d->last_loss))
        tb_notify_status("step %lld loss - tok/s -", (long long)d->st.step);
    else
        tb_notify_status("step %lld loss %.4f tok/s %.0f", (long long)d->st.step, d->last_loss,
                         d->last_tps);
}

/* SIGHUP or control "reload": RELOADING=1, reload, READY=1 and STATUS=. Before the first
 * READY (STARTING) the config is reloaded without notifications. */
static int reload(td_daemon *d, tb_kvmap *res, tb_err *err) {
    int notify = d->rs != TD_RS_STARTING;
    if (notify) tb_notify_reloading();
    int rc = reload_config(d, res, err);
    if (rc) tb_error("%s", err->msg);
    if (notify) {
        tb_notify_ready();
        notify_status(d);
    }
    return rc;
}

static double kv_number(const tb_kv *kv, int *ok) {
    *ok = 1;
    if (kv->type == TB_KV_DOUBLE) return kv->v.d;
    if (kv->type == TB_KV_INT) return (double)kv->v.i;
    if (kv->type == TB_KV_STR) {
        char *end;
        double v = strtod(kv->v.s, &end);
        if (end != kv->v.s && !*end) return v;
    }
    *ok = 0;
    return NAN;
}

static void ctl_handle(td_daemon *d) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, d->ctl, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        return;
    }
    tb_request rq;
    tb_err err;
    int rc = tb_proto_decode_request(zmq_msg_data(&msg), zmq_msg_size(&msg), &rq, &err);
    zmq_msg_close(&msg);
    if (rc) {
        tb_warn("control: bad request: %s", err.msg);
        ctl_reply(d, 0, 0, err.msg, NULL);
        return;
    }
    tb_kvmap res = {0};
    const char *v = rq.verb;
    if (!strcmp(v, "status")) {
        status_map(d, &res);
        ctl_reply(d, rq.id, 1, NULL, &res);
    } else if (!strcmp(v, "pause")) {
        if (d->rs == TD_RS_RUNNING) d->rs = TD_RS_PAUSED;
        tb_notice("paused by control");
        event(d, "paused", NULL, NAN);
        status_map(d, &res);
        ctl_reply(d, rq.id, 1, NULL, &res);
    } else if (!strcmp(v, "resume")) {
        if (d->rs == TD_RS_PAUSED) d->rs = TD_RS_RUNNING;
        tb_notice("resumed by control");
        event(d, "resumed", NULL, NAN);
        status_map(d, &res);
        ctl_reply(d, rq.id, 1, NULL, &res);
    } else if (!strcmp(v, "checkpoint")) {
        /* Written at the next step boundary; the reply waits for it. */
        d->want_ckpt = 1;
        d->ctl_owed = 1;
        d->ctl_owed_id = rq.id;
    } else if (!strcmp(v, "set-lr-scale") || !strcmp(v, "set_lr_scale") || !strcmp(v, "lr-scale")) {
        const tb_kv *kv = tb_kvmap_get(&rq.args, "scale");
        if (!kv) kv = tb_kvmap_get(&rq.args, "value");
        int ok = 0;
        double s = kv ? kv_number(kv, &ok) : NAN;
        if (!ok || !(s > 0) || !isfinite(s) || s > 1e3) {
            ctl_reply(d, rq.id, 0, "set-lr-scale: args.scale must be a number in (0, 1000]", NULL);
        } else {
            td_trainer_set_lr_scale(d->tr, s);
            tb_notice("lr scale set to %g by control", s);
            event(d, "lr_scale", NULL, s);
            tb_kvmap_add_double(&res, "lr_scale", s, &err);
            ctl_reply(d, rq.id, 1, NULL, &res);
        }
    } else if (!strcmp(v, "reload")) {
        /* Synchronous: the reply comes after the reload is applied (tbctl reload --wait). */
        if (d->rs == TD_RS_STOPPING || d->want_stop || tb_signals.term) {
            ctl_reply(d, rq.id, 0, "reload: the daemon is stopping", NULL);
        } else if (reload(d, &res, &err)) {
            ctl_reply(d, rq.id, 0, err.msg, &res);
        } else {
            ctl_reply(d, rq.id, 1, NULL, &res);
        }
    } else if (!strcmp(v, "stop")) {
        d->want_stop = 1;
        tb_notice("stop requested by control");
        ctl_reply(d, rq.id, 1, NULL, NULL);
    } else {
        char e[400];
        snprintf(e, sizeof e, "unknown verb '%.255s' (status, pause, resume, checkpoint, "
                              "set-lr-scale, reload, stop)", v);
        ctl_reply(d, rq.id, 0, e, NULL);
    }
    tb_kvmap_free(&res);
    tb_request_free(&rq);
}

/* ---------------------------------------------------------------- steps */

static void ack_step(td_daemon *d) {
    for (int i = 0; i < d->accum; i++) {
        uint64_t seq = d->q[i].seq;
        feed_send(d, enc_ack, &seq, "ACK");
    }
}

/* Removes the step's batches from the queue, moving the cursor to the last one's. */
static void pop_step(td_daemon *d, int applied) {
    int n = (int)d->accum;
    if (applied) {
        for (int i = 0; i < n; i++) {
            d->st.applied_hash = td_state_chain(d->st.applied_hash, d->q[i].seq, d->q[i].crc);
            d->st.batches_applied++;
        }
        tb_batch *last = &d->q[n - 1];
        tb_cursor_free(&d->st.cursor);
        d->st.cursor = last->cursor_after;
        memset(&last->cursor_after, 0, sizeof last->cursor_after);
        d->st.has_cursor = true;
        d->st.last_seq = last->seq;
    }
    for (int i = 0; i < n; i++) tb_batch_free(&d->q[i]);
    memmove(d->q, d->q + n, (size_t)(d->qn - n) * sizeof d->q[0]);
    d->qn -= n;
}

static void rollback(td_daemon *d, double loss) {
    double new_scale = td_trainer_lr_scale(d->tr) * 0.5;
    char name[TD_CKPT_NAME_MAX];
    td_ckpt_info ci;
    tb_err err;
    int have = td_ckpt_newest(d->cfg->checkpoint_dir, &ci, &err);
    if (have <= 0) {
        tb_warn("loss spike (%g vs moving average %g) but no checkpoint to roll back to; "
                "halving the learning rate only", loss, d->st.loss_ema);
        td_trainer_set_lr_scale(d->tr, new_scale);
        event(d, "rollback", "no checkpoint: lr halved", new_scale);
        return;
    }
    snprintf(name, sizeof name, "%s", ci.name);
    /* The data stream goes on (the spiking batches are not replayed): keep the cursor. */
    td_state keep;
    if (td_state_copy(&keep, &d->st, &err)) {
        tb_error("rollback: %s", err.msg);
        return;
    }
    int64_t from = d->st.step;
    if (load_checkpoint(d, name, &d->st, &err)) {
        tb_error("rollback to %s failed: %s", name, err.msg);
        td_state_free(&keep);
        return;
    }
    tb_cursor_free(&d->st.cursor);
    d->st.cursor = keep.cursor;
    keep.cursor.shuffle = NULL;
    d->st.has_cursor = keep.has_cursor;
    d->st.last_seq = keep.last_seq;
    d->st.epoch = keep.epoch;
    d->st.attempts = keep.attempts;
    /* The config in force (a reload may have changed it since that checkpoint). */
    free(d->st.config_yaml);
    d->st.config_yaml = keep.config_yaml;
    keep.config_yaml = NULL;
    td_state_free(&keep);
    td_trainer_set_lr_scale(d->tr, new_scale);
    d->st.lr_scale = new_scale;
    char det[256];
    snprintf(det, sizeof det, "loss %g > %g x moving average %g for %lld steps: step %lld -> %s",
             loss, d->cfg->spike_factor, d->st.loss_ema, (long long)d->spike_run, (long long)from,
             name);
    tb_warn("rollback: %s; lr scale now %g", det, new_scale);
    event(d, "rollback", det, new_scale);
    d->spike_run = 0;
}

/* Runs one micro-batch of the current step; applies the step after the last one.
 * Returns an exit status >= 0 when the daemon must exit, -1 to go on. */
static int run_micro(td_daemon *d) {
    tb_err err;
    if (d->micro == 0) d->step_t0 = tb_clock_mono_s();
    tb_batch *b = &d->q[d->micro];
    int force_nan = 0;
    if (d->cfg->debug_nan_at_step >= 0 && d->st.step >= d->cfg->debug_nan_at_step &&
        d->forced_nan_left > 0 && d->micro == 0) {
        force_nan = 1;
        d->forced_nan_left--;
    }
    if (td_trainer_micro(d->tr, b->ids, b->labels, b->attn_mask, (int)b->B, (int)b->T, d->micro,
                         force_nan, &err)) {
        /* Checked before queueing, so this is a broken invariant of ours. */
        tb_error("train step %lld: %s", (long long)d->st.step, err.msg);
        return TB_EX_SOFTWARE;
    }
    d->micro++;
    watchdog_tick(d);
    if (d->micro < d->accum) return -1;
    d->micro = 0;

    td_step_result r;
    td_trainer_apply(d->tr, &r);
    watchdog_tick(d);
    double now = tb_clock_mono_s();
    d->st.attempts++;
    td_record rec;
    memset(&rec, 0, sizeof rec);
    rec.timestamp = tb_clock_wall_s();
    rec.step_ms = (now - d->step_t0) * 1e3;
    rec.data_wait_ms = d->wait_ms;
    d->wait_ms = 0;
    rec.loss = r.loss;
    rec.accuracy = r.accuracy;
    rec.learning_rate = r.lr;
    rec.grad_norm = r.grad_norm;
    d->st.loss_scale = td_trainer_loss_scale(d->tr); /* after this step's update or halving */
    rec.scaler_scale = d->st.loss_scale;
    rec.loss_scale = d->st.loss_scale;
    td_trainer_memory(d->tr, &rec.gpu_memory_gb, &rec.gpu_cached_gb);
    double secs = rec.step_ms / 1e3;
    rec.tokens_per_s = secs > 0 ? (double)r.tokens / secs : 0;
    rec.mfu = secs > 0 ? td_trainer_flops_per_token(d->tr, (int)d->q[0].T) * (double)r.tokens /
                             secs / d->cfg->peak_flops
                       : 0;
    memcpy(rec.comp_norm, r.comp_norm, sizeof rec.comp_norm);
    rec.val_loss = NAN;
    rec.val_accuracy = NAN;
    rec.skipped = r.status != TD_STEP_APPLIED;

    int exit_status = -1;
    if (r.status == TD_STEP_APPLIED) {
        /* A trainer with no checkpoint yet acknowledges its first step only once a
         * checkpoint holds it: killed before that, it restarts from scratch and prefetchd
         * re-sends the unacknowledged batches (a HELLO without a cursor cannot rewind). */
        int first_ckpt = !d->last_ckpt[0];
        uint64_t *acks = first_ckpt ? malloc((size_t)d->accum * sizeof *acks) : NULL;
        int nacks = 0;
        if (acks)
            for (int i = 0; i < d->accum; i++) acks[nacks++] = d->q[i].seq;
        else
            ack_step(d);
        uint64_t epoch_before = d->st.has_cursor ? d->st.cursor.epoch : d->q[0].cursor_after.epoch;
        pop_step(d, 1);
        d->st.step++;
        int new_epoch = d->st.cursor.epoch != epoch_before;
        if (new_epoch) {
            d->st.epoch = (int64_t)d->st.cursor.epoch;
            d->st.epoch_start_step = d->st.step;
        }
        feed_credit(d, (uint32_t)d->accum);
        double loss = r.loss;
        if (d->cfg->debug_spike_at_step >= 0 && d->st.step - 1 >= d->cfg->debug_spike_at_step &&
            d->forced_spike_left > 0) {
            d->forced_spike_left--;
            loss = rec.loss = d->cfg->debug_spike_loss;
        }
        d->last_loss = loss;
        d->last_tps = rec.tokens_per_s;
        /* Spike: loss > factor x moving average (the average excludes spikes). */
        int spike = d->st.ema_count > 0 && d->st.step > d->cfg->spike_warmup &&
                    loss > d->cfg->spike_factor * d->st.loss_ema;
        if (spike) {
            d->spike_run++;
            tb_warn("loss spike at step %lld: %g > %g x %g (%lld of %lld)", (long long)d->st.step,
                    loss, d->cfg->spike_factor, d->st.loss_ema, (long long)d->spike_run,
                    (long long)d->cfg->spike_steps);
        } else {
            d->spike_run = 0;
            double b = d->cfg->loss_ema_beta;
            d->st.loss_ema = d->st.ema_count ? b * d->st.loss_ema + (1 - b) * loss : loss;
            d->st.ema_count++;
        }
        rec.global_step = d->st.step;
        rec.epoch = d->st.epoch;
        rec.step = d->st.step - d->st.epoch_start_step;
        if (d->have_val &&
            (d->st.step % d->cfg->val_every == 0 || d->st.step >= d->total_steps)) {
            td_val_result vr;
            double v0 = tb_clock_mono_s();
            if (td_valset_eval(d->tr, &d->val, &vr, &err)) {
                tb_error("%s", err.msg);
            } else {
                d->val_loss = rec.val_loss = vr.loss;
                rec.val_accuracy = vr.accuracy;
                tb_info("validation at step %lld: loss %.4f accuracy %.4f (%lld tokens, %lld "
                        "batches, %.0f ms)", (long long)d->st.step, vr.loss, vr.accuracy,
                        (long long)vr.tokens, (long long)vr.batches, (tb_clock_mono_s() - v0) * 1e3);
            }
        }
        if (td_csv_write(d->csv, &rec, &err)) tb_warn("%s", err.msg);
        tb_kvmap m = {0};
        if (!td_record_to_kv(&m, &rec, &err)) publish(d, "trainerd.step", &m);
        tb_kvmap_free(&m);

        if (d->spike_run >= d->cfg->spike_steps) {
            rollback(d, loss);
        } else {
            unsigned tags = 0;
            const tb_train_config *tc = &d->cfg->run.training;
            if (tc->checkpoint_every_n_steps > 0 && d->st.step % tc->checkpoint_every_n_steps == 0)
                tags |= TD_CKPT_ROLLING;
            if (new_epoch && d->cfg->checkpoint_on_epoch) tags |= TD_CKPT_EPOCH;
            if (d->st.step >= d->total_steps) tags |= TD_CKPT_FINAL;
            if (first_ckpt) tags |= TD_CKPT_ROLLING;
            if (tags) checkpoint(d, tags, ckpt_metric(d), NULL);
        }
        for (int i = 0; i < nacks; i++) feed_send(d, enc_ack, &acks[i], "ACK");
        free(acks);
        if (d->st.step % d->cfg->progress_every == 0 || d->st.step >= d->total_steps) {
            double el = now - d->run_t0;
            int64_t done = d->st.step - d->run_step0;
            double eta = done > 0 ? el / (double)done * (double)(d->total_steps - d->st.step) : 0;
            tb_info("step %lld/%lld loss %.4f acc %.3f lr %.3g gnorm %.3f tok/s %.0f ETA %.0fs",
                    (long long)d->st.step, (long long)d->total_steps, loss, r.accuracy, r.lr,
                    r.grad_norm, rec.tokens_per_s, eta);
        }
        notify_status(d);
        if (d->st.step >= d->total_steps) {
            tb_notice("reached %lld steps; exiting", (long long)d->total_steps);
            exit_status = TD_EXIT_OK;
        }
    } else {
        /* Skipped: the same batches are retried with the reduced learning rate. */
        rec.global_step = d->st.step;
        rec.epoch = d->st.epoch;
        rec.step = d->st.step - d->st.epoch_start_step;
        if (td_csv_write(d->csv, &rec, &err)) tb_warn("%s", err.msg);
        tb_kvmap m = {0};
        if (!td_record_to_kv(&m, &rec, &err)) publish(d, "trainerd.step", &m);
        tb_kvmap_free(&m);
        tb_warn("non-finite %s at step %lld: update skipped, lr scale now %g (retry %d of %lld)",
                r.nonfinite_loss ? "loss" : "gradients", (long long)d->st.step,
                td_trainer_lr_scale(d->tr), td_trainer_nan_retries(d->tr),
                (long long)d->cfg->run.training.max_nan_retries);
        event(d, "nonfinite_skip", NULL, td_trainer_lr_scale(d->tr));
        if (r.status == TD_STEP_GAVE_UP) {
            td_ckpt_info ci;
            tb_error("non-finite values persist after %lld retries: emergency checkpoint, exit %d",
                     (long long)d->cfg->run.training.max_nan_retries, TD_EXIT_NONFINITE);
            if (!checkpoint(d, TD_CKPT_EMERGENCY, NAN, &ci)) {
                char p[4096];
                snprintf(p, sizeof p, "%s/%s.nonfinite.json", d->cfg->checkpoint_dir, ci.name);
                if (td_trainer_dump_nonfinite(d->tr, p, &r, &err)) tb_error("%s", err.msg);
                else tb_error("debug dump: %s", p);
            }
            event(d, "emergency_exit", NULL, NAN);
            exit_status = TD_EXIT_NONFINITE;
        }
    }
    if (d->cfg->debug_step_sleep_ms > 0) {
        struct timespec ts = {d->cfg->debug_step_sleep_ms / 1000,
                              (d->cfg->debug_step_sleep_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return exit_status;
}

/* ---------------------------------------------------------------- loop */

int td_daemon_run(td_config *cfg, const char *config_yaml, const td_config_source *src) {
    td_daemon D, *d = &D;
    memset(d, 0, sizeof *d);
    d->cfg = cfg;
    d->src = src;
    d->config_yaml = config_yaml;
    d->ctl_lock = d->pub_lock = -1;
    d->total_steps = td_config_total_steps(cfg);
    d->accum = cfg->run.training.gradient_accumulation_steps;
    d->forced_nan_left = cfg->debug_nan_count;
    d->forced_spike_left = cfg->debug_spike_count;
    d->last_loss = NAN;
    td_state_init(&d->st);
    int status = TB_EX_SOFTWARE;
    tb_err err;
    if (tb_signal_install()) {
        tb_error("signals: %s", strerror(errno));
        return TB_EX_SOFTWARE;
    }
    d->tr = td_trainer_create(cfg, &err);
    if (!d->tr) {
        tb_error("model: %s", err.msg);
        return TB_EX_CONFIG;
    }
    tb_info("model: %lld parameters, backend %s (GEMMs %s), micro-batch %lld x %lld, accumulation %lld",
            (long long)td_trainer_params(d->tr), td_trainer_backend(d->tr), td_trainer_precision(d->tr),
            (long long)cfg->run.training.batch_size, (long long)cfg->run.training.max_length,
            (long long)d->accum);
    if (td_mkdirs(cfg->checkpoint_dir, &err)) {
        tb_error("%s", err.msg);
        status = TB_EX_IOERR;
        goto out;
    }
    d->st.seed = (uint64_t)cfg->run.training.seed;
    if (resume(d)) {
        status = TB_EX_IOERR;
        goto out;
    }
    free(d->st.config_yaml);
    d->st.config_yaml = config_yaml ? strdup(config_yaml) : NULL;
    d->val_loss = NAN;
    if (cfg->val_manifest[0]) {
        const tb_train_config *tc = &cfg->run.training;
        td_val_opts vo = {.manifest = cfg->val_manifest, .tokenizer = cfg->val_tokenizer,
                          .batches = cfg->val_batches, .seed = cfg->val_seed,
                          .batch_size = cfg->val_batch_size ? cfg->val_batch_size : tc->batch_size,
                          .seq_len = cfg->val_seq_len ? cfg->val_seq_len : tc->max_length,
                          .mask_prob = cfg->val_mask_prob, .packing = cfg->val_packing,
                          .vocab = cfg->run.model.vocab_size};
        if (vo.batch_size > tc->batch_size || vo.seq_len > tc->max_length) {
            tb_error("validation: batch %lld x %lld exceeds training.batch_size %lld x "
                     "training.max_length %lld", (long long)vo.batch_size, (long long)vo.seq_len,
                     (long long)tc->batch_size, (long long)tc->max_length);
            status = TB_EX_CONFIG;
            goto out;
        }
        if (td_valset_load(&d->val, &vo, &err)) {
            tb_error("%s", err.msg);
            status = TB_EX_CONFIG;
            goto out;
        }
        d->have_val = 1;
        tb_info("validation: %d batches of %d x %d from %s (seed %lld), every %lld steps",
                d->val.n, d->val.B, d->val.T, cfg->val_manifest, (long long)cfg->val_seed,
                (long long)cfg->val_every);
    }
    d->run_step0 = d->st.step;
    d->csv = td_csv_open(cfg->csv_path, &err);
    if (!d->csv) {
        tb_error("%s", err.msg);
        status = TB_EX_IOERR;
        goto out;
    }
    d->zctx = zmq_ctx_new();
    d->feed = zmq_socket(d->zctx, ZMQ_DEALER);
    d->ctl = zmq_socket(d->zctx, ZMQ_REP);
    /* XPUB: sends like PUB, and tells us who subscribed (daemon.wait_subscribers). */
    d->pub = zmq_socket(d->zctx, ZMQ_XPUB);
    int verbose = 1;
    zmq_setsockopt(d->pub, ZMQ_XPUB_VERBOSE, &verbose, sizeof verbose);
    int64_t maxmsg = TB_PROTO_MAX_MSG, ctlmax = 1 << 20;
    int linger = 0;
    zmq_setsockopt(d->feed, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(d->ctl, ZMQ_MAXMSGSIZE, &ctlmax, sizeof ctlmax);
    /* Subscribers only send (un)subscribe frames: a topic name. Without a cap a peer's
     * length header makes libzmq try to allocate whatever it claims. */
    int64_t submax = 4096;
    zmq_setsockopt(d->pub, ZMQ_MAXMSGSIZE, &submax, sizeof submax);
    zmq_setsockopt(d->feed, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d->ctl, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d->pub, ZMQ_LINGER, &linger, sizeof linger);
    if (!strncmp(cfg->control_endpoint, "tcp://", 6) || !strncmp(cfg->metrics_endpoint, "tcp://", 6)) {
        if (!cfg->curve_allowed_dir[0]) {
            tb_error("tcp control/metrics endpoints need daemon.curve_secret_key_file and "
                     "daemon.curve_allowed_dir (CURVE + ZAP)");
            status = TB_EX_CONFIG;
            goto out;
        }
        if (!(d->zap = tb_zap_start(d->zctx, cfg->curve_allowed_dir, &err))) {
            tb_error("%s", err.msg);
            status = TB_EX_CONFIG;
            goto out;
        }
    }
    if (td_bind(d->ctl, cfg->control_endpoint, cfg->curve_secret_key_file, cfg->curve_allowed_dir,
                &d->ctl_lock, &err) ||
        td_bind(d->pub, cfg->metrics_endpoint, cfg->curve_secret_key_file, cfg->curve_allowed_dir,
                &d->pub_lock, &err)) {
        tb_error("%s", err.msg);
        status = TB_EX_CONFIG;
        goto out;
    }
    if (!strncmp(cfg->feed_endpoint, "tcp://", 6) &&
        (!cfg->feed_server_key_file[0] || !cfg->feed_client_key_file[0])) {
        tb_error("%s: a tcp feed needs daemon.feed_server_key_file (prefetchd's public key) and "
                 "daemon.feed_client_key_file (this trainer's key pair)", cfg->feed_endpoint);
        status = TB_EX_CONFIG;
        goto out;
    }
    if (tb_endpoint_client_curve(d->feed, cfg->feed_endpoint, cfg->feed_server_key_file,
                                 cfg->feed_client_key_file, &err)) {
        tb_error("%s", err.msg);
        status = TB_EX_CONFIG;
        goto out;
    }
    if (zmq_connect(d->feed, cfg->feed_endpoint)) {
        tb_error("connect %s: %s", cfg->feed_endpoint, zmq_strerror(zmq_errno()));
        status = TB_EX_CONFIG;
        goto out;
    }
    if (feed_hello(d)) goto out;
    feed_credit(d, (uint32_t)cfg->credit);
    tb_info("feed %s: HELLO rank %lld of %lld, %s, credit %lld", cfg->feed_endpoint,
            (long long)cfg->rank, (long long)cfg->world,
            d->st.has_cursor ? "resuming after the checkpoint's cursor" : "from the start",
            (long long)cfg->credit);
    uint64_t wd_usec = cfg->watchdog ? tb_notify_watchdog_usec() : 0;
    /* Ping at a quarter of the interval: safely under the half systemd recommends. */
    d->wd_period = wd_usec ? (double)wd_usec / 4e6 : 0;
    d->wd_next = 0;
    d->run_t0 = tb_clock_mono_s();
    double last_batch_t = d->run_t0, warned_t = 0;
    d->gate_open = cfg->wait_subscribers == 0;
    d->gate_t0 = d->run_t0;
    if (d->st.step >= d->total_steps) {
        tb_notice("checkpoint already at step %lld of %lld: nothing to do",
                  (long long)d->st.step, (long long)d->total_steps);
        status = TD_EXIT_OK;
        goto out;
    }
    for (;;) {
        double now = tb_clock_mono_s();
        watchdog_tick(d);
        if (tb_signals.term || d->want_stop) {
            if (!d->stopping_sent) {
                tb_notify_stopping();
                tb_notice("stopping: checkpoint at the step boundary, then exit");
                d->stopping_sent = 1;
                event(d, "stopping", NULL, NAN);
            }
            d->rs = TD_RS_STOPPING;
        }
        if (tb_signals.hup) {
            tb_signals.hup = 0;
            if (d->rs != TD_RS_STOPPING) {
                tb_notice("SIGHUP: re-reading %s", src && src->path ? src->path : "the config");
                tb_kvmap res = {0};
                reload(d, &res, &err); /* logged there; the old config stays */
                tb_kvmap_free(&res);
            }
        }
        if (tb_signals.usr1) {
            tb_signals.usr1 = 0;
            d->want_ckpt = 1;
        }
        /* Partial gradients of a step in progress are not part of a checkpoint, so this is
         * a step boundary for the saved state. */
        if (d->want_ckpt || d->rs == TD_RS_STOPPING) {
            td_ckpt_info ci;
            int rc = -1;
            int have_step = d->st.step > 0 || d->st.has_cursor;
            if (have_step && strcmp(d->last_ckpt, "") && d->last_ckpt_step == d->st.step &&
                d->rs == TD_RS_STOPPING && !d->want_ckpt) {
                rc = 0; /* the newest checkpoint already holds this step */
                memcpy(ci.name, d->last_ckpt, sizeof ci.name);
            } else {
                rc = checkpoint(d, d->rs == TD_RS_STOPPING ? TD_CKPT_FINAL : TD_CKPT_MANUAL,
                                ckpt_metric(d), &ci);
            }
            d->want_ckpt = 0;
            if (d->ctl_owed) {
                tb_kvmap res = {0};
                if (!rc) {
                    tb_kvmap_add_str(&res, "checkpoint", ci.name, &err);
                    tb_kvmap_add_int(&res, "global_step", d->st.step, &err);
                }
                ctl_reply(d, d->ctl_owed_id, rc == 0, rc ? "checkpoint failed (see the log)" : NULL,
                          &res);
                tb_kvmap_free(&res);
                d->ctl_owed = 0;
            }
            if (d->rs == TD_RS_STOPPING) {
                status = rc ? TB_EX_IOERR : TD_EXIT_OK;
                break;
            }
        }
        int have_work = (d->rs == TD_RS_RUNNING) && d->qn >= (d->micro ? d->micro + 1 : d->accum);
        if (d->rs == TD_RS_RUNNING && d->micro > 0) have_work = d->qn > d->micro;
        if (!d->gate_open) have_work = 0;
        zmq_pollitem_t items[3] = {{d->feed, 0, ZMQ_POLLIN, 0}, {d->pub, 0, ZMQ_POLLIN, 0},
                                   {d->ctl, 0, ZMQ_POLLIN, 0}};
        long timeout = have_work ? 0 : 200;
        if (d->wd_period > 0) {
            long wd_ms = (long)((d->wd_next - now) * 1e3);
            if (wd_ms < timeout) timeout = wd_ms < 0 ? 0 : wd_ms;
        }
        if (!have_work && d->rs == TD_RS_RUNNING && !d->waiting) {
            d->waiting = 1;
            d->wait_t0 = now;
        }
        int n = zmq_poll(items, d->ctl_owed ? 2 : 3, timeout);
        if (n < 0 && zmq_errno() != EINTR) {
            tb_error("zmq_poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (n > 0 && (items[0].revents & ZMQ_POLLIN)) {
            int before = d->qn;
            feed_drain(d);
            if (d->qn > before) last_batch_t = tb_clock_mono_s();
        }
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) pub_subscriptions(d);
        if (n > 0 && !d->ctl_owed && (items[2].revents & ZMQ_POLLIN)) ctl_handle(d);
        if (!d->gate_open) {
            if (d->subs >= cfg->wait_subscribers) {
                d->gate_open = 1;
                tb_info("metrics: %lld subscriber(s) of trainerd.step connected", (long long)d->subs);
            } else if (tb_clock_mono_s() - d->gate_t0 > cfg->wait_subscribers_ms / 1e3) {
                d->gate_open = 1;
                tb_warn("metrics: %lld of %lld subscribers after %lld ms; training anyway",
                        (long long)d->subs, (long long)cfg->wait_subscribers,
                        (long long)cfg->wait_subscribers_ms);
            }
        }
        if (d->want_rehello && tb_clock_mono_s() - d->rehello_t > 0.2) {
            /* once per 200 ms: batches already in flight would each ask again */
            d->want_rehello = 0;
            d->rehello_t = tb_clock_mono_s();
            feed_rehello(d);
        }
        if (d->rs == TD_RS_STARTING && d->qn > 0) {
            /* Model, device, checkpoint and feed are up. */
            d->rs = TD_RS_RUNNING;
            tb_notify_ready();
            notify_status(d);
            tb_notice("ready: feed delivering, training from step %lld", (long long)d->st.step);
            event(d, "ready", NULL, (double)d->st.step);
        }
        now = tb_clock_mono_s();
        if (now - last_batch_t > cfg->feed_timeout_ms / 1e3 && now - warned_t > cfg->feed_timeout_ms / 1e3 &&
            d->rs == TD_RS_RUNNING && d->qn < d->accum) {
            tb_warn("feed: no batch for %.0f s (granted %llu); sending HELLO again", now - last_batch_t,
                    (unsigned long long)d->granted);
            warned_t = now;
            feed_rehello(d);
        }
        int ready = d->rs == TD_RS_RUNNING && d->gate_open &&
                    (d->micro > 0 ? d->qn > d->micro : d->qn >= d->accum);
        if (ready) {
            if (d->waiting) {
                d->wait_ms += (now - d->wait_t0) * 1e3;
                d->waiting = 0;
            }
            int ex = run_micro(d);
            if (ex >= 0) {
                status = ex;
                if (ex == TD_EXIT_OK && d->last_ckpt_step != d->st.step)
                    if (checkpoint(d, TD_CKPT_FINAL, ckpt_metric(d), NULL)) status = TB_EX_IOERR;
                break;
            }
        }
    }
out:
    if (d->ctl_owed) ctl_reply(d, d->ctl_owed_id, 0, "daemon exiting", NULL);
    for (int i = 0; i < d->qn; i++) tb_batch_free(&d->q[i]);
    td_valset_free(&d->val);
    if (d->csv) fclose(d->csv);
    if (d->feed) zmq_close(d->feed);
    if (d->ctl) zmq_close(d->ctl);
    if (d->pub) zmq_close(d->pub);
    if (d->zap) tb_zap_stop(d->zap);
    if (d->zctx) zmq_ctx_term(d->zctx);
    if (d->ctl_lock >= 0) close(d->ctl_lock);
    if (d->pub_lock >= 0) close(d->pub_lock);
    td_trainer_free(d->tr);
    td_state_free(&d->st);
    tb_info("exit status %d", status);
    return status;
}
