#include "config_demo.h"
#include <stddef.h>

#define F(k, t, m, ...) {.key = k, .type = t, .offset = offsetof(demo_cfg, m), __VA_ARGS__}

static const tb_cfg_field demo_fields[] = {
    {.key = "model", .type = TB_CFG_SECTION, .help = "Model shape."},
    F("model.hidden_size", TB_CFG_INT, hidden_size, .def = "256", .min = 1, .max = 65536,
      .help = "Hidden size C."),
    F("model.n_layer", TB_CFG_INT, n_layer, .def = "4", .min = 1, .max = 128,
      .help = "Number of layers.\nEach layer is a retention block."),
    F("model.position", TB_CFG_ENUM, position, .def = "hope",
      .choices = "hope|hope_hyperbolic|rope|none", .help = "Position encoding."),
    {.key = "training", .type = TB_CFG_SECTION, .help = "Optimisation."},
    F("training.lr", TB_CFG_DOUBLE, lr, .def = "1e-4", .min = 0, .max = 1,
      .help = "Peak learning rate."),
    {.key = "training.schedule", .type = TB_CFG_SECTION, .help = "Learning-rate schedule."},
    F("training.schedule.warmup", TB_CFG_DOUBLE, warmup, .def = ".05", .min = 0, .max = 1,
      .help = "Warmup fraction of all steps."),
    F("training.seed", TB_CFG_INT, seed, .def = "0x2a", .min = 1, .max = 0,
      .help = "Seed of every random stream."),
    F("training.packing", TB_CFG_BOOL, packing, .def = "yes", .help = "Pack documents."),
    F("training.temperature", TB_CFG_DOUBLE, temperature, .def = "-3",
      .help = "A number without a range."),
    {.key = "daemon", .type = TB_CFG_SECTION, .help = "Sockets and names."},
    F("daemon.endpoint", TB_CFG_STRING, endpoint, .size = sizeof(((demo_cfg *)0)->endpoint),
      .def = "ipc:///run/tb/feed", .help = "Feed endpoint."),
    F("daemon.name", TB_CFG_STRING, name, .size = sizeof(((demo_cfg *)0)->name),
      .help = "Instance name (15 bytes at most)."),
    F("daemon.topics", TB_CFG_STRLIST, topics, .def = "[step, event]",
      .choices = "step|event|stats", .help = "Metric topics to publish."),
    F("shards", TB_CFG_STRLIST, shards, .help = "Shard paths or URLs."),
    F("log_level", TB_CFG_ENUM, log_level, .def = "info",
      .choices = "error|warn|notice|info|debug", .help = "Log threshold."),
    F("verbose", TB_CFG_BOOL, verbose, .help = "Chatty output."),
};

const tb_cfg_schema demo_schema = {
    .name = "tb-demo",
    .fields = demo_fields,
    .count = sizeof demo_fields / sizeof demo_fields[0],
};
