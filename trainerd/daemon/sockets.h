/* Binding the daemon's sockets (DESIGN.md "Control and metrics"): ipc endpoints get a
 * lock file (a second instance fails with the holder's pid) and mode 0660; tcp endpoints
 * are refused unless CURVE is configured. */
#ifndef TD_SOCKETS_H
#define TD_SOCKETS_H
#include "tb_err.h"

/* Binds sock to endpoint; *lock_fd gets the ipc lock (keep it open), -1 for tcp. */
int td_bind(void *sock, const char *endpoint, const char *curve_secret_file,
            const char *curve_allowed_dir, int *lock_fd, tb_err *err);

#endif
