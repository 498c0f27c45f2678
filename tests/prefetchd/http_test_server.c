#include "http_test_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static void serve(hts *s, int fd) {
    char req[8192];
    size_t len = 0;
    while (len < sizeof req - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 2000) <= 0) return;
        ssize_t r = recv(fd, req + len, sizeof req - 1 - len, 0);
        if (r <= 0) return;
        len += (size_t)r;
        req[len] = '\0';
        if (strstr(req, "\r\n\r\n")) break;
    }
    atomic_fetch_add(&s->requests, 1);
    char path[512];
    if (sscanf(req, "GET %511s", path) != 1) return;
    long long from = -1;
    char ifrange[128] = "";
    for (char *l = strstr(req, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, "Range: bytes=", 13) == 0) from = atoll(l + 15);
        if (strncasecmp(l + 2, "If-Range: ", 10) == 0) sscanf(l + 12, "%127[^\r]", ifrange);
    }
    if (from >= 0) atomic_fetch_add(&s->range_requests, 1);
    char hdr[1024];
    if (atomic_load(&s->fail_count) > 0) {
        atomic_fetch_sub(&s->fail_count, 1);
        int st = atomic_load(&s->fail_status);
        int n = snprintf(hdr, sizeof hdr,
                         "HTTP/1.1 %d Test Failure\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfail!",
                         st);
        send_all(fd, hdr, (size_t)n);
        return;
    }
    char file[1024];
    snprintf(file, sizeof file, "%s%s", s->root, path);
    FILE *f = fopen(file, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        if (f) fclose(f);
        int n = snprintf(hdr, sizeof hdr,
                         "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        send_all(fd, hdr, (size_t)n);
        return;
    }
    char etag[64];
    snprintf(etag, sizeof etag, "\"%lld-%d\"", (long long)st.st_size, atomic_load(&s->etag_gen));
    long long size = st.st_size;
    int partial = from >= 0 && !atomic_load(&s->ignore_range) && (!ifrange[0] || !strcmp(ifrange, etag));
    if (partial && from >= size) {
        int n = snprintf(hdr, sizeof hdr,
                         "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%lld\r\n"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n", size);
        send_all(fd, hdr, (size_t)n);
        fclose(f);
        return;
    }
    long long start = partial ? from : 0;
    int n;
    if (partial)
        n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 206 Partial Content\r\nETag: %s\r\nContent-Range: bytes %lld-%lld/%lld\r\n"
                     "Content-Length: %lld\r\nConnection: close\r\n\r\n",
                     etag, start, size - 1, size, size - start);
    else
        n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 200 OK\r\nETag: %s\r\nContent-Length: %lld\r\nAccept-Ranges: bytes\r\n"
                     "Connection: close\r\n\r\n",
                     etag, size);
    if (send_all(fd, hdr, (size_t)n) < 0) {
        fclose(f);
        return;
    }
    long cut = -1, stall = -1;
    if (atomic_load(&s->cut_count) > 0) {
        atomic_fetch_sub(&s->cut_count, 1);
        cut = atomic_load(&s->cut_after);
    }
    if (atomic_load(&s->stall_count) > 0) {
        atomic_fetch_sub(&s->stall_count, 1);
        stall = atomic_load(&s->stall_after);
    }
    fseek(f, start, SEEK_SET);
    long sent = 0;
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
        size_t k = r;
        if (cut >= 0 && sent + (long)k > cut) k = (size_t)(cut - sent);
        if (stall >= 0 && sent + (long)k > stall) k = (size_t)(stall - sent);
        if (k && send_all(fd, buf, k) < 0) break;
        sent += (long)k;
        if (cut >= 0 && sent >= cut) break;
        if (stall >= 0 && sent >= stall) {
            /* hold the connection open, sending nothing, until the client gives up */
            while (!atomic_load(&s->stop)) {
                struct pollfd p = {fd, POLLIN, 0};
                if (poll(&p, 1, 100) > 0) {
                    char c;
                    if (recv(fd, &c, 1, 0) <= 0) break;
                }
            }
            break;
        }
    }
    fclose(f);
}

static void *run(void *arg) {
    hts *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->lfd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0) continue;
        serve(s, fd);
        shutdown(fd, SHUT_RDWR);
        close(fd);
    }
    return NULL;
}

int hts_start(hts *s, const char *root) {
    memset(s, 0, sizeof *s);
    snprintf(s->root, sizeof s->root, "%s", root);
    atomic_store(&s->cut_after, -1);
    atomic_store(&s->stall_after, -1);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->lfd, 16) != 0) return -1;
    socklen_t al = sizeof a;
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->th, NULL, run, s) == 0 ? 0 : -1;
}

void hts_stop(hts *s) {
    atomic_store(&s->stop, 1);
    pthread_join(s->th, NULL);
    close(s->lfd);
}
