/* The batch ring: a file of fixed-size slots (tmpfs, mmap MAP_SHARED) written by worker
 * processes and read by the master. It survives a restart of the daemon.
 *
 * Layout: one 4 KiB header page, two base-cursor areas, then nslots slots. Batch seq k
 * lives in slot k % nslots. A slot holds one encoded BATCH message (the bytes sent on the
 * feed) followed by its cursor_after (a tb_stream_cursor serialization, or the 8-byte
 * "start of generation G" marker), covered by a crc32c.
 *
 * Slot state machine (one writer per transition, so no locks):
 *   FREE    -> FILLING  worker claims the slot for seq k (only when k < base + nslots)
 *   FILLING -> FILLED   worker, after payload + crc are written (release store)
 *   FILLING -> FREE     master, after the filling worker died (or at ring open)
 *   FILLED  -> SENT     master, BATCH sent to rank k % world
 *   SENT    -> FILLED   master, the rank reconnected without acknowledging k
 *   SENT    -> ACKED    master, ACK {k}
 *   ACKED   -> FREE     master, when base passes k (every seq < base is acknowledged);
 *                       the cursor after base-1 is saved in a base area first.
 *   FILLED/SENT -> FREE master, crc mismatch at open (regenerated from the cursor before)
 */
#ifndef PFD_RING_H
#define PFD_RING_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "tb_err.h"

#define PFD_RING_MAGIC 0x31474e4952425454ull /* "TTBRING1" */
#define PFD_SLOT_MAGIC 0x544f4c53u           /* "SLOT" */

typedef enum pfd_slot_state {
    PFD_SLOT_FREE = 0,
    PFD_SLOT_FILLING = 1,
    PFD_SLOT_FILLED = 2,
    PFD_SLOT_SENT = 3,
    PFD_SLOT_ACKED = 4,
} pfd_slot_state;

typedef struct pfd_slot_hdr {
    uint32_t magic;
    _Atomic uint32_t state;
    uint64_t seq;
    uint32_t crc;         /* crc32c of seq, lengths, payload and cursor bytes */
    int32_t owner;        /* pid of the filling worker */
    uint64_t payload_len; /* encoded BATCH bytes */
    uint64_t cursor_len;  /* cursor blob bytes, right after the payload */
    uint64_t samples;     /* B (for status) */
    uint64_t pad[2];
} pfd_slot_hdr; /* 64 bytes */

typedef struct pfd_ring_file_hdr {
    uint64_t magic;
    uint64_t geometry; /* hash of what makes batches (B, T, seed, ...) + sizes */
    uint64_t nslots;
    uint64_t slot_size;
    uint64_t cursor_cap;
    _Atomic uint64_t base; /* every seq < base is acknowledged */
    uint64_t pad[2];
} pfd_ring_file_hdr;

typedef struct pfd_base_area {
    uint64_t base; /* this area holds the cursor after batch base-1 (base 0: start) */
    uint64_t len;
    uint32_t crc;
    uint32_t valid;
    uint64_t serial; /* the valid area with the highest serial for the current base wins */
} pfd_base_area; /* followed by cursor_cap bytes */

typedef struct pfd_ring {
    int fd;
    uint8_t *map;
    size_t map_len;
    pfd_ring_file_hdr *hdr;
    uint64_t nslots, slot_size, cursor_cap, payload_cap;
    int reset; /* set by pfd_ring_open when the file was (re)initialised */
} pfd_ring;

/* Opens or creates the ring. payload_cap: bytes of the largest BATCH message; cursor_cap:
 * bytes of the largest cursor blob. When the file's geometry differs (or it is garbage),
 * it is reinitialised and ring->reset is set. */
int pfd_ring_open(pfd_ring *ring, const char *path, uint64_t nslots, uint64_t payload_cap,
                  uint64_t cursor_cap, uint64_t geometry, tb_err *err);
void pfd_ring_close(pfd_ring *ring);

pfd_slot_hdr *pfd_ring_slot(const pfd_ring *ring, uint64_t seq);
uint8_t *pfd_ring_payload(const pfd_ring *ring, uint64_t seq);
static inline uint32_t pfd_slot_state_get(const pfd_slot_hdr *h) {
    return atomic_load_explicit(&((pfd_slot_hdr *)h)->state, memory_order_acquire);
}
static inline void pfd_slot_state_set(pfd_slot_hdr *h, uint32_t s) {
    atomic_store_explicit(&h->state, s, memory_order_release);
}
/* crc of a slot as written by pfd_ring_seal. */
uint32_t pfd_ring_slot_crc(const pfd_ring *ring, uint64_t seq);
/* Worker side: computes the crc, then FILLING -> FILLED. */
void pfd_ring_seal(pfd_ring *ring, uint64_t seq, uint64_t payload_len, uint64_t cursor_len,
                   uint64_t samples);
/* A slot is valid for seq when it has that seq, a state of FILLED/SENT/ACKED and a good crc. */
int pfd_ring_slot_valid(const pfd_ring *ring, uint64_t seq);

/* At open (no worker alive): FILLING -> FREE, SENT -> FILLED, bad crc -> FREE, then base
 * advanced over ACKED slots. Returns the number of corrupt slots found; their seqs go to
 * corrupt_seqs and whether each had been acknowledged (so its regenerated copy must not be
 * sent again) to corrupt_acked. */
int pfd_ring_recover(pfd_ring *ring, uint64_t *corrupt_seqs, int *corrupt_acked,
                     int max_corrupt);

uint64_t pfd_ring_base(const pfd_ring *ring);
/* Cursor blob after batch base-1; *len 0 when base is 0 and nothing was stored (start of
 * the stream). Returns a pointer into the map or NULL when no valid area exists. */
const uint8_t *pfd_ring_base_cursor(const pfd_ring *ring, uint64_t *len);
/* Advances base over contiguous ACKED slots, saving the cursor of the last one first, and
 * frees them. Returns how many slots were freed. */
int pfd_ring_advance(pfd_ring *ring);
/* Drops everything and sets base with its cursor (a rewind to a trainer's cursor). */
int pfd_ring_reset_to(pfd_ring *ring, uint64_t base, const uint8_t *cursor, uint64_t len,
                      tb_err *err);

#endif
