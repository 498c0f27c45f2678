/* tb-prefetchd: see docs/PREFETCHD.md. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"
#include "tb_endpoint.h"
#include "tb_err.h"
#include "tb_log.h"

static void usage(FILE *f) {
    fputs("usage: tb-prefetchd [-c FILE] [-s KEY=VALUE]... [--check-config]\n"
          "       tb-prefetchd --print-example-config\n"
          "       tb-prefetchd --gen-curve-keys FILE\n"
          "  -c, --config FILE   YAML configuration (default: built-in defaults)\n"
          "  -s, --set KEY=VALUE override one key (dotted path), after the file\n"
          "  --check-config      load and validate the configuration, then exit\n"
          "  --print-example-config  write a commented example configuration to stdout\n"
          "  --gen-curve-keys FILE   write a CURVE key pair to FILE and FILE.pub\n",
          f);
}

int main(int argc, char **argv) {
    const char *config = NULL;
    char *sets[256];
    int nsets = 0, check = 0;
    const char *worker = NULL;
    enum { OPT_CHECK = 256, OPT_EXAMPLE, OPT_GENKEYS, OPT_WORKER };
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'},
        {"set", required_argument, 0, 's'},
        {"check-config", no_argument, 0, OPT_CHECK},
        {"print-example-config", no_argument, 0, OPT_EXAMPLE},
        {"gen-curve-keys", required_argument, 0, OPT_GENKEYS},
        {"worker", required_argument, 0, OPT_WORKER},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    tb_err err;
    while ((c = getopt_long(argc, argv, "c:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 's':
            if (nsets == 256) {
                fputs("tb-prefetchd: more than 256 --set options\n", stderr);
                return TB_EX_USAGE;
            }
            sets[nsets++] = optarg;
            break;
        case OPT_CHECK: check = 1; break;
        case OPT_WORKER: worker = optarg; break;
        case OPT_EXAMPLE: return tb_cfg_write_example(stdout, &pfd_config_schema) == 0 ? 0 : 70;
        case OPT_GENKEYS:
            if (tb_curve_generate(optarg, &err) < 0) {
                fprintf(stderr, "tb-prefetchd: %s\n", err.msg);
                return TB_EX_IOERR;
            }
            return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return TB_EX_USAGE;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return TB_EX_USAGE;
    }
    pfd_config cfg;
    if (pfd_config_load(&cfg, config, sets, nsets, &err) < 0) {
        fprintf(stderr, "tb-prefetchd: %s\n", err.msg);
        return TB_EX_CONFIG;
    }
    if (worker) return pfd_worker_exec_main(&cfg, worker);
    if (check) {
        tb_cfg_write_values(stdout, &cfg, &pfd_config_schema);
        return 0;
    }
    return pfd_daemon_run(&cfg);
}
