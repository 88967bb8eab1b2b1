
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_FINAL_H_INCLUDED_
#define _NGX_HTTP_LLM_FINAL_H_INCLUDED_


/* the client's answer when no attempt follows: ngx_http_llm_final.c */

void ngx_http_llm_final(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_cooling_answer(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_replay(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_no_retry_header(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_response_headers(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_add_header(ngx_http_request_t *r, char *key,
    u_char *value, size_t len);
ngx_int_t ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, const char *message, const char *code);
void ngx_http_llm_hide_headers(ngx_list_t *headers, ngx_str_t *names);
ngx_uint_t ngx_http_llm_error_page(ngx_http_request_t *r, ngx_uint_t status);
ngx_int_t ngx_http_llm_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b);
ngx_int_t ngx_http_llm_gateway_error(ngx_http_request_t *r,
    ngx_int_t status);


#endif /* _NGX_HTTP_LLM_FINAL_H_INCLUDED_ */
