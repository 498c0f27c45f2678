/* MLM masking exactly as shared/DESIGN.md ("MLM masking") defines it.
 *
 * For one sample of T ids: the candidate positions are those whose id is not special
 * (tb_spm_is_special: control, unknown and unused pieces, which include [CLS] [SEP]
 * [MASK] [PAD] <pad> <s> </s> <unk>) and not the pad id. With n candidates,
 * k = max(1, floor(p*n)) of them (0 when n = 0) are chosen without replacement by a
 * partial Fisher-Yates shuffle of the candidate list. Each chosen position then draws
 * u = below(10) from the same RNG: u < 8 -> [MASK], u == 8 -> a non-special id drawn
 * uniformly from all non-special ids of the vocabulary, u == 9 -> unchanged. The split is
 * per-position draws (not exact counts), so it holds in expectation: 80/10/10.
 * tb_mask_set_share changes the [MASK] share to M tenths (M even): u < M -> [MASK], the
 * next (10 - M) / 2 values -> a random id, the rest unchanged (M = 8 is the above; the
 * random and unchanged shares stay equal, so a visible token at a chosen position is the
 * original one with the same odds as under 80/10/10).
 * labels = original id at the k chosen positions, -100 elsewhere.
 *
 * RNG: tb_rng keyed (seed, TB_RNG_MASK) with ids (epoch, sample lo32, sample hi32), where
 * sample is the global sample number and epoch the epoch of the sample's first document
 * token. Draw order: the k Fisher-Yates draws, then for each chosen position in choice
 * order its u draw and, when u == 8, its replacement draw. So any sample's mask is a
 * function of (seed, epoch, sample number, its ids) alone. */
#ifndef TB_PF_MASK_H
#define TB_PF_MASK_H
#include <stddef.h>
#include <stdint.h>

#include "tb_err.h"
#include "tb_spm.h"

#define TB_MASK_IGNORE (-100)

typedef struct tb_mask {
    double p;            /* masking probability, (0, 1) */
    int mask_tenths;     /* [MASK] share of the chosen positions in tenths (8) */
    int32_t mask_id;     /* [MASK] */
    int32_t pad_id;      /* [PAD] */
    int32_t vocab;       /* V */
    uint8_t *special;    // (V) 1 = never chosen, never a replacement
    int32_t *normal;     // (n_normal) the non-special ids, ascending
    size_t n_normal;
} tb_mask;

/* Builds the tables from the tokenizer; fails when [MASK] or [PAD] is missing or p is
 * outside (0, 1). */
int tb_mask_init(tb_mask *m, const tb_spm *spm, double p, tb_err *err);
void tb_mask_free(tb_mask *m);

/* Sets the [MASK] share of the chosen positions: one of 0.2, 0.4, 0.6, 0.8 (default), 1;
 * anything else fails with a message naming the value. */
int tb_mask_set_share(tb_mask *m, double share, tb_err *err);
/* share in tenths when it is one of those values, else -1 (for config checks). */
int tb_mask_share_tenths(double share);

/* Number chosen for n candidates: max(1, floor(p*n)), 0 for n = 0. floor is taken on
 * p*n + 1e-9 so that e.g. 0.15*20 counts as 3 despite binary rounding. */
size_t tb_mask_count(double p, size_t n);

/* Masks one sample in place: ids are the unmasked layout on entry and the model input
 * on return; labels are written. scratch holds T uint32. Returns k. */
size_t tb_mask_apply(int32_t *ids,    // (T) in: layout, out: masked input
                     int32_t *labels, // (T) out
                     uint32_t *scratch, // (T)
                     size_t T, const tb_mask *m, uint64_t seed, uint64_t epoch,
                     uint64_t sample);

#endif
