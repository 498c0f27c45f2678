/* Byte sources: where a shard's raw (possibly compressed) bytes come from.
 *
 * A source is a pull stream: tb_source_read fills up to cap bytes and returns the count,
 * 0 at the end of the shard, or -1 with a message (the shard is then counted as a bad
 * shard of kind TB_BAD_IO and its remaining documents are skipped).
 *
 * Local files ("path" or "file://path") are read with io_uring: sequential reads of
 * `chunk` bytes, `depth` of them in flight, into ordinary (unregistered) buffers, so
 * RLIMIT_MEMLOCK never matters. When io_uring_queue_init fails (ENOSYS: kernel without
 * io_uring; EPERM: disabled by sysctl kernel.io_uring_disabled or a seccomp filter) the
 * source falls back to pread(2), logging that once per process. TB_FORCE_PREAD=1 in the
 * environment, or tb_source_file_opts.force_pread, forces the fallback.
 *
 * Other locations (anything with a "scheme://" other than file://, e.g. https://) go to
 * a pluggable opener: prefetchd's HTTP source implements tb_source and is handed in
 * through tb_source_opener. Implementations embed `tb_source` as their first member. */
#ifndef TB_PF_SOURCE_H
#define TB_PF_SOURCE_H
#include <stddef.h>
#include <stdint.h>

#include "tb_err.h"

typedef struct tb_source tb_source;

typedef struct tb_source_vtbl {
    /* Up to cap bytes into buf: > 0 bytes read, 0 = end of stream, -1 = error (err set:
     * what failed, which location, which offset). Called from one thread at a time. */
    int64_t (*read)(tb_source *s, void *buf, size_t cap, tb_err *err);
    /* Releases everything; s is invalid afterwards. */
    void (*close)(tb_source *s);
} tb_source_vtbl;

struct tb_source {
    const tb_source_vtbl *vt;
};

static inline int64_t tb_source_read(tb_source *s, void *buf, size_t cap, tb_err *err) {
    return s->vt->read(s, buf, cap, err);
}
static inline void tb_source_close(tb_source *s) {
    if (s) s->vt->close(s);
}

typedef struct tb_source_file_opts {
    size_t chunk;    /* bytes per read; 0 = 1 MiB */
    unsigned depth;  /* reads in flight; 0 = 4 */
    int force_pread; /* non-zero: never try io_uring */
} tb_source_file_opts;

/* Opens a local file (path or file://path). opts may be NULL (defaults). */
tb_source *tb_source_open_file(const char *path, const tb_source_file_opts *opts, tb_err *err);

/* Non-zero when s is a local file source reading through io_uring (0: pread, or not a
 * file source). For tests and metrics. */
int tb_source_file_uses_uring(const tb_source *s);

/* Opener for non-local locations (prefetchd's HTTP source). Must be callable from any
 * thread (the stream's reader and tb_stream_rebuild_sample may call it concurrently).
 * Returns NULL with err set when the location cannot be opened. */
typedef struct tb_source_opener {
    tb_source *(*open)(void *ctx, const char *location, tb_err *err);
    void *ctx;
} tb_source_opener;

/* Non-zero when location names a local file (no scheme, or file://). */
int tb_source_is_local(const char *location);

/* Opens any location: local files directly, everything else through opener (NULL
 * opener and a remote location: error "no opener for URL ..."). */
tb_source *tb_source_open(const char *location, const tb_source_opener *opener,
                          const tb_source_file_opts *opts, tb_err *err);

#endif
