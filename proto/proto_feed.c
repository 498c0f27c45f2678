/* HELLO, CREDIT, ACK and BATCH: encoders and hostile-input decoders. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"
#include "tb_crc32c.h"

#if !defined(__BYTE_ORDER__) || !defined(__ORDER_LITTLE_ENDIAN__)
#error "byte order macros needed"
#endif
#define HOST_LE (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

/* ---- HELLO ------------------------------------------------------------------------- */

void tb_hello_free(tb_hello *m) {
    tb_cursor_free(&m->cursor);
    memset(m, 0, sizeof *m);
}

int tb_proto_encode_hello(msgpack_packer *pk, const tb_hello *m, tb_err *err) {
    if (m->world < 1 || m->world > TB_PROTO_MAX_WORLD)
        return tb_err_set(err, "HELLO.world: %u out of range [1, %d]", m->world, TB_PROTO_MAX_WORLD);
    if (m->rank >= m->world)
        return tb_err_set(err, "HELLO.rank: %u out of range [0, %u]", m->rank, m->world - 1);
    if (tbp_check_name(m->client, "HELLO", "client", false, err)) return -1;
    if (m->has_cursor && tbp_check_cursor(&m->cursor, "HELLO.cursor", err)) return -1;
    int rc = tbp_pack_header(pk, m->has_cursor ? 6 : 5, "hello") || tbp_pack_str(pk, "rank") ||
             msgpack_pack_uint32(pk, m->rank) || tbp_pack_str(pk, "world") ||
             msgpack_pack_uint32(pk, m->world) || tbp_pack_str(pk, "client") ||
             tbp_pack_str(pk, m->client);
    if (!rc && m->has_cursor) rc = tbp_pack_str(pk, "cursor") || tbp_pack_cursor(pk, &m->cursor);
    return rc ? tbp_write_failed("HELLO", err) : 0;
}

int tb_proto_decode_hello(const void *buf, size_t len, tb_hello *out, tb_err *err) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "HELLO", err)) return -1;
    tbp_field f[] = {{"v", NULL}, {"t", NULL}, {"rank", NULL}, {"world", NULL},
                     {"client", NULL}, {"cursor", NULL}};
    uint64_t rank, world;
    int rc = -1;
    if (tbp_fields(f, 6, &u.data, "HELLO", err) || tbp_check_header(f, "HELLO", "hello", err) ||
        tbp_get_u64(&world, &f[3], 1, TB_PROTO_MAX_WORLD, "HELLO", err) ||
        tbp_get_u64(&rank, &f[2], 0, world - 1, "HELLO", err) ||
        tbp_get_str(out->client, TB_PROTO_MAX_NAME, &f[4], "HELLO", err))
        goto out;
    out->rank = (uint32_t)rank;
    out->world = (uint32_t)world;
    if (f[5].val) {
        if (tbp_decode_cursor(&out->cursor, &f[5], "HELLO", err)) goto out;
        out->has_cursor = true;
    }
    rc = 0;
out:
    msgpack_unpacked_destroy(&u);
    if (rc) tb_hello_free(out);
    return rc;
}

/* ---- CREDIT and ACK ---------------------------------------------------------------- */

int tb_proto_encode_credit(msgpack_packer *pk, uint32_t n, tb_err *err) {
    if (n < 1 || n > TB_PROTO_MAX_CREDIT)
        return tb_err_set(err, "CREDIT.n: %u out of range [1, %d]", n, TB_PROTO_MAX_CREDIT);
    if (tbp_pack_header(pk, 3, "credit") || tbp_pack_str(pk, "n") || msgpack_pack_uint32(pk, n))
        return tbp_write_failed("CREDIT", err);
    return 0;
}

int tb_proto_decode_credit(const void *buf, size_t len, uint32_t *n, tb_err *err) {
    *n = 0;
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "CREDIT", err)) return -1;
    tbp_field f[] = {{"v", NULL}, {"t", NULL}, {"n", NULL}};
    uint64_t v;
    int rc = tbp_fields(f, 3, &u.data, "CREDIT", err) ||
             tbp_check_header(f, "CREDIT", "credit", err) ||
             tbp_get_u64(&v, &f[2], 1, TB_PROTO_MAX_CREDIT, "CREDIT", err);
    msgpack_unpacked_destroy(&u);
    if (rc) return -1;
    *n = (uint32_t)v;
    return 0;
}

int tb_proto_encode_ack(msgpack_packer *pk, uint64_t seq, tb_err *err) {
    if (tbp_pack_header(pk, 3, "ack") || tbp_pack_str(pk, "seq") || msgpack_pack_uint64(pk, seq))
        return tbp_write_failed("ACK", err);
    return 0;
}

int tb_proto_decode_ack(const void *buf, size_t len, uint64_t *seq, tb_err *err) {
    *seq = 0;
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "ACK", err)) return -1;
    tbp_field f[] = {{"v", NULL}, {"t", NULL}, {"seq", NULL}};
    uint64_t v;
    int rc = tbp_fields(f, 3, &u.data, "ACK", err) || tbp_check_header(f, "ACK", "ack", err) ||
             tbp_get_u64(&v, &f[2], 0, UINT64_MAX, "ACK", err);
    msgpack_unpacked_destroy(&u);
    if (rc) return -1;
    *seq = v;
    return 0;
}

/* ---- BATCH ------------------------------------------------------------------------- */

/* Feeds the little-endian wire image of n int32 to emit(), in chunks. */
typedef int (*emit_fn)(void *ctx, const void *p, size_t n);

static int emit_le32(emit_fn emit, void *ctx, const int32_t *a, size_t n) {
    if (HOST_LE) return emit(ctx, a, n * 4);
    uint8_t tmp[4096];
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; k < sizeof tmp / 4 && i < n; k++, i++) wr32(tmp + 4 * k, (uint32_t)a[i]);
        if (emit(ctx, tmp, 4 * k)) return -1;
    }
    return 0;
}

static int emit_crc(void *ctx, const void *p, size_t n) {
    uint32_t *crc = ctx;
    *crc = tb_crc32c(*crc, p, n);
    return 0;
}

static int emit_pack(void *ctx, const void *p, size_t n) {
    return msgpack_pack_bin_body(ctx, p, n);
}

uint32_t tb_proto_batch_crc(const int32_t *ids, const int32_t *labels, const uint8_t *attn_mask,
                            size_t ntok) {
    uint32_t crc = 0;
    emit_le32(emit_crc, &crc, ids, ntok);
    emit_le32(emit_crc, &crc, labels, ntok);
    if (attn_mask) crc = tb_crc32c(crc, attn_mask, ntok);
    return crc;
}

void tb_batch_free(tb_batch *b) {
    free(b->ids);
    free(b->labels);
    free(b->attn_mask);
    free(b->prov);
    tb_cursor_free(&b->cursor_after);
    memset(b, 0, sizeof *b);
}

static int check_shape(uint64_t B, uint64_t T, tb_err *err) {
    if (B * T > TB_PROTO_MAX_TOKENS)
        return tb_err_set(err, "BATCH.T: B*T = %" PRIu64 "*%" PRIu64 " = %" PRIu64
                               " tokens > limit %d", B, T, B * T, TB_PROTO_MAX_TOKENS);
    return 0;
}

/* Value checks shared by encoder and decoder (host arrays). */
static int check_values(const tb_batch *b, tb_err *err) {
    size_t ntok = (size_t)b->B * b->T;
    for (size_t i = 0; i < ntok; i++) {
        if (b->ids[i] < 0)
            return tb_err_set(err, "BATCH.ids[%zu]: token id %" PRId32 " < 0", i, b->ids[i]);
        if (b->labels[i] < 0 && b->labels[i] != -100)
            return tb_err_set(err, "BATCH.labels[%zu]: %" PRId32 " is neither -100 nor >= 0", i,
                              b->labels[i]);
        if (b->attn_mask && b->attn_mask[i] > 1)
            return tb_err_set(err, "BATCH.attn_mask[%zu]: %u is not 0 or 1", i, b->attn_mask[i]);
    }
    for (uint32_t i = 0; i < b->B; i++)
        if (b->prov[i].length > b->T)
            return tb_err_set(err, "BATCH.provenance[%u].length: %u > T = %u", i,
                              b->prov[i].length, b->T);
    return 0;
}

int tb_proto_encode_batch(msgpack_packer *pk, const tb_batch *b, tb_err *err) {
    if (b->B < 1 || b->B > TB_PROTO_MAX_B)
        return tb_err_set(err, "BATCH.B: %u out of range [1, %d]", b->B, TB_PROTO_MAX_B);
    if (b->T < 1 || b->T > TB_PROTO_MAX_T)
        return tb_err_set(err, "BATCH.T: %u out of range [1, %d]", b->T, TB_PROTO_MAX_T);
    if (check_shape(b->B, b->T, err)) return -1;
    if (!b->ids || !b->labels || !b->prov)
        return tb_err_set(err, "BATCH: ids, labels and provenance are required");
    if (tbp_check_cursor(&b->cursor_after, "BATCH.cursor_after", err) || check_values(b, err))
        return -1;
    size_t ntok = (size_t)b->B * b->T;
    uint32_t crc = tb_proto_batch_crc(b->ids, b->labels, b->attn_mask, ntok);
    int rc = tbp_pack_header(pk, b->attn_mask ? 11 : 10, "batch") || tbp_pack_str(pk, "seq") ||
             msgpack_pack_uint64(pk, b->seq) || tbp_pack_str(pk, "B") ||
             msgpack_pack_uint32(pk, b->B) || tbp_pack_str(pk, "T") ||
             msgpack_pack_uint32(pk, b->T) || tbp_pack_str(pk, "cursor_after") ||
             tbp_pack_cursor(pk, &b->cursor_after) || tbp_pack_str(pk, "ids") ||
             msgpack_pack_bin(pk, ntok * 4) || emit_le32(emit_pack, pk, b->ids, ntok) ||
             tbp_pack_str(pk, "labels") || msgpack_pack_bin(pk, ntok * 4) ||
             emit_le32(emit_pack, pk, b->labels, ntok);
    if (!rc && b->attn_mask)
        rc = tbp_pack_str(pk, "attn_mask") || msgpack_pack_bin(pk, ntok) ||
             msgpack_pack_bin_body(pk, b->attn_mask, ntok);
    if (!rc) rc = tbp_pack_str(pk, "provenance") || msgpack_pack_bin(pk, (size_t)b->B * TB_PROTO_PROV_SIZE);
    for (uint32_t i = 0; i < b->B && !rc; i++) {
        uint8_t r[TB_PROTO_PROV_SIZE];
        const tb_prov *p = &b->prov[i];
        wr64(r, p->sample);
        wr64(r + 8, p->generation);
        wr64(r + 16, p->doc);
        wr64(r + 24, p->token_offset);
        wr32(r + 32, p->shard);
        wr32(r + 36, p->length);
        rc = msgpack_pack_bin_body(pk, r, sizeof r);
    }
    if (!rc) rc = tbp_pack_str(pk, "crc") || msgpack_pack_uint32(pk, crc);
    return rc ? tbp_write_failed("BATCH", err) : 0;
}

enum { F_V, F_T, F_SEQ, F_B, F_TT, F_CUR, F_IDS, F_LABELS, F_MASK, F_PROV, F_CRC, F_N };

/* A bin field whose length must be exactly want bytes. */
static int get_sized_bin(const uint8_t **p, const tbp_field *f, size_t want, const char *formula,
                         tb_err *err) {
    size_t n;
    if (tbp_get_bin(p, &n, f, "BATCH", err)) return -1;
    if (n != want)
        return tb_err_set(err, "BATCH.%s: bin length %zu != %s = %zu", f->name, n, formula, want);
    return 0;
}

static int int32s(int32_t **dst, const uint8_t *src, size_t n, const char *name, tb_err *err) {
    *dst = malloc(n * 4);
    if (!*dst) return tb_err_set(err, "BATCH.%s: out of memory (%zu bytes)", name, n * 4);
    if (HOST_LE) memcpy(*dst, src, n * 4);
    else
        for (size_t i = 0; i < n; i++) (*dst)[i] = (int32_t)rd32(src + 4 * i);
    return 0;
}

int tb_proto_decode_batch(const void *buf, size_t len, tb_batch *out, tb_err *err) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    if (tbp_unpack(&u, buf, len, "BATCH", err)) return -1;
    tbp_field f[F_N] = {{"v", NULL},   {"t", NULL},      {"seq", NULL},       {"B", NULL},
                        {"T", NULL},   {"cursor_after", NULL}, {"ids", NULL}, {"labels", NULL},
                        {"attn_mask", NULL}, {"provenance", NULL}, {"crc", NULL}};
    uint64_t B, T, crc;
    const uint8_t *ids, *labels, *mask = NULL, *prov;
    int rc = -1;
    if (tbp_fields(f, F_N, &u.data, "BATCH", err) || tbp_check_header(f, "BATCH", "batch", err) ||
        tbp_get_u64(&out->seq, &f[F_SEQ], 0, UINT64_MAX, "BATCH", err) ||
        tbp_get_u64(&B, &f[F_B], 1, TB_PROTO_MAX_B, "BATCH", err) ||
        tbp_get_u64(&T, &f[F_TT], 1, TB_PROTO_MAX_T, "BATCH", err) || check_shape(B, T, err) ||
        tbp_decode_cursor(&out->cursor_after, &f[F_CUR], "BATCH", err))
        goto out;
    size_t ntok = (size_t)(B * T);
    if (get_sized_bin(&ids, &f[F_IDS], ntok * 4, "B*T*4", err) ||
        get_sized_bin(&labels, &f[F_LABELS], ntok * 4, "B*T*4", err) ||
        (f[F_MASK].val && get_sized_bin(&mask, &f[F_MASK], ntok, "B*T", err)) ||
        get_sized_bin(&prov, &f[F_PROV], (size_t)B * TB_PROTO_PROV_SIZE, "B*40", err) ||
        tbp_get_u64(&crc, &f[F_CRC], 0, UINT32_MAX, "BATCH", err))
        goto out;
    uint32_t got = tb_crc32c(0, ids, ntok * 4);
    got = tb_crc32c(got, labels, ntok * 4);
    if (mask) got = tb_crc32c(got, mask, ntok);
    if (got != crc) {
        tb_err_set(err, "BATCH.crc: %08" PRIx64 " != crc32c of the payload %08" PRIx32, crc, got);
        goto out;
    }
    out->B = (uint32_t)B;
    out->T = (uint32_t)T;
    out->crc = (uint32_t)crc;
    if (int32s(&out->ids, ids, ntok, "ids", err) || int32s(&out->labels, labels, ntok, "labels", err))
        goto out;
    if (mask) {
        out->attn_mask = malloc(ntok);
        if (!out->attn_mask) {
            tb_err_set(err, "BATCH.attn_mask: out of memory (%zu bytes)", ntok);
            goto out;
        }
        memcpy(out->attn_mask, mask, ntok);
    }
    out->prov = malloc((size_t)B * sizeof *out->prov);
    if (!out->prov) {
        tb_err_set(err, "BATCH.provenance: out of memory");
        goto out;
    }
    for (size_t i = 0; i < B; i++) {
        const uint8_t *r = prov + i * TB_PROTO_PROV_SIZE;
        out->prov[i] = (tb_prov){.sample = rd64(r), .generation = rd64(r + 8), .doc = rd64(r + 16),
                                 .token_offset = rd64(r + 24), .shard = rd32(r + 32),
                                 .length = rd32(r + 36)};
    }
    rc = check_values(out, err);
out:
    msgpack_unpacked_destroy(&u);
    if (rc) tb_batch_free(out);
    return rc;
}
