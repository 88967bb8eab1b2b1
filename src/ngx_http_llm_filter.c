
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Header and body filters on the module's own attempt subrequests.
 *
 * As an HTTP_AUX_FILTER module these run right after the copy filter and
 * before postpone: an attempt's headers never reach the wire by
 * themselves (nginx sends no header for a subrequest), so committing an
 * attempt copies its status and headers into the client request and sends
 * them through the client request's own header filters (add_header,
 * gzip, chunked of the route location).  The body then flows through
 * postpone, which hands it to the client request's body filters.
 *
 * The attempt's remaining header filters are not run: filters of the
 * target location (gzip, sub_filter, ...) would describe a body the client
 * never gets in that form.
 */


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   offset;
} ngx_http_llm_header_ref_t;


static ngx_int_t ngx_http_llm_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_llm_commit(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_copy_headers(ngx_http_request_t *r,
    ngx_http_request_t *sr);
static ngx_http_llm_ctx_t *ngx_http_llm_attempt_ctx(ngx_http_request_t *r);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


/*
 * Headers that nginx also keeps a pointer to in ngx_http_headers_out_t:
 * the pointer must follow the copied element, or the header filter adds
 * a second Server or Date and gzip ignores Content-Encoding.
 */

static ngx_http_llm_header_ref_t  ngx_http_llm_header_refs[] = {

    { ngx_string("Server"), offsetof(ngx_http_headers_out_t, server) },
    { ngx_string("Date"), offsetof(ngx_http_headers_out_t, date) },
    { ngx_string("Content-Encoding"),
      offsetof(ngx_http_headers_out_t, content_encoding) },
    { ngx_string("Location"), offsetof(ngx_http_headers_out_t, location) },
    { ngx_string("Refresh"), offsetof(ngx_http_headers_out_t, refresh) },
    { ngx_string("Last-Modified"),
      offsetof(ngx_http_headers_out_t, last_modified) },
    { ngx_string("Content-Range"),
      offsetof(ngx_http_headers_out_t, content_range) },
    { ngx_string("Accept-Ranges"),
      offsetof(ngx_http_headers_out_t, accept_ranges) },
    { ngx_string("WWW-Authenticate"),
      offsetof(ngx_http_headers_out_t, www_authenticate) },
    { ngx_string("Expires"), offsetof(ngx_http_headers_out_t, expires) },
    { ngx_string("ETag"), offsetof(ngx_http_headers_out_t, etag) },

    { ngx_null_string, 0 }
};


ngx_int_t
ngx_http_llm_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_llm_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_llm_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_header_filter(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_attempt_ctx(r);

    if (ctx == NULL) {
        return ngx_http_next_header_filter(r);
    }

    return ngx_http_llm_commit(r, ctx);
}


static ngx_int_t
ngx_http_llm_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t         *cl;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_attempt_ctx(r);

    if (ctx == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    if (ctx->committed) {

        /*
         * an attempt that ends well ends with its last buffer; one cut
         * by an upstream error only flushes (the upstream module turns
         * the error into a flush once headers are out)
         */

        for (cl = in; cl; cl = cl->next) {
            if (cl->buf->last_in_chain || cl->buf->last_buf) {
                ctx->answered = 1;
            }
        }

        return ngx_http_next_body_filter(r, in);
    }

    /*
     * output of an attempt whose headers the client never got (e.g. a
     * subrequest finalized without a header): it must not reach the
     * client; mark it consumed so upstream buffers are reused
     */

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }

    return NGX_OK;
}


/* the module's context when r is the attempt in flight, else NULL */

static ngx_http_llm_ctx_t *
ngx_http_llm_attempt_ctx(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    if (r == r->main) {
        return NULL;
    }

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->attempt != r) {
        return NULL;
    }

    return ctx;
}


static ngx_int_t
ngx_http_llm_commit(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_request_t  *r;

    r = sr->main;

    if (ngx_http_llm_copy_headers(r, sr) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->committed = 1;

    /* as ngx_http_header_filter() does for any subrequest */
    sr->header_sent = 1;

    /* an answer to a POST is never turned into a 304 */
    r->disable_not_modified = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm attempt %ui committed, status %ui",
                   ctx->attempts, r->headers_out.status);

    return ngx_http_send_header(r);
}


static ngx_int_t
ngx_http_llm_copy_headers(ngx_http_request_t *r, ngx_http_request_t *sr)
{
    ngx_uint_t                  i;
    ngx_list_part_t            *part;
    ngx_table_elt_t            *h, *ho, **ph;
    ngx_http_headers_out_t     *out;
    ngx_http_llm_header_ref_t  *ref;

    out = &r->headers_out;

    out->status = sr->headers_out.status;
    out->status_line = sr->headers_out.status_line;

    out->content_type_len = sr->headers_out.content_type_len;
    out->content_type = sr->headers_out.content_type;
    out->charset = sr->headers_out.charset;
    out->content_type_lowcase = NULL;
    out->content_type_hash = 0;

    out->content_length_n = sr->headers_out.content_length_n;
    out->last_modified_time = sr->headers_out.last_modified_time;

    part = &sr->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        ho = ngx_list_push(&out->headers);
        if (ho == NULL) {
            return NGX_ERROR;
        }

        *ho = h[i];

#if (nginx_version >= 1023000)
        ho->next = NULL;
#endif

        for (ref = ngx_http_llm_header_refs; ref->name.len; ref++) {
            if (ho->key.len == ref->name.len
                && ngx_strncasecmp(ho->key.data, ref->name.data,
                                   ref->name.len) == 0)
            {
                ph = (ngx_table_elt_t **) ((char *) out + ref->offset);
                *ph = ho;
                break;
            }
        }
    }

    return NGX_OK;
}
