
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ROUTE_H_INCLUDED_
#define _NGX_HTTP_LLM_ROUTE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* the llm_route, llm_target and llm_fallback directives */

char *ngx_http_llm_route(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_target(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void ngx_http_llm_conf_where(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *llcf);


#endif /* _NGX_HTTP_LLM_ROUTE_H_INCLUDED_ */
