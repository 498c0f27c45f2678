#include "checkpoint.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tb_crc32c.h"
#include "tb_log.h"

#define MANIFEST "manifest.json"
#define FORMAT "tb-checkpoint"

int td_mkdirs(const char *path, tb_err *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return tb_err_set(err, "%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0750) && errno != EEXIST)
            return tb_err_set(err, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0750) && errno != EEXIST)
        return tb_err_set(err, "mkdir %s: %s", buf, strerror(errno));
    return 0;
}

int td_fsync_dir(const char *path, tb_err *err) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return tb_err_set(err, "open %s: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc) return tb_err_set(err, "fsync %s: %s", path, strerror(e));
    return 0;
}

int td_rmtree(const char *path) {
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", path, de->d_name);
        struct stat st;
        if (!lstat(p, &st) && S_ISDIR(st.st_mode))
            td_rmtree(p);
        else
            unlink(p);
    }
    closedir(d);
    return rmdir(path);
}

/* crc32c and size of a file, fsyncing it when do_sync. */
static int file_crc(const char *path, int do_sync, uint32_t *crc, uint64_t *size, tb_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tb_err_set(err, "open %s: %s", path, strerror(errno));
    static __thread char buf[1 << 16];
    uint32_t c = 0;
    uint64_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            return tb_err_set(err, "read %s: %s", path, strerror(e));
        }
        if (r == 0) break;
        c = tb_crc32c(c, buf, (size_t)r);
        n += (uint64_t)r;
    }
    if (do_sync && fsync(fd)) {
        int e = errno;
        close(fd);
        return tb_err_set(err, "fsync %s: %s", path, strerror(e));
    }
    close(fd);
    *crc = c;
    *size = n;
    return 0;
}

static int write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t w = write(fd, data, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

static int parse_name(const char *s, int64_t *step, uint32_t *serial) {
    long long st;
    unsigned se;
    int used = 0;
    if (sscanf(s, "ckpt-%12lld-%6u%n", &st, &se, &used) != 2 || s[used] != 0 || used != 24)
        return -1;
    *step = st;
    *serial = se;
    return 0;
}

static uint32_t next_serial(const char *root) {
    uint32_t mx = 0;
    DIR *d = opendir(root);
    if (!d) return 1;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (!strncmp(n, ".tmp-", 5)) n += 5;
        int64_t st;
        uint32_t se;
        if (!parse_name(n, &st, &se) && se > mx) mx = se;
    }
    closedir(d);
    return mx + 1;
}

static const char *const tag_names[] = {"rolling", "best", "epoch", "emergency", "manual", "final"};
#define NTAGS (int)(sizeof tag_names / sizeof tag_names[0])

int td_ckpt_save(const char *root, int64_t step, unsigned tags, double metric,
                 const char *const *files, int nfiles, td_ckpt_writer writer, void *ctx,
                 td_ckpt_info *out, tb_err *err) {
    if (nfiles < 1 || nfiles > TD_CKPT_MAX_FILES)
        return tb_err_set(err, "checkpoint: %d files (1..%d)", nfiles, TD_CKPT_MAX_FILES);
    if (td_mkdirs(root, err)) return tb_err_wrap(err, "checkpoint root");
    td_ckpt_info info;
    memset(&info, 0, sizeof info);
    info.step = step;
    info.serial = next_serial(root) % 1000000u;
    info.tags = tags;
    info.metric = metric;
    snprintf(info.name, sizeof info.name, "ckpt-%012lld-%06u", (long long)step, info.serial);
    char tmp[4096], fin[4096], p[4096];
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s", root, info.name);
    snprintf(fin, sizeof fin, "%s/%s", root, info.name);
    td_rmtree(tmp);
    if (mkdir(tmp, 0750)) return tb_err_set(err, "checkpoint: mkdir %s: %s", tmp, strerror(errno));
    json_t *man = NULL;
    char *text = NULL;
    if (writer(tmp, ctx, err)) {
        tb_err_wrap(err, "checkpoint step %lld", (long long)step);
        goto fail;
    }
    man = json_object();
    json_object_set_new(man, "format", json_string(FORMAT));
    json_object_set_new(man, "version", json_integer(1));
    json_object_set_new(man, "step", json_integer(step));
    json_object_set_new(man, "serial", json_integer(info.serial));
    json_t *jt = json_array();
    for (int i = 0; i < NTAGS; i++)
        if (tags & (1u << i)) json_array_append_new(jt, json_string(tag_names[i]));
    json_object_set_new(man, "tags", jt);
    json_object_set_new(man, "metric", isfinite(metric) ? json_real(metric) : json_null());
    json_t *jf = json_array();
    json_object_set_new(man, "files", jf);
    for (int i = 0; i < nfiles; i++) {
        uint32_t crc;
        uint64_t size;
        if (snprintf(p, sizeof p, "%s/%s", tmp, files[i]) >= (int)sizeof p ||
            file_crc(p, 1, &crc, &size, err)) {
            tb_err_wrap(err, "checkpoint step %lld", (long long)step);
            goto fail;
        }
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(files[i]));
        json_object_set_new(o, "size", json_integer((json_int_t)size));
        json_object_set_new(o, "crc32c", json_integer(crc));
        json_array_append_new(jf, o);
    }
    text = json_dumps(man, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (!text) {
        tb_err_set(err, "checkpoint: manifest: out of memory");
        goto fail;
    }
    if (snprintf(p, sizeof p, "%s/%s", tmp, MANIFEST) >= (int)sizeof p) {
        tb_err_set(err, "checkpoint: path too long under %s", root);
        goto fail;
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        tb_err_set(err, "checkpoint step %lld: open %s: %s", (long long)step, p, strerror(errno));
        goto fail;
    }
    if (write_all(fd, text, strlen(text)) || fsync(fd)) {
        tb_err_set(err, "checkpoint step %lld: write %s: %s", (long long)step, p, strerror(errno));
        close(fd);
        goto fail;
    }
    if (close(fd)) {
        tb_err_set(err, "checkpoint step %lld: close %s: %s", (long long)step, p, strerror(errno));
        goto fail;
    }
    if (td_fsync_dir(tmp, err)) goto fail;
    if (rename(tmp, fin)) {
        tb_err_set(err, "checkpoint: rename %s -> %s: %s", tmp, fin, strerror(errno));
        goto fail;
    }
    if (td_fsync_dir(root, err)) {
        /* The rename happened; the checkpoint is complete but not yet durable. */
        free(text);
        json_decref(man);
        return -1;
    }
    free(text);
    json_decref(man);
    info.valid = 1;
    if (out) *out = info;
    return 0;
fail:
    free(text);
    if (man) json_decref(man);
    td_rmtree(tmp);
    return -1;
}

int td_ckpt_verify(const char *dir, td_ckpt_info *info, tb_err *err) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, MANIFEST);
    json_error_t je;
    json_t *man = json_load_file(p, JSON_REJECT_DUPLICATES, &je);
    if (!man) return tb_err_set(err, "%s: line %d: %s", p, je.line, je.text);
    int rc = -1;
    json_t *fmt = json_object_get(man, "format"), *ver = json_object_get(man, "version");
    json_t *step = json_object_get(man, "step"), *files = json_object_get(man, "files");
    json_t *tags = json_object_get(man, "tags"), *metric = json_object_get(man, "metric");
    json_t *serial = json_object_get(man, "serial");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), FORMAT)) {
        tb_err_set(err, "%s: format: not \"%s\"", p, FORMAT);
        goto out;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        tb_err_set(err, "%s: version: want 1", p);
        goto out;
    }
    if (!json_is_integer(step) || json_integer_value(step) < 0 || !json_is_array(files) ||
        json_array_size(files) < 1 || json_array_size(files) > TD_CKPT_MAX_FILES) {
        tb_err_set(err, "%s: step or files missing or out of range", p);
        goto out;
    }
    info->step = json_integer_value(step);
    info->serial = json_is_integer(serial) ? (uint32_t)json_integer_value(serial) : 0;
    info->metric = json_is_number(metric) ? json_number_value(metric) : NAN;
    info->tags = 0;
    if (json_is_array(tags)) {
        size_t i;
        json_t *t;
        json_array_foreach(tags, i, t) {
            for (int k = 0; k < NTAGS; k++)
                if (json_is_string(t) && !strcmp(json_string_value(t), tag_names[k]))
                    info->tags |= 1u << k;
        }
    }
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f) {
        json_t *nm = json_object_get(f, "name"), *sz = json_object_get(f, "size"),
               *cr = json_object_get(f, "crc32c");
        if (!json_is_string(nm) || !json_is_integer(sz) || !json_is_integer(cr) ||
            strchr(json_string_value(nm), '/')) {
            tb_err_set(err, "%s: files[%zu]: needs name, size, crc32c", p, i);
            goto out;
        }
        char fp[4096];
        snprintf(fp, sizeof fp, "%s/%s", dir, json_string_value(nm));
        uint32_t crc;
        uint64_t size;
        if (file_crc(fp, 0, &crc, &size, err)) goto out;
        if (size != (uint64_t)json_integer_value(sz)) {
            tb_err_set(err, "%s: size %llu, manifest says %lld", fp, (unsigned long long)size,
                       (long long)json_integer_value(sz));
            goto out;
        }
        if (crc != (uint32_t)json_integer_value(cr)) {
            tb_err_set(err, "%s: crc32c %08x, manifest says %08x", fp, crc,
                       (uint32_t)json_integer_value(cr));
            goto out;
        }
    }
    info->valid = 1;
    rc = 0;
out:
    json_decref(man);
    return rc;
}

static int cmp_newest(const void *a, const void *b) {
    const td_ckpt_info *x = a, *y = b;
    if (x->step != y->step) return x->step > y->step ? -1 : 1;
    if (x->serial != y->serial) return x->serial > y->serial ? -1 : 1;
    return 0;
}

int td_ckpt_scan(const char *root, int log_invalid, td_ckpt_info **out, int *n, tb_err *err) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT) return 0;
        return tb_err_set(err, "opendir %s: %s", root, strerror(errno));
    }
    int cap = 0;
    td_ckpt_info *v = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        int64_t st;
        uint32_t se;
        if (parse_name(de->d_name, &st, &se)) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            td_ckpt_info *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) {
                free(v);
                closedir(d);
                return tb_err_set(err, "scan %s: out of memory", root);
            }
            v = nv;
        }
        td_ckpt_info *ci = &v[(*n)++];
        memset(ci, 0, sizeof *ci);
        if (snprintf(ci->name, sizeof ci->name, "%s", de->d_name) >= (int)sizeof ci->name) continue;
        ci->step = st;
        ci->serial = se;
        ci->metric = NAN;
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", root, de->d_name);
        tb_err e;
        if (td_ckpt_verify(dir, ci, &e)) {
            ci->valid = 0;
            if (log_invalid) tb_warn("checkpoint %s skipped (torn or corrupt): %s", dir, e.msg);
        } else if (ci->step != st || ci->serial != se) {
            ci->valid = 0;
            if (log_invalid)
                tb_warn("checkpoint %s skipped: manifest step/serial do not match the name", dir);
        }
    }
    closedir(d);
    if (*n > 1) qsort(v, (size_t)*n, sizeof *v, cmp_newest);
    *out = v;
    return 0;
}

int td_ckpt_newest(const char *root, td_ckpt_info *out, tb_err *err) {
    td_ckpt_info *v;
    int n;
    if (td_ckpt_scan(root, 1, &v, &n, err)) return -1;
    int found = 0;
    for (int i = 0; i < n && !found; i++)
        if (v[i].valid) {
            *out = v[i];
            found = 1;
        }
    free(v);
    return found;
}

int td_ckpt_clean_tmp(const char *root, tb_err *err) {
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT) return 0;
        return tb_err_set(err, "opendir %s: %s", root, strerror(errno));
    }
    int count = 0;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, ".tmp-ckpt-", 10)) continue;
        snprintf(p, sizeof p, "%s/%s", root, de->d_name);
        tb_info("removing unfinished checkpoint %s", p);
        if (!td_rmtree(p)) count++;
    }
    closedir(d);
    return count;
}

static int cmp_metric(const void *a, const void *b) {
    const td_ckpt_info *const *x = a, *const *y = b;
    if ((*x)->metric != (*y)->metric) return (*x)->metric < (*y)->metric ? -1 : 1;
    return cmp_newest(*x, *y);
}

int td_ckpt_retain(const char *root, int keep_rolling, int keep_best, tb_err *err) {
    int removed = td_ckpt_clean_tmp(root, err);
    if (removed < 0) return -1;
    td_ckpt_info *v;
    int n;
    if (td_ckpt_scan(root, 0, &v, &n, err)) return -1;
    unsigned char *keep = calloc((size_t)n + 1, 1);
    const td_ckpt_info **best = calloc((size_t)n + 1, sizeof *best);
    if (!keep || !best) {
        free(keep);
        free(best);
        free(v);
        return tb_err_set(err, "retain %s: out of memory", root);
    }
    int newest_valid = -1, nvalid = 0, nbest = 0;
    for (int i = 0; i < n; i++) {
        if (!v[i].valid) continue;
        if (newest_valid < 0) newest_valid = i;
        if (nvalid++ < (keep_rolling > 0 ? keep_rolling : 1)) keep[i] = 1;
        if (v[i].tags & (TD_CKPT_EPOCH | TD_CKPT_EMERGENCY | TD_CKPT_MANUAL | TD_CKPT_FINAL))
            keep[i] = 1;
        if (isfinite(v[i].metric)) best[nbest++] = &v[i];
    }
    if (nbest > 1) qsort(best, (size_t)nbest, sizeof *best, cmp_metric);
    for (int b = 0; b < nbest && b < keep_best; b++) keep[best[b] - v] = 1;
    char p[4096];
    for (int i = 0; i < n; i++) {
        if (keep[i]) continue;
        /* Torn ones newer than the newest valid may be a save in progress elsewhere. */
        if (!v[i].valid && (newest_valid < 0 || i < newest_valid)) continue;
        snprintf(p, sizeof p, "%s/%s", root, v[i].name);
        if (td_rmtree(p)) {
            tb_warn("retention: cannot remove %s: %s", p, strerror(errno));
            continue;
        }
        tb_debug("retention: removed %s", p);
        removed++;
    }
    free(keep);
    free(best);
    free(v);
    if (removed) td_fsync_dir(root, NULL);
    return removed;
}
