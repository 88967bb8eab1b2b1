
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_BUDGET_H_INCLUDED_
#define _NGX_HTTP_LLM_BUDGET_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* retry budgets (design.md 3, 4) */

char *ngx_http_llm_retry_budget(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_llm_budget_withdraw(ngx_http_llm_ctx_t *ctx);
ngx_msec_int_t ngx_http_llm_budget_left(ngx_http_llm_loc_conf_t *llcf);
ngx_int_t ngx_http_llm_ratio(ngx_conf_t *cf, ngx_str_t *param, size_t skip,
    ngx_uint_t *thousandths);
ngx_int_t ngx_http_llm_window(ngx_conf_t *cf, ngx_str_t *param,
    ngx_uint_t *seconds);
void ngx_http_llm_count_attempt(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target);
void ngx_http_llm_count_request(ngx_http_llm_ctx_t *ctx);


#endif /* _NGX_HTTP_LLM_BUDGET_H_INCLUDED_ */
