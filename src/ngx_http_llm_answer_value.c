
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_answer_int.h"


/*
 * The kept values of an answer decoded: the usage object parsed by yajl,
 * the model decoded and cut to a valid UTF-8 prefix.
 */


typedef struct {
    ngx_uint_t                   depth;
    ngx_uint_t                   key;       /* ngx_http_llm_usage_* */
    off_t                        input;
    off_t                        output;
} ngx_http_llm_answer_usage_t;


typedef struct {
    u_char                      *buf;
    size_t                       len;
    ngx_uint_t                   strings;
} ngx_http_llm_answer_model_t;


static size_t ngx_http_llm_answer_cut(u_char *raw, size_t n);
static ngx_uint_t ngx_http_llm_answer_hex4(u_char *p);
static size_t ngx_http_llm_answer_utf8(u_char *p, size_t len);
static int ngx_http_llm_answer_usage_start(void *data);
static int ngx_http_llm_answer_usage_end(void *data);
static int ngx_http_llm_answer_usage_key(void *data, const unsigned char *s,
    size_t len);
static int ngx_http_llm_answer_usage_number(void *data, const char *s,
    size_t len);
static int ngx_http_llm_answer_model_string(void *data,
    const unsigned char *s, size_t len);


static ngx_http_llm_answer_name_t  ngx_http_llm_answer_usage_keys[] = {
    { ngx_string("prompt_tokens"), ngx_http_llm_usage_input },
    { ngx_string("input_tokens"), ngx_http_llm_usage_input },
    { ngx_string("completion_tokens"), ngx_http_llm_usage_output },
    { ngx_string("output_tokens"), ngx_http_llm_usage_output },
    { ngx_null_string, ngx_http_llm_usage_other }
};


static yajl_callbacks  ngx_http_llm_answer_usage_callbacks = {
    NULL,                                  /* null */
    NULL,                                  /* boolean */
    NULL,                                  /* integer */
    NULL,                                  /* double */
    ngx_http_llm_answer_usage_number,      /* number */
    NULL,                                  /* string */
    ngx_http_llm_answer_usage_start,       /* start_map */
    ngx_http_llm_answer_usage_key,         /* map_key */
    ngx_http_llm_answer_usage_end,         /* end_map */
    ngx_http_llm_answer_usage_start,       /* start_array */
    ngx_http_llm_answer_usage_end          /* end_array */
};


static yajl_callbacks  ngx_http_llm_answer_model_callbacks = {
    NULL,                                  /* null */
    NULL,                                  /* boolean */
    NULL,                                  /* integer */
    NULL,                                  /* double */
    NULL,                                  /* number */
    ngx_http_llm_answer_model_string,      /* string */
    NULL,                                  /* start_map */
    NULL,                                  /* map_key */
    NULL,                                  /* end_map */
    NULL,                                  /* start_array */
    NULL                                   /* end_array */
};


/*
 * The kept usage object, parsed.  A usage object cut at the bound (never
 * seen in practice) gives what came before the cut, a number cut there
 * included: yajl only reports a number once a byte after it ends it.
 */

void
ngx_http_llm_answer_usage(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    yajl_handle                  h;
    ngx_http_llm_answer_usage_t  ctx;

    if (st->usage.len == 0) {
        return;
    }

    ctx.depth = 0;
    ctx.key = ngx_http_llm_usage_other;
    ctx.input = -1;
    ctx.output = -1;

    h = yajl_alloc(&ngx_http_llm_answer_usage_callbacks, NULL, &ctx);
    if (h == NULL) {
        return;
    }

    (void) yajl_config(h, yajl_dont_validate_strings, 1);

    (void) yajl_parse(h, st->usage.data,
                      ngx_min(st->usage.len, st->usage.size));

    yajl_free(h);

    if (ctx.input >= 0) {
        a->input_tokens = ctx.input;
    }

    if (ctx.output >= 0) {
        a->output_tokens = ctx.output;
    }
}


/*
 * The kept model string, decoded and cut to a valid UTF-8 prefix of at
 * most NGX_HTTP_LLM_ANSWER_MODEL_MAX bytes.  A string longer than kept is
 * closed after its last whole character or escape, a quote added in the
 * spare byte, which still decodes to more than MODEL_MAX bytes.
 */

void
ngx_http_llm_answer_model(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    u_char                       *raw, *p, *end;
    size_t                        n, len;
    yajl_handle                   h;
    yajl_status                   rc;
    ngx_http_llm_answer_model_t   ctx;

    if (a->model_len || st->model.len == 0) {
        return;
    }

    raw = st->model.data;

    if (st->model.complete && st->model.len <= st->model.size) {
        n = st->model.len;

    } else if (st->model.len > st->model.size) {
        n = ngx_http_llm_answer_cut(raw, st->model.size);
        raw[n++] = '"';

    } else {
        /* its document ended inside it */
        return;
    }

    /* printable ASCII without escapes, nearly always, is its own value */

    end = raw + n - 1;

    for (p = raw + 1; p < end; p++) {
        if (*p < 0x20 || *p >= 0x7f || *p == '\\') {
            break;
        }
    }

    if (p == end) {
        len = ngx_min(n - 2, NGX_HTTP_LLM_ANSWER_MODEL_MAX);
        ngx_memcpy(a->model, raw + 1, len);
        a->model_len = len;
        return;
    }

    ctx.buf = a->model;
    ctx.len = 0;
    ctx.strings = 0;

    h = yajl_alloc(&ngx_http_llm_answer_model_callbacks, NULL, &ctx);
    if (h == NULL) {
        return;
    }

    /* invalid UTF-8 ends the prefix kept, it does not lose the model */
    (void) yajl_config(h, yajl_dont_validate_strings, 1);

    rc = yajl_parse(h, raw, n);

    if (rc == yajl_status_ok) {
        rc = yajl_complete_parse(h);
    }

    yajl_free(h);

    if (rc != yajl_status_ok || ctx.strings != 1) {
        return;
    }

    a->model_len = ngx_http_llm_answer_utf8(a->model, ctx.len);
}


/*
 * The length of the longest prefix of a raw string (from its opening
 * quote, n bytes kept) that ends between characters: not inside an
 * escape, nor between the two escapes of a surrogate pair.
 */

static size_t
ngx_http_llm_answer_cut(u_char *raw, size_t n)
{
    size_t      i, unit;
    ngx_uint_t  cp;

    for (i = 1; i < n; i += unit) {

        if (raw[i] != '\\') {
            unit = 1;
            continue;
        }

        if (i + 1 == n) {
            break;
        }

        if (raw[i + 1] != 'u') {
            unit = 2;

        } else if (i + 6 > n) {
            break;

        } else {
            unit = 6;
            cp = ngx_http_llm_answer_hex4(raw + i + 2);

            if ((cp & 0xfc00) == 0xd800) {

                /* a high surrogate: is a low one after it? */

                if (i + 8 > n) {
                    break;
                }

                if (raw[i + 6] == '\\' && raw[i + 7] == 'u') {
                    unit = 12;
                }
            }
        }

        if (i + unit > n) {
            break;
        }
    }

    return ngx_min(i, n);
}


static ngx_uint_t
ngx_http_llm_answer_hex4(u_char *p)
{
    u_char      c;
    ngx_uint_t  i, cp;

    cp = 0;

    for (i = 0; i < 4; i++) {
        c = ngx_tolower(p[i]);

        if (c >= '0' && c <= '9') {
            cp = cp * 16 + (c - '0');

        } else if (c >= 'a' && c <= 'f') {
            cp = cp * 16 + (c - 'a' + 10);

        } else {
            /* yajl rejects it */
            return 0x10000;
        }
    }

    return cp;
}


/* the length of the longest valid UTF-8 prefix (RFC 3629) */

static size_t
ngx_http_llm_answer_utf8(u_char *p, size_t len)
{
    u_char  c, lo, hi, *s, *last;
    size_t  n, i;

    s = p;
    last = p + len;

    while (s < last) {
        c = *s;

        if (c < 0x80) {
            s++;
            continue;
        }

        lo = 0x80;
        hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;

            if (c == 0xe0) {
                lo = 0xa0;

            } else if (c == 0xed) {
                hi = 0x9f;     /* not a surrogate */
            }

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;

            if (c == 0xf0) {
                lo = 0x90;

            } else if (c == 0xf4) {
                hi = 0x8f;
            }

        } else {
            break;
        }

        if ((size_t) (last - s) <= n || s[1] < lo || s[1] > hi) {
            break;
        }

        for (i = 2; i <= n; i++) {
            if (s[i] < 0x80 || s[i] > 0xbf) {
                break;
            }
        }

        if (i <= n) {
            break;
        }

        s += n + 1;
    }

    return s - p;
}


/*
 * The depth bound also bounds yajl's own stack: returning 0 stops the
 * parse.
 */

static int
ngx_http_llm_answer_usage_start(void *data)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    if (ctx->depth == NGX_HTTP_LLM_ANSWER_USAGE_DEPTH) {
        return 0;
    }

    ctx->depth++;
    ctx->key = ngx_http_llm_usage_other;

    return 1;
}


static int
ngx_http_llm_answer_usage_end(void *data)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    ctx->depth--;
    ctx->key = ngx_http_llm_usage_other;

    return 1;
}


static int
ngx_http_llm_answer_usage_key(void *data, const unsigned char *s, size_t len)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    ctx->key = (ctx->depth == 1)
               ? ngx_http_llm_answer_lookup(ngx_http_llm_answer_usage_keys,
                                            (u_char *) s, len)
               : ngx_http_llm_usage_other;

    return 1;
}


/*
 * Token counts are non-negative integers; a fraction, an exponent or a
 * sign is not a count, and 18 digits are far more than any.
 */

static int
ngx_http_llm_answer_usage_number(void *data, const char *s, size_t len)
{
    off_t                         n;
    size_t                        i;
    ngx_http_llm_answer_usage_t  *ctx = data;

    if (ctx->key == ngx_http_llm_usage_other || len == 0 || len > 18) {
        return 1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 1;
        }

        n = n * 10 + (s[i] - '0');
    }

    if (ctx->key == ngx_http_llm_usage_input) {
        ctx->input = n;

    } else {
        ctx->output = n;
    }

    return 1;
}


static int
ngx_http_llm_answer_model_string(void *data, const unsigned char *s,
    size_t len)
{
    ngx_http_llm_answer_model_t  *ctx = data;

    ctx->strings++;
    ctx->len = ngx_min(len, NGX_HTTP_LLM_ANSWER_MODEL_MAX);
    ngx_memcpy(ctx->buf, s, ctx->len);

    return 1;
}
