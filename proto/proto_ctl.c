/* METRICS, REQUEST and REPLY: encoders and hostile-input decoders. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

void tb_metrics_free(tb_metrics *m) {
    tb_kvmap_free(&m->fields);
    memset(m, 0, sizeof *m);
}

void tb_request_free(tb_request *m) {
    tb_kvmap_free(&m->args);
    memset(m, 0, sizeof *m);
}

void tb_reply_free(tb_reply *m) {
    free(m->error);
    tb_kvmap_free(&m->result);
    memset(m, 0, sizeof *m);
}

/* ---- METRICS ----------------------------------------------------------------------- */

int tb_proto_encode_metrics(msgpack_packer *pk, const tb_metrics *m, tb_err *err) {
    if (tbp_check_name(m->topic, "METRICS", "topic", true, err) ||
        tbp_check_kvmap(&m->fields, "METRICS.fields", err))
        return -1;
    if (tbp_pack_header(pk, 6, "metrics") || tbp_pack_str(pk, "topic") ||
        tbp_pack_str(pk, m->topic) || tbp_pack_str(pk, "seq") || msgpack_pack_uint64(pk, m->seq) ||
        tbp_pack_str(pk, "time") || msgpack_pack_double(pk, m->time) ||
        tbp_pack_str(pk, "fields") || tbp_pack_kvmap(pk, &m->fields))
        return tbp_write_failed("METRICS", err);
    return 0;
}

int tb_proto_decode_metrics(const void *buf, size_t len, tb_metrics *out, tb_err *err) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "METRICS", err)) return -1;
    tbp_field f[] = {{"v", NULL},   {"t", NULL},    {"topic", NULL},
                     {"seq", NULL}, {"time", NULL}, {"fields", NULL}};
    int rc = -1;
    if (tbp_fields(f, 6, &u.data, "METRICS", err) ||
        tbp_check_header(f, "METRICS", "metrics", err) ||
        tbp_get_str(out->topic, TB_PROTO_MAX_NAME, &f[2], "METRICS", err) ||
        tbp_get_u64(&out->seq, &f[3], 0, UINT64_MAX, "METRICS", err) ||
        tbp_get_double(&out->time, &f[4], "METRICS", err) ||
        tbp_decode_kvmap(&out->fields, &f[5], "METRICS", err))
        goto out;
    if (out->topic[0] == '\0') {
        tb_err_set(err, "METRICS.topic: empty");
        goto out;
    }
    rc = 0;
out:
    msgpack_unpacked_destroy(&u);
    if (rc) tb_metrics_free(out);
    return rc;
}

/* ---- REQUEST ----------------------------------------------------------------------- */

int tb_proto_encode_request(msgpack_packer *pk, const tb_request *m, tb_err *err) {
    if (tbp_check_name(m->verb, "REQUEST", "verb", true, err) ||
        tbp_check_kvmap(&m->args, "REQUEST.args", err))
        return -1;
    int rc = tbp_pack_header(pk, m->args.n ? 5 : 4, "request") || tbp_pack_str(pk, "id") ||
             msgpack_pack_uint64(pk, m->id) || tbp_pack_str(pk, "verb") ||
             tbp_pack_str(pk, m->verb);
    if (!rc && m->args.n) rc = tbp_pack_str(pk, "args") || tbp_pack_kvmap(pk, &m->args);
    return rc ? tbp_write_failed("REQUEST", err) : 0;
}

int tb_proto_decode_request(const void *buf, size_t len, tb_request *out, tb_err *err) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "REQUEST", err)) return -1;
    tbp_field f[] = {{"v", NULL}, {"t", NULL}, {"id", NULL}, {"verb", NULL}, {"args", NULL}};
    int rc = -1;
    if (tbp_fields(f, 5, &u.data, "REQUEST", err) ||
        tbp_check_header(f, "REQUEST", "request", err) ||
        tbp_get_u64(&out->id, &f[2], 0, UINT64_MAX, "REQUEST", err) ||
        tbp_get_str(out->verb, TB_PROTO_MAX_NAME, &f[3], "REQUEST", err) ||
        (f[4].val && tbp_decode_kvmap(&out->args, &f[4], "REQUEST", err)))
        goto out;
    if (out->verb[0] == '\0') {
        tb_err_set(err, "REQUEST.verb: empty");
        goto out;
    }
    rc = 0;
out:
    msgpack_unpacked_destroy(&u);
    if (rc) tb_request_free(out);
    return rc;
}

/* ---- REPLY ------------------------------------------------------------------------- */

int tb_proto_encode_reply(msgpack_packer *pk, const tb_reply *m, tb_err *err) {
    if (!m->ok && !m->error)
        return tb_err_set(err, "REPLY.error: required when ok is false");
    if (m->error && strlen(m->error) > TB_PROTO_MAX_STR)
        return tb_err_set(err, "REPLY.error: str length %zu > limit %d", strlen(m->error),
                          TB_PROTO_MAX_STR);
    if (tbp_check_kvmap(&m->result, "REPLY.result", err)) return -1;
    int rc = tbp_pack_header(pk, m->error ? 6 : 5, "reply") || tbp_pack_str(pk, "id") ||
             msgpack_pack_uint64(pk, m->id) || tbp_pack_str(pk, "ok") ||
             (m->ok ? msgpack_pack_true(pk) : msgpack_pack_false(pk)) ||
             tbp_pack_str(pk, "result") || tbp_pack_kvmap(pk, &m->result);
    if (!rc && m->error) rc = tbp_pack_str(pk, "error") || tbp_pack_str(pk, m->error);
    return rc ? tbp_write_failed("REPLY", err) : 0;
}

int tb_proto_decode_reply(const void *buf, size_t len, tb_reply *out, tb_err *err) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "REPLY", err)) return -1;
    tbp_field f[] = {{"v", NULL},  {"t", NULL},     {"id", NULL},
                     {"ok", NULL}, {"result", NULL}, {"error", NULL}};
    int rc = -1;
    if (tbp_fields(f, 6, &u.data, "REPLY", err) || tbp_check_header(f, "REPLY", "reply", err) ||
        tbp_get_u64(&out->id, &f[2], 0, UINT64_MAX, "REPLY", err) ||
        tbp_get_bool(&out->ok, &f[3], "REPLY", err) ||
        tbp_decode_kvmap(&out->result, &f[4], "REPLY", err))
        goto out;
    if (f[5].val) {
        char *s = malloc(TB_PROTO_MAX_STR + 1);
        if (!s) {
            tb_err_set(err, "REPLY.error: out of memory");
            goto out;
        }
        out->error = s;
        if (tbp_get_str(s, TB_PROTO_MAX_STR, &f[5], "REPLY", err)) goto out;
    } else if (!out->ok) {
        tb_err_set(err, "REPLY.error: missing (required when ok is false)");
        goto out;
    }
    rc = 0;
out:
    msgpack_unpacked_destroy(&u);
    if (rc) tb_reply_free(out);
    return rc;
}
