
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ATTEMPT_H_INCLUDED_
#define _NGX_HTTP_LLM_ATTEMPT_H_INCLUDED_


/* one attempt, a subrequest: ngx_http_llm_attempt.c */

ngx_int_t ngx_http_llm_attempt_start(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
void ngx_http_llm_terminated(void *data);


#endif /* _NGX_HTTP_LLM_ATTEMPT_H_INCLUDED_ */
