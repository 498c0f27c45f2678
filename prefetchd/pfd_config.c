#include "pfd_config.h"

#include "mask.h"

#include <stddef.h>
#include <string.h>
#include <unistd.h>

#define F(k, t, m, def, lo, hi, ch, help)                                                     \
    {k, t, offsetof(pfd_config, m), sizeof(((pfd_config *)0)->m), def, lo, hi, ch, help}
#define SEC(k, help) {k, TB_CFG_SECTION, 0, 0, NULL, 1, 0, NULL, help}

static const tb_cfg_field fields[] = {
    SEC("endpoints", "ZeroMQ endpoints. ipc:// sockets are chmod 0660 after bind and guarded by\n"
                     "a lock file (<socket path>.lock). tcp:// requires curve.secret_key_file\n"
                     "and curve.allowed_keys_dir (CURVE + ZAP)."),
    F("endpoints.feed", TB_CFG_STRING, feed_endpoint, "ipc:///run/tb/feed.sock", 1, 0, NULL,
      "ROUTER socket trainers connect a DEALER to (HELLO/CREDIT/BATCH/ACK)."),
    F("endpoints.control", TB_CFG_STRING, control_endpoint, "ipc:///run/tb/prefetchd.ctl", 1, 0,
      NULL, "REP socket for tbctl (status, pause, resume, stop, shards.*)."),
    F("endpoints.metrics", TB_CFG_STRING, metrics_endpoint, "ipc:///run/tb/prefetchd.pub", 1, 0,
      NULL, "PUB socket: topic prefetchd.stats once per daemon.metrics_interval_ms."),
    SEC("paths", "Files and directories."),
    F("paths.ring", TB_CFG_STRING, ring_path, "/run/tb/ring", 1, 0, NULL,
      "Ring file (tmpfs): fixed-size slots, mmap'd shared; survives a restart.\n"
      "A lock file <ring>.lock keeps a second daemon away."),
    F("paths.state_dir", TB_CFG_STRING, state_dir, "/var/lib/tb/prefetchd", 1, 0, NULL,
      "Manifest generations (gen-<N>.manifest) and swap points (swaps.json): the\n"
      "history that, with the seed, defines the stream. Keep it with the checkpoints."),
    F("paths.cache_dir", TB_CFG_STRING, cache_dir, "/var/cache/tb", 1, 0, NULL,
      "Downloaded remote shards (LRU, bounded by cache.budget_bytes)."),
    SEC("cache", "Download cache."),
    F("cache.budget_bytes", TB_CFG_INT, cache_budget_bytes, "68719476736", 0, 9.0e18, NULL,
      "Byte budget of the download cache; least recently used shards are evicted first.\n"
      "0 disables caching (remote shards are streamed only)."),
    SEC("workers", "Worker processes (supervised by the master)."),
    F("workers.processes", TB_CFG_INT, processes, "1", 1, 64, NULL,
      "Worker processes. One produces at a time (the stream is sequential); the others\n"
      "are hot standbys that take over when it dies."),
    F("workers.threads", TB_CFG_INT, threads, "0", 0, 1024, NULL,
      "Tokenizer threads per worker process; 0 = online CPUs."),
    F("workers.restart_delay_ms", TB_CFG_INT, restart_delay_ms, "200", 0, 60000, NULL,
      "Delay before a dead worker is restarted."),
    SEC("ring", "The batch ring."),
    F("ring.slots", TB_CFG_INT, ring_slots, "64", 2, 65536, NULL,
      "Slots in the ring (each holds one BATCH; slot size derives from batch_size x seq_len)."),
    SEC("data", "What the stream is made of."),
    F("data.manifest", TB_CFG_STRING, manifest, "/etc/tb/shards.manifest", 1, 0, NULL,
      "Manifest file (one shard per line: PATH-or-URL [size] [sha256]); re-read on SIGHUP."),
    F("data.tokenizer", TB_CFG_STRING, tokenizer, "/var/lib/tb/spm.model", 1, 0, NULL,
      "SentencePiece model file."),
    F("data.text_field", TB_CFG_STRING, text_field, "", 1, 0, NULL,
      "JSON field holding a document's text in JSONL shards. Empty: \"text\", or\n"
      "\"raw_content\" where a line has no \"text\" (RedPajama-V2)."),
    F("data.seq_len", TB_CFG_INT, seq_len, "512", 8, 1048576, NULL, "Tokens per sample (T)."),
    F("data.batch_size", TB_CFG_INT, batch_size, "32", 1, 65536, NULL, "Samples per batch (B)."),
    F("data.mask_prob", TB_CFG_DOUBLE, mask_prob, "0.15", 0.0, 1.0, NULL,
      "MLM: fraction of non-special positions chosen (exact count, at least 1)."),
    F("data.mask_share", TB_CFG_DOUBLE, mask_share, "0.8", 0.2, 1.0, NULL,
      "MLM: share of the chosen positions set to [MASK]: 0.2, 0.4, 0.6, 0.8 or 1; the\n"
      "rest split evenly between a random id and the unchanged id (0.8: 80/10/10)."),
    F("data.packing", TB_CFG_BOOL, packing, "true", 1, 0, NULL,
      "true: [CLS] doc [SEP] doc [SEP] ... to exactly seq_len; false: truncate and pad\n"
      "with an attention mask (the reference's layout)."),
    F("data.seed", TB_CFG_INT, seed, "1234", 0, 9.0e18, NULL,
      "Seed of shard order, document shuffle and masks."),
    F("data.shuffle_buffer", TB_CFG_INT, shuffle_buffer, "1024", 1, 1048576, NULL,
      "Documents in the seeded shuffle buffer."),
    SEC("http", "Remote (http:// https://) shards, libcurl."),
    F("http.connect_timeout_s", TB_CFG_INT, http_connect_timeout_s, "10", 1, 600, NULL,
      "CURLOPT_CONNECTTIMEOUT."),
    F("http.low_speed_limit", TB_CFG_INT, http_low_speed_limit, "1024", 0, 1e12, NULL,
      "Bytes/s under which a transfer counts as stalled (CURLOPT_LOW_SPEED_LIMIT)."),
    F("http.low_speed_time_s", TB_CFG_INT, http_low_speed_time_s, "30", 1, 3600, NULL,
      "Seconds below low_speed_limit before the transfer is dropped and resumed."),
    F("http.retries", TB_CFG_INT, http_retries, "8", 0, 1000, NULL,
      "Attempts after the first before a shard is declared bad."),
    F("http.backoff_initial_ms", TB_CFG_INT, http_backoff_initial_ms, "250", 1, 3600000, NULL,
      "First retry delay; doubles per attempt."),
    F("http.backoff_max_ms", TB_CFG_INT, http_backoff_max_ms, "30000", 1, 3600000, NULL,
      "Cap of the retry delay."),
    SEC("curve", "CURVE security for tcp:// endpoints."),
    F("curve.secret_key_file", TB_CFG_STRING, curve_secret_key_file, NULL, 1, 0, NULL,
      "File with the daemon's key pair: two lines 'public Z85' and 'secret Z85'\n"
      "(as `tb-prefetchd --gen-curve-keys FILE` writes). Required for tcp:// endpoints."),
    F("curve.allowed_keys_dir", TB_CFG_STRING, curve_allowed_keys_dir, NULL, 1, 0, NULL,
      "Directory of allowed client public keys: each regular file holds one Z85 key\n"
      "(40 characters, first line). Others are refused by the ZAP handler and logged."),
    SEC("daemon", "Process behaviour."),
    F("daemon.log_level", TB_CFG_ENUM, log_level, "info", 1, 0, "error|warn|notice|info|debug",
      "Log threshold."),
    F("daemon.watchdog", TB_CFG_BOOL, watchdog, "true", 1, 0, NULL,
      "Send WATCHDOG=1 every quarter of WATCHDOG_USEC when systemd sets it."),
    F("daemon.metrics_interval_ms", TB_CFG_INT, metrics_interval_ms, "1000", 50, 3600000, NULL,
      "Period of prefetchd.stats records."),
    F("daemon.stop_timeout_ms", TB_CFG_INT, stop_timeout_ms, "4000", 100, 60000, NULL,
      "On SIGTERM: time allowed to deliver in-flight sends before exit (the exit is\n"
      "within 5 s by default)."),
};

const tb_cfg_schema pfd_config_schema = {"tb-prefetchd", fields, sizeof fields / sizeof fields[0]};

static int check_endpoint(const pfd_config *c, const char *key, const char *ep, tb_err *err) {
    if (strncmp(ep, "ipc://", 6) == 0) {
        if (ep[6] == '\0' || ep[6] == '@')
            return tb_err_set(err, "%s: %s: ipc endpoints must name a file path", key, ep);
        return 0;
    }
    if (strncmp(ep, "tcp://", 6) == 0) {
        if (!c->curve_secret_key_file[0] || !c->curve_allowed_keys_dir[0])
            return tb_err_set(err,
                              "%s: %s: a tcp endpoint needs curve.secret_key_file and "
                              "curve.allowed_keys_dir",
                              key, ep);
        return 0;
    }
    if (strncmp(ep, "inproc://", 9) == 0) return 0;
    return tb_err_set(err, "%s: %s: endpoint must be ipc:// or tcp://", key, ep);
}

int pfd_config_load(pfd_config *cfg, const char *path, char *const *overrides, int noverrides,
                    tb_err *err) {
    if (tb_cfg_defaults(cfg, &pfd_config_schema, err) < 0) return -1;
    if (path && tb_cfg_load_file(cfg, &pfd_config_schema, path, NULL, err) < 0) return -1;
    for (int i = 0; i < noverrides; i++)
        if (tb_cfg_set(cfg, &pfd_config_schema, overrides[i], NULL, err) < 0)
            return tb_err_wrap(err, "override '%s'", overrides[i]);
    const char *where = path ? path : "config";
    if (check_endpoint(cfg, "endpoints.feed", cfg->feed_endpoint, err) < 0 ||
        check_endpoint(cfg, "endpoints.control", cfg->control_endpoint, err) < 0 ||
        check_endpoint(cfg, "endpoints.metrics", cfg->metrics_endpoint, err) < 0)
        return tb_err_wrap(err, "%s", where);
    if (cfg->batch_size * cfg->seq_len > (1 << 24))
        return tb_err_set(err, "%s: data.batch_size: %lld x data.seq_len %lld > 16777216 tokens",
                          where, (long long)cfg->batch_size, (long long)cfg->seq_len);
    if (tb_mask_share_tenths(cfg->mask_share) < 0)
        return tb_err_set(err, "%s: data.mask_share: %g is not one of 0.2, 0.4, 0.6, 0.8, 1",
                          where, cfg->mask_share);
    if (cfg->http_backoff_max_ms < cfg->http_backoff_initial_ms)
        return tb_err_set(err, "%s: http.backoff_max_ms: %lld < http.backoff_initial_ms", where,
                          (long long)cfg->http_backoff_max_ms);
    return 0;
}

int pfd_config_threads(const pfd_config *cfg) {
    if (cfg->threads > 0) return (int)cfg->threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
