/* The tb-prefetchd master: one event loop (zmq_poll over the feed ROUTER, the control
 * REP, the workers' socketpairs, and a timer) driving the ring, the workers, control and
 * metrics. */
#ifndef PFD_DAEMON_H
#define PFD_DAEMON_H
#include "pfd_config.h"

/* Runs until SIGTERM/SIGINT or the `stop` verb. Returns the process exit status
 * (0, TB_EX_CONFIG for unusable settings, TB_EX_SOFTWARE / TB_EX_IOERR otherwise). */
int pfd_daemon_run(const pfd_config *cfg);

/* The worker side of `tb-prefetchd --worker SOCK,SHM,INDEX,PID` (started by the master
 * with fork + exec; not for people): maps the shared status, then runs the worker. */
int pfd_worker_exec_main(const pfd_config *cfg, const char *spec);

#endif
