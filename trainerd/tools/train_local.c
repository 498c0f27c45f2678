/* tb-train-local: trains the model on the CPU from shards, without the daemons.
 * Data goes through the prefetchd library (tb_stream: read, tokenize, pack, MLM-mask);
 * the step is trainerd/model/train.c. A progress line per step:
 *   step S/N loss L acc A lr LR tok/s X eta T
 * --save DIR writes DIR/model.safetensors and DIR/optimizer.safetensors (with the data
 * cursor in the optimizer file's metadata); --resume DIR continues from them bit for bit. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "manifest.h"
#include "model/train.h"
#include "stream.h"
#include "tb_clock.h"
#include "tb_err.h"
#include "tb_log.h"
#include "tb_spm.h"
#include "layers/loss.h"
#include "backend_pick.h"

static volatile sig_atomic_t stop_flag;

static long long strtoll_10(const char *s, char **end) { return strtoll(s, end, 10); }
static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: tb-train-local [options]\n"
            "  --preset NAME       tiny | mini | frankenstein | ultra (default tiny)\n"
            "  --config FILE       a trainer YAML (model: and training: blocks) instead of a preset\n"
            "  --set KEY=VALUE     override a config key (repeatable), e.g.\n"
            "                      --set training.optimizer.parameters.adamw-lr_other=3e-4\n"
            "  --data PATH         shard file or directory (repeatable; a directory gives its\n"
            "                      *.jsonl.gz, else *.jsonl.zst, else *.jsonl files, sorted)\n"
            "  --tokenizer FILE    SentencePiece model (its size must equal vocab_size)\n"
            "  --steps N           optimizer steps (default 100; also the schedule's length\n"
            "                      unless --config sets scheduler_total_steps)\n"
            "  --seq-len T         sequence length (default: training.max_length)\n"
            "  --batch B           micro-batch size (default: training.batch_size)\n"
            "  --accum N           micro-batches per step (default 1 with a preset,\n"
            "                      training.gradient_accumulation_steps with --config)\n"
            "  --data-threads N    tokenizer threads of the training stream (default: 1 on the\n"
            "                      cpu backend, whose threads train; 4 on a GPU, so the next\n"
            "                      batch's documents are tokenized in parallel; the batches are\n"
            "                      the same for every N)\n"
            "  --interleave G      read G steps' rows at once (G x accum x B consecutive rows of\n"
            "                      the packed stream) and give step k of the G the rows k, k+G,\n"
            "                      k+2G, ...: each step mixes rows from G times further apart,\n"
            "                      so more documents (default 1: consecutive rows); checkpoints\n"
            "                      keep the block's start and the step within it, so --resume\n"
            "                      is exact\n"
            "  --parallel          run a step's micro-batches at once, one model replica each,\n"
            "                      on the CPU backend's threads (TB_CPU_THREADS); each gradient\n"
            "                      starts from zero and they are summed in order, so results do\n"
            "                      not depend on the thread count\n"
            "  --lr-scale X        multiply every group's peak learning rate by X\n"
            "  --seed N            init, dropout and data order seed (default training.seed)\n"
            "  --minutes M         stop after M minutes of training (saving if --save)\n"
            "  --stop-after N      stop after N steps of this run (saving if --save); the\n"
            "                      schedule still spans --steps, so a later --resume continues\n"
            "  --save DIR          save there at the end (and every --save-every steps)\n"
            "  --save-every N      steps between saves (0: only at the end)\n"
            "  --resume DIR        continue from a --save directory (same options)\n"
            "  --csv FILE          append one line per step (step,loss,accuracy,lr,grad_norm,tok_s)\n"
            "  --backend NAME      auto (default: cuda when this build has the CUDA backend and\n"
            "                      a GPU is present, else cpu) | cpu | cuda\n"
            "  --eval-data PATH    held-out shard file or directory (repeatable; keep it out of\n"
            "                      --data): --eval-batches micro-batches are read from it once\n"
            "                      (seed + 1, or --eval-seed) and their masked-LM loss (no\n"
            "                      dropout, summed over every supervised position) is printed\n"
            "                      at the end and every --eval-every steps\n"
            "  --eval-seed S       seed of the held-out batches' order and masks (default: the\n"
            "                      training seed + 1), to compare runs of different seeds on\n"
            "                      the same positions\n"
            "  --eval-batches N    (default 16)\n"
            "  --eval-mask-prob P  masking share of the held-out batches (default: the training\n"
            "                      value, training.mlm_probability)\n"
            "  --eval-every N      (default 0: only at the end)\n"
            "  --peak-tflops X     the GPU's peak (e.g. 798 for an H100's dense bf16): the end\n"
            "                      line then adds MFU (model FLOPs x tok/s / peak; the FLOP\n"
            "                      count is tb_model_train_flops_per_token, model/model.h)\n"
            "  --profile           time the phases of forward and backward (embedding, norms,\n"
            "                      each mixer kind, FFN, head + loss) and print a table at the\n"
            "                      end; the backend waits after each phase, so it runs slower\n"
            "                      (with --parallel: micro-batch 0's model only)\n"
            "  --split-every N     every N steps, also the loss of the step's first micro-batch\n"
            "                      (after the update, no dropout) split by what the input held\n"
            "                      at the supervised positions: [MASK] vs kept/random tokens\n"
            "Exit status: 0 done, 64 usage, 65 bad data, 69 no CUDA device (--backend cuda), 70 internal error,\n"
            "75 gave up after non-finite steps (an emergency save is written to DIR/emergency with --save), 78 config.\n");
}

typedef struct opts {
    const char *preset, *config, *tokenizer, *save, *resume, *csv, *backend;
    const char *data[256];
    int ndata;
    const char *eval[256];
    int neval;
    long eval_batches, eval_every, interleave, stop_after, data_threads; /* -1: by backend */
    long long eval_seed; /* -1: the training seed + 1 */
    double peak_tflops;
    int profile;
    double eval_mask_prob;
    const char *sets[64];
    int nsets;
    long steps, seq_len, batch, accum, save_every, split_every;
    double lr_scale, minutes;
    int parallel;
    long long seed;
} opts;

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Manifest text from --data: files as given, directories expanded. */
static int build_manifest(tb_manifest *m, const opts *o, tb_err *err) {
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    if (!text) return tb_err_set(err, "out of memory");
    text[0] = 0;
    for (int i = 0; i < o->ndata; i++) {
        struct stat st;
        if (stat(o->data[i], &st)) {
            free(text);
            return tb_err_set(err, "--data %s: %s", o->data[i], strerror(errno));
        }
        char *files[4096];
        int nf = 0;
        if (S_ISDIR(st.st_mode)) {
            static const char *const exts[] = {".jsonl.gz", ".jsonl.zst", ".jsonl"};
            for (int e = 0; e < 3 && nf == 0; e++) {
                DIR *d = opendir(o->data[i]);
                if (!d) {
                    free(text);
                    return tb_err_set(err, "--data %s: %s", o->data[i], strerror(errno));
                }
                struct dirent *de;
                while ((de = readdir(d)) && nf < 4096)
                    if (has_suffix(de->d_name, exts[e])) {
                        size_t n = strlen(o->data[i]) + strlen(de->d_name) + 2;
                        files[nf] = malloc(n);
                        snprintf(files[nf++], n, "%s/%s", o->data[i], de->d_name);
                    }
                closedir(d);
            }
            qsort(files, (size_t)nf, sizeof files[0], cmp_str);
            if (nf == 0) {
                free(text);
                return tb_err_set(err, "--data %s: no *.jsonl.gz, *.jsonl.zst or *.jsonl files",
                                  o->data[i]);
            }
        } else {
            files[nf++] = strdup(o->data[i]);
        }
        for (int f = 0; f < nf; f++) {
            size_t need = len + strlen(files[f]) + 2;
            if (need > cap) {
                cap = 2 * need;
                char *t = realloc(text, cap);
                if (!t) {
                    free(text);
                    return tb_err_set(err, "out of memory");
                }
                text = t;
            }
            len += (size_t)snprintf(text + len, cap - len, "%s\n", files[f]);
            free(files[f]);
        }
    }
    int rv = tb_manifest_parse(m, text, len, "--data", NULL, err);
    free(text);
    if (rv == 0) m->generation = 1;
    return rv;
}

static void fmt_eta(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)s;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static void hex_encode(char *out, const uint8_t *b, size_t n) {
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
    out[2 * n] = 0;
}

static int hex_decode(uint8_t *out, size_t n, const char *s) {
    if (strlen(s) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

/* The data position: the cursor before the current block of --interleave steps and how
 * many of its steps were trained on (0: the block is not read yet). */
static int save(const tb_trainer *tr, const char *dir, const tb_stream_cursor *cur, long kstep,
                tb_err *err) {
    uint8_t b[TB_STREAM_CURSOR_BYTES];
    tb_stream_cursor_serialize(b, cur);
    tb_st_meta extra[2];
    memset(extra, 0, sizeof extra);
    snprintf(extra[0].key, sizeof extra[0].key, "data_cursor");
    hex_encode(extra[0].value, b, sizeof b);
    snprintf(extra[1].key, sizeof extra[1].key, "data_block_step");
    snprintf(extra[1].value, sizeof extra[1].value, "%ld", kstep);
    return tb_trainer_save(tr, dir, extra, 2, err);
}

/* A micro-batch's key mask: the mask when some position is padding, else NULL (no mask). */
static const uint8_t *key_mask_or_null(const uint8_t *mask, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!mask[i]) return mask;
    return NULL;
}

/* Held-out batches, read once. */
typedef struct eval_set {
    int32_t *ids, *labels;
    uint8_t *mask;
    int n, B, T;
} eval_set;

static int eval_load(eval_set *ev, const opts *o, const tb_stream_config *train_sc, tb_spm *spm,
                     tb_err *err) {
    memset(ev, 0, sizeof *ev);
    if (o->neval == 0 || o->eval_batches < 1) return 0;
    opts eo = *o;
    eo.ndata = o->neval;
    memcpy(eo.data, o->eval, sizeof o->eval);
    tb_manifest man;
    if (build_manifest(&man, &eo, err)) return tb_err_wrap(err, "--eval-data");
    tb_stream_config sc = *train_sc;
    sc.seed = o->eval_seed >= 0 ? (uint64_t)o->eval_seed : train_sc->seed + 1;
    if (o->eval_mask_prob > 0) sc.mask_prob = o->eval_mask_prob;
    sc.mask_share = 0; /* DESIGN.md's 80/10/10, whatever training uses */
    tb_stream *st = tb_stream_open(&sc, &man, spm, NULL, err);
    if (!st) {
        tb_manifest_free(&man);
        return tb_err_wrap(err, "--eval-data");
    }
    size_t n = (size_t)sc.batch_size * sc.seq_len, k = (size_t)o->eval_batches;
    ev->ids = malloc(n * k * sizeof *ev->ids);
    ev->labels = malloc(n * k * sizeof *ev->labels);
    ev->mask = malloc(n * k);
    ev->B = (int)sc.batch_size;
    ev->T = (int)sc.seq_len;
    tb_stream_batch sb;
    memset(&sb, 0, sizeof sb);
    int rc = 0;
    if (!ev->ids || !ev->labels || !ev->mask) rc = tb_err_set(err, "--eval-data: out of memory");
    for (size_t b = 0; rc == 0 && b < k; b++) {
        int rv = tb_stream_next_batch(st, &sb, err);
        if (rv != 1) {
            rc = rv == 0 ? tb_err_set(err, "--eval-data: ended after %zu of %zu batches", b, k)
                         : tb_err_wrap(err, "--eval-data");
            break;
        }
        memcpy(ev->ids + b * n, sb.ids, n * sizeof *ev->ids);
        memcpy(ev->labels + b * n, sb.labels, n * sizeof *ev->labels);
        memcpy(ev->mask + b * n, sb.attn_mask, n);
        ev->n++;
    }
    tb_stream_batch_free(&sb);
    tb_stream_close(st);
    tb_manifest_free(&man);
    return rc;
}

/* Masked-LM loss over every supervised position of the held-out batches (no dropout),
 * and the same split by what the input holds there: [MASK] (split[0]) or a visible token,
 * kept or random (split[1]). Two forwards per batch, one per kind; the whole is their
 * count-weighted mean. */
static int eval_run(tb_trainer *tr, const eval_set *ev, int32_t mask_id, tb_fwd_result *out,
                    tb_fwd_result split[2], tb_err *err) {
    size_t n = (size_t)ev->B * ev->T;
    double sum[2] = {0, 0};
    int64_t count[2] = {0, 0}, correct[2] = {0, 0};
    int32_t *lab = malloc(n * sizeof *lab);
    if (!lab) return tb_err_set(err, "eval: out of memory");
    for (int b = 0; b < ev->n; b++) {
        const int32_t *ids = ev->ids + (size_t)b * n, *labels = ev->labels + (size_t)b * n;
        for (int kind = 0; kind < 2; kind++) {
            for (size_t i = 0; i < n; i++)
                lab[i] = (ids[i] == mask_id) == (kind == 0) ? labels[i] : TB_LABEL_IGNORE;
            tb_batch mb = {ids, lab, key_mask_or_null(ev->mask + (size_t)b * n, n), ev->B, ev->T};
            tb_dropout_ctx nod = {0};
            tb_fwd_result f;
            if (tb_model_forward(&tr->model, &mb, &nod, &f, err)) {
                free(lab);
                return -1;
            }
            sum[kind] += f.ce * (double)f.count;
            count[kind] += f.count;
            correct[kind] += f.correct;
        }
    }
    free(lab);
    memset(out, 0, sizeof *out);
    for (int kind = 0; kind < 2; kind++) {
        memset(&split[kind], 0, sizeof split[kind]);
        split[kind].count = count[kind];
        split[kind].correct = correct[kind];
        split[kind].ce = count[kind] ? sum[kind] / (double)count[kind] : 0;
        split[kind].accuracy = count[kind] ? (double)correct[kind] / (double)count[kind] : 0;
    }
    out->count = count[0] + count[1];
    out->correct = correct[0] + correct[1];
    out->ce = out->count ? (sum[0] + sum[1]) / (double)out->count : 0;
    out->accuracy = out->count ? (double)out->correct / (double)out->count : 0;
    return 0;
}

static int report_eval(tb_trainer *tr, const eval_set *ev, int32_t mask_id, tb_err *err) {
    tb_fwd_result f, sp[2];
    memset(&f, 0, sizeof f);
    memset(sp, 0, sizeof sp);
    if (eval_run(tr, ev, mask_id, &f, sp, err)) return -1;
    printf("eval step %" PRId64 ": masked-LM loss %.4f acc %.4f over %" PRId64
           " positions (%d held-out batches of %d x %d); [MASK] inputs %.4f acc %.4f (%" PRId64
           "), kept or random %.4f acc %.4f (%" PRId64 ")\n",
           tr->opt.step, f.ce, f.accuracy, f.count, ev->n, ev->B, ev->T, sp[0].ce,
           sp[0].accuracy, sp[0].count, sp[1].ce, sp[1].accuracy, sp[1].count);
    fflush(stdout);
    return 0;
}

/* The phase table of --profile: seconds and share of the run's wall time. */
static void print_profile(const tb_model *m, double wall) {
    double sum = 0;
    printf("profile: phase, forward s, backward s, share of %.1f s\n", wall);
    for (int p = 0; p < TB_PHASE_COUNT; p++) {
        double f = m->prof[0][p], b = m->prof[1][p];
        sum += f + b;
        printf("profile: %-10s %9.3f %9.3f %6.1f%%\n", tb_phase_names[p], f, b,
               wall > 0 ? 100 * (f + b) / wall : 0);
    }
    printf("profile: %-10s %9.3f (optimizer, data, evaluation, logging)\n", "other", wall - sum);
}

static void eval_free(eval_set *ev) {
    free(ev->ids);
    free(ev->labels);
    free(ev->mask);
}

/* The loss of micro-batch b (no dropout) over the supervised positions whose input is
 * [MASK] (want_mask) or anything else (a kept or random token). */
static int split_loss(tb_trainer *tr, const tb_batch *b, int32_t mask_id, int want_mask,
                      int32_t *scratch, tb_fwd_result *res, tb_err *err) {
    size_t n = (size_t)b->B * (size_t)b->T;
    for (size_t i = 0; i < n; i++)
        scratch[i] = (b->ids[i] == mask_id) == want_mask ? b->labels[i] : TB_LABEL_IGNORE;
    tb_batch sb = *b;
    sb.labels = scratch;
    tb_dropout_ctx nod = {0};
    return tb_model_forward(&tr->model, &sb, &nod, res, err);
}

int main(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    o.steps = 100;
    o.seq_len = o.batch = o.accum = -1;
    o.eval_batches = 16;
    o.eval_seed = -1;
    o.interleave = 1;
    o.data_threads = -1;
    o.lr_scale = 1;
    o.seed = -1;
    o.backend = "auto";
    enum { O_PRESET = 1, O_CONFIG, O_SET, O_DATA, O_TOK, O_STEPS, O_T, O_B, O_ACC, O_LR, O_SEED,
           O_MIN, O_SAVE, O_SAVE_EVERY, O_RESUME, O_CSV, O_SPLIT, O_BACKEND, O_PAR, O_EVAL, O_EVALN, O_EVALE, O_EVALP, O_INTER, O_EVALS, O_STOPA, O_PROF, O_PEAK, O_DTHR, O_HELP };
    static const struct option lo[] = {
        {"preset", 1, 0, O_PRESET}, {"config", 1, 0, O_CONFIG},   {"set", 1, 0, O_SET},
        {"data", 1, 0, O_DATA},     {"tokenizer", 1, 0, O_TOK},   {"steps", 1, 0, O_STEPS},
        {"seq-len", 1, 0, O_T},     {"batch", 1, 0, O_B},         {"accum", 1, 0, O_ACC},
        {"lr-scale", 1, 0, O_LR},   {"seed", 1, 0, O_SEED},       {"minutes", 1, 0, O_MIN},
        {"save", 1, 0, O_SAVE},     {"save-every", 1, 0, O_SAVE_EVERY},
        {"resume", 1, 0, O_RESUME}, {"csv", 1, 0, O_CSV},         {"help", 0, 0, O_HELP},
        {"split-every", 1, 0, O_SPLIT}, {"backend", 1, 0, O_BACKEND}, {"parallel", 0, 0, O_PAR},
        {"eval-data", 1, 0, O_EVAL}, {"eval-batches", 1, 0, O_EVALN}, {"eval-every", 1, 0, O_EVALE},
        {"eval-mask-prob", 1, 0, O_EVALP}, {"interleave", 1, 0, O_INTER},
        {"eval-seed", 1, 0, O_EVALS},
        {"stop-after", 1, 0, O_STOPA}, {"profile", 0, 0, O_PROF},
        {"peak-tflops", 1, 0, O_PEAK}, {"data-threads", 1, 0, O_DTHR},
        {0, 0, 0, 0}};
    int c;
    char *end;
#define NUM(dst, conv)                                                        \
    do {                                                                      \
        errno = 0;                                                            \
        dst = conv(optarg, &end);                                             \
        if (errno || end == optarg || *end) {                                 \
            fprintf(stderr, "tb-train-local: --%s: bad number '%s'\n", lo[li].name, optarg); \
            return TB_EX_USAGE;                                               \
        }                                                                     \
    } while (0)
    int li = 0;
    while ((c = getopt_long(argc, argv, "h", lo, &li)) != -1) {
        switch (c) {
        case O_PRESET: o.preset = optarg; break;
        case O_CONFIG: o.config = optarg; break;
        case O_SET:
            if (o.nsets < 64) o.sets[o.nsets++] = optarg;
            break;
        case O_DATA:
            if (o.ndata < 256) o.data[o.ndata++] = optarg;
            break;
        case O_TOK: o.tokenizer = optarg; break;
        case O_STEPS: { long long v; NUM(v, strtoll_10); o.steps = (long)v; break; }
        case O_T: { long long v; NUM(v, strtoll_10); o.seq_len = (long)v; break; }
        case O_B: { long long v; NUM(v, strtoll_10); o.batch = (long)v; break; }
        case O_ACC: { long long v; NUM(v, strtoll_10); o.accum = (long)v; break; }
        case O_SAVE_EVERY: { long long v; NUM(v, strtoll_10); o.save_every = (long)v; break; }
        case O_SEED: NUM(o.seed, strtoll_10); break;
        case O_LR: NUM(o.lr_scale, strtod); break;
        case O_MIN: NUM(o.minutes, strtod); break;
        case O_SAVE: o.save = optarg; break;
        case O_RESUME: o.resume = optarg; break;
        case O_CSV: o.csv = optarg; break;
        case O_BACKEND: o.backend = optarg; break;
        case O_PAR: o.parallel = 1; break;
        case O_EVAL:
            if (o.neval < 256) o.eval[o.neval++] = optarg;
            break;
        case O_EVALN: { long long v; NUM(v, strtoll_10); o.eval_batches = (long)v; break; }
        case O_EVALE: { long long v; NUM(v, strtoll_10); o.eval_every = (long)v; break; }
        case O_EVALP: NUM(o.eval_mask_prob, strtod); break;
        case O_INTER: { long long v; NUM(v, strtoll_10); o.interleave = (long)v; break; }
        case O_DTHR: { long long v; NUM(v, strtoll_10); o.data_threads = (long)v; break; }
        case O_EVALS: NUM(o.eval_seed, strtoll_10); break;
        case O_STOPA: { long long v; NUM(v, strtoll_10); o.stop_after = (long)v; break; }
        case O_PROF: o.profile = 1; break;
        case O_PEAK: NUM(o.peak_tflops, strtod); break;
        case O_SPLIT: { long long v; NUM(v, strtoll_10); o.split_every = (long)v; break; }
        case O_HELP:
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return TB_EX_USAGE;
        }
    }
    if (o.data_threads != -1 && (o.data_threads < 1 || o.data_threads > 256)) {
        fprintf(stderr, "tb-train-local: --data-threads: %ld is outside [1, 256]\n", o.data_threads);
        return TB_EX_USAGE;
    }
    if (o.interleave < 1 || o.interleave > 4096) {
        fprintf(stderr, "tb-train-local: --interleave: %ld is outside [1, 4096]\n", o.interleave);
        return TB_EX_USAGE;
    }
    if (optind < argc || o.ndata == 0 || !o.tokenizer || o.steps < 1 || (o.preset && o.config)) {
        fprintf(stderr, "tb-train-local: %s\n",
                optind < argc ? "unexpected argument" :
                o.ndata == 0 ? "--data is required" :
                !o.tokenizer ? "--tokenizer is required" :
                o.steps < 1 ? "--steps must be >= 1" : "--preset and --config exclude each other");
        usage(stderr);
        return TB_EX_USAGE;
    }
    tb_log_init("tb-train-local", TB_LOG_INFO);
    tb_err err = {{0}};
    tb_run_config rc;
    int from_config = o.config != NULL;
    if (from_config ? tb_run_config_load(&rc, o.config, &err)
                    : tb_run_config_preset(&rc, o.preset ? o.preset : "tiny", &err)) {
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        return TB_EX_CONFIG;
    }
    if (!from_config) {
        rc.training.scheduler_total_steps = o.steps;
        rc.training.gradient_accumulation_steps = 1;
    }
    for (int i = 0; i < o.nsets; i++)
        if (tb_cfg_set(&rc, tb_run_config_schema(), o.sets[i], NULL, &err) ||
            tb_run_config_finish(&rc, &err)) {
            fprintf(stderr, "tb-train-local: --set %s: %s\n", o.sets[i], err.msg);
            return TB_EX_CONFIG;
        }
    if (o.seq_len > 0) rc.training.max_length = o.seq_len;
    if (o.batch > 0) rc.training.batch_size = o.batch;
    if (o.accum > 0) rc.training.gradient_accumulation_steps = o.accum;
    if (o.seed >= 0) rc.training.seed = o.seed;
    for (int g = 0; g < TB_GROUP_COUNT; g++) rc.training.group[g].lr *= o.lr_scale;
    int B = (int)rc.training.batch_size, T = (int)rc.training.max_length;
    int accum = (int)rc.training.gradient_accumulation_steps;

    tb_spm *spm = tb_spm_load(o.tokenizer, &err);
    if (!spm) {
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        return TB_EX_NOINPUT;
    }
    if (tb_spm_vocab_size(spm) != rc.model.vocab_size) {
        fprintf(stderr, "tb-train-local: %s: vocabulary %d, but model.vocab_size is %lld\n",
                o.tokenizer, tb_spm_vocab_size(spm), (long long)rc.model.vocab_size);
        tb_spm_free(spm);
        return TB_EX_CONFIG;
    }
    tb_manifest man;
    if (build_manifest(&man, &o, &err)) {
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        tb_spm_free(spm);
        return TB_EX_NOINPUT;
    }
    int no_device;
    const tb_backend *be = tb_backend_pick(o.backend, &no_device, &err);
    if (!be) {
        fprintf(stderr, "tb-train-local: --backend: %s\n", err.msg);
        return no_device ? 69 /* EX_UNAVAILABLE */ : TB_EX_USAGE;
    }
    tb_trainer tr;
    if (tb_trainer_create(&tr, &rc, be, B, T, &err)) {
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        return TB_EX_SOFTWARE;
    }
    if (o.parallel && tb_trainer_set_parallel(&tr, accum, &err)) {
        fprintf(stderr, "tb-train-local: --parallel: %s\n", err.msg);
        return TB_EX_USAGE;
    }
    if (o.profile) tb_model_profile(&tr.model, 1);
    tb_stream_cursor cur, *at = NULL;
    long kstep = 0; /* steps of the current --interleave block already trained on */
    if (o.resume) {
        tb_st_meta meta[TB_TRAINER_META_MAX];
        int n = 0;
        const char *hex;
        uint8_t b[TB_STREAM_CURSOR_BYTES];
        if (tb_trainer_load(&tr, o.resume, meta, TB_TRAINER_META_MAX, &n, &err) ||
            !(hex = tb_st_meta_get(meta, n, "data_cursor")) || hex_decode(b, sizeof b, hex) ||
            tb_stream_cursor_deserialize(&cur, b, sizeof b, &err)) {
            fprintf(stderr, "tb-train-local: --resume %s: %s\n", o.resume,
                    err.msg[0] ? err.msg : "no valid data_cursor in optimizer.safetensors");
            return TB_EX_DATAERR;
        }
        const char *ks = tb_st_meta_get(meta, n, "data_block_step");
        kstep = ks ? atol(ks) : 0;
        if (kstep < 0 || kstep >= o.interleave) {
            fprintf(stderr, "tb-train-local: --resume %s: data_block_step %ld does not fit "
                    "--interleave %ld (resume with the options of the saved run)\n",
                    o.resume, kstep, o.interleave);
            return TB_EX_USAGE;
        }
        at = &cur;
    }
    tb_stream_config sc;
    tb_stream_config_default(&sc);
    sc.seq_len = (uint32_t)T;
    sc.batch_size = (uint32_t)B;
    sc.mask_prob = rc.training.mlm_probability;
    sc.mask_share = rc.training.mlm_mask_share;
    sc.seed = (uint64_t)rc.training.seed;
    sc.threads = 1;
    eval_set ev;
    if (eval_load(&ev, &o, &sc, spm, &err)) {
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        return TB_EX_NOINPUT;
    }
    /* The training stream hands out whole blocks: --interleave steps of accum x B rows. Its
     * tokenizer threads (the same batches for any count): see --data-threads. */
    const long G = o.interleave;
    sc.batch_size = (uint32_t)((long)B * accum * G);
    sc.threads = (uint32_t)(o.data_threads > 0 ? o.data_threads : strcmp(be->name, "cpu") ? 4 : 1);
    tb_stream *st = tb_stream_open(&sc, &man, spm, at, &err);
    if (!st) {
        eval_free(&ev);
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        return TB_EX_NOINPUT;
    }
    size_t n = (size_t)B * T;
    int32_t *ids = malloc(n * (size_t)accum * sizeof *ids);
    int32_t *labels = malloc(n * (size_t)accum * sizeof *labels);
    uint8_t *mask = malloc(n * (size_t)accum);
    tb_batch *mb = calloc((size_t)accum, sizeof *mb);
    int32_t *split_scratch = malloc(n * sizeof *split_scratch);
    tb_spm_specials specials = tb_spm_get_specials(spm);
    if (!ids || !labels || !mask || !mb || !split_scratch) {
        fprintf(stderr, "tb-train-local: out of memory\n");
        return TB_EX_SOFTWARE;
    }
    FILE *csv = NULL;
    if (o.csv && !(csv = fopen(o.csv, "a"))) {
        fprintf(stderr, "tb-train-local: %s: %s\n", o.csv, strerror(errno));
        return TB_EX_USAGE;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("tb-train-local: %s, %" PRId64 " parameters, B %d x T %d x accum %d%s, %d steps, "
           "arena %.1f MiB, seed %lld, backend %s, precision %s\n",
           rc.model_class, (int64_t)tr.model.p.total, B, T, accum,
           tr.nrep ? " (parallel)" : "", (int)o.steps,
           (double)tb_model_arena_bytes(&tr.model) / 1048576.0, (long long)rc.training.seed,
           be->name, tb_precision_name(tr.precision));
    printf("tb-train-local: arena MiB by part:");
    for (int part = 0; part < TB_ARENA_PARTS; part++) {
        size_t pb = tb_model_arena_part_bytes(&tr.model, part);
        if (pb) printf(" %s %.1f", tb_arena_part_names[part], (double)pb / 1048576.0);
    }
    printf("\n");
    fflush(stdout);
    tb_stream_batch sb;
    memset(&sb, 0, sizeof sb);
    int status = 0;
    double t0 = tb_clock_mono_s(), tlast = t0;
    int64_t first = tr.opt.step, tokens = 0;
    tb_stream_cursor_get(st, &cur);
    int have_block = 0;
    double t_data = 0, t_step = 0; /* host seconds in the data stream and in the steps */
    while (tr.opt.step < o.steps && !stop_flag) {
        if (!have_block) { /* cur: the stream's position before this block */
            double td = tb_clock_mono_s();
            int rv = tb_stream_next_batch(st, &sb, &err);
            t_data += tb_clock_mono_s() - td;
            if (rv != 1) {
                fprintf(stderr, "tb-train-local: data: %s\n", rv == 0 ? "stream ended" : err.msg);
                status = TB_EX_DATAERR;
                goto done;
            }
            have_block = 1;
        }
        /* step kstep of the block: micro-batch a, row b <- block row (a·B + b)·G + kstep */
        for (int a = 0; a < accum; a++) {
            for (int b = 0; b < B; b++) {
                size_t src = ((size_t)(a * B + b) * (size_t)G + (size_t)kstep) * (size_t)T;
                size_t dst = (size_t)a * n + (size_t)b * (size_t)T;
                memcpy(ids + dst, sb.ids + src, (size_t)T * sizeof *ids);
                memcpy(labels + dst, sb.labels + src, (size_t)T * sizeof *labels);
                memcpy(mask + dst, sb.attn_mask + src, (size_t)T);
            }
            mb[a] = (tb_batch){ids + (size_t)a * n, labels + (size_t)a * n,
                               key_mask_or_null(mask + (size_t)a * n, n), B, T};
        }
        tb_step_result r;
        double ts = tb_clock_mono_s();
        int step_rc = tb_trainer_step(&tr, mb, accum, &r, &err);
        t_step += tb_clock_mono_s() - ts;
        if (step_rc) {
            fprintf(stderr, "tb-train-local: %s\n", err.msg);
            status = TB_EX_DATAERR;
            goto done;
        }
        if (++kstep == G) { /* block used up: the position is after it */
            kstep = 0;
            have_block = 0;
            tb_stream_cursor_get(st, &cur);
        }
        double now = tb_clock_mono_s(), dt = now - tlast;
        tlast = now;
        tokens += r.tokens;
        double tps = (double)r.tokens / (dt > 0 ? dt : 1e-9);
        double avg = (now - t0) / (double)(tr.opt.step - first > 0 ? tr.opt.step - first : 1);
        char eta[32];
        fmt_eta(eta, sizeof eta, avg * (double)(o.steps - tr.opt.step));
        char note[96] = "";
        if (r.opt.overflow)
            snprintf(note, sizeof note, " (fp16 overflow: skipped, loss scale now %g)",
                     tr.opt.loss_scale);
        else if (r.status != TB_OPTIM_APPLIED)
            snprintf(note, sizeof note, " (non-finite: skipped)");
        printf("step %" PRId64 "/%ld loss %.4f acc %.4f lr %.3e gnorm %.3f tok/s %.0f eta %s%s\n",
               tr.opt.step, o.steps, r.loss, r.accuracy, r.opt.lr, r.opt.grad_norm, tps, eta,
               note);
        fflush(stdout);
        if (csv) {
            fprintf(csv, "%" PRId64 ",%.6f,%.6f,%.6e,%.6f,%.1f,%.1f\n", tr.opt.step, r.loss,
                    r.accuracy, r.opt.lr, r.opt.grad_norm, tps, now - t0);
            fflush(csv);
        }
        if (o.split_every > 0 && tr.opt.step % o.split_every == 0) {
            tb_fwd_result fm, fo;
            if (split_loss(&tr, &mb[0], specials.mask, 1, split_scratch, &fm, &err) ||
                split_loss(&tr, &mb[0], specials.mask, 0, split_scratch, &fo, &err)) {
                fprintf(stderr, "tb-train-local: split: %s\n", err.msg);
                status = TB_EX_SOFTWARE;
                goto done;
            }
            printf("split %" PRId64 ": [MASK] positions CE %.4f acc %.4f (%" PRId64
                   "), kept/random CE %.4f acc %.4f (%" PRId64 ")\n",
                   tr.opt.step, fm.ce, fm.accuracy, fm.count, fo.ce, fo.accuracy, fo.count);
            fflush(stdout);
        }
        if (ev.n && o.eval_every > 0 && tr.opt.step % o.eval_every == 0 &&
            report_eval(&tr, &ev, specials.mask, &err)) {
            fprintf(stderr, "tb-train-local: eval: %s\n", err.msg);
            status = TB_EX_SOFTWARE;
            goto done;
        }
        if (r.status == TB_OPTIM_GAVE_UP) {
            fprintf(stderr, "tb-train-local: %d consecutive non-finite steps: giving up\n",
                    tr.opt.nan_retries);
            if (o.save) {
                char dir[4096];
                snprintf(dir, sizeof dir, "%s/emergency", o.save);
                mkdir(o.save, 0755);
                if (save(&tr, dir, &cur, kstep, &err)) fprintf(stderr, "tb-train-local: %s\n", err.msg);
            }
            status = 75;
            goto done;
        }
        if (o.save && o.save_every > 0 && tr.opt.step % o.save_every == 0 &&
            save(&tr, o.save, &cur, kstep, &err)) {
            fprintf(stderr, "tb-train-local: %s\n", err.msg);
            status = TB_EX_IOERR;
            goto done;
        }
        if (o.minutes > 0 && now - t0 > o.minutes * 60) break;
        if (o.stop_after > 0 && tr.opt.step - first >= o.stop_after) break;
    }
    if (o.save && save(&tr, o.save, &cur, kstep, &err)) {
        fprintf(stderr, "tb-train-local: %s\n", err.msg);
        status = TB_EX_IOERR;
    }
    if (ev.n && !(o.eval_every > 0 && tr.opt.step % o.eval_every == 0) &&
        report_eval(&tr, &ev, specials.mask, &err)) {
        fprintf(stderr, "tb-train-local: eval: %s\n", err.msg);
        status = TB_EX_SOFTWARE;
    }
    if (o.profile) print_profile(&tr.model, tb_clock_mono_s() - t0);
    double wall = tb_clock_mono_s() - t0, tps = (double)tokens / (wall + 1e-9);
    double fpt = tb_model_train_flops_per_token(&tr.model.cfg, T);
    printf("tb-train-local: %" PRId64 " steps, %" PRId64 " tokens in %.1f s (%.0f tok/s)%s\n",
           tr.opt.step - first, tokens, wall, tps, stop_flag ? ", interrupted" : "");
    if (tr.opt.step > first)
        printf("tb-train-local: host time per step: %.2f ms waiting for data, %.2f ms in the step, "
               "%.2f ms between steps (logging, copies)\n",
               1e3 * t_data / (double)(tr.opt.step - first), 1e3 * t_step / (double)(tr.opt.step - first),
               1e3 * (wall - t_data - t_step) / (double)(tr.opt.step - first));
    printf("tb-train-local: model FLOPs %.4g GFLOP per token (training, T %d), %.2f TFLOP/s",
           fpt / 1e9, T, fpt * tps / 1e12);
    if (o.peak_tflops > 0) printf(", MFU %.2f%% of %g TFLOP/s", 100 * fpt * tps / (o.peak_tflops * 1e12), o.peak_tflops);
    printf("\n");
#ifdef TB_HAVE_CUDA_BACKEND
    if (!strcmp(be->name, "cuda")) {
        int ent, cap;
        long hits, misses, evict, bucket, tuned, changed;
        tb_cuda_gemm_cache_stats(&ent, &hits, &misses);
        tb_cuda_gemm_cache_more(&cap, &evict, &bucket);
        tb_cuda_gemm_tune_stats(&tuned, &changed);
        printf("tb-train-local: cuBLASLt descriptor cache: %d of %d slots, %ld hits, %ld misses "
               "(%ld calls ran their exact shape's algorithm), %ld evictions; %ld algorithms chosen by "
               "timing, %ld of them not cuBLASLt's first choice\n", ent, cap, hits, misses, bucket, evict,
               tuned, changed);
    }
#endif
done:
    eval_free(&ev);
    tb_stream_batch_free(&sb);
    tb_stream_close(st);
    tb_manifest_free(&man);
    tb_trainer_free(&tr);
    tb_spm_free(spm);
    free(ids);
    free(labels);
    free(mask);
    free(split_scratch);
    free(mb);
    if (csv) fclose(csv);
    return status;
}
