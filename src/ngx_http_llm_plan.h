
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_PLAN_H_INCLUDED_
#define _NGX_HTTP_LLM_PLAN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * the plan of a request's attempts: the pick, the order, outages
 * (design.md 2)
 */

ngx_http_llm_target_t *ngx_http_llm_pick(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_http_llm_target_t *ngx_http_llm_plan_target(ngx_http_llm_ctx_t *ctx,
    ngx_uint_t step);
ngx_http_llm_target_t *ngx_http_llm_plan_skip(ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_outage(ngx_http_llm_ctx_t *ctx, ngx_uint_t outage,
    ngx_uint_t on);
ngx_msec_int_t ngx_http_llm_retry_after(ngx_http_request_t *sr);
ngx_http_llm_attempt_t *ngx_http_llm_plan_record(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target, ngx_uint_t skipped);


#endif /* _NGX_HTTP_LLM_PLAN_H_INCLUDED_ */
