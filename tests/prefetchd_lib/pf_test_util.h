/* Helpers shared by the tb_prefetch tests: temporary dirs, compressed test shards built
 * from the corpus fixture's text, the fixture tokenizer, stderr capture. */
#ifndef PF_TEST_UTIL_H
#define PF_TEST_UTIL_H
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "reader.h"
#include "stream.h"
#include "tb_spm.h"

typedef struct pf_buf {
    char *p;
    size_t n, cap;
} pf_buf;

static inline void pf_buf_add(pf_buf *b, const void *d, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
}
static inline void pf_buf_str(pf_buf *b, const char *s) { pf_buf_add(b, s, strlen(s)); }

static inline void pf_tmpdir(char *out, size_t cap, const char *tag) {
    char base[512];
    snprintf(base, sizeof base, "%s/tmp", TB_BINARY_DIR);
    mkdir(base, 0755);
    snprintf(out, cap, "%s/%s-XXXXXX", base, tag);
    if (!mkdtemp(out)) abort();
}

static inline int pf_rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f) {
    (void)sb, (void)flag, (void)f;
    return remove(p);
}
/* Removes a test's temporary directory tree. */
static inline void pf_rmtree(const char *dir) { nftw(dir, pf_rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static inline void pf_write(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(d, 1, n, f) != n || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", path);
        abort();
    }
}

static inline pf_buf pf_gzip(const void *d, size_t n) {
    pf_buf o = {0};
    z_stream z = {0};
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) abort();
    o.cap = deflateBound(&z, n) + 64;
    o.p = malloc(o.cap);
    z.next_in = (Bytef *)d;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)o.p;
    z.avail_out = (uInt)o.cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) abort();
    o.n = o.cap - z.avail_out;
    deflateEnd(&z);
    return o;
}

static inline pf_buf pf_zstd(const void *d, size_t n) {
    /* With a content checksum, as the zstd CLI writes by default. */
    pf_buf o = {0};
    o.cap = ZSTD_compressBound(n);
    o.p = malloc(o.cap);
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    size_t r = ZSTD_compress2(c, o.p, o.cap, d, n);
    ZSTD_freeCCtx(c);
    if (ZSTD_isError(r)) abort();
    o.n = r;
    return o;
}

/* Paragraphs of the fixture's documents (split at blank lines), each > 10 chars. */
typedef struct pf_texts {
    char **s;
    size_t n;
} pf_texts;

static inline pf_texts pf_fixture_paragraphs(void) {
    pf_texts t = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/fixture/fixture-00000.jsonl.gz", TB_BINARY_DIR);
    tb_err e;
    tb_source *src = tb_source_open_file(path, NULL, &e);
    if (!src) {
        fprintf(stderr, "fixture: %s\n", e.msg);
        abort();
    }
    tb_reader *rd = tb_reader_open(src, path, &e);
    const char *d;
    size_t len;
    uint64_t id;
    tb_bad_kind k;
    size_t cap = 0;
    while (tb_reader_next(rd, &d, &len, &id, &k, &e) == 1) {
        json_error_t je;
        json_t *j = json_loadb(d, len, 0, &je);
        if (!j) abort();
        const char *txt = json_string_value(json_object_get(j, "raw_content"));
        const char *p = txt;
        while (p && *p) {
            const char *q = strstr(p, "\n\n");
            size_t l = q ? (size_t)(q - p) : strlen(p);
            if (l > 40) {
                if (t.n == cap) {
                    cap = cap ? cap * 2 : 256;
                    t.s = realloc(t.s, cap * sizeof *t.s);
                }
                t.s[t.n++] = strndup(p, l);
            }
            p = q ? q + 2 : NULL;
        }
        json_decref(j);
    }
    tb_reader_close(rd);
    return t;
}

/* JSONL of texts[from, to) with the given field. */
static inline pf_buf pf_jsonl(const pf_texts *t, size_t from, size_t to, const char *field) {
    pf_buf b = {0};
    for (size_t i = from; i < to && i < t->n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, field, json_string(t->s[i]));
        json_object_set_new(o, "id", json_integer((json_int_t)i));
        char *s = json_dumps(o, JSON_COMPACT);
        pf_buf_str(&b, s);
        pf_buf_str(&b, "\n");
        free(s);
        json_decref(o);
    }
    return b;
}

static inline tb_spm *pf_spm(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/fixture/spm.model", TB_BINARY_DIR);
    tb_err e;
    tb_spm *s = tb_spm_load(path, &e);
    if (!s) {
        fprintf(stderr, "%s\n", e.msg);
        abort();
    }
    return s;
}

/* stderr capture into a file, for checking log lines. */
typedef struct pf_capture {
    int saved;
    char path[700];
} pf_capture;

static inline void pf_capture_start(pf_capture *c, const char *dir) {
    snprintf(c->path, sizeof c->path, "%s/stderr.txt", dir);
    fflush(stderr);
    c->saved = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
}

static inline char *pf_capture_end(pf_capture *c) {
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    FILE *f = fopen(c->path, "rb");
    pf_buf b = {0};
    char tmp[4096];
    size_t r;
    while (f && (r = fread(tmp, 1, sizeof tmp, f)) > 0) pf_buf_add(&b, tmp, r);
    if (f) fclose(f);
    if (!b.p) pf_buf_str(&b, "");
    fputs(b.p, stderr); /* keep the log visible in the test output */
    return b.p;
}

#endif
