#include "pfd_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tb_clock.h"
#include "tb_rng.h"

const char *pfdt_fixture(const char *file) {
    static _Thread_local char p[512];
    snprintf(p, sizeof p, "%s/fixture/%s", TB_BINARY_DIR, file);
    return p;
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = a ? fopen(to, "wb") : NULL;
    if (!a || !b) {
        if (a) fclose(a);
        return -1;
    }
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    fclose(a);
    return fclose(b);
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

int pfdt_write_config(pfdt *t, const char *extra) {
    char buf[8192];
    snprintf(buf, sizeof buf,
             "endpoints:\n  feed: %s\n  control: %s\n  metrics: %s\n"
             "paths:\n  ring: %s/ring\n  state_dir: %s/state\n  cache_dir: %s/cache\n"
             "data:\n  manifest: %s\n  tokenizer: %s\n  seq_len: 64\n  batch_size: 4\n"
             "  shuffle_buffer: 16\n"
             "workers:\n  threads: 2\n  restart_delay_ms: 50\n"
             "ring:\n  slots: 8\n"
             "daemon:\n  log_level: info\n  metrics_interval_ms: 250\n  stop_timeout_ms: 1000\n",
             t->feed, t->ctl, t->pub, t->dir, t->dir, t->dir, t->manifest, t->spm);
    /* extra YAML overrides whole sections: simplest is a second document merged by key,
     * so tests pass full "section:\n  key: v" blocks that replace same-named keys via -s */
    if (write_text(t->cfg_path, buf) < 0) return -1;
    if (extra) {
        char p[400];
        snprintf(p, sizeof p, "%s/extra.sets", t->dir);
        if (write_text(p, extra) < 0) return -1;
    }
    return 0;
}

int pfdt_write_manifest(pfdt *t, const char *text) { return write_text(t->manifest, text); }

int pfdt_init(pfdt *t, const char *name) {
    memset(t, 0, sizeof *t);
    t->pid = -1;
    t->log_fd = -1;
    if (access(pfdt_fixture("spm.model"), R_OK) != 0 ||
        access(pfdt_fixture("fixture-00000.jsonl.gz"), R_OK) != 0) {
        fprintf(stderr, "fixture missing under %s/fixture (ctest fixture 'corpus')\n", TB_BINARY_DIR);
        return -1;
    }
    snprintf(t->dir, sizeof t->dir, "/tmp/pfdt-%s-XXXXXX", name);
    if (!mkdtemp(t->dir)) return -1;
    chmod(t->dir, 0755);
    snprintf(t->cfg_path, sizeof t->cfg_path, "%s/pf.yaml", t->dir);
    snprintf(t->manifest, sizeof t->manifest, "%s/shards.manifest", t->dir);
    snprintf(t->log, sizeof t->log, "%s/daemon.log", t->dir);
    snprintf(t->spm, sizeof t->spm, "%s/spm.model", t->dir);
    snprintf(t->feed, sizeof t->feed, "ipc://%s/feed.sock", t->dir);
    snprintf(t->ctl, sizeof t->ctl, "ipc://%s/ctl.sock", t->dir);
    snprintf(t->pub, sizeof t->pub, "ipc://%s/pub.sock", t->dir);
    char shard[400], man[512];
    snprintf(shard, sizeof shard, "%s/a.jsonl.gz", t->dir);
    if (copy_file(pfdt_fixture("spm.model"), t->spm) < 0 ||
        copy_file(pfdt_fixture("fixture-00000.jsonl.gz"), shard) < 0)
        return -1;
    snprintf(man, sizeof man, "%s\n", shard);
    if (pfdt_write_manifest(t, man) < 0 || pfdt_write_config(t, NULL) < 0) return -1;
    t->zctx = zmq_ctx_new();
    return 0;
}

/* The daemon started last: its log is printed when a consumer stalls. */
static pfdt *g_spawned;

pid_t pfdt_spawn(pfdt *t, char *const extra_argv[]) {
    g_spawned = t;
    char bin[512];
    snprintf(bin, sizeof bin, "%s/prefetchd/tb-prefetchd", TB_BINARY_DIR);
    char *argv[64];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "-c";
    argv[n++] = t->cfg_path;
    /* settings from extra.sets: one KEY=VALUE per line */
    static char sets[32][256];
    char p[400];
    snprintf(p, sizeof p, "%s/extra.sets", t->dir);
    FILE *f = fopen(p, "r");
    int k = 0;
    while (f && k < 32 && fgets(sets[k], sizeof sets[k], f)) {
        sets[k][strcspn(sets[k], "\n")] = '\0';
        if (!sets[k][0]) continue;
        argv[n++] = "-s";
        argv[n++] = sets[k++];
    }
    if (f) fclose(f);
    for (int i = 0; extra_argv && extra_argv[i] && n < 62; i++) argv[n++] = extra_argv[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(t->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(bin, argv);
        _exit(127);
    }
    return pid;
}

int pfdt_start(pfdt *t, int wait_ms) {
    t->pid = pfdt_spawn(t, NULL);
    if (t->pid < 0) return -1;
    uint64_t end = tb_clock_mono_ns() + (uint64_t)wait_ms * 1000000ull;
    while (tb_clock_mono_ns() < end) {
        int st;
        if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
            fprintf(stderr, "tb-prefetchd exited early (status %d); log %s\n", st, t->log);
            t->pid = -1;
            return -1;
        }
        tb_reply r;
        if (pfdt_request(t, "status", NULL, NULL, &r, 300) == 0) {
            tb_reply_free(&r);
            return 0;
        }
    }
    return -1;
}

void pfdt_kill9(pfdt *t) {
    if (t->pid <= 0) return;
    kill(t->pid, SIGKILL);
    waitpid(t->pid, NULL, 0);
    t->pid = -1;
}

int pfdt_stop(pfdt *t) {
    if (t->pid <= 0) return -1;
    tb_reply r;
    if (pfdt_request(t, "stop", NULL, NULL, &r, 1000) == 0) tb_reply_free(&r);
    else kill(t->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 100; i++) {
        if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
            t->pid = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(50000);
    }
    pfdt_kill9(t);
    return -1;
}

int pfdt_request(pfdt *t, const char *verb, const char *k, const char *v, tb_reply *rep,
                 int timeout_ms) {
    memset(rep, 0, sizeof *rep);
    void *s = zmq_socket(t->zctx, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_connect(s, t->ctl);
    tb_request q = {.id = 7};
    snprintf(q.verb, sizeof q.verb, "%s", verb);
    tb_err err;
    if (k) tb_kvmap_add_str(&q.args, k, v, &err);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_proto_encode_request(&pk, &q, &err);
    tb_request_free(&q);
    int rc = -1;
    if (zmq_send(s, sb.data, sb.size, 0) >= 0) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) >= 0 &&
            tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), rep, &err) == 0)
            rc = 0;
        zmq_msg_close(&m);
    }
    msgpack_sbuffer_destroy(&sb);
    zmq_close(s);
    return rc;
}

int64_t pfdt_status_int(pfdt *t, const char *key) {
    tb_reply r;
    if (pfdt_request(t, "status", NULL, NULL, &r, 2000) < 0) return -1;
    const tb_kv *kv = tb_kvmap_get(&r.result, key);
    int64_t v = kv && kv->type == TB_KV_INT ? kv->v.i : -1;
    tb_reply_free(&r);
    return v;
}

int pfdt_log_has(pfdt *t, const char *s) {
    FILE *f = fopen(t->log, "r");
    if (!f) return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, s) != NULL;
    fclose(f);
    return found;
}

void pfdt_dump_log(pfdt *t, int last_lines) {
    FILE *f = fopen(t->log, "r");
    if (!f) return;
    char line[4096];
    long n = 0;
    while (fgets(line, sizeof line, f)) n++;
    rewind(f);
    fprintf(stderr, "--- last %d lines of %s\n", last_lines, t->log);
    for (long i = 0; fgets(line, sizeof line, f); i++)
        if (i >= n - last_lines) fputs(line, stderr);
    fclose(f);
}

void pfdt_cleanup(pfdt *t) {
    if (t->pid > 0) pfdt_kill9(t);
    if (t->zctx) zmq_ctx_term(t->zctx);
    t->zctx = NULL;
    if (t->dir[0] && !getenv("PFDT_KEEP")) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
        if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", t->dir);
    }
}

/* ------------------------------------------------------------ consumer */

static void *g_ctx;

int pfdt_consumer_open(pfdt *t, pfdt_consumer *c, uint32_t rank, uint32_t world) {
    memset(c, 0, sizeof *c);
    g_ctx = t->zctx;
    c->sock = zmq_socket(t->zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    int ivl = 50;
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    c->rank = rank;
    c->world = world;
    c->next_seq = rank;
    return zmq_connect(c->sock, t->feed);
}

void pfdt_consumer_close(pfdt_consumer *c) {
    if (c->sock) zmq_close(c->sock);
    c->sock = NULL;
}

static int send_sbuf(void *s, msgpack_sbuffer *sb) {
    int rc = zmq_send(s, sb->data, sb->size, 0) < 0 ? -1 : 0;
    msgpack_sbuffer_destroy(sb);
    return rc;
}

int pfdt_consumer_hello(pfdt_consumer *c, int with_cursor, uint32_t credit) {
    tb_hello h = {.rank = c->rank, .world = c->world};
    snprintf(h.client, sizeof h.client, "pfd-test-consumer");
    tb_stream_cursor sc;
    tb_err err;
    if (with_cursor && c->have_cursor) {
        if (tb_stream_cursor_deserialize(&sc, c->cursor, sizeof c->cursor, &err) < 0) return -1;
        h.has_cursor = true;
        h.cursor = (tb_cursor){.generation = sc.generation, .epoch = sc.epoch,
                               .shard_pos = sc.shard_pos, .doc_index = sc.doc_ord,
                               .token_offset = sc.token_offset,
                               .samples_emitted = sc.samples_emitted, .shuffle = c->cursor,
                               .shuffle_len = sizeof c->cursor};
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (tb_proto_encode_hello(&pk, &h, &err) < 0) {
        fprintf(stderr, "hello: %s\n", err.msg);
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    if (send_sbuf(c->sock, &sb) < 0) return -1;
    return credit ? pfdt_consumer_credit(c, credit) : 0;
}

int pfdt_consumer_credit(pfdt_consumer *c, uint32_t n) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_err err;
    tb_proto_encode_credit(&pk, n, &err);
    return send_sbuf(c->sock, &sb);
}

int pfdt_consumer_recv(pfdt_consumer *c, tb_batch *b, int timeout_ms) {
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, c->sock, 0) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    tb_err err;
    int rc = tb_proto_decode_batch(zmq_msg_data(&m), zmq_msg_size(&m), b, &err);
    if (rc < 0) fprintf(stderr, "consumer: bad BATCH: %s\n", err.msg);
    zmq_msg_close(&m);
    return rc < 0 ? -1 : 1;
}

int pfdt_consumer_apply(pfdt_consumer *c, const tb_batch *b) {
    if (b->cursor_after.shuffle_len != TB_STREAM_CURSOR_BYTES) return -1;
    memcpy(c->cursor, b->cursor_after.shuffle, TB_STREAM_CURSOR_BYTES);
    c->have_cursor = 1;
    c->next_seq = b->seq + c->world;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_err err;
    tb_proto_encode_ack(&pk, b->seq, &err);
    return send_sbuf(c->sock, &sb);
}

/* ------------------------------------------------------------ plan */

int pfdt_plan_reload_swaps(pfdt *t, pfdt_plan *p) {
    (void)t;
    free(p->swaps);
    tb_err err;
    tb_manifest_history_free(&p->hist);
    if (tb_manifest_history_load(&p->hist, p->cfg.state_dir, &err) < 0 ||
        pfd_swaps_load(&p->swaps, &p->nswaps, p->cfg.state_dir, &err) < 0) {
        fprintf(stderr, "plan: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int pfdt_plan_open(pfdt *t, pfdt_plan *p) {
    memset(p, 0, sizeof *p);
    tb_err err;
    char *sets[32];
    static char lines[32][256];
    int n = 0;
    char path[400];
    snprintf(path, sizeof path, "%s/extra.sets", t->dir);
    FILE *f = fopen(path, "r");
    while (f && n < 32 && fgets(lines[n], sizeof lines[n], f)) {
        lines[n][strcspn(lines[n], "\n")] = '\0';
        if (lines[n][0]) {
            sets[n] = lines[n];
            n++;
        }
    }
    if (f) fclose(f);
    if (pfd_config_load(&p->cfg, t->cfg_path, sets, n, &err) < 0) {
        fprintf(stderr, "plan: %s\n", err.msg);
        return -1;
    }
    p->spm = tb_spm_load(p->cfg.tokenizer, &err);
    if (!p->spm || pfdt_plan_reload_swaps(t, p) < 0) return -1;
    if (p->hist.n == 0) {
        fprintf(stderr, "plan: no generation in %s\n", p->cfg.state_dir);
        return -1;
    }
    const tb_manifest *m = &p->hist.gens[0];
    tb_stream_config sc;
    pfd_stream_config(&sc, &p->cfg);
    sc.threads = 1;
    p->s = tb_stream_open(&sc, m, p->spm, NULL, &err);
    p->gen = m->generation;
    if (!p->s) fprintf(stderr, "plan: %s\n", err.msg);
    return p->s ? 0 : -1;
}

int pfdt_plan_next(pfdt_plan *p) {
    tb_stream_cursor c;
    tb_stream_cursor_get(p->s, &c);
    tb_err err;
    for (size_t i = 0; i < p->nswaps; i++)
        /* a swap recorded at or before the position and not yet applied (the daemon's
         * worker applies those when it opens the stream there) */
        if (p->swaps[i].seq <= c.batch_seq && p->swaps[i].generation > p->gen) {
            const tb_manifest *m = tb_manifest_history_get(&p->hist, p->swaps[i].generation);
            if (!m || tb_stream_swap(p->s, m, &err) < 0) {
                fprintf(stderr, "plan: swap: %s\n", m ? err.msg : "no manifest");
                return -1;
            }
            p->gen = p->swaps[i].generation;
        }
    int r = tb_stream_next_batch(p->s, &p->b, &err);
    if (r != 1) fprintf(stderr, "plan: next_batch: %s\n", r < 0 ? err.msg : "ended");
    return r == 1 ? 1 : -1;
}

int pfdt_plan_compare(const pfdt_plan *p, const tb_batch *g) {
    const tb_stream_batch *e = &p->b;
    size_t ntok = (size_t)e->B * e->T;
    if (g->seq != e->seq || g->B != e->B || g->T != e->T) {
        fprintf(stderr, "batch %llu: seq/B/T differ from the plan (plan seq %llu)\n",
                (unsigned long long)g->seq, (unsigned long long)e->seq);
        return -1;
    }
    if (memcmp(g->ids, e->ids, ntok * 4) || memcmp(g->labels, e->labels, ntok * 4)) {
        fprintf(stderr, "batch %llu: ids/labels differ from the plan\n", (unsigned long long)g->seq);
        return -1;
    }
    if (g->attn_mask && memcmp(g->attn_mask, e->attn_mask, ntok)) {
        fprintf(stderr, "batch %llu: attn_mask differs\n", (unsigned long long)g->seq);
        return -1;
    }
    for (uint32_t i = 0; i < e->B; i++) {
        const tb_prov *a = &g->prov[i];
        const tb_sample_prov *b = &e->prov[i];
        if (a->sample != b->sample || a->generation != b->generation || a->doc != b->doc ||
            a->token_offset != b->token_offset || a->shard != b->shard || a->length != b->length) {
            fprintf(stderr, "batch %llu sample %u: provenance differs (sample %llu vs %llu)\n",
                    (unsigned long long)g->seq, i, (unsigned long long)a->sample,
                    (unsigned long long)b->sample);
            return -1;
        }
    }
    uint8_t cur[TB_STREAM_CURSOR_BYTES];
    tb_stream_cursor_serialize(cur, &e->cursor_after);
    if (g->cursor_after.shuffle_len != sizeof cur || memcmp(g->cursor_after.shuffle, cur, sizeof cur)) {
        fprintf(stderr, "batch %llu: cursor_after differs\n", (unsigned long long)g->seq);
        return -1;
    }
    return 0;
}

void pfdt_plan_close(pfdt_plan *p) {
    if (p->s) tb_stream_close(p->s);
    tb_stream_batch_free(&p->b);
    tb_manifest_history_free(&p->hist);
    free(p->swaps);
    if (p->spm) tb_spm_free(p->spm);
    memset(p, 0, sizeof *p);
}

int pfdt_consume(pfdt_consumer *c, pfdt_plan *p, int n, int idle_ms, int *dups) {
    int applied = 0;
    while (applied < n) {
        tb_batch b;
        int r = pfdt_consumer_recv(c, &b, idle_ms);
        if (r == 0) {
            if (idle_ms >= 1000) { /* a stall, not the end of a drain */
                fprintf(stderr, "consumer: no batch within %d ms (next %llu, %d of %d applied)\n",
                        idle_ms, (unsigned long long)c->next_seq, applied, n);
                if (g_spawned) pfdt_dump_log(g_spawned, 80);
            }
            break;
        }
        if (r < 0) return -1;
        if (b.seq < c->next_seq) {
            if (dups) (*dups)++;
            fprintf(stderr, "consumer: duplicate batch %llu (next %llu)\n",
                    (unsigned long long)b.seq, (unsigned long long)c->next_seq);
            tb_batch_free(&b);
            continue;
        }
        if (b.seq > c->next_seq) {
            fprintf(stderr, "consumer: gap: got batch %llu, expected %llu\n",
                    (unsigned long long)b.seq, (unsigned long long)c->next_seq);
            tb_batch_free(&b);
            return -1;
        }
        if (pfdt_plan_next(p) < 0 || pfdt_plan_compare(p, &b) < 0) {
            tb_batch_free(&b);
            return -1;
        }
        pfdt_consumer_apply(c, &b);
        pfdt_consumer_credit(c, 1);
        tb_batch_free(&b);
        applied++;
    }
    return applied;
}

int pfdt_write_jsonl_shard(const char *path, int n, uint32_t seed) {
    static const char *w[] = {"la", "casa", "del", "río", "montaña", "sol", "tiempo", "ciudad",
                              "niño", "agua", "camino", "verde", "lejos", "canción", "mañana",
                              "pueblo", "historia", "viento", "árbol", "luz", "noche", "mar"};
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    tb_rng r;
    tb_rng_init(&r, seed, TB_RNG_TEST, 1, 0, 0);
    for (int d = 0; d < n; d++) {
        fputs("{\"text\": \"", f);
        int words = 20 + (int)tb_rng_below(&r, 200);
        for (int k = 0; k < words; k++)
            fprintf(f, "%s%s", k ? " " : "", w[tb_rng_below(&r, sizeof w / sizeof w[0])]);
        fprintf(f, ".\", \"id\": %d}\n", d);
    }
    return fclose(f);
}
