/* Document text extraction and checks (doc.h). */
#include "doc.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

int tb_utf8_valid(const char *s, size_t n, size_t *bad_at) {
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        /* Fast path: 8 ASCII bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
        } else {
            goto bad;
        }
        if (i + need >= n) goto bad;
        for (size_t k = 1; k <= need; k++) {
            uint8_t d = p[i + k];
            if ((d & 0xc0) != 0x80) goto bad;
            cp = (cp << 6) | (d & 0x3f);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            goto bad;
        i += need + 1;
    }
    return 1;
bad:
    if (bad_at) *bad_at = i;
    return 0;
}

static int is_uspace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 ||
           cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* Decodes the code point at s[i] (valid UTF-8); returns its byte length. */
static size_t decode_at(const uint8_t *s, size_t i, uint32_t *cp) {
    uint8_t c = s[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xe0) {
        *cp = ((uint32_t)(c & 0x1f) << 6) | (s[i + 1] & 0x3f);
        return 2;
    }
    if (c < 0xf0) {
        *cp = ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(s[i + 1] & 0x3f) << 6) |
              (s[i + 2] & 0x3f);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3f) << 12) |
          ((uint32_t)(s[i + 2] & 0x3f) << 6) | (s[i + 3] & 0x3f);
    return 4;
}

size_t tb_doc_stripped_chars(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0, count = 0, trailing = 0;
    int seen = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = decode_at(p, i, &cp);
        if (i + l > n) break;
        i += l;
        if (is_uspace(cp)) {
            if (seen) trailing++;
            continue;
        }
        seen = 1;
        count += trailing + 1;
        trailing = 0;
    }
    return count;
}

int tb_doc_extract(tb_doc_text *out, const char *raw, size_t n, tb_shard_format fmt,
                   const char *field, tb_bad_kind *kind, char *why, size_t why_len) {
    memset(out, 0, sizeof *out);
    size_t bad_at;
    if (!tb_utf8_valid(raw, n, &bad_at)) {
        *kind = TB_BAD_UTF8;
        snprintf(why, why_len, "invalid UTF-8 at byte %zu of the line", bad_at);
        return 1;
    }
    if (fmt != TB_FMT_JSONL) {
        out->text = raw;
        out->len = n;
        return 0;
    }
    json_error_t je;
    json_t *j = json_loadb(raw, n, JSON_ALLOW_NUL, &je);
    if (!j) {
        *kind = TB_BAD_NOT_JSON;
        snprintf(why, why_len, "not JSON: %s (column %d)", je.text, je.column);
        return 1;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *kind = TB_BAD_NOT_JSON;
        snprintf(why, why_len, "not a JSON object");
        return 1;
    }
    json_t *v = json_object_get(j, field ? field : "text");
    if (!v && !field) v = json_object_get(j, "raw_content");
    if (!v || !json_is_string(v)) {
        json_decref(j);
        *kind = TB_BAD_MISSING_FIELD;
        if (field)
            snprintf(why, why_len, "%s field '%s'", v ? "non-string" : "missing", field);
        else
            snprintf(why, why_len, "%s field 'text' / 'raw_content'",
                     v ? "non-string" : "missing");
        return 1;
    }
    out->text = json_string_value(v);
    out->len = json_string_length(v);
    out->json = j;
    return 0;
}

void tb_doc_text_free(tb_doc_text *t) {
    if (t->json) json_decref((json_t *)t->json);
    memset(t, 0, sizeof *t);
}
