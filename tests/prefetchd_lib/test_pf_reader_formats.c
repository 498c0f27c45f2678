/* Shard reader and document checks: compression chosen by magic bytes (not the name),
 * multi-member gzip, zstd, plain text paragraphs with their line numbers, CRLF and a last
 * line without newline; the UTF-8 validator on good and bad sequences; whitespace
 * stripping counts code points like Python's strip(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "doc.h"
#include "pf_test_util.h"

typedef struct got {
    int n;
    char *doc[16];
    uint64_t id[16];
} got;

static got read_docs(const char *path, tb_compression want_comp, tb_shard_format want_fmt) {
    tb_err e;
    tb_source *s = tb_source_open_file(path, NULL, &e);
    assert_non_null(s);
    tb_reader *r = tb_reader_open(s, path, &e);
    assert_non_null(r);
    got g = {0};
    const char *d;
    size_t len;
    uint64_t id;
    tb_bad_kind k;
    int rc;
    while ((rc = tb_reader_next(r, &d, &len, &id, &k, &e)) == 1 && g.n < 16) {
        g.doc[g.n] = strndup(d, len);
        g.id[g.n++] = id;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(tb_reader_compression(r), want_comp);
    assert_int_equal(tb_reader_format(r), want_fmt);
    tb_reader_close(r);
    return g;
}

static void got_free(got *g) {
    for (int i = 0; i < g->n; i++) free(g->doc[i]);
}

static void test_compressions_and_formats(void **st) {
    (void)st;
    char dir[600], path[700];
    pf_tmpdir(dir, sizeof dir, "reader");
    const char *j1 = "{\"text\":\"uno\"}\n\n{\"text\":\"dos\"}\n", *j2 = "{\"text\":\"tres\"}";
    pf_buf a = pf_gzip(j1, strlen(j1)), b = pf_gzip(j2, strlen(j2));
    pf_buf_add(&a, b.p, b.n);
    snprintf(path, sizeof path, "%s/multi.txt", dir); /* the name says nothing */
    pf_write(path, a.p, a.n);
    got g = read_docs(path, TB_COMP_GZIP, TB_FMT_JSONL);
    assert_int_equal(g.n, 3);
    assert_string_equal(g.doc[2], "{\"text\":\"tres\"}");
    assert_int_equal(g.id[0], 0);
    assert_int_equal(g.id[1], 2);
    assert_int_equal(g.id[2], 3);
    got_free(&g);
    const char *txt = "\n  \nprimer parrafo\nsigue\r\n\r\nsegundo\n\n\n\ntercero sin fin";
    pf_buf z = pf_zstd(txt, strlen(txt));
    snprintf(path, sizeof path, "%s/plain.gz", dir);
    pf_write(path, z.p, z.n);
    g = read_docs(path, TB_COMP_ZSTD, TB_FMT_TEXT);
    assert_int_equal(g.n, 3);
    assert_string_equal(g.doc[0], "primer parrafo\nsigue\r");
    assert_int_equal(g.id[0], 2);
    assert_string_equal(g.doc[1], "segundo");
    assert_int_equal(g.id[1], 5);
    assert_string_equal(g.doc[2], "tercero sin fin");
    assert_int_equal(g.id[2], 9);
    got_free(&g);
    snprintf(path, sizeof path, "%s/raw.zst", dir);
    pf_write(path, j1, strlen(j1));
    g = read_docs(path, TB_COMP_NONE, TB_FMT_JSONL);
    assert_int_equal(g.n, 2);
    got_free(&g);
    free(a.p), free(b.p), free(z.p);
    pf_rmtree(dir);
}

static void test_utf8_and_strip(void **st) {
    (void)st;
    const char *good[] = {"", "abc", "ñandú", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf",
                          "\xf4\x8f\xbf\xbf"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(tb_utf8_valid(good[i], strlen(good[i]), NULL));
    const char *bad[] = {"\xff", "a\x80", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80",
                         "\xf4\x90\x80\x80", "\xe2\x82", "abcdefgh\xf0\x9f\x98", "\xf8\x88\x80\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t at = 99;
        assert_false(tb_utf8_valid(bad[i], strlen(bad[i]), &at));
        assert_true(at < strlen(bad[i]));
    }
    assert_int_equal(tb_doc_stripped_chars("  hola  ", 8), 4);
    assert_int_equal(tb_doc_stripped_chars("\xc2\xa0 a b\xe3\x80\x80", 8), 3);
    assert_int_equal(tb_doc_stripped_chars("ñññ", 6), 3);
    assert_int_equal(tb_doc_stripped_chars(" \n\t", 3), 0);
    tb_doc_text t;
    tb_bad_kind k;
    char why[256];
    const char *rp = "{\"raw_content\":\"hola mundo\"}";
    assert_int_equal(tb_doc_extract(&t, rp, strlen(rp), TB_FMT_JSONL, NULL, &k, why, sizeof why), 0);
    assert_int_equal(t.len, 10);
    tb_doc_text_free(&t);
    assert_int_equal(tb_doc_extract(&t, rp, strlen(rp), TB_FMT_JSONL, "text", &k, why, sizeof why), 1);
    assert_int_equal(k, TB_BAD_MISSING_FIELD);
    assert_int_equal(tb_doc_extract(&t, "[1]", 3, TB_FMT_JSONL, NULL, &k, why, sizeof why), 1);
    assert_int_equal(k, TB_BAD_NOT_JSON);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compressions_and_formats),
        cmocka_unit_test(test_utf8_and_strip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
