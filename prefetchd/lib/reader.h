/* Shard reader: byte source -> decompression (gzip, zstd or none, chosen by magic bytes)
 * -> raw documents. The format is chosen per shard by the first non-blank byte of the
 * decompressed stream: '{' -> JSONL (a document per non-blank line), else plain text (a
 * document per paragraph: lines up to a blank line). Used by stream.c; exposed for tests
 * and the benchmark. */
#ifndef TB_PF_READER_H
#define TB_PF_READER_H
#include <stddef.h>
#include <stdint.h>

#include "manifest.h"
#include "source.h"
#include "stream.h"
#include "tb_err.h"

typedef enum tb_shard_format {
    TB_FMT_UNKNOWN = 0,
    TB_FMT_JSONL,
    TB_FMT_TEXT,
} tb_shard_format;

typedef enum tb_compression {
    TB_COMP_NONE = 0,
    TB_COMP_GZIP,
    TB_COMP_ZSTD,
} tb_compression;

/* A JSONL line longer than this is a TB_BAD_NOT_JSON document. */
#define TB_READER_MAX_LINE ((size_t)64 << 20)

typedef struct tb_reader tb_reader;

/* Takes ownership of src (closed by tb_reader_close, also on failure). name is for
 * messages. */
tb_reader *tb_reader_open(tb_source *src, const char *name, tb_err *err);

/* Next raw document. Returns
 *   1: *doc (len bytes, not NUL-terminated, valid until the next call) starts at 0-based
 *      line *id of the decompressed stream;
 *   2: a document was skipped as bad (*kind, *id, err says why: an over-long line);
 *   0: end of shard;
 *  -1: the shard failed here (*kind TB_BAD_IO or TB_BAD_CORRUPT, err says why, with the
 *      line); every later call returns -1 again. */
int tb_reader_next(tb_reader *r, const char **doc, size_t *len, uint64_t *id,
                   tb_bad_kind *kind, tb_err *err);
tb_shard_format tb_reader_format(const tb_reader *r);
tb_compression tb_reader_compression(const tb_reader *r);
uint64_t tb_reader_bytes_raw(const tb_reader *r);
/* 1-based number of the line the reader is at (for messages). */
uint64_t tb_reader_line(const tb_reader *r);
void tb_reader_close(tb_reader *r);

/* Reads src to its end checking the manifest's size and sha256 (closes src).
 * Returns 0 = matches, 1 = mismatch (err says which and the values), -1 = read error. */
int tb_shard_verify(tb_source *src, const tb_shard *shard, uint64_t *bytes, tb_err *err);

#endif
