/* Helpers for the proto tests: encode into an sbuffer, rewrite one field of an encoded
 * message, and build msgpack objects to put there. */
#ifndef PROTO_TEST_UTIL_H
#define PROTO_TEST_UTIL_H
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "tb_proto.h"
#include "tb_proto_ctl.h"
#include "tb_proto_feed.h"

/* Re-encodes buf with the field at path ("cursor_after.epoch") replaced by *repl, or
 * deleted when repl is NULL, or added when absent. Result in *out (destroy it). */
void mutate(msgpack_sbuffer *out, const void *buf, size_t len, const char *path,
            const msgpack_object *repl);

msgpack_object obj_str(const char *s);
msgpack_object obj_uint(uint64_t v);
msgpack_object obj_int(int64_t v);
msgpack_object obj_nil(void);
msgpack_object obj_bool(bool v);
msgpack_object obj_float(double v);
msgpack_object obj_bin(const void *p, size_t n);
msgpack_object obj_empty_map(void);
msgpack_object obj_empty_array(void);

/* Valid sample messages used by several tests (all encoders must succeed). */
void sample_hello(msgpack_sbuffer *sb, bool with_cursor);
void sample_credit(msgpack_sbuffer *sb);
void sample_ack(msgpack_sbuffer *sb);
void sample_batch(msgpack_sbuffer *sb, bool with_mask); /* B=2, T=3 */
void sample_metrics(msgpack_sbuffer *sb);
void sample_request(msgpack_sbuffer *sb);
void sample_reply(msgpack_sbuffer *sb, bool ok);

/* Decodes with the decoder of type t, frees the result; returns the decoder's status. */
int decode_any(tb_proto_type t, const void *buf, size_t len, tb_err *err);

#endif
