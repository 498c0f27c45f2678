/* Error reporting: functions that can fail return an int status (0 = ok) and leave a
 * message in a caller-owned tb_err naming what failed, where, and the value. */
#ifndef TB_ERR_H
#define TB_ERR_H
#include <stddef.h>

typedef struct tb_err {
    char msg[1024];
} tb_err;

/* printf-style; safe with err == NULL. Returns -1 so callers can `return tb_err_set(...)`. */
int tb_err_set(tb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix an existing message: "prefix: old message". Returns -1. */
int tb_err_wrap(tb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* sysexits-style exit codes used by every binary. */
enum {
    TB_EX_OK = 0,
    TB_EX_USAGE = 64,
    TB_EX_DATAERR = 65,
    TB_EX_NOINPUT = 66,
    TB_EX_SOFTWARE = 70,
    TB_EX_IOERR = 74,
    TB_EX_CONFIG = 78,
};

#endif
