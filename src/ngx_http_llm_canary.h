
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_CANARY_H_INCLUDED_
#define _NGX_HTTP_LLM_CANARY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* the canary guard of a route */

char *ngx_http_llm_canary(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_canary_want(ngx_conf_t *cf, ngx_shm_zone_t *zone,
    ngx_http_llm_loc_conf_t *llcf);
ngx_uint_t ngx_http_llm_canary_held(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target);
void ngx_http_llm_canary_count(ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_canary_name(ngx_http_llm_node_t *n, ngx_str_t *route,
    ngx_str_t *target);
ngx_uint_t ngx_http_llm_canary_adopt(ngx_shm_zone_t *zone,
    ngx_http_llm_node_t *n, ngx_uint_t weight, ngx_msec_t since,
    ngx_uint_t attempts, ngx_uint_t failures, ngx_log_t *log);


#endif /* _NGX_HTTP_LLM_CANARY_H_INCLUDED_ */
