/* safetensors: a file round-trips bit for bit (weights and AdamW moments, metadata);
 * corrupt or mismatched files are rejected with a message naming tensor and values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"

static void small_cfg(tb_model_config *mc, int vocab, int conv) {
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    rc.model.vocab_size = vocab;
    rc.model.hidden_size = 32;
    rc.model.factorized_embedding_dim = 16;
    rc.model.ffn_hidden_size = 48;
    rc.model.use_embedding_conv = conv;
    assert_int_equal(tb_model_config_finish(&rc.model, &err), 0);
    *mc = rc.model;
}

static void make(tb_params *p, int vocab, int conv, uint64_t seed) {
    tb_model_config mc;
    tb_err err = {{0}};
    small_cfg(&mc, vocab, conv);
    assert_int_equal(tb_params_build(p, &mc, &err), 0);
    assert_int_equal(tb_params_alloc(p, &err), 0);
    tb_params_init(p, seed);
}

static char path_[1024];
static const char *tmp_path(const char *name) {
    snprintf(path_, sizeof path_, "%s/st_test_%d_%s.safetensors", TB_BINARY_DIR, (int)getpid(), name);
    return path_;
}

static void test_roundtrip_is_bit_exact_with_moments_and_metadata(void **s) {
    (void)s;
    tb_params a, b;
    tb_err err = {{0}};
    make(&a, 50, 1, 1);
    make(&b, 50, 1, 2);
    for (size_t i = 0; i < a.total; i++) {
        a.m[i] = (real)(i % 97) * 1e-3f - 0.01f;
        a.v[i] = (real)(i % 89) * 1e-7f;
    }
    a.param[3] = -0.0f; /* signed zero survives */
    tb_st_meta meta[2] = {{"step", "17"}, {"lr_scale", "0.75"}};
    const char *path = tmp_path("rt");
    tb_st_role wr[] = {{a.param, ""}, {a.m, ".exp_avg"}, {a.v, ".exp_avg_sq"}};
    assert_int_equal(tb_st_write(path, &a, wr, 3, meta, 2, &err), 0);
    tb_st_role rd[] = {{b.param, ""}, {b.m, ".exp_avg"}, {b.v, ".exp_avg_sq"}};
    tb_st_meta got[4];
    int n = 0;
    int rv = tb_st_read(path, &b, rd, 3, got, 4, &n, &err);
    if (rv) printf("%s\n", err.msg);
    assert_int_equal(rv, 0);
    assert_memory_equal(a.param, b.param, a.total * sizeof(real));
    assert_memory_equal(a.m, b.m, a.total * sizeof(real));
    assert_memory_equal(a.v, b.v, a.total * sizeof(real));
    assert_int_equal(n, 2);
    assert_string_equal(tb_st_meta_get(got, n, "step"), "17");
    assert_string_equal(tb_st_meta_get(got, n, "lr_scale"), "0.75");
    /* Writing again gives the identical file. */
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    unsigned char *x = malloc((size_t)len), *y = malloc((size_t)len);
    rewind(f);
    assert_int_equal(fread(x, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    assert_int_equal(tb_st_write(path, &b, rd, 3, meta, 2, &err), 0);
    f = fopen(path, "rb");
    assert_int_equal(fread(y, 1, (size_t)len, f), (size_t)len);
    assert_int_equal(fgetc(f), EOF);
    fclose(f);
    assert_memory_equal(x, y, (size_t)len);
    free(x);
    free(y);
    unlink(path);
    tb_params_free(&a);
    tb_params_free(&b);
}

static unsigned char *slurp(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    rewind(f);
    unsigned char *b = malloc((size_t)*len);
    assert_int_equal(fread(b, 1, (size_t)*len, f), (size_t)*len);
    fclose(f);
    return b;
}

static void spit(const char *path, const unsigned char *b, long len) {
    FILE *f = fopen(path, "wb");
    assert_int_equal(fwrite(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
}

static void expect_fail(const tb_params *p, const char *path, const char *needle) {
    tb_err err = {{0}};
    tb_st_role rd[] = {{p->param, ""}};
    assert_int_equal(tb_st_read(path, p, rd, 1, NULL, 0, NULL, &err), -1);
    printf("rejected: %s\n", err.msg);
    if (!strstr(err.msg, needle)) fail_msg("message lacks '%s'", needle);
}

static void test_corrupt_files_are_rejected_with_clear_errors(void **s) {
    (void)s;
    tb_params a;
    tb_err err = {{0}};
    make(&a, 50, 1, 1);
    const char *path = tmp_path("bad");
    char good[1024];
    snprintf(good, sizeof good, "%s", path);
    tb_st_role wr[] = {{a.param, ""}};
    assert_int_equal(tb_st_write(good, &a, wr, 1, NULL, 0, &err), 0);
    long len;
    unsigned char *b = slurp(good, &len);
    char bad[1100];
    snprintf(bad, sizeof bad, "%s.x", good);

    spit(bad, b, len - 4); /* truncated data */
    expect_fail(&a, bad, "head.weight");
    spit(bad, b, 5); /* shorter than the length field */
    expect_fail(&a, bad, "too short");
    unsigned char *c = malloc((size_t)len);
    memcpy(c, b, (size_t)len);
    c[6] = 0x7f; /* absurd header length */
    spit(bad, c, len);
    expect_fail(&a, bad, "header length");
    memcpy(c, b, (size_t)len);
    c[0] ^= 0x08; /* header length off by 8: JSON cut or spilled */
    spit(bad, c, len);
    expect_fail(&a, bad, "header");
    memcpy(c, b, (size_t)len);
    char *dt = memmem(c, (size_t)len, "\"F32\"", 5);
    memcpy(dt, "\"F16\"", 5);
    spit(bad, c, len);
    expect_fail(&a, bad, "dtype F16, expected F32");
    memcpy(c, b, (size_t)len);
    char *sh = memmem(c, (size_t)len, "[50,16]", 7); /* emb.embedding.weight */
    assert_non_null(sh);
    memcpy(sh, "[16,50]", 7);
    spit(bad, c, len);
    expect_fail(&a, bad, "shape [16,50], expected [50,16]");
    free(c);
    free(b);

    tb_params other;
    make(&other, 60, 1, 1); /* vocab 60: wrong shape of the table */
    tb_st_role wo[] = {{other.param, ""}};
    assert_int_equal(tb_st_write(bad, &other, wo, 1, NULL, 0, &err), 0);
    expect_fail(&a, bad, "emb.embedding.weight");
    tb_params_free(&other);
    make(&other, 50, 0, 1); /* no conv: tensors missing */
    tb_st_role wo2[] = {{other.param, ""}};
    assert_int_equal(tb_st_write(bad, &other, wo2, 1, NULL, 0, &err), 0);
    expect_fail(&a, bad, "'emb.conv.weight' is missing");
    /* and the other way round: an extra tensor */
    assert_int_equal(tb_st_write(bad, &a, wr, 1, NULL, 0, &err), 0);
    tb_st_role ro[] = {{other.param, ""}};
    assert_int_equal(tb_st_read(bad, &other, ro, 1, NULL, 0, NULL, &err), -1);
    printf("rejected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "'emb.conv.weight' is not part of this model"));
    tb_params_free(&other);
    unlink(bad);
    unlink(good);
    tb_params_free(&a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_is_bit_exact_with_moments_and_metadata),
        cmocka_unit_test(test_corrupt_files_are_rejected_with_clear_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
