
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_SCAN_H_INCLUDED_
#define _NGX_HTTP_LLM_SCAN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_limits.h"

#if (defined __SSE2__)
#include <emmintrin.h>
#endif

/* longest "model" value kept, in raw JSON bytes with the quotes */
#define NGX_HTTP_LLM_MODEL_RAW_MAX   (NGX_HTTP_LLM_MODEL_MAX + 2)

/* a top-level key is only looked at up to this many raw bytes */
#define NGX_HTTP_LLM_KEY_RAW_MAX     48

#define NGX_HTTP_LLM_SCAN_MAX_DEPTH  256


#define NGX_HTTP_LLM_STREAM_ABSENT   0
#define NGX_HTTP_LLM_STREAM_FALSE    1
#define NGX_HTTP_LLM_STREAM_TRUE     2


/*
 * The structural scan of a JSON request body (design.md 1): fed chunk by
 * chunk as the body arrives, it checks the structure (one top-level
 * object, balanced brackets, terminated strings, nothing after the
 * object) and locates the top-level "model" and "stream" members without
 * parsing anything else.  Strings are skipped with memchr(); nested
 * values only have their brackets counted, 64 bytes at a time with SIMD
 * where the CPU has it.
 */

typedef struct {
    off_t         offset;       /* absolute offset of the next byte */

    off_t         object_start; /* the top-level "{" */
    ngx_uint_t    members;      /* of the top-level object */

    off_t         model_start;  /* opening quote of the "model" value */
    off_t         model_end;    /* just past its closing quote; -1: none */
    ngx_uint_t    stream;       /* NGX_HTTP_LLM_STREAM_* */

    const char   *error;        /* why the structure is broken, or NULL */

    ngx_uint_t    state;
    ngx_uint_t    depth;
    ngx_uint_t    member;       /* which top-level member a value is of */
    ngx_uint_t    backslashes;  /* odd backslash run at a chunk's end */

    size_t        key_len;      /* raw bytes of the current top-level key */
    size_t        model_len;    /* raw bytes of the model value */
    size_t        literal_len;

    unsigned      key_escaped:1;
    unsigned      model_too_long:1;

    u_char        key[NGX_HTTP_LLM_KEY_RAW_MAX];
    u_char        model[NGX_HTTP_LLM_MODEL_RAW_MAX];
    u_char        literal[6];

    /* a bit per nesting level above the top: 1 for "[", 0 for "{" */
    u_char        brackets[NGX_HTTP_LLM_SCAN_MAX_DEPTH / 8];
} ngx_http_llm_scan_t;


/*
 * How nested values are skipped: scalar (memchr() per string), or 64
 * bytes at a time with AVX2.  UNSET until the first scan picks the best
 * the CPU has; the bench and the fuzzer may set it.
 */
#define NGX_HTTP_LLM_SIMD_SCALAR     0
#define NGX_HTTP_LLM_SIMD_AVX2       1
#define NGX_HTTP_LLM_SIMD_UNSET      2

extern ngx_uint_t  ngx_http_llm_json_simd;

ngx_uint_t ngx_http_llm_json_simd_best(void);


/*
 * JSON lexical pieces shared by the request scan and the answer reader
 * (ngx_http_llm_answer_json.c).
 */

/* bytes that end a run inside a nested value: strings and brackets */
extern u_char  ngx_http_llm_json_stop[256];

#define ngx_http_llm_json_ws(c)                                               \
    ((c) == ' ' || (c) == '\n' || (c) == '\r' || (c) == '\t')

#define ngx_http_llm_json_literal(c)                                          \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')                \
     || ((c) >= '0' && (c) <= '9') || (c) == '-' || (c) == '+'                \
     || (c) == '.')


/*
 * Skips the bytes of a string up to and including its closing quote;
 * returns the position after the quote, or NULL when the piece ends in
 * the string.  A quote is escaped when an odd run of backslashes stands
 * before it; a run may have begun in the previous piece (*backslashes
 * carries its parity).  Inline: both scanners call it once per string.
 */

static ngx_inline u_char *
ngx_http_llm_json_string_end(ngx_uint_t *backslashes, u_char *p,
    u_char *last)
{
    u_char  *q, *b;

#if (defined __SSE2__)
    int      quote, backslash;
    __m128i  v;

    /*
     * Most strings of a request or an answer are short (names, roles,
     * a chunk's few words): the next 16 bytes looked at inline, a
     * quote with no backslash before it ends the string without a call
     */

    if (last - p >= 16 && *backslashes == 0) {
        v = _mm_loadu_si128((__m128i *) p);
        quote = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
        backslash = _mm_movemask_epi8(_mm_cmpeq_epi8(v,
                                                     _mm_set1_epi8('\\')));

        if (quote && (backslash & ((quote & -quote) - 1)) == 0) {
            return p + __builtin_ctz(quote) + 1;
        }
    }
#endif

    for ( ;; ) {
        q = memchr(p, '"', last - p);

        if (q == NULL) {
            for (b = last; b > p && b[-1] == '\\'; b--) { /* void */ }

            if (b == p) {
                *backslashes ^= (last - b) & 1;

            } else {
                *backslashes = (last - b) & 1;
            }

            return NULL;
        }

        for (b = q; b > p && b[-1] == '\\'; b--) { /* void */ }

        if ((((q - b) & 1) ^ (b == p ? *backslashes : 0)) == 0) {
            *backslashes = 0;
            return q + 1;
        }

        *backslashes = 0;
        p = q + 1;
    }
}


void ngx_http_llm_scan_init(ngx_http_llm_scan_t *s);
void ngx_http_llm_scan(ngx_http_llm_scan_t *s, u_char *p, u_char *last);
void ngx_http_llm_scan_end(ngx_http_llm_scan_t *s);

ngx_int_t ngx_http_llm_json_string(u_char *raw, size_t len, u_char *buf,
    size_t size, size_t *decoded);
size_t ngx_http_llm_utf8_char(u_char *p, u_char *last);


#endif /* _NGX_HTTP_LLM_SCAN_H_INCLUDED_ */
