/* Table-driven YAML configuration over libyaml's event API (see tb_config.h).
 *
 * libyaml tokenizes and parses; it does not resolve plain scalars to types, so this file
 * decides what a scalar means for the field it lands in (integer, double, bool, enum
 * choice, string) and range-checks it. Every message is "NAME:LINE: KEY: WHY" (NAME the
 * file, LINE 1-based) or "command line: KEY: WHY" for tb_cfg_set. */
#include "tb_config.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#define KEY_MAX 256
#define FILE_MAX_BYTES (16u << 20)

typedef struct seen_key {
    char key[KEY_MAX];
    int line;
} seen_key;

typedef struct cfg_ctx {
    yaml_parser_t parser;
    const tb_cfg_schema *schema;
    void *obj;
    unsigned char *was_set;
    const char *name;     /* file name, "command line" or "schema NAME" */
    const char *text;     /* the whole input (reader errors give byte offsets) */
    size_t text_len;
    int with_line;        /* messages carry ":LINE" */
    const char *cur_key;  /* key named by syntax errors */
    seen_key *seen;       /* every dotted path read so far, for duplicate keys */
    size_t nseen, capseen;
    tb_err *err;
} cfg_ctx;

/* ---------------------------------------------------------------- messages */

static int fail(cfg_ctx *c, int line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(cfg_ctx *c, int line, const char *key, const char *fmt, ...) {
    char why[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (c->with_line)
        return tb_err_set(c->err, "%s:%d: %s: %s", c->name, line, key, why);
    return tb_err_set(c->err, "%s: %s: %s", c->name, key, why);
}

static int mark_line(yaml_mark_t m) { return (int)m.line + 1; }

static const char *type_name(tb_cfg_type t) {
    switch (t) {
    case TB_CFG_INT: return "an integer";
    case TB_CFG_DOUBLE: return "a number";
    case TB_CFG_BOOL: return "a bool (true/false/yes/no/on/off)";
    case TB_CFG_STRING: return "a string";
    case TB_CFG_ENUM: return "one of the choices";
    case TB_CFG_STRLIST: return "a list of strings";
    case TB_CFG_SECTION: return "a mapping";
    }
    return "a value";
}

static const char *event_noun(const yaml_event_t *ev) {
    switch (ev->type) {
    case YAML_MAPPING_START_EVENT: return "a mapping";
    case YAML_SEQUENCE_START_EVENT: return "a sequence";
    case YAML_ALIAS_EVENT: return "an alias";
    case YAML_SCALAR_EVENT: return "a scalar";
    default: return "something else";
    }
}

/* Next event; a YAML error becomes "NAME:LINE: KEY: YAML syntax error: ...". */
static int next_event(cfg_ctx *c, yaml_event_t *ev) {
    if (yaml_parser_parse(&c->parser, ev)) return 0;
    yaml_parser_t *p = &c->parser;
    const char *problem = p->problem ? p->problem : "unknown error";
    int line = mark_line(p->problem_mark);
    if (p->error == YAML_READER_ERROR || p->error == YAML_MEMORY_ERROR) {
        /* The reader reports a byte offset, not a mark: count lines up to it. */
        line = 1;
        for (size_t i = 0; i < p->problem_offset && i < c->text_len; i++)
            if (c->text[i] == '\n') line++;
        return fail(c, line, c->cur_key, "YAML error: %s at byte %zu", problem,
                    p->problem_offset);
    }
    if (p->context)
        return fail(c, line, c->cur_key, "YAML syntax error: %s (%s at line %d)", problem,
                    p->context, mark_line(p->context_mark));
    return fail(c, line, c->cur_key, "YAML syntax error: %s", problem);
}

/* ------------------------------------------------------------ schema helpers */

int tb_cfg_find(const tb_cfg_schema *schema, const char *key) {
    for (size_t i = 0; i < schema->count; i++)
        if (strcmp(schema->fields[i].key, key) == 0) return (int)i;
    return -1;
}

/* A path is a section when a SECTION field declares it, or when other keys live under it
 * (so a schema that leaves out the SECTION entry still loads; the entry adds help text). */
static int is_section(const tb_cfg_schema *s, const char *path) {
    size_t n = strlen(path);
    for (size_t i = 0; i < s->count; i++) {
        const char *k = s->fields[i].key;
        if (s->fields[i].type == TB_CFG_SECTION && strcmp(k, path) == 0) return 1;
        if (strncmp(k, path, n) == 0 && k[n] == '.') return 1;
    }
    return 0;
}

static int range_active(const tb_cfg_field *f) {
    return !(f->min > f->max) && !(f->min == 0 && f->max == 0);
}

static int64_t range_lo_i64(const tb_cfg_field *f) {
    if (f->min <= -9.2233720368547758e18) return INT64_MIN;
    return (int64_t)ceil(f->min);
}
static int64_t range_hi_i64(const tb_cfg_field *f) {
    if (f->max >= 9.2233720368547758e18) return INT64_MAX;
    return (int64_t)floor(f->max);
}

/* ----------------------------------------------------------- scalar typing */

static int is_plain(const yaml_event_t *ev) {
    return ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ||
           ev->data.scalar.style == YAML_ANY_SCALAR_STYLE;
}

static int is_null_text(const char *s) {
    return s[0] == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
           strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static int scalar_is_null(const yaml_event_t *ev) {
    return is_plain(ev) && is_null_text((const char *)ev->data.scalar.value);
}

/* YAML float syntax: [+-] digits [. digits] [e [+-] digits] with a digit somewhere in
 * the mantissa ("1e-4", ".5", "-3", "2."), or .inf / -.inf. Returns 0 and the value, 1
 * for .nan, -1 when the text is not a number. */
static int text_to_double(const char *s, double *out) {
    const char *p = s;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    if (strcmp(p, ".inf") == 0 || strcmp(p, ".Inf") == 0 || strcmp(p, ".INF") == 0) {
        *out = neg ? -HUGE_VAL : HUGE_VAL;
        return 0;
    }
    if (strcmp(s, ".nan") == 0 || strcmp(s, ".NaN") == 0 || strcmp(s, ".NAN") == 0) return 1;
    int digits = 0;
    while (*p >= '0' && *p <= '9') p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') p++, digits++;
    }
    if (!digits) return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return -1;
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p) return -1;
    errno = 0;
    *out = strtod(s, NULL);
    return 0; /* overflow gives +-HUGE_VAL, which the range check reports */
}

/* YAML integer syntax: [+-] decimal, [+-]0x hex, [+-]0o octal. Returns 0 and the value,
 * 1 when it is an integer beyond int64, -1 when the text is not an integer. */
static int text_to_int(const char *s, int64_t *out) {
    const char *p = s;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    int base = 10;
    const char *digits = p;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) base = 16, digits = p + 2;
    else if (p[0] == '0' && p[1] == 'o') base = 8, digits = p + 2;
    if (!*digits) return -1;
    for (const char *q = digits; *q; q++) {
        int ok = base == 16 ? ((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f') ||
                               (*q >= 'A' && *q <= 'F'))
                 : base == 8 ? (*q >= '0' && *q <= '7')
                             : (*q >= '0' && *q <= '9');
        if (!ok) return -1;
    }
    errno = 0;
    unsigned long long u = strtoull(digits, NULL, base);
    if (errno == ERANGE) return 1;
    if (neg) {
        if (u > (unsigned long long)INT64_MAX + 1ull) return 1;
        *out = u == (unsigned long long)INT64_MAX + 1ull ? INT64_MIN : -(int64_t)u;
    } else {
        if (u > (unsigned long long)INT64_MAX) return 1;
        *out = (int64_t)u;
    }
    return 0;
}

static int text_to_bool(const char *s, int *out) {
    static const char *yes[] = {"true", "yes", "on"}, *no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) { *out = 1; return 0; }
        if (strcasecmp(s, no[i]) == 0) { *out = 0; return 0; }
    }
    return -1;
}

/* Index of `s` in "a|b|c", or -1. */
static int choice_index(const char *choices, const char *s) {
    if (!choices) return -1;
    size_t n = strlen(s);
    int idx = 0;
    for (const char *p = choices;; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0) return idx;
        if (!bar) return -1;
        p = bar + 1;
    }
}

/* Writes choice number `idx` of "a|b|c" into buf; returns 0, or -1 if there is none. */
static int choice_name(const char *choices, int idx, char *buf, size_t len) {
    if (!choices || idx < 0) return -1;
    const char *p = choices;
    for (int i = 0; i < idx; i++) {
        p = strchr(p, '|');
        if (!p) return -1;
        p++;
    }
    const char *bar = strchr(p, '|');
    size_t n = bar ? (size_t)(bar - p) : strlen(p);
    if (n >= len) n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return 0;
}

/* Shortest "%g" text that reads back as d (YAML spelling for infinities). */
static const char *fmt_double(char buf[40], double d) {
    if (isinf(d)) return d < 0 ? "-.inf" : ".inf";
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 40, "%.*g", prec, d);
        if (strtod(buf, NULL) == d) break;
    }
    return buf;
}

/* Sets field f from one scalar event. Writes the struct only when the value is valid. */
static int apply_scalar(cfg_ctx *c, const tb_cfg_field *f, const char *key,
                        const yaml_event_t *ev) {
    const char *s = (const char *)ev->data.scalar.value;
    size_t slen = ev->data.scalar.length;
    int line = mark_line(ev->start_mark);
    char *dst = (char *)c->obj + f->offset;
    int plain = is_plain(ev);
    if (scalar_is_null(ev) && f->type != TB_CFG_STRING && f->type != TB_CFG_STRLIST)
        return fail(c, line, key, "null is not allowed here (expected %s); remove the key "
                    "to get the default", type_name(f->type));
    if (strlen(s) != slen) return fail(c, line, key, "value contains a NUL byte");
    switch (f->type) {
    case TB_CFG_INT: {
        int64_t v = 0;
        double d;
        int r = plain ? text_to_int(s, &v) : -1;
        if (r < 0) {
            /* A float that is a whole number ("1e3") counts as that integer. */
            if (!plain || text_to_double(s, &d) != 0 || d != d ||
                (isfinite(d) && d != floor(d)))
                return fail(c, line, key, "%s is not an integer", s);
            if (!(d >= -9.2233720368547758e18 && d < 9.2233720368547758e18)) r = 1;
            else v = (int64_t)d, r = 0;
        }
        if (r == 1 || (range_active(f) && (v < range_lo_i64(f) || v > range_hi_i64(f)))) {
            if (range_active(f))
                return fail(c, line, key, "%s is out of range [%lld, %lld]", s,
                            (long long)range_lo_i64(f), (long long)range_hi_i64(f));
            return fail(c, line, key, "%s is out of the 64-bit integer range", s);
        }
        memcpy(dst, &v, sizeof v);
        return 0;
    }
    case TB_CFG_DOUBLE: {
        double d = 0;
        int64_t v;
        int r = plain ? text_to_double(s, &d) : -1;
        if (r == 1) return fail(c, line, key, "%s (not a number) is not allowed", s);
        if (r < 0) {
            if (!plain || text_to_int(s, &v) != 0) return fail(c, line, key, "%s is not a number", s);
            d = (double)v;
        }
        char lo[40], hi[40];
        if (range_active(f) && !(d >= f->min && d <= f->max))
            return fail(c, line, key, "%s is out of range [%s, %s]", s, fmt_double(lo, f->min),
                        fmt_double(hi, f->max));
        memcpy(dst, &d, sizeof d);
        return 0;
    }
    case TB_CFG_BOOL: {
        int b;
        if (!plain || text_to_bool(s, &b) != 0)
            return fail(c, line, key, "%s is not a bool (use true/false, yes/no or on/off)", s);
        memcpy(dst, &b, sizeof b);
        return 0;
    }
    case TB_CFG_STRING: {
        if (scalar_is_null(ev)) s = "", slen = 0;
        if (slen + 1 > f->size)
            return fail(c, line, key, "string of %zu bytes is too long (at most %zu)", slen,
                        f->size ? f->size - 1 : 0);
        memcpy(dst, s, slen + 1);
        return 0;
    }
    case TB_CFG_ENUM: {
        int idx = choice_index(f->choices, s);
        if (idx < 0) return fail(c, line, key, "\"%s\" is not one of %s", s, f->choices);
        memcpy(dst, &idx, sizeof idx);
        return 0;
    }
    default:
        return fail(c, line, key, "expected %s, got a scalar", type_name(f->type));
    }
}

static int list_add(cfg_ctx *c, const tb_cfg_field *f, const char *key, tb_cfg_strlist *l,
                    const yaml_event_t *ev) {
    const char *s = (const char *)ev->data.scalar.value;
    size_t slen = ev->data.scalar.length;
    int line = mark_line(ev->start_mark);
    if (scalar_is_null(ev) || slen == 0) return fail(c, line, key, "empty list item");
    if (strlen(s) != slen) return fail(c, line, key, "list item contains a NUL byte");
    if (l->count >= TB_CFG_STRLIST_MAX)
        return fail(c, line, key, "more than %d list items", TB_CFG_STRLIST_MAX);
    if (slen >= sizeof l->items[0])
        return fail(c, line, key, "list item of %zu bytes is too long (at most %zu)", slen,
                    sizeof l->items[0] - 1);
    if (f->choices && choice_index(f->choices, s) < 0)
        return fail(c, line, key, "list item \"%s\" is not one of %s", s, f->choices);
    memcpy(l->items[l->count++], s, slen + 1);
    return 0;
}

/* Sets field f from the node that starts with `ev` (consumed here, events of a sequence
 * too). `key_line` is where the key stands, for type mismatches. */
static int apply_node(cfg_ctx *c, const tb_cfg_field *f, const char *key, int key_line,
                      yaml_event_t *ev) {
    if (ev->type == YAML_ALIAS_EVENT)
        return fail(c, key_line, key, "aliases (*name) are not supported");
    if (f->type == TB_CFG_STRLIST) {
        tb_cfg_strlist l;
        memset(&l, 0, sizeof l);
        if (ev->type == YAML_SCALAR_EVENT) {
            if (!scalar_is_null(ev) && list_add(c, f, key, &l, ev) < 0) return -1;
        } else if (ev->type == YAML_SEQUENCE_START_EVENT) {
            for (;;) {
                yaml_event_t it;
                if (next_event(c, &it) < 0) return -1;
                int r = 0;
                if (it.type == YAML_SEQUENCE_END_EVENT) {
                    yaml_event_delete(&it);
                    break;
                }
                if (it.type != YAML_SCALAR_EVENT)
                    r = fail(c, mark_line(it.start_mark), key,
                             "list items must be scalars, got %s", event_noun(&it));
                else
                    r = list_add(c, f, key, &l, &it);
                yaml_event_delete(&it);
                if (r < 0) return -1;
            }
        } else {
            return fail(c, key_line, key, "expected a list of strings, got %s", event_noun(ev));
        }
        memcpy((char *)c->obj + f->offset, &l, sizeof l);
        return 0;
    }
    if (ev->type != YAML_SCALAR_EVENT)
        return fail(c, key_line, key, "expected %s, got %s", type_name(f->type),
                    event_noun(ev));
    return apply_scalar(c, f, key, ev);
}

/* ------------------------------------------------------------------ documents */

static int seen_add(cfg_ctx *c, const char *path, int line, const char *key) {
    for (size_t i = 0; i < c->nseen; i++)
        if (strcmp(c->seen[i].key, path) == 0)
            return fail(c, line, key, "duplicate key (first given at line %d)", c->seen[i].line);
    if (c->nseen == c->capseen) {
        size_t cap = c->capseen ? 2 * c->capseen : 32;
        seen_key *n = realloc(c->seen, cap * sizeof *n);
        if (!n) return fail(c, line, key, "out of memory");
        c->seen = n;
        c->capseen = cap;
    }
    snprintf(c->seen[c->nseen].key, KEY_MAX, "%s", path);
    c->seen[c->nseen++].line = line;
    return 0;
}

static void mark_set(cfg_ctx *c, const char *path) {
    int idx = tb_cfg_find(c->schema, path);
    if (idx >= 0 && c->was_set) c->was_set[idx] = 1;
}

/* Reads the keys of a mapping whose MAPPING_START was consumed, through MAPPING_END. */
static int parse_mapping(cfg_ctx *c, const char *prefix, int depth) {
    if (depth > 32) return fail(c, 0, prefix, "mappings nested too deep");
    char path[KEY_MAX];
    const char *saved_key = c->cur_key;
    for (;;) {
        yaml_event_t kev;
        if (next_event(c, &kev) < 0) return -1;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            c->cur_key = saved_key;
            return 0;
        }
        int kline = mark_line(kev.start_mark);
        if (kev.type != YAML_SCALAR_EVENT) {
            const char *noun = event_noun(&kev);
            yaml_event_delete(&kev);
            return fail(c, kline, prefix[0] ? prefix : "(top)",
                        "keys must be plain words, got %s", noun);
        }
        const char *k = (const char *)kev.data.scalar.value;
        int n = prefix[0] ? snprintf(path, sizeof path, "%s.%s", prefix, k)
                          : snprintf(path, sizeof path, "%s", k);
        yaml_event_delete(&kev);
        if (n < 0 || (size_t)n >= sizeof path)
            return fail(c, kline, prefix[0] ? prefix : "(top)", "key too long");
        if (seen_add(c, path, kline, path) < 0) return -1;
        int idx = tb_cfg_find(c->schema, path);
        int section = is_section(c->schema, path);
        if (idx < 0 && !section) return fail(c, kline, path, "unknown key");
        /* Syntax errors name this key until the next one is read. */
        c->cur_key = path;
        yaml_event_t vev;
        if (next_event(c, &vev) < 0) return -1;
        int r;
        if (section) {
            if (vev.type == YAML_MAPPING_START_EVENT) {
                mark_set(c, path);
                r = parse_mapping(c, path, depth + 1);
            } else if (vev.type == YAML_SCALAR_EVENT && scalar_is_null(&vev)) {
                r = 0; /* "model:" with every key inside commented out */
            } else {
                r = fail(c, kline, path, "expected a mapping (a section of keys), got %s",
                         event_noun(&vev));
            }
        } else {
            r = apply_node(c, &c->schema->fields[idx], path, kline, &vev);
            if (r == 0 && c->was_set) c->was_set[idx] = 1;
        }
        yaml_event_delete(&vev);
        if (r < 0) return -1;
    }
}

static int ctx_open(cfg_ctx *c, const tb_cfg_schema *schema, void *obj, const char *name,
                    const char *text, size_t len, unsigned char *was_set, int with_line,
                    tb_err *err) {
    memset(c, 0, sizeof *c);
    c->schema = schema;
    c->obj = obj;
    c->name = name;
    c->text = text;
    c->text_len = len;
    c->was_set = was_set;
    c->with_line = with_line;
    c->cur_key = "(top)";
    c->err = err;
    if (!yaml_parser_initialize(&c->parser)) return tb_err_set(err, "%s: out of memory", name);
    yaml_parser_set_input_string(&c->parser, (const unsigned char *)text, len);
    return 0;
}

static void ctx_close(cfg_ctx *c) {
    yaml_parser_delete(&c->parser);
    free(c->seen);
}

/* Reads every event once without applying anything, so a YAML syntax error anywhere in
 * the input is reported before any value error, naming the key it follows. */
static int syntax_pass(cfg_ctx *c) {
    enum { MAXD = 64 };
    struct { int mapping, want_key; char key[64]; } st[MAXD];
    int depth = 0;
    char ctx_key[KEY_MAX] = "(top)";
    c->cur_key = ctx_key;
    for (;;) {
        yaml_event_t ev;
        if (next_event(c, &ev) < 0) return -1;
        yaml_event_type_t t = ev.type;
        int in_map = depth > 0 && st[depth - 1].mapping;
        if (t == YAML_SCALAR_EVENT || t == YAML_ALIAS_EVENT || t == YAML_MAPPING_START_EVENT ||
            t == YAML_SEQUENCE_START_EVENT) {
            if (in_map && st[depth - 1].want_key) {
                snprintf(st[depth - 1].key, sizeof st[0].key, "%s",
                         t == YAML_SCALAR_EVENT ? (const char *)ev.data.scalar.value : "?");
                st[depth - 1].want_key = 0;
            } else if (in_map) {
                st[depth - 1].want_key = 1;
            }
            if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT) {
                if (depth == MAXD) {
                    yaml_event_delete(&ev);
                    return fail(c, mark_line(ev.start_mark), ctx_key, "nested too deep");
                }
                st[depth].mapping = t == YAML_MAPPING_START_EVENT;
                st[depth].want_key = 1;
                st[depth].key[0] = '\0';
                depth++;
            }
        } else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT) {
            if (depth > 0) depth--;
        }
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT) break;
        /* The dotted path of the innermost key read so far. */
        size_t n = 0;
        ctx_key[0] = '\0';
        for (int i = 0; i < depth; i++) {
            if (!st[i].mapping || !st[i].key[0]) continue;
            int w = snprintf(ctx_key + n, sizeof ctx_key - n, "%s%s", n ? "." : "", st[i].key);
            if (w < 0 || (size_t)w >= sizeof ctx_key - n) break;
            n += (size_t)w;
        }
        if (!n) snprintf(ctx_key, sizeof ctx_key, "(top)");
    }
    c->cur_key = "(top)";
    return 0;
}

/* Stream of at most one document whose root is a mapping (or empty). */
static int parse_stream(cfg_ctx *c) {
    yaml_event_t ev;
    int docs = 0;
    for (;;) {
        if (next_event(c, &ev) < 0) return -1;
        yaml_event_type_t t = ev.type;
        int line = mark_line(ev.start_mark);
        int r = 0;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        if (t == YAML_DOCUMENT_START_EVENT && ++docs > 1)
            r = fail(c, line, "(top)", "only one YAML document is allowed");
        else if (t == YAML_MAPPING_START_EVENT)
            r = parse_mapping(c, "", 0);
        else if (t == YAML_SCALAR_EVENT && !scalar_is_null(&ev))
            r = fail(c, line, "(top)", "expected a mapping of keys, got a scalar");
        else if (t == YAML_SEQUENCE_START_EVENT || t == YAML_ALIAS_EVENT)
            r = fail(c, line, "(top)", "expected a mapping of keys, got %s", event_noun(&ev));
        yaml_event_delete(&ev);
        if (r < 0) return -1;
    }
}

static int load_text(void *obj, const tb_cfg_schema *schema, const char *name,
                     const char *text, size_t len, unsigned char *was_set, tb_err *err) {
    cfg_ctx c;
    if (ctx_open(&c, schema, obj, name, text, len, was_set, 1, err) < 0) return -1;
    int r = syntax_pass(&c);
    ctx_close(&c);
    if (r < 0) return -1;
    if (ctx_open(&c, schema, obj, name, text, len, was_set, 1, err) < 0) return -1;
    r = parse_stream(&c);
    ctx_close(&c);
    return r;
}

int tb_cfg_load_string(void *obj, const tb_cfg_schema *schema, const char *name,
                       const char *yaml, unsigned char *was_set, tb_err *err) {
    return load_text(obj, schema, name, yaml, strlen(yaml), was_set, err);
}

int tb_cfg_load_file(void *obj, const tb_cfg_schema *schema, const char *path,
                     unsigned char *was_set, tb_err *err) {
    if (tb_cfg_defaults(obj, schema, err) < 0) return -1;
    if (was_set) memset(was_set, 0, schema->count);
    FILE *f = fopen(path, "rb");
    if (!f) return tb_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(FILE_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        return tb_err_set(err, "%s: out of memory", path);
    }
    size_t len = fread(buf, 1, FILE_MAX_BYTES + 1, f);
    int rerr = ferror(f);
    fclose(f);
    int r;
    if (rerr) {
        r = tb_err_set(err, "%s: read error", path);
    } else if (len > FILE_MAX_BYTES) {
        r = tb_err_set(err, "%s: larger than %u bytes; not a config file", path, FILE_MAX_BYTES);
    } else {
        r = load_text(obj, schema, path, buf, len, was_set, err);
    }
    free(buf);
    return r;
}

/* Parses `text` as one YAML node (scalar or flow sequence) and stores it in field idx.
 * Messages are "NAME: KEY: WHY". */
static int set_from_text(void *obj, const tb_cfg_schema *schema, int idx, const char *name,
                         const char *text, tb_err *err) {
    const tb_cfg_field *f = &schema->fields[idx];
    cfg_ctx c;
    if (ctx_open(&c, schema, obj, name, text, strlen(text), NULL, 0, err) < 0) return -1;
    c.cur_key = f->key;
    int r = 0, got = 0;
    for (;;) {
        yaml_event_t ev;
        if (next_event(&c, &ev) < 0) {
            r = -1;
            break;
        }
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_DOCUMENT_START_EVENT && got) {
            r = fail(&c, 0, f->key, "more than one value");
        } else if (t == YAML_SCALAR_EVENT || t == YAML_SEQUENCE_START_EVENT ||
                   t == YAML_MAPPING_START_EVENT || t == YAML_ALIAS_EVENT) {
            got = 1;
            r = apply_node(&c, f, f->key, 0, &ev);
        }
        yaml_event_delete(&ev);
        if (r < 0) break;
    }
    if (r == 0 && !got) {
        /* Empty text is a null value. */
        yaml_event_t ev;
        memset(&ev, 0, sizeof ev);
        ev.type = YAML_SCALAR_EVENT;
        ev.data.scalar.value = (yaml_char_t *)"";
        ev.data.scalar.style = YAML_PLAIN_SCALAR_STYLE;
        r = apply_node(&c, f, f->key, 0, &ev);
    }
    ctx_close(&c);
    return r;
}

int tb_cfg_set(void *obj, const tb_cfg_schema *schema, const char *assignment,
               unsigned char *was_set, tb_err *err) {
    const char *eq = strchr(assignment, '=');
    if (!eq) return tb_err_set(err, "command line: %s: expected KEY=VALUE", assignment);
    char key[KEY_MAX];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof key) return tb_err_set(err, "command line: %.64s...: key too long", assignment);
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    int idx = tb_cfg_find(schema, key);
    if (idx < 0 || schema->fields[idx].type == TB_CFG_SECTION) {
        if (is_section(schema, key))
            return tb_err_set(err, "command line: %s: is a section; set its keys (%s.KEY=VALUE)",
                              key, key);
        return tb_err_set(err, "command line: %s: unknown key", key);
    }
    if (set_from_text(obj, schema, idx, "command line", eq + 1, err) < 0) return -1;
    if (was_set) was_set[idx] = 1;
    return 0;
}

/* ------------------------------------------------------------------ defaults */

static size_t field_bytes(const tb_cfg_field *f) {
    switch (f->type) {
    case TB_CFG_INT: return sizeof(int64_t);
    case TB_CFG_DOUBLE: return sizeof(double);
    case TB_CFG_BOOL:
    case TB_CFG_ENUM: return sizeof(int);
    case TB_CFG_STRING: return f->size;
    case TB_CFG_STRLIST: return sizeof(tb_cfg_strlist);
    case TB_CFG_SECTION: return 0;
    }
    return 0;
}

/* Checks what the loader relies on; a failure is a bug in the schema. */
static int schema_check(const tb_cfg_schema *s, tb_err *err) {
    const char *name = s->name ? s->name : "config";
    for (size_t i = 0; i < s->count; i++) {
        const tb_cfg_field *f = &s->fields[i];
        if (!f->key || !f->key[0] || strlen(f->key) >= KEY_MAX)
            return tb_err_set(err, "schema %s: field %zu: missing or overlong key", name, i);
        if ((int)f->type < TB_CFG_INT || (int)f->type > TB_CFG_SECTION)
            return tb_err_set(err, "schema %s: %s: bad type %d", name, f->key, (int)f->type);
        if (f->type == TB_CFG_STRING && f->size == 0)
            return tb_err_set(err, "schema %s: %s: string field with size 0", name, f->key);
        if (f->type == TB_CFG_ENUM && (!f->choices || !f->choices[0]))
            return tb_err_set(err, "schema %s: %s: enum field without choices", name, f->key);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->fields[j].key, f->key) == 0)
                return tb_err_set(err, "schema %s: %s: declared twice", name, f->key);
        if (f->type != TB_CFG_SECTION && is_section(s, f->key))
            return tb_err_set(err, "schema %s: %s: a value and also a section of other keys",
                              name, f->key);
    }
    return 0;
}

int tb_cfg_defaults(void *obj, const tb_cfg_schema *schema, tb_err *err) {
    if (schema_check(schema, err) < 0) return -1;
    char name[128];
    snprintf(name, sizeof name, "schema %s: default", schema->name ? schema->name : "config");
    for (size_t i = 0; i < schema->count; i++) {
        const tb_cfg_field *f = &schema->fields[i];
        if (f->type == TB_CFG_SECTION) continue;
        memset((char *)obj + f->offset, 0, field_bytes(f));
        if (f->def && set_from_text(obj, schema, (int)i, name, f->def, err) < 0) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ writing */

/* Writes s as a YAML scalar that reads back as exactly s: plain when it is a simple word
 * that YAML would not take for null, else double-quoted with escapes. */
static void write_str(FILE *out, const char *s, size_t len) {
    int null_word = len == 4 && (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 ||
                                 memcmp(s, "NULL", 4) == 0);
    int plain = len > 0 && !null_word &&
                ((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '/' ||
                 s[0] == '_');
    for (const char *p = s; plain && p < s + len; p++)
        plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.' || *p == '/';
    if (plain) {
        fwrite(s, 1, len, out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; p < (const unsigned char *)s + len; p++) {
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", out);
        else if (*p == '\t') fputs("\\t", out);
        else if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\x%02x", *p);
        else fputc(*p, out);
    }
    fputc('"', out);
}

static void write_double(FILE *out, double d) {
    char buf[40];
    fputs(fmt_double(buf, d), out);
}

static void write_value(FILE *out, const tb_cfg_field *f, const void *obj) {
    const char *src = (const char *)obj + f->offset;
    switch (f->type) {
    case TB_CFG_INT: {
        int64_t v;
        memcpy(&v, src, sizeof v);
        fprintf(out, "%lld", (long long)v);
        break;
    }
    case TB_CFG_DOUBLE: {
        double d;
        memcpy(&d, src, sizeof d);
        write_double(out, d);
        break;
    }
    case TB_CFG_BOOL: {
        int b;
        memcpy(&b, src, sizeof b);
        fputs(b ? "true" : "false", out);
        break;
    }
    case TB_CFG_STRING: {
        write_str(out, src, strnlen(src, f->size));
        break;
    }
    case TB_CFG_ENUM: {
        int idx;
        char name[128];
        memcpy(&idx, src, sizeof idx);
        if (choice_name(f->choices, idx, name, sizeof name) == 0)
            write_str(out, name, strlen(name));
        else fprintf(out, "~ # invalid index %d", idx);
        break;
    }
    case TB_CFG_STRLIST: {
        tb_cfg_strlist l;
        memcpy(&l, src, sizeof l);
        fputc('[', out);
        for (int i = 0; i < l.count && i < TB_CFG_STRLIST_MAX; i++) {
            if (i) fputs(", ", out);
            write_str(out, l.items[i], strnlen(l.items[i], sizeof l.items[i]));
        }
        fputc(']', out);
        break;
    }
    case TB_CFG_SECTION:
        break;
    }
}

static void write_comment(FILE *out, int indent, const char *text) {
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        fprintf(out, "%*s#%s%.*s\n", indent, "", n ? " " : "", (int)n, p);
        if (!nl) break;
        p = nl + 1;
    }
}

/* "int, range [1, 65536], default 256" and the like, for example files. */
static void write_type_line(FILE *out, int indent, const tb_cfg_field *f, const void *defs) {
    fprintf(out, "%*s# ", indent, "");
    switch (f->type) {
    case TB_CFG_INT:
        fputs("integer", out);
        if (range_active(f))
            fprintf(out, ", range [%lld, %lld]", (long long)range_lo_i64(f),
                    (long long)range_hi_i64(f));
        break;
    case TB_CFG_DOUBLE:
        fputs("number", out);
        if (range_active(f)) {
            fputs(", range [", out);
            write_double(out, f->min);
            fputs(", ", out);
            write_double(out, f->max);
            fputc(']', out);
        }
        break;
    case TB_CFG_BOOL: fputs("bool (true/false)", out); break;
    case TB_CFG_STRING: fprintf(out, "string of at most %zu bytes", f->size - 1); break;
    case TB_CFG_ENUM: fprintf(out, "one of %s", f->choices); break;
    case TB_CFG_STRLIST:
        fprintf(out, "list of at most %d strings", TB_CFG_STRLIST_MAX);
        if (f->choices) fprintf(out, ", each one of %s", f->choices);
        break;
    case TB_CFG_SECTION: break;
    }
    fputs(", default ", out);
    write_value(out, f, defs);
    fputc('\n', out);
}

/* Writes the keys under `prefix` (schema order; a section where its first key appears). */
static void write_level(FILE *out, const tb_cfg_schema *s, const void *obj, const char *prefix,
                        int depth, int comments) {
    size_t plen = strlen(prefix);
    int indent = 2 * depth, first = 1;
    for (size_t i = 0; i < s->count; i++) {
        const char *k = s->fields[i].key;
        if (plen && !(strncmp(k, prefix, plen) == 0 && k[plen] == '.')) continue;
        const char *seg = plen ? k + plen + 1 : k;
        size_t seglen = strcspn(seg, ".");
        /* Only at the first field that introduces this segment. */
        int earlier = 0;
        for (size_t j = 0; j < i && !earlier; j++) {
            const char *kj = s->fields[j].key;
            if (plen && !(strncmp(kj, prefix, plen) == 0 && kj[plen] == '.')) continue;
            const char *sj = plen ? kj + plen + 1 : kj;
            earlier = strncmp(sj, seg, seglen) == 0 && (sj[seglen] == '.' || sj[seglen] == '\0');
        }
        if (earlier) continue;
        char path[KEY_MAX];
        snprintf(path, sizeof path, "%.*s", (int)(seg - k + (ptrdiff_t)seglen), k);
        int idx = tb_cfg_find(s, path);
        const tb_cfg_field *f = idx >= 0 ? &s->fields[idx] : NULL;
        if (comments && (!first || depth == 0)) fputc('\n', out);
        first = 0;
        if (comments && f && f->help) write_comment(out, indent, f->help);
        if (f && f->type != TB_CFG_SECTION) {
            /* A number without a default is 0; when 0 is outside its range the example
             * shows the key commented out, so the file still loads. */
            int off = comments && !f->def && range_active(f) &&
                      ((f->type == TB_CFG_INT && (range_lo_i64(f) > 0 || range_hi_i64(f) < 0)) ||
                       (f->type == TB_CFG_DOUBLE && (f->min > 0 || f->max < 0)));
            if (comments) write_type_line(out, indent, f, obj);
            if (off) fprintf(out, "%*s# no default: set a value in range\n", indent, "");
            fprintf(out, "%*s%s%.*s: ", indent, "", off ? "# " : "", (int)seglen, seg);
            write_value(out, f, obj);
            fputc('\n', out);
            continue;
        }
        int has_keys = 0;
        for (size_t j = 0; j < s->count && !has_keys; j++)
            has_keys = strncmp(s->fields[j].key, path, strlen(path)) == 0 &&
                       s->fields[j].key[strlen(path)] == '.';
        fprintf(out, "%*s%.*s:%s\n", indent, "", (int)seglen, seg, has_keys ? "" : " {}");
        if (has_keys) write_level(out, s, obj, path, depth + 1, comments);
    }
}

/* Room for every field of the caller's struct, so defaults can be rendered without it. */
static size_t schema_extent(const tb_cfg_schema *s) {
    size_t n = 0;
    for (size_t i = 0; i < s->count; i++) {
        size_t end = s->fields[i].offset + field_bytes(&s->fields[i]);
        if (end > n) n = end;
    }
    return n;
}

int tb_cfg_write_example(FILE *out, const tb_cfg_schema *schema) {
    tb_err err;
    void *defs = calloc(1, schema_extent(schema) + 16);
    if (!defs) return -1;
    if (tb_cfg_defaults(defs, schema, &err) < 0) {
        fprintf(out, "# cannot write an example: %s\n", err.msg);
        free(defs);
        return -1;
    }
    const char *name = schema->name ? schema->name : "tb";
    fprintf(out, "# %s: example configuration.\n"
                 "# Every key is shown with its default value; a key left out keeps its\n"
                 "# default, an unknown key or a bad value stops the daemon (exit 78).\n",
            name);
    write_level(out, schema, defs, "", 0, 1);
    free(defs);
    return ferror(out) || fflush(out) ? -1 : 0;
}

int tb_cfg_write_values(FILE *out, const void *obj, const tb_cfg_schema *schema) {
    fprintf(out, "# %s: configuration values\n", schema->name ? schema->name : "tb");
    write_level(out, schema, obj, "", 0, 0);
    return ferror(out) || fflush(out) ? -1 : 0;
}
