/* The feed protocol between prefetchd (ROUTER) and each trainer rank (DEALER):
 * HELLO -> CREDIT* -> BATCH* -> ACK* (shared/DESIGN.md "The feed protocol";
 * docs/PROTOCOL.md gives every field, type and limit). */
#ifndef TB_PROTO_FEED_H
#define TB_PROTO_FEED_H
#include <stdbool.h>
#include <stdint.h>

#include "tb_proto.h"

/* Where the data stream stands: enough to regenerate every later sample bit for bit. */
typedef struct tb_cursor {
    uint64_t generation;      /* manifest generation */
    uint64_t epoch;
    uint64_t shard_pos;       /* position in this epoch's shard order */
    uint64_t doc_index;       /* document index inside that shard */
    uint64_t token_offset;    /* tokens of that document already emitted */
    uint64_t samples_emitted; /* global sample number of the next sample */
    uint8_t *shuffle;         /* shuffle-buffer state, opaque to proto */
    size_t shuffle_len;       /* <= TB_PROTO_MAX_SHUFFLE */
} tb_cursor;

/* Frees shuffle (decoded cursors own it) and zeroes the cursor. */
void tb_cursor_free(tb_cursor *c);

typedef struct tb_hello {
    uint32_t rank;  /* < world */
    uint32_t world; /* 1..TB_PROTO_MAX_WORLD */
    bool has_cursor; /* false: start from the beginning */
    tb_cursor cursor;
    char client[TB_PROTO_MAX_NAME + 1]; /* free-form peer name, for logs */
} tb_hello;

/* Frees the cursor of a decoded HELLO and zeroes it. */
void tb_hello_free(tb_hello *m);

/* Provenance of one sample: where its first token came from. 40 bytes on the wire. */
typedef struct tb_prov {
    uint64_t sample;       /* global sample number */
    uint64_t generation;   /* manifest generation */
    uint64_t doc;          /* document id (index inside the shard) */
    uint64_t token_offset; /* offset of the sample's first token inside that document */
    uint32_t shard;        /* shard index inside the generation's manifest */
    uint32_t length;       /* real (non-padding) tokens in the sample, <= T */
} tb_prov;

typedef struct tb_batch {
    uint64_t seq;
    uint32_t B, T;
    tb_cursor cursor_after;
    int32_t *ids;       // (B, T) token ids, >= 0
    int32_t *labels;    // (B, T) original id at MLM positions, -100 elsewhere
    uint8_t *attn_mask; // (B, T) 1 = real token, 0 = padding; NULL when packed
    tb_prov *prov;      // (B)
    uint32_t crc;       /* crc32c over the wire bytes of ids || labels || attn_mask */
} tb_batch;

/* Frees what a decoder allocated (ids, labels, attn_mask, prov, cursor) and zeroes it. */
void tb_batch_free(tb_batch *b);

/* Encoders: validate, then append one message to pk. 0 on success, -1 with err set
 * (bad input or a failed write, e.g. a full tb_proto_fixbuf). */
int tb_proto_encode_hello(msgpack_packer *pk, const tb_hello *m, tb_err *err);
int tb_proto_encode_credit(msgpack_packer *pk, uint32_t n, tb_err *err);
int tb_proto_encode_ack(msgpack_packer *pk, uint64_t seq, tb_err *err);
/* Computes the crc itself (b->crc is not read). */
int tb_proto_encode_batch(msgpack_packer *pk, const tb_batch *b, tb_err *err);

/* Decoders: 0 and a filled *out, or -1, err = "MSG.field: why" and *out zeroed (nothing
 * to free). Decoded structs own their memory: free them with tb_hello_free and
 * tb_batch_free. Nothing in *out points into buf. */
int tb_proto_decode_hello(const void *buf, size_t len, tb_hello *out, tb_err *err);
int tb_proto_decode_credit(const void *buf, size_t len, uint32_t *n, tb_err *err);
int tb_proto_decode_ack(const void *buf, size_t len, uint64_t *seq, tb_err *err);
int tb_proto_decode_batch(const void *buf, size_t len, tb_batch *out, tb_err *err);

/* crc32c the way BATCH.crc is defined, over host arrays (attn_mask may be NULL). */
uint32_t tb_proto_batch_crc(const int32_t *ids,    // (B, T)
                            const int32_t *labels, // (B, T)
                            const uint8_t *attn_mask, // (B, T) or NULL
                            size_t ntok);

#endif
