#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "tb_endpoint.h"
#include "pfd.h"
#include "tb_clock.h"
#include "tb_log.h"
#include "tb_notify.h"
#include "tb_proto_ctl.h"
#include "tb_proto_feed.h"
#include "tb_signal.h"

enum { MAX_WORKERS = 64, MAX_PEERS = 4096, MAX_PREACKED = 64 };

typedef struct wproc {
    pid_t pid; /* 0: empty */
    int sock;
    int active;
    uint64_t started_ns;
} wproc;

typedef struct peer {
    uint8_t id[256];
    size_t idlen;
    int connected;
    uint64_t credit;
    char client[TB_PROTO_MAX_NAME + 1];
} peer;

typedef struct totals {
    double docs, tokens, bytes, samples, batches, net_ns, busy_ns;
} totals;

typedef struct pfd_daemon {
    const pfd_config *cfg;
    void *zctx, *feed, *ctl, *pub;
    int lock_fds[4];
    tb_zap *zap;
    pfd_ring ring;
    tb_manifest_history hist;
    uint64_t cur_gen;
    pfd_swap *swaps;
    size_t nswaps;
    /* workers */
    wproc w[MAX_WORKERS];
    pfd_worker_shm *shm; /* MAX_WORKERS entries, shared (a memfd, passed to workers) */
    int shm_fd, exe_fd;  /* the shared status memfd; this program, for re-exec */
    int active;          /* index of the producing worker, -1 none */
    uint64_t restart_at_ns;
    uint64_t restarts, quick_deaths;
    char worker_error[512];
    tb_stream_stats dead_stats; /* summed over workers that are gone */
    pfd_http_stats dead_http;
    /* feed */
    uint32_t world;
    peer *peers; /* world entries */
    uint64_t preacked[MAX_PREACKED];
    int npreacked;
    /* state */
    int paused, stopping;
    uint64_t metrics_seq;
    totals last;
    double last_t;
    char state[32], cause[600];
    double rates[5]; /* docs, tokens, bytes, samples, batches per second */
    uint64_t sent, acked, resent, rewinds, corrupt_slots, bad_msgs;
    pid_t cpu_pid;    /* worker whose CPU time last_cpu is */
    double last_cpu;  /* its utime + stime, seconds */
    double cpu_cores; /* cores it kept busy over the last interval */
} pfd_daemon;

static int path_dir_ok(const char *path, tb_err *err) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    if (mkdir(path, 0750) == 0) return 0;
    return tb_err_set(err, "%s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------ workers */

static void sum_stats(tb_stream_stats *a, const tb_stream_stats *b) {
    a->shards_opened += b->shards_opened;
    a->bytes_raw += b->bytes_raw;
    a->bytes_text += b->bytes_text;
    a->docs_read += b->docs_read;
    a->docs_used += b->docs_used;
    a->docs_short += b->docs_short;
    a->tokens += b->tokens;
    a->samples += b->samples;
    a->batches += b->batches;
    for (int k = 0; k < TB_BAD_KINDS; k++) a->bad[k] += b->bad[k];
}

static void sum_http(pfd_http_stats *a, const pfd_http_stats *b) {
    a->bytes += b->bytes;
    a->resumes += b->resumes;
    a->retries += b->retries;
    a->failures += b->failures;
    a->cache_hits += b->cache_hits;
    a->cache_misses += b->cache_misses;
    a->cache_evictions += b->cache_evictions;
    a->cache_bad += b->cache_bad;
}

/* Consistent copy of a worker's shared stats (seqlock). */
static void read_shm(const pfd_worker_shm *s, pfd_worker_shm *out) {
    for (int tries = 0; tries < 100; tries++) {
        uint64_t v0 = atomic_load(&((pfd_worker_shm *)s)->version);
        if (v0 & 1) continue;
        memcpy(out, s, sizeof *out);
        if (atomic_load(&((pfd_worker_shm *)s)->version) == v0) return;
    }
    memcpy(out, s, sizeof *out);
}

/* A memfd holding the effective configuration as YAML, for a worker to load. */
static int config_memfd(const pfd_daemon *d) {
    int fd = memfd_create("tb-prefetchd-config", MFD_CLOEXEC);
    if (fd < 0) return -1;
    int fd2 = dup(fd);
    FILE *f = fd2 >= 0 ? fdopen(fd2, "w") : NULL;
    if (!f) {
        if (fd2 >= 0) close(fd2);
        close(fd);
        return -1;
    }
    int rc = tb_cfg_write_values(f, d->cfg, &pfd_config_schema);
    if (fclose(f) != 0 || rc < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Workers are separate processes started by fork + exec of this program: the master has
 * threads (libzmq's), and after a plain fork only async-signal-safe calls are defined (a
 * lock held by another thread at the fork, e.g. the allocator's, would never be released
 * in the child). The worker gets its socket, the status memfd, a memfd with the effective
 * configuration and the ring/lock fds (kept so that a master restarted after a kill -9
 * waits on the ring lock until every old worker is gone). */
static int spawn_worker(pfd_daemon *d, int i) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        tb_error("socketpair: %s", strerror(errno));
        return -1;
    }
    int cfd = config_memfd(d);
    if (cfd < 0) {
        tb_error("worker %d: configuration memfd: %s", i, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    char cpath[64], spec[96];
    snprintf(cpath, sizeof cpath, "/proc/self/fd/%d", cfd);
    snprintf(spec, sizeof spec, "%d,%d,%d,%d", sv[1], d->shm_fd, i, (int)getpid());
    char *argv[] = {"tb-prefetchd", "-c", cpath, "--worker", spec, NULL};
    int keep[3 + 4] = {sv[1], d->shm_fd, cfd, -1, -1, -1, -1};
    for (int k = 0; k < 4; k++) keep[3 + k] = d->lock_fds[k];
    memset(&d->shm[i], 0, sizeof d->shm[i]);
    pid_t pid = fork();
    if (pid < 0) {
        tb_error("fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        close(cfd);
        return -1;
    }
    if (pid == 0) { /* async-signal-safe calls only until the exec */
        for (int k = 0; k < 7; k++)
            if (keep[k] >= 0) fcntl(keep[k], F_SETFD, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        fexecve(d->exe_fd, argv, environ);
        _exit(127);
    }
    close(cfd);
    close(sv[1]);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    d->w[i] = (wproc){.pid = pid, .sock = sv[0], .active = 0, .started_ns = tb_clock_mono_ns()};
    tb_info("worker %d started (pid %d)", i, (int)pid);
    return 0;
}

static uint64_t highest_valid_plus1(const pfd_daemon *d) {
    uint64_t base = pfd_ring_base(&d->ring), top = base;
    for (uint64_t s = base; s < base + d->ring.nslots; s++)
        if (pfd_ring_slot_valid(&d->ring, s)) top = s + 1;
    return top;
}

/* Where production must resume: the first seq whose slot is not valid, with the cursor
 * stored before it. */
static int compute_start(pfd_daemon *d, pfd_start *st) {
    memset(st, 0, sizeof *st);
    uint64_t base = pfd_ring_base(&d->ring), s = base;
    while (s < base + d->ring.nslots && pfd_ring_slot_valid(&d->ring, s)) s++;
    st->start_seq = s;
    st->paused = (uint32_t)d->paused;
    if (s == base) {
        uint64_t len = 0;
        const uint8_t *c = pfd_ring_base_cursor(&d->ring, &len);
        if (!c || (len != TB_STREAM_CURSOR_BYTES && len != PFD_START_MARK_BYTES)) {
            tb_error("ring: no valid base cursor for batch %llu", (unsigned long long)base);
            return -1;
        }
        memcpy(st->cursor, c, len);
        st->cursor_len = (uint32_t)len;
    } else {
        pfd_slot_hdr *h = pfd_ring_slot(&d->ring, s - 1);
        memcpy(st->cursor, pfd_ring_payload(&d->ring, s - 1) + h->payload_len, TB_STREAM_CURSOR_BYTES);
        st->cursor_len = TB_STREAM_CURSOR_BYTES;
    }
    return 0;
}

static void send_byte(pfd_daemon *d, int i, char c) {
    if (d->w[i].pid > 0 && send(d->w[i].sock, &c, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
        errno != EAGAIN)
        tb_debug("worker %d: send: %s", i, strerror(errno));
}

static int activate(pfd_daemon *d, int i) {
    pfd_start st;
    if (compute_start(d, &st) < 0) return -1;
    char buf[1 + sizeof st];
    buf[0] = PFD_MSG_START;
    memcpy(buf + 1, &st, sizeof st);
    int fl = fcntl(d->w[i].sock, F_GETFL);
    fcntl(d->w[i].sock, F_SETFL, fl & ~O_NONBLOCK);
    ssize_t n = send(d->w[i].sock, buf, sizeof buf, MSG_NOSIGNAL);
    fcntl(d->w[i].sock, F_SETFL, fl);
    if (n != (ssize_t)sizeof buf) {
        tb_error("worker %d: start message: %s", i, strerror(errno));
        return -1;
    }
    d->w[i].active = 1;
    d->active = i;
    tb_info("worker %d (pid %d) produces from batch %llu", i, (int)d->w[i].pid,
            (unsigned long long)st.start_seq);
    return 0;
}

/* Frees the slots a dead worker was filling. */
static void reclaim(pfd_daemon *d, pid_t pid) {
    for (uint64_t i = 0; i < d->ring.nslots; i++) {
        pfd_slot_hdr *h = pfd_ring_slot(&d->ring, i);
        if (pfd_slot_state_get(h) == PFD_SLOT_FILLING && (h->owner == pid || pid == 0))
            pfd_slot_state_set(h, PFD_SLOT_FREE);
    }
}

static void worker_gone(pfd_daemon *d, int i, int status) {
    pfd_worker_shm snap;
    read_shm(&d->shm[i], &snap);
    if (d->w[i].active) {
        sum_stats(&d->dead_stats, &snap.stats);
        sum_http(&d->dead_http, &snap.http);
    }
    if (snap.error[0]) snprintf(d->worker_error, sizeof d->worker_error, "%s", snap.error);
    int was_active = d->w[i].active;
    uint64_t lived = tb_clock_mono_ns() - d->w[i].started_ns;
    close(d->w[i].sock);
    reclaim(d, d->w[i].pid);
    d->w[i] = (wproc){0};
    if (was_active) d->active = -1;
    if (d->stopping) return;
    d->restarts++;
    /* a crash loop (dies fast without building a batch) backs off up to 30 s */
    d->quick_deaths = lived < 2000000000ull && snap.stats.batches == 0 ? d->quick_deaths + 1 : 0;
    uint64_t delay = (uint64_t)d->cfg->restart_delay_ms * 1000000ull;
    for (uint64_t q = 1; q < d->quick_deaths && delay < 30000000000ull; q++) delay *= 2;
    if (delay > 30000000000ull) delay = 30000000000ull;
    d->restart_at_ns = tb_clock_mono_ns() + delay;
    if (WIFSIGNALED(status))
        tb_warn("worker %d died of signal %d%s; restart in %llu ms", i, WTERMSIG(status),
                was_active ? " while producing" : "", (unsigned long long)(delay / 1000000));
    else
        tb_warn("worker %d exited with status %d%s%s; restart in %llu ms", i,
                WEXITSTATUS(status), snap.error[0] ? ": " : "", snap.error,
                (unsigned long long)(delay / 1000000));
}

static void reap(pfd_daemon *d) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_WORKERS; i++)
            if (d->w[i].pid == pid) worker_gone(d, i, status);
    }
}

/* Keeps `processes` workers alive and one of them producing. */
static void supervise(pfd_daemon *d) {
    if (d->stopping || tb_clock_mono_ns() < d->restart_at_ns) return;
    for (int i = 0; i < d->cfg->processes; i++)
        if (d->w[i].pid == 0 && spawn_worker(d, i) < 0) {
            d->restart_at_ns = tb_clock_mono_ns() + 1000000000ull;
            return;
        }
    if (d->active < 0) {
        int pick = -1;
        for (int i = 0; i < d->cfg->processes; i++)
            if (d->w[i].pid > 0 && atomic_load(&d->shm[i].state) == PFD_W_STANDBY) pick = i;
        if (pick < 0)
            for (int i = 0; i < d->cfg->processes; i++)
                if (d->w[i].pid > 0) pick = i;
        if (pick >= 0 && activate(d, pick) < 0) {
            kill(d->w[pick].pid, SIGKILL);
            d->restart_at_ns = tb_clock_mono_ns() + 1000000000ull;
        }
    }
}

/* Stops the producing worker (SIGKILL: its unfinished slot is reclaimed, and the
 * replacement rebuilds exactly what is missing). */
static void stop_active(pfd_daemon *d) {
    if (d->active < 0) return;
    int i = d->active;
    pid_t pid = d->w[i].pid;
    kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pfd_worker_shm snap;
    read_shm(&d->shm[i], &snap);
    sum_stats(&d->dead_stats, &snap.stats);
    sum_http(&d->dead_http, &snap.http);
    close(d->w[i].sock);
    reclaim(d, pid);
    d->w[i] = (wproc){0};
    d->active = -1;
    d->restart_at_ns = 0;
}

/* ------------------------------------------------------------ generations */

/* keep_history: the ring was lost but the timeline continues, so the trainers' position
 * is unknown: the swap goes after the last swap point instead of replacing later ones. */
static int record_swap(pfd_daemon *d, uint64_t gen, int keep_history, uint64_t *at, tb_err *err) {
    stop_active(d);
    uint64_t s = highest_valid_plus1(d);
    if (keep_history && d->nswaps && s <= d->swaps[d->nswaps - 1].seq)
        s = d->swaps[d->nswaps - 1].seq + 1;
    /* swap points at or after s belong to a future that was never delivered (two swaps
     * before a new batch, or a rewind): the new one replaces them */
    while (d->nswaps && d->swaps[d->nswaps - 1].seq >= s) d->nswaps--;
    pfd_swap *ns = realloc(d->swaps, (d->nswaps + 1) * sizeof *ns);
    if (!ns) return tb_err_set(err, "out of memory");
    d->swaps = ns;
    d->swaps[d->nswaps++] = (pfd_swap){s, gen};
    if (pfd_swaps_store(d->swaps, d->nswaps, d->cfg->state_dir, err) < 0) return -1;
    d->cur_gen = gen;
    *at = s;
    tb_notice("generation %llu takes effect at the first document boundary of batch %llu",
              (unsigned long long)gen, (unsigned long long)s);
    supervise(d);
    return 0;
}

/* Makes m the newest generation; swaps to it when it differs. *changed set accordingly. */
static int apply_manifest(pfd_daemon *d, const tb_manifest *m, int *changed, uint64_t *at,
                          tb_err *err) {
    uint64_t gen = 0;
    *changed = 0;
    if (m->n == 0) return tb_err_set(err, "manifest lists no shards");
    if (tb_manifest_history_commit(&d->hist, d->cfg->state_dir, m, &gen, err) < 0) return -1;
    if (gen == d->cur_gen) return 0;
    *changed = 1;
    return record_swap(d, gen, 0, at, err);
}

/* ------------------------------------------------------------ feed */

static void free_world(pfd_daemon *d) {
    free(d->peers);
    d->peers = NULL;
    d->world = 0;
}

static peer *peer_by_id(pfd_daemon *d, const void *id, size_t len, uint32_t *rank) {
    for (uint32_t r = 0; r < d->world; r++)
        if (d->peers[r].connected && d->peers[r].idlen == len && memcmp(d->peers[r].id, id, len) == 0) {
            if (rank) *rank = r;
            return &d->peers[r];
        }
    return NULL;
}

static void rewind_to(pfd_daemon *d, const uint8_t *cursor, uint64_t seq) {
    stop_active(d);
    tb_err err;
    if (pfd_ring_reset_to(&d->ring, seq, cursor, TB_STREAM_CURSOR_BYTES, &err) < 0) {
        tb_error("rewind: %s", err.msg);
        return;
    }
    d->npreacked = 0;
    d->rewinds++;
    tb_notice("feed: rewound to batch %llu (a trainer's cursor outside the ring)",
              (unsigned long long)seq);
    supervise(d);
}

static void mark_acked(pfd_daemon *d, uint64_t seq) {
    pfd_slot_hdr *h = pfd_ring_slot(&d->ring, seq);
    uint32_t s = pfd_slot_state_get(h);
    if (h->seq != seq || (s != PFD_SLOT_SENT && s != PFD_SLOT_FILLED)) return;
    pfd_slot_state_set(h, PFD_SLOT_ACKED);
    d->acked++;
    if (pfd_ring_advance(&d->ring) > 0 && d->active >= 0) send_byte(d, d->active, PFD_MSG_WAKE);
}

static void on_hello(pfd_daemon *d, const uint8_t *id, size_t idlen, const tb_hello *h) {
    if (d->world != h->world) {
        if (d->world) tb_notice("feed: world changes from %u to %u", d->world, h->world);
        free_world(d);
        d->peers = calloc(h->world, sizeof *d->peers);
        if (!d->peers) return;
        d->world = h->world;
        /* everything sent to the old world is re-sent to the new one */
        for (uint64_t i = 0; i < d->ring.nslots; i++) {
            pfd_slot_hdr *sh = pfd_ring_slot(&d->ring, i);
            if (pfd_slot_state_get(sh) == PFD_SLOT_SENT) pfd_slot_state_set(sh, PFD_SLOT_FILLED);
        }
    }
    peer *p = &d->peers[h->rank];
    if (p->connected) tb_info("feed: rank %u reconnected (%s)", h->rank, h->client);
    else tb_info("feed: rank %u/%u connected (%s)", h->rank, h->world, h->client);
    memcpy(p->id, id, idlen);
    p->idlen = idlen;
    p->connected = 1;
    p->credit = 0;
    snprintf(p->client, sizeof p->client, "%s", h->client);
    uint64_t base = pfd_ring_base(&d->ring);
    for (uint64_t s = base; s < base + d->ring.nslots; s++) {
        pfd_slot_hdr *sh = pfd_ring_slot(&d->ring, s);
        if (sh->seq == s && s % d->world == h->rank && pfd_slot_state_get(sh) == PFD_SLOT_SENT) {
            pfd_slot_state_set(sh, PFD_SLOT_FILLED);
            d->resent++;
        }
    }
    if (!h->has_cursor) return;
    tb_stream_cursor c;
    tb_err err;
    if (h->cursor.shuffle_len != TB_STREAM_CURSOR_BYTES ||
        tb_stream_cursor_deserialize(&c, h->cursor.shuffle, h->cursor.shuffle_len, &err) < 0) {
        tb_warn("feed: rank %u: HELLO cursor is not a tb-prefetchd cursor (%s); ignored", h->rank,
                h->cursor.shuffle_len == TB_STREAM_CURSOR_BYTES ? err.msg : "wrong length");
        return;
    }
    uint64_t cs = c.batch_seq, top = highest_valid_plus1(d);
    if (cs < base || cs > top) {
        rewind_to(d, h->cursor.shuffle, cs);
        return;
    }
    for (uint64_t s = base; s < cs; s++)
        if (s % d->world == h->rank) mark_acked(d, s);
}

static void send_ready(pfd_daemon *d) {
    if (!d->world || d->stopping > 1) return;
    uint64_t base = pfd_ring_base(&d->ring);
    uint8_t *blocked = calloc(d->world, 1);
    if (!blocked) return;
    for (uint64_t s = base; s < base + d->ring.nslots; s++) {
        uint32_t r = (uint32_t)(s % d->world);
        if (blocked[r]) continue;
        pfd_slot_hdr *h = pfd_ring_slot(&d->ring, s);
        uint32_t st = pfd_slot_state_get(h);
        if (h->seq != s || st == PFD_SLOT_FREE || st == PFD_SLOT_FILLING) {
            blocked[r] = 1; /* keep each rank's batches in order */
            continue;
        }
        if (st != PFD_SLOT_FILLED) continue;
        peer *p = &d->peers[r];
        if (!p->connected || p->credit == 0) {
            blocked[r] = 1;
            continue;
        }
        if (h->crc != pfd_ring_slot_crc(&d->ring, s)) {
            tb_error("ring: slot for batch %llu fails its crc; rebuilding it", (unsigned long long)s);
            d->corrupt_slots++;
            stop_active(d);
            pfd_slot_state_set(h, PFD_SLOT_FREE);
            supervise(d);
            blocked[r] = 1;
            continue;
        }
        if (zmq_send(d->feed, p->id, p->idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
            if (errno == EHOSTUNREACH) {
                tb_info("feed: rank %u is gone; its batches wait for a reconnect", r);
                p->connected = 0;
            }
            blocked[r] = 1;
            continue;
        }
        if (zmq_send(d->feed, pfd_ring_payload(&d->ring, s), h->payload_len, ZMQ_DONTWAIT) < 0) {
            blocked[r] = 1;
            continue;
        }
        pfd_slot_state_set(h, PFD_SLOT_SENT);
        p->credit--;
        d->sent++;
    }
    free(blocked);
}

static void on_feed(pfd_daemon *d) {
    for (int n = 0; n < 256; n++) {
        zmq_msg_t idm, msg;
        zmq_msg_init(&idm);
        if (zmq_msg_recv(&idm, d->feed, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&idm);
            return;
        }
        if (!zmq_msg_more(&idm)) {
            zmq_msg_close(&idm);
            continue;
        }
        zmq_msg_init(&msg);
        zmq_msg_recv(&msg, d->feed, 0);
        while (zmq_msg_more(&msg)) { /* extra frames: drop them */
            zmq_msg_t x;
            zmq_msg_init(&x);
            zmq_msg_recv(&x, d->feed, 0);
            int more = zmq_msg_more(&x);
            zmq_msg_close(&x);
            if (!more) break;
        }
        const uint8_t *id = zmq_msg_data(&idm);
        size_t idlen = zmq_msg_size(&idm);
        const void *buf = zmq_msg_data(&msg);
        size_t len = zmq_msg_size(&msg);
        tb_proto_type t;
        tb_err err;
        if (idlen > sizeof d->peers[0].id || tb_proto_peek_type(&t, buf, len, &err) < 0) {
            d->bad_msgs++;
            tb_warn("feed: bad message (%zu bytes): %s", len, idlen > 256 ? "identity" : err.msg);
        } else if (t == TB_PROTO_HELLO) {
            tb_hello h;
            if (tb_proto_decode_hello(buf, len, &h, &err) < 0) {
                d->bad_msgs++;
                tb_warn("feed: %s", err.msg);
            } else {
                on_hello(d, id, idlen, &h);
                tb_cursor_free(&h.cursor);
            }
        } else if (t == TB_PROTO_CREDIT) {
            uint32_t c;
            peer *p = peer_by_id(d, id, idlen, NULL);
            if (tb_proto_decode_credit(buf, len, &c, &err) < 0) {
                d->bad_msgs++;
                tb_warn("feed: %s", err.msg);
            } else if (p) {
                p->credit += c;
                if (p->credit > (uint64_t)1 << 32) p->credit = (uint64_t)1 << 32;
            } else {
                tb_debug("feed: CREDIT from a peer without HELLO; ignored");
            }
        } else if (t == TB_PROTO_ACK) {
            uint64_t seq;
            if (tb_proto_decode_ack(buf, len, &seq, &err) < 0) {
                d->bad_msgs++;
                tb_warn("feed: %s", err.msg);
            } else {
                mark_acked(d, seq);
            }
        } else {
            d->bad_msgs++;
            tb_warn("feed: unexpected %s message", tb_proto_type_name(t));
        }
        zmq_msg_close(&msg);
        zmq_msg_close(&idm);
    }
}

/* ------------------------------------------------------------ status */

typedef struct snapshot {
    tb_stream_stats st;
    pfd_http_stats http;
    tb_stream_cursor cursor;
    uint64_t busy_ns, net_ns;
    int wstate;
    char last_bad[256];
    uint64_t filled, sent, acked, free_, filling, credits;
    uint32_t peers;
} snapshot;

static void take_snapshot(pfd_daemon *d, snapshot *s) {
    memset(s, 0, sizeof *s);
    s->st = d->dead_stats;
    s->http = d->dead_http;
    s->wstate = -1;
    if (d->active >= 0) {
        pfd_worker_shm w;
        read_shm(&d->shm[d->active], &w);
        sum_stats(&s->st, &w.stats);
        sum_http(&s->http, &w.http);
        s->cursor = w.cursor;
        /* time of the calls still in progress counts too (a stalled read never returns
         * within the interval) */
        uint64_t now = tb_clock_mono_ns();
        uint64_t bs = atomic_load(&d->shm[d->active].busy_since);
        uint64_t ns = atomic_load(&d->shm[d->active].net_since);
        s->busy_ns = w.busy_ns + (bs && now > bs ? now - bs : 0);
        s->net_ns = w.net_wait_ns + (ns && now > ns ? now - ns : 0);
        s->wstate = atomic_load(&d->shm[d->active].state);
        memcpy(s->last_bad, w.last_bad, sizeof s->last_bad);
    }
    for (uint64_t i = 0; i < d->ring.nslots; i++) {
        switch (pfd_slot_state_get(pfd_ring_slot(&d->ring, i))) {
        case PFD_SLOT_FILLED: s->filled++; break;
        case PFD_SLOT_SENT: s->sent++; break;
        case PFD_SLOT_ACKED: s->acked++; break;
        case PFD_SLOT_FILLING: s->filling++; break;
        default: s->free_++; break;
        }
    }
    for (uint32_t r = 0; r < d->world; r++)
        if (d->peers[r].connected) {
            s->peers++;
            s->credits += d->peers[r].credit;
        }
}

/* State machine of the stats record (evaluated once per interval):
 *   paused  <- pause verb;  failed <- no worker can start (cause: its error)
 *   ended   <- the stream ended (max epochs)
 *   blocked <- batches ready but no consumer credit (cause: no credits / no consumers)
 *   starved <- consumers hold credit but no batch is ready (cause: network when over half
 *              of the producing time went to remote reads; else disk when the worker
 *              kept less than half a core busy, i.e. it waits on something that is not
 *              the network: local reads; else tokenizer)
 *   running <- otherwise */
static void eval_state(pfd_daemon *d, const snapshot *s, double net_frac) {
    const char *st = "running", *cause = "";
    if (d->stopping) st = "stopping";
    else if (d->paused) st = "paused";
    else if (d->active < 0 && d->worker_error[0]) st = "failed", cause = d->worker_error;
    else if (s->wstate == PFD_W_ENDED && s->filled == 0) st = "ended";
    else if (s->filled > 0 && s->credits == 0)
        st = "blocked", cause = s->peers ? "no credits" : "no consumers";
    else if (s->filled == 0 && s->credits > 0)
        st = "starved", cause = net_frac > 0.5               ? "network"
                                : d->cpu_cores < 0.5 ? "disk"
                                                     : "tokenizer";
    else if (s->wstate == PFD_W_RING_FULL && s->credits == 0)
        st = "blocked", cause = s->peers ? "no credits" : "no consumers";
    snprintf(d->state, sizeof d->state, "%s", st);
    snprintf(d->cause, sizeof d->cause, "%s", cause);
}

static int fill_status(pfd_daemon *d, tb_kvmap *m, const snapshot *s, tb_err *err) {
    int rc = 0;
#define I(k, v) rc |= tb_kvmap_add_int(m, k, (int64_t)(v), err)
#define D(k, v) rc |= tb_kvmap_add_double(m, k, (double)(v), err)
#define S(k, v) rc |= tb_kvmap_add_str(m, k, v, err)
    S("state", d->state);
    S("cause", d->cause);
    I("pid", getpid());
    I("generation", d->cur_gen);
    D("docs_per_s", d->rates[0]);
    D("tokens_per_s", d->rates[1]);
    D("bytes_per_s", d->rates[2]);
    D("samples_per_s", d->rates[3]);
    D("batches_per_s", d->rates[4]);
    I("ring_slots", d->ring.nslots);
    I("ring_ready", s->filled);
    I("ring_inflight", s->sent);
    I("ring_filling", s->filling);
    D("ring_fill", (double)(s->filled + s->sent + s->acked) / (double)d->ring.nslots);
    I("ring_base", pfd_ring_base(&d->ring));
    I("credits_outstanding", s->credits);
    I("world", d->world);
    I("peers", s->peers);
    I("batches_sent", d->sent);
    I("batches_acked", d->acked);
    I("batches_resent", d->resent);
    I("rewinds", d->rewinds);
    I("corrupt_slots", d->corrupt_slots);
    I("bad_messages", d->bad_msgs);
    I("epoch", s->cursor.epoch);
    I("shard_pos", s->cursor.shard_pos);
    I("shard", s->cursor.shard);
    I("shard_docs", s->cursor.doc_ord);
    I("next_batch", s->cursor.batch_seq);
    I("next_sample", s->cursor.samples_emitted);
    const tb_manifest *m0 = tb_manifest_history_get(&d->hist, s->cursor.generation);
    if (m0) {
        I("shards", m0->n);
        if (s->cursor.shard < m0->n) S("shard_location", m0->shards[s->cursor.shard].location);
    }
    I("docs_total", s->st.docs_used);
    I("docs_short", s->st.docs_short);
    I("tokens_total", s->st.tokens);
    I("bytes_total", s->st.bytes_raw);
    I("shards_opened", s->st.shards_opened);
    uint64_t bad = 0;
    for (int k = 0; k < TB_BAD_KINDS; k++) {
        char key[64];
        snprintf(key, sizeof key, "bad.%s", tb_bad_kind_name((tb_bad_kind)k));
        I(key, s->st.bad[k]);
        bad += s->st.bad[k];
    }
    I("bad_total", bad);
    if (s->last_bad[0]) S("last_bad", s->last_bad);
    I("http_bytes", s->http.bytes);
    I("http_resumes", s->http.resumes);
    I("http_retries", s->http.retries);
    I("http_failures", s->http.failures);
    I("cache_hits", s->http.cache_hits);
    I("cache_misses", s->http.cache_misses);
    I("worker_restarts", d->restarts);
    D("worker_cpu", d->cpu_cores);
    I("worker_pid", d->active >= 0 ? d->w[d->active].pid : 0);
    if (d->worker_error[0]) S("worker_error", d->worker_error);
    I("zap_refused", tb_zap_refused(d->zap));
    I("zap_accepted", tb_zap_accepted(d->zap));
    I("paused", d->paused);
#undef I
#undef D
#undef S
    return rc ? -1 : 0;
}

/* utime + stime of a process (all threads) in seconds, from /proc/PID/stat; < 0 if gone. */
static double proc_cpu_s(pid_t pid) {
    char p[64], line[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    const char *r = strrchr(line, ')'); /* the command name may hold spaces */
    unsigned long ut = 0, st = 0;
    if (!r || sscanf(r + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void tick_metrics(pfd_daemon *d) {
    snapshot s;
    take_snapshot(d, &s);
    double now = tb_clock_mono_s(), dt = now - d->last_t;
    totals t = {(double)s.st.docs_used, (double)s.st.tokens, (double)s.st.bytes_raw,
                (double)s.st.samples, (double)s.st.batches, (double)s.net_ns, (double)s.busy_ns};
    double net_frac = 0;
    pid_t wpid = d->active >= 0 ? d->w[d->active].pid : 0;
    double cpu = wpid > 0 ? proc_cpu_s(wpid) : -1;
    if (dt > 0 && d->last_t > 0 && cpu >= 0 && wpid == d->cpu_pid)
        d->cpu_cores = (cpu - d->last_cpu) / dt;
    else if (wpid != d->cpu_pid)
        d->cpu_cores = 0;
    d->cpu_pid = wpid;
    d->last_cpu = cpu;
    if (dt > 0 && d->last_t > 0) {
        double v[5] = {t.docs - d->last.docs, t.tokens - d->last.tokens, t.bytes - d->last.bytes,
                       t.samples - d->last.samples, t.batches - d->last.batches};
        for (int i = 0; i < 5; i++) d->rates[i] = v[i] > 0 ? v[i] / dt : 0;
        double busy = t.busy_ns - d->last.busy_ns, net = t.net_ns - d->last.net_ns;
        net_frac = busy > 0 ? net / busy : 0;
    }
    d->last = t;
    d->last_t = now;
    eval_state(d, &s, net_frac);
    tb_metrics m = {.seq = d->metrics_seq++, .time = tb_clock_wall_s()};
    snprintf(m.topic, sizeof m.topic, "prefetchd.stats");
    tb_err err;
    if (fill_status(d, &m.fields, &s, &err) == 0) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (tb_proto_encode_metrics(&pk, &m, &err) == 0) {
            zmq_send(d->pub, m.topic, strlen(m.topic), ZMQ_SNDMORE | ZMQ_DONTWAIT);
            zmq_send(d->pub, sb.data, sb.size, ZMQ_DONTWAIT);
        } else {
            tb_warn("metrics: %s", err.msg);
        }
        msgpack_sbuffer_destroy(&sb);
    } else {
        tb_warn("metrics: %s", err.msg);
    }
    tb_metrics_free(&m);
    tb_notify_status("%s%s%s gen %llu, %.0f tokens/s, ring %llu ready/%llu sent, %llu bad",
                     d->state, d->cause[0] ? ": " : "", d->cause, (unsigned long long)d->cur_gen,
                     d->rates[1], (unsigned long long)s.filled, (unsigned long long)s.sent,
                     (unsigned long long)(s.st.bad[0] + s.st.bad[1] + s.st.bad[2] + s.st.bad[3] +
                                          s.st.bad[4] + s.st.bad[5] + s.st.bad[6]));
}

/* ------------------------------------------------------------ control */

static const char *arg_str(const tb_request *q, const char *key) {
    const tb_kv *kv = tb_kvmap_get(&q->args, key);
    return kv && kv->type == TB_KV_STR ? kv->v.s : NULL;
}

static int reload_manifest(pfd_daemon *d, const char *path, tb_reply *rep, tb_err *err) {
    tb_manifest m;
    if (tb_manifest_load(&m, path, err) < 0) return -1;
    int changed;
    uint64_t at = 0;
    int rc = apply_manifest(d, &m, &changed, &at, err);
    tb_manifest_free(&m);
    if (rc < 0) return -1;
    tb_kvmap_add_bool(&rep->result, "changed", changed, err);
    tb_kvmap_add_int(&rep->result, "generation", (int64_t)d->cur_gen, err);
    if (changed) tb_kvmap_add_int(&rep->result, "from_batch", (int64_t)at, err);
    return 0;
}

static int edit_shards(pfd_daemon *d, const char *loc, int add, tb_reply *rep, tb_err *err) {
    const tb_manifest *cur = tb_manifest_history_latest(&d->hist);
    if (!cur) return tb_err_set(err, "no current manifest");
    if (!loc || !loc[0]) return tb_err_set(err, "missing argument 'location'");
    if (add && loc[0] != '/' && !strstr(loc, "://"))
        return tb_err_set(err, "location %s: give an absolute path or a URL", loc);
    tb_manifest m;
    if (tb_manifest_copy(&m, cur, err) < 0) return -1;
    int rc = 0;
    if (add) {
        for (size_t i = 0; i < m.n; i++)
            if (strcmp(m.shards[i].location, loc) == 0) {
                tb_manifest_free(&m);
                return tb_err_set(err, "%s is already in generation %llu", loc,
                                  (unsigned long long)cur->generation);
            }
        tb_shard *ns = realloc(m.shards, (m.n + 1) * sizeof *ns);
        if (!ns) {
            tb_manifest_free(&m);
            return tb_err_set(err, "out of memory");
        }
        m.shards = ns;
        m.shards[m.n] = (tb_shard){.location = strdup(loc), .size = -1};
        m.n++;
    } else {
        size_t j = 0;
        int found = 0;
        for (size_t i = 0; i < m.n; i++) {
            if (strcmp(m.shards[i].location, loc) == 0) {
                free(m.shards[i].location);
                found = 1;
            } else {
                m.shards[j++] = m.shards[i];
            }
        }
        m.n = j;
        if (!found) rc = tb_err_set(err, "%s is not in generation %llu", loc,
                                    (unsigned long long)cur->generation);
    }
    int changed = 0;
    uint64_t at = 0;
    if (rc == 0) rc = apply_manifest(d, &m, &changed, &at, err);
    tb_manifest_free(&m);
    if (rc == 0) {
        tb_kvmap_add_int(&rep->result, "generation", (int64_t)d->cur_gen, err);
        tb_kvmap_add_int(&rep->result, "from_batch", (int64_t)at, err);
    }
    return rc;
}

static void on_control(pfd_daemon *d) {
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, d->ctl, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        return;
    }
    tb_request q;
    tb_reply rep = {0};
    tb_err err = {""};
    int rc = 0;
    if (tb_proto_decode_request(zmq_msg_data(&msg), zmq_msg_size(&msg), &q, &err) < 0) {
        rc = -1;
        memset(&q, 0, sizeof q);
    } else {
        rep.id = q.id;
        tb_info("control: %s", q.verb);
        if (strcmp(q.verb, "status") == 0) {
            snapshot s;
            take_snapshot(d, &s);
            rc = fill_status(d, &rep.result, &s, &err);
        } else if (strcmp(q.verb, "pause") == 0) {
            d->paused = 1;
            if (d->active >= 0) send_byte(d, d->active, PFD_MSG_PAUSE);
        } else if (strcmp(q.verb, "resume") == 0) {
            d->paused = 0;
            if (d->active >= 0) send_byte(d, d->active, PFD_MSG_RESUME);
        } else if (strcmp(q.verb, "stop") == 0) {
            d->stopping = 1;
        } else if (strcmp(q.verb, "shards.list") == 0) {
            const tb_manifest *m = tb_manifest_history_latest(&d->hist);
            tb_kvmap_add_int(&rep.result, "generation", (int64_t)d->cur_gen, &err);
            tb_kvmap_add_int(&rep.result, "count", m ? (int64_t)m->n : 0, &err);
            for (size_t i = 0; m && i < m->n && i < 200; i++) {
                char k[32];
                snprintf(k, sizeof k, "shard.%zu", i);
                tb_kvmap_add_str(&rep.result, k, m->shards[i].location, &err);
            }
        } else if (strcmp(q.verb, "shards.set") == 0) {
            const char *p = arg_str(&q, "path");
            rc = p ? reload_manifest(d, p, &rep, &err) : tb_err_set(&err, "missing argument 'path'");
        } else if (strcmp(q.verb, "shards.add") == 0) {
            rc = edit_shards(d, arg_str(&q, "location"), 1, &rep, &err);
        } else if (strcmp(q.verb, "shards.remove") == 0) {
            rc = edit_shards(d, arg_str(&q, "location"), 0, &rep, &err);
        } else if (strcmp(q.verb, "reload") == 0) {
            tb_notify_reloading();
            rc = reload_manifest(d, d->cfg->manifest, &rep, &err);
            tb_notify_ready();
        } else {
            rc = tb_err_set(&err, "unknown verb '%s' (status, pause, resume, stop, shards.list, "
                                  "shards.set, shards.add, shards.remove, reload)",
                            q.verb);
        }
    }
    zmq_msg_close(&msg);
    rep.ok = rc == 0;
    if (rc != 0) {
        rep.error = strdup(err.msg[0] ? err.msg : "failed");
        tb_kvmap_free(&rep.result);
        tb_warn("control: %s: %s", q.verb[0] ? q.verb : "(bad request)", rep.error);
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (tb_proto_encode_reply(&pk, &rep, &err) < 0) {
        tb_reply r2 = {.id = rep.id, .ok = false, .error = err.msg};
        msgpack_sbuffer_clear(&sb);
        tb_proto_encode_reply(&pk, &r2, &err);
    }
    zmq_send(d->ctl, sb.data, sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
    tb_reply_free(&rep);
    tb_request_free(&q);
}

/* ------------------------------------------------------------ setup */

static void *make_socket(pfd_daemon *d, int type, const char *ep, int lock_idx, int *busy,
                         tb_err *err) {
    void *s = zmq_socket(d->zctx, type);
    if (!s) {
        tb_err_set(err, "zmq_socket: %s", zmq_strerror(errno));
        return NULL;
    }
    int64_t max = TB_PROTO_MAX_MSG;
    int one = 1, linger = 0;
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (type == ZMQ_ROUTER) zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    tb_curve curve = {{0}, {0}};
    snprintf(curve.secret_key_file, sizeof curve.secret_key_file, "%s",
             d->cfg->curve_secret_key_file);
    snprintf(curve.allowed_dir, sizeof curve.allowed_dir, "%s", d->cfg->curve_allowed_keys_dir);
    int rc = tb_endpoint_bind(s, ep, &curve, 0, &d->lock_fds[lock_idx], err);
    if (rc < 0) {
        *busy = rc == -2;
        zmq_close(s);
        return NULL;
    }
    return s;
}

static int timeline_load(const char *dir, uint64_t *geom, uint64_t *start) {
    char p[4400];
    snprintf(p, sizeof p, "%s/ring.json", dir);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    if (!j) return -1;
    const char *g = json_string_value(json_object_get(j, "geometry"));
    json_t *st = json_object_get(j, "start_generation");
    int rc = g && json_is_integer(st) ? 0 : -1;
    if (rc == 0) {
        *geom = strtoull(g, NULL, 16);
        *start = (uint64_t)json_integer_value(st);
    }
    json_decref(j);
    return rc;
}

static int timeline_store(const char *dir, uint64_t geom, uint64_t start, tb_err *err) {
    char p[4400], t[4500], g[32];
    snprintf(p, sizeof p, "%s/ring.json", dir);
    snprintf(t, sizeof t, "%s.tmp", p);
    snprintf(g, sizeof g, "%016llx", (unsigned long long)geom);
    json_t *j = json_pack("{s:s, s:I}", "geometry", g, "start_generation", (json_int_t)start);
    int rc = json_dump_file(j, t, JSON_INDENT(1));
    json_decref(j);
    if (rc != 0 || rename(t, p) != 0) return tb_err_set(err, "%s: %s", p, strerror(errno));
    return 0;
}

/* Exit status when another daemon holds a lock (EX_TEMPFAIL). */
enum { PFD_EX_IN_USE = 75 };

static int setup(pfd_daemon *d, int *code, tb_err *err) {
    const pfd_config *c = d->cfg;
    size_t shm_len = sizeof(pfd_worker_shm) * MAX_WORKERS;
    d->exe_fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (d->exe_fd < 0) return tb_err_set(err, "/proc/self/exe (to start workers): %s", strerror(errno));
    d->shm_fd = memfd_create("tb-prefetchd-workers", MFD_CLOEXEC);
    if (d->shm_fd < 0 || ftruncate(d->shm_fd, (off_t)shm_len) < 0)
        return tb_err_set(err, "worker status memfd: %s", strerror(errno));
    d->shm = mmap(NULL, shm_len, PROT_READ | PROT_WRITE, MAP_SHARED, d->shm_fd, 0);
    if (d->shm == MAP_FAILED) {
        d->shm = NULL;
        return tb_err_set(err, "mmap worker status: %s", strerror(errno));
    }
    char lp[4200];
    snprintf(lp, sizeof lp, "%s.lock", c->ring_path);
    /* a restarted daemon may wait a moment for the workers of a killed one to die */
    d->lock_fds[0] = tb_lock_acquire(lp, 3000, err);
    if (d->lock_fds[0] < 0) {
        if (d->lock_fds[0] == -2) *code = PFD_EX_IN_USE;
        d->lock_fds[0] = -1;
        return -1;
    }
    if (path_dir_ok(c->state_dir, err) < 0) return tb_err_wrap(err, "paths.state_dir");
    d->zctx = zmq_ctx_new();
    int tcp = strncmp(c->feed_endpoint, "tcp://", 6) == 0 ||
              strncmp(c->control_endpoint, "tcp://", 6) == 0 ||
              strncmp(c->metrics_endpoint, "tcp://", 6) == 0;
    if (tcp && !(d->zap = tb_zap_start(d->zctx, c->curve_allowed_keys_dir, err))) return -1;
    int busy = 0;
    if (!(d->feed = make_socket(d, ZMQ_ROUTER, c->feed_endpoint, 1, &busy, err)) ||
        !(d->ctl = make_socket(d, ZMQ_REP, c->control_endpoint, 2, &busy, err)) ||
        !(d->pub = make_socket(d, ZMQ_PUB, c->metrics_endpoint, 3, &busy, err))) {
        if (busy) *code = PFD_EX_IN_USE;
        return -1;
    }
    *code = TB_EX_CONFIG;
    int hwm = 100;
    zmq_setsockopt(d->pub, ZMQ_SNDHWM, &hwm, sizeof hwm);

    if (tb_manifest_history_load(&d->hist, c->state_dir, err) < 0) return -1;
    if (pfd_swaps_load(&d->swaps, &d->nswaps, c->state_dir, err) < 0) return -1;
    if (pfd_ring_open(&d->ring, c->ring_path, (uint64_t)c->ring_slots, pfd_payload_cap(c),
                      TB_STREAM_CURSOR_BYTES, pfd_geometry(c), err) < 0)
        return -1;
    uint64_t bad[16];
    int bad_acked[16];
    int nbad = d->ring.reset ? 0 : pfd_ring_recover(&d->ring, bad, bad_acked, 16);
    for (int i = 0; i < nbad && i < 16; i++) {
        tb_warn("ring: slot of batch %llu failed its crc; it will be rebuilt from the cursor "
                "before it",
                (unsigned long long)bad[i]);
        if (bad_acked[i] && d->npreacked < MAX_PREACKED) d->preacked[d->npreacked++] = bad[i];
    }
    d->corrupt_slots += (uint64_t)nbad;

    /* the manifest file: a new generation when it changed */
    tb_manifest m;
    if (tb_manifest_load(&m, c->manifest, err) < 0) return tb_err_wrap(err, "data.manifest");
    uint64_t gen = 0;
    const tb_manifest *latest = tb_manifest_history_latest(&d->hist);
    uint64_t prev = latest ? latest->generation : 0;
    int rc = m.n ? tb_manifest_history_commit(&d->hist, c->state_dir, &m, &gen, err)
                 : tb_err_set(err, "data.manifest: %s lists no shards", c->manifest);
    tb_manifest_free(&m);
    if (rc < 0) return -1;
    /* state_dir/ring.json names the timeline the swap points belong to: the ring
     * geometry and the generation its stream started with. A lost ring file (tmpfs after
     * a reboot) with the same geometry keeps the timeline; another geometry starts anew. */
    uint64_t tl_geom = 0, tl_start = 0;
    int have_tl = timeline_load(c->state_dir, &tl_geom, &tl_start) == 0;
    int same_tl = have_tl && tl_geom == pfd_geometry(c) && tb_manifest_history_get(&d->hist, tl_start);
    if (d->ring.reset || prev == 0) {
        uint64_t start = same_tl && prev != 0 ? tl_start : gen;
        uint8_t mark[PFD_START_MARK_BYTES];
        for (int i = 0; i < 8; i++) mark[i] = (uint8_t)(start >> (8 * i));
        tb_notice("ring: new ring (%llu slots of %llu bytes); stream starts at generation %llu%s",
                  (unsigned long long)d->ring.nslots, (unsigned long long)d->ring.slot_size,
                  (unsigned long long)start,
                  start != gen ? " (the timeline in the state dir continues)" : "");
        if (pfd_ring_reset_to(&d->ring, 0, mark, sizeof mark, err) < 0) return -1;
        if (start == gen) {
            if (d->nswaps) {
                char from[4400], to[4500];
                snprintf(from, sizeof from, "%s/swaps.json", c->state_dir);
                snprintf(to, sizeof to, "%s/swaps.json.old", c->state_dir);
                if (rename(from, to) == 0)
                    tb_notice("ring: a new timeline; old swap points kept in %s", to);
            }
            free(d->swaps);
            d->swaps = NULL;
            d->nswaps = 0;
            if (pfd_swaps_store(d->swaps, 0, c->state_dir, err) < 0) return -1;
            if (timeline_store(c->state_dir, pfd_geometry(c), gen, err) < 0) return -1;
            d->cur_gen = gen;
        } else {
            d->cur_gen = d->nswaps ? d->swaps[d->nswaps - 1].generation : start;
            if (gen != d->cur_gen) {
                uint64_t at;
                if (record_swap(d, gen, 1, &at, err) < 0) return -1;
            }
        }
    } else {
        if (!same_tl && timeline_store(c->state_dir, pfd_geometry(c),
                                       d->nswaps ? d->swaps[0].generation : gen, err) < 0)
            return -1;
        d->cur_gen = d->nswaps ? d->swaps[d->nswaps - 1].generation : 0;
        if (d->cur_gen == 0) {
            /* the generation the ring's stream started with */
            uint64_t len = 0;
            const uint8_t *bc = pfd_ring_base_cursor(&d->ring, &len);
            tb_stream_cursor cc;
            if (bc && len == TB_STREAM_CURSOR_BYTES &&
                tb_stream_cursor_deserialize(&cc, bc, len, err) == 0)
                d->cur_gen = cc.generation;
            else if (bc && len == PFD_START_MARK_BYTES)
                for (int i = 0; i < 8; i++) d->cur_gen |= (uint64_t)bc[i] << (8 * i);
        }
        if (gen != d->cur_gen) {
            uint64_t at;
            if (record_swap(d, gen, 0, &at, err) < 0) return -1;
        }
    }
    return 0;
}

static void preacked_check(pfd_daemon *d) {
    for (int i = 0; i < d->npreacked;) {
        uint64_t s = d->preacked[i];
        pfd_slot_hdr *h = pfd_ring_slot(&d->ring, s);
        if (s < pfd_ring_base(&d->ring)) {
            d->preacked[i] = d->preacked[--d->npreacked];
        } else if (h->seq == s && pfd_slot_state_get(h) == PFD_SLOT_FILLED) {
            mark_acked(d, s);
            d->preacked[i] = d->preacked[--d->npreacked];
        } else {
            i++;
        }
    }
}

static void shutdown_all(pfd_daemon *d) {
    for (int i = 0; i < MAX_WORKERS; i++)
        if (d->w[i].pid > 0) kill(d->w[i].pid, SIGKILL);
    for (int i = 0; i < MAX_WORKERS; i++)
        if (d->w[i].pid > 0) {
            while (waitpid(d->w[i].pid, NULL, 0) < 0 && errno == EINTR) {
            }
            close(d->w[i].sock);
            reclaim(d, d->w[i].pid);
            d->w[i].pid = 0;
        }
    if (d->feed) zmq_close(d->feed);
    if (d->ctl) zmq_close(d->ctl);
    if (d->pub) zmq_close(d->pub);
    tb_zap_stop(d->zap);
    if (d->zctx) zmq_ctx_term(d->zctx);
    if (d->ring.map) {
        msync(d->ring.map, d->ring.map_len, MS_SYNC);
        pfd_ring_close(&d->ring);
    }
    tb_manifest_history_free(&d->hist);
    free(d->swaps);
    free_world(d);
    for (int k = 0; k < 4; k++)
        if (d->lock_fds[k] >= 0) close(d->lock_fds[k]);
    if (d->shm_fd >= 0) close(d->shm_fd);
    if (d->exe_fd >= 0) close(d->exe_fd);
}

int pfd_worker_exec_main(const pfd_config *cfg, const char *spec) {
    static const tb_log_level lv[] = {TB_LOG_ERROR, TB_LOG_WARN, TB_LOG_NOTICE, TB_LOG_INFO,
                                      TB_LOG_DEBUG};
    tb_log_init("tb-prefetchd", lv[cfg->log_level >= 0 && cfg->log_level < 5 ? cfg->log_level : 3]);
    int sock, shm_fd, idx, master;
    char tail;
    if (sscanf(spec, "%d,%d,%d,%d%c", &sock, &shm_fd, &idx, &master, &tail) != 4 || idx < 0 ||
        idx >= MAX_WORKERS) {
        tb_error("--worker %s: not the master's SOCK,SHM,INDEX,PID", spec);
        return TB_EX_USAGE;
    }
    if (getppid() != (pid_t)master) return 0; /* the master is already gone */
    size_t shm_len = sizeof(pfd_worker_shm) * MAX_WORKERS;
    pfd_worker_shm *shm = mmap(NULL, shm_len, PROT_READ | PROT_WRITE, MAP_SHARED, shm_fd, 0);
    if (shm == MAP_FAILED) {
        tb_error("worker: mmap status memfd %d: %s", shm_fd, strerror(errno));
        return TB_EX_SOFTWARE;
    }
    close(shm_fd);
    fcntl(sock, F_SETFD, FD_CLOEXEC);
    pfd_worker_main(cfg, sock, &shm[idx]);
}

int pfd_daemon_run(const pfd_config *cfg) {
    static const tb_log_level lv[] = {TB_LOG_ERROR, TB_LOG_WARN, TB_LOG_NOTICE, TB_LOG_INFO,
                                      TB_LOG_DEBUG};
    tb_log_init("tb-prefetchd", lv[cfg->log_level >= 0 && cfg->log_level < 5 ? cfg->log_level : 3]);
    pfd_daemon *d = calloc(1, sizeof *d);
    if (!d) return TB_EX_SOFTWARE;
    d->cfg = cfg;
    d->active = -1;
    for (int k = 0; k < 4; k++) d->lock_fds[k] = -1;
    d->shm_fd = d->exe_fd = -1;
    if (tb_signal_install() < 0) {
        tb_error("signals: %s", strerror(errno));
        free(d);
        return TB_EX_SOFTWARE;
    }
    tb_err err;
    int code = TB_EX_CONFIG;
    if (setup(d, &code, &err) < 0) {
        tb_error("%s", err.msg);
        shutdown_all(d);
        free(d);
        return code;
    }
    supervise(d);
    tb_notify_ready();
    tb_notice("ready: feed %s, control %s, metrics %s, ring %s (%llu slots), generation %llu, "
              "base batch %llu",
              cfg->feed_endpoint, cfg->control_endpoint, cfg->metrics_endpoint, cfg->ring_path,
              (unsigned long long)d->ring.nslots, (unsigned long long)d->cur_gen,
              (unsigned long long)pfd_ring_base(&d->ring));
    uint64_t wd_us = cfg->watchdog ? tb_notify_watchdog_usec() : 0;
    uint64_t wd_every = wd_us ? wd_us * 1000 / 4 : 0, next_wd = 0; /* ns; systemd wants < 1/2 */
    uint64_t metrics_every = (uint64_t)cfg->metrics_interval_ms * 1000000ull;
    uint64_t next_metrics = tb_clock_mono_ns() + metrics_every;
    uint64_t stop_deadline = 0;
    while (1) {
        if (tb_signals.term) {
            tb_signals.term = 0;
            d->stopping = 1;
        }
        if (d->stopping == 1) {
            tb_notice("stopping: draining sends, then exit");
            tb_notify_stopping();
            d->stopping = 2;
            stop_deadline = tb_clock_mono_ns() + (uint64_t)cfg->stop_timeout_ms * 1000000ull;
            /* workers stop at once: their unfinished slot is rebuilt on the next start */
            for (int i = 0; i < MAX_WORKERS; i++)
                if (d->w[i].pid > 0) kill(d->w[i].pid, SIGKILL);
            break;
        }
        if (tb_signals.hup) {
            tb_signals.hup = 0;
            tb_notify_reloading();
            tb_notice("SIGHUP: re-reading %s", cfg->manifest);
            tb_reply rep = {0};
            if (reload_manifest(d, cfg->manifest, &rep, &err) < 0)
                tb_error("reload: %s (keeping generation %llu)", err.msg,
                         (unsigned long long)d->cur_gen);
            tb_reply_free(&rep);
            tb_notify_ready();
        }
        if (tb_signals.chld) {
            tb_signals.chld = 0;
            reap(d);
        }
        supervise(d);
        preacked_check(d);
        send_ready(d);

        zmq_pollitem_t items[2 + MAX_WORKERS];
        int n = 0;
        items[n++] = (zmq_pollitem_t){d->feed, 0, ZMQ_POLLIN, 0};
        items[n++] = (zmq_pollitem_t){d->ctl, 0, ZMQ_POLLIN, 0};
        int widx[MAX_WORKERS];
        for (int i = 0; i < MAX_WORKERS; i++)
            if (d->w[i].pid > 0) {
                widx[n - 2] = i;
                items[n++] = (zmq_pollitem_t){NULL, d->w[i].sock, ZMQ_POLLIN, 0};
            }
        uint64_t now = tb_clock_mono_ns();
        long timeout = 100;
        if (next_metrics > now && (long)((next_metrics - now) / 1000000) < timeout)
            timeout = (long)((next_metrics - now) / 1000000);
        if (wd_every && next_wd > now && (long)((next_wd - now) / 1000000) < timeout)
            timeout = (long)((next_wd - now) / 1000000);
        int rc = zmq_poll(items, n, timeout);
        if (rc < 0 && errno != EINTR) {
            tb_error("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (rc > 0) {
            if (items[0].revents & ZMQ_POLLIN) on_feed(d);
            if (items[1].revents & ZMQ_POLLIN) on_control(d);
            for (int k = 2; k < n; k++) {
                if (!(items[k].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) continue;
                uint64_t notes[64];
                ssize_t r = read(items[k].fd, notes, sizeof notes);
                (void)r; /* the ring is the truth: the notes only wake us up */
                (void)widx;
            }
        }
        now = tb_clock_mono_ns();
        if (now >= next_metrics) {
            tick_metrics(d);
            next_metrics = now + metrics_every;
        }
        if (wd_every && now >= next_wd) {
            tb_notify_watchdog();
            next_wd = now + wd_every;
        }
    }
    /* drain: deliver what is ready for a moment, answer control, then exit */
    while (stop_deadline && tb_clock_mono_ns() < stop_deadline) {
        zmq_pollitem_t items[2] = {{d->feed, 0, ZMQ_POLLIN, 0}, {d->ctl, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, 50);
        if (rc > 0) {
            if (items[0].revents & ZMQ_POLLIN) on_feed(d);
            if (items[1].revents & ZMQ_POLLIN) on_control(d);
        }
        /* in-flight sends are already queued in libzmq; nothing new is produced */
        int pending = 0;
        snapshot s;
        take_snapshot(d, &s);
        pending = (int)s.sent;
        if (pending == 0 || tb_signals.term) break;
    }
    reap(d);
    shutdown_all(d);
    tb_notice("stopped");
    free(d);
    return 0;
}
