/* C API over libsentencepiece (tb_spm.cpp is the only C++ in common/). Errors are
 * reported through tb_err; no exception ever crosses into C. */
#ifndef TB_SPM_H
#define TB_SPM_H
#include <stddef.h>
#include <stdint.h>
#include "tb_err.h"

typedef struct tb_spm tb_spm;

/* Special ids, looked up by piece name; -1 where the model lacks the piece. */
typedef struct tb_spm_specials {
    int32_t cls, sep, mask, pad, unk, bos, eos;
} tb_spm_specials;

tb_spm *tb_spm_load(const char *model_path, tb_err *err);
void tb_spm_free(tb_spm *spm);
int32_t tb_spm_vocab_size(const tb_spm *spm);
/* Encodes UTF-8 text (len bytes, need not be NUL-terminated) into ids. Writes at most
 * cap ids to out and returns the total count (which may exceed cap: call again with a
 * larger buffer), or -1 with a message. Thread-safe for concurrent calls. */
int64_t tb_spm_encode(const tb_spm *spm, const char *text, size_t len, int32_t *out,
                      size_t cap, tb_err *err);
/* Piece for an id (NULL if out of range); valid as long as spm lives. */
const char *tb_spm_id_to_piece(const tb_spm *spm, int32_t id);
/* Id of a piece, or -1 when absent (not the unk id). */
int32_t tb_spm_piece_to_id(const tb_spm *spm, const char *piece);
/* Non-zero for control, unknown and unused pieces (never chosen by MLM masking). */
int tb_spm_is_special(const tb_spm *spm, int32_t id);
tb_spm_specials tb_spm_get_specials(const tb_spm *spm);

#endif
