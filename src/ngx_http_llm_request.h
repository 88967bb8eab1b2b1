
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_REQUEST_H_INCLUDED_
#define _NGX_HTTP_LLM_REQUEST_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * the client request: its body read and scanned, its endpoint family
 * (design.md 1)
 */

ngx_int_t ngx_http_llm_request_init(ngx_conf_t *cf);
ngx_int_t ngx_http_llm_request_scan_read(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_request_inspect(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_request_body(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_http_llm_target_t *target,
    ngx_chain_t **out, off_t *len);
ngx_uint_t ngx_http_llm_family(ngx_http_request_t *r);
ngx_uint_t ngx_http_llm_family_of(ngx_str_t *uri);
ngx_int_t ngx_http_llm_family_value(ngx_str_t *name);


#endif /* _NGX_HTTP_LLM_REQUEST_H_INCLUDED_ */
