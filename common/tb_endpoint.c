#include "tb_endpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tb_log.h"

#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93 /* libzmq >= 4.3 (a DRAFT option in its header) */
#endif

int tb_lock_acquire(const char *path, int wait_ms, tb_err *err) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return tb_err_set(err, "lock %s: open: %s", path, strerror(errno));
    for (int waited = 0;; waited += 50) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) break;
        int e = errno;
        if (e != EWOULDBLOCK || waited >= wait_ms) {
            char buf[32] = "";
            ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
            buf[n > 0 ? n : 0] = '\0';
            buf[strcspn(buf, "\n")] = '\0';
            close(fd);
            if (e != EWOULDBLOCK) return tb_err_set(err, "lock %s: %s", path, strerror(e));
            tb_err_set(err, "%s is in use by pid %s (another instance holds the lock)",
                       path, buf[0] ? buf : "?");
            return -2;
        }
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        tb_warn("lock %s: could not write pid: %s", path, strerror(errno));
    return fd;
}

static int z85_ok(const char *s) {
    uint8_t tmp[32];
    return strlen(s) == 40 && zmq_z85_decode(tmp, s) != NULL;
}

int tb_curve_read_keys(char pub[41], char sec[41], const char *path, tb_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return tb_err_set(err, "curve key file %s: %s", path, strerror(errno));
    if (pub) pub[0] = '\0';
    if (sec) sec[0] = '\0';
    char line[256];
    int ln = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        line[strcspn(line, "\r\n")] = '\0';
        char word[16], key[128];
        if (line[0] == '#' || line[0] == '\0') continue;
        if (z85_ok(line)) { /* a bare public key (a .pub file) */
            if (pub) memcpy(pub, line, 41);
            continue;
        }
        if (sscanf(line, "%15s %127s", word, key) != 2 || !z85_ok(key)) {
            rc = tb_err_set(err, "%s:%d: expected 'public|secret <40-char Z85 key>'", path, ln);
            break;
        }
        if (strcmp(word, "public") == 0 && pub) memcpy(pub, key, 41);
        else if (strcmp(word, "secret") == 0 && sec) memcpy(sec, key, 41);
    }
    fclose(f);
    return rc;
}

int tb_curve_generate(const char *path, tb_err *err) {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0)
        return tb_err_set(err, "zmq_curve_keypair: %s", zmq_strerror(errno));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return tb_err_set(err, "%s: %s", path, strerror(errno));
    dprintf(fd, "public %s\nsecret %s\n", pub, sec);
    close(fd);
    char pp[4200];
    snprintf(pp, sizeof pp, "%s.pub", path);
    fd = open(pp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return tb_err_set(err, "%s: %s", pp, strerror(errno));
    dprintf(fd, "%s\n", pub);
    close(fd);
    return 0;
}

int tb_endpoint_bind(void *sock, const char *ep, const tb_curve *curve, int lock_wait_ms,
                      int *lock_fd, tb_err *err) {
    *lock_fd = -1;
    if (strncmp(ep, "ipc://", 6) == 0) {
        const char *path = ep + 6;
        char lp[4200];
        snprintf(lp, sizeof lp, "%s.lock", path);
        int fd = tb_lock_acquire(lp, lock_wait_ms, err);
        if (fd < 0) {
            tb_err_wrap(err, "endpoint %s", ep);
            return fd;
        }
        unlink(path); /* stale socket of a dead daemon: we hold the lock */
        if (zmq_bind(sock, ep) != 0) {
            int e = errno;
            close(fd);
            return tb_err_set(err, "bind %s: %s", ep, zmq_strerror(e));
        }
        if (chmod(path, 0660) != 0) {
            int e = errno;
            close(fd);
            return tb_err_set(err, "chmod 0660 %s: %s", path, strerror(e));
        }
        *lock_fd = fd;
        return 0;
    }
    if (strncmp(ep, "tcp://", 6) == 0) {
        char pub[41], sec[41];
        if (!curve || !curve->secret_key_file[0])
            return tb_err_set(err, "bind %s: tcp endpoints need curve.secret_key_file", ep);
        if (tb_curve_read_keys(pub, sec, curve->secret_key_file, err) < 0) return -1;
        if (!sec[0])
            return tb_err_set(err, "%s: no 'secret' line", curve->secret_key_file);
        int one = 1;
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
            zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40) != 0 ||
            zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "tb", 2) != 0)
            return tb_err_set(err, "bind %s: CURVE options: %s", ep, zmq_strerror(errno));
        if (zmq_setsockopt(sock, ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof one) != 0)
            tb_warn("bind %s: ZMQ_ZAP_ENFORCE_DOMAIN unsupported by this libzmq (%s); the ZAP "
                    "handler still checks every CURVE client",
                    ep, zmq_strerror(errno));
        if (zmq_bind(sock, ep) != 0) return tb_err_set(err, "bind %s: %s", ep, zmq_strerror(errno));
        return 0;
    }
    if (zmq_bind(sock, ep) != 0) return tb_err_set(err, "bind %s: %s", ep, zmq_strerror(errno));
    return 0;
}

int tb_endpoint_client_curve(void *sock, const char *ep, const char *server_key_file,
                              const char *client_key_file, tb_err *err) {
    if (strncmp(ep, "tcp://", 6) != 0) return 0;
    if (!server_key_file || !client_key_file || !server_key_file[0] || !client_key_file[0])
        return tb_err_set(err, "%s: a tcp endpoint needs a server key and a client key file", ep);
    char spub[41], cpub[41], csec[41];
    if (tb_curve_read_keys(spub, NULL, server_key_file, err) < 0) return -1;
    if (!spub[0]) return tb_err_set(err, "%s: no server public key", server_key_file);
    if (tb_curve_read_keys(cpub, csec, client_key_file, err) < 0) return -1;
    if (!cpub[0] || !csec[0])
        return tb_err_set(err, "%s: needs 'public' and 'secret' lines", client_key_file);
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, spub, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, cpub, 40) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, csec, 40) != 0)
        return tb_err_set(err, "%s: CURVE client options: %s", ep, zmq_strerror(errno));
    return 0;
}

/* ---------------------------------------------------------------- ZAP */

struct tb_zap {
    void *zctx;
    char dir[4096];
    pthread_t thread;
    atomic_int stop;
    atomic_uint_least64_t refused, accepted;
    void *ready_sock;
};

/* Non-zero when a regular file in dir holds key (Z85, first line, or a 'public' line). */
static int key_allowed(const char *dir, const char *z85) {
    DIR *d = opendir(dir);
    if (!d) {
        tb_warn("ZAP: allowed keys dir %s: %s", dir, strerror(errno));
        return 0;
    }
    struct dirent *e;
    int ok = 0;
    while (!ok && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[8400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 4096) continue;
        FILE *f = fopen(p, "r");
        if (!f) continue;
        char line[256];
        while (!ok && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = '\0';
            const char *k = line;
            if (strncmp(k, "public ", 7) == 0) k += 7;
            if (strlen(k) == 40 && strcmp(k, z85) == 0) ok = 1;
        }
        fclose(f);
    }
    closedir(d);
    return ok;
}

static int recv_frame(void *s, char *buf, size_t cap, size_t *len, int *more) {
    int n = zmq_recv(s, buf, cap, 0);
    if (n < 0) return -1;
    *len = (size_t)n < cap ? (size_t)n : cap;
    int m = 0;
    size_t ml = sizeof m;
    zmq_getsockopt(s, ZMQ_RCVMORE, &m, &ml);
    *more = m;
    return 0;
}

static void *zap_main(void *arg) {
    tb_zap *z = arg;
    void *s = zmq_socket(z->zctx, ZMQ_REP);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    int rc = zmq_bind(s, "inproc://zeromq.zap.01");
    z->ready_sock = rc == 0 ? s : NULL;
    atomic_store(&z->stop, rc == 0 ? 0 : -1);
    if (rc != 0) {
        zmq_close(s);
        return NULL;
    }
    while (atomic_load(&z->stop) == 0) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 200) <= 0) continue;
        char f[8][256];
        size_t len[8] = {0};
        int nf = 0, more = 1;
        while (more) {
            char tmp[256];
            size_t l;
            if (recv_frame(s, tmp, sizeof tmp, &l, &more) < 0) break;
            if (nf < 8) {
                memcpy(f[nf], tmp, l);
                len[nf] = l;
                nf++;
            }
        }
        /* version, request id, domain, address, identity, mechanism, credentials... */
        if (nf < 6) continue;
        char mech[32] = "", addr[64] = "", z85[41] = "";
        snprintf(mech, sizeof mech, "%.*s", (int)len[5], f[5]);
        snprintf(addr, sizeof addr, "%.*s", (int)len[3], f[3]);
        int allow = 0;
        if (strcmp(mech, "CURVE") == 0 && nf >= 7 && len[6] == 32) {
            zmq_z85_encode(z85, (uint8_t *)f[6], 32);
            allow = key_allowed(z->dir, z85);
        }
        if (allow) {
            atomic_fetch_add(&z->accepted, 1);
            tb_info("ZAP: accepted CURVE client %s from %s", z85, addr);
        } else {
            atomic_fetch_add(&z->refused, 1);
            tb_warn("ZAP: refused %s client %s from %s: key not in %s", mech, z85[0] ? z85 : "-",
                    addr, z->dir);
        }
        zmq_send(s, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(s, f[1], len[1], ZMQ_SNDMORE);
        zmq_send(s, allow ? "200" : "400", 3, ZMQ_SNDMORE);
        zmq_send(s, allow ? "OK" : "key not allowed", allow ? 2 : 15, ZMQ_SNDMORE);
        zmq_send(s, z85, strlen(z85), ZMQ_SNDMORE);
        zmq_send(s, "", 0, 0);
    }
    zmq_close(s);
    return NULL;
}

tb_zap *tb_zap_start(void *zctx, const char *dir, tb_err *err) {
    tb_zap *z = calloc(1, sizeof *z);
    if (!z) {
        tb_err_set(err, "ZAP: out of memory");
        return NULL;
    }
    z->zctx = zctx;
    snprintf(z->dir, sizeof z->dir, "%s", dir);
    atomic_store(&z->stop, 2); /* 2: starting */
    if (pthread_create(&z->thread, NULL, zap_main, z) != 0) {
        free(z);
        tb_err_set(err, "ZAP: pthread_create failed");
        return NULL;
    }
    while (atomic_load(&z->stop) == 2) {
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&z->stop) < 0) {
        pthread_join(z->thread, NULL);
        free(z);
        tb_err_set(err, "ZAP: bind inproc://zeromq.zap.01 failed");
        return NULL;
    }
    return z;
}

uint64_t tb_zap_refused(const tb_zap *z) { return z ? atomic_load(&((tb_zap *)z)->refused) : 0; }
uint64_t tb_zap_accepted(const tb_zap *z) { return z ? atomic_load(&((tb_zap *)z)->accepted) : 0; }

void tb_zap_stop(tb_zap *z) {
    if (!z) return;
    atomic_store(&z->stop, 1);
    pthread_join(z->thread, NULL);
    free(z);
}
