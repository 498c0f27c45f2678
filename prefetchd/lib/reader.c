/* Shard reader: decompression and document splitting (reader.h). */
#include "reader.h"

#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#define IN_CHUNK ((size_t)1 << 20)
#define OUT_CHUNK ((size_t)1 << 20)

struct tb_reader {
    tb_source *src;
    char *name;
    tb_compression comp;
    tb_shard_format fmt;
    /* raw input */
    uint8_t *in;
    size_t in_pos, in_len;
    int src_eof;
    uint64_t bytes_raw;
    /* decompressors */
    z_stream z;
    int z_init;
    int z_member_done; /* last inflate returned Z_STREAM_END */
    ZSTD_DCtx *zd;
    size_t zstd_last; /* last ZSTD_decompressStream return (0 = frame complete) */
    /* decompressed text: [start, end) unconsumed, scan = newline search resumes here */
    char *buf;
    size_t cap, start, end, scan;
    int text_eof;       /* decompressed stream ended cleanly */
    uint64_t line;      /* line number of buf[start] */
    /* paragraphs (plain text) */
    char *para;
    size_t para_cap;
    /* sticky failure */
    int failed;
    tb_bad_kind fail_kind;
    char fail_msg[2048];
};

static int fill_in(tb_reader *r, tb_err *err) {
    if (r->in_pos < r->in_len || r->src_eof) return 0;
    int64_t n = tb_source_read(r->src, r->in, IN_CHUNK, err);
    if (n < 0) return -1;
    r->in_pos = 0;
    r->in_len = (size_t)n;
    r->bytes_raw += (uint64_t)n;
    if (n == 0) r->src_eof = 1;
    return 0;
}

tb_reader *tb_reader_open(tb_source *src, const char *name, tb_err *err) {
    tb_reader *r = calloc(1, sizeof *r);
    if (!r) {
        tb_source_close(src);
        tb_err_set(err, "%s: out of memory", name);
        return NULL;
    }
    r->src = src;
    r->name = strdup(name);
    r->in = malloc(IN_CHUNK);
    r->cap = 2 * OUT_CHUNK;
    r->buf = malloc(r->cap);
    if (!r->name || !r->in || !r->buf) {
        tb_err_set(err, "%s: out of memory", name);
        tb_reader_close(r);
        return NULL;
    }
    /* The first 4 bytes decide the compression. */
    while (r->in_len < 4 && !r->src_eof) {
        int64_t n = tb_source_read(r->src, r->in + r->in_len, IN_CHUNK - r->in_len, err);
        if (n < 0) {
            tb_err_wrap(err, "%s", name);
            tb_reader_close(r);
            return NULL;
        }
        if (n == 0) r->src_eof = 1;
        r->in_len += (size_t)n;
        r->bytes_raw += (uint64_t)n;
    }
    const uint8_t *m = r->in;
    if (r->in_len >= 2 && m[0] == 0x1f && m[1] == 0x8b) {
        r->comp = TB_COMP_GZIP;
        if (inflateInit2(&r->z, 15 + 16) != Z_OK) {
            tb_err_set(err, "%s: inflateInit2 failed", name);
            tb_reader_close(r);
            return NULL;
        }
        r->z_init = 1;
    } else if (r->in_len >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) {
        r->comp = TB_COMP_ZSTD;
        r->zd = ZSTD_createDCtx();
        if (!r->zd) {
            tb_err_set(err, "%s: ZSTD_createDCtx failed", name);
            tb_reader_close(r);
            return NULL;
        }
    } else {
        r->comp = TB_COMP_NONE;
    }
    return r;
}

void tb_reader_close(tb_reader *r) {
    if (!r) return;
    if (r->z_init) inflateEnd(&r->z);
    if (r->zd) ZSTD_freeDCtx(r->zd);
    tb_source_close(r->src);
    free(r->name);
    free(r->in);
    free(r->buf);
    free(r->para);
    free(r);
}

tb_shard_format tb_reader_format(const tb_reader *r) { return r->fmt; }
tb_compression tb_reader_compression(const tb_reader *r) { return r->comp; }
uint64_t tb_reader_bytes_raw(const tb_reader *r) { return r->bytes_raw; }
uint64_t tb_reader_line(const tb_reader *r) { return r->line + 1; }

static int fail(tb_reader *r, tb_bad_kind kind, tb_err *err, const char *fmt, const char *what) {
    r->failed = 1;
    r->fail_kind = kind;
    snprintf(r->fail_msg, sizeof r->fail_msg, fmt, r->name, (unsigned long long)(r->line + 1),
             what);
    return tb_err_set(err, "%s", r->fail_msg);
}

/* Appends decompressed bytes at buf[end..cap). Returns bytes added (0 with text_eof set at
 * the clean end), or -1 on failure (r->failed set). */
static int64_t decode_more(tb_reader *r, tb_err *err) {
    char *dst = r->buf + r->end;
    size_t room = r->cap - r->end;
    for (;;) {
        if (fill_in(r, err)) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", err ? err->msg : "read error");
            return fail(r, TB_BAD_IO, err, "%s: read failed near line %llu: %s", msg);
        }
        size_t avail = r->in_len - r->in_pos;
        if (r->comp == TB_COMP_NONE) {
            if (avail == 0) {
                r->text_eof = 1;
                return 0;
            }
            size_t n = avail < room ? avail : room;
            memcpy(dst, r->in + r->in_pos, n);
            r->in_pos += n;
            return (int64_t)n;
        }
        if (r->comp == TB_COMP_GZIP) {
            if (avail == 0) {
                if (r->z_member_done) {
                    r->text_eof = 1;
                    return 0;
                }
                return fail(r, TB_BAD_CORRUPT, err, "%s: truncated gzip stream near line %llu%s",
                            "");
            }
            if (r->z_member_done) {
                /* Another gzip member follows (multi-member files, e.g. concatenated). */
                inflateReset(&r->z);
                r->z_member_done = 0;
            }
            r->z.next_in = r->in + r->in_pos;
            r->z.avail_in = (uInt)avail;
            r->z.next_out = (Bytef *)dst;
            r->z.avail_out = (uInt)room;
            int zr = inflate(&r->z, Z_NO_FLUSH);
            r->in_pos = (size_t)(r->z.next_in - r->in);
            size_t got = room - r->z.avail_out;
            if (zr == Z_STREAM_END) {
                r->z_member_done = 1;
            } else if (zr != Z_OK && !(zr == Z_BUF_ERROR && got > 0)) {
                return fail(r, TB_BAD_CORRUPT, err, "%s: corrupt gzip stream near line %llu: %s",
                            r->z.msg ? r->z.msg : "inflate error");
            }
            if (got > 0) return (int64_t)got;
            continue;
        }
        /* zstd */
        if (avail == 0) {
            if (r->zstd_last == 0) {
                r->text_eof = 1;
                return 0;
            }
            return fail(r, TB_BAD_CORRUPT, err, "%s: truncated zstd stream near line %llu%s", "");
        }
        ZSTD_inBuffer ib = {r->in + r->in_pos, avail, 0};
        ZSTD_outBuffer ob = {dst, room, 0};
        size_t zr = ZSTD_decompressStream(r->zd, &ob, &ib);
        r->in_pos += ib.pos;
        if (ZSTD_isError(zr))
            return fail(r, TB_BAD_CORRUPT, err, "%s: corrupt zstd stream near line %llu: %s",
                        ZSTD_getErrorName(zr));
        r->zstd_last = zr;
        if (ob.pos > 0) return (int64_t)ob.pos;
    }
}

/* Next line [*p, *p + *n) without its '\n'; 1 = line, 0 = end, -1 = failure, 2 = line
 * too long (skipped up to its newline). */
static int next_line(tb_reader *r, const char **p, size_t *n, tb_err *err) {
    int too_long = 0;
    for (;;) {
        char *nl = r->scan < r->end ? memchr(r->buf + r->scan, '\n', r->end - r->scan) : NULL;
        if (nl) {
            size_t s = r->start;
            size_t e = (size_t)(nl - r->buf);
            r->start = r->scan = e + 1;
            r->line++;
            if (too_long) return 2;
            *p = r->buf + s;
            *n = e - s;
            return 1;
        }
        r->scan = r->end;
        if (r->text_eof) {
            if (r->start == r->end) return too_long ? 2 : 0;
            size_t s = r->start;
            r->start = r->scan = r->end;
            r->line++;
            if (too_long) return 2;
            *p = r->buf + s;
            *n = r->end - s;
            return 1;
        }
        if (r->end - r->start > TB_READER_MAX_LINE) {
            too_long = 1; /* drop what we have, keep looking for the newline */
            r->start = r->scan = r->end;
        }
        if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->scan -= r->start;
            r->start = 0;
        }
        if (r->cap - r->end < OUT_CHUNK) {
            size_t nc = r->cap * 2;
            char *nb = realloc(r->buf, nc);
            if (!nb) return fail(r, TB_BAD_IO, err, "%s: out of memory near line %llu%s", "");
            r->buf = nb;
            r->cap = nc;
        }
        int64_t got = decode_more(r, err);
        if (got < 0) return -1;
        r->end += (size_t)got;
    }
}

static int is_blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\v' && p[i] != '\f') return 0;
    return 1;
}

int tb_reader_next(tb_reader *r, const char **doc, size_t *len, uint64_t *id,
                   tb_bad_kind *kind, tb_err *err) {
    if (r->failed) {
        *kind = r->fail_kind;
        return tb_err_set(err, "%s", r->fail_msg);
    }
    const char *p;
    size_t n;
    int k;
    for (;;) {
        uint64_t at = r->line;
        k = next_line(r, &p, &n, err);
        if (k < 0) {
            *kind = r->fail_kind;
            return -1;
        }
        if (k == 0) return 0;
        if (k == 2) {
            *kind = TB_BAD_NOT_JSON;
            *id = at;
            tb_err_set(err, "%s:%llu: line longer than %zu bytes", r->name,
                       (unsigned long long)(at + 1), TB_READER_MAX_LINE);
            return 2;
        }
        if (is_blank(p, n)) continue;
        if (r->fmt == TB_FMT_UNKNOWN) {
            size_t i = 0;
            while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
            r->fmt = (i < n && p[i] == '{') ? TB_FMT_JSONL : TB_FMT_TEXT;
        }
        if (r->fmt == TB_FMT_JSONL) {
            *doc = p;
            *len = n;
            *id = at;
            return 1;
        }
        /* Plain text: gather lines up to the next blank line (or the end). */
        size_t pl = 0;
        *id = at;
        for (;;) {
            if (pl + n + 1 > r->para_cap) {
                size_t nc = (pl + n + 1) * 2;
                char *np = realloc(r->para, nc);
                if (!np) return fail(r, TB_BAD_IO, err, "%s: out of memory near line %llu%s", "");
                r->para = np;
                r->para_cap = nc;
            }
            if (pl) r->para[pl++] = '\n';
            memcpy(r->para + pl, p, n);
            pl += n;
            if (pl > TB_READER_MAX_LINE) {
                *kind = TB_BAD_NOT_JSON;
                tb_err_set(err, "%s:%llu: paragraph longer than %zu bytes", r->name,
                           (unsigned long long)(at + 1), TB_READER_MAX_LINE);
                /* skip to the paragraph's end */
                for (;;) {
                    k = next_line(r, &p, &n, err);
                    if (k < 0 || k == 0 || (k == 1 && is_blank(p, n))) break;
                }
                return 2;
            }
            k = next_line(r, &p, &n, err);
            if (k < 0) {
                *kind = r->fail_kind;
                return -1; /* the partial paragraph is dropped with the rest */
            }
            if (k == 0 || (k == 1 && is_blank(p, n))) break;
            if (k == 2) break;
        }
        *doc = r->para;
        *len = pl;
        return 1;
    }
}

int tb_shard_verify(tb_source *src, const tb_shard *shard, uint64_t *bytes, tb_err *err) {
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    uint8_t *b = malloc(IN_CHUNK);
    if (!b) {
        tb_source_close(src);
        return tb_err_set(err, "%s: out of memory", shard->location);
    }
    uint64_t total = 0;
    for (;;) {
        int64_t n = tb_source_read(src, b, IN_CHUNK, err);
        if (n < 0) {
            free(b);
            tb_source_close(src);
            *bytes = total;
            return -1;
        }
        if (n == 0) break;
        if (shard->has_sha256) sha256_update(&ctx, (size_t)n, b);
        total += (uint64_t)n;
    }
    free(b);
    tb_source_close(src);
    *bytes = total;
    if (shard->size >= 0 && total != (uint64_t)shard->size) {
        tb_err_set(err, "%s: size %llu, manifest says %lld", shard->location,
                   (unsigned long long)total, (long long)shard->size);
        return 1;
    }
    if (shard->has_sha256) {
        uint8_t d[SHA256_DIGEST_SIZE];
        sha256_digest(&ctx, sizeof d, d);
        if (memcmp(d, shard->sha256, 32) != 0) {
            char got[65], want[65];
            for (int i = 0; i < 32; i++) {
                snprintf(got + 2 * i, 3, "%02x", d[i]);
                snprintf(want + 2 * i, 3, "%02x", shard->sha256[i]);
            }
            tb_err_set(err, "%s: sha256 %s, manifest says %s", shard->location, got, want);
            return 1;
        }
    }
    return 0;
}
