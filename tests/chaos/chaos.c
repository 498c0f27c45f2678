/* The chaos test: tb-prefetchd and tb-trainerd on the corpus fixture (tiny preset with
 * shrunk dims, vocab 8000 = the fixture tokenizer), a supervisor that restarts whatever
 * dies, and FAULTS faults drawn at random among
 *   kill9_prefetchd, kill9_worker, kill9_trainerd, kill9_trainerd_in_checkpoint,
 *   stop_cont_prefetchd, stop_cont_trainerd, shard_swap, disk_full
 * (disk_full: a small tmpfs on the checkpoint directory in a private mount namespace,
 * filled up while trainerd checkpoints; only as root, else that kind is skipped with a
 * message). A thread polls the checkpoint directory every 20 ms for the whole run: after
 * the first checkpoint appeared there must always be a valid one, and every checkpoint
 * directory seen must verify (manifest, sizes, crc32c).
 * At the end trainerd is stopped (final checkpoint), and the newest checkpoint's applied
 * batch record (batches_applied, last_seq, hash chain over (seq, crc)) must equal the
 * planned stream (pf-data's stream over prefetchd's manifest history and swap points):
 * nothing lost, nothing twice. Prints
 *   faults N, lost 0, duplicated 0, checkpoints valid M/M
 * usage: tb_chaos [--faults N (12)] [--seed S (time)] [--keep]          exit 0 = pass */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "checkpoint.h"
#include "pfd_harness.h"
#include "state.h"
#include "tb_clock.h"
#include "tb_proto_feed.h"

#ifndef TB_BINARY_DIR
#define TB_BINARY_DIR "."
#endif

static pfdt T;
static char ckdir[400], td_log[400], man_a[400], man_b[400];
static pid_t td_pid = -1;
static int have_tmpfs;
static uint64_t rng_state;

static uint32_t rnd(uint32_t n) { /* splitmix64 */
    uint64_t x = (rng_state += 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((x ^ (x >> 31)) % n);
}

static void msleep(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("[%7.2f] ", tb_clock_mono_s());
    vprintf(fmt, ap);
    putchar('\n');
    fflush(stdout);
    va_end(ap);
}

/* ---------------------------------------------------------------- trainerd ----- */
static pid_t td_spawn(void) {
    static char buf[16][700];
    char bin[400];
    snprintf(bin, sizeof bin, "%s/trainerd/daemon/tb-trainerd", TB_BINARY_DIR);
    const char *fixed[] = {
        "daemon.preset=tiny", "model.hidden_size=32", "model.num_heads=2",
        "model.retention_heads=2", "model.factorized_embedding_dim=16",
        "model.ffn_hidden_size=64", "model.num_layers=2", "training.batch_size=4",
        "training.max_length=64", "training.gradient_accumulation_steps=1",
        "training.scheduler_total_steps=1000000", "training.checkpoint_every_n_steps=4",
        "training.max_rolling_checkpoints=2", "training.num_best_checkpoints=1",
        "daemon.credit=4", "daemon.feed_timeout_ms=1500", "daemon.progress_every=50",
        "daemon.spike_factor=1000", "debug.checkpoint_sleep_ms=150", "daemon.watchdog=false",
        NULL};
    char *argv[80];
    int n = 0, k = 0;
    argv[n++] = bin;
    snprintf(buf[k], 700, "daemon.feed_endpoint=%s", T.feed);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 700, "daemon.control_endpoint=ipc://%s/td.ctl", T.dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 700, "daemon.metrics_endpoint=ipc://%s/td.pub", T.dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 700, "daemon.checkpoint_dir=%s", ckdir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    snprintf(buf[k], 700, "daemon.csv_path=%s/trainerd.csv", T.dir);
    argv[n++] = "--set"; argv[n++] = buf[k++];
    for (int i = 0; fixed[i]; i++) {
        argv[n++] = "--set";
        argv[n++] = (char *)fixed[i];
    }
    argv[n] = NULL;
    pid_t p = fork();
    if (p == 0) {
        int fd = open(td_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, argv);
        _exit(127);
    }
    return p;
}

/* A control request to trainerd; returns 0 when a reply came (*ok = its ok flag). */
static int td_request(const char *verb, int timeout_ms, int *ok) {
    char ep[400];
    snprintf(ep, sizeof ep, "ipc://%s/td.ctl", T.dir);
    void *s = zmq_socket(T.zctx, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_connect(s, ep);
    tb_request q = {.id = 1};
    snprintf(q.verb, sizeof q.verb, "%s", verb);
    tb_err err;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_proto_encode_request(&pk, &q, &err);
    int rc = -1;
    if (zmq_send(s, sb.data, sb.size, 0) >= 0) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) >= 0) {
            tb_reply r;
            if (tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), &r, &err) == 0) {
                if (ok) *ok = r.ok;
                tb_reply_free(&r);
                rc = 0;
            }
        }
        zmq_msg_close(&m);
    }
    msgpack_sbuffer_destroy(&sb);
    zmq_close(s);
    return rc;
}

/* ------------------------------------------------------- checkpoint poller ----- */
#define MAX_SEEN 4096
static struct {
    char name[TD_CKPT_NAME_MAX];
    int valid; /* 1 verified, -1 failed while still present */
} seen[MAX_SEEN];
static int nseen;
static atomic_int poll_stop, first_seen, gaps;
static atomic_long polls;

static int seen_find(const char *name) {
    for (int i = 0; i < nseen; i++)
        if (!strcmp(seen[i].name, name)) return i;
    return -1;
}

/* One look: checks every new checkpoint directory; returns 1 when a valid one exists. */
static int poll_once(void) {
    DIR *d = opendir(ckdir);
    if (!d) return 0;
    int any_valid = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "ckpt-", 5) != 0) continue;
        if (strstr(e->d_name, ".nonfinite")) continue;
        char p[800];
        snprintf(p, sizeof p, "%s/%s", ckdir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        int i = seen_find(e->d_name);
        if (i >= 0 && seen[i].valid == 1) {
            any_valid = 1; /* verified once; retention may remove it later */
            continue;
        }
        td_ckpt_info info;
        tb_err err;
        if (td_ckpt_verify(p, &info, &err) == 0) {
            if (i < 0 && nseen < MAX_SEEN) i = nseen++;
            if (i >= 0) {
                snprintf(seen[i].name, sizeof seen[i].name, "%.63s", e->d_name);
                seen[i].valid = 1;
            }
            any_valid = 1;
        } else if (access(p, F_OK) == 0) {
            /* Still there and not valid: a torn checkpoint visible under its final name. */
            if (i < 0 && nseen < MAX_SEEN) i = nseen++;
            if (i >= 0 && seen[i].valid != 1) {
                snprintf(seen[i].name, sizeof seen[i].name, "%.63s", e->d_name);
                if (seen[i].valid == 0) logf_("checkpoint %s invalid: %s", e->d_name, err.msg);
                seen[i].valid = -1;
            }
        }
    }
    closedir(d);
    return any_valid;
}

static void *poller(void *arg) {
    (void)arg;
    while (!atomic_load(&poll_stop)) {
        int ok = poll_once();
        /* A directory listed and then removed by retention in between is not a gap:
         * a gap is three looks in a row without a valid checkpoint. */
        for (int r = 0; !ok && r < 2 && atomic_load(&first_seen); r++) ok = poll_once();
        if (ok) atomic_store(&first_seen, 1);
        else if (atomic_load(&first_seen)) {
            atomic_fetch_add(&gaps, 1);
            logf_("no valid checkpoint in %s at this moment", ckdir);
        }
        atomic_fetch_add(&polls, 1);
        msleep(20);
    }
    return NULL;
}

/* ----------------------------------------------------------------- supervisor ---- */
static int restarts_pfd, restarts_td, torn_saves;

static void supervise(void) {
    int st;
    if (T.pid > 0 && waitpid(T.pid, &st, WNOHANG) == T.pid) {
        logf_("supervisor: tb-prefetchd exited (%s %d); restarting", WIFSIGNALED(st) ? "signal" : "status",
              WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        T.pid = -1;
    }
    if (T.pid <= 0) {
        T.pid = pfdt_spawn(&T, NULL);
        restarts_pfd++;
    }
    if (td_pid > 0 && waitpid(td_pid, &st, WNOHANG) == td_pid) {
        logf_("supervisor: tb-trainerd exited (%s %d); restarting", WIFSIGNALED(st) ? "signal" : "status",
              WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        td_pid = -1;
    }
    if (td_pid <= 0) {
        td_pid = td_spawn();
        restarts_td++;
    }
}

static void run_for(int ms) {
    double end = tb_clock_mono_s() + ms / 1000.0;
    while (tb_clock_mono_s() < end) {
        supervise();
        msleep(50);
    }
}

static int count_tmp(void) {
    DIR *d = opendir(ckdir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, ".tmp-", 5)) n++;
    closedir(d);
    return n;
}

static int write_filler(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    static char blk[65536];
    while (write(fd, blk, sizeof blk) > 0) {}
    while (write(fd, blk, 512) > 0) {}
    close(fd);
    return 0;
}

enum { F_KILL_PFD, F_KILL_WORKER, F_KILL_TD, F_KILL_TD_CKPT, F_STOP_PFD, F_STOP_TD, F_SWAP,
       F_DISK_FULL, F_KINDS };
static const char *fname[F_KINDS] = {"kill9_prefetchd", "kill9_worker", "kill9_trainerd",
                                     "kill9_trainerd_in_checkpoint", "stop_cont_prefetchd",
                                     "stop_cont_trainerd", "shard_swap", "disk_full"};

static int do_fault(int k) {
    switch (k) {
    case F_KILL_PFD:
        if (T.pid > 0) kill(T.pid, SIGKILL);
        return 1;
    case F_KILL_WORKER: {
        int64_t w = pfdt_status_int(&T, "worker_pid");
        if (w <= 0) return 0;
        kill((pid_t)w, SIGKILL);
        return 1;
    }
    case F_KILL_TD:
        if (td_pid > 0) kill(td_pid, SIGKILL);
        return 1;
    case F_KILL_TD_CKPT: {
        /* Ask for a checkpoint without waiting for the reply; kill -9 once its temporary
         * directory exists (the 150 ms debug sleep keeps it open). */
        char ep[400];
        snprintf(ep, sizeof ep, "ipc://%s/td.ctl", T.dir);
        void *s = zmq_socket(T.zctx, ZMQ_REQ);
        int linger = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
        zmq_connect(s, ep);
        tb_request q = {.id = 2};
        snprintf(q.verb, sizeof q.verb, "checkpoint");
        tb_err err;
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        tb_proto_encode_request(&pk, &q, &err);
        zmq_send(s, sb.data, sb.size, ZMQ_DONTWAIT);
        msgpack_sbuffer_destroy(&sb);
        int hit = 0;
        for (int i = 0; i < 400 && !hit; i++) {
            if (count_tmp() > 0) hit = 1;
            else msleep(5);
        }
        if (td_pid > 0) kill(td_pid, SIGKILL);
        zmq_close(s);
        if (td_pid > 0) waitpid(td_pid, NULL, 0);
        td_pid = -1;
        if (hit && count_tmp() > 0) torn_saves++; /* a torn save the restart must skip */
        restarts_td++;
        td_pid = td_spawn(); /* the supervisor's restart, done here */
        if (!hit) logf_("  (no checkpoint was being written at the kill)");
        return 1;
    }
    case F_STOP_PFD:
    case F_STOP_TD: {
        pid_t p = k == F_STOP_PFD ? T.pid : td_pid;
        if (p <= 0) return 0;
        kill(p, SIGSTOP);
        msleep(300 + (int)rnd(1500));
        kill(p, SIGCONT);
        return 1;
    }
    case F_SWAP: {
        static int which;
        which ^= 1;
        tb_reply r;
        if (pfdt_request(&T, "shards.set", "path", which ? man_b : man_a, &r, 5000) != 0) {
            logf_("  shards.set: no reply");
            return 0;
        }
        int ok = r.ok;
        if (!ok) logf_("  shards.set refused: %s", r.error ? r.error : "?");
        tb_reply_free(&r);
        return ok;
    }
    case F_DISK_FULL: {
        char filler[500];
        snprintf(filler, sizeof filler, "%s/filler", ckdir);
        write_filler(filler);
        int ok = 1;
        int rc = td_request("checkpoint", 8000, &ok);
        logf_("  checkpoint on a full disk: %s", rc ? "no reply" : ok ? "written?!" : "refused (disk full)");
        run_for(500 + (int)rnd(1000));
        unlink(filler);
        return 1;
    }
    }
    return 0;
}

/* ------------------------------------------------------------- the end check ---- */
static int check_stream(uint64_t *lost, uint64_t *dup) {
    td_ckpt_info ci;
    tb_err err;
    if (td_ckpt_newest(ckdir, &ci, &err) != 1) {
        logf_("no valid checkpoint at the end");
        return -1;
    }
    char p[800];
    snprintf(p, sizeof p, "%s/%s/state.msgpack", ckdir, ci.name);
    td_state st;
    td_state_init(&st);
    if (td_state_read(p, &st, &err) != 0) {
        logf_("%s: %s", p, err.msg);
        return -1;
    }
    pfdt_plan plan;
    if (pfdt_plan_open(&T, &plan) != 0) {
        logf_("cannot open the planned stream");
        td_state_free(&st);
        return -1;
    }
    uint64_t h = 0;
    for (uint64_t i = 0; i < st.batches_applied; i++) {
        if (pfdt_plan_next(&plan) != 1) {
            logf_("planned stream ended at batch %llu", (unsigned long long)i);
            break;
        }
        size_t ntok = (size_t)plan.b.B * plan.b.T;
        uint32_t crc = tb_proto_batch_crc(plan.b.ids, plan.b.labels,
                                          plan.cfg.packing ? NULL : plan.b.attn_mask, ntok);
        h = td_state_chain(h, plan.b.seq, crc);
    }
    pfdt_plan_close(&plan);
    uint64_t expect = st.has_cursor ? st.last_seq + 1 : 0;
    *lost = expect > st.batches_applied ? expect - st.batches_applied : 0;
    *dup = st.batches_applied > expect ? st.batches_applied - expect : 0;
    int same = h == st.applied_hash;
    logf_("final checkpoint %s: step %lld, %llu batches applied, last seq %llu, hash chain %s the plan's",
          ci.name, (long long)st.step, (unsigned long long)st.batches_applied,
          (unsigned long long)st.last_seq, same ? "equals" : "DIFFERS from");
    if (!same && *lost == 0 && *dup == 0) *lost = 1; /* same count, other batches */
    int rc = same && st.batches_applied > 0 ? 0 : -1;
    td_state_free(&st);
    return rc;
}

int main(int argc, char **argv) {
    int faults = 12, keep = 0;
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--faults") && i + 1 < argc) faults = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--keep")) keep = 1;
        else {
            fprintf(stderr, "usage: %s [--faults N] [--seed S] [--keep]\n", argv[0]);
            return 64;
        }
    }
    rng_state = seed;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pfdt_init(&T, "chaos") != 0) {
        printf("SKIP: corpus fixture missing\n");
        return 77;
    }
    /* Shard set A: the fixture's gzip shard; set B: A plus the zstd copy. */
    char zst[400];
    snprintf(zst, sizeof zst, "%s/b.jsonl.zst", T.dir);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", pfdt_fixture("fixture-00000.jsonl.zst"), zst);
    if (system(cmd) != 0) return 1;
    snprintf(man_a, sizeof man_a, "%s/set-a.manifest", T.dir);
    snprintf(man_b, sizeof man_b, "%s/set-b.manifest", T.dir);
    FILE *f = fopen(man_a, "w");
    fprintf(f, "%s/a.jsonl.gz\n", T.dir);
    fclose(f);
    f = fopen(man_b, "w");
    fprintf(f, "%s/a.jsonl.gz\n%s\n", T.dir, zst);
    fclose(f);
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", T.dir);
    snprintf(td_log, sizeof td_log, "%s/trainerd.log", T.dir);
    mkdir(ckdir, 0750);
    /* A small tmpfs on the checkpoint directory, in a mount namespace of our own. */
    if (geteuid() == 0 && unshare(CLONE_NEWNS) == 0 &&
        mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
        mount("tb-chaos", ckdir, "tmpfs", 0, "size=64m,mode=0750") == 0) {
        have_tmpfs = 1;
    } else {
        printf("chaos: not root or no mount namespace: the disk_full fault is skipped\n");
    }
    printf("chaos: seed %llu, %d faults, dir %s\n", (unsigned long long)seed, faults, T.dir);

    double t0 = tb_clock_mono_s();
    if (pfdt_start(&T, 10000) != 0) {
        printf("chaos: tb-prefetchd did not start (log %s)\n", T.log);
        return 1;
    }
    td_pid = td_spawn();
    pthread_t th;
    pthread_create(&th, NULL, poller, NULL);
    /* Warm up until the first checkpoint exists. */
    for (int i = 0; i < 600 && !atomic_load(&first_seen); i++) run_for(100);
    if (!atomic_load(&first_seen)) {
        printf("chaos: no checkpoint after 60 s (logs %s, %s)\n", T.log, td_log);
        return 1;
    }
    int done = 0, by_kind[F_KINDS] = {0}, order[F_KINDS], tries = 0;
    /* The first F_KINDS faults are every kind once, in a random order; then at random. */
    for (int k = 0; k < F_KINDS; k++) order[k] = k;
    for (int k = F_KINDS - 1; k > 0; k--) {
        int j = (int)rnd((uint32_t)k + 1), x = order[k];
        order[k] = order[j];
        order[j] = x;
    }
    while (done < faults) {
        run_for(400 + (int)rnd(1600));
        int k = tries < F_KINDS ? order[tries] : (int)rnd(F_KINDS);
        tries++;
        if (k == F_DISK_FULL && !have_tmpfs) continue;
        logf_("fault %d/%d: %s", done + 1, faults, fname[k]);
        if (do_fault(k)) {
            done++;
            by_kind[k]++;
        }
    }
    /* Let both come back and train a little, then stop trainerd (final checkpoint). */
    run_for(3000);
    int ok = 0;
    for (int i = 0; i < 20 && td_request("status", 2000, &ok) != 0; i++) run_for(500);
    td_request("stop", 30000, &ok);
    int st = 0;
    for (int i = 0; i < 600; i++) {
        if (waitpid(td_pid, &st, WNOHANG) == td_pid) {
            td_pid = -1;
            break;
        }
        msleep(50);
    }
    if (td_pid > 0) {
        printf("chaos: tb-trainerd did not stop\n");
        kill(td_pid, SIGKILL);
        waitpid(td_pid, NULL, 0);
        td_pid = -1;
    }
    int td_exit = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    atomic_store(&poll_stop, 1);
    pthread_join(th, NULL);
    poll_once();
    int pfd_exit = pfdt_stop(&T);

    uint64_t lost = 0, dup = 0;
    int stream_rc = check_stream(&lost, &dup);
    int valid = 0;
    for (int i = 0; i < nseen; i++) valid += seen[i].valid == 1;
    printf("kinds:");
    for (int k = 0; k < F_KINDS; k++) printf(" %s %d", fname[k], by_kind[k]);
    printf("\nkills during a checkpoint write that left a torn temporary directory: %d\n",
           torn_saves);
    printf("restarts: prefetchd %d, trainerd %d; trainerd stop status %d, prefetchd %d; "
           "%ld polls, %d moments without a valid checkpoint; %.0f s\n",
           restarts_pfd, restarts_td, td_exit, pfd_exit, (long)atomic_load(&polls),
           atomic_load(&gaps), tb_clock_mono_s() - t0);
    printf("faults %d, lost %llu, duplicated %llu, checkpoints valid %d/%d\n", done,
           (unsigned long long)lost, (unsigned long long)dup, valid, nseen);
    int pass = stream_rc == 0 && lost == 0 && dup == 0 && valid == nseen && nseen > 0 &&
               atomic_load(&gaps) == 0 && td_exit == 0;
    if (have_tmpfs) umount2(ckdir, MNT_DETACH);
    if (pass && !keep) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", T.dir);
        if (system(cmd)) {}
    } else {
        printf("chaos: logs kept in %s (prefetchd daemon.log, trainerd.log)\n", T.dir);
    }
    printf("%s\n", pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
