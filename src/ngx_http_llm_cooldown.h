
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_COOLDOWN_H_INCLUDED_
#define _NGX_HTTP_LLM_COOLDOWN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* target cooldowns (design.md 3, 4) */

char *ngx_http_llm_cooldown(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void ngx_http_llm_target_failed(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target, ngx_uint_t err, ngx_msec_int_t wait);
ngx_msec_int_t ngx_http_llm_target_cooling(ngx_http_llm_target_t *target);


#endif /* _NGX_HTTP_LLM_COOLDOWN_H_INCLUDED_ */
