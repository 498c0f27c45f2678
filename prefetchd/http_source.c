#include "http_source.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <nettle/sha2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tb_log.h"

#define STAT_ADD(h, field, n) __atomic_add_fetch(&(h)->stats.field, (n), __ATOMIC_RELAXED)

/* ---------------------------------------------------------------- cache */

int pfd_cache_init(pfd_cache *c, const char *dir, uint64_t budget, tb_err *err) {
    memset(c, 0, sizeof *c);
    if (strlen(dir) >= sizeof c->dir - 80) return tb_err_set(err, "cache dir %s: path too long", dir);
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    c->budget = budget;
    pthread_mutex_init(&c->lock, NULL);
    if (budget == 0) return 0;
    if (mkdir(dir, 0750) < 0 && errno != EEXIST)
        return tb_err_set(err, "cache dir %s: mkdir: %s", dir, strerror(errno));
    return 0;
}

typedef struct cache_entry {
    char key[80];
    uint64_t size;
    struct timespec used;
} cache_entry;

static int entry_cmp(const void *a, const void *b) {
    const cache_entry *x = a, *y = b;
    if (x->used.tv_sec != y->used.tv_sec) return x->used.tv_sec < y->used.tv_sec ? -1 : 1;
    if (x->used.tv_nsec != y->used.tv_nsec) return x->used.tv_nsec < y->used.tv_nsec ? -1 : 1;
    return strcmp(x->key, y->key);
}

/* Lists complete entries (a .meta with its .data). Caller holds the lock. */
static size_t cache_list(pfd_cache *c, cache_entry **out) {
    *out = NULL;
    DIR *d = opendir(c->dir);
    if (!d) return 0;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || l >= 70 || strcmp(e->d_name + l - 5, ".meta") != 0) continue;
        char p[4400];
        struct stat ms, ds;
        snprintf(p, sizeof p, "%s/%s", c->dir, e->d_name);
        if (stat(p, &ms) < 0) continue;
        snprintf(p, sizeof p, "%s/%.*s.data", c->dir, (int)(l - 5), e->d_name);
        if (stat(p, &ds) < 0) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            cache_entry *ne = realloc(*out, cap * sizeof **out);
            if (!ne) break;
            *out = ne;
        }
        snprintf((*out)[n].key, sizeof (*out)[n].key, "%.*s", (int)(l - 5), e->d_name);
        (*out)[n].size = (uint64_t)ds.st_size;
        (*out)[n].used = ms.st_mtim;
        n++;
    }
    closedir(d);
    return n;
}

static void cache_remove(pfd_cache *c, const char *key) {
    char p[4400];
    snprintf(p, sizeof p, "%s/%s.meta", c->dir, key);
    unlink(p);
    snprintf(p, sizeof p, "%s/%s.data", c->dir, key);
    unlink(p);
}

uint64_t pfd_cache_usage(pfd_cache *c) {
    pthread_mutex_lock(&c->lock);
    cache_entry *e;
    size_t n = cache_list(c, &e);
    uint64_t t = 0;
    for (size_t i = 0; i < n; i++) t += e[i].size;
    free(e);
    pthread_mutex_unlock(&c->lock);
    return t;
}

static int cache_evict_locked(pfd_cache *c, uint64_t incoming) {
    cache_entry *e;
    size_t n = cache_list(c, &e);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += e[i].size;
    if (n > 1) qsort(e, n, sizeof *e, entry_cmp);
    int ev = 0;
    for (size_t i = 0; i < n && total + incoming > c->budget; i++) {
        tb_info("cache: evicting %s (%llu bytes, least recently used)", e[i].key,
                (unsigned long long)e[i].size);
        cache_remove(c, e[i].key);
        total -= e[i].size;
        ev++;
    }
    free(e);
    return ev;
}

int pfd_cache_evict(pfd_cache *c, uint64_t incoming) {
    pthread_mutex_lock(&c->lock);
    int ev = cache_evict_locked(c, incoming);
    pthread_mutex_unlock(&c->lock);
    return ev;
}

static void hex(char *out, const uint8_t *b, size_t n) {
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static void cache_key(char key[65], const char *url) {
    uint8_t md[32];
    struct sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, strlen(url), (const uint8_t *)url);
    sha256_digest(&c, sizeof md, md);
    hex(key, md, 32);
    key[40] = '\0'; /* 160 bits of the URL's hash name the entry */
}

static int file_sha256(char out[65], const char *path, uint64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    static _Thread_local uint8_t buf[1 << 16];
    size_t n;
    uint64_t t = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        sha256_update(&ctx, n, buf);
        t += n;
    }
    int bad = ferror(f);
    fclose(f);
    uint8_t md[32];
    sha256_digest(&ctx, sizeof md, md);
    if (bad) return -1;
    hex(out, md, 32);
    *size = t;
    return 0;
}

/* Returns an opened cached source, or NULL on a miss (a bad entry is removed). */
static tb_source *cache_lookup(pfd_http *h, const char *url, const char *key) {
    pfd_cache *c = h->cache;
    char mp[4400], dp[4400];
    snprintf(mp, sizeof mp, "%s/%s.meta", c->dir, key);
    snprintf(dp, sizeof dp, "%s/%s.data", c->dir, key);
    pthread_mutex_lock(&c->lock);
    json_error_t je;
    json_t *m = json_load_file(mp, 0, &je);
    tb_source *s = NULL;
    if (!m) {
        pthread_mutex_unlock(&c->lock);
        return NULL;
    }
    const char *murl = json_string_value(json_object_get(m, "url"));
    const char *msha = json_string_value(json_object_get(m, "sha256"));
    json_int_t msize = json_integer_value(json_object_get(m, "size"));
    char sha[65];
    uint64_t size = 0;
    if (!murl || strcmp(murl, url) != 0 || !msha) {
        tb_warn("cache: %s: entry %s does not describe this URL; removed", url, key);
    } else if (file_sha256(sha, dp, &size) < 0 || size != (uint64_t)msize ||
               strcmp(sha, msha) != 0) {
        tb_warn("cache: %s: entry %s failed verification (size %llu, meta %lld); removed", url,
                key, (unsigned long long)size, (long long)msize);
        STAT_ADD(h, cache_bad, 1);
    } else {
        tb_err err;
        s = tb_source_open_file(dp, NULL, &err);
        if (s) utimensat(AT_FDCWD, mp, NULL, 0); /* LRU clock */
        else tb_warn("cache: %s", err.msg);
    }
    if (!s) cache_remove(c, key);
    json_decref(m);
    pthread_mutex_unlock(&c->lock);
    return s;
}

/* ---------------------------------------------------------------- http */

typedef struct http_src {
    tb_source base;
    pfd_http *h;
    char *url;
    CURLM *multi;
    CURL *easy;
    struct curl_slist *hdrs;
    char curl_err[CURL_ERROR_SIZE];
    uint8_t *buf;
    size_t cap, head, len;
    int paused, running, complete, done, fatal;
    char fatal_msg[1024];
    uint64_t offset; /* body bytes accepted so far */
    int64_t total;   /* -1 unknown */
    char etag[256];
    /* current response */
    int resp_checked;
    char resp_etag[256];
    int64_t cr_start, cr_total;
    uint64_t skip;
    int attempts;         /* failed attempts in a row without progress (+1 with) */
    uint64_t start_offset; /* offset when the current attempt started */
    /* cache write-through */
    char key[65];
    FILE *part;
    char part_path[4400];
    struct sha256_ctx sha; /* of the body, for the cache entry */
} http_src;

int pfd_http_global_init(tb_err *err) {
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) return tb_err_set(err, "curl_global_init: %s", curl_easy_strerror(rc));
    return 0;
}

static void part_abandon(http_src *s) {
    if (s->part) {
        fclose(s->part);
        s->part = NULL;
        unlink(s->part_path);
    }
}

static void set_fatal(http_src *s, const char *fmt, const char *a) {
    s->fatal = 1;
    snprintf(s->fatal_msg, sizeof s->fatal_msg, fmt, a);
}

static int response_check(http_src *s) {
    long code = 0;
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_off_t cl = -1;
    curl_easy_getinfo(s->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    s->skip = 0;
    if (s->offset > 0) {
        if (code == 206) {
            if (s->cr_start != (int64_t)s->offset) {
                set_fatal(s, "resume: Content-Range does not start at the requested offset (%s)",
                          s->url);
                return -1;
            }
            if (s->etag[0] ? strcmp(s->etag, s->resp_etag) != 0
                           : (s->total >= 0 && s->cr_total != s->total)) {
                set_fatal(s, "%s changed while downloading (ETag or size differs)", s->url);
                return -1;
            }
        } else if (code == 200) {
            if (!s->etag[0] || strcmp(s->etag, s->resp_etag) != 0) {
                set_fatal(s, "%s changed while downloading (200 with another ETag)", s->url);
                return -1;
            }
            s->skip = s->offset; /* the server ignored Range: skip what we have */
        } else {
            set_fatal(s, "unexpected HTTP status on resume of %s", s->url);
            return -1;
        }
    } else {
        snprintf(s->etag, sizeof s->etag, "%s", s->resp_etag);
        if (code == 206 && s->cr_total >= 0) s->total = s->cr_total;
        else if (cl >= 0) s->total = cl;
        if (s->part && s->total >= 0 && (uint64_t)s->total > s->h->cache->budget) part_abandon(s);
    }
    s->resp_checked = 1;
    return 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
    http_src *s = ud;
    size_t n = size * nmemb;
    if (!s->resp_checked && response_check(s) < 0) return 0;
    size_t sk = s->skip < n ? (size_t)s->skip : n;
    size_t keep = n - sk;
    if (s->head + s->len + keep > s->cap) {
        memmove(s->buf, s->buf + s->head, s->len);
        s->head = 0;
        if (s->len + keep > s->cap) {
            s->paused = 1;
            return CURL_WRITEFUNC_PAUSE; /* redelivered whole after unpause */
        }
    }
    s->skip -= sk;
    memcpy(s->buf + s->head + s->len, p + sk, keep);
    s->len += keep;
    s->offset += keep;
    STAT_ADD(s->h, bytes, keep);
    if (s->part) sha256_update(&s->sha, keep, (const uint8_t *)p + sk);
    if (s->part && fwrite(p + sk, 1, keep, s->part) != keep) {
        tb_warn("cache: write %s: %s; not caching %s", s->part_path, strerror(errno), s->url);
        part_abandon(s);
    }
    return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud) {
    http_src *s = ud;
    size_t n = size * nmemb;
    char line[512];
    size_t l = n < sizeof line - 1 ? n : sizeof line - 1;
    memcpy(line, p, l);
    line[l] = '\0';
    while (l && (line[l - 1] == '\r' || line[l - 1] == '\n')) line[--l] = '\0';
    if (strncmp(line, "HTTP/", 5) == 0) {
        s->resp_etag[0] = '\0';
        s->cr_start = s->cr_total = -1;
        s->resp_checked = 0;
    } else if (strncasecmp(line, "etag:", 5) == 0) {
        const char *v = line + 5;
        while (*v == ' ' || *v == '\t') v++;
        snprintf(s->resp_etag, sizeof s->resp_etag, "%.255s", v);
    } else if (strncasecmp(line, "content-range:", 14) == 0) {
        long long a, b, t;
        if (sscanf(line + 14, " bytes %lld-%lld/%lld", &a, &b, &t) == 3) {
            s->cr_start = a;
            s->cr_total = t;
        }
    }
    return n;
}

static int start_transfer(http_src *s, tb_err *err) {
    CURL *e = s->easy;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, s->url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, s->curl_err);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, s->h->opts.connect_timeout_s);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, s->h->opts.low_speed_limit);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, s->h->opts.low_speed_time_s);
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    if (s->offset > 0) {
        char r[64];
        snprintf(r, sizeof r, "%llu-", (unsigned long long)s->offset);
        curl_easy_setopt(e, CURLOPT_RANGE, r);
        if (s->etag[0]) {
            char ir[300];
            snprintf(ir, sizeof ir, "If-Range: %s", s->etag);
            s->hdrs = curl_slist_append(s->hdrs, ir);
            curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->hdrs);
        }
        STAT_ADD(s->h, resumes, 1);
    }
    s->curl_err[0] = '\0';
    s->start_offset = s->offset;
    s->resp_checked = 0;
    s->paused = 0;
    CURLMcode mc = curl_multi_add_handle(s->multi, e);
    if (mc != CURLM_OK)
        return tb_err_set(err, "GET %s: curl_multi_add_handle: %s", s->url, curl_multi_strerror(mc));
    s->running = 1;
    return 0;
}

static void finish_cache(http_src *s) {
    if (!s->part) return;
    pfd_cache *c = s->h->cache;
    uint8_t md[32];
    char sha[65];
    sha256_digest(&s->sha, sizeof md, md);
    hex(sha, md, 32);
    if (fflush(s->part) != 0 || fsync(fileno(s->part)) != 0) {
        part_abandon(s);
        return;
    }
    fclose(s->part);
    s->part = NULL;
    char dp[4400], mp[4400], tp[4500];
    snprintf(dp, sizeof dp, "%s/%s.data", c->dir, s->key);
    snprintf(mp, sizeof mp, "%s/%s.meta", c->dir, s->key);
    snprintf(tp, sizeof tp, "%s.tmp", s->part_path);
    json_t *m = json_pack("{s:s, s:I, s:s, s:s}", "url", s->url, "size", (json_int_t)s->offset,
                          "sha256", sha, "etag", s->etag);
    pthread_mutex_lock(&c->lock);
    cache_evict_locked(c, s->offset);
    int ok = m && json_dump_file(m, tp, JSON_COMPACT) == 0 && rename(s->part_path, dp) == 0 &&
             rename(tp, mp) == 0;
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        tb_warn("cache: could not store %s: %s", s->url, strerror(errno));
        unlink(s->part_path);
        unlink(tp);
    }
    json_decref(m);
}

static int64_t http_read(tb_source *base, void *out, size_t cap, tb_err *err) {
    http_src *s = (http_src *)base;
    for (;;) {
        if (s->len > 0) {
            size_t n = s->len < cap ? s->len : cap;
            memcpy(out, s->buf + s->head, n);
            s->head += n;
            s->len -= n;
            if (s->len == 0) s->head = 0;
            if (s->paused) {
                s->paused = 0;
                curl_easy_pause(s->easy, CURLPAUSE_CONT);
            }
            return (int64_t)n;
        }
        if (s->complete && !s->done) {
            s->done = 1;
            finish_cache(s);
        }
        if (s->done) return 0;
        if (s->fatal) {
            tb_err_set(err, "%s", s->fatal_msg);
            return -1;
        }
        if (!s->running) {
            if (s->total >= 0 && s->offset == (uint64_t)s->total && s->attempts > 0) {
                s->complete = 1; /* dropped after the last byte */
                continue;
            }
            if (s->attempts > 0) {
                long d = s->h->opts.backoff_initial_ms;
                for (int i = 1; i < s->attempts && d < s->h->opts.backoff_max_ms; i++) d *= 2;
                if (d > s->h->opts.backoff_max_ms) d = s->h->opts.backoff_max_ms;
                struct timespec ts = {d / 1000, (d % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            if (start_transfer(s, err) < 0) return -1;
        }
        int still = 0;
        CURLMcode mc = curl_multi_perform(s->multi, &still);
        if (mc != CURLM_OK) {
            tb_err_set(err, "GET %s: curl_multi_perform: %s", s->url, curl_multi_strerror(mc));
            return -1;
        }
        CURLMsg *msg;
        int q;
        while ((msg = curl_multi_info_read(s->multi, &q))) {
            if (msg->msg != CURLMSG_DONE) continue;
            CURLcode rc = msg->data.result;
            long code = 0;
            curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
            curl_multi_remove_handle(s->multi, s->easy);
            s->running = 0;
            if (s->fatal) break;
            if (rc == CURLE_OK && (s->total < 0 || s->offset == (uint64_t)s->total)) {
                s->complete = 1;
                break;
            }
            /* a drop after progress is a new problem: the retry budget starts over */
            s->attempts = s->offset > s->start_offset ? 1 : s->attempts + 1;
            const char *why = rc == CURLE_OK ? "connection closed early"
                              : s->curl_err[0] ? s->curl_err : curl_easy_strerror(rc);
            if (s->attempts > s->h->opts.retries) {
                char m[800];
                snprintf(m, sizeof m, "GET %s: %s (HTTP %ld) at byte %llu after %d attempts",
                         s->url, why, code, (unsigned long long)s->offset, s->attempts);
                s->fatal = 1;
                snprintf(s->fatal_msg, sizeof s->fatal_msg, "%s", m);
                STAT_ADD(s->h, failures, 1);
                part_abandon(s);
            } else {
                STAT_ADD(s->h, retries, 1);
                tb_warn("GET %s: %s (HTTP %ld) at byte %llu; retry %d of %d", s->url, why, code,
                        (unsigned long long)s->offset, s->attempts, s->h->opts.retries);
            }
        }
        if (s->running && s->len == 0 && !s->paused && still)
            curl_multi_poll(s->multi, NULL, 0, 1000, NULL);
    }
}

static void http_close(tb_source *base) {
    http_src *s = (http_src *)base;
    if (s->running) curl_multi_remove_handle(s->multi, s->easy);
    part_abandon(s);
    curl_slist_free_all(s->hdrs);
    curl_easy_cleanup(s->easy);
    curl_multi_cleanup(s->multi);
    free(s->buf);
    free(s->url);
    free(s);
}

static const tb_source_vtbl http_vtbl = {http_read, http_close};

tb_source *pfd_http_open(pfd_http *h, const char *url, tb_err *err) {
    char key[65] = "";
    int cached = h->cache && h->cache->budget > 0;
    if (cached) {
        cache_key(key, url);
        tb_source *c = cache_lookup(h, url, key);
        if (c) {
            STAT_ADD(h, cache_hits, 1);
            return c;
        }
        STAT_ADD(h, cache_misses, 1);
    }
    http_src *s = calloc(1, sizeof *s);
    if (!s) {
        tb_err_set(err, "GET %s: out of memory", url);
        return NULL;
    }
    s->base.vt = &http_vtbl;
    s->h = h;
    s->url = strdup(url);
    s->cap = h->opts.buffer_bytes ? h->opts.buffer_bytes : (1u << 20);
    if (s->cap < CURL_MAX_WRITE_SIZE * 2) s->cap = CURL_MAX_WRITE_SIZE * 2;
    s->buf = malloc(s->cap);
    s->multi = curl_multi_init();
    s->easy = curl_easy_init();
    s->total = -1;
    if (!s->url || !s->buf || !s->multi || !s->easy) {
        http_close(&s->base);
        tb_err_set(err, "GET %s: out of memory", url);
        return NULL;
    }
    if (cached) {
        static atomic_uint counter;
        snprintf(s->key, sizeof s->key, "%s", key);
        snprintf(s->part_path, sizeof s->part_path, "%s/%s.part.%d.%u", h->cache->dir, key,
                 (int)getpid(), atomic_fetch_add(&counter, 1));
        s->part = fopen(s->part_path, "wbx");
        if (s->part) {
            sha256_init(&s->sha);
        } else {
            tb_warn("cache: %s: %s; not caching %s", s->part_path, strerror(errno), url);
        }
    }
    return &s->base;
}

tb_source *pfd_http_opener(void *ctx, const char *location, tb_err *err) {
    return pfd_http_open(ctx, location, err);
}
