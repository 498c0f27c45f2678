/* Logging. Below the configured level the macros skip formatting entirely.
 * When stderr is connected to journald (JOURNAL_STREAM matches stderr's dev:inode) lines
 * carry "<N>" syslog priority prefixes; otherwise plain lines with a UTC timestamp. */
#ifndef TB_LOG_H
#define TB_LOG_H
#include <stdio.h>

typedef enum tb_log_level {
    TB_LOG_ERROR = 3, /* syslog LOG_ERR */
    TB_LOG_WARN = 4,
    TB_LOG_NOTICE = 5,
    TB_LOG_INFO = 6,
    TB_LOG_DEBUG = 7,
} tb_log_level;

extern tb_log_level tb_log_threshold;

void tb_log_init(const char *ident, tb_log_level level);
/* Parses "error|warn|notice|info|debug"; returns -1 on an unknown name. */
int tb_log_level_parse(const char *name, tb_log_level *out);
void tb_log_write(tb_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Non-zero when output goes to journald (for tests and for choosing formats). */
int tb_log_is_journal(void);

#define TB_LOG(level, ...)                                                             \
    do {                                                                               \
        if ((level) <= tb_log_threshold) tb_log_write((level), __VA_ARGS__);           \
    } while (0)
#define tb_error(...) TB_LOG(TB_LOG_ERROR, __VA_ARGS__)
#define tb_warn(...) TB_LOG(TB_LOG_WARN, __VA_ARGS__)
#define tb_notice(...) TB_LOG(TB_LOG_NOTICE, __VA_ARGS__)
#define tb_info(...) TB_LOG(TB_LOG_INFO, __VA_ARGS__)
#define tb_debug(...) TB_LOG(TB_LOG_DEBUG, __VA_ARGS__)

#endif
