
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_classify.h"


/*
 * What a failed attempt was (design.md 2).  The status alone is not enough:
 * a 429 is a rate limit to wait out or a drained billing account that no
 * wait fixes, a 400 may be a prompt too long for this model only.  So the
 * body is parsed too, with yajl's callback parser (error bodies are small
 * and on the failure path), and only these values are looked at:
 *
 *     error.type, error.code, error.details.error_code  OpenAI, Anthropic
 *     error (a string), type, code                      OpenAI-compatible
 *     error.message, message, error (a string)          phrases only
 *
 * A message is only searched for a few phrases, never kept.  A body cut
 * at the caller's cap ends in a parse error; what came before it counts.
 *
 * The mapping, first match wins:
 *
 *     2xx                                  none, the body is not read
 *     1xx, 3xx, above 599                  invalid_response
 *     insufficient_quota, *_spend_limit_*,
 *       credit_balance_exhausted, ...      quota_exhausted (any status)
 *     overloaded_error                     overloaded (any status)
 *     402                                  quota_exhausted
 *     401, 403                             auth_error
 *     408                                  timeout
 *     409                                  server_error
 *     413                                  context_length
 *     429                                  rate_limited
 *     503, 529                             overloaded
 *     other 5xx                            server_error
 *     other 4xx, by the body:
 *       authentication_error, permission_error,
 *       invalid_api_key                    auth_error
 *       context_length_exceeded, ...,
 *       "maximum context length", ...      context_length
 *       content_filter, ...                content_filter
 *       rate_limit_error, ...              rate_limited
 *       anything else                      invalid_request
 *
 * Where the status leaves room, the choices made:
 *   - 409 is a provider's lock conflict that the OpenAI and Anthropic SDKs
 *     retry as they retry 5xx; taking it for a bad request would leave
 *     the retry to the client SDK, past the budget.
 *   - 413 is a request too big for this provider (Anthropic's 32 MB cap,
 *     request_too_large), which another target may take: the same advice
 *     as context_length.  nginx's own 413 (client_max_body_size) never
 *     gets here.
 *   - a 502 or 504 here is an answer received from the provider (or a
 *     proxy in front of it); connect errors and timeouts of our own are
 *     classified before an answer exists.
 *   - 5xx bodies are not searched for context or filter errors: the
 *     provider failed, not the request.
 *   - with status 0 (an SSE error event) only the body speaks: a named
 *     category, else server_error for an error object, else
 *     invalid_response.
 */


/* deeper containers are junk in an error body: the parse stops there */
#define NGX_HTTP_LLM_CLASSIFY_MAX_DEPTH    32

/* the phrases open real messages; a long one is searched this far only */
#define NGX_HTTP_LLM_CLASSIFY_MESSAGE_MAX  1024


#define ngx_http_llm_classify_bit(err)  ((ngx_uint_t) 1 << (err))

#define ngx_http_llm_classify_has(ctx, err)                                  \
    ((ctx)->named & ngx_http_llm_classify_bit(err))


/* the members on the paths to the values looked at */

enum {
    ngx_http_llm_key_other = 0,
    ngx_http_llm_key_element,           /* in an array, not a member */
    ngx_http_llm_key_error,
    ngx_http_llm_key_type,
    ngx_http_llm_key_code,
    ngx_http_llm_key_message,
    ngx_http_llm_key_object,
    ngx_http_llm_key_details,
    ngx_http_llm_key_error_code
};


typedef struct {
    ngx_uint_t    named;        /* a bit per category the body names */
    ngx_uint_t    error;        /* the body is an error object */
    ngx_uint_t    depth;        /* open containers; 1 is the top level */

    /* the current member at each depth, ngx_http_llm_key_* */
    u_char        keys[NGX_HTTP_LLM_CLASSIFY_MAX_DEPTH + 1];
} ngx_http_llm_classify_ctx_t;


typedef struct {
    ngx_str_t     name;
    ngx_uint_t    value;
} ngx_http_llm_classify_name_t;


static ngx_uint_t ngx_http_llm_classify_decide(
    ngx_http_llm_classify_ctx_t *ctx, ngx_uint_t status);
static void ngx_http_llm_classify_token(ngx_http_llm_classify_ctx_t *ctx,
    const u_char *s, size_t len);
static void ngx_http_llm_classify_message(ngx_http_llm_classify_ctx_t *ctx,
    const u_char *s, size_t len);
static ngx_uint_t ngx_http_llm_classify_lookup(
    ngx_http_llm_classify_name_t *names, const u_char *s, size_t len);
static ngx_uint_t ngx_http_llm_classify_find(const u_char *s, size_t len,
    ngx_str_t *phrase);
static int ngx_http_llm_classify_push(ngx_http_llm_classify_ctx_t *ctx,
    ngx_uint_t key);
static int ngx_http_llm_classify_start_map(void *data);
static int ngx_http_llm_classify_start_array(void *data);
static int ngx_http_llm_classify_end(void *data);
static int ngx_http_llm_classify_map_key(void *data, const unsigned char *s,
    size_t len);
static int ngx_http_llm_classify_string(void *data, const unsigned char *s,
    size_t len);


ngx_str_t  ngx_http_llm_err_names[] = {
    ngx_string("-"),
    ngx_string("connect_error"),
    ngx_string("timeout"),
    ngx_string("rate_limited"),
    ngx_string("quota_exhausted"),
    ngx_string("overloaded"),
    ngx_string("server_error"),
    ngx_string("auth_error"),
    ngx_string("invalid_request"),
    ngx_string("context_length"),
    ngx_string("content_filter"),
    ngx_string("stream_interrupted"),
    ngx_string("invalid_response"),
    ngx_string("client_closed"),
    ngx_null_string
};


static ngx_http_llm_classify_name_t  ngx_http_llm_classify_keys[] = {
    { ngx_string("error"), ngx_http_llm_key_error },
    { ngx_string("type"), ngx_http_llm_key_type },
    { ngx_string("code"), ngx_http_llm_key_code },
    { ngx_string("message"), ngx_http_llm_key_message },
    { ngx_string("object"), ngx_http_llm_key_object },
    { ngx_string("details"), ngx_http_llm_key_details },
    { ngx_string("error_code"), ngx_http_llm_key_error_code },
    { ngx_null_string, ngx_http_llm_key_other }
};


/* error.type and error.code values of OpenAI, Anthropic, Azure and kin */

static ngx_http_llm_classify_name_t  ngx_http_llm_classify_tokens[] = {

    /* billing: no wait helps, another key or provider may */
    { ngx_string("insufficient_quota"), NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("credit_balance_exhausted"), NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("organization_spend_limit_exceeded"),
      NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("project_spend_limit_exceeded"), NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("organization_usage_limit_exceeded"),
      NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("billing_hard_limit_reached"), NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("billing_not_active"), NGX_HTTP_LLM_ERR_QUOTA },
    { ngx_string("enforced_spend_limit_reached"), NGX_HTTP_LLM_ERR_QUOTA },

    { ngx_string("rate_limit_exceeded"), NGX_HTTP_LLM_ERR_RATE_LIMITED },
    { ngx_string("rate_limit_error"), NGX_HTTP_LLM_ERR_RATE_LIMITED },
    { ngx_string("slow_down"), NGX_HTTP_LLM_ERR_RATE_LIMITED },

    { ngx_string("overloaded_error"), NGX_HTTP_LLM_ERR_OVERLOADED },

    { ngx_string("api_error"), NGX_HTTP_LLM_ERR_SERVER },
    { ngx_string("server_error"), NGX_HTTP_LLM_ERR_SERVER },

    { ngx_string("authentication_error"), NGX_HTTP_LLM_ERR_AUTH },
    { ngx_string("permission_error"), NGX_HTTP_LLM_ERR_AUTH },
    { ngx_string("invalid_api_key"), NGX_HTTP_LLM_ERR_AUTH },

    { ngx_string("context_length_exceeded"),
      NGX_HTTP_LLM_ERR_CONTEXT_LENGTH },
    { ngx_string("string_above_max_length"),
      NGX_HTTP_LLM_ERR_CONTEXT_LENGTH },
    { ngx_string("request_too_large"), NGX_HTTP_LLM_ERR_CONTEXT_LENGTH },
    { ngx_string("exceed_context_size_error"),
      NGX_HTTP_LLM_ERR_CONTEXT_LENGTH },

    { ngx_string("content_filter"), NGX_HTTP_LLM_ERR_CONTENT_FILTER },
    { ngx_string("content_policy_violation"),
      NGX_HTTP_LLM_ERR_CONTENT_FILTER },
    { ngx_string("moderation_blocked"), NGX_HTTP_LLM_ERR_CONTENT_FILTER },

    { ngx_string("invalid_request_error"), NGX_HTTP_LLM_ERR_INVALID_REQUEST },
    { ngx_string("not_found_error"), NGX_HTTP_LLM_ERR_INVALID_REQUEST },
    { ngx_string("model_not_found"), NGX_HTTP_LLM_ERR_INVALID_REQUEST },

    { ngx_null_string, NGX_HTTP_LLM_ERR_NONE }
};


/*
 * How providers word a prompt too long for the model when the code does
 * not say so (Anthropic, vLLM, Mistral, llama.cpp, Bedrock, Gemini);
 * lowercase, matched ignoring case.
 */

static ngx_str_t  ngx_http_llm_classify_context_phrases[] = {
    ngx_string("context length"),
    ngx_string("context window"),
    ngx_string("context limit"),
    ngx_string("context size"),
    ngx_string("prompt is too long"),
    ngx_string("input is too long"),
    ngx_string("too many tokens"),
    ngx_string("maximum number of tokens"),
    ngx_null_string
};


static yajl_callbacks  ngx_http_llm_classify_callbacks = {
    NULL,                                  /* null */
    NULL,                                  /* boolean */
    NULL,                                  /* integer */
    NULL,                                  /* double */
    NULL,                                  /* number */
    ngx_http_llm_classify_string,          /* string */
    ngx_http_llm_classify_start_map,       /* start_map */
    ngx_http_llm_classify_map_key,         /* map_key */
    ngx_http_llm_classify_end,             /* end_map */
    ngx_http_llm_classify_start_array,     /* start_array */
    ngx_http_llm_classify_end              /* end_array */
};


ngx_uint_t
ngx_http_llm_classify_response(ngx_uint_t status, u_char *body, size_t len)
{
    yajl_handle                  h;
    yajl_status                  st;
    ngx_http_llm_classify_ctx_t  ctx;

    if (status >= 200 && status < 300) {
        return NGX_HTTP_LLM_ERR_NONE;
    }

    if ((status != 0 && status < 400) || status > 599) {
        return NGX_HTTP_LLM_ERR_INVALID_RESPONSE;
    }

    ngx_memzero(&ctx, sizeof(ngx_http_llm_classify_ctx_t));

    if (body == NULL || len == 0) {
        return ngx_http_llm_classify_decide(&ctx, status);
    }

    /* out of memory: the status alone still says something */

    h = yajl_alloc(&ngx_http_llm_classify_callbacks, NULL, &ctx);
    if (h == NULL) {
        return ngx_http_llm_classify_decide(&ctx, status);
    }

    /* invalid UTF-8 in a message must not hide the code after it */
    (void) yajl_config(h, yajl_dont_validate_strings, 1);

    /*
     * Errors are expected (a cut body, HTML from a proxy, junk nested too
     * deeply) and change nothing: what was seen before them counts.
     */

    st = yajl_parse(h, body, len);

    if (st == yajl_status_ok) {
        (void) yajl_complete_parse(h);
    }

    yajl_free(h);

    return ngx_http_llm_classify_decide(&ctx, status);
}


static ngx_uint_t
ngx_http_llm_classify_decide(ngx_http_llm_classify_ctx_t *ctx,
    ngx_uint_t status)
{
    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_QUOTA)) {
        return NGX_HTTP_LLM_ERR_QUOTA;
    }

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_OVERLOADED)) {
        return NGX_HTTP_LLM_ERR_OVERLOADED;
    }

    switch (status) {

    case 0:
        break;

    case 402:
        return NGX_HTTP_LLM_ERR_QUOTA;

    case 401:
    case 403:
        return NGX_HTTP_LLM_ERR_AUTH;

    case 408:
        return NGX_HTTP_LLM_ERR_TIMEOUT;

    case 409:
        return NGX_HTTP_LLM_ERR_SERVER;

    case 413:
        return NGX_HTTP_LLM_ERR_CONTEXT_LENGTH;

    case 429:
        return NGX_HTTP_LLM_ERR_RATE_LIMITED;

    case 503:
    case 529:
        return NGX_HTTP_LLM_ERR_OVERLOADED;

    default:
        if (status >= 500) {
            return NGX_HTTP_LLM_ERR_SERVER;
        }

        break;
    }

    /* a 4xx, or a body alone */

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_AUTH)) {
        return NGX_HTTP_LLM_ERR_AUTH;
    }

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_CONTEXT_LENGTH)) {
        return NGX_HTTP_LLM_ERR_CONTEXT_LENGTH;
    }

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_CONTENT_FILTER)) {
        return NGX_HTTP_LLM_ERR_CONTENT_FILTER;
    }

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_RATE_LIMITED)) {
        return NGX_HTTP_LLM_ERR_RATE_LIMITED;
    }

    if (status != 0) {
        return NGX_HTTP_LLM_ERR_INVALID_REQUEST;
    }

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_INVALID_REQUEST)) {
        return NGX_HTTP_LLM_ERR_INVALID_REQUEST;
    }

    if (ngx_http_llm_classify_has(ctx, NGX_HTTP_LLM_ERR_SERVER)
        || ctx->error)
    {
        return NGX_HTTP_LLM_ERR_SERVER;
    }

    return NGX_HTTP_LLM_ERR_INVALID_RESPONSE;
}


static void
ngx_http_llm_classify_token(ngx_http_llm_classify_ctx_t *ctx,
    const u_char *s, size_t len)
{
    ngx_uint_t  err;

    err = ngx_http_llm_classify_lookup(ngx_http_llm_classify_tokens, s, len);

    if (err != NGX_HTTP_LLM_ERR_NONE) {
        ctx->named |= ngx_http_llm_classify_bit(err);
    }
}


static void
ngx_http_llm_classify_message(ngx_http_llm_classify_ctx_t *ctx,
    const u_char *s, size_t len)
{
    ngx_str_t  *phrase;

    len = ngx_min(len, NGX_HTTP_LLM_CLASSIFY_MESSAGE_MAX);

    for (phrase = ngx_http_llm_classify_context_phrases;
         phrase->len;
         phrase++)
    {
        if (ngx_http_llm_classify_find(s, len, phrase)) {
            ctx->named |= ngx_http_llm_classify_bit(
                              NGX_HTTP_LLM_ERR_CONTEXT_LENGTH);
            return;
        }
    }
}


static ngx_uint_t
ngx_http_llm_classify_lookup(ngx_http_llm_classify_name_t *names,
    const u_char *s, size_t len)
{
    for ( /* void */ ; names->name.len; names++) {
        if (names->name.len == len
            && ngx_memcmp(names->name.data, s, len) == 0)
        {
            return names->value;
        }
    }

    return names->value;
}


/* a substring ignoring ASCII case; phrases are lowercase */

static ngx_uint_t
ngx_http_llm_classify_find(const u_char *s, size_t len, ngx_str_t *phrase)
{
    size_t  i, n;

    if (len < phrase->len) {
        return 0;
    }

    for (i = 0; i <= len - phrase->len; i++) {

        for (n = 0; n < phrase->len; n++) {
            if (ngx_tolower(s[i + n]) != phrase->data[n]) {
                break;
            }
        }

        if (n == phrase->len) {
            return 1;
        }
    }

    return 0;
}


/*
 * The depth bound also bounds yajl's own stack, which would otherwise
 * grow with every bracket of "[[[[...": returning 0 stops the parse.
 */

static int
ngx_http_llm_classify_push(ngx_http_llm_classify_ctx_t *ctx, ngx_uint_t key)
{
    if (ctx->depth == NGX_HTTP_LLM_CLASSIFY_MAX_DEPTH) {
        return 0;
    }

    ctx->depth++;
    ctx->keys[ctx->depth] = (u_char) key;

    return 1;
}


static int
ngx_http_llm_classify_start_map(void *data)
{
    ngx_http_llm_classify_ctx_t  *ctx = data;

    if (ctx->depth == 1 && ctx->keys[1] == ngx_http_llm_key_error) {
        ctx->error = 1;
    }

    return ngx_http_llm_classify_push(ctx, ngx_http_llm_key_other);
}


static int
ngx_http_llm_classify_start_array(void *data)
{
    ngx_http_llm_classify_ctx_t  *ctx = data;

    return ngx_http_llm_classify_push(ctx, ngx_http_llm_key_element);
}


static int
ngx_http_llm_classify_end(void *data)
{
    ngx_http_llm_classify_ctx_t  *ctx = data;

    ctx->depth--;

    return 1;
}


static int
ngx_http_llm_classify_map_key(void *data, const unsigned char *s,
    size_t len)
{
    ngx_http_llm_classify_ctx_t  *ctx = data;

    ctx->keys[ctx->depth] = (u_char) ngx_http_llm_classify_lookup(
                                         ngx_http_llm_classify_keys, s, len);

    return 1;
}


static int
ngx_http_llm_classify_string(void *data, const unsigned char *s,
    size_t len)
{
    u_char                       *keys;
    ngx_http_llm_classify_ctx_t  *ctx = data;

    keys = ctx->keys;

    switch (ctx->depth) {

    case 1:

        switch (keys[1]) {

        case ngx_http_llm_key_error:

            /* {"error": "..."}: a code or a sentence, servers differ */

            ctx->error = 1;
            ngx_http_llm_classify_token(ctx, s, len);
            ngx_http_llm_classify_message(ctx, s, len);
            break;

        case ngx_http_llm_key_type:
        case ngx_http_llm_key_object:

            /* Anthropic's "type": "error", vLLM's "object": "error" */

            if (len == 5 && ngx_memcmp(s, "error", 5) == 0) {
                ctx->error = 1;
                break;
            }

            if (keys[1] == ngx_http_llm_key_type) {
                ngx_http_llm_classify_token(ctx, s, len);
            }

            break;

        case ngx_http_llm_key_code:
            ngx_http_llm_classify_token(ctx, s, len);
            break;

        case ngx_http_llm_key_message:
            ngx_http_llm_classify_message(ctx, s, len);
            break;
        }

        break;

    case 2:

        if (keys[1] != ngx_http_llm_key_error) {
            break;
        }

        switch (keys[2]) {

        case ngx_http_llm_key_type:
        case ngx_http_llm_key_code:
            ngx_http_llm_classify_token(ctx, s, len);
            break;

        case ngx_http_llm_key_message:
            ngx_http_llm_classify_message(ctx, s, len);
            break;
        }

        break;

    case 3:

        /* Anthropic's error.details.error_code */

        if (keys[1] == ngx_http_llm_key_error
            && keys[2] == ngx_http_llm_key_details
            && keys[3] == ngx_http_llm_key_error_code)
        {
            ngx_http_llm_classify_token(ctx, s, len);
        }

        break;
    }

    return 1;
}


ngx_msec_int_t
ngx_http_llm_parse_retry_after(u_char *value, size_t len, ngx_uint_t ms)
{
    u_char          *p, *last;
    time_t           date, now;
    ngx_uint_t       d, unit, scale, rest;
    ngx_msec_int_t   n, frac;

    p = value;
    last = value + len;

    /* optional whitespace around a field value (RFC 9110, 5.5) */

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (p == last) {
        return NGX_ERROR;
    }

    if (*p < '0' || *p > '9') {

        /* an HTTP-date starts with a day name, "-1" is not one either */

        if (ms || ngx_tolower(*p) < 'a' || ngx_tolower(*p) > 'z') {
            return NGX_ERROR;
        }

        date = ngx_parse_http_time(p, last - p);
        if (date == NGX_ERROR) {
            return NGX_ERROR;
        }

        now = ngx_time();

        if (date <= now) {
            return 0;
        }

        if (date - now > NGX_HTTP_LLM_RETRY_AFTER_MAX / 1000) {
            return NGX_HTTP_LLM_RETRY_AFTER_MAX;
        }

        return (ngx_msec_int_t) (date - now) * 1000;
    }

    unit = ms ? 1 : 1000;

    /* past the maximum the integer part saturates but is still read */

    for (n = 0; p < last && *p >= '0' && *p <= '9'; p++) {
        d = *p - '0';
        n = (n > (NGX_HTTP_LLM_RETRY_AFTER_MAX - (ngx_msec_int_t) d) / 10)
            ? NGX_HTTP_LLM_RETRY_AFTER_MAX : n * 10 + (ngx_msec_int_t) d;
    }

    /*
     * A fraction below the unit's resolution rounds up: waiting a little
     * longer than asked is safe, coming back early is not.
     */

    frac = 0;
    rest = 0;

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        for (scale = unit; p < last && *p >= '0' && *p <= '9'; p++) {
            d = *p - '0';

            if (scale > 1) {
                scale /= 10;
                frac += (ngx_msec_int_t) (d * scale);

            } else if (d) {
                rest = 1;
            }
        }

        frac += rest;
    }

    if (p != last) {
        return NGX_ERROR;
    }

    if (n > (NGX_HTTP_LLM_RETRY_AFTER_MAX - frac) / (ngx_msec_int_t) unit) {
        return NGX_HTTP_LLM_RETRY_AFTER_MAX;
    }

    return n * (ngx_msec_int_t) unit + frac;
}
