
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"
#include "ngx_http_llm_scan_int.h"

#if (NGX_HTTP_LLM_HAVE_SIMD)
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
    ngx_http_llm_member_other = 0,
    ngx_http_llm_member_model,
    ngx_http_llm_member_stream
};


static void ngx_http_llm_scan_keep(u_char *buf, size_t *len, size_t size,
    u_char *p, u_char *last);
static u_char *ngx_http_llm_scan_nested(ngx_http_llm_scan_t *s, u_char *p,
    u_char *end);
static ngx_uint_t ngx_http_llm_scan_member(u_char *raw, size_t len);
static ngx_inline u_char *ngx_http_llm_scan_value_end(ngx_http_llm_scan_t *s,
    u_char *p, u_char *last);


const char  ngx_http_llm_scan_too_deep[] =
    "the JSON request is nested too deeply";
const char  ngx_http_llm_scan_unbalanced[] =
    "unbalanced brackets in the JSON request";


ngx_uint_t  ngx_http_llm_json_simd = NGX_HTTP_LLM_SIMD_UNSET;


u_char  ngx_http_llm_json_stop[256] = {
    ['"'] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1
};


/* ngx_http_llm_json_literal() as a table: a compare a byte, not nine */

static const u_char  ngx_http_llm_scan_literal_byte[256] = {
    ['-'] = 1, ['+'] = 1, ['.'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1
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

    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("pclmul")
        && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi"))
    {
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
                    p = q;

                    /* the colon most often follows: a turn of the loop less */

                    if (p < last && *p == ':') {
                        s->state = sw_value;
                        p++;
                        break;
                    }

                    s->state = sw_colon;
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

                /* on at once: a turn of the loop less (p may be last) */
                goto value_string;
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

            if (ngx_http_llm_scan_literal_byte[c]) {
                s->literal_len = 0;
                s->state = sw_literal;
                goto literal;
            }

            s->error = "unexpected character in the JSON object";
            goto failed;

        case sw_value_string:
        value_string:

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

            p = ngx_http_llm_scan_value_end(s, q, last);
            break;

        case sw_literal:
        literal:

            q = p;

            while (p < last && ngx_http_llm_scan_literal_byte[*p]) {
                p++;
            }

            ngx_http_llm_scan_keep(s->literal, &s->literal_len,
                                   sizeof(s->literal), q, p);

            if (p == last) {
                break;
            }

            if (s->member == ngx_http_llm_member_stream) {
                s->stream = (s->literal_len == 4
                             && ngx_memcmp(s->literal, "true", 4) == 0)
                            ? NGX_HTTP_LLM_STREAM_TRUE
                            : NGX_HTTP_LLM_STREAM_FALSE;
            }

            p = ngx_http_llm_scan_value_end(s, p, last);
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
                    p = ngx_http_llm_scan_value_end(s, p, last);
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

            p = ngx_http_llm_scan_nested(s, p, end);

            if (s->error) {
                goto failed;
            }

            if (s->state == sw_after_value) {
                p = ngx_http_llm_scan_value_end(s, p, last);
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


/*
 * A nested value's insides, token after token in one loop, up to end:
 * returns where it stopped, with s->state sw_after_value when the value
 * ended, sw_nested_string when end is in a string, s->error set on an
 * error (at the byte after the bad bracket).  A function of its own, not
 * inlined: in ngx_http_llm_scan() gcc kept no register for the table of
 * the loop over the bytes between tokens (+2,400 instructions for the
 * scalar scan of the 64 KB body).
 */

__attribute__((noinline)) static u_char *
ngx_http_llm_scan_nested(ngx_http_llm_scan_t *s, u_char *p, u_char *end)
{
    u_char  c, *q;

    for ( ;; ) {

        do {
            if (p == end) {
                return p;
            }

            c = *p++;

        } while (!ngx_http_llm_json_stop[c]);

        if (c == '"') {
            s->backslashes = 0;
            q = ngx_http_llm_json_string_end(&s->backslashes, p, end);

            if (q == NULL) {
                s->state = sw_nested_string;
                return end;
            }

            p = q;
            continue;
        }

        if (c == '{' || c == '[') {
            if (ngx_http_llm_scan_push(s, c) != NGX_OK) {
                s->error = ngx_http_llm_scan_too_deep;
                return p;
            }

            continue;
        }

        if (ngx_http_llm_scan_pop(s, c) != NGX_OK) {
            s->error = ngx_http_llm_scan_unbalanced;
            return p;
        }

        if (s->depth == 1) {
            s->state = sw_after_value;
            return p;
        }
    }
}


/* a value ended at p: the comma, most often next, a turn of the loop less */

static ngx_inline u_char *
ngx_http_llm_scan_value_end(ngx_http_llm_scan_t *s, u_char *p, u_char *last)
{
    if (p < last && *p == ',') {
        s->state = sw_key;
        return p + 1;
    }

    s->state = sw_after_value;

    return p;
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
    u_char      *name, *word, buf[NGX_HTTP_LLM_KEY_RAW_MAX];
    ngx_uint_t   i, n;

    if (len > NGX_HTTP_LLM_KEY_RAW_MAX) {
        /* even with every character escaped, not "model" or "stream" */
        return ngx_http_llm_member_other;
    }

    name = raw + 1;
    len -= 2;

    if (len == 5 && ngx_memcmp(name, "model", 5) == 0) {
        return ngx_http_llm_member_model;
    }

    if (len == 6 && ngx_memcmp(name, "stream", 6) == 0) {
        return ngx_http_llm_member_stream;
    }

    /*
     * Up to its first backslash a name is its own decoding: most names
     * ("messages", "temperature") differ from both words before any, and
     * need neither a memchr() nor a decoding.
     */

    if (len && name[0] == 's') {
        word = (u_char *) "stream";
        n = 6;

    } else {
        word = (u_char *) "model";
        n = 5;
    }

    for (i = 0; i < len && name[i] != '\\'; i++) {
        if (i == n || name[i] != word[i]) {
            return ngx_http_llm_member_other;
        }
    }

    if (i == len) {
        /* no backslash, and not the word itself (above) */
        return ngx_http_llm_member_other;
    }

    /* "mod\u0065l" is "model" to the provider too */

    if (ngx_http_llm_json_string(raw, len + 2, buf, sizeof(buf), &len)
        != NGX_OK)
    {
        return ngx_http_llm_member_other;
    }

    if (len == 5 && ngx_memcmp(buf, "model", 5) == 0) {
        return ngx_http_llm_member_model;
    }

    if (len == 6 && ngx_memcmp(buf, "stream", 6) == 0) {
        return ngx_http_llm_member_stream;
    }

    return ngx_http_llm_member_other;
}
