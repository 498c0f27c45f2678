/* tb-prefetchd internals shared by the master (daemon.c) and the workers (worker.c).
 *
 * Exactly-once, in one paragraph (docs/PREFETCHD.md has the long form): batch seq k is a
 * pure function of (manifest history, swap points, seed, k); a worker writes batch k
 * only into slot k % nslots, marks it FILLED only after its payload and crc are complete,
 * and the master only ever sends FILLED slots, each to rank k % world, and frees a slot
 * only after its ACK (base advance). A dead worker's FILLING slot is freed and the next
 * worker starts at the first seq whose slot is not valid, from the cursor stored in the
 * slot before it (or in the ring's base area), so it rebuilds exactly the missing
 * batches. Swaps and rewinds stop the producing worker first, so they use the same path. */
#ifndef PFD_H
#define PFD_H
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "http_source.h"
#include "pfd_config.h"
#include "ring.h"
#include "stream.h"

/* Cursor blobs in the ring: a tb_stream_cursor serialization (TB_STREAM_CURSOR_BYTES) or
 * this 8-byte marker "start of the stream at generation G". */
enum { PFD_START_MARK_BYTES = 8 };

typedef enum pfd_worker_state {
    PFD_W_STARTING = 0, /* loading the tokenizer */
    PFD_W_STANDBY,      /* loaded; waiting for a start message */
    PFD_W_PRODUCING,    /* inside tb_stream_next_batch */
    PFD_W_RING_FULL,    /* waiting for a free slot (consumers behind) */
    PFD_W_PAUSED,
    PFD_W_ENDED,        /* stream ended (max epochs) */
    PFD_W_FAILED,       /* see error */
} pfd_worker_state;

/* Shared (MAP_SHARED anonymous) status of one worker, read by the master for metrics. */
typedef struct pfd_worker_shm {
    _Atomic int state;
    _Atomic uint64_t version; /* seqlock: odd while the worker writes below */
    tb_stream_stats stats;
    pfd_http_stats http;
    tb_stream_cursor cursor; /* of the next batch */
    uint64_t busy_ns;        /* inside next_batch (completed calls) */
    uint64_t net_wait_ns;    /* inside remote reads (completed calls) */
    _Atomic uint64_t busy_since; /* CLOCK_MONOTONIC ns of the call in progress, 0: none */
    _Atomic uint64_t net_since;
    uint64_t bad_seen;       /* bad shard/document events (for the last-bad line) */
    char last_bad[256];
    char error[512];
} pfd_worker_shm;

/* Master -> worker messages on the socketpair. */
enum {
    PFD_MSG_START = 'S', /* followed by pfd_start */
    PFD_MSG_PAUSE = 'P',
    PFD_MSG_RESUME = 'R',
    PFD_MSG_WAKE = 'W',  /* slots were freed */
};

typedef struct pfd_start {
    uint64_t start_seq;
    uint32_t paused;
    uint32_t cursor_len; /* TB_STREAM_CURSOR_BYTES or PFD_START_MARK_BYTES */
    uint8_t cursor[TB_STREAM_CURSOR_BYTES];
} pfd_start;

/* Ring geometry: slot payload capacity for a B x T batch (ids, labels, mask, provenance,
 * cursor, msgpack framing). */
uint64_t pfd_payload_cap(const pfd_config *cfg);
/* Hash of every setting that changes the bytes of a batch, plus the ring sizes. */
uint64_t pfd_geometry(const pfd_config *cfg);
void pfd_stream_config(tb_stream_config *sc, const pfd_config *cfg);

/* Swap points (state_dir/swaps.json): generation g begins at the next document boundary
 * after the cursor of batch seq. */
typedef struct pfd_swap {
    uint64_t seq, generation;
} pfd_swap;
int pfd_swaps_load(pfd_swap **out, size_t *n, const char *state_dir, tb_err *err);
int pfd_swaps_store(const pfd_swap *s, size_t n, const char *state_dir, tb_err *err);

/* The worker process body: never returns. `sock` is its end of the socketpair. */
void pfd_worker_main(const pfd_config *cfg, int sock, pfd_worker_shm *shm) __attribute__((noreturn));

/* Exit statuses of a worker. */
enum { PFD_WORKER_EX_FATAL = 78, PFD_WORKER_EX_ERROR = 70 };

#endif
