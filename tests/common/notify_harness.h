/* The receiving side of sd_notify for tests: binds an AF_UNIX datagram socket in a
 * directory the test owns and points NOTIFY_SOCKET at it, so tb_notify_* calls in this
 * process (or in daemons it starts afterwards, which inherit the environment) arrive here.
 * Link target: tb_notify_harness. */
#ifndef TB_NOTIFY_HARNESS_H
#define TB_NOTIFY_HARNESS_H
#include <stddef.h>

typedef struct tb_notify_harness {
    int fd;
    char path[108]; /* sizeof sun_path */
} tb_notify_harness;

/* Binds DIR/notify.sock and sets NOTIFY_SOCKET to it. Returns 0, or -1 with errno
 * (ENAMETOOLONG when the path does not fit a socket address: use a short dir). */
int tb_notify_harness_open(tb_notify_harness *h, const char *dir);

/* Waits up to timeout_ms for one datagram; buf gets it NUL-terminated (truncated to
 * len - 1). Returns its length, 0 on timeout, or -1 with errno. */
int tb_notify_harness_recv(tb_notify_harness *h, int timeout_ms, char *buf, size_t len);

/* Receives datagrams until one holds the line `line` (e.g. "READY=1"), for up to
 * timeout_ms in all; buf keeps the matching datagram. Returns 1 when found, 0 on timeout,
 * -1 on error. */
int tb_notify_harness_wait_for(tb_notify_harness *h, const char *line, int timeout_ms,
                               char *buf, size_t len);

/* Closes and unlinks the socket and unsets NOTIFY_SOCKET. */
void tb_notify_harness_close(tb_notify_harness *h);

#endif
