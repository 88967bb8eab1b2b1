
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The client's answer when no attempt follows (design.md 2): a
 * committed answer ended, whole or cut; the last provider
 * answer replayed unchanged; the 503 of a route whose targets are all
 * cooling down; the gateway's own error in the family's shape.  And the
 * headers the gateway adds to any answer: x-should-retry, x-llm-*.
 */


/* no more attempts: end the client's response */

void
ngx_http_llm_final(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_uint_t  level;

    rc = ctx->attempt_rc;

    if (ctx->error != NGX_HTTP_LLM_ERR_NONE
        && ctx->error != NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED
        && ctx->target)
    {
        /*
         * error level when the gateway spent retries in vain or no
         * provider answered at all; a provider's single answer passed on
         * as it is (its refusal, its rate limit) is the access log's
         */

        level = (ctx->retried || ctx->answer == NULL)
                ? NGX_LOG_ERR : NGX_LOG_INFO;

        ngx_log_error(level, ctx->log, 0,
                      "llm route \"%V\": target \"%V\" failed with %V, "
                      "%V after %ui attempt%s",
                      &ctx->conf->route, &ctx->target->uri,
                      &ngx_http_llm_err_names[ctx->error],
                      &ngx_http_llm_decision_names[ctx->decision],
                      ctx->tried.nelts, ctx->tried.nelts == 1 ? "" : "s");
    }

    if (ngx_http_llm_committed(ctx)) {

        if (!ctx->answered || rc == NGX_ERROR
            || rc >= NGX_HTTP_SPECIAL_RESPONSE)
        {
            ngx_log_error(NGX_LOG_ERR, ctx->log, 0,
                          "llm route \"%V\": answer of target \"%V\" "
                          "ended prematurely", &ctx->conf->route,
                          &ctx->target->uri);

            if (ctx->sse && !r->connection->error) {
                /* a stream ends with the protocol's error event */
                ngx_http_finalize_request(r,
                                          ngx_http_llm_stream_error(r, ctx));
                return;
            }

            /*
             * any other answer broke after its headers reached the
             * client: end the connection rather than the response, so the
             * client cannot take a half answer for a whole one
             */
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }

        if (ctx->error == NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED) {

            ngx_log_error(NGX_LOG_ERR, ctx->log, 0,
                          "llm route \"%V\": stream of target \"%V\" %s",
                          &ctx->conf->route, &ctx->target->uri,
                          ctx->reading->error != NGX_HTTP_LLM_ERR_NONE
                          ? "carried an error event"
                          : "ended without its end event");

            if (ctx->reading->error == NGX_HTTP_LLM_ERR_NONE) {
                /* the provider said nothing: the gateway says it */
                ngx_http_finalize_request(r,
                                          ngx_http_llm_stream_error(r, ctx));
                return;
            }
        }

        /* the answer's last buffer ended it already: as if sent now */
        rc = ctx->last_sent ? NGX_OK
                            : ngx_http_send_special(r, NGX_HTTP_LAST);

        ngx_http_finalize_request(r, rc);
        return;
    }

    if (ctx->answer && !ctx->answer_partial) {
        /* the provider's own last answer, unchanged */
        ngx_http_finalize_request(r, ngx_http_llm_replay(r, ctx));
        return;
    }

    if (ctx->attempts == 0) {
        /* every target was cooling down: not even a first attempt */
        ngx_http_finalize_request(r, ngx_http_llm_cooling_answer(r, ctx));
        return;
    }

    /*
     * no provider answer, or only the beginning of one that was dropped
     * for a retry: the gateway's 502 or 504 in the family's shape
     */

    if (ngx_http_llm_no_retry_header(r, ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_finalize_request(r, ngx_http_llm_gateway_error(r,
                                     rc >= NGX_HTTP_SPECIAL_RESPONSE
                                     ? rc : NGX_HTTP_BAD_GATEWAY));
}


/*
 * 503 from the gateway when every target of the plan is cooling down,
 * with a Retry-After of the soonest end.
 */

ngx_int_t
ngx_http_llm_cooling_answer(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char                  *p;
    ngx_uint_t               i;
    ngx_msec_int_t           left, soonest;
    ngx_http_llm_attempt_t  *at;

    at = ctx->tried.elts;
    soonest = 0;

    for (i = 0; i < ctx->tried.nelts; i++) {
        left = ngx_http_llm_target_cooling(at[i].target);

        if (left && (soonest == 0 || left < soonest)) {
            soonest = left;
        }
    }

    ngx_http_llm_outage(ctx, NGX_HTTP_LLM_OUTAGE_COOLING, 1);

    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_llm_add_header(r, "Retry-After", p,
                                ngx_sprintf(p, "%T",
                                            (time_t) (soonest + 999) / 1000)
                                - p)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_llm_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "server_error",
                                   "every target of the route is cooling "
                                   "down", "targets_cooling_down");
}


ngx_int_t
ngx_http_llm_replay(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    /* a held answer passed on: its header is the client's first byte */

    if (ctx->first_byte == 0) {
        ctx->first_byte = ngx_current_msec;
    }

    rc = ngx_http_llm_commit(r, ctx->answer);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ctx->answer_body;

    if (b == NULL || b->pos == b->last) {
        return ngx_http_send_special(r, NGX_HTTP_LAST);
    }

    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * x-should-retry: false on a final failure when the gateway has spent
 * retries or may not spend more: the OpenAI and Anthropic SDKs honour it,
 * so client retries do not multiply ours
 */

ngx_int_t
ngx_http_llm_no_retry_header(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    static ngx_str_t  provider[] = {
        ngx_string("x-should-retry"), ngx_null_string
    };

    if (!ctx->retried
        && ctx->decision != NGX_HTTP_LLM_DECISION_EXHAUSTED
        && ctx->decision != NGX_HTTP_LLM_DECISION_DEADLINE
        && ctx->decision != NGX_HTTP_LLM_DECISION_BUDGET)
    {
        return NGX_OK;
    }

    /* the provider's own x-should-retry is the gateway's to answer now */

    ngx_http_llm_hide_headers(&r->headers_out.headers, provider);

    return ngx_http_llm_add_header(r, "x-should-retry", (u_char *) "false",
                                   sizeof("false") - 1);
}


/*
 * llm_response_headers: the attempts made and whether the latest went to
 * a fallback, on any answer of the route (a provider's, replayed or
 * streamed, or the gateway's own), as they stand when its headers go
 * out; for a committed answer that is final.  nginx's own answers
 * before the route's handler ran (413 for a body too large) have none
 * made.  A provider's (or another gateway's) headers of these names are
 * dropped: the caller is told about this gateway's attempts only.
 */

ngx_int_t
ngx_http_llm_response_headers(ngx_http_request_t *r)
{
    u_char                   *p;
    ngx_uint_t                attempts, fallback;
    ngx_http_llm_ctx_t       *ctx;
    ngx_http_llm_loc_conf_t  *llcf;

    static ngx_str_t  ours[] = {
        ngx_string("x-llm-attempts"), ngx_string("x-llm-fallback"),
        ngx_null_string
    };

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);
    llcf = ctx ? ctx->conf
               : ngx_http_get_module_loc_conf(r, ngx_http_llm_module);

    if (llcf->route.len == 0 || !llcf->response_headers) {
        return NGX_OK;
    }

    attempts = ctx ? ctx->attempts : 0;
    fallback = ctx && ctx->target && ctx->target->fallback;

    ngx_http_llm_hide_headers(&r->headers_out.headers, ours);

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_add_header(r, "x-llm-attempts", p,
                                ngx_sprintf(p, "%ui", attempts) - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_add_header(r, "x-llm-fallback",
                                   (u_char *) (fallback ? "1" : "0"), 1);
}


/* hides the headers of the names given (to a null string) in a list */

void
ngx_http_llm_hide_headers(ngx_list_t *headers, ngx_str_t *names)
{
    ngx_str_t        *name;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &headers->part;
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

        for (name = names; name->len; name++) {
            if (h[i].key.len == name->len
                && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
            {
                h[i].hash = 0;
                break;
            }
        }
    }
}


/* adds a response header of the gateway's own */

ngx_int_t
ngx_http_llm_add_header(ngx_http_request_t *r, char *key, u_char *value,
    size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


/*
 * The gateway's own error answer in the error shape of the route's
 * endpoint family (docs/directives.md, "Errors of the gateway"), so SDKs
 * raise their usual error: Anthropic's for messages, OpenAI's for the
 * others (the Responses API answers HTTP errors with OpenAI's error
 * object too).  type and code are OpenAI's; a messages answer takes the
 * Anthropic type that fits the status.  message is a fixed string of the
 * module's: never client bytes.  An error_page for the status in the
 * route's location is left to nginx: the status is returned.
 */

ngx_int_t
ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, const char *message, const char *code)
{
    u_char              *p;
    size_t               len, mlen;
    ngx_buf_t           *b;
    ngx_uint_t           family;
    ngx_http_llm_ctx_t  *ctx;

    if (ngx_http_llm_error_page(r, status)) {
        return status;
    }

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);
    family = ctx ? ctx->family : NGX_HTTP_LLM_FAMILY_CHAT;

    mlen = ngx_strlen(message);

    if (family == NGX_HTTP_LLM_FAMILY_MESSAGES) {
        type = (status == NGX_HTTP_BAD_REQUEST) ? "invalid_request_error"
               : (status == NGX_HTTP_SERVICE_UNAVAILABLE) ? "overloaded_error"
               : "api_error";
        code = "";
    }

    len = sizeof("{\"error\":{\"message\":\"\",\"type\":\"\","
                 "\"param\":null,\"code\":\"\"}}\n") - 1
          + sizeof("{\"type\":\"error\",") - 1
          + mlen + ngx_escape_json(NULL, (u_char *) message, mlen)
          + ngx_strlen(type) + ngx_strlen(code);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (family == NGX_HTTP_LLM_FAMILY_MESSAGES) {
        p = ngx_sprintf(b->last, "{\"type\":\"error\",\"error\":"
                                 "{\"type\":\"%s\",\"message\":\"", type);
        p = (u_char *) ngx_escape_json(p, (u_char *) message, mlen);
        p = ngx_cpymem(p, "\"}}\n", sizeof("\"}}\n") - 1);

    } else {
        p = ngx_cpymem(b->last, "{\"error\":{\"message\":\"",
                       sizeof("{\"error\":{\"message\":\"") - 1);
        p = (u_char *) ngx_escape_json(p, (u_char *) message, mlen);
        p = ngx_sprintf(p, "\",\"type\":\"%s\",\"param\":null,"
                           "\"code\":\"%s\"}}\n", type, code);
    }

    b->last = p;

    return ngx_http_llm_send_json(r, status, b);
}


/*
 * An error_page for the status in the route's location is left to
 * nginx: the caller returns the status instead of its own answer.
 */

ngx_uint_t
ngx_http_llm_error_page(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_uint_t                 i;
    ngx_http_err_page_t       *err_page;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->error_pages == NULL || r->error_page) {
        return 0;
    }

    err_page = clcf->error_pages->elts;

    for (i = 0; i < clcf->error_pages->nelts; i++) {
        if ((ngx_uint_t) err_page[i].status == status) {
            return 1;
        }
    }

    return 0;
}


/* the gateway's own JSON answer, b its whole body */

ngx_int_t
ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

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


/*
 * No provider answered, or only the beginning of an answer dropped for a
 * retry: the gateway's 502 or 504 (another status of nginx's as it is).
 */

ngx_int_t
ngx_http_llm_gateway_error(ngx_http_request_t *r, ngx_int_t status)
{
    if (status == NGX_HTTP_GATEWAY_TIME_OUT) {
        return ngx_http_llm_send_error(r, status, "server_error",
                                       "the provider did not answer in "
                                       "time", "gateway_timeout");
    }

    if (status == NGX_HTTP_BAD_GATEWAY) {
        return ngx_http_llm_send_error(r, status, "server_error",
                                       "no provider answered",
                                       "bad_gateway");
    }

    return status;
}
