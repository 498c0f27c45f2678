#include "tb_notify.h"
#include "tb_clock.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>

static int enabled(void) { return getenv("NOTIFY_SOCKET") != NULL; }

static int send_state(const char *state) {
    if (!enabled()) return 0;
    int r = sd_notify(0, state);
    return r < 0 ? r : 0;
}

int tb_notify_ready(void) { return send_state("READY=1"); }
int tb_notify_watchdog(void) { return send_state("WATCHDOG=1"); }
int tb_notify_stopping(void) { return send_state("STOPPING=1"); }

int tb_notify_status(const char *fmt, ...) {
    if (!enabled()) return 0;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "STATUS=");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    /* One line: a newline in the text would start another variable ("...\nREADY=1"). */
    for (char *p = buf + n; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return send_state(buf);
}

int tb_notify_reloading(void) {
    if (!enabled()) return 0;
    char buf[128];
    snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)tb_clock_mono_us());
    return send_state(buf);
}

uint64_t tb_notify_watchdog_usec(void) {
    uint64_t usec = 0;
    if (!enabled()) return 0; /* nobody to ping */
    if (sd_watchdog_enabled(0, &usec) <= 0) return 0;
    return usec;
}
