/* A small JSON library for Ferry plugins in C: checks and reads JSON text
 * without building a tree (a value is a span of the text it came in), and
 * writes JSON into a growing buffer. Written for the plugins' needs: params
 * in, results out. No dependencies beyond libc.
 *
 * Reading:
 *   ferry_json_valid(text, len)         is it exactly one JSON value?
 *   ferry_json_get(object, "key", &v)   the member's value, as a span
 *   ferry_json_string(v, &s, &len)      a string value, unescaped (malloc)
 *   ferry_json_int(v, &n)               an integer value
 * Writing:
 *   ferry_json_buf b = {0};
 *   ferry_json_raw(&b, "{\"a\":", 5); ferry_json_str(&b, s, len); ...
 *   b.ptr / b.len hold the text (malloc'd; hand it to the host or free it).
 */
#ifndef FERRY_JSON_H
#define FERRY_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *ptr;
    size_t len;
} ferry_json_span;

/* True when `text` is exactly one JSON value (whitespace around it allowed),
 * nested at most 128 deep. */
bool ferry_json_valid(const char *text, size_t len);

/* The kind of a value, from its first character: '{', '[', '"', 'n'
 * (number), 't', 'f', 'z' (null), or 0 for none. */
char ferry_json_kind(ferry_json_span value);

/* The value of member `key` of `object` (a valid JSON object). */
bool ferry_json_get(ferry_json_span object, const char *key, ferry_json_span *out);

/* A string value, unescaped, as a malloc'd UTF-8 buffer (NUL-terminated;
 * `len` excludes the NUL). False when `value` is not a string. */
bool ferry_json_string(ferry_json_span value, char **out, size_t *len);

/* An integer value that fits in int64_t. */
bool ferry_json_int(ferry_json_span value, int64_t *out);

/* A growing output buffer; start from {0}. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} ferry_json_buf;

/* Appends bytes as they are (for JSON text already valid). */
void ferry_json_raw(ferry_json_buf *b, const char *s, size_t len);
/* Appends a NUL-terminated piece of JSON text as it is. */
void ferry_json_lit(ferry_json_buf *b, const char *s);
/* Appends `s` as a JSON string, quoted and escaped. */
void ferry_json_str(ferry_json_buf *b, const char *s, size_t len);
/* Appends an integer. */
void ferry_json_i64(ferry_json_buf *b, int64_t n);
void ferry_json_u64(ferry_json_buf *b, uint64_t n);

#endif
