/* Wire protocol shared by every socket (docs/PROTOCOL.md is the reference).
 *
 * Every message is one msgpack map with string keys, among them "v" (TB_PROTO_VERSION) and
 * "t" (the type string). Encoders append to any msgpack_packer (an sbuffer, or a caller
 * buffer through tb_proto_fixbuf). Decoders take untrusted bytes: tb_proto_precheck walks
 * the buffer before msgpack-c allocates anything, then msgpack-c unpacks it and the fields
 * are checked for type and range. Every failure leaves "MSG.field: why" in the tb_err. */
#ifndef TB_PROTO_H
#define TB_PROTO_H
#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "tb_err.h"

#define TB_PROTO_VERSION 1

/* Limits enforced by every decoder (and by the encoders, so we never emit what we refuse). */
enum {
    TB_PROTO_MAX_DEPTH = 4,         /* nesting of maps/arrays, the top map is depth 1 */
    TB_PROTO_MAX_OBJECTS = 8192,    /* msgpack objects in one message, all levels */
    TB_PROTO_MAX_KEYS = 256,        /* entries of any map */
    TB_PROTO_MAX_ARRAY = 4096,      /* elements of any array (only unknown keys use arrays) */
    TB_PROTO_MAX_KEY = 64,          /* bytes of a map key */
    TB_PROTO_MAX_STR = 4096,        /* bytes of any str value */
    TB_PROTO_MAX_NAME = 255,        /* bytes of HELLO.client, REQUEST.verb, METRICS.topic */
    TB_PROTO_MAX_B = 1 << 16,       /* samples per BATCH */
    TB_PROTO_MAX_T = 1 << 20,       /* tokens per sample */
    TB_PROTO_MAX_TOKENS = 1 << 24,  /* B*T per BATCH */
    TB_PROTO_MAX_WORLD = 1 << 16,   /* trainer ranks */
    TB_PROTO_MAX_CREDIT = 1 << 16,  /* batches granted by one CREDIT */
    TB_PROTO_MAX_SHUFFLE = 1 << 20, /* bytes of cursor.shuffle */
    TB_PROTO_PROV_SIZE = 40,        /* bytes of one provenance record on the wire */
};
/* Largest message any peer may send: set it as ZMQ_MAXMSGSIZE on every socket. A BATCH at
 * the limits is 4+4+1 bytes per token, 40 per sample and the cursor: 152 MiB; 160 MiB
 * leaves room for the headers. */
#define TB_PROTO_MAX_MSG ((int64_t)160 << 20)

typedef enum tb_proto_type {
    TB_PROTO_UNKNOWN = 0,
    TB_PROTO_HELLO,
    TB_PROTO_CREDIT,
    TB_PROTO_ACK,
    TB_PROTO_BATCH,
    TB_PROTO_METRICS,
    TB_PROTO_REQUEST,
    TB_PROTO_REPLY,
} tb_proto_type;

/* Wire string of a type ("hello", ...); NULL for TB_PROTO_UNKNOWN. */
const char *tb_proto_type_name(tb_proto_type type);

/* Structural check of untrusted bytes, done by every decoder before msgpack-c sees them:
 * exactly one map of at most TB_PROTO_MAX_MSG bytes; every length and count fits in the
 * bytes that remain; depth, object count, key and str lengths within the limits above;
 * map keys are strings; no ext types. `what` prefixes the error ("BATCH"), which then
 * names the field path: "BATCH.cursor_after.shuffle: bin length 4294967295 > 12 bytes left". */
int tb_proto_precheck(const void *buf, size_t len, const char *what, tb_err *err);

/* Pre-checks the buffer and reads its "v" and "t" only, so a socket carrying several
 * message types can pick the decoder. Unknown type strings are an error. */
int tb_proto_peek_type(tb_proto_type *type, const void *buf, size_t len, tb_err *err);

/* A msgpack write callback over a fixed caller buffer:
 *   tb_proto_fixbuf fb = {.data = slot, .cap = n};
 *   msgpack_packer pk; msgpack_packer_init(&pk, &fb, tb_proto_fixbuf_write);
 * A write past cap fails the encoder and sets fb.overflow. */
typedef struct tb_proto_fixbuf {
    char *data;
    size_t cap, len;
    int overflow;
} tb_proto_fixbuf;
int tb_proto_fixbuf_write(void *fixbuf, const char *data, size_t len);

#endif
