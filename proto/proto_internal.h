/* Helpers shared by the proto/ encoders and decoders; not part of the public API. */
#ifndef TB_PROTO_INTERNAL_H
#define TB_PROTO_INTERNAL_H
#include <stdbool.h>
#include <stdint.h>

#include "tb_proto.h"
#include "tb_proto_ctl.h"
#include "tb_proto_feed.h"

/* One known key of a message map; val stays NULL when the key is absent. */
typedef struct tbp_field {
    const char *name;
    const msgpack_object *val;
} tbp_field;

/* tb_proto_precheck, then msgpack-c unpacks exactly len bytes into u (destroy it after). */
int tbp_unpack(msgpack_unpacked *u, const void *buf, size_t len, const char *what, tb_err *err);
/* Fills f[i].val from the map o; unknown keys are ignored, a known key twice is an error. */
int tbp_fields(tbp_field *f, size_t n, const msgpack_object *o, const char *where, tb_err *err);
/* Checks "v" == TB_PROTO_VERSION and "t" == type (f[0] is "v", f[1] is "t"). */
int tbp_check_header(const tbp_field *f, const char *where, const char *type, tb_err *err);

/* Typed getters: field f of message `where`; a NULL f->val is "missing required field". */
int tbp_get_u64(uint64_t *out, const tbp_field *f, uint64_t lo, uint64_t hi, const char *where,
                tb_err *err);
int tbp_get_bool(bool *out, const tbp_field *f, const char *where, tb_err *err);
int tbp_get_double(double *out, const tbp_field *f, const char *where, tb_err *err);
/* Copies a str of at most max bytes, no NUL inside, into dst[max + 1]. */
int tbp_get_str(char *dst, size_t max, const tbp_field *f, const char *where, tb_err *err);
/* A bin; *p points into the message buffer. */
int tbp_get_bin(const uint8_t **p, size_t *n, const tbp_field *f, const char *where, tb_err *err);
int tbp_check_map(const tbp_field *f, const char *where, tb_err *err);

int tbp_decode_kvmap(tb_kvmap *out, const tbp_field *f, const char *where, tb_err *err);
int tbp_decode_cursor(tb_cursor *out, const tbp_field *f, const char *where, tb_err *err);

/* Encoding: all return 0 or a non-zero msgpack write error. */
int tbp_pack_str(msgpack_packer *pk, const char *s);
int tbp_pack_header(msgpack_packer *pk, size_t nkeys, const char *type);
int tbp_pack_kvmap(msgpack_packer *pk, const tb_kvmap *m);
int tbp_pack_cursor(msgpack_packer *pk, const tb_cursor *c);
/* Validation before encoding, mirroring the decoders. */
int tbp_check_kvmap(const tb_kvmap *m, const char *where, tb_err *err);
int tbp_check_name(const char *s, const char *where, const char *field, bool nonempty, tb_err *err);
int tbp_check_cursor(const tb_cursor *c, const char *where, tb_err *err);
int tbp_write_failed(const char *where, tb_err *err);

const char *tbp_type_name(msgpack_object_type t);

#endif
