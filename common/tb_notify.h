/* systemd notification (sd_notify from libsystemd). Every call is a no-op returning 0
 * when NOTIFY_SOCKET is unset, so daemons run unchanged in a terminal or a test. */
#ifndef TB_NOTIFY_H
#define TB_NOTIFY_H
#include <stdint.h>

int tb_notify_ready(void);
int tb_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int tb_notify_watchdog(void);
/* RELOADING=1 with MONOTONIC_USEC=now, as systemd expects for reload-notify. */
int tb_notify_reloading(void);
int tb_notify_stopping(void);
/* Watchdog interval from WATCHDOG_USEC (honouring WATCHDOG_PID); 0 when disabled. Daemons
 * ping at half of it or more often. */
uint64_t tb_notify_watchdog_usec(void);

#endif
