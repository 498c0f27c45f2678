/* tb-prefetchd configuration: the schema (common/tb_config.h) and the struct it fills.
 * deploy/prefetchd.example.yaml is written from this schema by
 * `tb-prefetchd --print-example-config`. */
#ifndef PFD_CONFIG_H
#define PFD_CONFIG_H
#include <stdint.h>

#include "tb_config.h"

enum { PFD_PATH_MAX = TB_CFG_STR_MAX };

typedef enum pfd_log_level {
    PFD_LOG_ERROR = 0,
    PFD_LOG_WARN,
    PFD_LOG_NOTICE,
    PFD_LOG_INFO,
    PFD_LOG_DEBUG,
} pfd_log_level;

typedef struct pfd_config {
    /* endpoints */
    char feed_endpoint[PFD_PATH_MAX];
    char control_endpoint[PFD_PATH_MAX];
    char metrics_endpoint[PFD_PATH_MAX];
    /* paths */
    char ring_path[PFD_PATH_MAX];
    char state_dir[PFD_PATH_MAX];
    char cache_dir[PFD_PATH_MAX];
    int64_t cache_budget_bytes;
    /* workers */
    int64_t processes;
    int64_t threads; /* 0: online CPUs */
    int64_t restart_delay_ms;
    /* ring */
    int64_t ring_slots;
    /* data */
    char manifest[PFD_PATH_MAX];
    char tokenizer[PFD_PATH_MAX];
    char text_field[64];
    int64_t seq_len;
    int64_t batch_size;
    double mask_prob;
    double mask_share; /* [MASK] share of the chosen positions (0.8) */
    int packing;
    int64_t seed;
    int64_t shuffle_buffer;
    /* http */
    int64_t http_connect_timeout_s;
    int64_t http_low_speed_limit;
    int64_t http_low_speed_time_s;
    int64_t http_retries;
    int64_t http_backoff_initial_ms;
    int64_t http_backoff_max_ms;
    /* curve */
    char curve_secret_key_file[PFD_PATH_MAX];
    char curve_allowed_keys_dir[PFD_PATH_MAX];
    /* daemon */
    int log_level;  /* pfd_log_level */
    int watchdog;   /* ping systemd's watchdog when WATCHDOG_USEC is set */
    int64_t metrics_interval_ms;
    int64_t stop_timeout_ms;
} pfd_config;

extern const tb_cfg_schema pfd_config_schema;

/* Defaults + file (path may be NULL: defaults only) + "key=value" overrides.
 * On error: -1 with "file:line: key: why" (or "override: key: why"). Also checks
 * cross-key constraints (ring slot size, endpoints). */
int pfd_config_load(pfd_config *cfg, const char *path, char *const *overrides, int noverrides,
                    tb_err *err);

/* Threads after resolving 0 to the online CPU count. */
int pfd_config_threads(const pfd_config *cfg);

#endif
