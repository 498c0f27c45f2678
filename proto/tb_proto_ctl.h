/* Control (REQ/REP) and metrics (PUB) messages, both built on a flat map of string keys to
 * int/double/bool/string values (docs/PROTOCOL.md, "Flat maps"). */
#ifndef TB_PROTO_CTL_H
#define TB_PROTO_CTL_H
#include <stdbool.h>
#include <stdint.h>

#include "tb_proto.h"

typedef enum tb_kv_type {
    TB_KV_INT = 1, /* int64 */
    TB_KV_DOUBLE,
    TB_KV_BOOL,
    TB_KV_STR,
} tb_kv_type;

typedef struct tb_kv {
    char key[TB_PROTO_MAX_KEY + 1];
    tb_kv_type type;
    union {
        int64_t i;
        double d;
        bool b;
        char *s; /* owned, NUL-terminated, <= TB_PROTO_MAX_STR bytes */
    } v;
} tb_kv;

/* At most TB_PROTO_MAX_KEYS entries, unique non-empty keys, in insertion order.
 * A zeroed struct is an empty map. */
typedef struct tb_kvmap {
    tb_kv *items;
    size_t n, cap;
} tb_kvmap;

/* Adders copy key and string; they fail on a duplicate, empty or long key, a long string
 * or a full map. */
int tb_kvmap_add_int(tb_kvmap *m, const char *key, int64_t v, tb_err *err);
int tb_kvmap_add_double(tb_kvmap *m, const char *key, double v, tb_err *err);
int tb_kvmap_add_bool(tb_kvmap *m, const char *key, bool v, tb_err *err);
int tb_kvmap_add_str(tb_kvmap *m, const char *key, const char *v, tb_err *err);
/* NULL when absent. */
const tb_kv *tb_kvmap_get(const tb_kvmap *m, const char *key);
void tb_kvmap_free(tb_kvmap *m);

/* One metrics record. On the PUB socket it is the second frame; the first frame is the
 * topic string alone (so SUBSCRIBE prefix filtering works), equal to m.topic. */
typedef struct tb_metrics {
    char topic[TB_PROTO_MAX_NAME + 1]; /* "prefetchd.stats", "trainerd.step", "trainerd.event" */
    uint64_t seq;                      /* per publisher, +1 per record: a gap = dropped */
    double time;                       /* seconds since the Unix epoch */
    tb_kvmap fields;
} tb_metrics;

typedef struct tb_request {
    uint64_t id;                      /* echoed in the reply */
    char verb[TB_PROTO_MAX_NAME + 1]; /* "status", "pause", "shards.add", ... */
    tb_kvmap args;                    /* empty when the wire has none */
} tb_request;

typedef struct tb_reply {
    uint64_t id;
    bool ok;
    char *error; /* owned; NULL when absent (ok replies) */
    tb_kvmap result;
} tb_reply;

void tb_metrics_free(tb_metrics *m);
void tb_request_free(tb_request *m);
void tb_reply_free(tb_reply *m);

int tb_proto_encode_metrics(msgpack_packer *pk, const tb_metrics *m, tb_err *err);
int tb_proto_encode_request(msgpack_packer *pk, const tb_request *m, tb_err *err);
int tb_proto_encode_reply(msgpack_packer *pk, const tb_reply *m, tb_err *err);

/* 0 and *out filled (free it), or -1 with err naming the field and *out zeroed. */
int tb_proto_decode_metrics(const void *buf, size_t len, tb_metrics *out, tb_err *err);
int tb_proto_decode_request(const void *buf, size_t len, tb_request *out, tb_err *err);
int tb_proto_decode_reply(const void *buf, size_t len, tb_reply *out, tb_err *err);

#endif
