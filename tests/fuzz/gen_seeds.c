/* Writes the seed corpus of every fuzz target: valid encodings of its message (edge
 * values included), the other messages, and a few hostile shapes.
 * usage: fuzz_gen_seeds OUTDIR   (creates OUTDIR/<target>/seed-NNN) */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto_test_util.h"

enum { NT = 7 };
static const char *const targets[NT] = {"fuzz_hello",   "fuzz_credit",  "fuzz_ack",  "fuzz_batch",
                                        "fuzz_metrics", "fuzz_request", "fuzz_reply"};
static const char *outdir;
static int counter[NT];

static void put(int t, const void *p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/seed-%03d", outdir, targets[t], counter[t]++);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f)) {
        fprintf(stderr, "gen_seeds: %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

static void put_sb(int t, msgpack_sbuffer *sb) {
    put(t, sb->data, sb->size);
    msgpack_sbuffer_destroy(sb);
}

/* Every target also gets the other messages and the hostile shapes. */
static void put_all(const void *p, size_t n) {
    for (int t = 0; t < NT; t++) put(t, p, n);
}

#define ENC(t, call)                                                                               \
    do {                                                                                           \
        msgpack_sbuffer sb;                                                                        \
        msgpack_sbuffer_init(&sb);                                                                 \
        msgpack_packer pk;                                                                         \
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);                                      \
        tb_err err;                                                                                \
        if (call) {                                                                                \
            fprintf(stderr, "gen_seeds: %s\n", err.msg);                                           \
            exit(1);                                                                               \
        }                                                                                          \
        put_sb(t, &sb);                                                                            \
    } while (0)

static void batch_seed(uint32_t B, uint32_t T, int with_mask) {
    size_t ntok = (size_t)B * T;
    int32_t *ids = malloc(ntok * 4), *labels = malloc(ntok * 4);
    uint8_t *mask = malloc(ntok);
    tb_prov *prov = calloc(B, sizeof *prov);
    for (size_t i = 0; i < ntok; i++) {
        ids[i] = (int32_t)(i * 7919 % 50000);
        labels[i] = i % 6 == 0 ? ids[i] : -100;
        mask[i] = (uint8_t)(i % T < T - 1);
    }
    for (uint32_t i = 0; i < B; i++) prov[i] = (tb_prov){i, 1, i * 3, i, i % 4, T - 1};
    uint8_t shuffle[32] = {9, 8, 7};
    tb_batch b = {.seq = B * 1000 + T, .B = B, .T = T, .ids = ids, .labels = labels,
                  .attn_mask = with_mask ? mask : NULL, .prov = prov,
                  .cursor_after = {1, 2, 3, 4, 5, 6, shuffle, sizeof shuffle}};
    ENC(3, tb_proto_encode_batch(&pk, &b, &err));
    free(ids), free(labels), free(mask), free(prov);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 64;
    }
    outdir = argv[1];
    mkdir(outdir, 0755);
    for (int t = 0; t < NT; t++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", outdir, targets[t]);
        mkdir(path, 0755);
    }
    msgpack_sbuffer sb;
    /* The test samples, for every target. */
    void (*samples[])(msgpack_sbuffer *) = {sample_credit, sample_ack, sample_metrics, sample_request};
    for (size_t i = 0; i < 4; i++) {
        samples[i](&sb);
        put_all(sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    for (int b = 0; b < 2; b++) {
        sample_hello(&sb, b);
        put_all(sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        sample_batch(&sb, b);
        put_all(sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        sample_reply(&sb, b);
        put_all(sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    /* Edge values per message. */
    uint8_t shuffle[100];
    for (int i = 0; i < 100; i++) shuffle[i] = (uint8_t)i;
    tb_hello h = {.rank = 65535, .world = 65536, .has_cursor = 1, .client = "x",
                  .cursor = {UINT64_MAX, 0, 1, UINT64_MAX, 7, 1ull << 40, shuffle, sizeof shuffle}};
    ENC(0, tb_proto_encode_hello(&pk, &h, &err));
    h = (tb_hello){.rank = 0, .world = 1};
    ENC(0, tb_proto_encode_hello(&pk, &h, &err));
    ENC(1, tb_proto_encode_credit(&pk, 1, &err));
    ENC(1, tb_proto_encode_credit(&pk, TB_PROTO_MAX_CREDIT, &err));
    ENC(2, tb_proto_encode_ack(&pk, 0, &err));
    ENC(2, tb_proto_encode_ack(&pk, UINT64_MAX, &err));
    batch_seed(1, 1, 0);
    batch_seed(1, 1, 1);
    batch_seed(4, 16, 1);
    batch_seed(3, 7, 0);
    tb_metrics m = {.topic = "trainerd.event", .seq = UINT64_MAX, .time = NAN};
    tb_err err;
    tb_kvmap_add_int(&m.fields, "i", INT64_MIN, &err);
    tb_kvmap_add_double(&m.fields, "d", -INFINITY, &err);
    tb_kvmap_add_bool(&m.fields, "b", 1, &err);
    tb_kvmap_add_str(&m.fields, "s", "non-finite loss", &err);
    ENC(4, tb_proto_encode_metrics(&pk, &m, &err));
    tb_metrics_free(&m);
    m = (tb_metrics){.topic = "prefetchd.stats"};
    ENC(4, tb_proto_encode_metrics(&pk, &m, &err));
    tb_request r = {.id = 0, .verb = "pause"};
    ENC(5, tb_proto_encode_request(&pk, &r, &err));
    tb_kvmap_add_double(&r.args, "scale", 0.5, &err);
    tb_kvmap_add_int(&r.args, "n", -1, &err);
    ENC(5, tb_proto_encode_request(&pk, &r, &err));
    tb_request_free(&r);
    tb_reply p = {.id = UINT64_MAX, .ok = 1};
    tb_kvmap_add_str(&p.result, "state", "running", &err);
    ENC(6, tb_proto_encode_reply(&pk, &p, &err));
    tb_reply_free(&p);

    /* Hostile shapes: the array32 bomb, huge str/bin/map lengths, deep nesting, ext. */
    uint8_t bomb[155] = {0x81, 0xa1, 'x'};
    for (size_t i = 3; i + 5 <= sizeof bomb; i += 5)
        memcpy(bomb + i, (const uint8_t[]){0xdd, 0x0f, 0xff, 0xff, 0xff}, 5);
    put_all(bomb, sizeof bomb);
    const uint8_t huge[][8] = {
        {0x81, 0xa1, 'x', 0xdb, 0xff, 0xff, 0xff, 0xff}, {0x81, 0xa1, 'x', 0xc6, 0xff, 0xff, 0xff, 0xff},
        {0x81, 0xa1, 'x', 0xdf, 0xff, 0xff, 0xff, 0xff}, {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 1},
        {0x81, 0xa1, 'x', 0x91, 0x91, 0x91, 0x91, 0x90}, {0x81, 0xa1, 'x', 0xd6, 1, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) put_all(huge[i], sizeof huge[i]);
    return 0;
}
