/* tb-trainerd against the real tb-prefetchd, both started as processes on the corpus
 * fixture (ctest fixture `corpus`): the tiny preset (vocab 8000 = the fixture tokenizer's)
 * trains 50 steps; the CSV has every column and one row per optimizer step; `tbctl tail
 * --json`, started first, receives the same 50 records; validation fills val_loss and
 * val_accuracy, best-K uses it, and `tb-trainerd --eval` reproduces the last val_loss;
 * kill -9 of trainerd at random points resumes through prefetchd's cursor contract to the
 * exact planned stream and bit-identical weights. `--light` (the ASan pass) runs shorter. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "checkpoint.h"
#include "state.h"
#include "tb_clock.h"

#define TD_BIN TB_BINARY_DIR "/trainerd/daemon/tb-trainerd"
#define PF_BIN TB_BINARY_DIR "/prefetchd/tb-prefetchd"
#define TBCTL_BIN TB_BINARY_DIR "/tbctl/tbctl"
#define FIX TB_BINARY_DIR "/fixture/"

static char dir[256];
static int light;
static pid_t pf_pid = -1;

static pid_t spawn(char *const argv[], const char *out, const char *err) {
    pid_t p = fork();
    if (p == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int fe = err ? open(err, O_WRONLY | O_CREAT | O_APPEND, 0644) : fd;
        if (fd >= 0) dup2(fd, 1);
        if (fe >= 0) dup2(fe, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return p;
}

static int wait_exit(pid_t p, double timeout_s) {
    double t0 = tb_clock_mono_s();
    for (;;) {
        int st;
        pid_t r = waitpid(p, &st, WNOHANG);
        if (r == p) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (tb_clock_mono_s() - t0 > timeout_s) {
            kill(p, SIGKILL);
            waitpid(p, &st, 0);
            return -1;
        }
        usleep(10000);
    }
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = calloc(1, (size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) {}
    fclose(f);
    return b;
}
static int count_substr(const char *s, const char *sub) {
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, sub)); p += strlen(sub)) n++;
    return n;
}

/* prefetchd on the fixture shard: T = 32, B = 2, seed 1234, in dir/pf. */
static void start_prefetchd(void) {
    char p[512], cfg[512];
    snprintf(p, sizeof p, "%s/pf", dir);
    mkdir(p, 0750);
    snprintf(p, sizeof p, "%s/pf/shards.manifest", dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", FIX "fixture-00000.jsonl.gz");
    fclose(f);
    snprintf(cfg, sizeof cfg, "%s/pf/pf.yaml", dir);
    f = fopen(cfg, "w");
    assert_non_null(f);
    fprintf(f,
            "endpoints:\n  feed: ipc://%s/feed.sock\n  control: ipc://%s/pf.ctl\n"
            "  metrics: ipc://%s/pf.pub\n"
            "paths:\n  ring: %s/pf/ring\n  state_dir: %s/pf/state\n  cache_dir: %s/pf/cache\n"
            "data:\n  manifest: %s/pf/shards.manifest\n  tokenizer: %s\n  seq_len: 32\n"
            "  batch_size: 2\n  shuffle_buffer: 16\n  seed: 1234\n"
            "workers:\n  threads: 1\n  restart_delay_ms: 50\n"
            "ring:\n  slots: 8\n"
            "daemon:\n  log_level: info\n  watchdog: false\n  stop_timeout_ms: 1000\n",
            dir, dir, dir, dir, dir, dir, dir, FIX "spm.model");
    fclose(f);
    char log[512];
    snprintf(log, sizeof log, "%s/pf/prefetchd.log", dir);
    char *argv[] = {PF_BIN, "-c", cfg, NULL};
    pf_pid = spawn(argv, log, NULL);
    assert_true(pf_pid > 0);
}
static void stop_prefetchd(void) {
    if (pf_pid > 0) {
        kill(pf_pid, SIGTERM);
        if (wait_exit(pf_pid, 10) < 0) fprintf(stderr, "prefetchd did not stop on SIGTERM\n");
        pf_pid = -1;
    }
}

/* tb-trainerd: tiny preset, micro-batch 2 x 32, sockets and files under dir. */
static pid_t start_td(const char *const *extra) {
    static char buf[16][300];
    char *argv[96];
    int n = 0, k = 0;
    argv[n++] = TD_BIN;
    const char *fmt[] = {"daemon.feed_endpoint=ipc://%s/feed.sock",
                         "daemon.control_endpoint=ipc://%s/td.ctl",
                         "daemon.metrics_endpoint=ipc://%s/td.pub",
                         "daemon.checkpoint_dir=%s/ckpt", "daemon.csv_path=%s/trainerd.csv", NULL};
    for (int i = 0; fmt[i]; i++) {
        snprintf(buf[k], sizeof buf[k], fmt[i], dir);
        argv[n++] = "--set";
        argv[n++] = buf[k++];
    }
    const char *fixed[] = {"daemon.preset=tiny", "training.batch_size=2", "training.max_length=32",
                           "training.gradient_accumulation_steps=1",
                           "training.scheduler_total_steps=100", "daemon.progress_every=10",
                           "daemon.watchdog=false", NULL};
    for (int i = 0; fixed[i]; i++) {
        argv[n++] = "--set";
        argv[n++] = (char *)fixed[i];
    }
    for (int i = 0; extra && extra[i]; i++) {
        argv[n++] = "--set";
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    char log[512];
    snprintf(log, sizeof log, "%s/trainerd.log", dir);
    pid_t p = spawn(argv, log, NULL);
    assert_true(p > 0);
    return p;
}

static int setup(void **state) {
    (void)state;
    static int n;
    snprintf(dir, sizeof dir, "/tmp/tdp.%d.%d", (int)getpid(), n++);
    td_rmtree(dir);
    mkdir(dir, 0750);
    if (access(FIX "spm.model", R_OK) || access(FIX "fixture-00000.jsonl.gz", R_OK)) {
        fprintf(stderr, "fixture missing under %s (ctest fixture 'corpus')\n", FIX);
        return -1;
    }
    return 0;
}
static int teardown(void **state) {
    (void)state;
    stop_prefetchd();
    if (!getenv("TD_KEEP")) td_rmtree(dir);
    return 0;
}

static const char *const COLS[] = {
    "timestamp", "epoch", "step", "global_step", "loss", "accuracy", "learning_rate",
    "grad_norm", "scaler_scale", "gpu_memory_gb", "gpu_cached_gb", "tokens_per_s", "mfu",
    "step_ms", "data_wait_ms", "grad_norm_embeddings", "grad_norm_attention", "grad_norm_ode",
    "grad_norm_retnet", "grad_norm_mamba", "grad_norm_moe_experts", "grad_norm_router",
    "grad_norm_norms", "grad_norm_head", "loss_scale", "skipped", "val_loss", "val_accuracy"};
#define NCOL 28

/* Splits a CSV line in place (no quoting in these files). */
static int split(char *line, char *f[NCOL + 1]) {
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p; p++)
        if (*p == ',') {
            *p = 0;
            if (n > NCOL) return -1;
            f[n++] = p + 1;
        }
    return n;
}

static void iso(char out[64], double t) {
    time_t sec = (time_t)t;
    struct tm tm;
    gmtime_r(&sec, &tm);
    int ms = (int)((t - (double)sec) * 1000.0);
    if (ms < 0) ms = 0;
    if (ms > 999) ms = 999;
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

static void test_prefetchd_trainerd_tiny_50_steps_csv_and_tail_same_records_validation_eval(
    void **state) {
    (void)state;
    const int steps = light ? 12 : 50, val_every = light ? 6 : 10;
    start_prefetchd();
    /* tbctl tail first: trainerd holds its first step until the subscription arrives. */
    char tail_out[512], tail_err[512], ep[400], cnt[24];
    snprintf(tail_out, sizeof tail_out, "%s/tail.jsonl", dir);
    snprintf(tail_err, sizeof tail_err, "%s/tail.err", dir);
    snprintf(ep, sizeof ep, "ipc://%s/td.pub", dir);
    snprintf(cnt, sizeof cnt, "%d", steps);
    char *targv[] = {TBCTL_BIN, "--daemon", "trainerd", "--endpoint", ep, "tail", "--json",
                     "--topic", "trainerd.step", "--count", cnt, NULL};
    pid_t tail = spawn(targv, tail_out, tail_err);
    assert_true(tail > 0);
    char ms[64], vm[400], ve[64];
    snprintf(ms, sizeof ms, "daemon.max_steps=%d", steps);
    snprintf(vm, sizeof vm, "validation.manifest=%s/pf/shards.manifest", dir);
    snprintf(ve, sizeof ve, "validation.every_n_steps=%d", val_every);
    const char *extra[] = {ms, "daemon.wait_subscribers=1", "daemon.wait_subscribers_ms=60000",
                           "training.checkpoint_every_n_steps=5",
                           "training.max_rolling_checkpoints=1", "training.num_best_checkpoints=2",
                           vm, "validation.tokenizer=" FIX "spm.model", ve,
                           "validation.batches=2", "validation.seed=99", NULL};
    double t0 = tb_clock_mono_s();
    pid_t td = start_td(extra);
    int rc = wait_exit(td, 600);
    fprintf(stderr, "trainerd: %d steps in %.1f s, exit %d\n", steps, tb_clock_mono_s() - t0, rc);
    assert_int_equal(rc, 0);
    assert_int_equal(wait_exit(tail, 20), 0);

    /* The CSV: header with every column, one row per optimizer step. */
    char p[512];
    snprintf(p, sizeof p, "%s/trainerd.csv", dir);
    char *csv = slurp(p);
    assert_non_null(csv);
    char *line = csv, *end = strchr(line, '\n');
    assert_non_null(end);
    *end = 0;
    char *f[NCOL + 1];
    assert_int_equal(split(line, f), NCOL);
    for (int i = 0; i < NCOL; i++) assert_string_equal(f[i], COLS[i]);
    /* tail's lines */
    char *tl = slurp(tail_out);
    assert_non_null(tl);
    assert_int_equal(count_substr(tl, "\n"), steps);
    char *tline = tl;
    int row = 0, nval = 0;
    double last_val = NAN;
    for (line = end + 1; *line; line = end + 1) {
        end = strchr(line, '\n');
        assert_non_null(end);
        *end = 0;
        row++;
        assert_int_equal(split(line, f), NCOL);
        assert_int_equal(atoll(f[3]), row); /* global_step */
        assert_string_equal(f[25], "0");    /* skipped */
        for (int i = 1; i < 25; i++) {      /* every column filled */
            assert_true(f[i][0] != 0);
            assert_true(isfinite(strtod(f[i], NULL)));
        }
        int want_val = row % val_every == 0 || row == steps;
        assert_int_equal(f[26][0] != 0, want_val);
        assert_int_equal(f[27][0] != 0, want_val);
        if (want_val) {
            nval++;
            last_val = strtod(f[26], NULL);
            assert_true(last_val > 0 && isfinite(last_val));
            double a = strtod(f[27], NULL);
            assert_true(a >= 0 && a <= 1);
        }
        /* The record tail printed for this step: the same values. */
        char *tend = strchr(tline, '\n');
        assert_non_null(tend);
        *tend = 0;
        json_error_t je;
        json_t *o = json_loads(tline, 0, &je);
        assert_non_null(o);
        tline = tend + 1;
        assert_string_equal(json_string_value(json_object_get(o, "topic")), "trainerd.step");
        json_t *fl = json_object_get(o, "fields");
        char ts[64];
        iso(ts, json_number_value(json_object_get(fl, "timestamp")));
        assert_string_equal(ts, f[0]);
        for (int i = 1; i < NCOL; i++) {
            json_t *v = json_object_get(fl, COLS[i]);
            if (!f[i][0]) {
                assert_null(v);
                continue;
            }
            assert_non_null(v);
            double want = strtod(f[i], NULL);
            double got = json_is_boolean(v) ? (json_is_true(v) ? 1 : 0) : json_number_value(v);
            if (fabs(got - want) > 1e-8 * fabs(want) + 1e-300) {
                fprintf(stderr, "row %d %s: csv %s tail %.17g\n", row, COLS[i], f[i], got);
                fail();
            }
        }
        json_decref(o);
    }
    assert_int_equal(row, steps);
    assert_int_equal(nval, steps / val_every + (steps % val_every != 0));
    free(tl);
    free(csv);

    /* Best-K ranks by validation loss: the manifests carry it as their metric. */
    char root[512];
    snprintf(root, sizeof root, "%s/ckpt", dir);
    td_ckpt_info *v;
    int n;
    tb_err err;
    assert_int_equal(td_ckpt_scan(root, 1, &v, &n, &err), 0);
    assert_true(n >= 1);
    assert_int_equal(v[0].step, steps);
    assert_true(fabs(v[0].metric - last_val) <= 1e-6 * last_val);
    char ck[1024];
    snprintf(ck, sizeof ck, "%s/%s", root, v[0].name);
    free(v);

    /* One-shot evaluation of the final checkpoint on the same set: the same loss. */
    char out[512], man[512];
    snprintf(out, sizeof out, "%s/eval.json", dir);
    snprintf(man, sizeof man, "%s/pf/shards.manifest", dir);
    char *eargv[] = {TD_BIN, "--eval", ck, "--data", man, "--tokenizer", FIX "spm.model",
                     "--batches", "2", "--json", NULL};
    assert_int_equal(wait_exit(spawn(eargv, out, NULL), 120), 0);
    json_error_t je;
    json_t *e = json_load_file(out, 0, &je);
    assert_non_null(e);
    double el = json_number_value(json_object_get(e, "loss"));
    fprintf(stderr, "eval: loss %.6f accuracy %.4f tokens %lld (CSV val_loss %.6f)\n", el,
            json_number_value(json_object_get(e, "accuracy")),
            (long long)json_integer_value(json_object_get(e, "tokens")), last_val);
    assert_true(json_integer_value(json_object_get(e, "tokens")) > 0);
    assert_true(fabs(el - last_val) <= 1e-6 * last_val);
    json_decref(e);
    /* A manifest that does not exist: a clear error, not a crash. */
    char *bargv[] = {TD_BIN, "--eval", ck, "--data", "/nonexistent/x.manifest", NULL};
    rc = wait_exit(spawn(bargv, out, NULL), 60);
    assert_true(rc > 0 && rc < 128);
    stop_prefetchd();
    char *pl = NULL;
    snprintf(p, sizeof p, "%s/pf/prefetchd.log", dir);
    pl = slurp(p);
    assert_non_null(pl);
    free(pl);
}

/* Trains to `steps` with prefetchd in dir (fresh), kill -9 of trainerd `kills` times.
 * Returns the final checkpoint's model crc and state. */
static void run_to_end(int steps, int kills, uint32_t *crc, td_state *st) {
    start_prefetchd();
    char ms[64];
    snprintf(ms, sizeof ms, "daemon.max_steps=%d", steps);
    const char *extra[] = {ms, "training.checkpoint_every_n_steps=3",
                           "training.max_rolling_checkpoints=2", "daemon.credit=3",
                           "debug.checkpoint_sleep_ms=30", "daemon.feed_timeout_ms=3000", NULL};
    srand(777);
    for (int restarts = 0;; restarts++) {
        pid_t td = start_td(extra);
        if (restarts < kills) {
            usleep((useconds_t)(300000 + rand() % 3000000));
            kill(td, SIGKILL);
            if (wait_exit(td, 30) == 0) break;
        } else {
            assert_int_equal(wait_exit(td, 600), 0);
            break;
        }
    }
    stop_prefetchd();
    char root[512];
    snprintf(root, sizeof root, "%s/ckpt", dir);
    td_ckpt_info ci;
    tb_err err;
    assert_int_equal(td_ckpt_newest(root, &ci, &err), 1);
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/manifest.json", root, ci.name);
    json_t *m = json_load_file(p, 0, NULL);
    assert_non_null(m);
    json_t *files = json_object_get(m, "files");
    *crc = 0;
    for (size_t i = 0; i < json_array_size(files); i++) {
        json_t *fo = json_array_get(files, i);
        if (!strcmp(json_string_value(json_object_get(fo, "name")), "model.safetensors"))
            *crc = (uint32_t)json_integer_value(json_object_get(fo, "crc32c"));
    }
    json_decref(m);
    snprintf(p, sizeof p, "%s/%s/state.msgpack", root, ci.name);
    assert_int_equal(td_state_read(p, st, &err), 0);
}

static void test_kill9_trainerd_against_prefetchd_resumes_exact_stream_bit_exact(void **state) {
    (void)state;
    const int steps = light ? 10 : 24, kills = light ? 2 : 4;
    char base[200];
    snprintf(base, sizeof base, "%.190s", dir);
    uint32_t crc_ref, crc;
    td_state ref, st;
    double t0 = tb_clock_mono_s();
    snprintf(dir, sizeof dir, "%s/ref", base);
    mkdir(dir, 0750);
    run_to_end(steps, 0, &crc_ref, &ref);
    double t1 = tb_clock_mono_s();
    snprintf(dir, sizeof dir, "%s/kill", base);
    mkdir(dir, 0750);
    run_to_end(steps, kills, &crc, &st);
    char p[512];
    snprintf(p, sizeof p, "%s/trainerd.log", dir);
    char *log = slurp(p);
    fprintf(stderr, "uninterrupted %.1f s; with %d kills %.1f s: %d resumes from a checkpoint\n",
            t1 - t0, kills, tb_clock_mono_s() - t1, count_substr(log, "resumed from"));
    free(log);
    snprintf(dir, sizeof dir, "%s", base);
    assert_int_equal(ref.step, steps);
    assert_int_equal(st.step, steps);
    /* Exactly the planned stream: batches 0 .. steps-1, each once, in order. */
    assert_int_equal(ref.batches_applied, (uint64_t)steps);
    assert_int_equal(st.batches_applied, (uint64_t)steps);
    assert_int_equal(st.last_seq, (uint64_t)steps - 1);
    assert_true(st.applied_hash == ref.applied_hash);
    assert_int_equal(crc, crc_ref);
    td_state_free(&ref);
    td_state_free(&st);
}

int main(int argc, char **argv) {
    light = argc > 1 && !strcmp(argv[1], "--light");
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest t[] = {
        cmocka_unit_test_setup_teardown(
            test_prefetchd_trainerd_tiny_50_steps_csv_and_tail_same_records_validation_eval, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_kill9_trainerd_against_prefetchd_resumes_exact_stream_bit_exact, setup, teardown),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
