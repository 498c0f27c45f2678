/* The sample stream: manifest generation + tokenizer + seed + cursor -> batches.
 *
 * Order (a pure function of manifest, seed and cursor; docs/MANIFEST.md "Order"):
 *  - epoch e of generation g visits the manifest's shards in a Fisher-Yates permutation
 *    drawn from tb_rng (seed, TB_RNG_SHUFFLE, ids (g, e, 0));
 *  - inside a shard, the raw documents (JSONL: each non-blank line; plain text: each
 *    blank-line-separated paragraph) pass a shuffle buffer of `shuffle_buffer` entries
 *    keyed (seed, TB_RNG_SHUFFLE, ids (g, e, 1 + shard index)): fill to capacity, emit a
 *    uniformly drawn entry, move the last into its place, refill one; at the end of the
 *    shard drain it the same way. The buffer never spans shards, so its state at any
 *    point is rebuilt by replaying the shard from its start: the cursor holds only the
 *    number of documents the shard has emitted (doc_ord), not the buffer contents.
 *  - each emitted document is parsed, checked (UTF-8, length), tokenized (N threads, a
 *    sequencer restores this order), then packed and masked in order.
 * A document's id is the 0-based line number at which it starts in the decompressed
 * shard; provenance and logs use it (log lines say "line id+1").
 *
 * Layout (packing = true): [CLS] s0 s1 ... to exactly T ids, where each document
 * contributes its ids followed by one [SEP] and a document continues into the next
 * sample (which starts with a new [CLS]). packing = false: [CLS] + first T-2 ids of one
 * document + [SEP], then [PAD]; attn_mask 1 = real token. In both modes attn_mask is
 * written (all ones when packing).
 *
 * Bad input (counted by kind in tb_stream_stats.bad, logged with shard and line, passed
 * to on_bad): shard-level kinds (OPEN, IO, CHECKSUM, CORRUPT) end that shard: CHECKSUM
 * (size or sha256 from the manifest differ; verified in a pass over the raw bytes before
 * any document of the shard is used) skips the whole shard; OPEN skips it; IO and
 * CORRUPT (truncated or corrupt gzip/zstd) skip every document from the failure point
 * on (the documents already in the shuffle buffer are still emitted; a partial last line
 * is dropped). Document-level kinds (NOT_JSON, MISSING_FIELD, BAD_UTF8) skip only that
 * document. All of this depends only on the shard's bytes, so a replay is identical. */
#ifndef TB_PF_STREAM_H
#define TB_PF_STREAM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "manifest.h"
#include "source.h"
#include "tb_err.h"
#include "tb_spm.h"

typedef enum tb_bad_kind {
    TB_BAD_OPEN = 0,      /* shard: cannot open (missing file, no opener, HTTP error) */
    TB_BAD_IO,            /* shard: read failed midway */
    TB_BAD_CHECKSUM,      /* shard: size or sha256 differs from the manifest */
    TB_BAD_CORRUPT,       /* shard: truncated or corrupt compressed stream */
    TB_BAD_NOT_JSON,      /* document: JSONL line that is not a JSON object (or > 64 MiB) */
    TB_BAD_MISSING_FIELD, /* document: no string text field */
    TB_BAD_UTF8,          /* document: invalid UTF-8 */
    TB_BAD_KINDS
} tb_bad_kind;

/* "open", "io", "checksum", "corrupt", "not_json", "missing_field", "bad_utf8". */
const char *tb_bad_kind_name(tb_bad_kind k);

typedef struct tb_stream_config {
    uint32_t seq_len;        /* T (512) */
    uint32_t batch_size;     /* B (32) */
    double mask_prob;        /* 0.15 */
    double mask_share;       /* [MASK] share of the chosen positions (mask.h
                                tb_mask_set_share); 0 = 0.8, DESIGN.md's 80/10/10 */
    bool packing;            /* true */
    uint64_t seed;           /* 1234 */
    const char *text_field;  /* JSONL text field; NULL (default): "text", and where a line
                                has no "text", "raw_content" (RedPajama-V2) */
    uint32_t shuffle_buffer; /* documents (1024); 0 or 1 = shard order */
    uint32_t min_doc_chars;  /* 10: documents of <= this many code points after stripping
                                Unicode whitespace are dropped (counted) */
    uint32_t threads;        /* tokenizer threads; 0 = online CPUs; 1 = all inline */
    uint32_t inflight_docs;  /* documents read ahead for the tokenizer threads; 0 = 256 per
                                thread (a long document at the head must not idle them) */
    uint64_t max_epochs;     /* 0 = endless; else the stream ends after this many epochs
                                (the last incomplete batch is not emitted) */
    tb_source_file_opts file; /* local reads (chunk, depth, force_pread) */
    const tb_source_opener *opener; /* remote locations; NULL = local only */
    /* Called (from the thread calling next_batch) for each bad shard/document, after
     * the counter is bumped and the line logged. line = 0 for shard-level kinds found
     * before any line. May be NULL. */
    void (*on_bad)(void *ctx, tb_bad_kind kind, uint32_t shard, const char *location,
                   uint64_t line, const char *why);
    void *on_bad_ctx;
} tb_stream_config;

void tb_stream_config_default(tb_stream_config *c);

/* Where the stream stands between two batches; enough to regenerate every later batch.
 * The shuffle-buffer state is not stored: it is rebuilt by replaying the shard's first
 * doc_ord emissions (reading, not tokenizing, them). */
typedef struct tb_stream_cursor {
    uint64_t generation;      /* manifest generation */
    uint64_t epoch;           /* 0-based */
    uint64_t shard_pos;       /* position in the epoch's shard order (may equal n: epoch done) */
    uint64_t shard;           /* manifest index of the shard at shard_pos (checked on seek) */
    uint64_t doc_ord;         /* documents this shard has emitted before the current one */
    uint64_t token_offset;    /* ids of the current document already packed (its [SEP] is
                                 index len) */
    uint64_t samples_emitted; /* global number of the next sample */
    uint64_t batch_seq;       /* sequence number of the next batch */
} tb_stream_cursor;

/* Fixed little-endian encoding: "TBC1", version, the eight fields, crc32c. */
#define TB_STREAM_CURSOR_BYTES 76
void tb_stream_cursor_serialize(uint8_t out[TB_STREAM_CURSOR_BYTES], const tb_stream_cursor *c);
int tb_stream_cursor_deserialize(tb_stream_cursor *out, const uint8_t *buf, size_t len,
                                 tb_err *err);

/* One run of consecutive tokens of one document inside a sample. */
typedef struct tb_stream_seg {
    uint64_t generation;
    uint64_t epoch;
    uint64_t doc;          /* document id: 0-based line number in the decompressed shard */
    uint64_t token_offset; /* first index taken from the document's stream (ids + [SEP]) */
    uint32_t shard;        /* manifest index */
    uint32_t length;       /* ids taken (packing: [SEP] counts as the document's last id) */
} tb_stream_seg;

/* Provenance of one sample. A packed sample is [CLS] + its segments in order; an
 * unpacked one [CLS] + its single segment + [SEP] + padding. The first segment's fields
 * are repeated here (what the wire's tb_prov carries). */
typedef struct tb_sample_prov {
    uint64_t sample;       /* global sample number (keys the mask with epoch) */
    uint64_t generation;   /* of the first segment */
    uint64_t epoch;        /* of the first segment: keys the mask */
    uint64_t doc;
    uint64_t token_offset;
    uint32_t shard;
    uint32_t length;       /* real (non-padding) tokens, [CLS]/[SEP] included, <= T */
    uint32_t seg_first;    /* index into tb_stream_batch.segs */
    uint32_t seg_count;
} tb_sample_prov;

typedef struct tb_stream_batch {
    uint64_t seq;
    uint32_t B, T;
    int32_t *ids;        // (B, T)
    int32_t *labels;     // (B, T) original id at chosen positions, -100 elsewhere
    uint8_t *attn_mask;  // (B, T) 1 = real token
    tb_sample_prov *prov; // (B)
    tb_stream_seg *segs; // (n_segs)
    size_t n_segs, cap_segs;
    tb_stream_cursor cursor_after;
} tb_stream_batch;

/* A zeroed batch is valid input to next_batch (which allocates); free releases. */
void tb_stream_batch_free(tb_stream_batch *b);

typedef struct tb_stream_stats {
    uint64_t shards_opened;
    uint64_t bytes_raw;      /* bytes read from sources (checksum passes included) */
    uint64_t bytes_text;     /* bytes of document text tokenized */
    uint64_t docs_read;      /* raw documents emitted by shuffle buffers */
    uint64_t docs_used;      /* documents tokenized into samples */
    uint64_t docs_short;     /* dropped: <= min_doc_chars */
    uint64_t tokens;         /* document ids produced by the tokenizer */
    uint64_t samples;
    uint64_t batches;
    uint64_t bad[TB_BAD_KINDS];
} tb_stream_stats;

typedef struct tb_stream tb_stream;

/* Opens the stream over manifest m (m->generation is the generation; copied), positioned
 * at cursor `at` (NULL = the start: epoch 0, first shard, sample 0, batch 0). spm must
 * outlive the stream. Fails when the cursor's generation is not m's or it does not fit
 * the manifest (shard count, shard at shard_pos). */
tb_stream *tb_stream_open(const tb_stream_config *cfg, const tb_manifest *m, const tb_spm *spm,
                          const tb_stream_cursor *at, tb_err *err);
/* 1 = *out holds the next batch (arrays reused across calls), 0 = the stream ended
 * (max_epochs), -1 = error (a broken invariant or every shard of an epoch yielded no
 * document: "no usable documents"). */
int tb_stream_next_batch(tb_stream *s, tb_stream_batch *out, tb_err *err);
/* Repositions: the following batches are exactly those after cursor c. */
int tb_stream_seek(tb_stream *s, const tb_stream_cursor *c, tb_err *err);
/* Cursor of the next batch (= cursor_after of the last batch returned). */
void tb_stream_cursor_get(const tb_stream *s, tb_stream_cursor *out);
/* Live swap to a new generation (m->generation > the current one; copied). Takes effect
 * at the next document boundary after the current position (the cursor of the next
 * batch): the rest of the current document (if token_offset > 0) is still packed, then
 * documents come from m's shard order for the current epoch, from its first shard. Read
 * ahead of the old generation is discarded. The position depends only on the cursor at
 * the call, so a replay that calls swap at the same cursor gives the same stream. */
int tb_stream_swap(tb_stream *s, const tb_manifest *m, tb_err *err);
void tb_stream_stats_get(const tb_stream *s, tb_stream_stats *out);
void tb_stream_close(tb_stream *s);

/* Rebuilds one sample from its provenance: reads each segment's document (shard of the
 * segment's generation in h, document by id), tokenizes it, lays out and masks the
 * sample. With the stream's cfg (seq_len, packing, mask_prob, seed, text_field) the
 * result equals the streamed row bit for bit. */
int tb_stream_rebuild_sample(int32_t *ids,     // (T)
                             int32_t *labels,  // (T)
                             uint8_t *attn_mask, // (T)
                             const tb_stream_config *cfg, const tb_manifest_history *h,
                             const tb_spm *spm, const tb_sample_prov *prov,
                             const tb_stream_seg *segs, // (prov->seg_count)
                             tb_err *err);

#endif
