
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_FILTER_H_INCLUDED_
#define _NGX_HTTP_LLM_FILTER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* the attempt's header and body filters (design.md 2) */

ngx_int_t ngx_http_llm_filter_init(ngx_conf_t *cf);
ngx_int_t ngx_http_llm_commit(ngx_http_request_t *r, ngx_http_request_t *sr);


#endif /* _NGX_HTTP_LLM_FILTER_H_INCLUDED_ */
