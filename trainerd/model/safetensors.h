/* safetensors files of the model's registry (MODEL.md section 11 names and shapes):
 * 8-byte little-endian header length, a JSON header (jansson) mapping each tensor name to
 * {dtype, shape, data_offsets}, optional "__metadata__" (string -> string), then the raw
 * little-endian data. tb writes F32 (fp32 master weights; the fp64 build converts).
 *
 * A file holds one or more roles of the registry: each role is a buffer of p->total reals
 * and a name suffix ("" for the weights; ".exp_avg" / ".exp_avg_sq" for AdamW moments).
 * The reader validates everything against the registry and fails with a message naming
 * the file, the tensor and the values: header length, JSON, dtype, shape, offsets (in
 * bounds, contiguous, non-overlapping, covering the data), missing and extra tensors. */
#ifndef TB_MODEL_SAFETENSORS_H
#define TB_MODEL_SAFETENSORS_H
#include "params.h"
#include "tb_err.h"

typedef struct tb_st_role {
    real *buf;          /* p->total reals (read: written; write: read) */
    const char *suffix; /* appended to each registry name */
} tb_st_role;

typedef struct tb_st_meta {
    char key[64];
    char value[512];
} tb_st_meta;

/* Writes path atomically (path.tmp, fsync, rename, fsync of the directory). */
int tb_st_write(const char *path, const tb_params *p, const tb_st_role *roles, int nroles,
                const tb_st_meta *meta, int nmeta, tb_err *err);

/* Reads and validates; fills the roles' buffers. meta (cap entries, may be NULL) gets the
 * __metadata__ pairs; *nmeta their count (those beyond cap are dropped). */
int tb_st_read(const char *path, const tb_params *p, const tb_st_role *roles, int nroles,
               tb_st_meta *meta, int cap, int *nmeta, tb_err *err);

/* Value of a metadata key, or NULL. */
const char *tb_st_meta_get(const tb_st_meta *meta, int n, const char *key);

#endif
