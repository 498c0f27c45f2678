#include "safetensors.h"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20)

static void put_le64(unsigned char *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)b[i] << (8 * i);
    return v;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *c = buf;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* little-endian f32 of a real (the hosts tb runs on are little-endian) */
static void to_f32(float *out, const real *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)in[i];
}

int tb_st_write(const char *path, const tb_params *p, const tb_st_role *roles, int nroles,
                const tb_st_meta *meta, int nmeta, tb_err *err) {
    json_t *root = json_object();
    if (!root) return tb_err_set(err, "%s: out of memory", path);
    if (nmeta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < nmeta; i++) json_object_set_new(m, meta[i].key, json_string(meta[i].value));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t off = 0;
    char name[192];
    for (int r = 0; r < nroles; r++)
        for (int i = 0; i < p->count; i++) {
            const tb_tensor *t = &p->t[i];
            json_t *o = json_object(), *shape = json_array(), *offs = json_array();
            for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
            uint64_t bytes = (uint64_t)t->numel * 4;
            json_array_append_new(offs, json_integer((json_int_t)off));
            json_array_append_new(offs, json_integer((json_int_t)(off + bytes)));
            off += bytes;
            json_object_set_new(o, "dtype", json_string("F32"));
            json_object_set_new(o, "shape", shape);
            json_object_set_new(o, "data_offsets", offs);
            snprintf(name, sizeof name, "%s%s", t->name, roles[r].suffix);
            json_object_set_new(root, name, o);
        }
    char *hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!hdr) return tb_err_set(err, "%s: cannot encode the JSON header", path);
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7; /* spaces to 8 bytes */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(hdr);
        return tb_err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
    }
    unsigned char lenb[8];
    put_le64(lenb, padded);
    int bad = write_all(fd, lenb, 8) || write_all(fd, hdr, hlen);
    for (size_t i = hlen; i < padded && !bad; i++) bad = write_all(fd, " ", 1);
    free(hdr);
    float chunk[4096];
    for (int r = 0; r < nroles && !bad; r++)
        for (size_t i = 0; i < p->total && !bad; i += 4096) {
            size_t n = p->total - i < 4096 ? p->total - i : 4096;
            to_f32(chunk, roles[r].buf + i, n);
            bad = write_all(fd, chunk, n * sizeof(float));
        }
    if (bad || fsync(fd)) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return tb_err_set(err, "%s: write failed: %s", tmp, strerror(e));
    }
    close(fd);
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return tb_err_set(err, "%s: rename from %s failed: %s", path, tmp, strerror(e));
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

const char *tb_st_meta_get(const tb_st_meta *meta, int n, const char *key) {
    for (int i = 0; i < n; i++)
        if (!strcmp(meta[i].key, key)) return meta[i].value;
    return NULL;
}

typedef struct span {
    uint64_t begin, end;
    const char *name;
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Which (role, tensor) a header name denotes: the longest matching suffix wins. */
static int lookup(const tb_params *p, const tb_st_role *roles, int nroles, const char *name,
                  int *role) {
    size_t n = strlen(name);
    int best = -1;
    size_t bestlen = 0;
    for (int r = 0; r < nroles; r++) {
        size_t sl = strlen(roles[r].suffix);
        if (sl > n || strcmp(name + n - sl, roles[r].suffix)) continue;
        if (best >= 0 && sl < bestlen) continue;
        char base[192];
        if (n - sl >= sizeof base) continue;
        memcpy(base, name, n - sl);
        base[n - sl] = 0;
        int i = tb_params_find(p, base);
        if (i >= 0) {
            best = i;
            bestlen = sl;
            *role = r;
        }
    }
    return best;
}

int tb_st_read(const char *path, const tb_params *p, const tb_st_role *roles, int nroles,
               tb_st_meta *meta, int cap, int *nmeta, tb_err *err) {
    int rv = -1;
    json_t *root = NULL;
    char *hdr = NULL;
    span *spans = NULL;
    unsigned char *seen = NULL;
    if (nmeta) *nmeta = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return tb_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat stt;
    if (fstat(fileno(f), &stt)) {
        tb_err_set(err, "%s: stat: %s", path, strerror(errno));
        goto out;
    }
    uint64_t fsize = (uint64_t)stt.st_size;
    unsigned char lenb[8];
    if (fsize < 8 || fread(lenb, 1, 8, f) != 8) {
        tb_err_set(err, "%s: %llu bytes, too short for the 8-byte header length", path,
                   (unsigned long long)fsize);
        goto out;
    }
    uint64_t hlen = get_le64(lenb);
    if (hlen == 0 || hlen > ST_MAX_HEADER || hlen > fsize - 8) {
        tb_err_set(err, "%s: header length %llu out of range (file %llu bytes, max %u)", path,
                   (unsigned long long)hlen, (unsigned long long)fsize, ST_MAX_HEADER);
        goto out;
    }
    hdr = malloc(hlen);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        tb_err_set(err, "%s: cannot read the %llu-byte header", path, (unsigned long long)hlen);
        goto out;
    }
    json_error_t je;
    root = json_loadb(hdr, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        tb_err_set(err, "%s: header is not a JSON object: %s (line %d, column %d)", path,
                   root ? "not an object" : je.text, je.line, je.column);
        goto out;
    }
    uint64_t dsize = fsize - 8 - hlen;
    size_t want = (size_t)p->count * (size_t)nroles;
    spans = calloc(want + 1, sizeof *spans);
    seen = calloc(want + 1, 1);
    if (!spans || !seen) {
        tb_err_set(err, "%s: out of memory", path);
        goto out;
    }
    size_t nspans = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                tb_err_set(err, "%s: __metadata__ is not an object", path);
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    tb_err_set(err, "%s: __metadata__.%s is not a string", path, mk);
                    goto out;
                }
                if (meta && nmeta && *nmeta < cap) {
                    snprintf(meta[*nmeta].key, sizeof meta[*nmeta].key, "%s", mk);
                    snprintf(meta[*nmeta].value, sizeof meta[*nmeta].value, "%s", json_string_value(mv));
                    (*nmeta)++;
                }
            }
            continue;
        }
        int role = 0, i = lookup(p, roles, nroles, key, &role);
        if (i < 0) {
            tb_err_set(err, "%s: tensor '%s' is not part of this model", path, key);
            goto out;
        }
        const tb_tensor *t = &p->t[i];
        json_t *dt = json_object_get(val, "dtype"), *sh = json_object_get(val, "shape"),
               *of = json_object_get(val, "data_offsets");
        if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(of) ||
            json_array_size(of) != 2) {
            tb_err_set(err, "%s: tensor '%s': needs dtype, shape and data_offsets [begin, end]",
                       path, key);
            goto out;
        }
        if (strcmp(json_string_value(dt), "F32")) {
            tb_err_set(err, "%s: tensor '%s': dtype %s, expected F32", path, key,
                       json_string_value(dt));
            goto out;
        }
        int shape_ok = (int)json_array_size(sh) == t->ndim;
        for (int d = 0; shape_ok && d < t->ndim; d++) {
            json_t *e = json_array_get(sh, (size_t)d);
            shape_ok = json_is_integer(e) && json_integer_value(e) == t->shape[d];
        }
        if (!shape_ok) {
            char got[256] = "", exp[128] = "";
            char *s = json_dumps(sh, JSON_COMPACT);
            snprintf(got, sizeof got, "%s", s ? s : "?");
            free(s);
            size_t o = 0;
            for (int d = 0; d < t->ndim; d++)
                o += (size_t)snprintf(exp + o, sizeof exp - o, "%s%lld", d ? "," : "[",
                                      (long long)t->shape[d]);
            snprintf(exp + o, sizeof exp - o, "]");
            tb_err_set(err, "%s: tensor '%s': shape %s, expected %s", path, key, got, exp);
            goto out;
        }
        json_t *b0 = json_array_get(of, 0), *b1 = json_array_get(of, 1);
        if (!json_is_integer(b0) || !json_is_integer(b1) || json_integer_value(b0) < 0 ||
            json_integer_value(b1) < json_integer_value(b0)) {
            tb_err_set(err, "%s: tensor '%s': bad data_offsets", path, key);
            goto out;
        }
        uint64_t begin = (uint64_t)json_integer_value(b0), end = (uint64_t)json_integer_value(b1);
        if (end > dsize) {
            tb_err_set(err, "%s: tensor '%s': data_offsets [%llu, %llu] beyond the %llu data bytes",
                       path, key, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)dsize);
            goto out;
        }
        if (end - begin != (uint64_t)t->numel * 4) {
            tb_err_set(err, "%s: tensor '%s': %llu data bytes, expected %llu (F32 x %zu)", path,
                       key, (unsigned long long)(end - begin), (unsigned long long)t->numel * 4,
                       t->numel);
            goto out;
        }
        size_t slot = (size_t)role * (size_t)p->count + (size_t)i;
        seen[slot] = 1;
        spans[nspans++] = (span){begin, end, key};
    }
    for (int r = 0; r < nroles; r++)
        for (int i = 0; i < p->count; i++)
            if (!seen[(size_t)r * (size_t)p->count + (size_t)i]) {
                tb_err_set(err, "%s: tensor '%s%s' is missing", path, p->t[i].name, roles[r].suffix);
                goto out;
            }
    qsort(spans, nspans, sizeof *spans, span_cmp);
    uint64_t at = 0;
    for (size_t s = 0; s < nspans; s++) {
        if (spans[s].begin != at) {
            tb_err_set(err, "%s: tensor '%s': data starts at %llu, expected %llu (%s)", path,
                       spans[s].name, (unsigned long long)spans[s].begin, (unsigned long long)at,
                       spans[s].begin < at ? "overlap" : "gap");
            goto out;
        }
        at = spans[s].end;
    }
    if (at != dsize) {
        tb_err_set(err, "%s: tensors cover %llu of the %llu data bytes", path,
                   (unsigned long long)at, (unsigned long long)dsize);
        goto out;
    }
    /* Validated: read each tensor into place. */
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) continue;
        int role = 0, i = lookup(p, roles, nroles, key, &role);
        const tb_tensor *t = &p->t[i];
        uint64_t begin = (uint64_t)json_integer_value(json_array_get(json_object_get(val, "data_offsets"), 0));
        if (fseeko(f, (off_t)(8 + hlen + begin), SEEK_SET)) {
            tb_err_set(err, "%s: seek: %s", path, strerror(errno));
            goto out;
        }
        real *dst = roles[role].buf + t->offset;
        float chunk[4096];
        for (size_t j = 0; j < t->numel; j += 4096) {
            size_t n = t->numel - j < 4096 ? t->numel - j : 4096;
            if (fread(chunk, sizeof(float), n, f) != n) {
                tb_err_set(err, "%s: tensor '%s': short read", path, key);
                goto out;
            }
            for (size_t k = 0; k < n; k++) dst[j + k] = (real)chunk[k];
        }
    }
    rv = 0;
out:
    if (root) json_decref(root);
    free(hdr);
    free(spans);
    free(seen);
    fclose(f);
    return rv;
}
