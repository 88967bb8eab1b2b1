
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * $llm_* variables.  All are read from the client request's context, so
 * they mean the same in the client request's log line and, with
 * log_subrequest on, in an attempt's; none is cacheable, because
 * subrequests share the client request's variable cache and the values
 * change as attempts go on.
 */


static ngx_int_t ngx_http_llm_variable_route(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_target(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_attempts(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_family(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_stream(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_usage(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_response_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_shape(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_ttft(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_budget_source(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_target_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_error_type(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_decision(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_split_bucket(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_fallback(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_canary(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_llm_variable_attempt_list(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static u_char *ngx_http_llm_attempt_item(u_char *p,
    ngx_http_llm_attempt_t *at, uintptr_t what);


/* the per-attempt lists */
#define NGX_HTTP_LLM_LIST_TARGETS   0
#define NGX_HTTP_LLM_LIST_STATUSES  1
#define NGX_HTTP_LLM_LIST_ERRORS    2
#define NGX_HTTP_LLM_LIST_TIMES     3


static ngx_http_variable_t  ngx_http_llm_vars[] = {

    { ngx_string("llm_route"), NULL, ngx_http_llm_variable_route, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_model"), NULL, ngx_http_llm_variable_model, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_target"), NULL, ngx_http_llm_variable_target, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempts"), NULL, ngx_http_llm_variable_attempts, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_family"), NULL, ngx_http_llm_variable_family, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_stream"), NULL, ngx_http_llm_variable_stream, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_usage_input_tokens"), NULL,
      ngx_http_llm_variable_usage,
      offsetof(ngx_http_llm_answer_t, input_tokens),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_usage_output_tokens"), NULL,
      ngx_http_llm_variable_usage,
      offsetof(ngx_http_llm_answer_t, output_tokens),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_response_model"), NULL,
      ngx_http_llm_variable_response_model, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_response_shape"), NULL, ngx_http_llm_variable_shape,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_ttft"), NULL, ngx_http_llm_variable_ttft, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_budget_source"), NULL,
      ngx_http_llm_variable_budget_source, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_target_model"), NULL,
      ngx_http_llm_variable_target_model, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_error_type"), NULL, ngx_http_llm_variable_error_type,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_retry_decision"), NULL,
      ngx_http_llm_variable_decision, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_split_bucket"), NULL,
      ngx_http_llm_variable_split_bucket, 0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_fallback"), NULL, ngx_http_llm_variable_fallback, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_canary"), NULL, ngx_http_llm_variable_canary, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempt_targets"), NULL,
      ngx_http_llm_variable_attempt_list, NGX_HTTP_LLM_LIST_TARGETS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempt_statuses"), NULL,
      ngx_http_llm_variable_attempt_list, NGX_HTTP_LLM_LIST_STATUSES,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempt_errors"), NULL,
      ngx_http_llm_variable_attempt_list, NGX_HTTP_LLM_LIST_ERRORS,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempt_times"), NULL,
      ngx_http_llm_variable_attempt_list, NGX_HTTP_LLM_LIST_TIMES,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_llm_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_llm_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/*
 * Whether the configuration uses a variable that needs a non-streamed
 * answer read: nginx indexes every variable that a log_format or any
 * other directive refers to, before postconfiguration.  Reading costs
 * several thousand instructions per answer, so answers are only read
 * when that is wanted (streams always are: their end is checked).
 */

ngx_flag_t
ngx_http_llm_answer_variables_used(ngx_conf_t *cf)
{
    ngx_uint_t                  i, j;
    ngx_http_variable_t        *v;
    ngx_http_core_main_conf_t  *cmcf;

    static ngx_str_t  names[] = {
        ngx_string("llm_usage_input_tokens"),
        ngx_string("llm_usage_output_tokens"),
        ngx_string("llm_response_model"),
        ngx_string("llm_response_shape"),
        ngx_null_string
    };

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    v = cmcf->variables.elts;

    for (i = 0; i < cmcf->variables.nelts; i++) {
        for (j = 0; names[j].len; j++) {
            if (v[i].name.len == names[j].len
                && ngx_strncmp(v[i].name.data, names[j].data,
                               names[j].len) == 0)
            {
                return 1;
            }
        }
    }

    return 0;
}


static void
ngx_http_llm_variable_set(ngx_http_variable_value_t *v, ngx_str_t *s)
{
    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
}


static ngx_int_t
ngx_http_llm_variable_route(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ctx->conf->route);

    return NGX_OK;
}


/*
 * The model as the client asked for it, decoded from JSON; at most 256
 * bytes (longer values are not kept).  It is client input: log it with
 * escape=json or escape=default (the default), which both escape it.
 */

static ngx_int_t
ngx_http_llm_variable_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->model.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ctx->model);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_variable_target(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->target == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ctx->target->uri);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_variable_family(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ngx_http_llm_family_names[ctx->family]);

    return NGX_OK;
}


/*
 * 1 when the request asked for a stream ("stream": true), 0 when it did
 * not; not found before the body was inspected
 */

static ngx_int_t
ngx_http_llm_variable_stream(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->tried.nelts == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = 1;
    v->data = (u_char *) (ctx->body.stream == NGX_HTTP_LLM_STREAM_TRUE
                          ? "1" : "0");
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/* tokens the provider reported for the answer; not found if it did not */

static ngx_int_t
ngx_http_llm_variable_usage(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    off_t                n;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->reading == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    n = *(off_t *) ((u_char *) ctx->reading + data);

    if (n < 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%O", n) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/* the model the answer names, capped; provider input, escape it in logs */

static ngx_int_t
ngx_http_llm_variable_response_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->reading == NULL || ctx->reading->model_len == 0)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->reading->model_len;
    v->data = ctx->reading->model;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_variable_shape(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    static ngx_str_t  shapes[] = {
        ngx_string("unchecked"),
        ngx_string("ok"),
        ngx_string("mismatch")
    };

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->reading == NULL
        || ctx->reading->shape > NGX_HTTP_LLM_SHAPE_MISMATCH)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &shapes[ctx->reading->shape]);

    return NGX_OK;
}


/*
 * Time to the first byte of the answer sent to the client, from the
 * client request's start, seconds with millisecond resolution
 */

static ngx_int_t
ngx_http_llm_variable_ttft(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    ngx_msec_int_t       ms;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->first_byte == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ms = (ngx_msec_int_t) (ctx->first_byte - ctx->request_start);

    if (ms < 0) {
        ms = 0;
    }

    p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN + 4);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%T.%03M", (time_t) ms / 1000, ms % 1000) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * Which counters the route's retry budget was judged on: "cluster", the
 * sums of all nodes as Redis last told them (llm_redis), or "local", this
 * node's llm_zone alone (no llm_redis, or no recent view of Redis).  Not
 * found without a budget, or when the route's counters did not fit in a
 * full zone.
 */

static ngx_int_t
ngx_http_llm_variable_budget_source(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    static ngx_str_t  local = ngx_string("local");
    static ngx_str_t  cluster = ngx_string("cluster");

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || !ctx->conf->budget || ctx->conf->node == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, ctx->budget_cluster ? &cluster : &local);

    return NGX_OK;
}


/* the model the latest attempt asked for: the target's, or the client's */

static ngx_int_t
ngx_http_llm_variable_target_model(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->target == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ctx->target->model.len) {
        ngx_http_llm_variable_set(v, &ctx->target->model);
        return NGX_OK;
    }

    if (ctx->model.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ctx->model);

    return NGX_OK;
}


/* the error category of the latest attempt; not found if it succeeded */

static ngx_int_t
ngx_http_llm_variable_error_type(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->error == NGX_HTTP_LLM_ERR_NONE) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ngx_http_llm_err_names[ctx->error]);

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_variable_decision(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->decision == NGX_HTTP_LLM_DECISION_NONE) {
        v->not_found = 1;
        return NGX_OK;
    }

    ngx_http_llm_variable_set(v, &ngx_http_llm_decision_names[ctx->decision]);

    return NGX_OK;
}


/* the sticky key's bucket, never the key: not found without one */

static ngx_int_t
ngx_http_llm_variable_split_bucket(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->split_bucket < 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%i", ctx->split_bucket) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_variable_fallback(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->target == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = 1;
    v->data = (u_char *) (ctx->target->fallback ? "1" : "0");
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * $llm_canary: "hold" when the weighted pick landed on a canary on hold
 * and the request went to the route's heaviest target instead, else "ok"
 */

static ngx_int_t
ngx_http_llm_variable_canary(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->picked == NULL || !ctx->conf->canary) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ctx->canary_hold) {
        v->len = sizeof("hold") - 1;
        v->data = (u_char *) "hold";

    } else {
        v->len = sizeof("ok") - 1;
        v->data = (u_char *) "ok";
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * $llm_attempt_targets, _statuses, _errors, _times: one item per attempt,
 * separated by ", " as in $upstream_status
 */

static ngx_int_t
ngx_http_llm_variable_attempt_list(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                  *p;
    size_t                   len;
    ngx_uint_t               i;
    ngx_http_llm_ctx_t      *ctx;
    ngx_http_llm_attempt_t  *at;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL || ctx->tried.nelts == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    at = ctx->tried.elts;
    len = 0;

    for (i = 0; i < ctx->tried.nelts; i++) {
        len += 2 + (data == NGX_HTTP_LLM_LIST_TARGETS
                    ? at[i].target->uri.len : 32);
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;

    for (i = 0; i < ctx->tried.nelts; i++) {
        if (i) {
            *p++ = ',';
            *p++ = ' ';
        }

        p = ngx_http_llm_attempt_item(p, &at[i], data);
    }

    v->len = p - v->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static u_char *
ngx_http_llm_attempt_item(u_char *p, ngx_http_llm_attempt_t *at,
    uintptr_t what)
{
    if (at->skipped && what != NGX_HTTP_LLM_LIST_TARGETS) {
        /* a target in cooldown: no attempt was made */
        return (what == NGX_HTTP_LLM_LIST_ERRORS)
               ? ngx_cpymem(p, "skipped", sizeof("skipped") - 1)
               : ngx_cpymem(p, what == NGX_HTTP_LLM_LIST_TIMES ? "0.000" : "-",
                            what == NGX_HTTP_LLM_LIST_TIMES ? 5 : 1);
    }

    switch (what) {

    case NGX_HTTP_LLM_LIST_TARGETS:
        return ngx_cpymem(p, at->target->uri.data, at->target->uri.len);

    case NGX_HTTP_LLM_LIST_STATUSES:
        if (at->status == 0) {
            *p++ = '-';
            return p;
        }

        return ngx_sprintf(p, "%03ui", at->status);

    case NGX_HTTP_LLM_LIST_ERRORS:
        return ngx_cpymem(p, ngx_http_llm_err_names[at->error].data,
                          ngx_http_llm_err_names[at->error].len);

    default: /* NGX_HTTP_LLM_LIST_TIMES */
        return ngx_sprintf(p, "%T.%03M", (time_t) at->time / 1000,
                           at->time % 1000);
    }
}


static ngx_int_t
ngx_http_llm_variable_attempts(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char              *p;
    ngx_http_llm_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_llm_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%ui", ctx->attempts) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}
