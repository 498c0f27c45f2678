/* The SentencePiece C API (common/tb_spm.h) against the spm_encode CLI on the corpus
 * fixture (deploy/corpus/fixture.sh, built by the ctest fixture `corpus`).
 *
 * How text is fed: spm_encode reads its input line by line and encodes each line on its
 * own, so the test splits every fixture document on '\n' and encodes each line with
 * tb_spm_encode; the same lines, in the same order, go to one spm_encode run, whose
 * output line i must equal the C API's ids for line i (empty lines give no ids). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "tb_spm.h"

#define FIXTURE_DIR TB_BINARY_DIR "/fixture"
#define MODEL FIXTURE_DIR "/spm.model"

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static void buf_put(buf *b, const void *data, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static buf read_gz(const char *path) {
    buf b = {0};
    gzFile g = gzopen(path, "rb");
    assert_non_null(g);
    char chunk[1 << 16];
    int r;
    while ((r = gzread(g, chunk, sizeof chunk)) > 0) buf_put(&b, chunk, (size_t)r);
    assert_int_equal(r, 0);
    gzclose(g);
    return b;
}

static buf read_zst(const char *path) {
    buf b = {0}, raw = {0};
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char chunk[1 << 16];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) buf_put(&raw, chunk, r);
    fclose(f);
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer in = {raw.p, raw.n, 0};
    size_t ret = 1;
    while (in.pos < in.size) {
        ZSTD_outBuffer out = {chunk, sizeof chunk, 0};
        ret = ZSTD_decompressStream(d, &out, &in);
        assert_false(ZSTD_isError(ret));
        buf_put(&b, chunk, out.pos);
    }
    assert_int_equal(ret, 0); /* frame complete */
    ZSTD_freeDCtx(d);
    free(raw.p);
    return b;
}

/* Texts of the documents of a JSONL buffer (field `field`), as a NULL-terminated array. */
static char **docs_of(buf *b, const char *field, size_t *n_out) {
    size_t n = 0, cap = 64;
    char **docs = malloc(cap * sizeof *docs);
    assert_non_null(docs);
    char *save = NULL;
    for (char *line = strtok_r(b->p, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        assert_non_null(o);
        json_t *t = json_object_get(o, field);
        assert_true(json_is_string(t));
        if (n + 1 >= cap) {
            cap *= 2;
            docs = realloc(docs, cap * sizeof *docs);
            assert_non_null(docs);
        }
        docs[n++] = strdup(json_string_value(t));
        json_decref(o);
    }
    docs[n] = NULL;
    *n_out = n;
    return docs;
}

static void docs_free(char **docs) {
    for (size_t i = 0; docs[i]; i++) free(docs[i]);
    free(docs);
}

static tb_spm *load_fixture(void) {
    tb_err err = {{0}};
    tb_spm *spm = tb_spm_load(MODEL, &err);
    if (!spm) fail_msg("%s", err.msg);
    return spm;
}

/* Encodes s[0..len) into a malloc'd array; *n gets the count. */
static int32_t *encode(const tb_spm *spm, const char *s, size_t len, int64_t *n) {
    tb_err err = {{0}};
    int32_t small[4];
    int64_t total = tb_spm_encode(spm, s, len, small, 4, &err);
    if (total < 0) fail_msg("%s", err.msg);
    int32_t *ids = malloc(((size_t)total + 1) * sizeof *ids);
    assert_non_null(ids);
    assert_int_equal(tb_spm_encode(spm, s, len, ids, (size_t)total, &err), total);
    for (int64_t i = 0; i < total && i < 4; i++) assert_int_equal(ids[i], small[i]);
    *n = total;
    return ids;
}

static void test_c_api_equals_spm_encode_on_every_fixture_line(void **state) {
    (void)state;
    tb_spm *spm = load_fixture();
    buf gz = read_gz(FIXTURE_DIR "/fixture-00000.jsonl.gz");
    size_t ndocs;
    char **docs = docs_of(&gz, "raw_content", &ndocs);
    assert_true(ndocs >= 20);

    char in_path[] = "/tmp/tb-spm-test-in.XXXXXX";
    int fd = mkstemp(in_path);
    assert_true(fd >= 0);
    FILE *in = fdopen(fd, "w");
    assert_non_null(in);
    size_t nlines = 0;
    for (size_t d = 0; d < ndocs; d++) {
        fputs(docs[d], in);
        fputc('\n', in);
        for (const char *c = docs[d]; *c; c++) nlines += *c == '\n';
        nlines++;
    }
    assert_int_equal(fclose(in), 0);

    char cmd[4096];
    snprintf(cmd, sizeof cmd, "spm_encode --model='%s' --output_format=id < '%s'", MODEL,
             in_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *line = NULL;
    size_t linecap = 0;
    size_t checked = 0, ids_total = 0;
    for (size_t d = 0; d < ndocs; d++) {
        const char *s = docs[d];
        for (;;) {
            const char *e = strchr(s, '\n');
            size_t len = e ? (size_t)(e - s) : strlen(s);
            ssize_t got = getline(&line, &linecap, p);
            if (got < 0) fail_msg("spm_encode gave fewer lines than the %zu fed", nlines);
            int64_t n;
            int32_t *ids = encode(spm, s, len, &n);
            char *q = line;
            for (int64_t i = 0; i < n; i++) {
                char *end;
                long v = strtol(q, &end, 10);
                if (end == q)
                    fail_msg("doc %zu line %zu: spm_encode stopped at id %lld of %lld", d,
                             checked, (long long)i, (long long)n);
                if (v != ids[i])
                    fail_msg("doc %zu line %zu id %lld: spm_encode %ld, C API %d", d, checked,
                             (long long)i, v, ids[i]);
                q = end;
            }
            while (*q == ' ' || *q == '\n') q++;
            if (*q) fail_msg("doc %zu line %zu: spm_encode has more ids than C API (%lld)", d,
                             checked, (long long)n);
            ids_total += (size_t)n;
            checked++;
            free(ids);
            if (!e) break;
            s = e + 1;
        }
    }
    assert_int_equal(getline(&line, &linecap, p), -1);
    assert_int_equal(pclose(p), 0);
    assert_int_equal(checked, nlines);
    assert_true(ids_total > 10000);
    free(line);
    unlink(in_path);
    docs_free(docs);
    free(gz.p);
    tb_spm_free(spm);
}

static void test_zst_variant_holds_the_same_documents(void **state) {
    (void)state;
    buf gz = read_gz(FIXTURE_DIR "/fixture-00000.jsonl.gz");
    buf zs = read_zst(FIXTURE_DIR "/fixture-00000.jsonl.zst");
    size_t na, nb;
    char **a = docs_of(&gz, "raw_content", &na);
    char **b = docs_of(&zs, "text", &nb);
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) assert_string_equal(a[i], b[i]);
    docs_free(a);
    docs_free(b);
    free(gz.p);
    free(zs.p);
}

static void test_specials_are_4_5_6_7_1_and_control(void **state) {
    (void)state;
    tb_spm *spm = load_fixture();
    tb_spm_specials s = tb_spm_get_specials(spm);
    assert_int_equal(s.cls, 4);
    assert_int_equal(s.sep, 5);
    assert_int_equal(s.mask, 6);
    assert_int_equal(s.pad, 7);
    assert_int_equal(s.unk, 1);
    assert_int_equal(s.bos, 2);
    assert_int_equal(s.eos, 3);
    assert_int_equal(tb_spm_vocab_size(spm), 8000);
    for (int32_t id = 0; id < 8; id++) assert_true(tb_spm_is_special(spm, id));
    assert_string_equal(tb_spm_id_to_piece(spm, 6), "[MASK]");
    assert_string_equal(tb_spm_id_to_piece(spm, 0), "<pad>");
    assert_null(tb_spm_id_to_piece(spm, -1));
    assert_null(tb_spm_id_to_piece(spm, 8000));
    assert_int_equal(tb_spm_piece_to_id(spm, "[SEP]"), 5);
    assert_int_equal(tb_spm_piece_to_id(spm, "no such piece \xe2\x98\x83\xe2\x98\x83"), -1);
    /* Ordinary pieces are not special: every id of a Spanish sentence. */
    const char *txt = "La traducción al español de esta página del manual.";
    int64_t n;
    int32_t *ids = encode(spm, txt, strlen(txt), &n);
    assert_true(n > 0);
    for (int64_t i = 0; i < n; i++) assert_false(tb_spm_is_special(spm, ids[i]));
    free(ids);
    tb_spm_free(spm);
}

static void test_literal_mask_text_is_not_the_mask_token(void **state) {
    (void)state;
    tb_spm *spm = load_fixture();
    const char *txt = "el [MASK] y [CLS] [SEP] [PAD] <unk> <s> </s> literales";
    int64_t n;
    int32_t *ids = encode(spm, txt, strlen(txt), &n);
    assert_true(n > 8);
    for (int64_t i = 0; i < n; i++) {
        assert_int_not_equal(ids[i], 6);
        assert_false(tb_spm_is_special(spm, ids[i]) && ids[i] != 1);
    }
    free(ids);
    tb_spm_free(spm);
}

static void test_encode_handles_empty_nul_and_invalid_utf8(void **state) {
    (void)state;
    tb_spm *spm = load_fixture();
    tb_err err = {{0}};
    int32_t out[64];
    assert_int_equal(tb_spm_encode(spm, "", 0, out, 64, &err), 0);
    assert_int_equal(tb_spm_encode(spm, NULL, 0, NULL, 0, &err), 0);
    /* len, not NUL, bounds the text: "hola" of "hola mundo". */
    int64_t a = tb_spm_encode(spm, "hola mundo", 4, out, 64, &err);
    int64_t b = tb_spm_encode(spm, "hola", 4, out + 32, 32, &err);
    assert_int_equal(a, b);
    assert_memory_equal(out, out + 32, (size_t)a * sizeof *out);
    const char bad[] = "a\xff\xfe b\0c \xc3";
    assert_true(tb_spm_encode(spm, bad, sizeof bad - 1, out, 64, &err) > 0);
    /* cap smaller than the count: total returned, nothing past cap written. */
    out[1] = -12345;
    int64_t total = tb_spm_encode(spm, "uno dos tres cuatro cinco", 25, out, 1, &err);
    assert_true(total > 1);
    assert_int_equal(out[1], -12345);
    assert_int_equal(tb_spm_encode(NULL, "x", 1, out, 64, &err), -1);
    assert_non_null(strstr(err.msg, "NULL"));
    tb_spm_free(spm);
    tb_spm_free(NULL);
}

static void test_missing_or_corrupt_model_names_the_path(void **state) {
    (void)state;
    tb_err err = {{0}};
    const char *missing = TB_BINARY_DIR "/no/such/dir/model.model";
    assert_null(tb_spm_load(missing, &err));
    assert_non_null(strstr(err.msg, missing));
    memset(&err, 0, sizeof err);
    /* A text file is not a model. */
    assert_null(tb_spm_load(FIXTURE_DIR "/spm.vocab", &err));
    assert_non_null(strstr(err.msg, FIXTURE_DIR "/spm.vocab"));
    assert_null(tb_spm_load(NULL, &err));
    assert_null(tb_spm_load(missing, NULL));
}

typedef struct enc_job {
    const tb_spm *spm;
    const char *text;
    int64_t n;
    int32_t ids[4096];
} enc_job;

static void *enc_thread(void *arg) {
    enc_job *j = arg;
    for (int r = 0; r < 50; r++) {
        tb_err err;
        int32_t ids[4096];
        int64_t n = tb_spm_encode(j->spm, j->text, strlen(j->text), ids, 4096, &err);
        if (n != j->n || memcmp(ids, j->ids, (size_t)n * sizeof *ids) != 0) return (void *)1;
    }
    return NULL;
}

static void test_concurrent_encodes_agree(void **state) {
    (void)state;
    tb_spm *spm = load_fixture();
    static enc_job jobs[2];
    const char *texts[2] = {"Muestra información sobre los archivos del directorio actual.",
                            "Copyright 2023: opciones largas --block-size=TAMAÑO 12345"};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        tb_err err;
        jobs[i].spm = spm;
        jobs[i].text = texts[i];
        jobs[i].n = tb_spm_encode(spm, texts[i], strlen(texts[i]), jobs[i].ids, 4096, &err);
        assert_true(jobs[i].n > 0);
    }
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, enc_thread, &jobs[i]), 0);
    for (int i = 0; i < 2; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    tb_spm_free(spm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_c_api_equals_spm_encode_on_every_fixture_line),
        cmocka_unit_test(test_zst_variant_holds_the_same_documents),
        cmocka_unit_test(test_specials_are_4_5_6_7_1_and_control),
        cmocka_unit_test(test_literal_mask_text_is_not_the_mask_token),
        cmocka_unit_test(test_encode_handles_empty_nul_and_invalid_utf8),
        cmocka_unit_test(test_missing_or_corrupt_model_names_the_path),
        cmocka_unit_test(test_concurrent_encodes_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
