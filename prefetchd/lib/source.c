/* Local file source: io_uring with `depth` sequential reads in flight, pread fallback. */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tb_log.h"

enum { FILE_MAX_DEPTH = 64 };

typedef struct file_buf {
    uint8_t *data;
    uint64_t off;   /* file offset of data[0] */
    size_t want;    /* bytes requested */
    size_t have;    /* bytes valid after completion */
    size_t pos;     /* bytes handed out */
    int state;      /* 0 idle, 1 in flight, 2 done */
} file_buf;

typedef struct file_source {
    tb_source base;
    int fd;
    char *path;
    uint64_t size;     /* at open */
    uint64_t next_off; /* next offset to request */
    size_t chunk;
    unsigned depth;
    int uring;         /* io_uring in use */
    struct io_uring ring;
    file_buf bufs[FILE_MAX_DEPTH];
    unsigned head;     /* buffer handed out next (ring order) */
} file_source;

static atomic_int fallback_logged;

static int pread_full(file_source *f, file_buf *b, size_t from, tb_err *err) {
    while (b->have < b->want) {
        ssize_t r = pread(f->fd, b->data + b->have, b->want - b->have, (off_t)(b->off + b->have));
        if (r < 0) {
            if (errno == EINTR) continue;
            return tb_err_set(err, "read '%s' at offset %llu: %s", f->path,
                              (unsigned long long)(b->off + b->have), strerror(errno));
        }
        if (r == 0) break;
        b->have += (size_t)r;
    }
    (void)from;
    if (b->have < b->want)
        return tb_err_set(err, "read '%s': file ended at %llu, expected %llu bytes (it shrank)",
                          f->path, (unsigned long long)(b->off + b->have),
                          (unsigned long long)f->size);
    return 0;
}

/* Queues reads for every idle buffer while the file has bytes left. */
static int file_submit(file_source *f, tb_err *err) {
    unsigned queued = 0;
    for (unsigned k = 0; k < f->depth; k++) {
        file_buf *b = &f->bufs[(f->head + k) % f->depth];
        if (b->state != 0 || f->next_off >= f->size) continue;
        b->off = f->next_off;
        b->want = (size_t)(f->size - f->next_off < f->chunk ? f->size - f->next_off : f->chunk);
        b->have = b->pos = 0;
        f->next_off += b->want;
        struct io_uring_sqe *sqe = io_uring_get_sqe(&f->ring);
        if (!sqe) return tb_err_set(err, "read '%s': io_uring submission queue full", f->path);
        io_uring_prep_read(sqe, f->fd, b->data, (unsigned)b->want, b->off);
        io_uring_sqe_set_data64(sqe, (uint64_t)(b - f->bufs));
        b->state = 1;
        queued++;
    }
    if (queued) {
        int r = io_uring_submit(&f->ring);
        if (r < 0) return tb_err_set(err, "read '%s': io_uring_submit: %s", f->path, strerror(-r));
    }
    return 0;
}

/* Waits until the head buffer's read completed (others may complete meanwhile). */
static int file_wait_head(file_source *f, tb_err *err) {
    file_buf *h = &f->bufs[f->head];
    while (h->state == 1) {
        struct io_uring_cqe *cqe;
        int r = io_uring_wait_cqe(&f->ring, &cqe);
        if (r == -EINTR) continue;
        if (r < 0) return tb_err_set(err, "read '%s': io_uring_wait_cqe: %s", f->path, strerror(-r));
        uint64_t idx = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&f->ring, cqe);
        if (idx >= f->depth) return tb_err_set(err, "read '%s': bad completion tag", f->path);
        file_buf *b = &f->bufs[idx];
        b->state = 2;
        if (res < 0) {
            if (res == -EINTR || res == -EAGAIN) {
                b->have = 0;
            } else {
                return tb_err_set(err, "read '%s' at offset %llu: %s", f->path,
                                  (unsigned long long)b->off, strerror(-res));
            }
        } else {
            b->have = (size_t)res;
        }
        /* A short read (or a retriable error) completes synchronously. */
        if (b->have < b->want && pread_full(f, b, b->have, err)) return -1;
    }
    return 0;
}

static int64_t file_read(tb_source *s, void *buf, size_t cap, tb_err *err) {
    file_source *f = (file_source *)s;
    size_t done = 0;
    while (done < cap) {
        file_buf *h = &f->bufs[f->head];
        if (h->state == 0) {
            if (f->next_off >= f->size) break; /* end of file */
            if (f->uring) {
                if (file_submit(f, err)) return -1;
            } else {
                h->off = f->next_off;
                h->want = (size_t)(f->size - f->next_off < f->chunk ? f->size - f->next_off
                                                                    : f->chunk);
                h->have = h->pos = 0;
                f->next_off += h->want;
                if (pread_full(f, h, 0, err)) return -1;
                h->state = 2;
            }
        }
        if (h->state == 1 && file_wait_head(f, err)) return -1;
        size_t n = h->have - h->pos;
        if (n > cap - done) n = cap - done;
        memcpy((uint8_t *)buf + done, h->data + h->pos, n);
        h->pos += n;
        done += n;
        if (h->pos == h->have) {
            h->state = 0;
            f->head = (f->head + 1) % f->depth;
            if (f->uring && file_submit(f, err)) return -1;
        }
    }
    return (int64_t)done;
}

static void file_close(tb_source *s) {
    file_source *f = (file_source *)s;
    if (!f) return;
    if (f->uring) {
        /* Reap reads still in flight before their buffers go away. */
        unsigned inflight = 0;
        for (unsigned k = 0; k < f->depth; k++) inflight += f->bufs[k].state == 1;
        while (inflight > 0) {
            struct io_uring_cqe *cqe;
            int r = io_uring_wait_cqe(&f->ring, &cqe);
            if (r == -EINTR) continue;
            if (r < 0) break;
            io_uring_cqe_seen(&f->ring, cqe);
            inflight--;
        }
        io_uring_queue_exit(&f->ring);
    }
    for (unsigned k = 0; k < f->depth; k++) free(f->bufs[k].data);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
}

static const tb_source_vtbl file_vtbl = {file_read, file_close};

int tb_source_file_uses_uring(const tb_source *s) {
    return s && s->vt == &file_vtbl && ((const file_source *)s)->uring;
}

int tb_source_is_local(const char *location) {
    if (strncmp(location, "file://", 7) == 0) return 1;
    const char *p = strstr(location, "://");
    if (!p) return 1;
    for (const char *q = location; q < p; q++) {
        char c = *q;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '-' || c == '.'))
            return 1; /* "://" inside a path, not a scheme */
    }
    return p == location;
}

tb_source *tb_source_open_file(const char *path, const tb_source_file_opts *opts, tb_err *err) {
    if (strncmp(path, "file://", 7) == 0) path += 7;
    size_t chunk = opts && opts->chunk ? opts->chunk : (size_t)1 << 20;
    unsigned depth = opts && opts->depth ? opts->depth : 4;
    if (depth > FILE_MAX_DEPTH) depth = FILE_MAX_DEPTH;
    if (chunk > (size_t)1 << 30) chunk = (size_t)1 << 30;
    int force = opts && opts->force_pread;
    const char *env = getenv("TB_FORCE_PREAD");
    if (env && *env && strcmp(env, "0") != 0) force = 1;

    file_source *f = calloc(1, sizeof *f);
    if (!f) {
        tb_err_set(err, "open '%s': out of memory", path);
        return NULL;
    }
    f->base.vt = &file_vtbl;
    f->fd = -1;
    f->chunk = chunk;
    f->depth = depth;
    f->path = strdup(path);
    if (!f->path) goto oom;
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        tb_err_set(err, "open '%s': %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        tb_err_set(err, "stat '%s': %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        tb_err_set(err, "open '%s': not a regular file", path);
        goto fail;
    }
    f->size = (uint64_t)st.st_size;
    (void)posix_fadvise(f->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    for (unsigned k = 0; k < depth; k++) {
        f->bufs[k].data = malloc(chunk);
        if (!f->bufs[k].data) goto oom;
    }
    if (!force) {
        int r = io_uring_queue_init(depth * 2, &f->ring, 0);
        if (r == 0) {
            f->uring = 1;
        } else if (atomic_exchange(&fallback_logged, 1) == 0) {
            tb_notice("io_uring unavailable (%s): reading shards with pread", strerror(-r));
        }
    }
    return &f->base;
oom:
    tb_err_set(err, "open '%s': out of memory", path);
fail:
    file_close(&f->base);
    return NULL;
}

tb_source *tb_source_open(const char *location, const tb_source_opener *opener,
                          const tb_source_file_opts *opts, tb_err *err) {
    if (tb_source_is_local(location)) return tb_source_open_file(location, opts, err);
    if (!opener || !opener->open) {
        tb_err_set(err, "open '%s': no opener for remote locations", location);
        return NULL;
    }
    return opener->open(opener->ctx, location, err);
}
