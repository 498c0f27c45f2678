/* Step records: one per optimizer step attempt, the same fields in the CSV
 * (daemon.csv_path) and on the PUB socket (topic trainerd.step). Column order: the
 * reference's, then tb's (docs/TRAINERD.md "CSV columns"). */
#ifndef TD_RECORDS_H
#define TD_RECORDS_H
#include <stdint.h>
#include <stdio.h>
#include "tb_err.h"
#include "tb_proto_ctl.h"
#include "trainer.h"

typedef struct td_record {
    double timestamp; /* wall seconds; the CSV writes ISO 8601 UTC */
    int64_t epoch, step, global_step;
    /* gpu_memory_gb: GiB the backend holds (parameters, moments, activations, scratch);
     * gpu_cached_gb: GiB in use on the whole device (cudaMemGetInfo); 0 on the CPU. */
    double loss, accuracy, learning_rate, grad_norm, scaler_scale, gpu_memory_gb, gpu_cached_gb;
    double tokens_per_s, mfu, step_ms, data_wait_ms;
    double comp_norm[TD_COMP_COUNT];
    double loss_scale;
    int skipped;
    double val_loss, val_accuracy; /* NaN: not evaluated at this step (empty cells) */
} td_record;

/* Number of columns and their names, in order. */
int td_record_ncols(void);
const char *td_record_col(int i);

/* Opens (creating parents) the CSV for appending; writes the header when the file is new
 * or empty. */
FILE *td_csv_open(const char *path, tb_err *err);
/* One row, flushed. */
int td_csv_write(FILE *f, const td_record *r, tb_err *err);

/* The record as a flat map (keys = column names; timestamp as a double). */
int td_record_to_kv(tb_kvmap *m, const td_record *r, tb_err *err);

#endif
