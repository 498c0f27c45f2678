/* Manifests: the list of shards prefetchd serves, and their generations.
 *
 * Text format (docs/MANIFEST.md): one shard per line,
 *     LOCATION [size=BYTES] [sha256=HEX64]
 * LOCATION is a path (relative paths are resolved against the manifest file's directory
 * when loaded from a file), file://path, or a URL (http://, https://). '#' starts a
 * comment line; blank lines are ignored. A location may not contain whitespace.
 *
 * Every change of the shard list is a new generation (1, 2, ...). A state directory
 * keeps each generation served as gen-<N>.manifest (canonical text, absolute paths),
 * written atomically: temporary file, fsync, rename, directory fsync. */
#ifndef TB_PF_MANIFEST_H
#define TB_PF_MANIFEST_H
#include <stddef.h>
#include <stdint.h>

#include "tb_err.h"

typedef struct tb_shard {
    char *location;    /* path or URL, NUL-terminated */
    int64_t size;      /* expected bytes, -1 = not given */
    int has_sha256;    /* sha256 valid */
    uint8_t sha256[32];
} tb_shard;

typedef struct tb_manifest {
    uint64_t generation; /* 0 = not yet stored */
    size_t n;            /* shards */
    tb_shard *shards;    // (n)
} tb_manifest;

/* Parses manifest text (len bytes). name is used in messages ("name:line: why"); base_dir
 * (may be NULL) resolves relative paths. On error *out is left empty. */
int tb_manifest_parse(tb_manifest *out, const char *text, size_t len, const char *name,
                      const char *base_dir, tb_err *err);
/* Reads and parses a manifest file; relative paths resolve against its directory. */
int tb_manifest_load(tb_manifest *out, const char *path, tb_err *err);
/* Canonical text (one line per shard, keys in fixed order); *text is malloc'd. */
int tb_manifest_format(char **text, size_t *len, const tb_manifest *m, tb_err *err);
/* Deep copy. */
int tb_manifest_copy(tb_manifest *out, const tb_manifest *m, tb_err *err);
/* Non-zero when both list the same shards with the same size and sha256 (generation
 * ignored). */
int tb_manifest_equal(const tb_manifest *a, const tb_manifest *b);
void tb_manifest_free(tb_manifest *m);

/* The generations kept in a state directory, ascending. */
typedef struct tb_manifest_history {
    size_t n;
    tb_manifest *gens; // (n), gens[i].generation strictly increasing
} tb_manifest_history;

/* Loads every gen-<N>.manifest in state_dir (a missing directory gives an empty history;
 * a file that does not parse is an error naming it). */
int tb_manifest_history_load(tb_manifest_history *out, const char *state_dir, tb_err *err);
/* The manifest of a generation, or NULL. */
const tb_manifest *tb_manifest_history_get(const tb_manifest_history *h, uint64_t generation);
/* The newest generation, or NULL when empty. */
const tb_manifest *tb_manifest_history_latest(const tb_manifest_history *h);
/* Makes m the newest generation: if it equals the latest one nothing is written and
 * *generation gets the latest number; else it is stored as latest+1 (atomic write in
 * state_dir, created if missing) and appended to h. */
int tb_manifest_history_commit(tb_manifest_history *h, const char *state_dir,
                               const tb_manifest *m, uint64_t *generation, tb_err *err);
void tb_manifest_history_free(tb_manifest_history *h);

/* Writes gen-<m->generation>.manifest into state_dir atomically (m->generation > 0). */
int tb_manifest_store(const char *state_dir, const tb_manifest *m, tb_err *err);

#endif
