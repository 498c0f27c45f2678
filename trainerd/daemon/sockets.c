/* Socket binding over common/tb_endpoint (the code prefetchd uses): ipc lock file + 0660,
 * tcp CURVE server checked by the ZAP handler against daemon.curve_allowed_dir. */
#include "sockets.h"
#include <stdio.h>
#include <string.h>
#include "checkpoint.h"
#include "tb_endpoint.h"

int td_bind(void *sock, const char *endpoint, const char *curve_secret_file,
            const char *curve_allowed_dir, int *lock_fd, tb_err *err) {
    *lock_fd = -1;
    if (!strncmp(endpoint, "ipc://", 6)) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", endpoint + 6);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            if (td_mkdirs(dir, err)) return -1;
        }
    } else if (!strncmp(endpoint, "tcp://", 6)) {
        if (!curve_secret_file[0] || !curve_allowed_dir[0])
            return tb_err_set(err, "%s: tcp endpoints need daemon.curve_secret_key_file and "
                                   "daemon.curve_allowed_dir (CURVE + ZAP)", endpoint);
    } else if (strncmp(endpoint, "inproc://", 9)) {
        return tb_err_set(err, "%s: unsupported endpoint (ipc:// or tcp://)", endpoint);
    }
    tb_curve c;
    memset(&c, 0, sizeof c);
    snprintf(c.secret_key_file, sizeof c.secret_key_file, "%s", curve_secret_file);
    snprintf(c.allowed_dir, sizeof c.allowed_dir, "%s", curve_allowed_dir);
    return tb_endpoint_bind(sock, endpoint, &c, 0, lock_fd, err) ? -1 : 0;
}
