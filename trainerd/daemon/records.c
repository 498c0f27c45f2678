#include "records.h"
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "checkpoint.h"

static const char *const cols[] = {
    "timestamp", "epoch", "step", "global_step", "loss", "accuracy", "learning_rate",
    "grad_norm", "scaler_scale", "gpu_memory_gb", "gpu_cached_gb", "tokens_per_s", "mfu",
    "step_ms", "data_wait_ms", "grad_norm_embeddings", "grad_norm_attention", "grad_norm_ode",
    "grad_norm_retnet", "grad_norm_mamba", "grad_norm_moe_experts", "grad_norm_router",
    "grad_norm_norms", "grad_norm_head", "loss_scale", "skipped", "val_loss", "val_accuracy"};
#define NCOLS (int)(sizeof cols / sizeof cols[0])
_Static_assert(NCOLS == 19 + TD_COMP_COUNT, "one column per component norm");

int td_record_ncols(void) { return NCOLS; }
const char *td_record_col(int i) { return i >= 0 && i < NCOLS ? cols[i] : NULL; }

FILE *td_csv_open(const char *path, tb_err *err) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (td_mkdirs(dir, err)) return NULL;
    }
    FILE *f = fopen(path, "a");
    if (!f) {
        tb_err_set(err, "csv %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size == 0) {
        for (int i = 0; i < NCOLS; i++) fprintf(f, "%s%s", i ? "," : "", cols[i]);
        fputc('\n', f);
        fflush(f);
    }
    return f;
}

static void put_d(FILE *f, double v) {
    if (isnan(v)) fputs(",", f);
    else fprintf(f, ",%.9g", v);
}

int td_csv_write(FILE *f, const td_record *r, tb_err *err) {
    char ts[40];
    time_t sec = (time_t)r->timestamp;
    struct tm tm;
    gmtime_r(&sec, &tm);
    int ms = (int)((r->timestamp - (double)sec) * 1000.0);
    if (ms < 0) ms = 0;
    if (ms > 999) ms = 999;
    if (snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms) >= (int)sizeof ts)
        ts[sizeof ts - 1] = 0;
    fprintf(f, "%s,%lld,%lld,%lld", ts, (long long)r->epoch, (long long)r->step,
            (long long)r->global_step);
    double v[] = {r->loss, r->accuracy, r->learning_rate, r->grad_norm, r->scaler_scale,
                  r->gpu_memory_gb, r->gpu_cached_gb, r->tokens_per_s, r->mfu, r->step_ms,
                  r->data_wait_ms};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) put_d(f, v[i]);
    for (int c = 0; c < TD_COMP_COUNT; c++) put_d(f, r->comp_norm[c]);
    put_d(f, r->loss_scale);
    fprintf(f, ",%d", r->skipped);
    put_d(f, r->val_loss);
    put_d(f, r->val_accuracy);
    fputc('\n', f);
    if (fflush(f) || ferror(f)) return tb_err_set(err, "csv write: %s", strerror(errno));
    return 0;
}

int td_record_to_kv(tb_kvmap *m, const td_record *r, tb_err *err) {
    int rc = tb_kvmap_add_double(m, cols[0], r->timestamp, err) ||
             tb_kvmap_add_int(m, cols[1], r->epoch, err) ||
             tb_kvmap_add_int(m, cols[2], r->step, err) ||
             tb_kvmap_add_int(m, cols[3], r->global_step, err);
    double v[] = {r->loss, r->accuracy, r->learning_rate, r->grad_norm, r->scaler_scale,
                  r->gpu_memory_gb, r->gpu_cached_gb, r->tokens_per_s, r->mfu, r->step_ms,
                  r->data_wait_ms};
    int k = 4;
    for (size_t i = 0; i < sizeof v / sizeof v[0] && !rc; i++)
        rc = tb_kvmap_add_double(m, cols[k++], v[i], err);
    for (int c = 0; c < TD_COMP_COUNT && !rc; c++)
        rc = tb_kvmap_add_double(m, cols[k++], r->comp_norm[c], err);
    if (!rc) rc = tb_kvmap_add_double(m, cols[k++], r->loss_scale, err);
    if (!rc) rc = tb_kvmap_add_bool(m, cols[k++], r->skipped != 0, err);
    if (!rc && !isnan(r->val_loss)) rc = tb_kvmap_add_double(m, cols[k], r->val_loss, err);
    k++;
    if (!rc && !isnan(r->val_accuracy)) rc = tb_kvmap_add_double(m, cols[k], r->val_accuracy, err);
    return rc ? -1 : 0;
}
