/* Loads a config file against the demo schema (config_demo.c), then applies KEY=VALUE
 * overrides; prints the values on stdout and exits 0, or prints the error on stderr and
 * exits 78 (TB_EX_CONFIG). `--example` prints the example file instead.
 * Usage: tb_config_check FILE [KEY=VALUE...] | tb_config_check --example */
#include <stdio.h>
#include <string.h>
#include "config_demo.h"
#include "tb_err.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [KEY=VALUE...] | --example\n", argv[0]);
        return TB_EX_USAGE;
    }
    if (strcmp(argv[1], "--example") == 0)
        return tb_cfg_write_example(stdout, &demo_schema) == 0 ? TB_EX_OK : TB_EX_SOFTWARE;
    demo_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    tb_err err;
    if (tb_cfg_load_file(&cfg, &demo_schema, argv[1], NULL, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return TB_EX_CONFIG;
    }
    for (int i = 2; i < argc; i++) {
        if (tb_cfg_set(&cfg, &demo_schema, argv[i], NULL, &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return TB_EX_CONFIG;
        }
    }
    return tb_cfg_write_values(stdout, &cfg, &demo_schema) == 0 ? TB_EX_OK : TB_EX_IOERR;
}
