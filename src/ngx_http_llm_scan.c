
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"

/* -DNGX_HTTP_LLM_NO_SIMD builds the scalar scan only */

#if (defined __x86_64__ && defined __GNUC__ && !defined NGX_HTTP_LLM_NO_SIMD)
#define NGX_HTTP_LLM_HAVE_SIMD  1
#include <immintrin.h>
#endif


/*
 * A full JSON parse (yajl) runs at ~450 MB/s here; this scan, which
 * jumps over strings with memchr() and only counts brackets inside
 * nested values, runs several times faster.  Grammar inside values (a bad
 * number, invalid UTF-8 in a string) is left to the provider, whose own
 * 400 then reaches the client.
 *
 * Nested values, nearly all of a long body (the messages), are skipped 64
 * bytes at a time where the CPU has AVX2, as simdjson does: masks
 * of the quotes, backslashes and brackets of a block; the escaped quotes
 * found from the runs of backslashes; the inside of strings from a prefix
 * XOR of the other quotes; then only the brackets outside strings are
 * looked at, one by one.  A block with a backslash outside a string
 * (invalid JSON, which the run rule reads differently from the scalar
 * scan) is left to the scalar scan, so that both give the same result on
 * any input, whole or in pieces (fuzz/scan_fuzz.c checks it for each).
 */


enum {
    sw_start = 0,
    sw_first_key,
    sw_key,
    sw_key_string,
    sw_colon,
    sw_value,
    sw_value_string,
    sw_literal,
    sw_nested,
    sw_nested_string,
    sw_after_value,
    sw_done,
    sw_error
};


enum {
    ngx_http_llm_member_other = 0,
    ngx_http_llm_member_model,
    ngx_http_llm_member_stream
};


static void ngx_http_llm_scan_keep(u_char *buf, size_t *len, size_t size,
    u_char *p, u_char *last);
static ngx_uint_t ngx_http_llm_scan_member(u_char *raw, size_t len);
static ngx_inline ngx_int_t ngx_http_llm_scan_push(ngx_http_llm_scan_t *s,
    u_char c);
static ngx_inline ngx_int_t ngx_http_llm_scan_pop(ngx_http_llm_scan_t *s,
    u_char c);
static uint32_t ngx_http_llm_json_hex4(u_char *p, u_char *last);
#if (NGX_HTTP_LLM_HAVE_SIMD)
static u_char *ngx_http_llm_scan_blocks(ngx_http_llm_scan_t *s, u_char *p,
    u_char *last, ngx_uint_t *fallback);
static ngx_inline void ngx_http_llm_scan_flush(ngx_http_llm_scan_t *s,
    ngx_uint_t depth, uint64_t kinds, ngx_uint_t opened);
#endif


static const char  ngx_http_llm_scan_too_deep[] =
    "the JSON request is nested too deeply";
static const char  ngx_http_llm_scan_unbalanced[] =
    "unbalanced brackets in the JSON request";


ngx_uint_t  ngx_http_llm_json_simd = NGX_HTTP_LLM_SIMD_UNSET;


u_char  ngx_http_llm_json_stop[256] = {
    ['"'] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1
};


/* the states that skip whitespace before their token */

static const ngx_uint_t  ngx_http_llm_scan_ws_states =
    (1 << sw_start) | (1 << sw_first_key) | (1 << sw_key) | (1 << sw_colon)
    | (1 << sw_value) | (1 << sw_after_value) | (1 << sw_done);


ngx_uint_t
ngx_http_llm_json_simd_best(void)
{
#if (NGX_HTTP_LLM_HAVE_SIMD)

    __builtin_cpu_init();

    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("pclmul")) {
        return NGX_HTTP_LLM_SIMD_AVX2;
    }

#endif

    /* SSE2 blocks measured slower than memchr(), itself SSE2 in glibc */

    return NGX_HTTP_LLM_SIMD_SCALAR;
}


void
ngx_http_llm_scan_init(ngx_http_llm_scan_t *s)
{
    if (ngx_http_llm_json_simd == NGX_HTTP_LLM_SIMD_UNSET) {
        ngx_http_llm_json_simd = ngx_http_llm_json_simd_best();
    }

    ngx_memzero(s, offsetof(ngx_http_llm_scan_t, key));

    s->model_start = -1;
    s->model_end = -1;
    s->stream = NGX_HTTP_LLM_STREAM_ABSENT;
    s->state = sw_start;
}


void
ngx_http_llm_scan(ngx_http_llm_scan_t *s, u_char *p, u_char *last)
{
    u_char      c, *start, *q, *end;
#if (NGX_HTTP_LLM_HAVE_SIMD)
    ngx_uint_t  fallback;
#endif

    start = p;

    while (p < last) {

        /* whitespace between tokens, in one run */

        if ((1 << s->state) & ngx_http_llm_scan_ws_states) {

            while (ngx_http_llm_json_ws(*p)) {
                if (++p == last) {
                    goto done;
                }
            }
        }

        switch (s->state) {

        case sw_start:
            c = *p;

            if (c != '{') {
                s->error = "the request body is not a JSON object";
                goto failed;
            }

            s->object_start = s->offset + (p - start);
            s->depth = 1;
            s->state = sw_first_key;
            p++;
            break;

        case sw_first_key:
        case sw_key:
            c = *p;

            if (c == '"') {
                s->members++;
                s->backslashes = 0;

                /* a name whole in this piece is looked at where it is */

                q = ngx_http_llm_json_string_end(&s->backslashes, p + 1,
                                                   last);

                if (q != NULL) {
                    s->member = ngx_http_llm_scan_member(p, q - p);
                    s->state = sw_colon;
                    p = q;
                    break;
                }

                s->key_len = 0;
                s->backslashes = 0;
                s->state = sw_key_string;
                ngx_http_llm_scan_keep(s->key, &s->key_len, sizeof(s->key),
                                       p, p + 1);
                p++;
                break;
            }

            if (c == '}' && s->state == sw_first_key) {
                s->depth = 0;
                s->state = sw_done;
                p++;
                break;
            }

            s->error = "expected a member name in the JSON object";
            goto failed;

        case sw_key_string:
            q = ngx_http_llm_json_string_end(&s->backslashes, p, last);

            ngx_http_llm_scan_keep(s->key, &s->key_len, sizeof(s->key),
                                   p, q ? q : last);

            if (q == NULL) {
                p = last;
                break;
            }

            s->member = ngx_http_llm_scan_member(s->key, s->key_len);
            s->state = sw_colon;
            p = q;
            break;

        case sw_colon:
            c = *p;

            if (c != ':') {
                s->error = "expected \":\" after a member name";
                goto failed;
            }

            s->state = sw_value;
            p++;
            break;

        case sw_value:
            c = *p;

            if (c == '"') {

                if (s->member == ngx_http_llm_member_model) {

                    if (s->model_end != -1) {
                        s->error = "duplicate \"model\" member";
                        goto failed;
                    }

                    s->model_start = s->offset + (p - start);
                    s->model_len = 0;
                    ngx_http_llm_scan_keep(s->model, &s->model_len,
                                           sizeof(s->model), p, p + 1);
                }

                s->backslashes = 0;
                s->state = sw_value_string;
                p++;
                break;
            }

            if (s->member == ngx_http_llm_member_model) {
                s->error = "\"model\" is not a string";
                goto failed;
            }

            if (c == '{' || c == '[') {
                (void) ngx_http_llm_scan_push(s, c);
                s->state = sw_nested;
                p++;
                break;
            }

            if (ngx_http_llm_json_literal(c)) {
                s->literal_len = 0;
                s->state = sw_literal;
                break;
            }

            s->error = "unexpected character in the JSON object";
            goto failed;

        case sw_value_string:
            q = ngx_http_llm_json_string_end(&s->backslashes, p, last);

            if (s->member == ngx_http_llm_member_model) {
                ngx_http_llm_scan_keep(s->model, &s->model_len,
                                       sizeof(s->model), p, q ? q : last);
            }

            if (q == NULL) {
                p = last;
                break;
            }

            if (s->member == ngx_http_llm_member_model) {
                s->model_end = s->offset + (q - start);
                s->model_too_long = (s->model_len > sizeof(s->model));
            }

            s->state = sw_after_value;
            p = q;
            break;

        case sw_literal:
            q = p;

            while (p < last && ngx_http_llm_json_literal(*p)) {
                p++;
            }

            ngx_http_llm_scan_keep(s->literal, &s->literal_len,
                                   sizeof(s->literal), q, p);

            if (p == last) {
                break;
            }

            if (s->member == ngx_http_llm_member_stream) {
                s->stream = (s->literal_len == 4
                             && ngx_strncmp(s->literal, "true", 4) == 0)
                            ? NGX_HTTP_LLM_STREAM_TRUE
                            : NGX_HTTP_LLM_STREAM_FALSE;
            }

            s->state = sw_after_value;
            break;

        case sw_nested:
        case sw_nested_string:

            end = last;

#if (NGX_HTTP_LLM_HAVE_SIMD)

            if (ngx_http_llm_json_simd != NGX_HTTP_LLM_SIMD_SCALAR
                && last - p >= 64)
            {
                p = ngx_http_llm_scan_blocks(s, p, last, &fallback);

                if (s->error) {
                    goto failed;
                }

                if (s->state == sw_after_value) {
                    break;
                }

                /* a block the scalar scan reads, then blocks again */

                if (fallback) {
                    end = p + 64;
                }
            }

#endif

            if (s->state == sw_nested_string) {
                q = ngx_http_llm_json_string_end(&s->backslashes, p, end);

                if (q == NULL) {
                    p = end;
                    break;
                }

                s->state = sw_nested;
                p = q;
            }

            /* a value's insides, token after token in one loop */

            for ( ;; ) {
                while (p < end && !ngx_http_llm_json_stop[*p]) {
                    p++;
                }

                if (p == end) {
                    break;
                }

                c = *p++;

                if (c == '"') {
                    s->backslashes = 0;
                    q = ngx_http_llm_json_string_end(&s->backslashes, p, end);

                    if (q == NULL) {
                        s->state = sw_nested_string;
                        p = end;
                        break;
                    }

                    p = q;
                    continue;
                }

                if (c == '{' || c == '[') {
                    if (ngx_http_llm_scan_push(s, c) != NGX_OK) {
                        s->error = ngx_http_llm_scan_too_deep;
                        goto failed;
                    }

                    continue;
                }

                if (ngx_http_llm_scan_pop(s, c) != NGX_OK) {
                    s->error = ngx_http_llm_scan_unbalanced;
                    goto failed;
                }

                if (s->depth == 1) {
                    s->state = sw_after_value;
                    break;
                }
            }

            break;

        case sw_after_value:
            c = *p;

            if (c == ',') {
                s->state = sw_key;
                p++;
                break;
            }

            if (c == '}') {
                s->depth = 0;
                s->state = sw_done;
                p++;
                break;
            }

            s->error = "expected \",\" or \"}\" after a member value";
            goto failed;

        case sw_done:
            s->error = "unexpected data after the JSON object";
            goto failed;

        default: /* sw_error */
            return;
        }
    }

done:

    s->offset += last - start;

    return;

failed:

    s->offset += p - start;
    s->state = sw_error;
}


void
ngx_http_llm_scan_end(ngx_http_llm_scan_t *s)
{
    switch (s->state) {

    case sw_done:
    case sw_error:
        return;

    case sw_start:
        s->error = "the request body is empty";
        break;

    case sw_key_string:
    case sw_value_string:
    case sw_nested_string:
        s->error = "unterminated string in the JSON request";
        break;

    default:
        s->error = "the JSON request is truncated";
    }

    s->state = sw_error;
}


/* keeps up to size raw bytes; *len counts all of them */

static void
ngx_http_llm_scan_keep(u_char *buf, size_t *len, size_t size, u_char *p,
    u_char *last)
{
    u_char  *b, *end;

    /* a few bytes each time: a loop beats a call to memcpy() */

    b = buf + ngx_min(*len, size);
    end = buf + size;

    *len += last - p;

    while (p < last && b < end) {
        *b++ = *p++;
    }
}


/* raw: a member name with its quotes, len bytes of it (kept or not) */

static ngx_uint_t
ngx_http_llm_scan_member(u_char *raw, size_t len)
{
    u_char  *name, buf[NGX_HTTP_LLM_KEY_RAW_MAX];

    if (len > NGX_HTTP_LLM_KEY_RAW_MAX) {
        /* even with every character escaped, not "model" or "stream" */
        return ngx_http_llm_member_other;
    }

    name = raw + 1;
    len -= 2;

    if (memchr(name, '\\', len)) {

        /* "mod\u0065l" is "model" to the provider too */

        if (ngx_http_llm_json_string(raw, len + 2, buf, sizeof(buf), &len)
            != NGX_OK)
        {
            return ngx_http_llm_member_other;
        }

        name = buf;
    }

    if (len == 5 && ngx_strncmp(name, "model", 5) == 0) {
        return ngx_http_llm_member_model;
    }

    if (len == 6 && ngx_strncmp(name, "stream", 6) == 0) {
        return ngx_http_llm_member_stream;
    }

    return ngx_http_llm_member_other;
}


static ngx_inline ngx_int_t
ngx_http_llm_scan_push(ngx_http_llm_scan_t *s, u_char c)
{
    ngx_uint_t  i;

    i = s->depth;

    if (i >= NGX_HTTP_LLM_SCAN_MAX_DEPTH) {
        return NGX_ERROR;
    }

    if (c == '[') {
        s->brackets[i / 8] |= (u_char) (1 << (i % 8));

    } else {
        s->brackets[i / 8] &= (u_char) ~(1 << (i % 8));
    }

    s->depth++;

    return NGX_OK;
}


static ngx_inline ngx_int_t
ngx_http_llm_scan_pop(ngx_http_llm_scan_t *s, u_char c)
{
    ngx_uint_t  i, square;

    i = s->depth - 1;
    square = (s->brackets[i / 8] >> (i % 8)) & 1;

    if (square != (c == ']')) {
        return NGX_ERROR;
    }

    s->depth--;

    return NGX_OK;
}


#if (NGX_HTTP_LLM_HAVE_SIMD)

/* the quotes, backslashes and brackets of 64 bytes, a bit per byte */

typedef struct {
    uint64_t  quote;
    uint64_t  backslash;

    /* [ ] { } and, rarely outside strings, Y _ y DEL: looked at again */
    uint64_t  bracket;
} ngx_http_llm_scan_masks_t;


/* the levels a run of blocks opened, in registers while it runs */

typedef struct {
    uint64_t    kinds;          /* a bit a level, the innermost in bit 0 */
    ngx_uint_t  opened;         /* levels in kinds, up to 64 */
    ngx_uint_t  depth;
} ngx_http_llm_scan_levels_t;


__attribute__((target("avx2"))) static ngx_inline uint64_t
ngx_http_llm_scan_mask_avx2(__m256i v, __m256i w)
{
    return (uint32_t) _mm256_movemask_epi8(v)
           | (uint64_t) (uint32_t) _mm256_movemask_epi8(w) << 32;
}


/*
 * Brackets are the bytes that OR 0x26 makes 0x7f, one compare for the
 * four of them.  Backslashes are rare: their mask is only made when the
 * block has one.
 */

__attribute__((target("avx2"))) static ngx_inline void
ngx_http_llm_scan_masks_avx2(u_char *p, ngx_http_llm_scan_masks_t *m)
{
    __m256i  v, w, x, y, quote, backslash, or, bracket;

    quote = _mm256_set1_epi8('"');
    backslash = _mm256_set1_epi8('\\');
    or = _mm256_set1_epi8(0x26);
    bracket = _mm256_set1_epi8(0x7f);

    v = _mm256_loadu_si256((__m256i *) p);
    w = _mm256_loadu_si256((__m256i *) (p + 32));

    m->quote = ngx_http_llm_scan_mask_avx2(_mm256_cmpeq_epi8(v, quote),
                                           _mm256_cmpeq_epi8(w, quote));

    m->bracket = ngx_http_llm_scan_mask_avx2(
                     _mm256_cmpeq_epi8(_mm256_or_si256(v, or), bracket),
                     _mm256_cmpeq_epi8(_mm256_or_si256(w, or), bracket));

    x = _mm256_cmpeq_epi8(v, backslash);
    y = _mm256_cmpeq_epi8(w, backslash);

    m->backslash = _mm256_testz_si256(_mm256_or_si256(x, y),
                                      _mm256_or_si256(x, y))
                   ? 0 : ngx_http_llm_scan_mask_avx2(x, y);
}


/*
 * Inside a string: the offset of the first quote or backslash of the 128
 * bytes at p, or 128 when there is none (the string goes on).  The long
 * strings of a body go by in these steps, a test per 128 bytes.  A byte
 * is a quote or a backslash when it is the entry of its low 4 bits in
 * a table of those two (no other byte is its own entry there).
 */

__attribute__((target("avx2"))) static ngx_inline ngx_uint_t
ngx_http_llm_scan_string_avx2(u_char *p)
{
    uint64_t  special;
    __m256i   table, a, b, c, d;

    table = _mm256_setr_epi8(1, 0, '"', 0, 0, 0, 0, 0,
                             0, 0, 0, 0, '\\', 0, 0, 0,
                             1, 0, '"', 0, 0, 0, 0, 0,
                             0, 0, 0, 0, '\\', 0, 0, 0);

#define ngx_http_llm_scan_special(o)                                          \
    _mm256_cmpeq_epi8(                                                        \
        _mm256_shuffle_epi8(table, _mm256_loadu_si256((__m256i *) (p + o))),  \
        _mm256_loadu_si256((__m256i *) (p + o)))

    a = ngx_http_llm_scan_special(0);
    b = ngx_http_llm_scan_special(32);
    c = ngx_http_llm_scan_special(64);
    d = ngx_http_llm_scan_special(96);

#undef ngx_http_llm_scan_special

    if (_mm256_testz_si256(_mm256_or_si256(_mm256_or_si256(a, b),
                                           _mm256_or_si256(c, d)),
                           _mm256_set1_epi8(-1)))
    {
        return 128;
    }

    special = ngx_http_llm_scan_mask_avx2(a, b);

    if (special) {
        return __builtin_ctzll(special);
    }

    return 64 + __builtin_ctzll(ngx_http_llm_scan_mask_avx2(c, d));
}


/* the bits of x XORed from bit 0 up to each: 1 inside quotes */

__attribute__((target("pclmul"))) static ngx_inline uint64_t
ngx_http_llm_scan_prefix_xor(uint64_t x)
{
    return (uint64_t) _mm_cvtsi128_si64(
               _mm_clmulepi64_si128(_mm_set_epi64x(0, (long long) x),
                                    _mm_set1_epi8((char) 0xff), 0));
}


/*
 * The escaped bytes of a block: those after an odd run of backslashes
 * (simdjson's find_escaped_branchless); *carry: the next block's first
 * byte is escaped.
 */

static ngx_inline uint64_t
ngx_http_llm_scan_escaped(uint64_t backslash, uint64_t *carry)
{
    uint64_t  even, follows, odd_starts, even_runs, escaped;

    even = 0x5555555555555555ULL;

    backslash &= ~*carry;
    follows = (backslash << 1) | *carry;
    odd_starts = backslash & ~even & ~follows;

    even_runs = odd_starts + backslash;
    *carry = (even_runs < odd_starts);

    escaped = (even ^ (even_runs << 1)) & follows;

    return escaped;
}


/*
 * The brackets of a block outside strings are most often (a list of
 * objects) a "}" and then a "{" of the same kind: the closed level is
 * the innermost of those in the registers, not the one that ends the
 * value, and the opened one takes its place, so nothing changes.
 * Anything else is read one by one.
 */

static ngx_inline ngx_uint_t
ngx_http_llm_scan_pair(u_char *p, uint64_t brackets, uint64_t kinds,
    ngx_uint_t opened, ngx_uint_t depth)
{
    u_char    c, o;
    uint64_t  second;

    second = brackets & (brackets - 1);

    if (second == 0 || (second & (second - 1)) || opened == 0 || depth == 2) {
        return 0;
    }

    c = p[__builtin_ctzll(brackets)];
    o = p[__builtin_ctzll(second)];

    /* bit 5 is clear in "]" and "[" (a 1 in kinds), set in "}" and "{" */

    return (((c | 0x20) ^ '}') | ((o | 0x20) ^ '{') | ((c ^ o) & 0x20)
            | (((c >> 5) ^ kinds ^ 1) & 1))
           == 0;
}


/*
 * The brackets one by one: NGX_OK, NGX_DONE when the value ends (at the
 * byte *at), NGX_ERROR (s->error set, at the byte *at).
 */

static ngx_int_t
ngx_http_llm_scan_brackets(ngx_http_llm_scan_t *s,
    ngx_http_llm_scan_levels_t *l, u_char *p, uint64_t brackets,
    ngx_uint_t *at)
{
    u_char      c;
    ngx_uint_t  i, square;

    while (brackets) {
        i = __builtin_ctzll(brackets);
        brackets &= brackets - 1;

        c = p[i];
        square = ((c & 0x20) == 0);
        *at = i + 1;

        if ((c | 0x20) == '{') {

            if (l->depth >= NGX_HTTP_LLM_SCAN_MAX_DEPTH) {
                s->error = ngx_http_llm_scan_too_deep;
                return NGX_ERROR;
            }

            if (l->opened == 64) {
                ngx_http_llm_scan_flush(s, l->depth, l->kinds, l->opened);
                l->opened = 0;
            }

            l->kinds = (l->kinds << 1) | square;
            l->opened++;
            l->depth++;
            continue;
        }

        if ((c | 0x20) != '}') {
            continue;
        }

        if (l->opened) {
            if ((l->kinds & 1) != square) {
                s->error = ngx_http_llm_scan_unbalanced;
                return NGX_ERROR;
            }

            l->kinds >>= 1;
            l->opened--;

        } else {
            s->depth = l->depth;

            if (ngx_http_llm_scan_pop(s, c) != NGX_OK) {
                s->error = ngx_http_llm_scan_unbalanced;
                return NGX_ERROR;
            }
        }

        if (--l->depth == 1) {
            return NGX_DONE;
        }
    }

    return NGX_OK;
}


/*
 * Blocks of a nested value from p while 64 bytes are left: returns where
 * the scalar scan goes on, with s->state and s->backslashes as it would
 * have them there; *fallback: the block at the result is its to read.
 * Blocks need not be aligned: inside a string the next block starts at
 * the string's next quote or backslash, so that the long strings of a
 * body (the messages' contents) go by 128 bytes a test and the few bytes
 * between two of them are read in one block.
 */

__attribute__((target("avx2,pclmul"))) static u_char *
ngx_http_llm_scan_blocks(ngx_http_llm_scan_t *s, u_char *p, u_char *last,
    ngx_uint_t *fallback)
{
    uint64_t                    in_string, escaped, inside, brackets;
    uint64_t                    carry, carry_in, kinds;
    ngx_int_t                   rc;
    ngx_uint_t                  n, at, opened, depth;
    ngx_http_llm_scan_masks_t   m;
    ngx_http_llm_scan_levels_t  l;

    *fallback = 0;

    if (s->state == sw_nested_string) {
        in_string = ~(uint64_t) 0;
        carry = s->backslashes;

    } else {
        in_string = 0;
        carry = 0;
    }

    kinds = 0;
    opened = 0;
    depth = s->depth;

    for ( ;; ) {

        if (in_string && carry == 0) {

            /* the rest of a string up to its next quote or backslash */

            while (last - p >= 128) {
                n = ngx_http_llm_scan_string_avx2(p);
                p += n;

                if (n != 128) {
                    break;
                }
            }
        }

        if (last - p < 64) {
            break;
        }

        ngx_http_llm_scan_masks_avx2(p, &m);

        carry_in = carry;

        if ((m.backslash | carry) == 0) {
            escaped = 0;

        } else {
            escaped = ngx_http_llm_scan_escaped(m.backslash, &carry);
        }

        inside = ngx_http_llm_scan_prefix_xor(m.quote & ~escaped) ^ in_string;

        if (m.backslash & ~inside) {
            /* a backslash outside strings: the block is the scalar's */
            *fallback = 1;
            carry = carry_in;
            break;
        }

        brackets = m.bracket & ~inside;

        if (brackets
            && !ngx_http_llm_scan_pair(p, brackets, kinds, opened, depth))
        {
            /* in registers but here */

            l.kinds = kinds;
            l.opened = opened;
            l.depth = depth;

            rc = ngx_http_llm_scan_brackets(s, &l, p, brackets, &at);

            kinds = l.kinds;
            opened = l.opened;
            depth = l.depth;

            if (rc != NGX_OK) {
                if (rc == NGX_DONE) {
                    s->state = sw_after_value;
                }

                p += at;
                goto done;
            }
        }

        /* all ones when the block ends inside a string */

        in_string = (uint64_t) ((int64_t) inside >> 63);

        p += 64;
    }

    /* carry is 1 only inside a string: outside, the block fell back */

    s->state = in_string ? sw_nested_string : sw_nested;
    s->backslashes = (ngx_uint_t) carry;

done:

    ngx_http_llm_scan_flush(s, depth, kinds, opened);
    s->depth = depth;

    return p;
}


/* the kinds of the levels opened below depth, the innermost in bit 0 */

static ngx_inline void
ngx_http_llm_scan_flush(ngx_http_llm_scan_t *s, ngx_uint_t depth,
    uint64_t kinds, ngx_uint_t opened)
{
    ngx_uint_t  i;

    while (opened--) {
        i = --depth;

        if (kinds & 1) {
            s->brackets[i / 8] |= (u_char) (1 << (i % 8));

        } else {
            s->brackets[i / 8] &= (u_char) ~(1 << (i % 8));
        }

        kinds >>= 1;
    }
}


#endif


/*
 * Decodes one JSON string (raw bytes with the quotes).  What it gives
 * may reach a log (docs/logging.md), so it is valid UTF-8 or nothing:
 * NGX_DECLINED for a string that is not valid JSON (a control byte, a bad
 * escape, a quote inside), that holds raw bytes that are not UTF-8
 * (RFC 3629: no overlong form, no surrogate, nothing above U+10FFFF, no
 * cut sequence), or a \u escape of a surrogate that is not half of a
 * high-low pair (alone, reversed, a high one before any other escape or
 * character); and for one longer than size once decoded.  Nothing is
 * replaced: a name patched with U+FFFD or "?" is a name nobody sent, and
 * invalid bytes already made the string "not found".  \u0000 is U+0000,
 * valid UTF-8: it decodes, and nginx's log escaping writes it escaped.
 */

ngx_int_t
ngx_http_llm_json_string(u_char *raw, size_t len, u_char *buf, size_t size,
    size_t *decoded)
{
    u_char    c, *p, *last, *b, *end;
    size_t    n;
    uint32_t  cp, lo;

    if (len < 2 || raw[0] != '"' || raw[len - 1] != '"') {
        return NGX_DECLINED;
    }

    p = raw + 1;
    last = raw + len - 1;
    b = buf;
    end = buf + size;

    while (p < last) {
        c = *p;

        /* printable ASCII, nearly all of a model name, is itself */

        if (c >= 0x20 && c < 0x80 && c != '\\' && c != '"') {
            if (b == end) {
                return NGX_DECLINED;
            }

            *b++ = c;
            p++;
            continue;
        }

        if (c >= 0x80) {
            n = ngx_http_llm_utf8_char(p, last);

            if (n == 0 || (size_t) (end - b) < n) {
                return NGX_DECLINED;
            }

            b = ngx_cpymem(b, p, n);
            p += n;
            continue;
        }

        if (c != '\\' || last - p < 2) {
            /* a control byte, a quote, a backslash at the end */
            return NGX_DECLINED;
        }

        c = p[1];
        p += 2;

        switch (c) {

        case '"':
        case '\\':
        case '/':
            break;

        case 'b':
            c = '\b';
            break;

        case 'f':
            c = '\f';
            break;

        case 'n':
            c = '\n';
            break;

        case 'r':
            c = '\r';
            break;

        case 't':
            c = '\t';
            break;

        case 'u':
            cp = ngx_http_llm_json_hex4(p, last);

            if (cp > 0xffff || (cp >= 0xdc00 && cp <= 0xdfff)) {
                return NGX_DECLINED;
            }

            p += 4;

            if (cp >= 0xd800 && cp <= 0xdbff) {

                if (last - p < 6 || p[0] != '\\' || p[1] != 'u') {
                    return NGX_DECLINED;
                }

                lo = ngx_http_llm_json_hex4(p + 2, last);

                if (lo < 0xdc00 || lo > 0xdfff) {
                    return NGX_DECLINED;
                }

                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }

            n = (cp < 0x80) ? 1 : (cp < 0x800) ? 2 : (cp < 0x10000) ? 3 : 4;

            if ((size_t) (end - b) < n) {
                return NGX_DECLINED;
            }

            switch (n) {

            case 1:
                *b++ = (u_char) cp;
                break;

            case 2:
                *b++ = (u_char) (0xc0 | (cp >> 6));
                *b++ = (u_char) (0x80 | (cp & 0x3f));
                break;

            case 3:
                *b++ = (u_char) (0xe0 | (cp >> 12));
                *b++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
                *b++ = (u_char) (0x80 | (cp & 0x3f));
                break;

            default:
                *b++ = (u_char) (0xf0 | (cp >> 18));
                *b++ = (u_char) (0x80 | ((cp >> 12) & 0x3f));
                *b++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
                *b++ = (u_char) (0x80 | (cp & 0x3f));
            }

            continue;

        default:
            return NGX_DECLINED;
        }

        if (b == end) {
            return NGX_DECLINED;
        }

        *b++ = c;
    }

    *decoded = b - buf;

    return NGX_OK;
}


/* the value of 4 hex digits at p, or 0x10000 when they are not */

static uint32_t
ngx_http_llm_json_hex4(u_char *p, u_char *last)
{
    u_char      c;
    uint32_t    cp;
    ngx_uint_t  i;

    if (last - p < 4) {
        return 0x10000;
    }

    cp = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            cp = cp * 16 + (c - '0');

        } else {
            c |= 0x20;

            if (c < 'a' || c > 'f') {
                return 0x10000;
            }

            cp = cp * 16 + (c - 'a' + 10);
        }
    }

    return cp;
}


/*
 * The length of the UTF-8 character at p (RFC 3629, table 3-7 of The
 * Unicode Standard), or 0 when the bytes there are not one: a stray
 * continuation byte, an overlong form, a surrogate, above U+10FFFF, or a
 * sequence cut by last.
 */

size_t
ngx_http_llm_utf8_char(u_char *p, u_char *last)
{
    u_char  c, lo, hi;
    size_t  n, i;

    c = *p;

    if (c < 0x80) {
        return 1;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;

        if (c == 0xe0) {
            lo = 0xa0;          /* not overlong */

        } else if (c == 0xed) {
            hi = 0x9f;          /* not a surrogate */
        }

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;

        if (c == 0xf0) {
            lo = 0x90;          /* not overlong */

        } else if (c == 0xf4) {
            hi = 0x8f;          /* not above U+10FFFF */
        }

    } else {
        return 0;
    }

    if ((size_t) (last - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}
