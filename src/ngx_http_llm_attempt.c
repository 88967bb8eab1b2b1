
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * One attempt (design.md 2): a subrequest to the target's internal
 * location, where the operator's own proxy_pass lives, with the request
 * body (rewritten or not) and the client's headers; its end, recorded,
 * classified (ngx_http_llm_classify.c) and told to the target's counters,
 * cooldown and canary guard, before the client request resumes
 * (ngx_http_llm_attempt_finished).  The filters (ngx_http_llm_filter.c)
 * see its answer in between.
 */


static ngx_int_t ngx_http_llm_attempt_headers(ngx_http_request_t *sr,
    off_t content_length);
static ngx_int_t ngx_http_llm_attempt_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static ngx_uint_t ngx_http_llm_client_gone(ngx_http_request_t *sr,
    ngx_int_t rc);
static ngx_uint_t ngx_http_llm_attempt_error(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_llm_keep_upstream_states(ngx_http_request_t *sr);
static ngx_uint_t ngx_http_llm_check_answer(ngx_http_request_t *sr,
    ngx_http_llm_ctx_t *ctx);
static ngx_uint_t ngx_http_llm_stream_whole(ngx_http_llm_ctx_t *ctx);


static ngx_str_t  ngx_http_llm_post_method = ngx_string("POST");


ngx_int_t
ngx_http_llm_attempt_start(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    off_t                        len;
    ngx_chain_t                 *body;
    ngx_http_request_t          *sr;
    ngx_http_llm_target_t       *target;
    ngx_http_llm_attempt_t      *at;
    ngx_http_request_body_t     *rb;
    ngx_http_post_subrequest_t  *ps;

    target = ngx_http_llm_plan_skip(ctx);

    if (target == NULL) {
        return NGX_DECLINED;
    }

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

    if (ngx_http_llm_request_body(r, ctx, target, &body, &len) != NGX_OK) {
        return NGX_ERROR;
    }

    rb = ngx_palloc(r->pool, sizeof(ngx_http_request_body_t));
    if (rb == NULL) {
        return NGX_ERROR;
    }

    *rb = *r->request_body;
    rb->bufs = body;
    sr->request_body = rb;

    if (ngx_http_llm_attempt_headers(sr, len) != NGX_OK) {
        return NGX_ERROR;
    }

    at = ngx_http_llm_plan_record(ctx, target, 0);
    if (at == NULL) {
        return NGX_ERROR;
    }

    ngx_http_llm_count_attempt(ctx, target);

    if (ctx->attempts == 1) {
        ngx_http_llm_outage(ctx, NGX_HTTP_LLM_OUTAGE_COOLING, 0);
    }

    ctx->attempt = sr;
    ctx->target = target;
    ctx->step_tries++;
    ctx->attempt_start = ngx_current_msec;
    ngx_http_llm_attempt_set_state(ctx, NGX_HTTP_LLM_ATTEMPT_SENT);
    ctx->attempt_rc = NGX_OK;
    ctx->attempt_status = 0;
    ctx->error = NGX_HTTP_LLM_ERR_NONE;
    ctx->retry_after = -1;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm attempt %ui to \"%V\", step %ui",
                   ctx->attempts, &target->uri, ctx->step);

    return NGX_OK;
}


/*
 * The attempt's request headers: the client's, with the length of the
 * body the attempt sends (proxy derives Content-Length from
 * content_length_n), and without Accept-Encoding, so that the answer is
 * one the module can read.  ngx_http_subrequest() shares the parent's
 * header list; pushing to it would corrupt the client request's headers,
 * so a list without Accept-Encoding is a new one.
 */

static ngx_int_t
ngx_http_llm_attempt_headers(ngx_http_request_t *sr, off_t content_length)
{
    ngx_uint_t        i;
    ngx_list_t       *list;
    ngx_list_part_t  *part, *slice;
    ngx_table_elt_t  *h;

    sr->headers_in.content_length = NULL;
    sr->headers_in.transfer_encoding = NULL;
    sr->headers_in.content_length_n = content_length;
    sr->headers_in.chunked = 0;

#if (NGX_HTTP_GZIP || NGX_HTTP_HEADERS)

    /*
     * proxy_pass makes Content-Length and Transfer-Encoding itself and
     * ignores the client's; only Accept-Encoding has to go, and the
     * shared list is good as it is without one (the attempt never adds
     * to it)
     */

    if (sr->headers_in.accept_encoding == NULL) {
        return NGX_OK;
    }

    sr->headers_in.accept_encoding = NULL;

#endif

    /*
     * The new list shares the client's elements, as the list is shared
     * above: its parts are the runs of the client's parts between the
     * headers left out, a part of 24 bytes for each run after the first,
     * rather than a copy of every header (48 bytes each, room for 20 at
     * once: with the attempt's subrequest, a 4 KB pool block more for an
     * idle stream; bench/README.md, "Streams").  The elements' links of
     * repeated headers (nginx 1.23) stay the client's, as where the list
     * is shared.  Its nalloc is the last run's length, so that a push
     * would get a part of its own and never write into the client's.
     */

    list = &sr->headers_in.headers;
    list->pool = sr->pool;

    slice = &list->part;
    slice->nelts = 0;
    slice->next = NULL;

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

        if (slice->nelts == 0) {
            slice->elts = &h[i];

        } else if ((ngx_table_elt_t *) slice->elts + slice->nelts != &h[i]) {
            slice->next = ngx_palloc(sr->pool, sizeof(ngx_list_part_t));
            if (slice->next == NULL) {
                return NGX_ERROR;
            }

            slice = slice->next;
            slice->elts = &h[i];
            slice->nelts = 0;
            slice->next = NULL;
        }

        slice->nelts++;
    }

    if (slice->nelts == 0) {
        /* not a header left */
        return ngx_list_init(list, sr->pool, 1, sizeof(ngx_table_elt_t));
    }

    list->last = slice;
    list->nalloc = slice->nelts;

    return NGX_OK;
}


/*
 * post_subrequest handler.  It always returns NGX_OK: a status >= 300
 * here would make nginx send its own error page through the attempt.
 * The client request decides what follows and does it, in
 * ngx_http_llm_attempt_finished().  nginx calls this again when the
 * subrequest still had buffered output; only the first call counts.
 */

static ngx_int_t
ngx_http_llm_attempt_done(ngx_http_request_t *sr, void *data, ngx_int_t rc)
{
    ngx_http_llm_ctx_t  *ctx = data;

    ngx_uint_t               gone;
    ngx_http_llm_attempt_t  *at;

    if (ctx->attempt != sr || ctx->attempt_done) {
        return NGX_OK;
    }

    if ((sr->buffered || sr->postponed)
        && rc != NGX_ERROR && rc < NGX_HTTP_SPECIAL_RESPONSE)
    {
        /*
         * the end of the answer is still in a filter (e.g. the copy
         * filter writing to a slow client); nginx calls again once it
         * has gone, and only then is it known whether it went whole
         */
        return NGX_OK;
    }

    ctx->attempt_done = 1;
    ctx->attempt_rc = rc;

    if (ctx->state == NGX_HTTP_LLM_ATTEMPT_INVALID) {
        /* as nginx would answer had it refused the reply */
        ctx->attempt_status = NGX_HTTP_BAD_GATEWAY;

    } else if (rc >= NGX_HTTP_SPECIAL_RESPONSE && !ngx_http_llm_kept(ctx)
               && !ngx_http_llm_committed(ctx))
    {
        ctx->attempt_status = rc;

    } else if (sr->headers_out.status) {
        ctx->attempt_status = sr->headers_out.status;

    } else if (sr->upstream && sr->upstream->state) {
        ctx->attempt_status = sr->upstream->state->status;
    }

    if (ngx_http_llm_kept(ctx) && !ctx->answered) {
        /* the provider's error answer broke off: it cannot be replayed */
        ctx->answer_partial = 1;
    }

    if (ctx->reading) {
        ngx_http_llm_answer_end(ctx->reading);
    }

    gone = ngx_http_llm_client_gone(sr, rc);

    if (gone) {
        /*
         * the client closed or reset its connection: whatever the
         * attempt got so far says nothing of the provider
         */
        ctx->error = NGX_HTTP_LLM_ERR_CLIENT_CLOSED;

        ngx_http_llm_count(ctx->conf->node,
                           errors[NGX_HTTP_LLM_ERR_CLIENT_CLOSED], 1);

    } else if (ctx->state != NGX_HTTP_LLM_ATTEMPT_DROPPED
               && ctx->state != NGX_HTTP_LLM_ATTEMPT_PASSED)
    {
        /* not decided on from its beginning: classified as it ended */
        ctx->error = ngx_http_llm_attempt_error(sr, ctx, rc);
    }

    (void) ngx_http_llm_decide(ctx, NGX_HTTP_LLM_DECIDE_END);

    at = ctx->tried.elts;
    at = &at[ctx->tried.nelts - 1];
    at->status = ctx->attempt_status;
    at->error = ctx->error;
    at->time = ngx_current_msec - ctx->attempt_start;

    if (ctx->error != NGX_HTTP_LLM_ERR_NONE && !gone) {
        ngx_http_llm_target_failed(ctx, ctx->target, ctx->error,
                                   ngx_http_llm_cooldown_wait(ctx));
    }

    if (ctx->target->canary && !gone) {
        ngx_http_llm_canary_count(ctx);
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, sr->connection->log, 0,
                   "llm attempt %ui done: rc:%i status:%ui error:%V",
                   ctx->tried.nelts, rc, ctx->attempt_status,
                   &ngx_http_llm_err_names[ctx->error]);

    if (ngx_http_llm_keep_upstream_states(sr) != NGX_OK) {
        return NGX_ERROR;
    }

    if (gone) {
        /*
         * nginx terminates the client request; 499 is its status when
         * nothing reached the client yet, as with proxy_pass
         */
        return NGX_HTTP_CLIENT_CLOSED_REQUEST;
    }

    sr->parent->write_event_handler = ngx_http_llm_attempt_finished;

    return NGX_OK;
}


/*
 * Whether the attempt ended because the client went away: the upstream
 * module saw the client connection closed or reset (499), or writing to
 * it failed.  With HTTP/2 the connection is the stream's own, so a
 * RST_STREAM of the client counts too.
 */

static ngx_uint_t
ngx_http_llm_client_gone(ngx_http_request_t *sr, ngx_int_t rc)
{
    return rc == NGX_HTTP_CLIENT_CLOSED_REQUEST || sr->connection->error;
}


/* the error category of the attempt that just ended */

static ngx_uint_t
ngx_http_llm_attempt_error(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx,
    ngx_int_t rc)
{
    ngx_buf_t                  *b;
    ngx_http_upstream_state_t  *state;

    b = ctx->answer_body;

    if (ctx->state == NGX_HTTP_LLM_ATTEMPT_INVALID) {
        return NGX_HTTP_LLM_ERR_INVALID_RESPONSE;
    }

    if (ctx->state == NGX_HTTP_LLM_ATTEMPT_CHECKING) {
        /* a good answer held by llm_check_answer */
        return ngx_http_llm_check_answer(sr, ctx);
    }

    if (ngx_http_llm_committed(ctx)
        && ctx->attempt_status < NGX_HTTP_SPECIAL_RESPONSE)
    {

        if (!ctx->answered || rc == NGX_ERROR
            || rc >= NGX_HTTP_SPECIAL_RESPONSE)
        {
            return NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED;
        }

        return ngx_http_llm_stream_whole(ctx)
               ? NGX_HTTP_LLM_ERR_NONE : NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED;
    }

    /*
     * a final error answer passed on, whole or cut, is classified from
     * its status and the beginning observed: the provider failed before
     * the cut did
     */

    if (ngx_http_llm_kept(ctx) || ngx_http_llm_committed(ctx)) {
        /* a provider's error answer */
        ctx->retry_after = ngx_http_llm_retry_after(sr);

        return ngx_http_llm_classify_response(ctx->attempt_status,
                                              b ? b->pos : NULL,
                                              b ? (size_t) (b->last - b->pos)
                                                : 0);
    }

    /* no answer: nginx's own 502 or 504 */

    if (sr->upstream && sr->upstream->state
        && (rc == NGX_HTTP_BAD_GATEWAY || rc == NGX_HTTP_GATEWAY_TIME_OUT))
    {
        state = sr->upstream->state;

        if (state->connect_time == (ngx_msec_t) -1) {
            return rc == NGX_HTTP_GATEWAY_TIME_OUT
                   ? NGX_HTTP_LLM_ERR_TIMEOUT : NGX_HTTP_LLM_ERR_CONNECT;
        }

        if (rc == NGX_HTTP_GATEWAY_TIME_OUT) {
            return NGX_HTTP_LLM_ERR_TIMEOUT;
        }

        /* connected, but no valid response header: reset, garbage */
        return NGX_HTTP_LLM_ERR_SERVER;
    }

    return ngx_http_llm_classify_response(rc >= NGX_HTTP_SPECIAL_RESPONSE
                                          ? (ngx_uint_t) rc
                                          : NGX_HTTP_BAD_GATEWAY,
                                          NULL, 0);
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


/*
 * The client request's cleanup.  It finds an attempt still in flight only
 * when nginx ended the request without finalizing the attempt: a worker
 * that reached worker_shutdown_timeout after a reload, a connection
 * closed under it.  The attempt is recorded as it stood, a stream that
 * had begun as stream_interrupted; nothing was the target's fault, so
 * nothing is counted against it.  The connection is gone by then: no
 * error event can follow.
 */

void
ngx_http_llm_terminated(void *data)
{
    ngx_http_request_t *r = data;

    ngx_http_request_t      *sr;
    ngx_http_llm_ctx_t      *ctx;
    ngx_http_llm_attempt_t  *at;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->attempt == NULL || ctx->attempt_done) {
        return;
    }

    sr = ctx->attempt;

    ctx->attempt_done = 1;
    ctx->attempt_status = sr->headers_out.status;
    ctx->error = ngx_http_llm_committed(ctx)
                 ? NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED
                                : NGX_HTTP_LLM_ERR_NONE;

    at = ctx->tried.elts;
    at = &at[ctx->tried.nelts - 1];
    at->status = ctx->attempt_status;
    at->error = ctx->error;
    at->time = ngx_current_msec - ctx->attempt_start;

    ngx_log_error(NGX_LOG_ERR, ctx->log, 0,
                  "llm route \"%V\": attempt to target \"%V\" ended by "
                  "nginx after %M ms, %s", &ctx->conf->route,
                  &ctx->target->uri, at->time,
                  ngx_http_llm_committed(ctx) ? "its answer cut"
                                 : "before its answer");
}


/*
 * The held good answer's shape, read once it is whole: an answer that is
 * not the family's (an error object, another family's object, no JSON)
 * is invalid_response.  The reader is left with the answer's usage and
 * model for the variables.
 */

static ngx_uint_t
ngx_http_llm_check_answer(ngx_http_request_t *sr, ngx_http_llm_ctx_t *ctx)
{
    ngx_buf_t                 *b;
    ngx_http_llm_answer_t     *a;
    ngx_http_llm_main_conf_t  *lmcf;

    if (!ctx->answered) {
        /* cut: no whole answer to pass on */
        return NGX_HTTP_LLM_ERR_INVALID_RESPONSE;
    }

    a = ngx_palloc(sr->pool, sizeof(ngx_http_llm_answer_t));
    if (a == NULL
        || ngx_http_llm_answer_init(a, sr->pool, ctx->family, 0) != NGX_OK)
    {
        return NGX_HTTP_LLM_ERR_INVALID_RESPONSE;
    }

    /* no variable reads the answer: its usage and model are not decoded */

    lmcf = ngx_http_get_module_main_conf(sr, ngx_http_llm_module);
    a->shape_only = !lmcf->read_answers;

    b = ctx->answer_body;

    if (b) {
        ngx_http_llm_answer_feed(a, b->pos, b->last);
    }

    ngx_http_llm_answer_end(a);

    ctx->reading = a;

    if (a->shape == NGX_HTTP_LLM_SHAPE_OK) {
        /* the client's first byte follows at once */
        ctx->first_byte = ngx_current_msec;
        return NGX_HTTP_LLM_ERR_NONE;
    }

    ngx_log_error(NGX_LOG_INFO, ctx->log, 0,
                  "llm route \"%V\": answer %ui of target \"%V\" is not "
                  "of the %V family", &ctx->conf->route,
                  sr->headers_out.status, &ctx->target->uri,
                  &ngx_http_llm_family_names[ctx->family]);

    return NGX_HTTP_LLM_ERR_INVALID_RESPONSE;
}


/*
 * Whether a good answer that arrived whole at the HTTP level is whole
 * for its protocol too: a stream of a family with a documented end
 * (chat [DONE], Responses response.completed, Anthropic message_stop)
 * that lacks it, or that carried the provider's own error event, is a
 * half answer.
 */

static ngx_uint_t
ngx_http_llm_stream_whole(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_answer_t  *a;

    a = ctx->reading;

    if (a == NULL || !a->sse) {
        return 1;
    }

    if (a->error != NGX_HTTP_LLM_ERR_NONE) {
        return 0;
    }

    switch (ctx->family) {
    case NGX_HTTP_LLM_FAMILY_CHAT:
    case NGX_HTTP_LLM_FAMILY_RESPONSES:
    case NGX_HTTP_LLM_FAMILY_MESSAGES:
        return a->done;
    default:
        return 1;
    }
}
