/* Checkpoint directories (shared/DESIGN.md "trainerd", docs/TRAINERD.md "Checkpoints").
 *
 * One directory per save under a root: ckpt-<step, 12 digits>-<serial, 6 digits>, holding
 * the files a writer callback produces (model.safetensors, optimizer.safetensors,
 * state.msgpack) and manifest.json, written last, with each file's size and crc32c.
 * A save goes to .tmp-<name>, every file is fsynced, the manifest is written and fsynced,
 * the directory is fsynced, renamed to its final name, and the root is fsynced: a crash
 * at any point leaves either the previous set or the new checkpoint complete. A directory
 * is valid only when its manifest parses and every listed file has the listed size and
 * crc32c; anything else is skipped (with a log line) by the scan.
 *
 * Retention after each successful save (td_ckpt_retain): keep the newest `keep_rolling`
 * valid checkpoints, the `keep_best` valid ones with the lowest finite metric, and every
 * one tagged epoch, emergency, manual or final; delete the rest, and torn directories
 * older than the newest valid one. The newest valid checkpoint is never deleted, so a
 * root that had one never ends with zero. */
#ifndef TD_CHECKPOINT_H
#define TD_CHECKPOINT_H
#include <stddef.h>
#include <stdint.h>
#include "tb_err.h"

/* Why a checkpoint was written; a save may carry several. */
enum {
    TD_CKPT_ROLLING = 1 << 0,
    TD_CKPT_BEST = 1 << 1,
    TD_CKPT_EPOCH = 1 << 2,
    TD_CKPT_EMERGENCY = 1 << 3,
    TD_CKPT_MANUAL = 1 << 4, /* tbctl checkpoint */
    TD_CKPT_FINAL = 1 << 5,  /* SIGTERM / stop / end of training */
};

#define TD_CKPT_MAX_FILES 8
#define TD_CKPT_NAME_MAX 64

typedef struct td_ckpt_info {
    char name[TD_CKPT_NAME_MAX]; /* directory name under the root */
    int64_t step;                /* optimizer steps applied */
    uint32_t serial;             /* orders saves of the same step */
    unsigned tags;               /* TD_CKPT_* */
    double metric;               /* lower is better (val loss or loss moving average); NaN none */
    int valid;                   /* scan: manifest and every crc checked */
} td_ckpt_info;

/* Writes the checkpoint's files into dir (a fresh temporary directory); the names it
 * writes are given to td_ckpt_save. Returns 0 or -1 with err set. */
typedef int (*td_ckpt_writer)(const char *dir, void *ctx, tb_err *err);

/* Writes root/<name> (name from step and serial) atomically. files: the names the
 * writer produces (each must exist afterwards). On failure (disk full, ...) the temporary
 * directory is removed, nothing else is touched, and err says which file and why.
 * out (may be NULL) gets the new checkpoint's info. */
int td_ckpt_save(const char *root, int64_t step, unsigned tags, double metric,
                 const char *const *files, int nfiles, td_ckpt_writer writer, void *ctx,
                 td_ckpt_info *out, tb_err *err);

/* Lists root's checkpoint directories (temporary ones excluded), newest first (step,
 * then serial). Each is verified; invalid ones have valid = 0 and are logged (warn) when
 * log_invalid. *out is malloc'd (free it); *n its count. A missing root is 0 entries. */
int td_ckpt_scan(const char *root, int log_invalid, td_ckpt_info **out, int *n, tb_err *err);

/* Newest valid checkpoint: 1 and *out filled, 0 when there is none, -1 on error. */
int td_ckpt_newest(const char *root, td_ckpt_info *out, tb_err *err);

/* Verifies one directory (manifest, sizes, crcs); fills info. 0 valid, -1 with err. */
int td_ckpt_verify(const char *dir, td_ckpt_info *info, tb_err *err);

/* Retention as described above. Removes stale .tmp-* directories too. Returns the number
 * of directories removed, or -1. */
int td_ckpt_retain(const char *root, int keep_rolling, int keep_best, tb_err *err);

/* Removes leftover .tmp-* directories (a crash during a save). Returns the count or -1. */
int td_ckpt_clean_tmp(const char *root, tb_err *err);

/* Creates a directory and its parents (mode 0750). */
int td_mkdirs(const char *path, tb_err *err);
/* fsync of a directory by path. */
int td_fsync_dir(const char *path, tb_err *err);
/* Recursively removes a directory tree (one level of files is all checkpoints have). */
int td_rmtree(const char *path);

#endif
