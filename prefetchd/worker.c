/* A worker process: tokenizer loaded at start (standby), then, after a start message,
 * produces batches into the ring from the given seq and cursor. */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pfd.h"
#include "tb_clock.h"
#include "tb_log.h"
#include "tb_proto_feed.h"
#include "tb_spm.h"

uint64_t pfd_payload_cap(const pfd_config *cfg) {
    uint64_t ntok = (uint64_t)cfg->batch_size * (uint64_t)cfg->seq_len;
    return ntok * 9 + (uint64_t)cfg->batch_size * TB_PROTO_PROV_SIZE + TB_STREAM_CURSOR_BYTES +
           4096;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

uint64_t pfd_geometry(const pfd_config *c) {
    uint64_t h = 1469598103934665603ull;
    h = fnv(h, &c->seq_len, sizeof c->seq_len);
    h = fnv(h, &c->batch_size, sizeof c->batch_size);
    h = fnv(h, &c->mask_prob, sizeof c->mask_prob);
    if (c->mask_share != 0.8) h = fnv(h, &c->mask_share, sizeof c->mask_share); /* 0.8: as before the key */
    h = fnv(h, &c->packing, sizeof c->packing);
    h = fnv(h, &c->seed, sizeof c->seed);
    h = fnv(h, &c->shuffle_buffer, sizeof c->shuffle_buffer);
    h = fnv(h, c->text_field, strlen(c->text_field));
    h = fnv(h, c->tokenizer, strlen(c->tokenizer));
    h = fnv(h, c->state_dir, strlen(c->state_dir));
    return h;
}

void pfd_stream_config(tb_stream_config *sc, const pfd_config *cfg) {
    tb_stream_config_default(sc);
    sc->seq_len = (uint32_t)cfg->seq_len;
    sc->batch_size = (uint32_t)cfg->batch_size;
    sc->mask_prob = cfg->mask_prob;
    sc->mask_share = cfg->mask_share;
    sc->packing = cfg->packing != 0;
    sc->seed = (uint64_t)cfg->seed;
    sc->text_field = cfg->text_field[0] ? cfg->text_field : NULL;
    sc->shuffle_buffer = (uint32_t)cfg->shuffle_buffer;
    sc->threads = (uint32_t)pfd_config_threads(cfg);
}

/* ---------------------------------------------------------------- swap points */

int pfd_swaps_load(pfd_swap **out, size_t *n, const char *dir, tb_err *err) {
    *out = NULL;
    *n = 0;
    char p[4200];
    snprintf(p, sizeof p, "%s/swaps.json", dir);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (!j) {
        if (access(p, F_OK) != 0) return 0;
        return tb_err_set(err, "%s:%d: %s", p, je.line, je.text);
    }
    json_t *a = json_object_get(j, "swaps");
    if (!json_is_array(a)) {
        json_decref(j);
        return tb_err_set(err, "%s: swaps: not an array", p);
    }
    size_t k = json_array_size(a);
    *out = calloc(k ? k : 1, sizeof **out);
    for (size_t i = 0; i < k; i++) {
        json_t *e = json_array_get(a, i);
        json_t *s = json_object_get(e, "seq"), *g = json_object_get(e, "generation");
        if (!json_is_integer(s) || !json_is_integer(g) || json_integer_value(s) < 0 ||
            json_integer_value(g) < 1) {
            free(*out);
            *out = NULL;
            json_decref(j);
            return tb_err_set(err, "%s: swaps[%zu]: needs integer seq >= 0 and generation >= 1",
                              p, i);
        }
        (*out)[i].seq = (uint64_t)json_integer_value(s);
        (*out)[i].generation = (uint64_t)json_integer_value(g);
    }
    *n = k;
    json_decref(j);
    return 0;
}

int pfd_swaps_store(const pfd_swap *s, size_t n, const char *dir, tb_err *err) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_pack("{s:I, s:I}", "seq", (json_int_t)s[i].seq,
                                           "generation", (json_int_t)s[i].generation));
    json_t *j = json_pack("{s:o}", "swaps", a);
    char p[4200], t[4300];
    snprintf(p, sizeof p, "%s/swaps.json", dir);
    snprintf(t, sizeof t, "%s.tmp", p);
    int rc = json_dump_file(j, t, JSON_INDENT(1));
    json_decref(j);
    if (rc != 0) return tb_err_set(err, "%s: write failed: %s", t, strerror(errno));
    FILE *f = fopen(t, "r+");
    if (f) {
        fsync(fileno(f));
        fclose(f);
    }
    if (rename(t, p) != 0) return tb_err_set(err, "rename %s: %s", p, strerror(errno));
    return 0;
}

/* ---------------------------------------------------------------- worker */

typedef struct worker {
    const pfd_config *cfg;
    int sock;
    pfd_worker_shm *shm;
    pfd_http http;
    pfd_cache cache;
    tb_source_opener opener;
    int paused;
} worker;

static worker W;

__attribute__((noreturn)) static void die(int code, const char *fmt, const char *msg) {
    snprintf(W.shm->error, sizeof W.shm->error, fmt, msg);
    atomic_store(&W.shm->state, PFD_W_FAILED);
    tb_error(fmt, msg);
    _exit(code);
}

typedef struct timed_src {
    tb_source base;
    tb_source *inner;
} timed_src;

static int64_t timed_read(tb_source *s, void *buf, size_t cap, tb_err *err) {
    timed_src *t = (timed_src *)s;
    uint64_t t0 = tb_clock_mono_ns();
    atomic_store(&W.shm->net_since, t0);
    int64_t n = tb_source_read(t->inner, buf, cap, err);
    __atomic_add_fetch(&W.shm->net_wait_ns, tb_clock_mono_ns() - t0, __ATOMIC_RELAXED);
    atomic_store(&W.shm->net_since, 0);
    return n;
}
static void timed_close(tb_source *s) {
    timed_src *t = (timed_src *)s;
    tb_source_close(t->inner);
    free(t);
}
static const tb_source_vtbl timed_vtbl = {timed_read, timed_close};

static tb_source *open_remote(void *ctx, const char *location, tb_err *err) {
    (void)ctx;
    tb_source *in = pfd_http_open(&W.http, location, err);
    if (!in) return NULL;
    timed_src *t = calloc(1, sizeof *t);
    if (!t) {
        tb_source_close(in);
        tb_err_set(err, "%s: out of memory", location);
        return NULL;
    }
    t->base.vt = &timed_vtbl;
    t->inner = in;
    return &t->base;
}

static void on_bad(void *ctx, tb_bad_kind kind, uint32_t shard, const char *location,
                   uint64_t line, const char *why) {
    (void)ctx;
    snprintf(W.shm->last_bad, sizeof W.shm->last_bad, "%s: shard %u %s line %llu: %s",
             tb_bad_kind_name(kind), shard, location, (unsigned long long)line, why);
    __atomic_add_fetch(&W.shm->bad_seen, 1, __ATOMIC_RELAXED);
}

static void publish_stats(tb_stream *st) {
    atomic_fetch_add(&W.shm->version, 1);
    tb_stream_stats_get(st, &W.shm->stats);
    tb_stream_cursor_get(st, &W.shm->cursor);
    memcpy(&W.shm->http, &W.http.stats, sizeof W.http.stats);
    atomic_fetch_add(&W.shm->version, 1);
}

/* Reads master messages; blocks up to timeout_ms for the first one. */
static void handle_messages(int timeout_ms) {
    struct pollfd p = {W.sock, POLLIN, 0};
    while (poll(&p, 1, timeout_ms) > 0) {
        char c[64];
        ssize_t n = read(W.sock, c, sizeof c);
        if (n == 0) _exit(0); /* master gone */
        if (n < 0) {
            if (errno == EINTR) continue;
            _exit(0);
        }
        for (ssize_t i = 0; i < n; i++) {
            if (c[i] == PFD_MSG_PAUSE) W.paused = 1;
            else if (c[i] == PFD_MSG_RESUME) W.paused = 0;
        }
        timeout_ms = 0;
    }
}

static int read_full(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int encode_batch(uint8_t *out, size_t cap, size_t *len, const tb_stream_batch *b,
                        tb_prov *prov, int packing, tb_err *err) {
    uint8_t cur[TB_STREAM_CURSOR_BYTES];
    tb_stream_cursor_serialize(cur, &b->cursor_after);
    for (uint32_t i = 0; i < b->B; i++) {
        prov[i].sample = b->prov[i].sample;
        prov[i].generation = b->prov[i].generation;
        prov[i].doc = b->prov[i].doc;
        prov[i].token_offset = b->prov[i].token_offset;
        prov[i].shard = b->prov[i].shard;
        prov[i].length = b->prov[i].length;
    }
    tb_batch wb = {
        .seq = b->seq,
        .B = b->B,
        .T = b->T,
        .cursor_after = {.generation = b->cursor_after.generation,
                         .epoch = b->cursor_after.epoch,
                         .shard_pos = b->cursor_after.shard_pos,
                         .doc_index = b->cursor_after.doc_ord,
                         .token_offset = b->cursor_after.token_offset,
                         .samples_emitted = b->cursor_after.samples_emitted,
                         .shuffle = cur,
                         .shuffle_len = sizeof cur},
        .ids = b->ids,
        .labels = b->labels,
        .attn_mask = packing ? NULL : b->attn_mask,
        .prov = prov,
    };
    tb_proto_fixbuf fb = {.data = (char *)out, .cap = cap};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &fb, tb_proto_fixbuf_write);
    if (tb_proto_encode_batch(&pk, &wb, err) < 0) return -1;
    *len = fb.len;
    return 0;
}

void pfd_worker_main(const pfd_config *cfg, int sock, pfd_worker_shm *shm) {
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGUSR1, SIG_IGN);
    memset(&W, 0, sizeof W);
    W.cfg = cfg;
    W.sock = sock;
    W.shm = shm;
    atomic_store(&shm->state, PFD_W_STARTING);
    tb_err err;
    tb_spm *spm = tb_spm_load(cfg->tokenizer, &err);
    if (!spm) die(PFD_WORKER_EX_FATAL, "worker: tokenizer: %s", err.msg);
    W.http.opts = (pfd_http_opts){
        .connect_timeout_s = (long)cfg->http_connect_timeout_s,
        .low_speed_limit = (long)cfg->http_low_speed_limit,
        .low_speed_time_s = (long)cfg->http_low_speed_time_s,
        .retries = (int)cfg->http_retries,
        .backoff_initial_ms = (long)cfg->http_backoff_initial_ms,
        .backoff_max_ms = (long)cfg->http_backoff_max_ms,
    };
    if (pfd_cache_init(&W.cache, cfg->cache_dir, (uint64_t)cfg->cache_budget_bytes, &err) < 0) {
        tb_warn("worker: %s; remote shards are not cached", err.msg);
        W.cache.budget = 0;
    }
    W.http.cache = &W.cache;
    W.opener.open = open_remote;
    W.opener.ctx = NULL;
    atomic_store(&shm->state, PFD_W_STANDBY);

    /* standby until the master says where to start */
    pfd_start st;
    for (;;) {
        char c;
        ssize_t r = read(sock, &c, 1);
        if (r == 0) _exit(0);
        if (r < 0) {
            if (errno == EINTR) continue;
            _exit(0);
        }
        if (c == PFD_MSG_START) {
            if (read_full(sock, &st, sizeof st) < 0) _exit(0);
            break;
        }
        if (c == PFD_MSG_PAUSE) W.paused = 1;
        if (c == PFD_MSG_RESUME) W.paused = 0;
    }
    W.paused = (int)st.paused;

    pfd_ring ring;
    if (pfd_ring_open(&ring, cfg->ring_path, (uint64_t)cfg->ring_slots, pfd_payload_cap(cfg),
                      TB_STREAM_CURSOR_BYTES, pfd_geometry(cfg), &err) < 0)
        die(PFD_WORKER_EX_ERROR, "worker: %s", err.msg);
    if (ring.reset) die(PFD_WORKER_EX_ERROR, "worker: %s", "ring geometry differs from the master's");
    tb_manifest_history hist;
    if (tb_manifest_history_load(&hist, cfg->state_dir, &err) < 0)
        die(PFD_WORKER_EX_FATAL, "worker: %s", err.msg);
    pfd_swap *swaps;
    size_t nswaps;
    if (pfd_swaps_load(&swaps, &nswaps, cfg->state_dir, &err) < 0)
        die(PFD_WORKER_EX_FATAL, "worker: %s", err.msg);

    tb_stream_cursor cur, *at = NULL;
    uint64_t gen;
    if (st.cursor_len == TB_STREAM_CURSOR_BYTES) {
        if (tb_stream_cursor_deserialize(&cur, st.cursor, st.cursor_len, &err) < 0)
            die(PFD_WORKER_EX_ERROR, "worker: start cursor: %s", err.msg);
        at = &cur;
        gen = cur.generation;
    } else {
        gen = 0;
        for (int i = 0; i < 8; i++) gen |= (uint64_t)st.cursor[i] << (8 * i);
    }
    const tb_manifest *m = tb_manifest_history_get(&hist, gen);
    if (!m) {
        char g[32];
        snprintf(g, sizeof g, "%llu", (unsigned long long)gen);
        die(PFD_WORKER_EX_FATAL, "worker: manifest generation %s is not in the state dir", g);
    }
    tb_stream_config sc;
    pfd_stream_config(&sc, cfg);
    sc.opener = &W.opener;
    sc.on_bad = on_bad;
    tb_stream *stream = tb_stream_open(&sc, m, spm, at, &err);
    if (!stream) die(PFD_WORKER_EX_FATAL, "worker: %s", err.msg);
    uint64_t seq = st.start_seq;
    tb_stream_cursor now;
    tb_stream_cursor_get(stream, &now);
    if (now.batch_seq != seq) {
        char b[96];
        snprintf(b, sizeof b, "start seq %llu != cursor batch_seq %llu",
                 (unsigned long long)seq, (unsigned long long)now.batch_seq);
        die(PFD_WORKER_EX_ERROR, "worker: %s", b);
    }
    uint64_t cur_gen = gen;
    /* a swap recorded at or before the start whose boundary was not reached yet */
    for (size_t i = 0; i < nswaps; i++) {
        if (swaps[i].seq <= seq && swaps[i].generation > cur_gen) {
            const tb_manifest *nm = tb_manifest_history_get(&hist, swaps[i].generation);
            if (!nm || tb_stream_swap(stream, nm, &err) < 0)
                die(PFD_WORKER_EX_FATAL, "worker: pending swap: %s", nm ? err.msg : "no manifest");
            cur_gen = swaps[i].generation;
        }
    }
    tb_stream_batch b = {0};
    tb_prov *prov = calloc((size_t)cfg->batch_size, sizeof *prov);
    if (!prov) die(PFD_WORKER_EX_ERROR, "worker: %s", "out of memory");
    tb_info("worker %d: producing from batch %llu (generation %llu)", (int)getpid(),
            (unsigned long long)seq, (unsigned long long)cur_gen);
    publish_stats(stream);
    for (;;) {
        handle_messages(0);
        if (W.paused) {
            atomic_store(&shm->state, PFD_W_PAUSED);
            handle_messages(200);
            continue;
        }
        for (size_t i = 0; i < nswaps; i++) {
            if (swaps[i].seq == seq && swaps[i].generation > cur_gen) {
                const tb_manifest *nm = tb_manifest_history_get(&hist, swaps[i].generation);
                if (!nm || tb_stream_swap(stream, nm, &err) < 0)
                    die(PFD_WORKER_EX_FATAL, "worker: swap: %s", nm ? err.msg : "no manifest");
                cur_gen = swaps[i].generation;
                tb_info("worker: generation %llu from batch %llu on", (unsigned long long)cur_gen,
                        (unsigned long long)seq);
            }
        }
        pfd_slot_hdr *h = pfd_ring_slot(&ring, seq);
        if (pfd_ring_slot_valid(&ring, seq)) {
            /* already built (before a crash): jump over it */
            tb_stream_cursor c;
            const uint8_t *cb = pfd_ring_payload(&ring, seq) + h->payload_len;
            if (h->cursor_len != TB_STREAM_CURSOR_BYTES ||
                tb_stream_cursor_deserialize(&c, cb, h->cursor_len, &err) < 0 ||
                tb_stream_seek(stream, &c, &err) < 0)
                die(PFD_WORKER_EX_ERROR, "worker: seek past a built slot: %s", err.msg);
            seq++;
            continue;
        }
        /* State first, then base: base only grows while we live, so a FREE slot seen
         * with seq >= base was never delivered (a freed one would have base > seq). */
        uint32_t st_now = pfd_slot_state_get(h);
        uint64_t base = pfd_ring_base(&ring);
        int discard = seq < base; /* built before a crash and acknowledged since */
        if (!discard && (st_now != PFD_SLOT_FREE || seq >= base + ring.nslots)) {
            atomic_store(&shm->state, PFD_W_RING_FULL);
            handle_messages(50);
            continue;
        }
        atomic_store(&shm->state, PFD_W_PRODUCING);
        uint64_t t0 = tb_clock_mono_ns();
        atomic_store(&shm->busy_since, t0);
        int r = tb_stream_next_batch(stream, &b, &err);
        __atomic_add_fetch(&shm->busy_ns, tb_clock_mono_ns() - t0, __ATOMIC_RELAXED);
        atomic_store(&shm->busy_since, 0);
        if (r == 0) {
            atomic_store(&shm->state, PFD_W_ENDED);
            publish_stats(stream);
            for (;;) handle_messages(1000);
        }
        if (r < 0) die(PFD_WORKER_EX_ERROR, "worker: %s", err.msg);
        if (b.seq != seq) {
            char m2[96];
            snprintf(m2, sizeof m2, "stream gave batch %llu, expected %llu",
                     (unsigned long long)b.seq, (unsigned long long)seq);
            die(PFD_WORKER_EX_ERROR, "worker: %s", m2);
        }
        if (discard) { /* only the stream position matters */
            seq++;
            continue;
        }
        h->owner = (int32_t)getpid();
        pfd_slot_state_set(h, PFD_SLOT_FILLING);
        uint8_t *pl = pfd_ring_payload(&ring, seq);
        size_t len = 0;
        if (encode_batch(pl, ring.payload_cap, &len, &b, prov, cfg->packing, &err) < 0)
            die(PFD_WORKER_EX_ERROR, "worker: encode: %s", err.msg);
        tb_stream_cursor_serialize(pl + len, &b.cursor_after);
        pfd_ring_seal(&ring, seq, len, TB_STREAM_CURSOR_BYTES, b.B);
        publish_stats(stream);
        uint64_t note = seq;
        if (write(sock, &note, sizeof note) < 0 && errno != EAGAIN) _exit(0);
        seq++;
    }
}
