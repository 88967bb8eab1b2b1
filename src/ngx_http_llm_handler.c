
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The content handler of an llm route.  Once the client body is read,
 * each attempt is a subrequest to an internal target location, where the
 * operator's own proxy_pass lives.  The filters (ngx_http_llm_filter.c)
 * pass the attempt's answer on to the client; when the attempt ends, the
 * client request resumes here and ends the response.
 */


static void ngx_http_llm_body_read(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_attempt_start(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_attempt_body(ngx_http_request_t *sr,
    ngx_http_request_body_t *body);
static ngx_int_t ngx_http_llm_attempt_headers(ngx_http_request_t *sr,
    off_t content_length);
static ngx_int_t ngx_http_llm_attempt_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static ngx_int_t ngx_http_llm_keep_upstream_states(ngx_http_request_t *sr);
static void ngx_http_llm_attempt_finished(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_method_not_allowed(ngx_http_request_t *r);


static ngx_str_t  ngx_http_llm_post_method = ngx_string("POST");


ngx_int_t
ngx_http_llm_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (r != r->main) {
        /* attempts are subrequests of the client request: no nesting */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "llm route \"%V\" reached by a subrequest",
                      &llcf->route);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* even a refused request is logged with its route */

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_llm_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->conf = llcf;

    ngx_http_set_ctx(r, ctx, ngx_http_llm_module);

    if (!(r->method & NGX_HTTP_POST)) {
        return ngx_http_llm_method_not_allowed(r);
    }

    /* the body is inspected as it arrives, see ngx_http_llm_request.c */

    ctx->scan = ngx_palloc(r->pool, sizeof(ngx_http_llm_scan_t));
    if (ctx->scan == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_llm_scan_init(ctx->scan);

    rc = ngx_http_read_client_request_body(r, ngx_http_llm_body_read);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_llm_body_read(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ngx_http_llm_request_inspect(r, ctx) != NGX_OK) {
        rc = ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                     ctx->scan->error, "invalid_json");
        ngx_http_finalize_request(r, rc);
        return;
    }

    /*
     * every attempt sends the body again: a body spilled to a temp file
     * must stay open until the client request ends, whatever upstream
     * does with it after the first attempt
     */
    r->preserve_body = 1;

    if (ngx_http_llm_attempt_start(r, ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


static ngx_int_t
ngx_http_llm_attempt_start(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_request_t          *sr;
    ngx_http_llm_target_t       *target;
    ngx_http_post_subrequest_t  *ps;

    target = ctx->conf->targets->elts;

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        return NGX_ERROR;
    }

    ps->handler = ngx_http_llm_attempt_done;
    ps->data = ctx;

    /* the client's query string goes on, as it would with proxy_pass */

    if (ngx_http_subrequest(r, &target->uri, &r->args, &sr, ps, 0)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* what proxy sends: the method (POST never retried blindly upstream) */

    sr->method = NGX_HTTP_POST;
    sr->method_name = ngx_http_llm_post_method;

    if (ngx_http_llm_attempt_body(sr, r->request_body) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->attempt = sr;
    ctx->target = target;
    ctx->attempts++;
    ctx->attempt_done = 0;
    ctx->answered = 0;
    ctx->attempt_rc = NGX_OK;
    ctx->attempt_status = 0;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm attempt %ui to \"%V\"", ctx->attempts, &target->uri);

    return NGX_OK;
}


/*
 * An attempt gets a request body of its own: a chain of its own links to
 * the client body's buffers (a later model rewrite splices buffers into
 * this chain without touching the client's) and the matching headers.
 * The upstream module copies each ngx_buf_t before sending, so one chain
 * serves any number of attempts.
 */

static ngx_int_t
ngx_http_llm_attempt_body(ngx_http_request_t *sr, ngx_http_request_body_t *body)
{
    off_t                     len;
    ngx_chain_t              *cl, **ll;
    ngx_http_request_body_t  *rb;

    rb = ngx_palloc(sr->pool, sizeof(ngx_http_request_body_t));
    if (rb == NULL) {
        return NGX_ERROR;
    }

    *rb = *body;

    len = 0;
    ll = &rb->bufs;

    for (cl = body->bufs; cl; cl = cl->next) {
        *ll = ngx_alloc_chain_link(sr->pool);
        if (*ll == NULL) {
            return NGX_ERROR;
        }

        (*ll)->buf = cl->buf;
        ll = &(*ll)->next;

        len += ngx_buf_size(cl->buf);
    }

    *ll = NULL;

    sr->request_body = rb;

    return ngx_http_llm_attempt_headers(sr, len);
}


/*
 * ngx_http_subrequest() shares the parent's header list; pushing to it
 * would corrupt the client request's headers, so the attempt gets a new
 * list.  Content-Length and Transfer-Encoding describe the body the
 * attempt sends (proxy derives them from content_length_n), and the
 * attempt asks for an identity answer the module can read.
 */

static ngx_int_t
ngx_http_llm_attempt_headers(ngx_http_request_t *sr, off_t content_length)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *ho;

    if (ngx_list_init(&sr->headers_in.headers, sr->pool, 20,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    part = &sr->main->headers_in.headers.part;
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

        if ((h[i].key.len == sizeof("Content-Length") - 1
             && ngx_strncasecmp(h[i].key.data, (u_char *) "Content-Length",
                                h[i].key.len) == 0)
            || (h[i].key.len == sizeof("Transfer-Encoding") - 1
                && ngx_strncasecmp(h[i].key.data,
                                   (u_char *) "Transfer-Encoding",
                                   h[i].key.len) == 0)
            || (h[i].key.len == sizeof("Accept-Encoding") - 1
                && ngx_strncasecmp(h[i].key.data,
                                   (u_char *) "Accept-Encoding",
                                   h[i].key.len) == 0))
        {
            continue;
        }

        ho = ngx_list_push(&sr->headers_in.headers);
        if (ho == NULL) {
            return NGX_ERROR;
        }

        *ho = h[i];

#if (nginx_version >= 1023000)
        ho->next = NULL;
#endif
    }

    sr->headers_in.content_length = NULL;
    sr->headers_in.transfer_encoding = NULL;
    sr->headers_in.content_length_n = content_length;
    sr->headers_in.chunked = 0;

#if (NGX_HTTP_GZIP || NGX_HTTP_HEADERS)
    sr->headers_in.accept_encoding = NULL;
#endif

    return NGX_OK;
}


/*
 * post_subrequest handler.  It always returns NGX_OK: a status >= 300
 * here would make nginx send its own error page through the attempt.
 * The client request decides what the client sees, in
 * ngx_http_llm_attempt_finished().  nginx calls this again when the
 * subrequest still had buffered output; only the first call counts.
 */

static ngx_int_t
ngx_http_llm_attempt_done(ngx_http_request_t *sr, void *data, ngx_int_t rc)
{
    ngx_http_llm_ctx_t  *ctx = data;

    if (ctx->attempt != sr || ctx->attempt_done) {
        return NGX_OK;
    }

    ctx->attempt_done = 1;
    ctx->attempt_rc = rc;

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ctx->attempt_status = rc;

    } else if (sr->headers_out.status) {
        ctx->attempt_status = sr->headers_out.status;

    } else if (sr->upstream && sr->upstream->state) {
        ctx->attempt_status = sr->upstream->state->status;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sr->connection->log, 0,
                   "llm attempt %ui done: rc:%i status:%ui",
                   ctx->attempts, rc, ctx->attempt_status);

    if (ngx_http_llm_keep_upstream_states(sr) != NGX_OK) {
        return NGX_ERROR;
    }

    sr->parent->write_event_handler = ngx_http_llm_attempt_finished;

    return NGX_OK;
}


/*
 * Stock $upstream_addr, $upstream_status, ... read the client request's
 * upstream_states: append the attempt's, after a separator entry (printed
 * as " : ", as nginx does between internal redirects).
 */

static ngx_int_t
ngx_http_llm_keep_upstream_states(ngx_http_request_t *sr)
{
    ngx_uint_t                  i;
    ngx_array_t                *states;
    ngx_http_request_t         *r;
    ngx_http_upstream_state_t  *state, *st;

    r = sr->main;
    states = sr->upstream_states;

    if (states == NULL || states->nelts == 0) {
        return NGX_OK;
    }

    if (r->upstream_states == NULL) {
        states = ngx_array_create(r->pool, sr->upstream_states->nelts,
                                  sizeof(ngx_http_upstream_state_t));
        if (states == NULL) {
            return NGX_ERROR;
        }

        r->upstream_states = states;

    } else if (r->upstream_states->nelts) {
        st = ngx_array_push(r->upstream_states);
        if (st == NULL) {
            return NGX_ERROR;
        }

        ngx_memzero(st, sizeof(ngx_http_upstream_state_t));
    }

    states = sr->upstream_states;
    state = states->elts;

    for (i = 0; i < states->nelts; i++) {
        st = ngx_array_push(r->upstream_states);
        if (st == NULL) {
            return NGX_ERROR;
        }

        *st = state[i];
    }

    return NGX_OK;
}


/* the client request's write_event_handler once an attempt has ended */

static void
ngx_http_llm_attempt_finished(ngx_http_request_t *r)
{
    ngx_int_t            rc;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    r->write_event_handler = ngx_http_request_empty_handler;

    ctx->attempt = NULL;
    rc = ctx->attempt_rc;

    if (ctx->committed) {

        if (!ctx->answered || rc == NGX_ERROR
            || rc >= NGX_HTTP_SPECIAL_RESPONSE)
        {
            /*
             * the answer broke after its headers reached the client: end
             * the connection rather than the response, so the client
             * cannot take a half answer for a whole one
             */
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "llm route \"%V\": answer of target \"%V\" "
                          "ended prematurely", &ctx->conf->route,
                          &ctx->target->uri);

            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }

        rc = ngx_http_send_special(r, NGX_HTTP_LAST);
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        /* no answer at all from the target (e.g. 502, 504 from upstream) */
        ngx_http_finalize_request(r, rc);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "llm route \"%V\": target \"%V\" ended without an answer",
                  &ctx->conf->route, &ctx->target->uri);

    ngx_http_finalize_request(r, NGX_HTTP_BAD_GATEWAY);
}


static ngx_int_t
ngx_http_llm_method_not_allowed(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    ngx_str_set(&h->key, "Allow");
    ngx_str_set(&h->value, "POST");

    return NGX_HTTP_NOT_ALLOWED;
}
