#include "notify_harness.h"
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int tb_notify_harness_open(tb_notify_harness *h, const char *dir) {
    h->fd = -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    int n = snprintf(h->path, sizeof h->path, "%s/notify.sock", dir);
    if (n < 0 || (size_t)n >= sizeof h->path || (size_t)n >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, h->path, (size_t)n + 1);
    h->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (h->fd < 0) return -1;
    unlink(h->path);
    if (bind(h->fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        setenv("NOTIFY_SOCKET", h->path, 1) != 0) {
        int e = errno;
        close(h->fd);
        h->fd = -1;
        errno = e;
        return -1;
    }
    return 0;
}

int tb_notify_harness_recv(tb_notify_harness *h, int timeout_ms, char *buf, size_t len) {
    struct pollfd p = {.fd = h->fd, .events = POLLIN};
    int r;
    do r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r <= 0) return r;
    ssize_t n = recv(h->fd, buf, len - 1, MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    buf[n] = '\0';
    return (int)n;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text;;) {
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0')) return 1;
        p = strchr(p, '\n');
        if (!p) return 0;
        p++;
    }
}

int tb_notify_harness_wait_for(tb_notify_harness *h, const char *line, int timeout_ms,
                               char *buf, size_t len) {
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - now_ms();
        if (left < 0) return 0;
        int r = tb_notify_harness_recv(h, (int)left, buf, len);
        if (r < 0) return -1;
        if (r == 0) return 0;
        if (has_line(buf, line)) return 1;
    }
}

void tb_notify_harness_close(tb_notify_harness *h) {
    if (h->fd >= 0) close(h->fd);
    h->fd = -1;
    unlink(h->path);
    unsetenv("NOTIFY_SOCKET");
}
