#include "td_config.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF(m) offsetof(td_config, m)
#define SZ(m) sizeof(((td_config *)0)->m)
#define F_INT(k, m, d, lo, hi, h) {k, TB_CFG_INT, OFF(m), 0, d, lo, hi, NULL, h}
#define F_DBL(k, m, d, lo, hi, h) {k, TB_CFG_DOUBLE, OFF(m), 0, d, lo, hi, NULL, h}
#define F_BOOL(k, m, d, h) {k, TB_CFG_BOOL, OFF(m), 0, d, 1, 0, NULL, h}
#define F_ENUM(k, m, d, ch, h) {k, TB_CFG_ENUM, OFF(m), 0, d, 1, 0, ch, h}
#define F_STR(k, m, d, h) {k, TB_CFG_STRING, OFF(m), SZ(m), d, 1, 0, NULL, h}
#define F_SEC(k, h) {k, TB_CFG_SECTION, 0, 0, NULL, 1, 0, NULL, h}

static const tb_cfg_field own_fields[] = {
    F_SEC("daemon", "tb-trainerd: sockets, paths and the event loop (docs/TRAINERD.md)."),
    F_ENUM("daemon.preset", preset, "none", TD_PRESET_CHOICES,
           "Model preset applied before the model:/training: keys of this file (MODEL.md 1)."),
    F_STR("daemon.feed_endpoint", feed_endpoint, "ipc:///run/tb/feed.sock",
          "prefetchd's feed ROUTER; this daemon connects a DEALER (feed protocol)."),
    F_STR("daemon.control_endpoint", control_endpoint, "ipc:///run/tb/trainerd.ctl",
          "REP control socket (tbctl). ipc: mode 0660 and a lock against a second instance;\n"
          "tcp: needs daemon.curve_secret_key_file and daemon.curve_allowed_dir."),
    F_STR("daemon.metrics_endpoint", metrics_endpoint, "ipc:///run/tb/trainerd.pub",
          "PUB metrics socket: topics trainerd.step and trainerd.event."),
    F_STR("daemon.checkpoint_dir", checkpoint_dir, "/var/lib/tb/checkpoints",
          "Checkpoint root: one directory per save (docs/TRAINERD.md)."),
    F_STR("daemon.csv_path", csv_path, "/var/log/tb/trainerd.csv",
          "Metrics CSV, one row per optimizer step (appended; header written when new)."),
    F_ENUM("daemon.log_level", log_level, "info", "error|warn|notice|info|debug", "Log level."),
    F_INT("daemon.rank", rank, "0", 0, 65535, "This trainer's feed rank."),
    F_INT("daemon.world", world, "1", 1, 65536, "Number of trainer ranks."),
    F_INT("daemon.credit", credit, "4", 1, 65536,
          "Batches kept in flight (granted by CREDIT and not yet consumed)."),
    F_INT("daemon.max_steps", max_steps, "0", 0, INT64_MAX / 2,
          "Optimizer steps after which the daemon checkpoints and exits 0;\n"
          "0 = training.scheduler_total_steps."),
    F_INT("daemon.progress_every", progress_every, "10", 1, 1000000000,
          "A progress line (loss, tok/s, ETA to the total) every N steps."),
    F_INT("daemon.feed_timeout_ms", feed_timeout_ms, "30000", 100, 86400000,
          "Warn when no batch arrived for this long while waiting for one."),
    F_DBL("daemon.peak_flops", peak_flops, "1e11", 1e6, 1e18,
          "Peak FLOP/s of the device used for MFU (CPU default 1e11; H100 bf16 dense 9.89e14)."),
    F_DBL("daemon.loss_ema_beta", loss_ema_beta, "0.98", 0, 0.99999,
          "Moving average of the training loss: m = beta m + (1 - beta) loss."),
    F_DBL("daemon.spike_factor", spike_factor, "5", 1, 1e6,
          "A loss above this multiple of its moving average counts as a spike."),
    F_INT("daemon.spike_steps", spike_steps, "3", 1, 1000000,
          "Consecutive spike steps that trigger a rollback to the last good checkpoint\n"
          "with the learning rate halved."),
    F_INT("daemon.spike_warmup", spike_warmup, "20", 0, 1000000000,
          "Steps before spike detection starts (the moving average settles)."),
    F_BOOL("daemon.checkpoint_on_epoch", checkpoint_on_epoch, "true",
           "Checkpoint when the data cursor enters a new epoch."),
    F_BOOL("daemon.watchdog", watchdog, "true", "Send WATCHDOG=1 when systemd asks for it."),
    F_ENUM("daemon.backend", backend, "auto", TD_BACKEND_CHOICES,
           "Where the model runs: cpu (the reference backend), cuda (GPU 0 of those visible; "
           "needs a build with nvcc), or auto (cuda when the build has it and a GPU is "
           "present, else cpu). Fixed for the run."),
    F_STR("daemon.curve_secret_key_file", curve_secret_key_file, "",
          "tcp control/metrics endpoints: this daemon's CURVE key file (public/secret lines)."),
    F_STR("daemon.curve_allowed_dir", curve_allowed_dir, "",
          "tcp endpoints: directory of allowed client public keys (ZAP)."),
    F_STR("daemon.feed_server_key_file", feed_server_key_file, "",
          "tcp feed endpoint: prefetchd's public key file."),
    F_STR("daemon.feed_client_key_file", feed_client_key_file, "",
          "tcp feed endpoint: this trainer's CURVE key pair file."),
    F_INT("daemon.wait_subscribers", wait_subscribers, "0", 0, 1000,
          "Hold the first step until this many subscribers of trainerd.step are connected to\n"
          "the metrics socket (so `tbctl tail` started first sees every record); 0 = never wait."),
    F_INT("daemon.wait_subscribers_ms", wait_subscribers_ms, "10000", 0, 86400000,
          "Give up waiting for daemon.wait_subscribers after this long (a warning) and train."),
    F_SEC("validation", "Optional validation set: the first validation.batches batches of a\n"
                        "manifest, read through the prefetchd library (fixed seed), evaluated\n"
                        "without dropout every validation.every_n_steps steps."),
    F_STR("validation.manifest", val_manifest, "",
          "Manifest of the validation shards (PATH-or-URL [size] [sha256] per line); empty = no\n"
          "validation (best-K checkpoints then rank by the moving average of the training loss)."),
    F_STR("validation.tokenizer", val_tokenizer, "/var/lib/tb/spm.model",
          "SentencePiece model (the one prefetchd uses; its vocabulary must be model.vocab_size)."),
    F_INT("validation.every_n_steps", val_every, "1000", 1, INT64_MAX / 2,
          "Evaluate every N optimizer steps (and at the last step)."),
    F_INT("validation.batches", val_batches, "16", 1, 1000000, "Batches in the fixed set."),
    F_INT("validation.seed", val_seed, "4321", 0, INT64_MAX / 2,
          "Seed of the validation stream (shard order, shuffle, masks)."),
    F_INT("validation.batch_size", val_batch_size, "0", 0, 65536,
          "Samples per validation batch; 0 = training.batch_size."),
    F_INT("validation.seq_len", val_seq_len, "0", 0, 1048576,
          "Tokens per validation sample; 0 = training.max_length."),
    F_DBL("validation.mask_prob", val_mask_prob, "0.15", 0, 1, "MLM mask fraction."),
    F_BOOL("validation.packing", val_packing, "true", "Pack documents (as prefetchd's data.packing)."),
    F_SEC("debug", "Test hooks; leave at their defaults in production."),
    F_INT("debug.nan_at_step", debug_nan_at_step, "-1", -1, INT64_MAX / 2,
          "Force a non-finite loss from this step on (-1 = never)."),
    F_INT("debug.nan_count", debug_nan_count, "1", 1, 1000000, "... for this many attempts."),
    F_INT("debug.spike_at_step", debug_spike_at_step, "-1", -1, INT64_MAX / 2,
          "Force a loss spike from this step on (-1 = never)."),
    F_INT("debug.spike_count", debug_spike_count, "3", 1, 1000000, "... for this many steps."),
    F_DBL("debug.spike_loss", debug_spike_loss, "1000", 0, 1e30, "Loss value reported for a forced spike."),
    F_INT("debug.step_sleep_ms", debug_step_sleep_ms, "0", 0, 60000,
          "Sleep after each step (tests that kill the daemon at random points)."),
    F_INT("debug.checkpoint_sleep_ms", debug_ckpt_sleep_ms, "0", 0, 60000,
          "Sleep between writing a checkpoint's files and its manifest (crash tests)."),
};

#define MAXF 512
static tb_cfg_field all_fields[MAXF];
static tb_cfg_schema schema = {"tb-trainerd", all_fields, 0};

const tb_cfg_schema *td_config_schema(void) {
    if (schema.count) return &schema;
    int n = tb_run_config_fields(all_fields, MAXF, offsetof(td_config, run));
    if (n < 0) return NULL;
    size_t own = sizeof own_fields / sizeof own_fields[0];
    if ((size_t)n + own > MAXF) return NULL;
    memcpy(all_fields + n, own_fields, sizeof own_fields);
    schema.count = (size_t)n + own;
    return &schema;
}

static const char *const preset_names[] = {"none", "tiny", "mini", "frankenstein", "ultra"};

static char *slurp(const char *path, tb_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        tb_err_set(err, "%s: cannot open", path);
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (len + 1 < cap) break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) {
            free(buf);
            buf = NULL;
        }
        buf = nb;
    }
    fclose(f);
    if (!buf) {
        tb_err_set(err, "%s: out of memory", path);
        return NULL;
    }
    buf[len] = 0;
    return buf;
}

int td_config_load(td_config *c, const char *path, const char *const *overrides, int nover,
                   tb_err *err) {
    const tb_cfg_schema *s = td_config_schema();
    if (!s) return tb_err_set(err, "tb-trainerd: schema too large");
    /* Pass 1: find the preset (file, then overrides). */
    if (path) {
        if (tb_cfg_load_file(c, s, path, NULL, err)) return -1;
    } else if (tb_cfg_defaults(c, s, err))
        return -1;
    for (int i = 0; i < nover; i++)
        if (tb_cfg_set(c, s, overrides[i], NULL, err)) return -1;
    int preset = c->preset;
    /* Pass 2: defaults, preset, the file's keys, the overrides. */
    if (tb_cfg_defaults(c, s, err)) return -1;
    if (preset != TD_PRESET_NONE &&
        tb_run_config_preset(&c->run, preset_names[preset], err))
        return -1;
    if (path) {
        char *text = slurp(path, err);
        if (!text) return -1;
        int rc = tb_cfg_load_string(c, s, path, text, NULL, err);
        free(text);
        if (rc) return -1;
    }
    for (int i = 0; i < nover; i++)
        if (tb_cfg_set(c, s, overrides[i], NULL, err)) return -1;
    if (tb_run_config_finish(&c->run, err)) return tb_err_wrap(err, "%s", path ? path : "config");
    if (c->rank >= c->world)
        return tb_err_set(err, "%s: daemon.rank: %lld not below daemon.world %lld",
                          path ? path : "config", (long long)c->rank, (long long)c->world);
    return 0;
}

int64_t td_config_total_steps(const td_config *c) {
    return c->max_steps > 0 ? c->max_steps : c->run.training.scheduler_total_steps;
}

int td_config_load_text(td_config *c, const char *name, const char *text,
                        const char *const *overrides, int nover, tb_err *err) {
    const tb_cfg_schema *s = td_config_schema();
    if (!s) return tb_err_set(err, "tb-trainerd: schema too large");
    if (tb_cfg_defaults(c, s, err)) return -1;
    if (tb_cfg_load_string(c, s, name, text, NULL, err)) return -1;
    for (int i = 0; i < nover; i++)
        if (tb_cfg_set(c, s, overrides[i], NULL, err)) return -1;
    if (tb_run_config_finish(&c->run, err)) return tb_err_wrap(err, "%s", name);
    return 0;
}
