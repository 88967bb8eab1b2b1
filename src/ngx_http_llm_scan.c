
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_scan.h"


/*
 * A full JSON parse (yajl) runs at ~450 MB/s here; this scan, which
 * jumps over strings with memchr() and only counts brackets inside
 * nested values, runs several times faster.  Grammar inside values (a bad
 * number, invalid UTF-8 in a string) is left to the provider, whose own
 * 400 then reaches the client.
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


typedef struct {
    u_char       *buf;
    size_t        size;
    size_t        len;
    ngx_uint_t    strings;
} ngx_http_llm_json_string_ctx_t;


static void ngx_http_llm_scan_keep(u_char *buf, size_t *len, size_t size,
    u_char *p, u_char *last);
static ngx_uint_t ngx_http_llm_scan_member(ngx_http_llm_scan_t *s);
static ngx_inline ngx_int_t ngx_http_llm_scan_push(ngx_http_llm_scan_t *s,
    u_char c);
static ngx_inline ngx_int_t ngx_http_llm_scan_pop(ngx_http_llm_scan_t *s,
    u_char c);
static int ngx_http_llm_json_string_cb(void *ctx, const unsigned char *s,
    size_t len);


u_char  ngx_http_llm_json_stop[256] = {
    ['"'] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1
};


/* the states that skip whitespace before their token */

static const ngx_uint_t  ngx_http_llm_scan_ws_states =
    (1 << sw_start) | (1 << sw_first_key) | (1 << sw_key) | (1 << sw_colon)
    | (1 << sw_value) | (1 << sw_after_value) | (1 << sw_done);


void
ngx_http_llm_scan_init(ngx_http_llm_scan_t *s)
{
    ngx_memzero(s, offsetof(ngx_http_llm_scan_t, key));

    s->model_start = -1;
    s->model_end = -1;
    s->stream = NGX_HTTP_LLM_STREAM_ABSENT;
    s->state = sw_start;
}


void
ngx_http_llm_scan(ngx_http_llm_scan_t *s, u_char *p, u_char *last)
{
    u_char  c, *start, *q;

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

            s->member = ngx_http_llm_scan_member(s);
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

            /* a value's insides, token after token in one loop */

            for ( ;; ) {
                while (p < last && !ngx_http_llm_json_stop[*p]) {
                    p++;
                }

                if (p == last) {
                    break;
                }

                c = *p++;

                if (c == '"') {
                    s->backslashes = 0;
                    q = ngx_http_llm_json_string_end(&s->backslashes, p, last);

                    if (q == NULL) {
                        s->state = sw_nested_string;
                        p = last;
                        break;
                    }

                    p = q;
                    continue;
                }

                if (c == '{' || c == '[') {
                    if (ngx_http_llm_scan_push(s, c) != NGX_OK) {
                        s->error = "the JSON request is nested too deeply";
                        goto failed;
                    }

                    continue;
                }

                if (ngx_http_llm_scan_pop(s, c) != NGX_OK) {
                    s->error = "unbalanced brackets in the JSON request";
                    goto failed;
                }

                if (s->depth == 1) {
                    s->state = sw_after_value;
                    break;
                }
            }

            break;

        case sw_nested_string:
            q = ngx_http_llm_json_string_end(&s->backslashes, p, last);

            if (q == NULL) {
                p = last;
                break;
            }

            s->state = sw_nested;
            p = q;
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


static ngx_uint_t
ngx_http_llm_scan_member(ngx_http_llm_scan_t *s)
{
    u_char  *name, buf[NGX_HTTP_LLM_KEY_RAW_MAX];
    size_t   len;

    if (s->key_len > sizeof(s->key)) {
        /* even with every character escaped, not "model" or "stream" */
        return ngx_http_llm_member_other;
    }

    name = s->key + 1;
    len = s->key_len - 2;

    if (memchr(name, '\\', len)) {

        /* "mod\u0065l" is "model" to the provider too */

        if (ngx_http_llm_json_string(s->key, s->key_len, buf, sizeof(buf),
                                     &len)
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


/*
 * Decodes one JSON string (raw bytes with the quotes) with yajl, which
 * also validates escapes and UTF-8.  NGX_DECLINED: not a valid string, or
 * longer than size once decoded.
 */

static yajl_callbacks  ngx_http_llm_json_string_callbacks = {
    NULL,                                  /* null */
    NULL,                                  /* boolean */
    NULL,                                  /* integer */
    NULL,                                  /* double */
    NULL,                                  /* number */
    ngx_http_llm_json_string_cb,           /* string */
    NULL,                                  /* start_map */
    NULL,                                  /* map_key */
    NULL,                                  /* end_map */
    NULL,                                  /* start_array */
    NULL                                   /* end_array */
};


ngx_int_t
ngx_http_llm_json_string(u_char *raw, size_t len, u_char *buf, size_t size,
    size_t *decoded)
{
    u_char                         *p;
    yajl_handle                     h;
    yajl_status                     st;
    ngx_http_llm_json_string_ctx_t  ctx;

    /*
     * printable ASCII without escapes (model names, nearly always) is
     * its own decoding; yajl, with its allocations, is for the rest
     */

    if (len >= 2 && raw[0] == '"' && raw[len - 1] == '"') {

        for (p = raw + 1; p < raw + len - 1; p++) {
            if (*p < 0x20 || *p >= 0x7f || *p == '\\' || *p == '"') {
                break;
            }
        }

        if (p == raw + len - 1) {
            if (len - 2 > size) {
                return NGX_DECLINED;
            }

            ngx_memcpy(buf, raw + 1, len - 2);
            *decoded = len - 2;

            return NGX_OK;
        }
    }

    ctx.buf = buf;
    ctx.size = size;
    ctx.len = 0;
    ctx.strings = 0;

    h = yajl_alloc(&ngx_http_llm_json_string_callbacks, NULL, &ctx);
    if (h == NULL) {
        return NGX_ERROR;
    }

    st = yajl_parse(h, raw, len);

    if (st == yajl_status_ok) {
        st = yajl_complete_parse(h);
    }

    yajl_free(h);

    if (st != yajl_status_ok || ctx.strings != 1 || ctx.len > size) {
        return NGX_DECLINED;
    }

    *decoded = ctx.len;

    return NGX_OK;
}


static int
ngx_http_llm_json_string_cb(void *data, const unsigned char *s, size_t len)
{
    ngx_http_llm_json_string_ctx_t  *ctx = data;

    ctx->strings++;
    ctx->len = len;

    if (len <= ctx->size) {
        ngx_memcpy(ctx->buf, s, len);
    }

    return 1;
}
