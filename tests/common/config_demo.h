/* A demo configuration schema with every field type and nested sections, shared by the
 * config tests and the tb_config_check binary. */
#ifndef TB_CONFIG_DEMO_H
#define TB_CONFIG_DEMO_H
#include <stdint.h>
#include "tb_config.h"

typedef struct demo_cfg {
    int64_t hidden_size;     /* model.hidden_size */
    int64_t n_layer;         /* model.n_layer */
    int position;            /* model.position (enum) */
    double lr;               /* training.lr */
    double warmup;           /* training.schedule.warmup */
    int64_t seed;            /* training.seed (no range) */
    int packing;             /* training.packing */
    double temperature;      /* training.temperature (no range) */
    char endpoint[64];       /* daemon.endpoint */
    char name[16];           /* daemon.name (no default) */
    tb_cfg_strlist topics;   /* daemon.topics (choices) */
    tb_cfg_strlist shards;   /* shards (any strings) */
    int log_level;           /* log_level (enum) */
    int verbose;             /* verbose (bool, no default) */
} demo_cfg;

extern const tb_cfg_schema demo_schema;

#endif
