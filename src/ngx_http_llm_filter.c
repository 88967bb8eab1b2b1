
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
 *
 * Whether an error answer is held or passed on is asked of
 * ngx_http_llm_decide(); the answers given when no attempt follows are
 * in ngx_http_llm_final.c.
 */


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   offset;
} ngx_http_llm_header_ref_t;


static ngx_int_t ngx_http_llm_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_llm_read_answer(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx);
static ngx_uint_t ngx_http_llm_check_hold(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx);
static ngx_uint_t ngx_http_llm_is_sse(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_observe(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx, ngx_chain_t *in);
static ngx_buf_t *ngx_http_llm_answer_buf(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_hold(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_llm_copy_headers(ngx_http_request_t *r,
    ngx_http_request_t *sr);
static ngx_int_t ngx_http_llm_header_multi(ngx_http_request_t *r,
    ngx_table_elt_t *h);
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


/*
 * A good answer (below 300) is committed: its headers go to the client at
 * once and its body follows as it comes, never buffered.  An error answer
 * is held back while another attempt may still follow, to be classified
 * from its body; it is replayed to the client if it turns out final.
 */

static ngx_int_t
ngx_http_llm_header_filter(ngx_http_request_t *r)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_llm_attempt_ctx(r);

    if (ctx == NULL) {

        /* the client request's own headers, whoever sends them */

        if (r == r->main && ngx_http_llm_response_headers(r) != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_next_header_filter(r);
    }

    /* as ngx_http_header_filter() does for any subrequest */
    r->header_sent = 1;

    if (r->headers_out.status == 0) {

        /*
         * no status line: the proxy module took the reply for HTTP/0.9
         * and would pass its bytes on as a body; it is no answer to
         * replay, and the attempt failed with invalid_response
         */

        ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_INVALID);

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "llm attempt answer has no status line");

        return NGX_OK;
    }

    if (r->headers_out.status < NGX_HTTP_SPECIAL_RESPONSE) {

        ctx->sse = ngx_http_llm_is_sse(r);

        if (ngx_http_llm_check_hold(r, ctx)) {
            return NGX_OK;
        }

        if (ngx_http_llm_read_answer(r, ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        if (ctx->sse) {

            /*
             * a stream goes to the client event by event, whatever the
             * target's proxy_buffering says: the upstream module looks at
             * u->buffering only after the header filters have run, as it
             * does for X-Accel-Buffering
             */

            /* the stream begins at the beginning of a line */
            ctx->sse_bol = 1;

            if (r->upstream) {
                r->upstream->buffering = 0;
            }
        }

        return ngx_http_llm_commit(r->main, r);
    }

    /* the latest provider error answer is the one kept */

    ctx->answer = r;
    ctx->answer_partial = 0;

    if (ctx->answer_body) {
        ctx->answer_body->pos = ctx->answer_body->start;
        ctx->answer_body->last = ctx->answer_body->start;
    }

    if (ngx_http_llm_decide(ctx, NGX_HTTP_LLM_DECIDE_HEADER)
        != NGX_HTTP_LLM_DECISION_NONE)
    {
        /* nothing may follow: the answer goes on as it comes */
        return ngx_http_llm_commit(r->main, r);
    }

    ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_HELD);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm attempt answer %ui held", r->headers_out.status);

    return NGX_OK;
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

    if (ngx_http_llm_committed(ctx)) {

        /*
         * an attempt that ends well ends with its last buffer; one cut
         * by an upstream error only flushes (the upstream module turns
         * the error into a flush once headers are out)
         */

        for (cl = in; cl; cl = cl->next) {
            if (cl->buf->last_in_chain || cl->buf->last_buf) {
                ctx->answered = 1;

                /*
                 * nothing follows a committed answer but the client
                 * response's end: its last buffer is that end, rather
                 * than another pass of the client's filters for it
                 * after the attempt (ngx_http_llm_final()); a stream
                 * may still get the gateway's error event
                 */

                if (!ctx->sse && r != r->main && cl->buf->last_in_chain) {
                    cl->buf->last_buf = 1;
                    ctx->last_sent = 1;
                }
            }

            if (!ngx_buf_in_memory(cl->buf) || cl->buf->pos == cl->buf->last)
            {
                continue;
            }

            if (ctx->first_byte == 0) {
                ctx->first_byte = ngx_current_msec;
            }

            if (ctx->reading) {
                ngx_http_llm_answer_feed(ctx->reading, cl->buf->pos,
                                         cl->buf->last);
            }

        }

        if (r->headers_out.status >= NGX_HTTP_SPECIAL_RESPONSE
            && ngx_http_llm_observe(r, ctx, in) != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (ctx->sse) {
            /* whole events only, see ngx_http_llm_sse.c */
            return ngx_http_llm_sse_forward(r, ctx, in,
                                            ngx_http_next_body_filter);
        }

        return ngx_http_next_body_filter(r, in);
    }

    /* an answer kept back while it is not decided on */

    if (ctx->state == NGX_HTTP_LLM_ATTEMPT_HELD
        || ctx->state == NGX_HTTP_LLM_ATTEMPT_CHECKING)
    {
        return ngx_http_llm_hold(r, ctx, in);
    }

    /*
     * output the client must not get: of an answer held and already
     * decided on, or of an attempt finalized without a header; consumed,
     * so upstream reuses its buffers
     */

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }

    return NGX_OK;
}


/*
 * A good answer is read as it passes, for usage, model and shape
 * (design.md 2), when the configuration uses them or it is a stream;
 * its buffers are asked for in memory, so that an answer the upstream
 * buffered to a temp file is read too.
 */

static ngx_int_t
ngx_http_llm_read_answer(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_answer_t     *a;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_get_module_main_conf(sr, ngx_http_llm_module);

    if (!lmcf->read_answers && !ctx->sse) {
        return NGX_OK;
    }

    /* as long-lived as the reader's state: large too, see answer_init */

    a = ngx_pmemalign(sr->pool, sizeof(ngx_http_llm_answer_t),
                      NGX_ALIGNMENT);
    if (a == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_answer_init(a, sr->pool, ctx->family, ctx->sse)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ctx->reading = a;
    sr->filter_need_in_memory = 1;

    return NGX_OK;
}


static ngx_uint_t
ngx_http_llm_is_sse(ngx_http_request_t *r)
{
    ngx_str_t  *type;

    type = &r->headers_out.content_type;

    return type->len >= sizeof("text/event-stream") - 1
           && ngx_strncasecmp(type->data, (u_char *) "text/event-stream",
                              sizeof("text/event-stream") - 1) == 0;
}


/*
 * A final error answer passing to the client: its beginning is copied,
 * so the error can be classified from the provider's JSON as well.
 */

static ngx_int_t
ngx_http_llm_observe(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t *in)
{
    size_t        n;
    ngx_buf_t    *b, *kept;
    ngx_chain_t  *cl;

    kept = ngx_http_llm_answer_buf(sr, ctx);
    if (kept == NULL) {
        return NGX_ERROR;
    }

    for (cl = in; cl && kept->last < kept->end; cl = cl->next) {
        b = cl->buf;

        if (!ngx_buf_in_memory(b)) {
            continue;
        }

        n = ngx_min((size_t) (b->last - b->pos),
                    (size_t) (kept->end - kept->last));

        kept->last = ngx_cpymem(kept->last, b->pos, n);
    }

    return NGX_OK;
}


/*
 * The buffer an error answer is kept in: as long as its Content-Length
 * when that is known (a typical error JSON is a few hundred bytes), up to
 * NGX_HTTP_LLM_ERROR_BODY_MAX; reused by later error answers that fit.
 */

static ngx_buf_t *
ngx_http_llm_answer_buf(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx)
{
    off_t       length;
    size_t      size;
    ngx_buf_t  *b;

    length = sr->headers_out.content_length_n;

    size = (length >= 0 && length < NGX_HTTP_LLM_ERROR_BODY_MAX)
           ? (size_t) ngx_max(length, 1) : NGX_HTTP_LLM_ERROR_BODY_MAX;

    b = ctx->answer_body;

    if (b && (size_t) (b->end - b->start) >= size) {
        return b;
    }

    b = ngx_create_temp_buf(sr->pool, size);
    if (b == NULL) {
        return NULL;
    }

    ctx->answer_body = b;

    return b;
}


/*
 * Keeps a held error answer, up to NGX_HTTP_LLM_ERROR_BODY_MAX bytes.  A
 * longer one is decided on from its beginning at once: if it is the
 * final answer it is committed and streamed from there (nothing of it is
 * lost, and nothing more is buffered); else the rest is dropped.
 */

static ngx_int_t
ngx_http_llm_hold(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t *in)
{
    size_t        n;
    ngx_int_t     rc;
    ngx_uint_t    d;
    ngx_buf_t    *b, *kept;
    ngx_chain_t  *cl, out;

    kept = ngx_http_llm_answer_buf(sr, ctx);
    if (kept == NULL) {
        return NGX_ERROR;
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (b->last_in_chain || b->last_buf) {
            ctx->answered = 1;
        }

        if (!ngx_buf_in_memory(b)) {
            /* a file buffer: the upstream buffered to disk */
            if (ngx_buf_size(b) == 0) {
                continue;
            }

            break;
        }

        n = ngx_min((size_t) (b->last - b->pos),
                    (size_t) (kept->end - kept->last));

        kept->last = ngx_cpymem(kept->last, b->pos, n);
        b->pos += n;

        if (b->pos < b->last) {
            break;
        }
    }

    if (cl == NULL) {
        return NGX_OK;
    }

    if (ctx->state == NGX_HTTP_LLM_ATTEMPT_CHECKING) {
        /* a good answer too long to check: it goes on unchecked */
        ctx->answer = NULL;

        if (ngx_http_llm_read_answer(sr, ctx) != NGX_OK) {
            return NGX_ERROR;
        }

        rc = ngx_http_llm_commit(sr->main, sr);

        if (rc == NGX_ERROR || rc > NGX_OK) {
            return NGX_ERROR;
        }

        out.buf = kept;
        out.next = cl;

        return ngx_http_llm_body_filter(sr, &out);
    }

    /* too long to keep: decide now from what is kept */

    ctx->answer_partial = 1;
    ctx->retry_after = ngx_http_llm_retry_after(sr);
    ctx->error = ngx_http_llm_classify_response(sr->headers_out.status,
                                                kept->pos,
                                                kept->last - kept->pos);
    d = ngx_http_llm_decide(ctx, NGX_HTTP_LLM_DECIDE_EARLY);

    if (d == NGX_HTTP_LLM_DECISION_RETRY
        || d == NGX_HTTP_LLM_DECISION_FALLBACK)
    {
        ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_DROPPED);

        for ( /* void */ ; cl; cl = cl->next) {
            cl->buf->pos = cl->buf->last;
            cl->buf->file_pos = cl->buf->file_last;
        }

        return NGX_OK;
    }

    ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_PASSED);

    rc = ngx_http_llm_commit(sr->main, sr);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        return NGX_ERROR;
    }

    out.buf = kept;
    out.next = cl;

    return ngx_http_llm_body_filter(sr, &out);
}


/*
 * llm_check_answer: a good answer that is not a stream, of at most
 * NGX_HTTP_LLM_ERROR_BODY_MAX bytes when its length is known, is held
 * as an error answer is, when a failure could still be retried, and
 * judged by its shape once whole (docs/directives.md, llm_check_answer).
 */

static ngx_uint_t
ngx_http_llm_check_hold(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx)
{
    if (!ctx->conf->check_answer
        || ctx->sse
        || ctx->family == NGX_HTTP_LLM_FAMILY_OTHER
        || sr->headers_out.content_length_n > NGX_HTTP_LLM_ERROR_BODY_MAX
        || !(ctx->conf->retry_on & (1 << NGX_HTTP_LLM_ERR_INVALID_RESPONSE))
        || ngx_http_llm_decide(ctx, NGX_HTTP_LLM_DECIDE_ASK)
           != NGX_HTTP_LLM_DECISION_NONE)
    {
        return 0;
    }

    ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_CHECKING);
    ctx->answer = sr;
    ctx->answer_partial = 0;
    ctx->reading = NULL;

    if (ctx->answer_body) {
        ctx->answer_body->pos = ctx->answer_body->start;
        ctx->answer_body->last = ctx->answer_body->start;
    }

    /* a body the upstream buffered to a temp file comes in memory */
    sr->filter_need_in_memory = 1;

    return 1;
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


/*
 * Sends the headers of the attempt sr (the one in flight, or a held one
 * being replayed) as the client request's.
 */

ngx_int_t
ngx_http_llm_commit(ngx_http_request_t *r, ngx_http_request_t *sr)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ngx_http_llm_copy_headers(r, sr) != NGX_OK) {
        return NGX_ERROR;
    }

    if (sr != ctx->attempt) {
        /* a kept answer replayed: exactly the bytes kept */
        r->headers_out.content_length_n = ctx->answer_body
            ? ctx->answer_body->last - ctx->answer_body->pos : 0;
    }

    if (r->headers_out.status >= NGX_HTTP_SPECIAL_RESPONSE
        && ngx_http_llm_no_retry_header(r, ctx) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!ngx_http_llm_committed(ctx)) {
        /* a held answer decided on early stays PASSED */
        ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_COMMITTED);
    }

    /* an answer to a POST is never turned into a 304 */
    r->disable_not_modified = 1;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm attempt %ui committed, status %ui",
                   ctx->tried.nelts, r->headers_out.status);

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

        if (ngx_http_llm_header_multi(r, ho) != NGX_OK) {
            return NGX_ERROR;
        }

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


/*
 * Cache-Control and Link may come in several lines, which nginx keeps
 * together besides the list: in an array of pointers up to 1.22, in a
 * chain through "next" since 1.23.  The client request's must hold the
 * copied lines, or "expires" and add_header in the route location would
 * add a second Cache-Control rather than change the provider's.
 */

static ngx_int_t
ngx_http_llm_header_multi(ngx_http_request_t *r, ngx_table_elt_t *h)
{
    ngx_uint_t               link;
    ngx_table_elt_t        **ph;
    ngx_http_headers_out_t  *out;

#if !(nginx_version >= 1023000)
    ngx_array_t             *a;
#endif

    if (h->key.len == sizeof("Cache-Control") - 1
        && ngx_strncasecmp(h->key.data, (u_char *) "Cache-Control",
                           h->key.len) == 0)
    {
        link = 0;

    } else if (h->key.len == sizeof("Link") - 1
               && ngx_strncasecmp(h->key.data, (u_char *) "Link",
                                  h->key.len) == 0)
    {
        link = 1;

    } else {
        return NGX_OK;
    }

    out = &r->headers_out;

#if (nginx_version >= 1023000)

    ph = link ? &out->link : &out->cache_control;

    while (*ph) {
        ph = &(*ph)->next;
    }

#else

    a = link ? &out->link : &out->cache_control;

    if (a->elts == NULL
        && ngx_array_init(a, r->pool, 2, sizeof(ngx_table_elt_t *))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    ph = ngx_array_push(a);
    if (ph == NULL) {
        return NGX_ERROR;
    }

#endif

    *ph = h;

    return NGX_OK;
}
