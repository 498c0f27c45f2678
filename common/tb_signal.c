#include "tb_signal.h"
#include <string.h>

tb_signal_flags tb_signals;

static void on_signal(int sig) {
    switch (sig) {
    case SIGTERM:
    case SIGINT: tb_signals.term = 1; break;
    case SIGHUP: tb_signals.hup = 1; break;
    case SIGCHLD: tb_signals.chld = 1; break;
    case SIGUSR1: tb_signals.usr1 = 1; break;
    default: break;
    }
}

int tb_signal_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        if (sigaction(sigs[i], &sa, NULL) != 0) return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}
