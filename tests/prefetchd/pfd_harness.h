/* Test harness for tb-prefetchd: a temp tree with config and shards, the daemon as a child
 * process, a control client, a feed consumer (DEALER) and the planned stream (pf-data's
 * tb_stream over the same manifest history and config) to compare against. */
#ifndef PFD_HARNESS_H
#define PFD_HARNESS_H
#include <stdint.h>
#include <sys/types.h>

#include "pfd_config.h"
#include "pfd.h"
#include "tb_proto_ctl.h"
#include "tb_proto_feed.h"

typedef struct pfdt {
    char dir[256];
    char cfg_path[300], manifest[300], log[300], spm[300];
    char feed[300], ctl[300], pub[300];
    pid_t pid;
    void *zctx;
    int log_fd;
} pfdt;

/* Makes a temp tree (mode 0755) with the fixture's spm.model and a manifest naming the
 * fixture's gzip shard; writes pf.yaml with small sizes plus `extra` YAML lines appended
 * under their own sections (may be NULL). Returns 0 or -1 (message on stderr; the test
 * then skips when the fixture is missing). */
int pfdt_init(pfdt *t, const char *name);
/* (Re)writes pf.yaml: the defaults of pfdt_init with these "key: value" settings in YAML
 * form, e.g. "workers:\n  processes: 2\n". */
int pfdt_write_config(pfdt *t, const char *extra_yaml);
int pfdt_write_manifest(pfdt *t, const char *text);
const char *pfdt_fixture(const char *file); /* path under the fixture dir */
/* Starts tb-prefetchd -c pf.yaml, stderr+stdout appended to log; waits until `status`
 * answers (up to wait_ms). Returns 0, or -1 if it exited or did not answer. */
int pfdt_start(pfdt *t, int wait_ms);
/* Spawns without waiting; returns the pid. */
pid_t pfdt_spawn(pfdt *t, char *const extra_argv[]);
/* SIGKILL + waitpid. */
void pfdt_kill9(pfdt *t);
/* `stop` verb (or SIGTERM when that fails), then waitpid; returns the exit status or -1. */
int pfdt_stop(pfdt *t);
/* A control request; *rep must be freed. Returns 0 when a reply came (ok or not). */
int pfdt_request(pfdt *t, const char *verb, const char *arg_key, const char *arg_val,
                 tb_reply *rep, int timeout_ms);
int64_t pfdt_status_int(pfdt *t, const char *key);
/* Non-zero when the log contains s. */
int pfdt_log_has(pfdt *t, const char *s);
/* Prints the last lines of the daemon's log to stderr (for a failing test). */
void pfdt_dump_log(pfdt *t, int last_lines);
void pfdt_cleanup(pfdt *t);

/* The consumer: one DEALER, rank 0 of world 1 unless set. */
typedef struct pfdt_consumer {
    void *sock;
    uint32_t rank, world;
    int have_cursor;
    uint8_t cursor[TB_STREAM_CURSOR_BYTES]; /* after the last applied batch */
    uint64_t next_seq;                       /* expected next seq for this rank */
} pfdt_consumer;

int pfdt_consumer_open(pfdt *t, pfdt_consumer *c, uint32_t rank, uint32_t world);
void pfdt_consumer_close(pfdt_consumer *c);
int pfdt_consumer_hello(pfdt_consumer *c, int with_cursor, uint32_t credit);
int pfdt_consumer_credit(pfdt_consumer *c, uint32_t n);
/* 1 = a batch decoded into *b (free with tb_batch_free), 0 = timeout, -1 = bad message. */
int pfdt_consumer_recv(pfdt_consumer *c, tb_batch *b, int timeout_ms);
/* Records b as applied (cursor) and ACKs it. */
int pfdt_consumer_apply(pfdt_consumer *c, const tb_batch *b);

/* The planned stream, generated in this process (threads = 1). */
typedef struct pfdt_plan {
    tb_stream *s;
    tb_spm *spm;
    tb_manifest_history hist;
    pfd_swap *swaps;
    size_t nswaps;
    uint64_t gen;
    tb_stream_batch b;
    pfd_config cfg;
} pfdt_plan;

/* Opens the plan from the daemon's config and state dir (manifest history and swap
 * points, read now: call after the daemon committed them). */
int pfdt_plan_open(pfdt *t, pfdt_plan *p);
/* Re-reads the swap points (after a live swap). */
int pfdt_plan_reload_swaps(pfdt *t, pfdt_plan *p);
/* Next planned batch (p->b). Returns 1, or -1. */
int pfdt_plan_next(pfdt_plan *p);
/* 0 when the received batch equals the planned one bit for bit (ids, labels, mask,
 * provenance, seq, cursor); else -1 with a message on stderr. */
int pfdt_plan_compare(const pfdt_plan *p, const tb_batch *got);
void pfdt_plan_close(pfdt_plan *p);



/* Receives and applies batches (world 1) until n more were applied, or idle_ms passes
 * without a batch. Each batch must be the next one of the plan, bit for bit; a seq below
 * the next expected one adds to *dups (not applied, not acked); a gap or a mismatch fails.
 * After each applied batch one credit is returned. Returns the number applied or -1. */
int pfdt_consume(pfdt_consumer *c, pfdt_plan *p, int n, int idle_ms, int *dups);

/* Writes a JSONL shard of n documents of synthetic Spanish-like text (field "text"),
 * deterministic in seed; returns 0. */
int pfdt_write_jsonl_shard(const char *path, int n, uint32_t seed);
#endif
