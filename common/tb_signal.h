/* Signal handling: handlers only set flags; the event loop reads and clears them. */
#ifndef TB_SIGNAL_H
#define TB_SIGNAL_H
#include <signal.h>

typedef struct tb_signal_flags {
    volatile sig_atomic_t term; /* SIGTERM or SIGINT: drain and stop */
    volatile sig_atomic_t hup;  /* SIGHUP: reload */
    volatile sig_atomic_t chld; /* SIGCHLD: reap workers */
    volatile sig_atomic_t usr1; /* SIGUSR1: daemon-specific (e.g. checkpoint now) */
} tb_signal_flags;

extern tb_signal_flags tb_signals;

/* Installs flag-setting handlers for TERM, INT, HUP, CHLD, USR1 and ignores SIGPIPE.
 * Returns 0 or -1 (errno set). */
int tb_signal_install(void);

#endif
