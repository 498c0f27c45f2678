/* tb-trainerd's event loop (docs/TRAINERD.md): one thread, zmq_poll over the feed DEALER
 * and the control REP, with a timer for the watchdog; signals only set flags. */
#ifndef TD_DAEMON_H
#define TD_DAEMON_H
#include "td_config.h"

/* Exit statuses (documented in docs/TRAINERD.md). */
enum {
    TD_EXIT_OK = 0,
    TD_EXIT_NONFINITE = 3, /* non-finite loss/gradients after max retries: emergency ckpt */
};

/* Runs the daemon until stop; returns the process exit status. config_yaml: the values
 * in force (stored in checkpoints' state), may be NULL. */
int td_daemon_run(const td_config *cfg, const char *config_yaml);

#endif
