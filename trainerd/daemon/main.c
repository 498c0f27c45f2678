/* tb-trainerd: the training daemon (docs/TRAINERD.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon.h"
#include "tb_err.h"
#include "tb_log.h"
#include "td_config.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: tb-trainerd [-c CONFIG] [--set KEY=VALUE]... [--log-level L]\n"
            "       tb-trainerd --print-example-config\n"
            "  -c, --config FILE     YAML config (default /etc/tb/trainerd.yaml if it exists)\n"
            "  -s, --set KEY=VALUE   override a key (e.g. --set daemon.max_steps=50)\n"
            "  --print-example-config  write the fully commented example config and exit\n"
            "exit status: 0 done or stopped, 3 non-finite state (emergency checkpoint written),\n"
            "64 usage, 70 internal error, 74 I/O error, 78 configuration error\n");
}

int main(int argc, char **argv) {
    const char *config = NULL;
    const char **over = calloc((size_t)argc + 1, sizeof *over);
    int nover = 0, example = 0;
    const char *log_level = NULL;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"set", required_argument, 0, 's'},
                                         {"log-level", required_argument, 0, 'l'},
                                         {"print-example-config", no_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': config = optarg; break;
        case 's': over[nover++] = optarg; break;
        case 'l': log_level = optarg; break;
        case 'E': example = 1; break;
        case 'h': usage(stdout); free(over); return 0;
        default: usage(stderr); free(over); return TB_EX_USAGE;
        }
    }
    if (optind != argc) {
        usage(stderr);
        free(over);
        return TB_EX_USAGE;
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
    if (td_config_load(&cfg, config, over, nover, &err)) {
        fprintf(stderr, "tb-trainerd: %s\n", err.msg);
        free(over);
        return TB_EX_CONFIG;
    }
    free(over);
    tb_log_level lvl;
    static const char *const lvl_names[] = {"error", "warn", "notice", "info", "debug"};
    if (tb_log_level_parse(log_level ? log_level : lvl_names[cfg.log_level], &lvl)) {
        fprintf(stderr, "tb-trainerd: --log-level: unknown level\n");
        return TB_EX_USAGE;
    }
    tb_log_init("tb-trainerd", lvl);
    char *yaml = NULL;
    size_t ylen = 0;
    FILE *ms = open_memstream(&yaml, &ylen);
    if (ms) {
        tb_cfg_write_values(ms, &cfg, td_config_schema());
        fclose(ms);
    }
    int rc = td_daemon_run(&cfg, yaml);
    free(yaml);
    return rc;
}
