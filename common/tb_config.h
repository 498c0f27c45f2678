/* Table-driven YAML configuration (libyaml).
 *
 * A schema is an array of tb_cfg_field, one per key, naming where the value lives in a
 * caller's struct. Keys are dotted paths into nested YAML mappings ("model.hidden_size"
 * is `hidden_size:` inside `model:`). Loading a file sets every default first, then every
 * key present; an unknown key, a wrong type or an out-of-range value fails with
 * "file:line: key: why" and the caller exits with TB_EX_CONFIG (78).
 * The same schema writes a fully commented example file (tb_cfg_write_example).
 *
 * Value rules (tb_config.c):
 * - INT: plain decimal, 0x hex or 0o octal, optional sign; a float that is a whole number
 *   ("1e3") counts as that integer, "1.5" is an error. DOUBLE: "1e-4", ".5", "-3", "7.",
 *   any INT form, .inf/-.inf; .nan is an error. BOOL: true/false/yes/no/on/off in any
 *   case (not 0/1). A quoted scalar ('12', "true") is a string, so never an INT, DOUBLE
 *   or BOOL. STRING and ENUM take the scalar text as written (plain or quoted; ENUM is
 *   case-sensitive). STRLIST: a block or flow sequence of scalars, or one scalar (a list
 *   of one); empty items are errors.
 * - Null (`key:`, `key: ~`, `key: null`): an error for INT, DOUBLE, BOOL and ENUM
 *   ("remove the key to get the default"); the empty string for STRING; the empty list
 *   for STRLIST; no keys for a SECTION (`model:` with every key commented out). A quoted
 *   'null' or "" is a string.
 * - A SECTION field adds the mapping's help text; a mapping is also a section when the
 *   schema has keys under it without one. A mapping with no keys in the schema, or any
 *   key not in the schema, is "unknown key". Duplicate keys, aliases, more than one YAML
 *   document and a non-mapping top level are errors. YAML syntax errors are reported
 *   before value errors (the whole input is parsed once first), naming the innermost key
 *   read before the error, or "(top)".
 * - Ranges: [min, max] inclusive; no range when min > max or min == max == 0 (fields
 *   written with designated initializers that leave min and max out).
 * - Defaults are parsed and checked like file values ("schema NAME: default: KEY: WHY"),
 *   so a default out of its range is a schema bug reported by tb_cfg_defaults. A NULL
 *   default is 0 / false / "" / first choice / empty list. */
#ifndef TB_CONFIG_H
#define TB_CONFIG_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "tb_err.h"

typedef enum tb_cfg_type {
    TB_CFG_INT,     /* int64_t; range [min, max] */
    TB_CFG_DOUBLE,  /* double; range [min, max] */
    TB_CFG_BOOL,    /* bool (stored as int); YAML true/false/yes/no/on/off */
    TB_CFG_STRING,  /* char[size] (size given in the field); empty allowed */
    TB_CFG_ENUM,    /* int index into choices ("a|b|c"); stored as int */
    TB_CFG_STRLIST, /* tb_cfg_strlist: a YAML sequence of scalars (or one scalar) */
    TB_CFG_SECTION, /* a mapping whose keys are declared by other fields; documents it */
} tb_cfg_type;

#define TB_CFG_STRLIST_MAX 64
#define TB_CFG_STR_MAX 256
typedef struct tb_cfg_strlist {
    int count;
    char items[TB_CFG_STRLIST_MAX][64];
} tb_cfg_strlist;

typedef struct tb_cfg_field {
    const char *key;     /* dotted path, e.g. "daemon.metrics_endpoint" */
    tb_cfg_type type;
    size_t offset;       /* offsetof(struct, member) */
    size_t size;         /* for TB_CFG_STRING: sizeof the char array */
    const char *def;     /* default as YAML text ("512", "true", "ipc:///run/tb/x");
                            NULL: no default (strings: empty, lists: empty, numbers: 0) */
    double min, max;     /* numeric range, inclusive; ignored when min > max */
    const char *choices; /* TB_CFG_ENUM: "hope|hope_hyperbolic|rope|none";
                            TB_CFG_STRLIST: allowed items, or NULL for any */
    const char *help;    /* one line or more; becomes the comment in example files */
} tb_cfg_field;

typedef struct tb_cfg_schema {
    const char *name;          /* e.g. "tb-prefetchd" (for example-file titles) */
    const tb_cfg_field *fields;
    size_t count;
} tb_cfg_schema;

/* Sets every field of obj to its default. Returns 0, or -1 if a default is malformed
 * (a bug in the schema; the message says which). */
int tb_cfg_defaults(void *obj, const tb_cfg_schema *schema, tb_err *err);

/* Defaults, then the file. `was_set`, if not NULL, has schema->count entries, is cleared
 * here and gets 1 for each key the file set (sections included). Returns 0, or -1 with
 * "path:line: key: why" ("path: cannot open: ..." when it cannot be read). An empty file
 * or one with only comments gives the defaults. */
int tb_cfg_load_file(void *obj, const tb_cfg_schema *schema, const char *path,
                     unsigned char *was_set, tb_err *err);

/* Same, from a string (tests; `name` stands in for the path in messages). Does not set
 * defaults first: call tb_cfg_defaults yourself. */
int tb_cfg_load_string(void *obj, const tb_cfg_schema *schema, const char *name,
                       const char *yaml, unsigned char *was_set, tb_err *err);

/* One "key=value" override (command line); value parsed as YAML scalar text (a flow
 * sequence "[a, b]" for lists; empty text is null). Same checks as a file, messages
 * "command line: key: why"; a failed override leaves the value unchanged. */
int tb_cfg_set(void *obj, const tb_cfg_schema *schema, const char *assignment,
               unsigned char *was_set, tb_err *err);

/* Index of a key in the schema, or -1. */
int tb_cfg_find(const tb_cfg_schema *schema, const char *key);

/* Writes a fully commented example YAML: every key with its default, help, type and range.
 * Defaults are written uncommented, so the file loads back to exactly the defaults.
 * Returns 0, or -1 on a write error or a schema bug. */
int tb_cfg_write_example(FILE *out, const tb_cfg_schema *schema);

/* Writes the current values as YAML (for logs and checkpoints' state); loading the output
 * gives back the same values. Returns 0, or -1 on a write error. */
int tb_cfg_write_values(FILE *out, const void *obj, const tb_cfg_schema *schema);

#endif
