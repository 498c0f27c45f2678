/* One raw document -> its text: UTF-8 check, JSON field extraction, length filter. */
#ifndef TB_PF_DOC_H
#define TB_PF_DOC_H
#include <stddef.h>
#include <stdint.h>

#include "reader.h"
#include "stream.h"

/* Non-zero when s[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF). *bad_at (may be NULL) gets the offset of the first bad byte. */
int tb_utf8_valid(const char *s, size_t n, size_t *bad_at);

/* Code points of valid UTF-8 s[0..n) after stripping leading and trailing whitespace
 * (the code points Python's str.isspace() accepts, as the reference's strip() does). */
size_t tb_doc_stripped_chars(const char *s, size_t n);

typedef struct tb_doc_text {
    const char *text; /* points into raw or into json */
    size_t len;
    void *json;       /* json_t to release with tb_doc_text_free, or NULL */
} tb_doc_text;

/* 0 = *out holds the text; 1 = bad document (*kind and why set). field NULL: "text",
 * falling back to "raw_content". */
int tb_doc_extract(tb_doc_text *out, const char *raw, size_t n, tb_shard_format fmt,
                   const char *field, tb_bad_kind *kind, char *why, size_t why_len);
void tb_doc_text_free(tb_doc_text *t);

#endif
