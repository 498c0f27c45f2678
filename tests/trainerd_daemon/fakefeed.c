/* A stand-in prefetchd for trainerd tests: binds a ROUTER, answers HELLO {cursor} by
 * seeking to batch samples_emitted / B, and sends BATCH under CREDIT. Batch k is a pure
 * function of (seed, k), so a restarted trainer gets exactly the planned stream.
 * --bad-at K sends, once, before batch K, one malformed BATCH per field (see bad_kinds).
 * usage: td_fakefeed ENDPOINT B T VOCAB SEED [--bad-at K] */
#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "tb_proto_feed.h"
#include "tb_rng.h"

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static uint32_t B, T, V;
static uint64_t seed;

static void make_batch(tb_batch *b, uint64_t seq) {
    memset(b, 0, sizeof *b);
    size_t n = (size_t)B * T;
    b->seq = seq;
    b->B = B;
    b->T = T;
    b->ids = malloc(n * 4);
    b->labels = malloc(n * 4);
    b->prov = calloc(B, sizeof *b->prov);
    for (size_t i = 0; i < n; i++) {
        uint32_t r = tb_rng_at(seed, 901, (uint32_t)seq, (uint32_t)i, 0, 0);
        uint32_t m = tb_rng_at(seed, 902, (uint32_t)seq, (uint32_t)i, 0, 0);
        int32_t id = 8 + (int32_t)(r % (V - 8));
        /* A learnable pattern: position parity picks a half of the vocabulary. */
        if (i % 2) id = 8 + (int32_t)(r % 64);
        if (m % 100 < 15) {
            b->labels[i] = id;
            b->ids[i] = 6; /* [MASK] */
        } else {
            b->labels[i] = -100;
            b->ids[i] = id;
        }
    }
    for (uint32_t s = 0; s < B; s++) {
        b->prov[s].sample = seq * B + s;
        b->prov[s].doc = seq * B + s;
        b->prov[s].length = T;
    }
    b->cursor_after.epoch = (seq + 1) / 1000;
    b->cursor_after.samples_emitted = (seq + 1) * B;
    b->cursor_after.doc_index = (seq + 1) * B;
}

static void pstr(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* Malformed BATCH kinds, one field wrong each. */
enum { BAD_VERSION, BAD_TYPE, BAD_SEQ_TYPE, BAD_B, BAD_T, BAD_CURSOR, BAD_IDS_LEN, BAD_LABEL_VALUE,
       BAD_PROV_LEN, BAD_CRC, BAD_ID_RANGE, BAD_SHAPE_BIG, BAD_NOT_MSGPACK, BAD_N };

static void pack_bad(msgpack_sbuffer *sb, int kind, uint64_t seq) {
    tb_batch b;
    uint32_t bb = B, tt = T;
    if (kind == BAD_SHAPE_BIG) tt = T * 64; /* consistent but larger than the arena */
    uint32_t saveT = T;
    T = tt;
    make_batch(&b, seq);
    T = saveT;
    size_t n = (size_t)bb * tt;
    if (kind == BAD_LABEL_VALUE) b.labels[3] = -5;
    if (kind == BAD_ID_RANGE) b.ids[5] = (int32_t)V + 7;
    uint32_t crc = tb_proto_batch_crc(b.ids, b.labels, NULL, n);
    if (kind == BAD_CRC) crc ^= 0x5a5a;
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    if (kind == BAD_NOT_MSGPACK) {
        msgpack_sbuffer_write(sb, "\xc1\xc1garbage", 9);
        tb_batch_free(&b);
        return;
    }
    msgpack_pack_map(&pk, 10);
    pstr(&pk, "v");
    msgpack_pack_uint32(&pk, kind == BAD_VERSION ? 99 : 1);
    pstr(&pk, "t");
    pstr(&pk, kind == BAD_TYPE ? "batchx" : "batch");
    pstr(&pk, "seq");
    if (kind == BAD_SEQ_TYPE) pstr(&pk, "seven");
    else msgpack_pack_uint64(&pk, seq);
    pstr(&pk, "B");
    msgpack_pack_uint32(&pk, kind == BAD_B ? bb + 1 : bb);
    pstr(&pk, "T");
    msgpack_pack_uint32(&pk, kind == BAD_T ? tt + 3 : tt);
    pstr(&pk, "cursor_after");
    if (kind == BAD_CURSOR) {
        msgpack_pack_map(&pk, 1);
        pstr(&pk, "epoch");
        pstr(&pk, "x");
    } else {
        const char *k[] = {"generation", "epoch", "shard_pos", "doc_index", "token_offset",
                           "samples_emitted"};
        uint64_t v[] = {0, b.cursor_after.epoch, 0, b.cursor_after.doc_index, 0,
                        b.cursor_after.samples_emitted};
        msgpack_pack_map(&pk, 7);
        for (int i = 0; i < 6; i++) {
            pstr(&pk, k[i]);
            msgpack_pack_uint64(&pk, v[i]);
        }
        pstr(&pk, "shuffle");
        msgpack_pack_bin(&pk, 0);
    }
    size_t idn = kind == BAD_IDS_LEN ? n - 1 : n;
    pstr(&pk, "ids");
    msgpack_pack_bin(&pk, idn * 4);
    msgpack_pack_bin_body(&pk, b.ids, idn * 4); /* little-endian host */
    pstr(&pk, "labels");
    msgpack_pack_bin(&pk, n * 4);
    msgpack_pack_bin_body(&pk, b.labels, n * 4);
    pstr(&pk, "provenance");
    size_t pn = kind == BAD_PROV_LEN ? (bb - 1) * TB_PROTO_PROV_SIZE + 3 : bb * TB_PROTO_PROV_SIZE;
    msgpack_pack_bin(&pk, pn);
    char *zero = calloc(1, pn + 1);
    msgpack_pack_bin_body(&pk, zero, pn);
    free(zero);
    pstr(&pk, "crc");
    msgpack_pack_uint32(&pk, crc);
    tb_batch_free(&b);
}

typedef struct peer {
    char id[256];
    size_t idlen;
    uint64_t next;
    uint64_t credit;
} peer;

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: td_fakefeed ENDPOINT B T VOCAB SEED [--bad-at K | --skip-at K]\n");
        return 64;
    }
    B = (uint32_t)atoi(argv[2]);
    T = (uint32_t)atoi(argv[3]);
    V = (uint32_t)atoi(argv[4]);
    seed = strtoull(argv[5], NULL, 10);
    long long bad_at = -1;
    long long skip_at = -1; /* once: batch K is not sent (a feed that skips one) */
    if (argc >= 8 && !strcmp(argv[6], "--bad-at")) bad_at = atoll(argv[7]);
    if (argc >= 8 && !strcmp(argv[6], "--skip-at")) skip_at = atoll(argv[7]);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    int one = 1, linger = 0;
    zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(r, argv[1])) {
        fprintf(stderr, "fakefeed: bind %s: %s\n", argv[1], zmq_strerror(zmq_errno()));
        return 1;
    }
    peer peers[256]; /* one per trainerd connection; kill -9 tests make many */
    int np = 0;
    int bad_done = 0;
    while (!stop) {
        zmq_pollitem_t it = {r, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) < 0) continue;
        while (1) {
            char id[256];
            int idn = zmq_recv(r, id, sizeof id, ZMQ_DONTWAIT);
            if (idn < 0) break;
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, r, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            peer *p = NULL;
            for (int i = 0; i < np; i++)
                if (peers[i].idlen == (size_t)idn && !memcmp(peers[i].id, id, (size_t)idn)) p = &peers[i];
            if (!p && np < 256) {
                p = &peers[np++];
                memset(p, 0, sizeof *p);
                memcpy(p->id, id, (size_t)idn);
                p->idlen = (size_t)idn;
            }
            tb_proto_type ty;
            tb_err err;
            const void *d = zmq_msg_data(&m);
            size_t dl = zmq_msg_size(&m);
            if (p && !tb_proto_peek_type(&ty, d, dl, &err)) {
                if (ty == TB_PROTO_HELLO) {
                    tb_hello h;
                    if (!tb_proto_decode_hello(d, dl, &h, &err)) {
                        p->next = h.has_cursor ? h.cursor.samples_emitted / B : 0;
                        p->credit = 0;
                        fprintf(stderr, "fakefeed: HELLO %s -> seq %llu\n", h.client,
                                (unsigned long long)p->next);
                        tb_hello_free(&h);
                    }
                } else if (ty == TB_PROTO_CREDIT) {
                    uint32_t n;
                    if (!tb_proto_decode_credit(d, dl, &n, &err)) p->credit += n;
                }
            }
            zmq_msg_close(&m);
        }
        for (int i = 0; i < np; i++) {
            peer *p = &peers[i];
            while (p->credit > 0) {
                if (skip_at >= 0 && p->next == (uint64_t)skip_at) {
                    fprintf(stderr, "fakefeed: skipping batch %lld once\n", skip_at);
                    skip_at = -1;
                    p->next++;
                }
                msgpack_sbuffer sb;
                msgpack_sbuffer_init(&sb);
                if (!bad_done && bad_at >= 0 && p->next == (uint64_t)bad_at) {
                    static int kind = 0;
                    pack_bad(&sb, kind, p->next);
                    if (++kind == BAD_N) bad_done = 1;
                } else {
                    msgpack_packer pk;
                    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
                    tb_batch b;
                    make_batch(&b, p->next);
                    tb_err err;
                    if (tb_proto_encode_batch(&pk, &b, &err)) {
                        fprintf(stderr, "fakefeed: %s\n", err.msg);
                        return 1;
                    }
                    tb_batch_free(&b);
                    p->next++;
                }
                p->credit--;
                zmq_send(r, p->id, p->idlen, ZMQ_SNDMORE);
                zmq_send(r, sb.data, sb.size, 0);
                msgpack_sbuffer_destroy(&sb);
            }
        }
    }
    zmq_close(r);
    zmq_ctx_term(ctx);
    return 0;
}
