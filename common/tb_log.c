#include "tb_log.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

tb_log_level tb_log_threshold = TB_LOG_INFO;
static char log_ident[64] = "tb";
static int log_journal = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* JOURNAL_STREAM is "dev:inode" of the stream systemd connected; compare with fd 2. */
static int detect_journal(void) {
    const char *js = getenv("JOURNAL_STREAM");
    if (!js) return 0;
    unsigned long long dev = 0, ino = 0;
    if (sscanf(js, "%llu:%llu", &dev, &ino) != 2) return 0;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) != 0) return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void tb_log_init(const char *ident, tb_log_level level) {
    if (ident) snprintf(log_ident, sizeof log_ident, "%s", ident);
    tb_log_threshold = level;
    log_journal = detect_journal();
}

int tb_log_is_journal(void) {
    if (log_journal < 0) log_journal = detect_journal();
    return log_journal;
}

int tb_log_level_parse(const char *name, tb_log_level *out) {
    static const struct { const char *n; tb_log_level l; } names[] = {
        {"error", TB_LOG_ERROR}, {"warn", TB_LOG_WARN}, {"warning", TB_LOG_WARN},
        {"notice", TB_LOG_NOTICE}, {"info", TB_LOG_INFO}, {"debug", TB_LOG_DEBUG},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].n) == 0) { *out = names[i].l; return 0; }
    return -1;
}

static const char *level_name(tb_log_level l) {
    switch (l) {
    case TB_LOG_ERROR: return "error";
    case TB_LOG_WARN: return "warn";
    case TB_LOG_NOTICE: return "notice";
    case TB_LOG_INFO: return "info";
    default: return "debug";
    }
}

void tb_log_write(tb_log_level level, const char *fmt, ...) {
    char msg[4096], line[4096];
    va_list ap;
    va_start(ap, fmt);
    if (vsnprintf(msg, sizeof msg, fmt, ap) < 0) msg[0] = '\0';
    va_end(ap);
    int journal = tb_log_is_journal();
    int n;
    if (journal) {
        n = snprintf(line, sizeof line, "<%d>", (int)level);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_ident, (int)getpid(),
                     level_name(level));
    }
    size_t len = n < 0 ? 0 : (size_t)n;
    size_t mlen = strlen(msg);
    if (mlen && msg[mlen - 1] == '\n') msg[--mlen] = '\0'; /* the line ends here anyway */
    /* journald takes each line as its own record: every line needs the priority, or
     * the rest of a multi-line error would be logged at the default level. */
    for (size_t i = 0; i < mlen && len < sizeof line - 8; i++) {
        line[len++] = msg[i];
        if (journal && msg[i] == '\n') len += (size_t)snprintf(line + len, 8, "<%d>", (int)level);
    }
    line[len++] = '\n';
    pthread_mutex_lock(&log_lock);
    fwrite(line, 1, len, stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}
