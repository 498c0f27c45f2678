/* Remote shards over HTTP(S): a tb_source (prefetchd/lib/source.h) streamed through the
 * libcurl multi interface, never holding a whole shard in memory.
 *
 * - A dropped connection (transfer error, premature end, low-speed timeout) is resumed
 *   with `Range: bytes=N-` and `If-Range: <ETag>`, so a changed file is never spliced:
 *   a 206 must carry the pinned ETag (or the same total size when the server sends no
 *   ETag); a 200 with the pinned ETag restarts the body and skips N bytes; anything else
 *   fails the shard ("changed while downloading").
 * - Every failed attempt is retried after a capped exponential backoff; after
 *   `retries` failures (HTTP 4xx/5xx included) the read fails: a bad shard.
 * - With a cache (pfd_cache), a complete download is kept under the cache dir (renamed
 *   into place only when complete, with its size and sha256 in a .meta file); later opens
 *   of the same URL read the cached file after checking its size and sha256. */
#ifndef PFD_HTTP_SOURCE_H
#define PFD_HTTP_SOURCE_H
#include <pthread.h>
#include <stdint.h>

#include "source.h"
#include "tb_err.h"

typedef struct pfd_http_opts {
    long connect_timeout_s;   /* CURLOPT_CONNECTTIMEOUT */
    long low_speed_limit;     /* CURLOPT_LOW_SPEED_LIMIT, bytes/s */
    long low_speed_time_s;    /* CURLOPT_LOW_SPEED_TIME */
    int retries;              /* attempts after the first */
    long backoff_initial_ms;
    long backoff_max_ms;
    size_t buffer_bytes;      /* in-memory window; 0 = 1 MiB */
} pfd_http_opts;

/* Counters shared by every source of one opener (atomic). */
typedef struct pfd_http_stats {
    uint64_t bytes;       /* body bytes received over the network */
    uint64_t resumes;     /* Range requests after a drop */
    uint64_t retries;     /* failed attempts retried */
    uint64_t failures;    /* shards given up on */
    uint64_t cache_hits, cache_misses, cache_evictions, cache_bad;
} pfd_http_stats;

/* The download cache: files <dir>/<key>.data + <key>.meta (url, size, sha256, etag);
 * the .meta mtime is the LRU clock (touched on every hit). */
typedef struct pfd_cache {
    char dir[4096];
    uint64_t budget; /* 0: no cache */
    pthread_mutex_t lock;
} pfd_cache;

int pfd_cache_init(pfd_cache *c, const char *dir, uint64_t budget, tb_err *err);
/* Evicts least recently used entries until the total plus `incoming` fits the budget.
 * Returns the number evicted. */
int pfd_cache_evict(pfd_cache *c, uint64_t incoming);
/* Total bytes of complete entries. */
uint64_t pfd_cache_usage(pfd_cache *c);

typedef struct pfd_http {
    pfd_http_opts opts;
    pfd_cache *cache;     /* may be NULL */
    pfd_http_stats stats; /* updated atomically */
} pfd_http;

/* Global libcurl setup; call once before threads start. */
int pfd_http_global_init(tb_err *err);

/* Opens url. Returns NULL with err on a cache/setup failure; network failures surface
 * from read(). */
tb_source *pfd_http_open(pfd_http *h, const char *url, tb_err *err);

/* A tb_source_opener for the pf-data stream (ctx = the pfd_http). */
tb_source *pfd_http_opener(void *ctx, const char *location, tb_err *err);

#endif
