
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_SSE_H_INCLUDED_
#define _NGX_HTTP_LLM_SSE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* SSE streams passed on event by event (design.md 2) */

ngx_int_t ngx_http_llm_stream_error(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_sse_forward(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_chain_t *in,
    ngx_http_output_body_filter_pt next);


#endif /* _NGX_HTTP_LLM_SSE_H_INCLUDED_ */
