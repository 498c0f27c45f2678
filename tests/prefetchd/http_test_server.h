/* A small loopback HTTP/1.1 server for tests: serves files under a root, honours
 * `Range: bytes=N-` and `If-Range`, and has knobs to cut or stall a response after N body
 * bytes, to fail requests with a status, to ignore Range, or to change the ETag. One
 * connection at a time, "Connection: close". */
#ifndef HTTP_TEST_SERVER_H
#define HTTP_TEST_SERVER_H
#include <pthread.h>
#include <stdatomic.h>

typedef struct hts {
    int lfd, port;
    pthread_t th;
    atomic_int stop;
    char root[256];
    atomic_long cut_after;   /* body bytes sent before the connection is cut (< 0: never) */
    atomic_int cut_count;    /* responses left to cut */
    atomic_long stall_after; /* body bytes sent before stalling (< 0: never) */
    atomic_int stall_count;
    atomic_int fail_status;  /* status for the next fail_count requests */
    atomic_int fail_count;
    atomic_int ignore_range; /* answer 200 with the whole body even to a Range request */
    atomic_int etag_gen;     /* part of the ETag: bump it to "change" the file */
    atomic_int requests, range_requests;
} hts;

int hts_start(hts *s, const char *root);
void hts_stop(hts *s);

#endif
