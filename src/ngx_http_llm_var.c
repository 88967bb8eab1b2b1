
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


static ngx_http_variable_t  ngx_http_llm_vars[] = {

    { ngx_string("llm_route"), NULL, ngx_http_llm_variable_route, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_model"), NULL, ngx_http_llm_variable_model, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_target"), NULL, ngx_http_llm_variable_target, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("llm_attempts"), NULL, ngx_http_llm_variable_attempts, 0,
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
