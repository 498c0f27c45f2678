#include "tb_err.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int tb_err_set(tb_err *err, const char *fmt, ...) {
    if (!err) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

int tb_err_wrap(tb_err *err, const char *fmt, ...) {
    if (!err) return -1;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t n = strnlen(prefix, sizeof prefix - 1);
    memcpy(err->msg, prefix, n);
    size_t room = sizeof err->msg - 1 - n;
    if (room >= 2) {
        err->msg[n++] = ':';
        err->msg[n++] = ' ';
        room -= 2;
        size_t m = strnlen(old, room);
        memcpy(err->msg + n, old, m);
        n += m;
    }
    err->msg[n] = '\0';
    return -1;
}
