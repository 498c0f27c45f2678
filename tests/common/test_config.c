/* tb_config: every field type, defaults, overrides, error messages with file:line: key,
 * and the example / values writers reading back to the same struct. The error paths are
 * also checked end to end: tb_config_check (a small binary over the demo schema) must exit
 * 78 and print "file:line: key: why" on stderr. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "config_demo.h"
#include "tb_config.h"
#include "tb_err.h"

extern char **environ;

static char tmpdir[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int group_setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tbcfgXXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    return nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Writes text to tmpdir/name; path_out gets the path. */
static void write_file(const char *name, const char *text, char *path_out, size_t len) {
    snprintf(path_out, len, "%s/%s", tmpdir, name);
    FILE *f = fopen(path_out, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void read_file(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Field by field, by type: bytes after a string's NUL do not count. */
static int cfg_equal(const void *a, const void *b, const tb_cfg_schema *s) {
    for (size_t i = 0; i < s->count; i++) {
        const tb_cfg_field *f = &s->fields[i];
        const char *pa = (const char *)a + f->offset, *pb = (const char *)b + f->offset;
        int same = 1;
        switch (f->type) {
        case TB_CFG_INT: same = memcmp(pa, pb, sizeof(int64_t)) == 0; break;
        case TB_CFG_DOUBLE: {
            double x, y;
            memcpy(&x, pa, sizeof x);
            memcpy(&y, pb, sizeof y);
            same = x == y;
            break;
        }
        case TB_CFG_BOOL:
        case TB_CFG_ENUM: same = memcmp(pa, pb, sizeof(int)) == 0; break;
        case TB_CFG_STRING: same = strncmp(pa, pb, f->size) == 0; break;
        case TB_CFG_STRLIST: {
            const tb_cfg_strlist *la = (const void *)pa, *lb = (const void *)pb;
            same = la->count == lb->count;
            for (int j = 0; same && j < la->count; j++)
                same = strcmp(la->items[j], lb->items[j]) == 0;
            break;
        }
        case TB_CFG_SECTION: break;
        }
        if (!same) {
            print_message("field %s differs\n", f->key);
            return 0;
        }
    }
    return 1;
}

/* Loads yaml (after defaults) into cfg; returns the status, message in err. */
static int load(demo_cfg *cfg, const char *yaml, tb_err *err) {
    memset(cfg, 0, sizeof *cfg);
    memset(err, 0, sizeof *err);
    assert_int_equal(tb_cfg_defaults(cfg, &demo_schema, err), 0);
    return tb_cfg_load_string(cfg, &demo_schema, "t.yaml", yaml, NULL, err);
}

static void expect_error(const char *yaml, const char *msg) {
    demo_cfg cfg;
    tb_err err;
    assert_int_equal(load(&cfg, yaml, &err), -1);
    if (strstr(err.msg, msg) == NULL) fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg);
}

/* ------------------------------------------------------------------ in-process */

static void defaults_fill_every_type(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    memset(&c, 0x5a, sizeof c);
    assert_int_equal(tb_cfg_defaults(&c, &demo_schema, &err), 0);
    assert_int_equal(c.hidden_size, 256);
    assert_int_equal(c.n_layer, 4);
    assert_int_equal(c.position, 0);
    assert_true(c.lr == 1e-4);
    assert_true(c.warmup == 0.05);
    assert_int_equal(c.seed, 42);
    assert_int_equal(c.packing, 1);
    assert_true(c.temperature == -3.0);
    assert_string_equal(c.endpoint, "ipc:///run/tb/feed");
    assert_string_equal(c.name, "");
    assert_int_equal(c.topics.count, 2);
    assert_string_equal(c.topics.items[0], "step");
    assert_string_equal(c.topics.items[1], "event");
    assert_int_equal(c.shards.count, 0);
    assert_int_equal(c.log_level, 3);
    assert_int_equal(c.verbose, 0);
}

static void load_sets_every_type_in_nested_sections(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    unsigned char was_set[32];
    memset(was_set, 0, sizeof was_set);
    assert_true(demo_schema.count <= sizeof was_set);
    memset(&c, 0, sizeof c);
    assert_int_equal(tb_cfg_defaults(&c, &demo_schema, &err), 0);
    const char *yaml = "model:\n"
                       "  hidden_size: 512\n"
                       "  position: rope\n"
                       "training:\n"
                       "  lr: 3e-4\n"
                       "  schedule:\n"
                       "    warmup: 0.1\n"
                       "  seed: -7\n"
                       "  packing: Off\n"
                       "  temperature: .5\n"
                       "daemon: {endpoint: 'tcp://10.0.0.1:5555', name: worker-1, "
                       "topics: [stats]}\n"
                       "shards:\n"
                       "  - /data/a.jsonl.gz\n"
                       "  - \"https://x.org/b c.jsonl\"\n"
                       "log_level: debug\n"
                       "verbose: TRUE\n";
    int r = tb_cfg_load_string(&c, &demo_schema, "t.yaml", yaml, was_set, &err);
    if (r) fail_msg("%s", err.msg);
    assert_int_equal(c.hidden_size, 512);
    assert_int_equal(c.n_layer, 4); /* default kept */
    assert_int_equal(c.position, 2);
    assert_true(c.lr == 3e-4);
    assert_true(c.warmup == 0.1);
    assert_int_equal(c.seed, -7);
    assert_int_equal(c.packing, 0);
    assert_true(c.temperature == 0.5);
    assert_string_equal(c.endpoint, "tcp://10.0.0.1:5555");
    assert_string_equal(c.name, "worker-1");
    assert_int_equal(c.topics.count, 1);
    assert_string_equal(c.topics.items[0], "stats");
    assert_int_equal(c.shards.count, 2);
    assert_string_equal(c.shards.items[0], "/data/a.jsonl.gz");
    assert_string_equal(c.shards.items[1], "https://x.org/b c.jsonl");
    assert_int_equal(c.log_level, 4);
    assert_int_equal(c.verbose, 1);
    assert_int_equal(was_set[tb_cfg_find(&demo_schema, "model.hidden_size")], 1);
    assert_int_equal(was_set[tb_cfg_find(&demo_schema, "model.n_layer")], 0);
    assert_int_equal(was_set[tb_cfg_find(&demo_schema, "training.schedule.warmup")], 1);
    assert_int_equal(was_set[tb_cfg_find(&demo_schema, "verbose")], 1);
}

static void int_accepts_decimal_hex_octal_and_whole_floats(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    static const struct { const char *text; int64_t want; } ok[] = {
        {"0x10", 16}, {"-0x10", -16}, {"0o17", 15}, {"+12", 12}, {"1e3", 1000},
        {"2.0", 2}, {"9223372036854775807", INT64_MAX}, {"-9223372036854775808", INT64_MIN},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml, "training:\n  seed: %s\n", ok[i].text);
        if (load(&c, yaml, &err)) fail_msg("%s: %s", ok[i].text, err.msg);
        assert_int_equal(c.seed, ok[i].want);
    }
}

static void int_rejects_fractions_words_quotes_and_overflow(void **state) {
    (void)state;
    expect_error("model:\n  hidden_size: 1.5\n", "t.yaml:2: model.hidden_size: 1.5 is not an integer");
    expect_error("model:\n  hidden_size: abc\n", "t.yaml:2: model.hidden_size: abc is not an integer");
    expect_error("model:\n  hidden_size: '12'\n", "t.yaml:2: model.hidden_size: 12 is not an integer");
    expect_error("model:\n  hidden_size: 0x\n", "is not an integer");
    expect_error("model:\n  hidden_size: 1_000\n", "is not an integer");
    expect_error("training:\n  seed: 9223372036854775808\n",
                 "t.yaml:2: training.seed: 9223372036854775808 is out of the 64-bit integer range");
    expect_error("training:\n  seed: 1e30\n", "out of the 64-bit integer range");
    expect_error("training:\n  seed: .inf\n", "out of the 64-bit integer range");
}

static void int_out_of_range_message_is_exact(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    assert_int_equal(load(&c, "\n\nmodel:\n\n  # comment\n  hidden_size: 1e9\n", &err), -1);
    assert_string_equal(err.msg, "t.yaml:6: model.hidden_size: 1e9 is out of range [1, 65536]");
    assert_int_equal(load(&c, "model: {hidden_size: 0}", &err), -1);
    assert_string_equal(err.msg, "t.yaml:1: model.hidden_size: 0 is out of range [1, 65536]");
    assert_int_equal(load(&c, "model: {hidden_size: 65536, n_layer: 1}", &err), 0);
    assert_int_equal(c.hidden_size, 65536);
    assert_int_equal(c.n_layer, 1);
}

static void double_accepts_exponents_leading_dot_ints_and_hex(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    static const struct { const char *text; double want; } ok[] = {
        {"1e-4", 1e-4}, {".5", 0.5}, {"-3", -3.0}, {"+2.5E+2", 250.0}, {"7.", 7.0},
        {"0x10", 16.0}, {"-.inf", -HUGE_VAL}, {"1e400", HUGE_VAL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml, "training:\n  temperature: %s\n", ok[i].text);
        if (load(&c, yaml, &err)) fail_msg("%s: %s", ok[i].text, err.msg);
        assert_true(c.temperature == ok[i].want);
    }
    expect_error("training:\n  temperature: .nan\n", "t.yaml:2: training.temperature: .nan (not a number) is not allowed");
    expect_error("training:\n  temperature: 1e\n", "1e is not a number");
    expect_error("training:\n  temperature: inf\n", "inf is not a number");
    expect_error("training:\n  temperature: \"1.0\"\n", "1.0 is not a number");
    expect_error("training:\n  lr: 1.5\n", "t.yaml:2: training.lr: 1.5 is out of range [0, 1]");
    expect_error("training:\n  lr: -1e-9\n", "out of range");
}

static void bool_accepts_yaml_words_in_any_case_but_not_digits(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    static const struct { const char *text; int want; } ok[] = {
        {"true", 1}, {"False", 0}, {"YES", 1}, {"no", 0}, {"on", 1}, {"OFF", 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char yaml[64];
        snprintf(yaml, sizeof yaml, "verbose: %s\n", ok[i].text);
        if (load(&c, yaml, &err)) fail_msg("%s: %s", ok[i].text, err.msg);
        assert_int_equal(c.verbose, ok[i].want);
    }
    expect_error("verbose: 1\n", "t.yaml:1: verbose: 1 is not a bool");
    expect_error("verbose: 0\n", "verbose: 0 is not a bool");
    expect_error("verbose: 'true'\n", "is not a bool");
    expect_error("verbose: y\n", "is not a bool");
}

static void string_overflow_is_an_error_and_null_is_empty(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    assert_int_equal(load(&c, "daemon:\n  name: 123456789012345\n", &err), 0);
    assert_string_equal(c.name, "123456789012345");
    expect_error("daemon:\n  name: 1234567890123456\n",
                 "t.yaml:2: daemon.name: string of 16 bytes is too long (at most 15)");
    assert_int_equal(load(&c, "daemon:\n  endpoint: ~\n", &err), 0);
    assert_string_equal(c.endpoint, "");
    assert_int_equal(load(&c, "daemon:\n  endpoint:\n", &err), 0);
    assert_string_equal(c.endpoint, "");
    assert_int_equal(load(&c, "daemon:\n  endpoint: 'null'\n", &err), 0);
    assert_string_equal(c.endpoint, "null");
    assert_int_equal(load(&c, "daemon:\n  name: yes\n", &err), 0);
    assert_string_equal(c.name, "yes"); /* strings take the text as written */
    assert_int_equal(load(&c, "daemon:\n  endpoint: |\n    two\n    lines\n", &err), 0);
    assert_string_equal(c.endpoint, "two\nlines\n");
    expect_error("daemon:\n  name: [a]\n", "t.yaml:2: daemon.name: expected a string, got a sequence");
}

static void null_is_an_error_for_numbers_bools_and_enums(void **state) {
    (void)state;
    expect_error("model:\n  hidden_size: ~\n", "t.yaml:2: model.hidden_size: null is not allowed");
    expect_error("model:\n  hidden_size:\n", "t.yaml:2: model.hidden_size: null is not allowed");
    expect_error("training:\n  lr: null\n", "training.lr: null is not allowed");
    expect_error("verbose: ~\n", "verbose: null is not allowed");
    expect_error("log_level:\n", "log_level: null is not allowed");
}

static void enum_takes_a_choice_and_rejects_others(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    assert_int_equal(load(&c, "model:\n  position: none\n", &err), 0);
    assert_int_equal(c.position, 3);
    assert_int_equal(load(&c, "model:\n  position: \"hope_hyperbolic\"\n", &err), 0);
    assert_int_equal(c.position, 1);
    expect_error("model:\n  position: hop\n",
                 "t.yaml:2: model.position: \"hop\" is not one of hope|hope_hyperbolic|rope|none");
    expect_error("model:\n  position: Rope\n", "is not one of");
}

static void strlist_takes_block_flow_scalar_and_checks_choices(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    assert_int_equal(load(&c, "daemon:\n  topics:\n  - stats\n  - step\n", &err), 0);
    assert_int_equal(c.topics.count, 2);
    assert_string_equal(c.topics.items[0], "stats");
    assert_string_equal(c.topics.items[1], "step");
    assert_int_equal(load(&c, "daemon:\n  topics: event\n", &err), 0);
    assert_int_equal(c.topics.count, 1);
    assert_string_equal(c.topics.items[0], "event");
    assert_int_equal(load(&c, "daemon:\n  topics: []\n", &err), 0);
    assert_int_equal(c.topics.count, 0);
    assert_int_equal(load(&c, "daemon:\n  topics: ~\n", &err), 0);
    assert_int_equal(c.topics.count, 0);
    expect_error("daemon:\n  topics:\n    - step\n    - metrics\n",
                 "t.yaml:4: daemon.topics: list item \"metrics\" is not one of step|event|stats");
    expect_error("daemon:\n  topics: [step, [event]]\n",
                 "t.yaml:2: daemon.topics: list items must be scalars, got a sequence");
    expect_error("daemon:\n  topics: {a: 1}\n", "expected a list of strings, got a mapping");
    expect_error("shards: [a, ~]\n", "t.yaml:1: shards: empty list item");
    char yaml[8192] = "shards:\n";
    for (int i = 0; i < TB_CFG_STRLIST_MAX; i++)
        snprintf(yaml + strlen(yaml), sizeof yaml - strlen(yaml), "  - s%d\n", i);
    assert_int_equal(load(&c, yaml, &err), 0);
    assert_int_equal(c.shards.count, TB_CFG_STRLIST_MAX);
    assert_string_equal(c.shards.items[TB_CFG_STRLIST_MAX - 1], "s63");
    strcat(yaml, "  - one-too-many\n");
    expect_error(yaml, "t.yaml:66: shards: more than 64 list items");
    char longitem[100];
    memset(longitem, 'x', 64);
    longitem[64] = '\0';
    snprintf(yaml, sizeof yaml, "shards: [%s]\n", longitem);
    expect_error(yaml, "shards: list item of 64 bytes is too long (at most 63)");
}

static void unknown_keys_fail_also_inside_undeclared_mappings(void **state) {
    (void)state;
    expect_error("model:\n  hidden_size: 128\n  n_layers: 4\n",
                 "t.yaml:3: model.n_layers: unknown key");
    expect_error("colour: red\n", "t.yaml:1: colour: unknown key");
    expect_error("extra:\n  hidden_size: 3\n", "t.yaml:1: extra: unknown key");
    expect_error("model:\n  hidden_size:\n    value: 3\n",
                 "t.yaml:2: model.hidden_size: expected an integer, got a mapping");
    expect_error("model: 3\n", "t.yaml:1: model: expected a mapping (a section of keys), got a scalar");
    expect_error("model: [1]\n", "model: expected a mapping (a section of keys), got a sequence");
    expect_error("- a\n- b\n", "t.yaml:1: (top): expected a mapping of keys, got a sequence");
    expect_error("just text\n", "(top): expected a mapping of keys, got a scalar");
    expect_error("verbose: on\n---\nb: 2\n", "t.yaml:2: (top): only one YAML document is allowed");
    expect_error("model:\n  hidden_size: &x 3\n  n_layer: *x\n", "t.yaml:3: model.n_layer: aliases");
}

static void duplicate_keys_fail_with_both_lines(void **state) {
    (void)state;
    expect_error("training:\n  lr: 0.1\n  lr: 0.2\n",
                 "t.yaml:3: training.lr: duplicate key (first given at line 2)");
    expect_error("model: {hidden_size: 8}\nlog_level: info\nmodel: {n_layer: 2}\n",
                 "t.yaml:3: model: duplicate key (first given at line 1)");
}

static void syntax_errors_name_line_and_key(void **state) {
    (void)state;
    /* A syntax error comes first even after a bad value ("4 position" reads as one
     * plain scalar before libyaml meets the second ':'). */
    expect_error("model:\n  hidden_size: 256\n  n_layer: 4\n   position: rope\n",
                 "t.yaml:4: model.n_layer: YAML syntax error: mapping values are not allowed");
    expect_error("model:\n  hidden_size: 1e9\n n_layer: 3\n",
                 "t.yaml:3: model: YAML syntax error: did not find expected key");
    expect_error("daemon:\n  topics: [step,\n    event\n", "t.yaml:4: daemon.topics: YAML syntax error");
    expect_error("a: \"unterminated\n", "YAML syntax error");
    expect_error("\tmodel: 1\n", "t.yaml:1: (top): YAML syntax error");
    expect_error("verbose: \xff\n", "t.yaml:1: (top): YAML error: invalid leading UTF-8 octet");
}

static void empty_and_comment_only_files_give_defaults(void **state) {
    (void)state;
    demo_cfg def, c;
    tb_err err;
    memset(&def, 0, sizeof def);
    assert_int_equal(tb_cfg_defaults(&def, &demo_schema, &err), 0);
    const char *texts[] = {"", "\n\n", "# nothing\n  # at all\n", "---\n", "---\n...\n",
                           "model:\n  # hidden_size: 3\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (load(&c, texts[i], &err)) fail_msg("text %zu: %s", i, err.msg);
        assert_true(cfg_equal(&c, &def, &demo_schema));
    }
    char path[256];
    write_file("empty.yaml", "", path, sizeof path);
    memset(&c, 0x33, sizeof c);
    assert_int_equal(tb_cfg_load_file(&c, &demo_schema, path, NULL, &err), 0);
    assert_true(cfg_equal(&c, &def, &demo_schema));
}

static void load_file_reports_missing_file(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    char path[256];
    snprintf(path, sizeof path, "%s/does-not-exist.yaml", tmpdir);
    assert_int_equal(tb_cfg_load_file(&c, &demo_schema, path, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "does-not-exist.yaml: cannot open"));
}

static void set_overrides_with_the_same_validation(void **state) {
    (void)state;
    demo_cfg c;
    tb_err err;
    unsigned char was_set[32] = {0};
    assert_int_equal(load(&c, "", &err), 0);
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "model.hidden_size=0x100", was_set, &err), 0);
    assert_int_equal(c.hidden_size, 256 + 0);
    assert_int_equal(was_set[tb_cfg_find(&demo_schema, "model.hidden_size")], 1);
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "model.hidden_size=1024", NULL, &err), 0);
    assert_int_equal(c.hidden_size, 1024);
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "training.schedule.warmup=.25", NULL, &err), 0);
    assert_true(c.warmup == 0.25);
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "daemon.endpoint=ipc:///tmp/a=b", NULL, &err), 0);
    assert_string_equal(c.endpoint, "ipc:///tmp/a=b");
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "daemon.endpoint=", NULL, &err), 0);
    assert_string_equal(c.endpoint, "");
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "daemon.topics=[stats, step]", NULL, &err), 0);
    assert_int_equal(c.topics.count, 2);
    assert_string_equal(c.topics.items[1], "step");
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "daemon.topics=event", NULL, &err), 0);
    assert_int_equal(c.topics.count, 1);
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "model.position=rope", NULL, &err), 0);
    assert_int_equal(c.position, 2);
    assert_int_equal(tb_cfg_set(&c, &demo_schema, "verbose=on", NULL, &err), 0);
    assert_int_equal(c.verbose, 1);

    static const struct { const char *arg, *msg; } bad[] = {
        {"model.hidden_size=1e9", "command line: model.hidden_size: 1e9 is out of range [1, 65536]"},
        {"model.hidden_size=abc", "command line: model.hidden_size: abc is not an integer"},
        {"model.hidden_size=", "command line: model.hidden_size: null is not allowed"},
        {"model.hidden_size=[1]", "command line: model.hidden_size: expected an integer, got a sequence"},
        {"model.nope=3", "command line: model.nope: unknown key"},
        {"model=3", "command line: model: is a section"},
        {"model.position=alibi", "command line: model.position: \"alibi\" is not one of"},
        {"daemon.topics=[step, x]", "command line: daemon.topics: list item \"x\" is not one of"},
        {"daemon.topics=[step", "command line: daemon.topics: YAML syntax error"},
        {"verbose=1", "command line: verbose: 1 is not a bool"},
        {"hidden_size", "command line: hidden_size: expected KEY=VALUE"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(tb_cfg_set(&c, &demo_schema, bad[i].arg, NULL, &err), -1);
        if (strncmp(err.msg, bad[i].msg, strlen(bad[i].msg)) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i].arg, err.msg, bad[i].msg);
    }
    /* A failed override leaves the value as it was. */
    assert_int_equal(c.hidden_size, 1024);
    assert_int_equal(c.topics.count, 1);
}

static void example_file_loads_and_equals_defaults(void **state) {
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/example.yaml", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(tb_cfg_write_example(f, &demo_schema), 0);
    assert_int_equal(fclose(f), 0);

    demo_cfg def, c;
    tb_err err;
    unsigned char was_set[32] = {0};
    memset(&def, 0, sizeof def);
    assert_int_equal(tb_cfg_defaults(&def, &demo_schema, &err), 0);
    memset(&c, 0x77, sizeof c);
    if (tb_cfg_load_file(&c, &demo_schema, path, was_set, &err)) fail_msg("%s", err.msg);
    assert_true(cfg_equal(&c, &def, &demo_schema));
    /* Every key is in the file, uncommented. */
    for (size_t i = 0; i < demo_schema.count; i++)
        if (!was_set[i]) fail_msg("example lacks %s", demo_schema.fields[i].key);

    char text[8192];
    read_file(path, text, sizeof text);
    static const char *want[] = {
        "# Model shape.\nmodel:\n",
        "  # Hidden size C.\n  # integer, range [1, 65536], default 256\n  hidden_size: 256\n",
        "  # Number of layers.\n  # Each layer is a retention block.\n",
        "  # one of hope|hope_hyperbolic|rope|none, default hope\n  position: hope\n",
        "  # number, range [0, 1], default 0.0001\n  lr: 0.0001\n",
        "  # Learning-rate schedule.\n  schedule:\n    # Warmup fraction of all steps.\n",
        "    warmup: 0.05\n",
        "  # integer, default 42\n  seed: 42\n",
        "  # bool (true/false), default true\n  packing: true\n",
        "  # string of at most 63 bytes, default \"ipc:///run/tb/feed\"\n",
        "  name: \"\"\n",
        "  # list of at most 64 strings, each one of step|event|stats, default [step, event]\n",
        "  topics: [step, event]\n",
        "# Shard paths or URLs.\n# list of at most 64 strings, default []\nshards: []\n",
        "log_level: info\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i])) fail_msg("example lacks:\n%s\n---- example:\n%s", want[i], text);
}

static void values_written_read_back_equal(void **state) {
    (void)state;
    demo_cfg c, back;
    tb_err err;
    memset(&c, 0, sizeof c);
    assert_int_equal(tb_cfg_defaults(&c, &demo_schema, &err), 0);
    c.hidden_size = 65536;
    c.seed = INT64_MIN;
    c.lr = 0.1;
    c.warmup = 1.0 / 3.0;
    c.temperature = -HUGE_VAL;
    c.packing = 0;
    c.position = 1;
    snprintf(c.endpoint, sizeof c.endpoint, "a \"quoted\" #not-a-comment: \\ x\n\ty\x01");
    snprintf(c.name, sizeof c.name, "null");
    c.topics.count = 0;
    c.shards.count = 4;
    snprintf(c.shards.items[0], sizeof c.shards.items[0], "- dash");
    snprintf(c.shards.items[1], sizeof c.shards.items[1], "[x], {y}");
    snprintf(c.shards.items[2], sizeof c.shards.items[2], "~");
    snprintf(c.shards.items[3], sizeof c.shards.items[3], "ünïcødé/ok.txt");
    c.verbose = 1;
    c.log_level = 0;

    char path[256];
    snprintf(path, sizeof path, "%s/values.yaml", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(tb_cfg_write_values(f, &c, &demo_schema), 0);
    assert_int_equal(fclose(f), 0);
    memset(&back, 0, sizeof back);
    if (tb_cfg_load_file(&back, &demo_schema, path, NULL, &err)) fail_msg("%s", err.msg);
    assert_true(cfg_equal(&back, &c, &demo_schema));
}

/* A schema that leaves out its SECTION entries still nests, loads and writes. */
typedef struct implicit_cfg {
    int64_t a;
    int64_t b;
} implicit_cfg;
static const tb_cfg_field implicit_fields[] = {
    {.key = "x.y.a", .type = TB_CFG_INT, .offset = offsetof(implicit_cfg, a), .def = "1"},
    {.key = "x.b", .type = TB_CFG_INT, .offset = offsetof(implicit_cfg, b), .def = "2"},
};
static const tb_cfg_schema implicit_schema = {"implicit", implicit_fields, 2};

static void undeclared_sections_are_implied_by_their_keys(void **state) {
    (void)state;
    implicit_cfg c;
    tb_err err;
    assert_int_equal(tb_cfg_defaults(&c, &implicit_schema, &err), 0);
    assert_int_equal(tb_cfg_load_string(&c, &implicit_schema, "i", "x:\n  y:\n    a: 5\n  b: 6\n",
                                         NULL, &err), 0);
    assert_int_equal(c.a, 5);
    assert_int_equal(c.b, 6);
    assert_int_equal(tb_cfg_load_string(&c, &implicit_schema, "i", "x:\n  z: 1\n", NULL, &err), -1);
    assert_string_equal(err.msg, "i:2: x.z: unknown key");
    char buf[1024] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    assert_non_null(f);
    assert_int_equal(tb_cfg_write_values(f, &c, &implicit_schema), 0);
    fclose(f);
    assert_non_null(strstr(buf, "x:\n  y:\n    a: 5\n  b: 6\n"));
}

static void example_comments_out_a_number_without_default_outside_its_range(void **state) {
    (void)state;
    tb_cfg_field f[2] = {
        {.key = "workers", .type = TB_CFG_INT, .offset = 0, .min = 1, .max = 64},
        {.key = "ratio", .type = TB_CFG_DOUBLE, .offset = 8, .min = 0.1, .max = 0.9},
    };
    tb_cfg_schema s = {"nodef", f, 2};
    char buf[2048] = {0};
    FILE *out = fmemopen(buf, sizeof buf - 1, "w");
    assert_non_null(out);
    assert_int_equal(tb_cfg_write_example(out, &s), 0);
    fclose(out);
    assert_non_null(strstr(buf, "# integer, range [1, 64], default 0\n# no default: set a value in range\n# workers: 0\n"));
    assert_non_null(strstr(buf, "# number, range [0.1, 0.9], default 0\n"));
    implicit_cfg c;
    tb_err err;
    assert_int_equal(tb_cfg_defaults(&c, &s, &err), 0);
    assert_int_equal(tb_cfg_load_string(&c, &s, "ex", buf, NULL, &err), 0);
    assert_int_equal(tb_cfg_load_string(&c, &s, "ex", "ratio: 0.95", NULL, &err), -1);
    assert_string_equal(err.msg, "ex:1: ratio: 0.95 is out of range [0.1, 0.9]");
}

static void schema_bugs_are_reported_by_defaults(void **state) {
    (void)state;
    implicit_cfg c;
    tb_err err;
    tb_cfg_field f[2] = {
        {.key = "a", .type = TB_CFG_INT, .offset = 0, .def = "100", .min = 1, .max = 10},
        {.key = "b", .type = TB_CFG_INT, .offset = 8},
    };
    tb_cfg_schema s = {"bug", f, 2};
    assert_int_equal(tb_cfg_defaults(&c, &s, &err), -1);
    assert_string_equal(err.msg, "schema bug: default: a: 100 is out of range [1, 10]");
    f[0].def = "true";
    assert_int_equal(tb_cfg_defaults(&c, &s, &err), -1);
    assert_non_null(strstr(err.msg, "a: true is not an integer"));
    f[0].def = "5";
    f[1].key = "a";
    assert_int_equal(tb_cfg_defaults(&c, &s, &err), -1);
    assert_non_null(strstr(err.msg, "a: declared twice"));
    f[1].key = "a.b";
    assert_int_equal(tb_cfg_defaults(&c, &s, &err), -1);
    assert_non_null(strstr(err.msg, "a: a value and also a section"));
    f[1].key = "b";
    /* min == max == 0 (left out of a designated initializer) means no range. */
    f[0].min = f[0].max = 0;
    f[0].def = "-5";
    assert_int_equal(tb_cfg_defaults(&c, &s, &err), 0);
    assert_int_equal(c.a, -5);
    assert_int_equal(c.b, 0);
}

/* Bad input never crashes (run under ASan/UBSan): byte-level mutations of the example
 * file either load or fail with a "t.yaml:LINE: " message. */
static void mutated_example_files_load_or_fail_cleanly(void **state) {
    (void)state;
    char base[8192] = {0};
    FILE *out = fmemopen(base, sizeof base - 1, "w");
    assert_non_null(out);
    assert_int_equal(tb_cfg_write_example(out, &demo_schema), 0);
    fclose(out);
    size_t len = strlen(base);
    static const char alphabet[] = " \n\t:-[]{},#&*!|>'\"%@`?~.0123456789xe\x80\xff";
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int failed = 0;
    for (int iter = 0; iter < 3000; iter++) {
        char text[8192];
        memcpy(text, base, len + 1);
        int edits = 1 + iter % 4;
        for (int e = 0; e < edits; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t pos = (size_t)(x % len);
            char ch = alphabet[(x >> 32) % (sizeof alphabet - 1)];
            if ((x >> 40) % 3 == 0 && len > 1) { /* delete */
                memmove(text + pos, text + pos + 1, len - pos);
            } else {
                text[pos] = ch;
            }
        }
        demo_cfg c;
        tb_err err;
        memset(&c, 0, sizeof c);
        assert_int_equal(tb_cfg_defaults(&c, &demo_schema, &err), 0);
        err.msg[0] = '\0';
        if (tb_cfg_load_string(&c, &demo_schema, "t.yaml", text, NULL, &err) < 0) {
            failed++;
            if (strncmp(err.msg, "t.yaml:", 7) != 0) fail_msg("bad message \"%s\"", err.msg);
        }
    }
    assert_true(failed > 100); /* the mutations do break files */
}

/* ------------------------------------------------------- tb_config_check (exec) */

/* Runs tb_config_check with args; stderr and stdout go to files read into err_out/out. */
static int run_check(char *err_out, size_t err_len, char *out, size_t out_len, const char *arg1,
                     const char *arg2) {
    char errpath[256], outpath[256];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmpdir);
    snprintf(outpath, sizeof outpath, "%s/stdout.txt", tmpdir);
    posix_spawn_file_actions_t fa;
    assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 1, outpath, O_WRONLY | O_CREAT | O_TRUNC, 0600), 0);
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 2, errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600), 0);
    char *argv[] = {(char *)TB_CONFIG_CHECK, (char *)arg1, (char *)arg2, NULL};
    pid_t pid;
    int r = posix_spawn(&pid, TB_CONFIG_CHECK, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r != 0) fail_msg("posix_spawn %s: %s", TB_CONFIG_CHECK, strerror(r));
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    read_file(errpath, err_out, err_len);
    if (out) read_file(outpath, out, out_len);
    return WEXITSTATUS(st);
}

/* The check binary must exit 78 with "PATH:LINE: KEY: " and `why` on stderr. */
static void expect_check_fails(const char *name, const char *yaml, int line, const char *key,
                               const char *why) {
    char path[256], err[2048], want[512];
    write_file(name, yaml, path, sizeof path);
    int st = run_check(err, sizeof err, NULL, 0, path, NULL);
    assert_int_equal(st, TB_EX_CONFIG);
    snprintf(want, sizeof want, "%s:%d: %s: ", path, line, key);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("stderr \"%s\" does not start with \"%s\"", err, want);
    if (!strstr(err, why)) fail_msg("stderr \"%s\" lacks \"%s\"", err, why);
}

static void check_binary_exits_78_on_unknown_key(void **state) {
    (void)state;
    expect_check_fails("unknown.yaml", "model:\n  hidden_size: 128\n\n  n_layers: 4\n", 4,
                       "model.n_layers", "unknown key");
}

static void check_binary_exits_78_on_wrong_type(void **state) {
    (void)state;
    expect_check_fails("type1.yaml", "# a comment\nmodel:\n  hidden_size:\n    value: 3\n", 3,
                       "model.hidden_size", "expected an integer, got a mapping");
    expect_check_fails("type2.yaml", "training:\n  lr: 0.1\n  seed: abc\n", 3, "training.seed",
                       "abc is not an integer");
    expect_check_fails("type3.yaml", "model:\n  n_layer: 1.5\n", 2, "model.n_layer",
                       "1.5 is not an integer");
}

static void check_binary_exits_78_on_out_of_range(void **state) {
    (void)state;
    expect_check_fails("range.yaml", "log_level: info\nmodel:\n  hidden_size: 1e9\n", 3,
                       "model.hidden_size", "1e9 is out of range [1, 65536]");
}

static void check_binary_exits_78_on_bad_enum(void **state) {
    (void)state;
    expect_check_fails("enum.yaml", "model:\n  hidden_size: 64\n  n_layer: 2\n  position: alibi\n",
                       4, "model.position", "\"alibi\" is not one of hope|hope_hyperbolic|rope|none");
}

static void check_binary_exits_78_on_bad_list_item(void **state) {
    (void)state;
    expect_check_fails("list.yaml", "daemon:\n  topics:\n    - step\n    - metrics\n", 4,
                       "daemon.topics", "list item \"metrics\" is not one of step|event|stats");
}

static void check_binary_exits_78_on_duplicate_key(void **state) {
    (void)state;
    expect_check_fails("dup.yaml", "training:\n  lr: 0.1\n  packing: no\n  lr: 0.2\n", 4,
                       "training.lr", "duplicate key (first given at line 2)");
}

static void check_binary_exits_78_on_syntax_error(void **state) {
    (void)state;
    expect_check_fails("syntax.yaml", "model:\n  hidden_size: 256\n  n_layer: 4\n   position: rope\n",
                       4, "model.n_layer", "YAML syntax error");
}

static void check_binary_exits_78_on_bad_override(void **state) {
    (void)state;
    char path[256], err[2048];
    write_file("ok.yaml", "model:\n  hidden_size: 512\n", path, sizeof path);
    assert_int_equal(run_check(err, sizeof err, NULL, 0, path, "model.hidden_size=0"), TB_EX_CONFIG);
    assert_string_equal(err, "command line: model.hidden_size: 0 is out of range [1, 65536]\n");
}

static void check_binary_exits_0_on_valid_file_and_applies_override(void **state) {
    (void)state;
    char path[256], err[2048], out[8192];
    write_file("good.yaml", "model:\n  hidden_size: 512\ntraining: {lr: 2e-4}\n", path, sizeof path);
    assert_int_equal(run_check(err, sizeof err, out, sizeof out, path, "model.n_layer=12"), 0);
    assert_string_equal(err, "");
    assert_non_null(strstr(out, "model:\n  hidden_size: 512\n  n_layer: 12\n"));
    assert_non_null(strstr(out, "  lr: 0.0002\n"));
}

static void check_binary_example_output_loads_back(void **state) {
    (void)state;
    char err[2048], out[8192], path[256], err2[2048];
    assert_int_equal(run_check(err, sizeof err, out, sizeof out, "--example", NULL), 0);
    write_file("example-from-binary.yaml", out, path, sizeof path);
    assert_int_equal(run_check(err2, sizeof err2, NULL, 0, path, NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_fill_every_type),
        cmocka_unit_test(load_sets_every_type_in_nested_sections),
        cmocka_unit_test(int_accepts_decimal_hex_octal_and_whole_floats),
        cmocka_unit_test(int_rejects_fractions_words_quotes_and_overflow),
        cmocka_unit_test(int_out_of_range_message_is_exact),
        cmocka_unit_test(double_accepts_exponents_leading_dot_ints_and_hex),
        cmocka_unit_test(bool_accepts_yaml_words_in_any_case_but_not_digits),
        cmocka_unit_test(string_overflow_is_an_error_and_null_is_empty),
        cmocka_unit_test(null_is_an_error_for_numbers_bools_and_enums),
        cmocka_unit_test(enum_takes_a_choice_and_rejects_others),
        cmocka_unit_test(strlist_takes_block_flow_scalar_and_checks_choices),
        cmocka_unit_test(unknown_keys_fail_also_inside_undeclared_mappings),
        cmocka_unit_test(duplicate_keys_fail_with_both_lines),
        cmocka_unit_test(syntax_errors_name_line_and_key),
        cmocka_unit_test(empty_and_comment_only_files_give_defaults),
        cmocka_unit_test(load_file_reports_missing_file),
        cmocka_unit_test(set_overrides_with_the_same_validation),
        cmocka_unit_test(example_file_loads_and_equals_defaults),
        cmocka_unit_test(values_written_read_back_equal),
        cmocka_unit_test(undeclared_sections_are_implied_by_their_keys),
        cmocka_unit_test(example_comments_out_a_number_without_default_outside_its_range),
        cmocka_unit_test(schema_bugs_are_reported_by_defaults),
        cmocka_unit_test(mutated_example_files_load_or_fail_cleanly),
        cmocka_unit_test(check_binary_exits_78_on_unknown_key),
        cmocka_unit_test(check_binary_exits_78_on_wrong_type),
        cmocka_unit_test(check_binary_exits_78_on_out_of_range),
        cmocka_unit_test(check_binary_exits_78_on_bad_enum),
        cmocka_unit_test(check_binary_exits_78_on_bad_list_item),
        cmocka_unit_test(check_binary_exits_78_on_duplicate_key),
        cmocka_unit_test(check_binary_exits_78_on_syntax_error),
        cmocka_unit_test(check_binary_exits_78_on_bad_override),
        cmocka_unit_test(check_binary_exits_0_on_valid_file_and_applies_override),
        cmocka_unit_test(check_binary_example_output_loads_back),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
