#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tb_crc32c.h"

#define PAGE 4096u

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint64_t area_size(uint64_t cursor_cap) {
    return align_up(sizeof(pfd_base_area) + cursor_cap, 64);
}

static pfd_base_area *base_area(const pfd_ring *r, int i) {
    return (pfd_base_area *)(r->map + PAGE + (uint64_t)i * area_size(r->cursor_cap));
}

static uint64_t slots_offset(uint64_t cursor_cap) {
    return align_up(PAGE + 2 * area_size(cursor_cap), PAGE);
}

pfd_slot_hdr *pfd_ring_slot(const pfd_ring *r, uint64_t seq) {
    return (pfd_slot_hdr *)(r->map + slots_offset(r->cursor_cap) + (seq % r->nslots) * r->slot_size);
}

uint8_t *pfd_ring_payload(const pfd_ring *r, uint64_t seq) {
    return (uint8_t *)pfd_ring_slot(r, seq) + sizeof(pfd_slot_hdr);
}

static uint32_t area_crc(const pfd_base_area *a) {
    uint32_t crc = tb_crc32c(0, &a->base, sizeof a->base);
    crc = tb_crc32c(crc, &a->len, sizeof a->len);
    crc = tb_crc32c(crc, &a->serial, sizeof a->serial);
    return tb_crc32c(crc, (const uint8_t *)(a + 1), (size_t)a->len);
}

static void ring_init(pfd_ring *r, uint64_t geometry) {
    memset(r->map, 0, slots_offset(r->cursor_cap));
    r->hdr->geometry = geometry;
    r->hdr->nslots = r->nslots;
    r->hdr->slot_size = r->slot_size;
    r->hdr->cursor_cap = r->cursor_cap;
    atomic_store(&r->hdr->base, 0);
    for (uint64_t i = 0; i < r->nslots; i++) {
        pfd_slot_hdr *h = pfd_ring_slot(r, i);
        memset(h, 0, sizeof *h);
        h->magic = PFD_SLOT_MAGIC;
    }
    pfd_base_area *a = base_area(r, 0);
    a->base = 0;
    a->len = 0;
    a->crc = area_crc(a);
    a->valid = 1;
    r->hdr->magic = PFD_RING_MAGIC;
    msync(r->map, slots_offset(r->cursor_cap), MS_ASYNC);
}

int pfd_ring_open(pfd_ring *r, const char *path, uint64_t nslots, uint64_t payload_cap,
                  uint64_t cursor_cap, uint64_t geometry, tb_err *err) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->nslots = nslots;
    r->cursor_cap = align_up(cursor_cap, 8);
    r->payload_cap = payload_cap;
    r->slot_size = align_up(sizeof(pfd_slot_hdr) + payload_cap + r->cursor_cap, PAGE);
    uint64_t total = slots_offset(r->cursor_cap) + nslots * r->slot_size;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return tb_err_set(err, "ring %s: open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return tb_err_set(err, "ring %s: fstat: %s", path, strerror(errno));
    }
    int fresh = (uint64_t)st.st_size != total;
    if (fresh) {
        if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)total) < 0) {
            int e = errno;
            close(fd);
            return tb_err_set(err, "ring %s: resize to %llu bytes: %s", path,
                              (unsigned long long)total, strerror(e));
        }
    }
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        close(fd);
        return tb_err_set(err, "ring %s: mmap %llu bytes: %s", path, (unsigned long long)total,
                          strerror(e));
    }
    r->fd = fd;
    r->map = m;
    r->map_len = total;
    r->hdr = (pfd_ring_file_hdr *)m;
    if (!fresh && (r->hdr->magic != PFD_RING_MAGIC || r->hdr->geometry != geometry ||
                   r->hdr->nslots != nslots || r->hdr->slot_size != r->slot_size ||
                   r->hdr->cursor_cap != r->cursor_cap))
        fresh = 1;
    if (fresh) {
        ring_init(r, geometry);
        r->reset = 1;
    }
    return 0;
}

void pfd_ring_close(pfd_ring *r) {
    if (r->map) munmap(r->map, r->map_len);
    if (r->fd >= 0) close(r->fd);
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

uint32_t pfd_ring_slot_crc(const pfd_ring *r, uint64_t seq) {
    const pfd_slot_hdr *h = pfd_ring_slot(r, seq);
    uint64_t pl = h->payload_len, cl = h->cursor_len;
    if (pl > r->payload_cap || cl > r->cursor_cap) return ~0u ^ h->crc; /* never matches */
    uint32_t crc = tb_crc32c(0, &h->seq, sizeof h->seq);
    crc = tb_crc32c(crc, &h->payload_len, sizeof h->payload_len);
    crc = tb_crc32c(crc, &h->cursor_len, sizeof h->cursor_len);
    crc = tb_crc32c(crc, &h->samples, sizeof h->samples);
    return tb_crc32c(crc, (const uint8_t *)(h + 1), (size_t)(pl + cl));
}

void pfd_ring_seal(pfd_ring *r, uint64_t seq, uint64_t payload_len, uint64_t cursor_len,
                   uint64_t samples) {
    pfd_slot_hdr *h = pfd_ring_slot(r, seq);
    h->magic = PFD_SLOT_MAGIC;
    h->seq = seq;
    h->payload_len = payload_len;
    h->cursor_len = cursor_len;
    h->samples = samples;
    h->crc = pfd_ring_slot_crc(r, seq);
    pfd_slot_state_set(h, PFD_SLOT_FILLED);
}

int pfd_ring_slot_valid(const pfd_ring *r, uint64_t seq) {
    const pfd_slot_hdr *h = pfd_ring_slot(r, seq);
    uint32_t s = pfd_slot_state_get(h);
    if (s != PFD_SLOT_FILLED && s != PFD_SLOT_SENT && s != PFD_SLOT_ACKED) return 0;
    return h->magic == PFD_SLOT_MAGIC && h->seq == seq && h->crc == pfd_ring_slot_crc(r, seq);
}

uint64_t pfd_ring_base(const pfd_ring *r) { return atomic_load(&r->hdr->base); }

const uint8_t *pfd_ring_base_cursor(const pfd_ring *r, uint64_t *len) {
    uint64_t base = pfd_ring_base(r);
    const pfd_base_area *best = NULL;
    for (int i = 0; i < 2; i++) {
        const pfd_base_area *a = base_area(r, i);
        if (a->valid && a->base == base && a->len <= r->cursor_cap && a->crc == area_crc(a) &&
            (!best || a->serial > best->serial))
            best = a;
    }
    *len = best ? best->len : 0;
    return best ? (const uint8_t *)(best + 1) : NULL;
}

static int write_base(pfd_ring *r, uint64_t base, const uint8_t *cursor, uint64_t len) {
    if (len > r->cursor_cap) return -1;
    /* Write the area that does not hold the current base, then switch base. */
    uint64_t len0 = 0;
    const uint8_t *cur = pfd_ring_base_cursor(r, &len0);
    const pfd_base_area *a0 = base_area(r, 0), *a1 = base_area(r, 1);
    int target = cur == (const uint8_t *)(a0 + 1) ? 1 : 0;
    uint64_t serial = (a0->serial > a1->serial ? a0->serial : a1->serial) + 1;
    pfd_base_area *a = base_area(r, target);
    a->valid = 0;
    atomic_thread_fence(memory_order_release);
    a->base = base;
    a->len = len;
    a->serial = serial;
    if (len) memmove((uint8_t *)(a + 1), cursor, len);
    a->crc = area_crc(a);
    atomic_thread_fence(memory_order_release);
    a->valid = 1;
    atomic_store(&r->hdr->base, base);
    return 0;
}

int pfd_ring_advance(pfd_ring *r) {
    uint64_t base = pfd_ring_base(r), b = base;
    while (b < base + r->nslots) {
        pfd_slot_hdr *h = pfd_ring_slot(r, b);
        if (pfd_slot_state_get(h) != PFD_SLOT_ACKED || h->seq != b) break;
        b++;
    }
    if (b == base) return 0;
    pfd_slot_hdr *last = pfd_ring_slot(r, b - 1);
    if (write_base(r, b, (const uint8_t *)(last + 1) + last->payload_len, last->cursor_len) < 0)
        return 0;
    for (uint64_t s = base; s < b; s++) pfd_slot_state_set(pfd_ring_slot(r, s), PFD_SLOT_FREE);
    return (int)(b - base);
}

int pfd_ring_reset_to(pfd_ring *r, uint64_t base, const uint8_t *cursor, uint64_t len,
                      tb_err *err) {
    if (len > r->cursor_cap)
        return tb_err_set(err, "ring: cursor of %llu bytes > capacity %llu",
                          (unsigned long long)len, (unsigned long long)r->cursor_cap);
    for (uint64_t i = 0; i < r->nslots; i++) pfd_slot_state_set(pfd_ring_slot(r, i), PFD_SLOT_FREE);
    write_base(r, base, cursor, len);
    return 0;
}

int pfd_ring_recover(pfd_ring *r, uint64_t *corrupt, int *corrupt_acked, int max_corrupt) {
    uint64_t base = pfd_ring_base(r);
    int nbad = 0;
    for (uint64_t i = 0; i < r->nslots; i++) {
        pfd_slot_hdr *h = (pfd_slot_hdr *)(r->map + slots_offset(r->cursor_cap) + i * r->slot_size);
        uint32_t s = pfd_slot_state_get(h);
        if (s == PFD_SLOT_FREE) continue;
        if (s == PFD_SLOT_FILLING || h->magic != PFD_SLOT_MAGIC || h->seq % r->nslots != i ||
            h->seq < base || h->seq >= base + r->nslots) {
            pfd_slot_state_set(h, PFD_SLOT_FREE);
            continue;
        }
        if (s > PFD_SLOT_ACKED || h->crc != pfd_ring_slot_crc(r, h->seq)) {
            if (nbad < max_corrupt && corrupt) {
                corrupt[nbad] = h->seq;
                if (corrupt_acked) corrupt_acked[nbad] = s == PFD_SLOT_ACKED;
            }
            nbad++;
            h->magic = PFD_SLOT_MAGIC;
            pfd_slot_state_set(h, PFD_SLOT_FREE);
            continue;
        }
        if (s == PFD_SLOT_SENT) pfd_slot_state_set(h, PFD_SLOT_FILLED);
    }
    pfd_ring_advance(r);
    return nbad;
}
