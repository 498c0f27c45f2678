/* tb-trainerd: the training daemon (docs/TRAINERD.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon.h"
#include "tb_err.h"
#include "tb_log.h"
#include "checkpoint.h"
#include "state.h"
#include "td_config.h"
#include "trainer.h"
#include "validation.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tb-trainerd [-c CONFIG] [--set KEY=VALUE]... [--log-level L]\n"
            "       tb-trainerd --print-example-config\n"
            "       tb-trainerd --eval CKPT_DIR --data MANIFEST [--tokenizer SPM] [--batches N]\n"
            "                   [--json] [--set validation.KEY=VALUE]...\n"
            "  -c, --config FILE     YAML config (default /etc/tb/trainerd.yaml if it exists)\n"
            "  -s, --set KEY=VALUE   override a key (e.g. --set daemon.max_steps=50)\n"
            "  --print-example-config  write the fully commented example config and exit\n"
            "exit status: 0 done or stopped, 3 non-finite state (emergency checkpoint written),\n"
            "64 usage, 70 internal error, 74 I/O error, 78 configuration error\n");
}

/* One-shot evaluation of a checkpoint (its config: the model keys it was trained with;
 * --set overrides validation.* keys). Prints loss, accuracy and token count. */
static int eval_main(const char *ckpt, const char *data, const char *tokenizer, long batches,
                     const char *const *over, int nover, int json) {
    tb_err err;
    td_ckpt_info ci;
    if (td_ckpt_verify(ckpt, &ci, &err)) {
        fprintf(stderr, "tb-trainerd: --eval %s: %s\n", ckpt, err.msg);
        return TB_EX_IOERR;
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/state.msgpack", ckpt);
    td_state st;
    if (td_state_read(p, &st, &err)) {
        fprintf(stderr, "tb-trainerd: --eval: %s\n", err.msg);
        return TB_EX_IOERR;
    }
    static td_config cfg;
    int rc = td_config_load_text(&cfg, p, st.config_yaml ? st.config_yaml : "{}\n", over, nover,
                                 &err);
    td_state_free(&st);
    if (rc) {
        fprintf(stderr, "tb-trainerd: --eval: %s\n", err.msg);
        return TB_EX_CONFIG;
    }
    const tb_train_config *tc = &cfg.run.training;
    td_val_opts vo = {.manifest = data, .tokenizer = tokenizer ? tokenizer : cfg.val_tokenizer,
                      .batches = batches > 0 ? batches : cfg.val_batches, .seed = cfg.val_seed,
                      .batch_size = cfg.val_batch_size ? cfg.val_batch_size : tc->batch_size,
                      .seq_len = cfg.val_seq_len ? cfg.val_seq_len : tc->max_length,
                      .mask_prob = cfg.val_mask_prob, .packing = cfg.val_packing,
                      .vocab = cfg.run.model.vocab_size};
    if (vo.batch_size > tc->batch_size || vo.seq_len > tc->max_length) {
        fprintf(stderr, "tb-trainerd: --eval: batch %lld x %lld exceeds the model's %lld x %lld\n",
                (long long)vo.batch_size, (long long)vo.seq_len, (long long)tc->batch_size,
                (long long)tc->max_length);
        return TB_EX_CONFIG;
    }
    td_trainer *tr = td_trainer_create(&cfg, &err);
    if (!tr) {
        fprintf(stderr, "tb-trainerd: --eval: model: %s\n", err.msg);
        return TB_EX_CONFIG;
    }
    td_valset v;
    td_val_result r;
    rc = 0;
    if (td_trainer_read(tr, ckpt, &err)) {
        fprintf(stderr, "tb-trainerd: --eval %s: %s\n", ckpt, err.msg);
        rc = TB_EX_IOERR;
    } else if (td_valset_load(&v, &vo, &err)) {
        fprintf(stderr, "tb-trainerd: --eval: %s\n", err.msg);
        rc = TB_EX_DATAERR;
    } else {
        if (td_valset_eval(tr, &v, &r, &err)) {
            fprintf(stderr, "tb-trainerd: --eval: %s\n", err.msg);
            rc = TB_EX_SOFTWARE;
        } else if (json) {
            printf("{\"checkpoint\": \"%s\", \"step\": %lld, \"loss\": %.9g, \"accuracy\": %.9g, "
                   "\"tokens\": %lld, \"batches\": %lld}\n",
                   ci.name, (long long)ci.step, r.loss, r.accuracy, (long long)r.tokens,
                   (long long)r.batches);
        } else {
            printf("checkpoint %s step %lld\nloss %.6f\naccuracy %.6f\ntokens %lld\nbatches %lld\n",
                   ci.name, (long long)ci.step, r.loss, r.accuracy, (long long)r.tokens,
                   (long long)r.batches);
        }
        td_valset_free(&v);
    }
    td_trainer_free(tr);
    return rc;
}

int main(int argc, char **argv) {
    const char *config = NULL;
    /* room for every --set value, --log-level's override and a NULL */
    const char **over = calloc((size_t)argc + 2, sizeof *over);
    if (!over) return TB_EX_SOFTWARE;
    int nover = 0, example = 0, json = 0;
    const char *log_level = NULL, *eval_ckpt = NULL, *eval_data = NULL, *eval_tok = NULL;
    long eval_batches = 0;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"set", required_argument, 0, 's'},
                                         {"log-level", required_argument, 0, 'l'},
                                         {"print-example-config", no_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},
                                         {"eval", required_argument, 0, 'V'},
                                         {"data", required_argument, 0, 'D'},
                                         {"tokenizer", required_argument, 0, 'T'},
                                         {"batches", required_argument, 0, 'B'},
                                         {"json", no_argument, 0, 'J'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case 's': over[nover++] = optarg; break;
        case 'l': log_level = optarg; break;
        case 'E': example = 1; break;
        case 'h': usage(stdout); free(over); return 0;
        case 'V': eval_ckpt = optarg; break;
        case 'D': eval_data = optarg; break;
        case 'T': eval_tok = optarg; break;
        case 'B': {
            char *end;
            eval_batches = strtol(optarg, &end, 10);
            if (*end || eval_batches < 1) {
                fprintf(stderr, "tb-trainerd: --batches %s: expected a positive integer\n", optarg);
                free(over);
                return TB_EX_USAGE;
            }
            break;
        }
        case 'J': json = 1; break;
        default: usage(stderr); free(over); return TB_EX_USAGE;
        }
    }
    if (optind != argc) {
        usage(stderr);
        free(over);
        return TB_EX_USAGE;
    }
    if (eval_ckpt || eval_data) {
        if (!eval_ckpt || !eval_data) {
            fprintf(stderr, "tb-trainerd: --eval needs both CKPT_DIR and --data MANIFEST\n");
            free(over);
            return TB_EX_USAGE;
        }
        tb_log_init("tb-trainerd", TB_LOG_WARN);
        int rc = eval_main(eval_ckpt, eval_data, eval_tok, eval_batches, over, nover, json);
        free(over);
        return rc;
    }
    if (example) {
        free(over);
        return tb_cfg_write_example(stdout, td_config_schema()) ? TB_EX_SOFTWARE : 0;
    }
    if (!config) {
        FILE *f = fopen("/etc/tb/trainerd.yaml", "r");
        if (f) {
            fclose(f);
            config = "/etc/tb/trainerd.yaml";
        }
    }
    static td_config cfg;
    tb_err err;
    tb_log_init("tb-trainerd", TB_LOG_INFO);
    tb_log_level lvl;
    static const char *const lvl_names[] = {"error", "warn", "notice", "info", "debug"};
    /* --log-level is the override daemon.log_level=L, so it also wins over a reload. */
    char lvl_over[64];
    if (log_level) {
        if (tb_log_level_parse(log_level, &lvl)) {
            fprintf(stderr, "tb-trainerd: --log-level: unknown level\n");
            free(over);
            return TB_EX_USAGE;
        }
        snprintf(lvl_over, sizeof lvl_over, "daemon.log_level=%s", lvl_names[lvl - TB_LOG_ERROR]);
        over[nover++] = lvl_over;
    }
    if (td_config_load(&cfg, config, over, nover, &err)) {
        fprintf(stderr, "tb-trainerd: %s\n", err.msg);
        free(over);
        return TB_EX_CONFIG;
    }
    if (tb_log_level_parse(lvl_names[cfg.log_level], &lvl)) {
        free(over);
        return TB_EX_SOFTWARE;
    }
    tb_log_init("tb-trainerd", lvl);
    char *yaml = NULL;
    size_t ylen = 0;
    FILE *ms = open_memstream(&yaml, &ylen);
    if (ms) {
        tb_cfg_write_values(ms, &cfg, td_config_schema());
        fclose(ms);
    }
    td_config_source src = {config, over, nover};
    int rc = td_daemon_run(&cfg, yaml, &src);
    free(yaml);
    free(over);
    return rc;
}
