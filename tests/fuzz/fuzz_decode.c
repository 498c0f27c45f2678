/* libFuzzer target for one proto/ decoder, chosen at compile time by TB_FUZZ_<MSG>.
 * Property checked beyond "no crash, no leak, no big allocation": whatever a decoder
 * accepts, the encoder re-encodes and the decoder accepts again with the same content. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tb_proto.h"
#include "tb_proto_ctl.h"
#include "tb_proto_feed.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

typedef struct enc {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} enc;

static void enc_init(enc *e) {
    msgpack_sbuffer_init(&e->sb);
    msgpack_packer_init(&e->pk, &e->sb, msgpack_sbuffer_write);
}

__attribute__((unused)) static void cursor_same(const tb_cursor *a, const tb_cursor *b) {
    CHECK(a->generation == b->generation && a->epoch == b->epoch && a->shard_pos == b->shard_pos &&
          a->doc_index == b->doc_index && a->token_offset == b->token_offset &&
          a->samples_emitted == b->samples_emitted && a->shuffle_len == b->shuffle_len);
    CHECK(a->shuffle_len == 0 || memcmp(a->shuffle, b->shuffle, a->shuffle_len) == 0);
}

__attribute__((unused)) static void kv_same(const tb_kvmap *a, const tb_kvmap *b) {
    CHECK(a->n == b->n);
    for (size_t i = 0; i < a->n; i++) {
        const tb_kv *x = &a->items[i], *y = &b->items[i];
        CHECK(strcmp(x->key, y->key) == 0 && x->type == y->type);
        if (x->type == TB_KV_INT) CHECK(x->v.i == y->v.i);
        if (x->type == TB_KV_DOUBLE) CHECK(memcmp(&x->v.d, &y->v.d, sizeof(double)) == 0 ||
                                          (isnan(x->v.d) && isnan(y->v.d)));
        if (x->type == TB_KV_BOOL) CHECK(x->v.b == y->v.b);
        if (x->type == TB_KV_STR) CHECK(strcmp(x->v.s, y->v.s) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tb_err err;
    tb_proto_type pt;
    (void)tb_proto_peek_type(&pt, data, size, &err);
    enc e;
#if defined(TB_FUZZ_HELLO)
    tb_hello a, b;
    if (tb_proto_decode_hello(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_hello(&e.pk, &a, &err) == 0);
    CHECK(tb_proto_decode_hello(e.sb.data, e.sb.size, &b, &err) == 0);
    CHECK(a.rank == b.rank && a.world == b.world && a.has_cursor == b.has_cursor &&
          strcmp(a.client, b.client) == 0);
    cursor_same(&a.cursor, &b.cursor);
    tb_hello_free(&a);
    tb_hello_free(&b);
#elif defined(TB_FUZZ_CREDIT)
    uint32_t a, b;
    if (tb_proto_decode_credit(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_credit(&e.pk, a, &err) == 0);
    CHECK(tb_proto_decode_credit(e.sb.data, e.sb.size, &b, &err) == 0 && a == b);
#elif defined(TB_FUZZ_ACK)
    uint64_t a, b;
    if (tb_proto_decode_ack(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_ack(&e.pk, a, &err) == 0);
    CHECK(tb_proto_decode_ack(e.sb.data, e.sb.size, &b, &err) == 0 && a == b);
#elif defined(TB_FUZZ_BATCH)
    tb_batch a, b;
    if (tb_proto_decode_batch(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_batch(&e.pk, &a, &err) == 0);
    CHECK(tb_proto_decode_batch(e.sb.data, e.sb.size, &b, &err) == 0);
    size_t ntok = (size_t)a.B * a.T;
    CHECK(a.seq == b.seq && a.B == b.B && a.T == b.T && a.crc == b.crc);
    CHECK(memcmp(a.ids, b.ids, ntok * 4) == 0 && memcmp(a.labels, b.labels, ntok * 4) == 0);
    CHECK((a.attn_mask == NULL) == (b.attn_mask == NULL));
    CHECK(!a.attn_mask || memcmp(a.attn_mask, b.attn_mask, ntok) == 0);
    CHECK(memcmp(a.prov, b.prov, a.B * sizeof *a.prov) == 0);
    cursor_same(&a.cursor_after, &b.cursor_after);
    tb_batch_free(&a);
    tb_batch_free(&b);
#elif defined(TB_FUZZ_METRICS)
    tb_metrics a, b;
    if (tb_proto_decode_metrics(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_metrics(&e.pk, &a, &err) == 0);
    CHECK(tb_proto_decode_metrics(e.sb.data, e.sb.size, &b, &err) == 0);
    CHECK(strcmp(a.topic, b.topic) == 0 && a.seq == b.seq &&
          (a.time == b.time || (isnan(a.time) && isnan(b.time))));
    kv_same(&a.fields, &b.fields);
    tb_metrics_free(&a);
    tb_metrics_free(&b);
#elif defined(TB_FUZZ_REQUEST)
    tb_request a, b;
    if (tb_proto_decode_request(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_request(&e.pk, &a, &err) == 0);
    CHECK(tb_proto_decode_request(e.sb.data, e.sb.size, &b, &err) == 0);
    CHECK(a.id == b.id && strcmp(a.verb, b.verb) == 0);
    kv_same(&a.args, &b.args);
    tb_request_free(&a);
    tb_request_free(&b);
#elif defined(TB_FUZZ_REPLY)
    tb_reply a, b;
    if (tb_proto_decode_reply(data, size, &a, &err)) return 0;
    enc_init(&e);
    CHECK(tb_proto_encode_reply(&e.pk, &a, &err) == 0);
    CHECK(tb_proto_decode_reply(e.sb.data, e.sb.size, &b, &err) == 0);
    CHECK(a.id == b.id && a.ok == b.ok && (a.error == NULL) == (b.error == NULL));
    CHECK(!a.error || strcmp(a.error, b.error) == 0);
    kv_same(&a.result, &b.result);
    tb_reply_free(&a);
    tb_reply_free(&b);
#else
#error "define one TB_FUZZ_<MSG>"
#endif
    msgpack_sbuffer_destroy(&e.sb);
    return 0;
}
