/* See ferry_json.h. A recursive-descent checker: every reader first skips
 * values the same way, so a span handed out is always one whole value. */
#include "ferry_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 128

static const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Past the closing quote of the string starting at `p` (on its quote). */
static const char *skip_string(const char *p, const char *end) {
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (++p >= end) return NULL;
            switch (*p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p++;
                break;
            case 'u':
                if (end - p < 5) return NULL;
                for (int i = 1; i <= 4; i++)
                    if (hex(p[i]) < 0) return NULL;
                p += 5;
                break;
            default:
                return NULL;
            }
        } else {
            p++;
        }
    }
    return NULL;
}

static const char *skip_number(const char *p, const char *end) {
    if (p < end && *p == '-') p++;
    if (p >= end) return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return NULL;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return NULL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return NULL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    return p;
}

static const char *skip_word(const char *p, const char *end, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(end - p) < n || memcmp(p, word, n) != 0) return NULL;
    return p + n;
}

/* Past the value starting at `p` (no whitespace before it), or NULL. */
static const char *skip_value(const char *p, const char *end, int depth) {
    if (p >= end || depth > MAX_DEPTH) return NULL;
    switch (*p) {
    case '"':
        return skip_string(p, end);
    case 't':
        return skip_word(p, end, "true");
    case 'f':
        return skip_word(p, end, "false");
    case 'n':
        return skip_word(p, end, "null");
    case '[':
    case '{': {
        char close = *p == '[' ? ']' : '}';
        bool object = *p == '{';
        p = ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (object) {
                if (p >= end || *p != '"') return NULL;
                p = skip_string(p, end);
                if (!p) return NULL;
                p = ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p = ws(p + 1, end);
            }
            p = skip_value(p, end, depth + 1);
            if (!p) return NULL;
            p = ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p = ws(p + 1, end);
        }
    }
    default:
        return skip_number(p, end);
    }
}

bool ferry_json_valid(const char *text, size_t len) {
    const char *end = text + len;
    const char *p = skip_value(ws(text, end), end, 0);
    return p && ws(p, end) == end;
}

char ferry_json_kind(ferry_json_span v) {
    const char *p = ws(v.ptr, v.ptr + v.len);
    if (p >= v.ptr + v.len) return 0;
    switch (*p) {
    case '{': case '[': case '"': case 't': case 'f': return *p;
    case 'n': return 'z';
    default: return 'n';
    }
}

bool ferry_json_get(ferry_json_span object, const char *key, ferry_json_span *out) {
    const char *end = object.ptr + object.len;
    const char *p = ws(object.ptr, end);
    if (p >= end || *p != '{') return false;
    p = ws(p + 1, end);
    size_t key_len = strlen(key);
    while (p < end && *p == '"') {
        const char *name = p + 1;
        p = skip_string(p, end);
        if (!p) return false;
        /* Keys are compared as written: one spelled with escapes does not
         * match (plugins' keys are plain names). */
        bool match = (size_t)(p - 1 - name) == key_len && memcmp(name, key, key_len) == 0;
        p = ws(p, end);
        if (p >= end || *p != ':') return false;
        p = ws(p + 1, end);
        const char *value = p;
        p = skip_value(p, end, 1);
        if (!p) return false;
        if (match) {
            out->ptr = value;
            out->len = (size_t)(p - value);
            return true;
        }
        p = ws(p, end);
        if (p < end && *p == ',') p = ws(p + 1, end);
    }
    return false;
}

static void put_utf8(char **q, uint32_t cp) {
    char *o = *q;
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *q = o;
}

static uint32_t hex4(const char *p) {
    return (uint32_t)(hex(p[0]) << 12 | hex(p[1]) << 8 | hex(p[2]) << 4 | hex(p[3]));
}

bool ferry_json_string(ferry_json_span v, char **out, size_t *len) {
    const char *end = v.ptr + v.len;
    const char *p = ws(v.ptr, end);
    if (p >= end || *p != '"') return false;
    const char *last = skip_string(p, end);
    if (!last) return false;
    /* Unescaped text is never longer than the escaped one. */
    char *s = malloc((size_t)(last - p) + 1);
    if (!s) return false;
    char *q = s;
    for (p++; p < last - 1; p++) {
        if (*p != '\\') {
            *q++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'b': *q++ = '\b'; break;
        case 'f': *q++ = '\f'; break;
        case 'n': *q++ = '\n'; break;
        case 'r': *q++ = '\r'; break;
        case 't': *q++ = '\t'; break;
        case 'u': {
            uint32_t cp = hex4(p + 1);
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p + 6 < last && p[1] == '\\' && p[2] == 'u') {
                uint32_t low = hex4(p + 3);
                if (low >= 0xDC00 && low < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    p += 6;
                }
            }
            if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate */
            put_utf8(&q, cp);
            break;
        }
        default: *q++ = *p; break; /* " \ / */
        }
    }
    *q = 0;
    *out = s;
    *len = (size_t)(q - s);
    return true;
}

bool ferry_json_int(ferry_json_span v, int64_t *out) {
    const char *end = v.ptr + v.len;
    const char *p = ws(v.ptr, end);
    bool negative = p < end && *p == '-';
    if (negative) p++;
    if (p >= end || *p < '0' || *p > '9') return false;
    uint64_t n = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        uint64_t digit = (uint64_t)(*p++ - '0');
        if (n > (UINT64_MAX - digit) / 10) return false;
        n = n * 10 + digit;
    }
    if (ws(p, end) != end) return false; /* a fraction or an exponent */
    if (negative ? n > (uint64_t)INT64_MAX + 1 : n > (uint64_t)INT64_MAX) return false;
    *out = negative ? (int64_t)(0 - n) : (int64_t)n;
    return true;
}

static void reserve(ferry_json_buf *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->len + more) cap *= 2;
    char *grown = realloc(b->ptr, cap);
    if (!grown) abort(); /* out of memory: the host answers plugin_trap */
    b->ptr = grown;
    b->cap = cap;
}

void ferry_json_raw(ferry_json_buf *b, const char *s, size_t len) {
    reserve(b, len);
    memcpy(b->ptr + b->len, s, len);
    b->len += len;
}

void ferry_json_lit(ferry_json_buf *b, const char *s) { ferry_json_raw(b, s, strlen(s)); }

void ferry_json_str(ferry_json_buf *b, const char *s, size_t len) {
    reserve(b, len + 2);
    b->ptr[b->len++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc = 0;
        switch (c) {
        case '"': esc = '"'; break;
        case '\\': esc = '\\'; break;
        case '\n': esc = 'n'; break;
        case '\r': esc = 'r'; break;
        case '\t': esc = 't'; break;
        case '\b': esc = 'b'; break;
        case '\f': esc = 'f'; break;
        }
        if (esc) {
            char pair[2] = {'\\', esc};
            ferry_json_raw(b, pair, 2);
        } else if (c < 0x20) {
            char u[7];
            snprintf(u, sizeof u, "\\u%04x", c);
            ferry_json_raw(b, u, 6);
        } else {
            reserve(b, 1);
            b->ptr[b->len++] = (char)c;
        }
    }
    reserve(b, 1);
    b->ptr[b->len++] = '"';
}

void ferry_json_i64(ferry_json_buf *b, int64_t n) {
    char digits[24];
    int k = snprintf(digits, sizeof digits, "%lld", (long long)n);
    ferry_json_raw(b, digits, (size_t)k);
}

void ferry_json_u64(ferry_json_buf *b, uint64_t n) {
    char digits[24];
    int k = snprintf(digits, sizeof digits, "%llu", (unsigned long long)n);
    ferry_json_raw(b, digits, (size_t)k);
}
