
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The content handler of an llm route (design.md 2): it reads and
 * inspects the client body, picks the plan and starts the first attempt
 * (ngx_http_llm_attempt.c).  When an attempt ends, the client request
 * resumes here with the decision ngx_http_llm_decide() took: the same
 * target again after a backoff (an nginx timer), the next target of the
 * plan at once, or the final answer (ngx_http_llm_final.c).
 */


static void ngx_http_llm_body_read(ngx_http_request_t *r);
static void ngx_http_llm_next(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_wait(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_msec_t delay);
static void ngx_http_llm_wait_handler(ngx_event_t *ev);
static void ngx_http_llm_wait_cleanup(void *data);
static ngx_int_t ngx_http_llm_method_not_allowed(ngx_http_request_t *r);
static ngx_log_t *ngx_http_llm_request_log(ngx_http_request_t *r,
    ngx_log_t *log);
static u_char *ngx_http_llm_log_context(ngx_log_t *log, u_char *buf,
    size_t len);


ngx_int_t
ngx_http_llm_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (r != r->main) {
        /* attempts are subrequests of the client request: no nesting */
        ngx_log_error(NGX_LOG_ERR, ngx_http_llm_request_log(r, NULL), 0,
                      "llm route \"%V\" reached by a subrequest",
                      &llcf->route);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * even a refused request is logged with its route.  The context and
     * its log live as long as the request, a stream's to its end: a
     * large allocation, as ~500 bytes of the request pool's 4 KB blocks
     * they would, with the attempt's subrequest, cost an idle stream a
     * block more (bench/README.md, "Streams")
     */

    ctx = ngx_pmemalign(r->pool, sizeof(ngx_http_llm_ctx_t), NGX_ALIGNMENT);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(ctx, sizeof(ngx_http_llm_ctx_t));

    ctx->conf = llcf;
    ctx->log = ngx_http_llm_request_log(r, &ctx->request_log);
    ctx->request_start = ngx_current_msec;
    ctx->family = llcf->family ? llcf->family : ngx_http_llm_family(r);
    ctx->retry_after = -1;
    ctx->split_bucket = -1;

    ngx_http_set_ctx(r, ctx, ngx_http_llm_module);

    if (!(r->method & NGX_HTTP_POST)) {
        return ngx_http_llm_method_not_allowed(r);
    }

    /*
     * the body is inspected as it arrives, see ngx_http_llm_request.c;
     * the scan's state (~460 bytes) is freed once the body is inspected,
     * so it is a large allocation, not bytes of a 4 KB pool block that
     * a stream would keep to its end (bench/README.md, "Streams")
     */

    ctx->scan = ngx_pmemalign(r->pool, sizeof(ngx_http_llm_scan_t),
                              NGX_ALIGNMENT);
    if (ctx->scan == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_llm_scan_init(ctx->scan);

    if (ngx_http_llm_request_scan_read(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_llm_body_read);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_llm_body_read(ngx_http_request_t *r)
{
    ngx_int_t             rc;
    ngx_http_cleanup_t   *cln;
    ngx_http_llm_ctx_t   *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ngx_http_llm_request_inspect(r, ctx) != NGX_OK) {
        rc = ngx_http_llm_send_error(r, NGX_HTTP_BAD_REQUEST,
                                     "invalid_request_error",
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

    if (ngx_array_init(&ctx->tried, r->pool, ctx->conf->attempts,
                       sizeof(ngx_http_llm_attempt_t))
        != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cln->handler = ngx_http_llm_terminated;
    cln->data = r;

    ngx_http_llm_count_request(ctx);

    ctx->picked = ngx_http_llm_pick(r, ctx);

    rc = ngx_http_llm_catalog_check(r, ctx);

    if (rc != NGX_DECLINED) {
        /* a model not in the picked target's catalog: 400, no attempt */
        ngx_http_finalize_request(r, rc);
        return;
    }

    ctx->start = ngx_current_msec;

    /* whether this request may ever see a second attempt */

    ctx->can_retry = (ctx->conf->retry_on & ~NGX_CONF_BITMASK_SET)
                     && ctx->conf->attempts > 1
                     && (ctx->picked->tries > 1
                         || ngx_http_llm_plan_target(ctx, 1) != NULL);

    ngx_http_llm_next(r, ctx);
}


/*
 * Starts the next attempt of the plan; when every target left is cooling
 * down, the request ends with what it has.
 */

static void
ngx_http_llm_next(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_llm_attempt_start(r, ctx);

    if (rc == NGX_DECLINED) {
        ngx_http_llm_final(r, ctx);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
    }
}


/* the client request's write_event_handler once an attempt has ended */

void
ngx_http_llm_attempt_finished(ngx_http_request_t *r)
{
    ngx_uint_t           d;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    r->write_event_handler = ngx_http_request_empty_handler;

    ctx->attempt = NULL;

    /*
     * a good answer is final (one held by llm_check_answer is replayed
     * there); the decision of an earlier attempt stays for the record
     */

    if (ngx_http_llm_committed(ctx)
        || (ctx->state == NGX_HTTP_LLM_ATTEMPT_CHECKING
            && ctx->error == NGX_HTTP_LLM_ERR_NONE))
    {
        ngx_http_llm_final(r, ctx);
        return;
    }

    /*
     * after the target's counters and cooldown know of the failure: a
     * target its own failure put in cooldown is not tried again
     */

    d = ngx_http_llm_decide(ctx, NGX_HTTP_LLM_DECIDE_NEXT);

    if (d == NGX_HTTP_LLM_DECISION_RETRY
        || d == NGX_HTTP_LLM_DECISION_FALLBACK)
    {
        ngx_log_error(NGX_LOG_INFO, ctx->log, 0,
                      "llm route \"%V\": target \"%V\" failed with %V, %V",
                      &ctx->conf->route, &ctx->target->uri,
                      &ngx_http_llm_err_names[ctx->error],
                      &ngx_http_llm_decision_names[ctx->decision]);

        ctx->retried = 1;

        if (ctx->wait == 0) {
            ngx_http_llm_next(r, ctx);
            return;
        }

        if (ngx_http_llm_wait(r, ctx, ctx->wait) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }

        return;
    }

    ngx_http_llm_final(r, ctx);
}


/*
 * A wait between attempts: an nginx timer, never a sleep.  Meanwhile the
 * client connection is watched, so a client that goes away ends the work
 * at once (499, no further attempt); the pool cleanup removes the timer
 * whenever the request ends first.
 */

static ngx_int_t
ngx_http_llm_wait(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_msec_t delay)
{
    ngx_pool_cleanup_t  *cln;

    if (ctx->backoff.handler == NULL) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_llm_wait_cleanup;
        cln->data = ctx;

        ctx->backoff.handler = ngx_http_llm_wait_handler;
        ctx->backoff.data = r;
        ctx->backoff.log = r->connection->log;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm backoff %M ms", delay);

    ngx_add_timer(&ctx->backoff, delay);

    r->read_event_handler = ngx_http_test_reading;

    return NGX_OK;
}


static void
ngx_http_llm_wait_handler(ngx_event_t *ev)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;
    ngx_http_llm_ctx_t  *ctx;

    r = ev->data;
    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    ngx_http_set_log_request(c->log, r);

    r->read_event_handler = ngx_http_block_reading;

    ngx_http_llm_next(r, ctx);

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_llm_wait_cleanup(void *data)
{
    ngx_http_llm_ctx_t  *ctx = data;

    if (ctx->backoff.timer_set) {
        ngx_del_timer(&ctx->backoff);
    }
}


static ngx_int_t
ngx_http_llm_method_not_allowed(ngx_http_request_t *r)
{
    if (ngx_http_llm_add_header(r, "Allow", (u_char *) "POST",
                                sizeof("POST") - 1)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_HTTP_NOT_ALLOWED;
}


/*
 * The module's own lines in the error log name the client, the server
 * and the URI path of the request, never its query string nor its
 * headers: nginx's context of a request ("request: \"POST /v1/...?key=
 * ...\"") would write a key that a client passed in the query string
 * (as some providers' APIs take it) into every line.  The log is made
 * in log, or allocated when log is NULL.
 */

static ngx_log_t *
ngx_http_llm_request_log(ngx_http_request_t *r, ngx_log_t *log)
{
    if (log == NULL) {
        log = ngx_palloc(r->pool, sizeof(ngx_log_t));
        if (log == NULL) {
            return r->connection->log;
        }
    }

    *log = *r->connection->log;
    log->handler = ngx_http_llm_log_context;
    log->data = r;
    log->action = NULL;

    return log;
}


static u_char *
ngx_http_llm_log_context(ngx_log_t *log, u_char *buf, size_t len)
{
    ngx_http_request_t        *r;
    ngx_http_core_srv_conf_t  *cscf;

    r = log->data;
    cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);

    return ngx_snprintf(buf, len, ", client: %V, server: %V, uri: \"%V\"",
                        &r->connection->addr_text, &cscf->server_name,
                        &r->uri);
}
