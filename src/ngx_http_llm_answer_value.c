
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_answer_int.h"


/*
 * The kept values of an answer decoded: the usage object parsed by yajl,
 * the model decoded, valid UTF-8 or not found.
 */


typedef struct {
    ngx_uint_t                   depth;
    ngx_uint_t                   key;       /* ngx_http_llm_usage_* */
    ngx_uint_t                   pending;   /* the count not yet taken */
    off_t                        value;     /* its value */
    off_t                        input;
    off_t                        output;
} ngx_http_llm_answer_usage_t;


static size_t ngx_http_llm_answer_cut(u_char *raw, size_t n);
static ngx_uint_t ngx_http_llm_answer_hex4(u_char *p);
static void ngx_http_llm_answer_usage_take(ngx_http_llm_answer_usage_t *ctx);
static int ngx_http_llm_answer_usage_start(void *data);
static int ngx_http_llm_answer_usage_end(void *data);
static int ngx_http_llm_answer_usage_key(void *data, const unsigned char *s,
    size_t len);
static int ngx_http_llm_answer_usage_number(void *data, const char *s,
    size_t len);


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


/*
 * The kept usage object, parsed.  A count is taken once the next member
 * or the end of the object follows it: yajl reports "12" of "12abc" or
 * "0" of "0x10" before it finds the bytes after them invalid, and such a
 * count is not found, as one that is not a JSON integer.  A usage object
 * cut at the bound (never seen in practice) gives the counts before the
 * cut.
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
    ctx.pending = ngx_http_llm_usage_other;
    ctx.value = 0;
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
 * The kept model string, decoded.  A model that is not valid UTF-8 once
 * decoded (raw invalid bytes, an unpaired surrogate escape: see
 * ngx_http_llm_json_string()) is not found, never cut before the fault
 * or patched.  A valid one longer than NGX_HTTP_LLM_ANSWER_MODEL_MAX
 * bytes is cut after its last whole character within them.  A string
 * longer than kept is closed after its last whole character or escape, a
 * quote added in the spare byte, which still decodes to more than
 * MODEL_MAX bytes; what lies past the kept bytes is not read.
 */

void
ngx_http_llm_answer_model(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    u_char  *raw, buf[NGX_HTTP_LLM_ANSWER_MODEL_RAW];
    size_t   n, len;

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

    /* n raw bytes decode to fewer than n */

    if (ngx_http_llm_json_string(raw, n, buf, sizeof(buf), &len) != NGX_OK) {
        return;
    }

    if (len > NGX_HTTP_LLM_ANSWER_MODEL_MAX) {
        len = NGX_HTTP_LLM_ANSWER_MODEL_MAX;

        /* back to the start of the character cut */

        while (len && (buf[len] & 0xc0) == 0x80) {
            len--;
        }
    }

    ngx_memcpy(a->model, buf, len);
    a->model_len = len;
}


/*
 * The length of the longest prefix of a raw string (from its opening
 * quote, n bytes kept) that ends between characters: not inside an
 * escape, nor between the two escapes of a surrogate pair, nor inside
 * the bytes of a raw UTF-8 character.
 */

static size_t
ngx_http_llm_answer_cut(u_char *raw, size_t n)
{
    size_t      i, k, unit, need;
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

    i = ngx_min(i, n);

    /* nor inside a raw UTF-8 sequence: back over its first bytes */

    for (k = i; k > 1 && i - k < 3 && (raw[k - 1] & 0xc0) == 0x80; k--) {
        /* void */
    }

    if (k > 1 && raw[k - 1] >= 0xc0) {
        need = (raw[k - 1] >= 0xf0) ? 3 : (raw[k - 1] >= 0xe0) ? 2 : 1;

        if (i - k < need) {
            i = k - 1;
        }
    }

    return i;
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

    ngx_http_llm_answer_usage_take(ctx);

    ctx->depth--;
    ctx->key = ngx_http_llm_usage_other;

    return 1;
}


static int
ngx_http_llm_answer_usage_key(void *data, const unsigned char *s, size_t len)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    ngx_http_llm_answer_usage_take(ctx);

    ctx->key = (ctx->depth == 1)
               ? ngx_http_llm_answer_lookup(ngx_http_llm_answer_usage_keys,
                                            (u_char *) s, len)
               : ngx_http_llm_usage_other;

    return 1;
}


/*
 * Token counts are non-negative integers; a fraction, an exponent or a
 * sign is not a count, and 18 digits are far more than any.  A value
 * that is not a count (a string, null, ...) is as if absent: an earlier
 * usage's count stands (Anthropic's message_delta may say
 * "input_tokens": null after message_start counted them).
 */

static int
ngx_http_llm_answer_usage_number(void *data, const char *s, size_t len)
{
    off_t                         n;
    size_t                        i;
    ngx_http_llm_answer_usage_t  *ctx = data;

    ctx->pending = ngx_http_llm_usage_other;

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

    ctx->pending = ctx->key;
    ctx->value = n;

    return 1;
}


static void
ngx_http_llm_answer_usage_take(ngx_http_llm_answer_usage_t *ctx)
{
    switch (ctx->pending) {

    case ngx_http_llm_usage_input:
        ctx->input = ctx->value;
        break;

    case ngx_http_llm_usage_output:
        ctx->output = ctx->value;
        break;
    }

    ctx->pending = ngx_http_llm_usage_other;
}
