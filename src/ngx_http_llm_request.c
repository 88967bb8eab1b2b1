
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Request inspection (SPEC 3.1).  The structural scan runs in a request
 * body filter, on each piece of the body as it arrives and before nginx
 * writes it to a temp file, so a body spilled to disk is never read back.
 * The "model" value's byte span is what a per-target rewrite will splice.
 */


static ngx_int_t ngx_http_llm_request_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static void ngx_http_llm_request_model(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);


static ngx_http_request_body_filter_pt  ngx_http_next_request_body_filter;


ngx_int_t
ngx_http_llm_request_init(ngx_conf_t *cf)
{
    ngx_http_next_request_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = ngx_http_llm_request_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_request_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    ngx_http_llm_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_request_body_filter(r, in);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->scan == NULL) {
        return ngx_http_next_request_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            ngx_http_llm_scan(ctx->scan, b->pos, b->last);

        } else if (ngx_buf_size(b)) {
            /* body filters get memory buffers; never seen, but be safe */
            ctx->scan->error = "the request body could not be inspected";
        }

        if (b->last_buf) {
            ngx_http_llm_scan_end(ctx->scan);
        }
    }

    return ngx_http_next_request_body_filter(r, in);
}


/*
 * Called once the whole body is read: NGX_OK, or NGX_DECLINED when the
 * request must be refused with 400 (ctx->scan->error says why).
 */

ngx_int_t
ngx_http_llm_request_inspect(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_scan_t  *s;

    s = ctx->scan;

    /* a body that ended without a last buffer (none at all) */
    ngx_http_llm_scan_end(s);

    if (s->error) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "llm route \"%V\": bad request body: %s, "
                      "at byte %O", &ctx->conf->route, s->error, s->offset);
        return NGX_DECLINED;
    }

    ngx_http_llm_request_model(r, ctx);

    return NGX_OK;
}


/*
 * The requested model for $llm_model.  A value that is not a valid JSON
 * string once decoded (a bad escape, invalid UTF-8) is a finer grammar
 * error for the provider to refuse; the model then stays unknown here.
 */

static void
ngx_http_llm_request_model(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char               *p;
    size_t                len;
    ngx_http_llm_scan_t  *s;

    s = ctx->scan;

    if (s->model_end == -1 || s->model_too_long) {
        return;
    }

    p = ngx_pnalloc(r->pool, s->model_len);
    if (p == NULL) {
        return;
    }

    if (ngx_http_llm_json_string(s->model, s->model_len, p, s->model_len,
                                 &len)
        != NGX_OK)
    {
        return;
    }

    ctx->model.data = p;
    ctx->model.len = len;
}


/*
 * The gateway's own error answer, in the OpenAI error shape that both
 * OpenAI and Anthropic SDKs surface to the caller.  message is a fixed
 * string of the module's: never client bytes.
 */

ngx_int_t
ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *message, const char *code)
{
    u_char       *p;
    size_t        len, mlen;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    mlen = ngx_strlen(message);

    len = sizeof("{\"error\":{\"message\":\"\","
                 "\"type\":\"invalid_request_error\","
                 "\"param\":null,\"code\":\"\"}}\n") - 1
          + mlen + ngx_escape_json(NULL, (u_char *) message, mlen)
          + ngx_strlen(code);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "{\"error\":{\"message\":\"",
                   sizeof("{\"error\":{\"message\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, (u_char *) message, mlen);
    p = ngx_sprintf(p, "\",\"type\":\"invalid_request_error\","
                       "\"param\":null,\"code\":\"%s\"}}\n", code);
    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
