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

/* Where the running config came from: reload (SIGHUP, control verb `reload`) loads the
 * same file with the same overrides again. path NULL: defaults and overrides only. */
typedef struct td_config_source {
    const char *path;
    const char *const *overrides;
    int nover;
} td_config_source;

/* Runs the daemon until stop; returns the process exit status. config_yaml: the values
 * in force (stored in checkpoints' state), may be NULL. cfg is updated in place by a
 * reload (the keys of td_reload_keys only). src may be NULL (reload then refused). */
int td_daemon_run(td_config *cfg, const char *config_yaml, const td_config_source *src);

/* The keys a reload applies to a running daemon, NULL-terminated. Every other key keeps
 * its running value: a reload that changes one is refused for that key (logged, and the
 * control reply is an error naming it). */
extern const char *const td_reload_keys[];

#endif
