#include "sockets.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>
#include "checkpoint.h"

static int lock_path(const char *path, tb_err *err) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return tb_err_set(err, "lock %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        char pid[32] = {0};
        ssize_t r = pread(fd, pid, sizeof pid - 1, 0);
        (void)r;
        close(fd);
        return tb_err_set(err, "%s is in use by pid %s (another tb-trainerd?)", path,
                          pid[0] ? pid : "?");
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) < 0) { /* best effort */ }
    return fd;
}

int td_bind(void *sock, const char *endpoint, const char *curve_secret_file,
            const char *curve_allowed_dir, int *lock_fd, tb_err *err) {
    *lock_fd = -1;
    if (!strncmp(endpoint, "ipc://", 6)) {
        const char *path = endpoint + 6;
        char dir[4096], lk[4200];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            if (td_mkdirs(dir, err)) return -1;
        }
        snprintf(lk, sizeof lk, "%s.lock", path);
        int fd = lock_path(lk, err);
        if (fd < 0) return -1;
        unlink(path); /* stale socket of a dead instance: we hold the lock */
        if (zmq_bind(sock, endpoint)) {
            close(fd);
            return tb_err_set(err, "bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
        }
        if (chmod(path, 0660)) {
            close(fd);
            return tb_err_set(err, "chmod 0660 %s: %s", path, strerror(errno));
        }
        *lock_fd = fd;
        return 0;
    }
    if (!strncmp(endpoint, "tcp://", 6)) {
        (void)curve_secret_file;
        (void)curve_allowed_dir;
        return tb_err_set(err, "%s: tcp endpoints need CURVE + ZAP, which tb-trainerd does not "
                               "implement yet; use ipc://", endpoint);
    }
    if (!strncmp(endpoint, "inproc://", 9)) {
        if (zmq_bind(sock, endpoint))
            return tb_err_set(err, "bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
        return 0;
    }
    return tb_err_set(err, "%s: unsupported endpoint (ipc:// or tcp://)", endpoint);
}
