/* Binding daemon sockets safely: lock files, ipc permissions, CURVE + ZAP.
 *
 * ipc://PATH: a lock file PATH.lock (flock, held for the daemon's life) is taken before
 * the stale socket file is removed and the socket bound, so a second daemon fails with
 * "... is in use by pid N" instead of stealing the endpoint; the socket file is then
 * chmod 0660 (owner and group only).
 * tcp://: CURVE server with the daemon's secret key; every client is checked by the ZAP
 * handler thread against the public keys found in a directory (re-read on every
 * connection, so adding or removing a key file needs no restart). */
#ifndef TB_ENDPOINT_H
#define TB_ENDPOINT_H
#include <stdint.h>

#include "tb_err.h"

/* Takes an exclusive flock on path (created 0640), writing our pid into it; retries for
 * wait_ms. Returns the fd (keep it open), -2 with "path is in use by pid N" when another
 * process holds it, or -1 on another failure. */
int tb_lock_acquire(const char *path, int wait_ms, tb_err *err);

typedef struct tb_curve {
    char secret_key_file[4096];
    char allowed_dir[4096];
} tb_curve;

/* Reads a key file: lines "public Z85" and "secret Z85" (either may be absent; a line
 * with a bare key counts as the public key, as in a .pub file). Z85
 * strings are 40 characters; out buffers get 41 bytes (NUL). */
int tb_curve_read_keys(char pub[41], char sec[41], const char *path, tb_err *err);
/* Writes a fresh key pair to path (0600) and the public key alone to path.pub (0644). */
int tb_curve_generate(const char *path, tb_err *err);

/* Binds sock to endpoint. lock_fd gets the ipc lock's fd (-1 for tcp). Returns 0, -2
 * when another process holds the endpoint's lock, -1 otherwise. */
int tb_endpoint_bind(void *sock, const char *endpoint, const tb_curve *curve, int lock_wait_ms,
                      int *lock_fd, tb_err *err);

/* Configures a client socket for a tcp endpoint with CURVE: server public key from
 * server_key_file, own key pair from client_key_file. No-op for non-tcp endpoints. */
int tb_endpoint_client_curve(void *sock, const char *endpoint, const char *server_key_file,
                              const char *client_key_file, tb_err *err);

/* The ZAP handler thread (one per context; inproc://zeromq.zap.01). */
typedef struct tb_zap tb_zap;
tb_zap *tb_zap_start(void *zctx, const char *allowed_dir, tb_err *err);
/* Connections refused / accepted so far. */
uint64_t tb_zap_refused(const tb_zap *z);
uint64_t tb_zap_accepted(const tb_zap *z);
void tb_zap_stop(tb_zap *z);

#endif
