/* tb-trainerd as a process against td_fakefeed (a deterministic stand-in prefetchd):
 * CSV columns and rows, PUB records, kill -9 and resume bit for bit, non-finite retry and
 * emergency exit, loss-spike rollback, malformed batches, sd_notify. */
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
#include <zmq.h>
#include <cmocka.h>
#include "checkpoint.h"
#include "notify_harness.h"
#include "state.h"
#include "tb_clock.h"
#include "tb_proto_ctl.h"

#define TD_BIN TB_BINARY_DIR "/trainerd/daemon/tb-trainerd"
#define FEED_BIN TB_BINARY_DIR "/tests/trainerd_daemon/td_fakefeed"

static char dir[200];
static int slow_mode;

static const char *MICRO[] = {
    "model.vocab_size=512", "model.hidden_size=32", "model.num_heads=2",
    "model.retention_heads=2", "model.factorized_embedding_dim=16", "model.ffn_hidden_size=64",
    "training.max_length=16", NULL};

static pid_t spawn(char *const argv[], const char *log) {
    pid_t p = fork();
    if (p == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return p;
}

/* Exit status, or -1 on timeout (the process is killed), or 128+sig. */
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

static pid_t feed_pid;
static void start_feed_opt(const char *opt, const char *k) {
    char ep[256];
    snprintf(ep, sizeof ep, "ipc://%s/feed.sock", dir);
    char *argv[10] = {FEED_BIN, ep, "2", "16", "512", "7", NULL, NULL, NULL};
    if (opt) {
        argv[6] = (char *)opt;
        argv[7] = (char *)k;
    }
    char log[256];
    snprintf(log, sizeof log, "%s/feed.log", dir);
    feed_pid = spawn(argv, log);
    assert_true(feed_pid > 0);
}
static void start_feed(const char *extra_bad_at) {
    start_feed_opt(extra_bad_at ? "--bad-at" : NULL, extra_bad_at);
}
static void stop_feed(void) {
    if (feed_pid > 0) {
        kill(feed_pid, SIGTERM);
        wait_exit(feed_pid, 5);
        feed_pid = 0;
    }
}

/* Starts tb-trainerd with the micro model and `extra` overrides (NULL-terminated), and
 * `-c config` when config is not NULL. */
static pid_t start_td_config(const char *config, const char *const *extra) {
    static char buf[64][256];
    char *argv[80];
    int n = 0, k = 0;
    argv[n++] = TD_BIN;
    if (config) {
        argv[n++] = "-c";
        argv[n++] = (char *)config;
    }
    snprintf(buf[k], 256, "daemon.feed_endpoint=ipc://%s/feed.sock", dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 256, "daemon.control_endpoint=ipc://%s/ctl.sock", dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 256, "daemon.metrics_endpoint=ipc://%s/pub.sock", dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 256, "daemon.checkpoint_dir=%s/ckpt", dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 256, "daemon.csv_path=%s/log/trainerd.csv", dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    const char *fixed[] = {"daemon.preset=tiny", "training.batch_size=2",
                           "training.gradient_accumulation_steps=1",
                           "training.scheduler_total_steps=100", "daemon.progress_every=10", NULL};
    for (int i = 0; fixed[i]; i++) { argv[n++] = "--set"; argv[n++] = (char *)fixed[i]; }
    for (int i = 0; MICRO[i]; i++) { argv[n++] = "--set"; argv[n++] = (char *)MICRO[i]; }
    /* TD_TEST_BACKEND=cuda (or cpu) picks the daemon's backend (default: auto). */
    const char *be = getenv("TD_TEST_BACKEND");
    if (be && *be) {
        snprintf(buf[k], 256, "daemon.backend=%s", be);
        argv[n++] = "--set"; argv[n++] = buf[k++];
    }
    for (int i = 0; extra && extra[i]; i++) { argv[n++] = "--set"; argv[n++] = (char *)extra[i]; }
    argv[n] = NULL;
    char log[256];
    snprintf(log, sizeof log, "%s/trainerd.log", dir);
    pid_t p = spawn(argv, log);
    assert_true(p > 0);
    return p;
}

static pid_t start_td(const char *const *extra) { return start_td_config(NULL, extra); }

static int setup(void **state) {
    (void)state;
    static int n;
    snprintf(dir, sizeof dir, "/tmp/tdd.%d.%d", (int)getpid(), n++);
    td_rmtree(dir);
    mkdir(dir, 0750);
    return 0;
}
static int teardown(void **state) {
    (void)state;
    stop_feed();
    if (!getenv("TD_KEEP")) {
        char p[256];
        snprintf(p, sizeof p, "rm -rf %s", dir);
        if (system(p)) {}
    }
    return 0;
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
static char *log_text(const char *name) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return slurp(p);
}

/* The final checkpoint: crc32c of model.safetensors from its manifest, and the state. */
static void final_ckpt(uint32_t *model_crc, td_state *st) {
    char root[256];
    snprintf(root, sizeof root, "%s/ckpt", dir);
    td_ckpt_info ci;
    tb_err err;
    assert_int_equal(td_ckpt_newest(root, &ci, &err), 1);
    char p[512];
    snprintf(p, sizeof p, "%s/%s/manifest.json", root, ci.name);
    json_t *m = json_load_file(p, 0, NULL);
    assert_non_null(m);
    json_t *files = json_object_get(m, "files");
    *model_crc = 0;
    for (size_t i = 0; i < json_array_size(files); i++) {
        json_t *f = json_array_get(files, i);
        if (!strcmp(json_string_value(json_object_get(f, "name")), "model.safetensors"))
            *model_crc = (uint32_t)json_integer_value(json_object_get(f, "crc32c"));
    }
    json_decref(m);
    snprintf(p, sizeof p, "%s/%s/state.msgpack", root, ci.name);
    assert_int_equal(td_state_read(p, st, &err), 0);
}

/* The newest checkpoint applied `applied` batches, the last of them seq `last_seq`. */
static void assert_final_stream(uint64_t applied, uint64_t last_seq) {
    uint32_t crc;
    td_state st;
    final_ckpt(&crc, &st);
    assert_int_equal(st.batches_applied, applied);
    assert_int_equal(st.last_seq, last_seq);
    td_state_free(&st);
}

/* ------------------------------------------------------------------------------ */

static void test_trains_50_steps_csv_every_column_one_row_per_step_pub_same_records(void **state) {
    (void)state;
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    char ep[256];
    snprintf(ep, sizeof ep, "ipc://%s/pub.sock", dir);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "trainerd.step", 13);
    assert_int_equal(zmq_connect(sub, ep), 0);
    start_feed(NULL);
    const char *extra[] = {"daemon.max_steps=50", "training.checkpoint_every_n_steps=20",
                           "debug.step_sleep_ms=20", NULL};
    pid_t td = start_td(extra);
    int nrec = 0;
    double loss[64];
    int64_t gstep[64] = {0};
    int rc = -2;
    double t0 = tb_clock_mono_s();
    while (tb_clock_mono_s() - t0 < 120) {
        zmq_pollitem_t it = {sub, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) > 0) {
            char topic[64];
            int tn = zmq_recv(sub, topic, sizeof topic, 0);
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_recv(&m, sub, 0);
            tb_metrics mt;
            tb_err err;
            assert_true(tn > 0);
            assert_int_equal(tb_proto_decode_metrics(zmq_msg_data(&m), zmq_msg_size(&m), &mt, &err), 0);
            zmq_msg_close(&m);
            int64_t g = tb_kvmap_get(&mt.fields, "global_step")->v.i;
            if (g >= 1 && g <= 50) {
                loss[g - 1] = tb_kvmap_get(&mt.fields, "loss")->v.d;
                gstep[g - 1] = g;
            }
            nrec++;
            tb_metrics_free(&mt);
            continue;
        }
        int st;
        if (waitpid(td, &st, WNOHANG) == td) {
            rc = WIFEXITED(st) ? WEXITSTATUS(st) : -3;
            break;
        }
    }
    zmq_close(sub);
    zmq_ctx_term(ctx);
    assert_int_equal(rc, 0);
    char p[256];
    snprintf(p, sizeof p, "%s/log/trainerd.csv", dir);
    char *csv = slurp(p);
    assert_non_null(csv);
    const char *cols = "timestamp,epoch,step,global_step,loss,accuracy,learning_rate,grad_norm,"
                       "scaler_scale,gpu_memory_gb,gpu_cached_gb,tokens_per_s,mfu,step_ms,"
                       "data_wait_ms,grad_norm_embeddings,grad_norm_attention,grad_norm_ode,"
                       "grad_norm_retnet,grad_norm_mamba,grad_norm_moe_experts,grad_norm_router,"
                       "grad_norm_norms,grad_norm_head,loss_scale,skipped,val_loss,val_accuracy\n";
    assert_memory_equal(csv, cols, strlen(cols));
    assert_int_equal(count_substr(csv, "\n"), 51);
    /* Every row: 28 fields, global_step = row number, the PUB record's loss equal. */
    char *line = strchr(csv, '\n') + 1;
    int row = 0;
    while (*line) {
        char *end = strchr(line, '\n');
        *end = 0;
        int commas = count_substr(line, ",");
        assert_int_equal(commas, 27);
        char *f = line;
        double vals[10];
        for (int i = 0; i < 10; i++) {
            f = strchr(f, ',') + 1;
            vals[i] = strtod(f, NULL);
        }
        row++;
        assert_int_equal((int64_t)vals[2], row); /* global_step */
        /* gpu_memory_gb / gpu_cached_gb: real figures on a GPU backend, 0 on the CPU */
        const char *be = getenv("TD_TEST_BACKEND");
        if (be && !strcmp(be, "cuda")) assert_true(vals[8] > 0 && vals[9] >= vals[8]);
        else if (be && !strcmp(be, "cpu")) assert_true(vals[8] == 0 && vals[9] == 0);
        if (row <= 50 && gstep[row - 1] == row) /* the PUB record of this step */
            assert_true(fabs(loss[row - 1] - vals[3]) <= 1e-8 * fabs(vals[3]));
        line = end + 1;
    }
    assert_int_equal(row, 50);
    /* A subscriber connected before the daemon started misses at most the records sent
     * before its subscription reached the PUB socket (ZeroMQ's slow joiner). */
    fprintf(stderr, "%d of 50 step records received on the PUB socket\n", nrec);
    assert_true(nrec >= 45 && nrec <= 50);
    for (int g = 50 - 40; g <= 50; g++) assert_int_equal(gstep[g - 1], g);
    free(csv);
    char *log = log_text("trainerd.log");
    assert_non_null(strstr(log, "step 50/50"));
    assert_non_null(strstr(log, "ETA"));
    free(log);
}

static void run_to_end(int64_t steps, int kills, uint32_t *crc, td_state *st) {
    char ms[64];
    snprintf(ms, sizeof ms, "daemon.max_steps=%lld", (long long)steps);
    const char *extra[] = {ms, "training.checkpoint_every_n_steps=3",
                           "training.max_rolling_checkpoints=2", "daemon.credit=3",
                           "debug.checkpoint_sleep_ms=30", NULL};
    srand(12345);
    int done = 0, restarts = 0;
    while (!done) {
        pid_t td = start_td(extra);
        if (restarts < kills) {
            /* A random point: before the model is up, mid-step, or inside a checkpoint. */
            usleep((useconds_t)(20000 + rand() % 400000));
            kill(td, SIGKILL);
            int rc = wait_exit(td, 30);
            if (rc == 0) done = 1; /* finished before the kill */
            restarts++;
        } else {
            assert_int_equal(wait_exit(td, 600), 0); /* generous: a loaded 2-core CI box */
            done = 1;
        }
    }
    final_ckpt(crc, st);
}

static void kill9_test(int kills) {
    start_feed(NULL);
    const int64_t steps = 40;
    uint32_t crc_ref;
    td_state ref;
    run_to_end(steps, 0, &crc_ref, &ref);
    /* The same in a fresh directory with kill -9 at random points. */
    char ref_dir[200];
    memcpy(ref_dir, dir, sizeof ref_dir);
    char sub[200];
    if (snprintf(sub, sizeof sub, "%s/k", ref_dir) >= (int)sizeof sub) fail();
    mkdir(sub, 0750);
    stop_feed();
    memcpy(dir, sub, sizeof dir);
    start_feed(NULL);
    uint32_t crc;
    td_state st;
    run_to_end(steps, kills, &crc, &st);
    char *log = log_text("trainerd.log");
    int resumed = count_substr(log, "resumed from");
    fprintf(stderr, "kill -9 x %d: %d resumes from a checkpoint, %d unfinished checkpoint writes cleaned\n", kills, resumed,
            count_substr(log, "removing unfinished checkpoint"));
    free(log);
    stop_feed();
    memcpy(dir, ref_dir, sizeof dir);
    assert_int_equal(st.step, steps);
    assert_int_equal(ref.step, steps);
    /* Exactly the planned stream: batches 0 .. steps-1 once each, in order. */
    assert_int_equal(st.batches_applied, (uint64_t)steps);
    assert_int_equal(st.last_seq, (uint64_t)steps - 1);
    assert_true(st.applied_hash == ref.applied_hash);
    /* Final weights bit for bit. */
    assert_int_equal(crc, crc_ref);
    td_state_free(&st);
    td_state_free(&ref);
}

static void test_kill9_at_random_points_resumes_bit_exact_and_exact_stream(void **state) {
    (void)state;
    kill9_test(slow_mode ? 20 : 6);
}

static void test_forced_nan_retries_then_trains_on(void **state) {
    (void)state;
    start_feed(NULL);
    const char *extra[] = {"daemon.max_steps=12", "debug.nan_at_step=5", "debug.nan_count=2", NULL};
    pid_t td = start_td(extra);
    assert_int_equal(wait_exit(td, 60), 0);
    char p[256];
    snprintf(p, sizeof p, "%s/log/trainerd.csv", dir);
    char *csv = slurp(p);
    assert_int_equal(count_substr(csv, "\n"), 1 + 12 + 2); /* 2 skipped attempts */
    free(csv);
    char *log = log_text("trainerd.log");
    assert_int_equal(count_substr(log, "update skipped"), 2);
    free(log);
    uint32_t crc;
    td_state st;
    final_ckpt(&crc, &st);
    assert_true(fabs(st.lr_scale - 0.75 * 0.75) < 1e-12);
    assert_int_equal(st.batches_applied, 12);
    td_state_free(&st);
}

static void test_forced_nan_persisting_emergency_checkpoint_dump_exit_3(void **state) {
    (void)state;
    start_feed(NULL);
    const char *extra[] = {"daemon.max_steps=30", "debug.nan_at_step=4", "debug.nan_count=100",
                           NULL};
    pid_t td = start_td(extra);
    assert_int_equal(wait_exit(td, 60), 3);
    char root[256];
    snprintf(root, sizeof root, "%s/ckpt", dir);
    td_ckpt_info ci;
    tb_err err;
    assert_int_equal(td_ckpt_newest(root, &ci, &err), 1);
    assert_true(ci.tags & TD_CKPT_EMERGENCY);
    assert_int_equal(ci.step, 4);
    char p[512];
    snprintf(p, sizeof p, "%s/%s.nonfinite.json", root, ci.name);
    json_t *j = json_load_file(p, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "step")), 4);
    json_decref(j);
}

static void test_forced_loss_spike_rolls_back_and_halves_lr(void **state) {
    (void)state;
    start_feed(NULL);
    const char *extra[] = {"daemon.max_steps=20", "debug.spike_at_step=10", "debug.spike_count=3",
                           "daemon.spike_steps=3", "daemon.spike_warmup=2",
                           "training.checkpoint_every_n_steps=5", NULL};
    pid_t td = start_td(extra);
    assert_int_equal(wait_exit(td, 60), 0);
    char *log = log_text("trainerd.log");
    assert_int_equal(count_substr(log, "loss spike at step"), 3);
    const char *rb = strstr(log, "rollback: ");
    assert_non_null(rb);
    assert_non_null(strstr(rb, "step 13 -> ckpt-000000000010"));
    free(log);
    uint32_t crc;
    td_state st;
    final_ckpt(&crc, &st);
    assert_true(fabs(st.lr_scale - 0.5) < 1e-12);
    assert_int_equal(st.step, 20);
    td_state_free(&st);
}

static void test_malformed_batch_each_field_refused_logged_training_goes_on(void **state) {
    (void)state;
    start_feed("3");
    const char *extra[] = {"daemon.max_steps=10", NULL};
    pid_t td = start_td(extra);
    assert_int_equal(wait_exit(td, 60), 0);
    char *log = log_text("trainerd.log");
    int refused = count_substr(log, "feed: refused");
    fprintf(stderr, "%d refusals logged\n", refused);
    assert_int_equal(refused, 13);
    const char *want[] = {"message.v: unsupported version 99", "message.t: unknown type",
                          "BATCH.seq: expected unsigned", "B*T*4 = 192" /* B */,
                          "B*T*4 = 152" /* T */, "BATCH.cursor_after.generation: missing",
                          "bin length 124" /* ids */, "BATCH.labels[3]: -5",
                          "BATCH.provenance: bin length 43", "BATCH.crc:",
                          "ids[5] = 519 outside [0, 512)", "batch shape 2 x 1024",
                          "not a msgpack map"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!strstr(log, want[i])) fprintf(stderr, "missing in log: %s\n", want[i]);
        assert_non_null(strstr(log, want[i]));
    }
    free(log);
    assert_final_stream(10, 9);
}

/* A feed that skips a batch: trainerd refuses the one after the gap, says HELLO again
 * with its cursor, gets the missing batch and applies the stream without a hole. */
static void test_feed_gap_refused_hello_again_nothing_skipped(void **state) {
    (void)state;
    start_feed_opt("--skip-at", "4");
    const char *extra[] = {"daemon.max_steps=10", NULL};
    pid_t td = start_td(extra);
    assert_int_equal(wait_exit(td, 60), 0);
    char *log = log_text("trainerd.log");
    assert_non_null(strstr(log, "BATCH seq 5 arrived before 4"));
    free(log);
    assert_final_stream(10, 9);
}

static void test_notify_ready_after_feed_watchdog_under_half_stopping_on_sigterm(void **state) {
    (void)state;
    tb_notify_harness h;
    assert_int_equal(tb_notify_harness_open(&h, dir), 0);
    setenv("WATCHDOG_USEC", "2000000", 1); /* pings every 500 ms */
    unsetenv("WATCHDOG_PID");
    const char *extra[] = {"daemon.max_steps=100000", "debug.step_sleep_ms=20", NULL};
    pid_t td = start_td(extra);
    char buf[512];
    /* No feed yet: no READY within 1.5 s, but watchdog pings. */
    double t0 = tb_clock_mono_s(), last_wd = -1, max_gap = 0;
    int ready = 0, wd = 0;
    while (tb_clock_mono_s() - t0 < 1.5) {
        int n = tb_notify_harness_recv(&h, 100, buf, sizeof buf);
        if (n <= 0) continue;
        if (strstr(buf, "READY=1")) ready = 1;
        if (strstr(buf, "WATCHDOG=1")) {
            double now = tb_clock_mono_s();
            if (last_wd >= 0 && now - last_wd > max_gap) max_gap = now - last_wd;
            last_wd = now;
            wd++;
        }
    }
    assert_false(ready);
    start_feed(NULL);
    t0 = tb_clock_mono_s();
    while (tb_clock_mono_s() - t0 < 10 && !ready) {
        int n = tb_notify_harness_recv(&h, 100, buf, sizeof buf);
        if (n <= 0) continue;
        if (strstr(buf, "READY=1")) ready = 1;
        if (strstr(buf, "WATCHDOG=1")) {
            double now = tb_clock_mono_s();
            if (last_wd >= 0 && now - last_wd > max_gap) max_gap = now - last_wd;
            last_wd = now;
            wd++;
        }
    }
    assert_true(ready);
    /* Watchdog while training. */
    t0 = tb_clock_mono_s();
    while (tb_clock_mono_s() - t0 < 1.0) {
        int n = tb_notify_harness_recv(&h, 100, buf, sizeof buf);
        if (n > 0 && strstr(buf, "WATCHDOG=1")) {
            double now = tb_clock_mono_s();
            if (now - last_wd > max_gap) max_gap = now - last_wd;
            last_wd = now;
            wd++;
        }
    }
    fprintf(stderr, "%d watchdog pings, largest gap %.0f ms (WATCHDOG_USEC 2000 ms)\n", wd,
            max_gap * 1e3);
    assert_true(wd >= 4);
    assert_true(max_gap < 1.0); /* under half the interval, even under ASan on a loaded box */
    kill(td, SIGTERM);
    assert_int_equal(tb_notify_harness_wait_for(&h, "STOPPING=1", 5000, buf, sizeof buf), 1);
    assert_int_equal(wait_exit(td, 30), 0);
    unsetenv("WATCHDOG_USEC");
    tb_notify_harness_close(&h);
    /* The stop checkpoint holds the last applied step. */
    uint32_t crc;
    td_state st;
    final_ckpt(&crc, &st);
    assert_true(st.step > 0);
    assert_int_equal(st.batches_applied, (uint64_t)st.step);
    td_state_free(&st);
}

/* Sends control request id 42 with the verb and, when argk is set, one double argument. */
static void ctl_send(void *req, const char *verb, const char *argk, double argv_) {
    tb_request rq;
    memset(&rq, 0, sizeof rq);
    rq.id = 42;
    snprintf(rq.verb, sizeof rq.verb, "%s", verb);
    tb_err err;
    if (argk) tb_kvmap_add_double(&rq.args, argk, argv_, &err);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    assert_int_equal(tb_proto_encode_request(&pk, &rq, &err), 0);
    tb_request_free(&rq);
    assert_true(zmq_send(req, sb.data, sb.size, 0) >= 0);
    msgpack_sbuffer_destroy(&sb);
}

static int ctl_call(void *req, const char *verb, const char *argk, double argv_, tb_reply *rep) {
    ctl_send(req, verb, argk, argv_);
    tb_err err;
    zmq_msg_t m;
    zmq_msg_init(&m);
    int timeout = 10000;
    zmq_setsockopt(req, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    assert_true(zmq_msg_recv(&m, req, 0) >= 0);
    int rc = tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), rep, &err);
    zmq_msg_close(&m);
    assert_int_equal(rc, 0);
    assert_int_equal(rep->id, 42);
    return rep->ok ? 0 : -1;
}

static void test_control_status_lr_scale_checkpoint_pause_stop(void **state) {
    (void)state;
    start_feed(NULL);
    const char *extra[] = {"daemon.max_steps=100000", "debug.step_sleep_ms=20", NULL};
    pid_t td = start_td(extra);
    void *ctx = zmq_ctx_new();
    void *req = zmq_socket(ctx, ZMQ_REQ);
    char ep[256];
    snprintf(ep, sizeof ep, "ipc://%s/ctl.sock", dir);
    assert_int_equal(zmq_connect(req, ep), 0);
    tb_reply r;
    usleep(500000);
    assert_int_equal(ctl_call(req, "status", NULL, 0, &r), 0);
    assert_non_null(tb_kvmap_get(&r.result, "global_step"));
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "set-lr-scale", "scale", 0.25, &r), 0);
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "set-lr-scale", "scale", -1, &r), -1);
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "pause", NULL, 0, &r), 0);
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "status", NULL, 0, &r), 0);
    assert_string_equal(tb_kvmap_get(&r.result, "state")->v.s, "paused");
    int64_t s1 = tb_kvmap_get(&r.result, "global_step")->v.i;
    tb_reply_free(&r);
    usleep(300000);
    assert_int_equal(ctl_call(req, "status", NULL, 0, &r), 0);
    assert_int_equal(tb_kvmap_get(&r.result, "global_step")->v.i, s1); /* no progress */
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "resume", NULL, 0, &r), 0);
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "checkpoint", NULL, 0, &r), 0);
    const tb_kv *name = tb_kvmap_get(&r.result, "checkpoint");
    assert_non_null(name);
    char p[512];
    snprintf(p, sizeof p, "%s/ckpt/%s", dir, name->v.s);
    td_ckpt_info ci;
    tb_err err;
    assert_int_equal(td_ckpt_verify(p, &ci, &err), 0);
    assert_true(ci.tags & TD_CKPT_MANUAL);
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "bogus", NULL, 0, &r), -1);
    tb_reply_free(&r);
    assert_int_equal(ctl_call(req, "stop", NULL, 0, &r), 0);
    tb_reply_free(&r);
    zmq_close(req);
    zmq_ctx_term(ctx);
    assert_int_equal(wait_exit(td, 30), 0);
    uint32_t crc;
    td_state st;
    final_ckpt(&crc, &st);
    assert_true(fabs(st.lr_scale - 0.25) < 1e-12);
    td_state_free(&st);
}

/* sd_notify datagrams with the watchdog spacing tracked across the whole test. */
static double wd_last = -1, wd_max_gap;
static int wd_count;
static int nrecv(tb_notify_harness *h, int ms, char *buf, size_t len) {
    int n = tb_notify_harness_recv(h, ms, buf, len);
    if (n > 0 && strstr(buf, "WATCHDOG=1")) {
        double now = tb_clock_mono_s();
        if (wd_last >= 0 && now - wd_last > wd_max_gap) wd_max_gap = now - wd_last;
        wd_last = now;
        wd_count++;
    }
    return n;
}
/* Waits for a datagram holding `line`; *before gets 1 if one holding `not_before` came
 * first. Returns 1 when found. */
static int wait_line(tb_notify_harness *h, const char *line, const char *not_before, int *before,
                     double timeout_s, char *buf, size_t len) {
    double t0 = tb_clock_mono_s();
    while (tb_clock_mono_s() - t0 < timeout_s) {
        if (nrecv(h, 100, buf, len) <= 0) continue;
        if (strstr(buf, line)) return 1;
        if (not_before && before && strstr(buf, not_before)) *before = 1;
    }
    return 0;
}
/* The step of a STATUS= datagram of the form "step N loss x tok/s y" (x, y numbers), or
 * -1 when it has another form. */
static long long status_step(const char *buf) {
    const char *p = strstr(buf, "STATUS=");
    if (!p) return -1;
    long long step;
    double loss, tps;
    char tail[8];
    if (sscanf(p, "STATUS=step %lld loss %lf tok/s %lf%7s", &step, &loss, &tps, tail) == 3 &&
        isfinite(loss) && tps >= 0)
        return step;
    return -1;
}
/* Waits for a STATUS= line with a step above `after` (training goes on). */
static long long wait_status_after(tb_notify_harness *h, long long after, double timeout_s) {
    char buf[512];
    double t0 = tb_clock_mono_s();
    while (tb_clock_mono_s() - t0 < timeout_s) {
        if (nrecv(h, 100, buf, sizeof buf) <= 0 || !strstr(buf, "STATUS=")) continue;
        long long s = status_step(buf);
        if (s > after) return s;
    }
    return -1;
}
/* ctl_call that keeps reading the notify socket while it waits (a full datagram queue
 * would block the daemon's sd_notify, as systemd never lets it). *seq gets the order of
 * RELOADING=1 (R) and READY=1 (Y) datagrams that came before the reply, read until the
 * queue is empty after it. */
static int ctl_call_notify(void *req, tb_notify_harness *h, const char *verb, tb_reply *rep,
                           char *seq, size_t seqlen) {
    ctl_send(req, verb, NULL, 0);
    tb_err err;
    size_t k = 0;
    char buf[512];
    double t0 = tb_clock_mono_s();
    int got = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (!got && tb_clock_mono_s() - t0 < 10) {
        while (nrecv(h, 0, buf, sizeof buf) > 0) {
            if (strstr(buf, "RELOADING=1") && k + 1 < seqlen) seq[k++] = 'R';
            if (strstr(buf, "READY=1") && k + 1 < seqlen) seq[k++] = 'Y';
        }
        zmq_pollitem_t it = {req, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 20) > 0) got = zmq_msg_recv(&m, req, 0) >= 0;
    }
    assert_true(got);
    while (nrecv(h, 0, buf, sizeof buf) > 0) {
        if (strstr(buf, "RELOADING=1") && k + 1 < seqlen) seq[k++] = 'R';
        if (strstr(buf, "READY=1") && k + 1 < seqlen) seq[k++] = 'Y';
    }
    seq[k] = 0;
    int rc = tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), rep, &err);
    zmq_msg_close(&m);
    assert_int_equal(rc, 0);
    assert_int_equal(rep->id, 42);
    return rep->ok ? 0 : -1;
}
static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_notify_reload_sighup_and_control_bad_config_kept_stopping_exit_0(void **state) {
    (void)state;
    tb_notify_harness h;
    assert_int_equal(tb_notify_harness_open(&h, dir), 0);
    setenv("WATCHDOG_USEC", "2000000", 1); /* pings every 500 ms */
    unsetenv("WATCHDOG_PID");
    wd_last = -1;
    wd_max_gap = 0;
    wd_count = 0;
    char cfgp[256], logp[256], buf[512];
    snprintf(cfgp, sizeof cfgp, "%s/td.yaml", dir);
    snprintf(logp, sizeof logp, "%s/trainerd.log", dir);
    write_file(cfgp, "training:\n  checkpoint_every_n_steps: 10\n");
    const char *extra[] = {"daemon.max_steps=100000", "debug.step_sleep_ms=20", NULL};
    pid_t td = start_td_config(cfgp, extra);
    /* Before the feed: resumed (nothing to resume) but no batch yet, so no READY; a SIGHUP
     * now reloads quietly (no RELOADING=1 before the first READY). */
    double t0 = tb_clock_mono_s();
    int early = 0;
    usleep(500000);
    kill(td, SIGHUP);
    while (tb_clock_mono_s() - t0 < 1.5)
        if (nrecv(&h, 100, buf, sizeof buf) > 0 &&
            (strstr(buf, "READY=1") || strstr(buf, "RELOADING=1")))
            early = 1;
    assert_false(early);
    start_feed(NULL);
    int before = 0;
    assert_int_equal(wait_line(&h, "READY=1", "RELOADING=1", &before, 15, buf, sizeof buf), 1);
    assert_false(before);
    long long s1 = wait_status_after(&h, 0, 15);
    assert_true(s1 > 0);

    /* SIGHUP with a changed reloadable key: RELOADING=1, then READY=1, then STATUS=. */
    write_file(cfgp, "training:\n  checkpoint_every_n_steps: 5\ndaemon:\n  log_level: debug\n");
    kill(td, SIGHUP);
    before = 0;
    assert_int_equal(wait_line(&h, "RELOADING=1", "READY=1", &before, 10, buf, sizeof buf), 1);
    assert_false(before);
    assert_non_null(strstr(buf, "MONOTONIC_USEC="));
    assert_int_equal(wait_line(&h, "READY=1", NULL, NULL, 10, buf, sizeof buf), 1);
    long long s2 = wait_status_after(&h, s1, 15);
    assert_true(s2 > s1);

    /* A config with an error: rejected with its file:line message, training goes on. */
    write_file(cfgp, "training:\n  checkpoint_every_n_steps: zero\n");
    kill(td, SIGHUP);
    assert_int_equal(wait_line(&h, "RELOADING=1", NULL, NULL, 10, buf, sizeof buf), 1);
    assert_int_equal(wait_line(&h, "READY=1", NULL, NULL, 10, buf, sizeof buf), 1);
    long long s3 = wait_status_after(&h, s2, 15);
    assert_true(s3 > s2);

    /* Control `reload` (tbctl reload --wait): the reply comes after READY=1. A changed
     * fixed key is refused by name and keeps its value; the reloadable change applies. */
    void *ctx = zmq_ctx_new();
    void *req = zmq_socket(ctx, ZMQ_REQ);
    char ep[256];
    snprintf(ep, sizeof ep, "ipc://%s/ctl.sock", dir);
    assert_int_equal(zmq_connect(req, ep), 0);
    tb_reply r;
    char seq[16];
    write_file(cfgp, "training:\n  checkpoint_every_n_steps: 7\n");
    assert_int_equal(ctl_call_notify(req, &h, "reload", &r, seq, sizeof seq), 0);
    assert_string_equal(seq, "RY"); /* both before the reply: it waited for the reload */
    assert_non_null(tb_kvmap_get(&r.result, "changed"));
    assert_non_null(strstr(tb_kvmap_get(&r.result, "changed")->v.s, "training.checkpoint_every_n_steps"));
    assert_non_null(strstr(tb_kvmap_get(&r.result, "changed")->v.s, "daemon.log_level"));
    tb_reply_free(&r);
    write_file(cfgp, "training:\n  checkpoint_every_n_steps: 3\n  grad_clip_max_norm: 0.5\n");
    assert_int_equal(ctl_call_notify(req, &h, "reload", &r, seq, sizeof seq), -1);
    assert_string_equal(seq, "RY");
    assert_non_null(r.error);
    assert_non_null(strstr(r.error, "training.grad_clip_max_norm"));
    tb_reply_free(&r);
    write_file(cfgp, "training:\n  checkpoint_every_n_steps: [1\n");
    assert_int_equal(ctl_call_notify(req, &h, "reload", &r, seq, sizeof seq), -1);
    assert_string_equal(seq, "RY");
    assert_non_null(strstr(r.error, "td.yaml:"));
    tb_reply_free(&r);
    assert_int_equal(ctl_call_notify(req, &h, "status", &r, seq, sizeof seq), 0);
    assert_string_equal(tb_kvmap_get(&r.result, "state")->v.s, "running");
    tb_reply_free(&r);
    zmq_close(req);
    zmq_ctx_term(ctx);
    long long s4 = wait_status_after(&h, s3, 15);
    assert_true(s4 > s3);

    kill(td, SIGTERM);
    assert_int_equal(wait_line(&h, "STOPPING=1", NULL, NULL, 5, buf, sizeof buf), 1);
    assert_int_equal(wait_exit(td, 30), 0);
    unsetenv("WATCHDOG_USEC");
    tb_notify_harness_close(&h);
    fprintf(stderr, "%d watchdog pings, largest gap %.0f ms (WATCHDOG_USEC 2000 ms); steps %lld "
                    "%lld %lld %lld\n", wd_count, wd_max_gap * 1e3, s1, s2, s3, s4);
    assert_true(wd_count >= 3); /* a ~2 s window at one ping per 500 ms; the gap check is the strict one */
    assert_true(wd_max_gap < 1.0);
    /* The log names the file:line of the bad value and the refused key. */
    char *log = slurp(logp);
    assert_non_null(log);
    assert_non_null(strstr(log, "reload rejected, running config kept"));
    assert_non_null(strstr(log, "td.yaml:2"));
    assert_non_null(strstr(log, "training.grad_clip_max_norm cannot change at run time"));
    assert_non_null(strstr(log, "reload of "));
    free(log);
    /* The stop checkpoint's config holds the values in force (cadence 3 applied by
     * the partly refused reload; grad_clip_max_norm kept). */
    uint32_t crc;
    td_state st;
    final_ckpt(&crc, &st);
    assert_non_null(st.config_yaml);
    assert_non_null(strstr(st.config_yaml, "checkpoint_every_n_steps: 3"));
    assert_null(strstr(st.config_yaml, "grad_clip_max_norm: 0.5"));
    td_state_free(&st);
}

int main(int argc, char **argv) {
    slow_mode = argc > 1 && !strcmp(argv[1], "--slow");
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest fast[] = {
        cmocka_unit_test_setup_teardown(test_trains_50_steps_csv_every_column_one_row_per_step_pub_same_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_at_random_points_resumes_bit_exact_and_exact_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forced_nan_retries_then_trains_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forced_nan_persisting_emergency_checkpoint_dump_exit_3, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forced_loss_spike_rolls_back_and_halves_lr, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_batch_each_field_refused_logged_training_goes_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_feed_gap_refused_hello_again_nothing_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_ready_after_feed_watchdog_under_half_stopping_on_sigterm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_status_lr_scale_checkpoint_pause_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_reload_sighup_and_control_bad_config_kept_stopping_exit_0, setup, teardown),
    };
    const struct CMUnitTest slow[] = {
        cmocka_unit_test_setup_teardown(test_kill9_at_random_points_resumes_bit_exact_and_exact_stream, setup, teardown),
    };
    if (slow_mode) return cmocka_run_group_tests(slow, NULL, NULL);
    return cmocka_run_group_tests(fast, NULL, NULL);
}
