/* Manifest text format, generations and their atomic storage in a state directory. */
#include "manifest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "source.h"

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void tb_manifest_free(tb_manifest *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) free(m->shards[i].location);
    free(m->shards);
    memset(m, 0, sizeof *m);
}

static int push_shard(tb_manifest *m, size_t *cap, tb_shard *s) {
    if (m->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        tb_shard *ns = realloc(m->shards, nc * sizeof *ns);
        if (!ns) return -1;
        m->shards = ns;
        *cap = nc;
    }
    m->shards[m->n++] = *s;
    return 0;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

int tb_manifest_parse(tb_manifest *out, const char *text, size_t len, const char *name,
                      const char *base_dir, tb_err *err) {
    memset(out, 0, sizeof *out);
    size_t cap = 0;
    size_t lineno = 0;
    size_t i = 0;
    char tok[PATH_MAX * 2];
    while (i < len) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        lineno++;
        size_t p = i;
        size_t line_end = e;
        i = e + 1;
        int field = 0;
        tb_shard sh = {.location = NULL, .size = -1, .has_sha256 = 0};
        while (p < line_end) {
            while (p < line_end && is_space(text[p])) p++;
            if (p >= line_end) break;
            if (text[p] == '#' && field == 0) break;
            size_t q = p;
            while (q < line_end && !is_space(text[q])) q++;
            size_t tl = q - p;
            if (tl >= sizeof tok) {
                tb_err_set(err, "%s:%zu: token of %zu bytes is too long", name, lineno, tl);
                goto fail_sh;
            }
            memcpy(tok, text + p, tl);
            tok[tl] = 0;
            for (size_t k = 0; k < tl; k++) {
                if ((unsigned char)tok[k] < 0x20 || tok[k] == 0x7f) {
                    tb_err_set(err, "%s:%zu: control character in '%s'", name, lineno, tok);
                    goto fail_sh;
                }
            }
            p = q;
            if (field == 0) {
                if (tb_source_is_local(tok) && base_dir && strncmp(tok, "file://", 7) != 0 &&
                    tok[0] != '/') {
                    size_t need = strlen(base_dir) + 1 + tl + 1;
                    sh.location = malloc(need);
                    if (sh.location) snprintf(sh.location, need, "%s/%s", base_dir, tok);
                } else {
                    sh.location = strdup(tok);
                }
                if (!sh.location) {
                    tb_err_set(err, "%s:%zu: out of memory", name, lineno);
                    goto fail_sh;
                }
            } else if (strncmp(tok, "size=", 5) == 0) {
                char *end;
                errno = 0;
                unsigned long long v = strtoull(tok + 5, &end, 10);
                if (tok[5] == 0 || *end || errno || tok[5] == '-' || v > INT64_MAX) {
                    tb_err_set(err, "%s:%zu: size: '%s' is not a byte count", name, lineno,
                               tok + 5);
                    goto fail_sh;
                }
                sh.size = (int64_t)v;
            } else if (strncmp(tok, "sha256=", 7) == 0) {
                const char *h = tok + 7;
                if (strlen(h) != 64) {
                    tb_err_set(err, "%s:%zu: sha256: '%s' is not 64 hex digits", name, lineno, h);
                    goto fail_sh;
                }
                for (int k = 0; k < 32; k++) {
                    int a = hexval(h[2 * k]), b = hexval(h[2 * k + 1]);
                    if (a < 0 || b < 0) {
                        tb_err_set(err, "%s:%zu: sha256: '%s' is not 64 hex digits", name,
                                   lineno, h);
                        goto fail_sh;
                    }
                    sh.sha256[k] = (uint8_t)(a * 16 + b);
                }
                sh.has_sha256 = 1;
            } else {
                tb_err_set(err, "%s:%zu: unknown attribute '%s' (expected size=N or sha256=HEX)",
                           name, lineno, tok);
                goto fail_sh;
            }
            field++;
        }
        if (field == 0) continue;
        if (push_shard(out, &cap, &sh)) {
            tb_err_set(err, "%s:%zu: out of memory", name, lineno);
            goto fail_sh;
        }
        continue;
    fail_sh:
        free(sh.location);
        tb_manifest_free(out);
        return -1;
    }
    return 0;
}

static int read_file(char **buf, size_t *len, const char *path, tb_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return tb_err_set(err, "open '%s': %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    while (b) {
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!b) return tb_err_set(err, "read '%s': out of memory", path);
    if (bad) {
        free(b);
        return tb_err_set(err, "read '%s': I/O error", path);
    }
    *buf = b;
    *len = n;
    return 0;
}

int tb_manifest_load(tb_manifest *out, const char *path, tb_err *err) {
    memset(out, 0, sizeof *out);
    char *buf = NULL;
    size_t len = 0;
    if (read_file(&buf, &len, path, err)) return -1;
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash) {
        size_t dl = (size_t)(slash - path);
        if (dl == 0) dl = 1;
        if (dl >= sizeof dir) dl = sizeof dir - 1;
        memcpy(dir, path, dl);
        dir[dl] = 0;
    } else {
        strcpy(dir, ".");
    }
    char absdir[PATH_MAX];
    const char *base = realpath(dir, absdir) ? absdir : dir;
    int r = tb_manifest_parse(out, buf, len, path, base, err);
    free(buf);
    return r;
}

int tb_manifest_format(char **text, size_t *len, const tb_manifest *m, tb_err *err) {
    size_t cap = 64;
    for (size_t i = 0; i < m->n; i++) cap += strlen(m->shards[i].location) + 120;
    char *b = malloc(cap);
    if (!b) return tb_err_set(err, "manifest: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < m->n; i++) {
        const tb_shard *s = &m->shards[i];
        n += (size_t)snprintf(b + n, cap - n, "%s", s->location);
        if (s->size >= 0) n += (size_t)snprintf(b + n, cap - n, " size=%" PRId64, s->size);
        if (s->has_sha256) {
            n += (size_t)snprintf(b + n, cap - n, " sha256=");
            for (int k = 0; k < 32; k++) n += (size_t)snprintf(b + n, cap - n, "%02x", s->sha256[k]);
        }
        n += (size_t)snprintf(b + n, cap - n, "\n");
    }
    *text = b;
    *len = n;
    return 0;
}

int tb_manifest_copy(tb_manifest *out, const tb_manifest *m, tb_err *err) {
    memset(out, 0, sizeof *out);
    out->generation = m->generation;
    if (m->n == 0) return 0;
    out->shards = calloc(m->n, sizeof *out->shards);
    if (!out->shards) return tb_err_set(err, "manifest: out of memory");
    for (size_t i = 0; i < m->n; i++) {
        out->shards[i] = m->shards[i];
        out->shards[i].location = strdup(m->shards[i].location);
        out->n = i + 1;
        if (!out->shards[i].location) {
            tb_manifest_free(out);
            return tb_err_set(err, "manifest: out of memory");
        }
    }
    return 0;
}

int tb_manifest_equal(const tb_manifest *a, const tb_manifest *b) {
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; i++) {
        const tb_shard *x = &a->shards[i], *y = &b->shards[i];
        if (strcmp(x->location, y->location) || x->size != y->size ||
            x->has_sha256 != y->has_sha256 ||
            (x->has_sha256 && memcmp(x->sha256, y->sha256, 32)))
            return 0;
    }
    return 1;
}

static int write_all(int fd, const char *b, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int tb_manifest_store(const char *state_dir, const tb_manifest *m, tb_err *err) {
    if (m->generation == 0) return tb_err_set(err, "manifest store: generation 0");
    if (mkdir(state_dir, 0750) != 0 && errno != EEXIST)
        return tb_err_set(err, "mkdir '%s': %s", state_dir, strerror(errno));
    char *text;
    size_t len;
    if (tb_manifest_format(&text, &len, m, err)) return -1;
    char path[PATH_MAX], tmp[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/gen-%" PRIu64 ".manifest", state_dir, m->generation);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        free(text);
        return tb_err_set(err, "create '%s': %s", tmp, strerror(errno));
    }
    if (write_all(fd, text, len) || fsync(fd)) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(text);
        return tb_err_set(err, "write '%s': %s", tmp, strerror(e));
    }
    free(text);
    if (close(fd)) {
        unlink(tmp);
        return tb_err_set(err, "close '%s': %s", tmp, strerror(errno));
    }
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return tb_err_set(err, "rename '%s' -> '%s': %s", tmp, path, strerror(e));
    }
    int dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return tb_err_set(err, "open dir '%s': %s", state_dir, strerror(errno));
    int r = fsync(dfd);
    int e = errno;
    close(dfd);
    if (r) return tb_err_set(err, "fsync dir '%s': %s", state_dir, strerror(e));
    return 0;
}

static int cmp_gen(const void *a, const void *b) {
    const tb_manifest *x = a, *y = b;
    return x->generation < y->generation ? -1 : x->generation > y->generation;
}

void tb_manifest_history_free(tb_manifest_history *h) {
    if (!h) return;
    for (size_t i = 0; i < h->n; i++) tb_manifest_free(&h->gens[i]);
    free(h->gens);
    memset(h, 0, sizeof *h);
}

static int history_push(tb_manifest_history *h, tb_manifest *m) {
    tb_manifest *ng = realloc(h->gens, (h->n + 1) * sizeof *ng);
    if (!ng) return -1;
    h->gens = ng;
    h->gens[h->n++] = *m;
    return 0;
}

int tb_manifest_history_load(tb_manifest_history *out, const char *state_dir, tb_err *err) {
    memset(out, 0, sizeof *out);
    DIR *d = opendir(state_dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return tb_err_set(err, "open dir '%s': %s", state_dir, strerror(errno));
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (strncmp(nm, "gen-", 4) != 0) continue;
        char *end;
        errno = 0;
        unsigned long long g = strtoull(nm + 4, &end, 10);
        if (end == nm + 4 || errno || strcmp(end, ".manifest") != 0 || g == 0) continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", state_dir, nm);
        tb_manifest m;
        if (tb_manifest_load(&m, path, err)) {
            closedir(d);
            tb_manifest_history_free(out);
            return -1;
        }
        m.generation = g;
        if (history_push(out, &m)) {
            tb_manifest_free(&m);
            closedir(d);
            tb_manifest_history_free(out);
            return tb_err_set(err, "manifest history: out of memory");
        }
    }
    closedir(d);
    if (out->n) qsort(out->gens, out->n, sizeof *out->gens, cmp_gen);
    return 0;
}

const tb_manifest *tb_manifest_history_get(const tb_manifest_history *h, uint64_t generation) {
    for (size_t i = 0; i < h->n; i++)
        if (h->gens[i].generation == generation) return &h->gens[i];
    return NULL;
}

const tb_manifest *tb_manifest_history_latest(const tb_manifest_history *h) {
    return h->n ? &h->gens[h->n - 1] : NULL;
}

int tb_manifest_history_commit(tb_manifest_history *h, const char *state_dir,
                               const tb_manifest *m, uint64_t *generation, tb_err *err) {
    const tb_manifest *last = tb_manifest_history_latest(h);
    if (last && tb_manifest_equal(last, m)) {
        if (generation) *generation = last->generation;
        return 0;
    }
    tb_manifest c;
    if (tb_manifest_copy(&c, m, err)) return -1;
    c.generation = last ? last->generation + 1 : 1;
    if (tb_manifest_store(state_dir, &c, err)) {
        tb_manifest_free(&c);
        return -1;
    }
    if (history_push(h, &c)) {
        tb_manifest_free(&c);
        return tb_err_set(err, "manifest history: out of memory");
    }
    if (generation) *generation = c.generation;
    return 0;
}
