
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_CLASSIFY_H_INCLUDED_
#define _NGX_HTTP_LLM_CLASSIFY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* error categories, a stable order: array indexes, logs, metrics */

typedef enum {
    NGX_HTTP_LLM_ERR_NONE = 0,
    NGX_HTTP_LLM_ERR_CONNECT,            /* connect_error */
    NGX_HTTP_LLM_ERR_TIMEOUT,            /* timeout */
    NGX_HTTP_LLM_ERR_RATE_LIMITED,       /* rate_limited */
    NGX_HTTP_LLM_ERR_QUOTA,              /* quota_exhausted */
    NGX_HTTP_LLM_ERR_OVERLOADED,         /* overloaded */
    NGX_HTTP_LLM_ERR_SERVER,             /* server_error */
    NGX_HTTP_LLM_ERR_AUTH,               /* auth_error */
    NGX_HTTP_LLM_ERR_INVALID_REQUEST,    /* invalid_request */
    NGX_HTTP_LLM_ERR_CONTEXT_LENGTH,     /* context_length */
    NGX_HTTP_LLM_ERR_CONTENT_FILTER,     /* content_filter */
    NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED, /* stream_interrupted */
    NGX_HTTP_LLM_ERR_INVALID_RESPONSE,   /* invalid_response */
    NGX_HTTP_LLM_ERR_CLIENT_CLOSED,      /* client_closed: not a failure */
    NGX_HTTP_LLM_ERR_LAST
} ngx_http_llm_err_e;


/*
 * A longer Retry-After saturates here (~24.8 days): beyond it a wait no
 * longer fits a timer on 32-bit platforms, and "not before then" is all
 * the caller needs to know.
 */
#define NGX_HTTP_LLM_RETRY_AFTER_MAX  ((ngx_msec_int_t) NGX_MAX_INT32_VALUE)


/* "-" for NONE, then "connect_error", ...; a null string ends the list */
extern ngx_str_t  ngx_http_llm_err_names[];


/*
 * Classifies a provider's HTTP error answer from its status and the first
 * len bytes of its body (possibly cut at a cap, so possibly not valid JSON
 * at the end).  Returns NGX_HTTP_LLM_ERR_*: NONE for 2xx, whatever the
 * body.  A status of 0 classifies a body alone, e.g. the data of an SSE
 * error event that arrived after a 200.
 */
ngx_uint_t ngx_http_llm_classify_response(ngx_uint_t status, u_char *body,
    size_t len);

/*
 * Parses a Retry-After value (delta-seconds, possibly fractional as in
 * "1.5", or an HTTP-date relative to ngx_time(); a date in the past gives
 * 0) or, when ms is set, a retry-after-ms value.  Returns milliseconds,
 * rounded up and saturated at NGX_HTTP_LLM_RETRY_AFTER_MAX, or NGX_ERROR
 * when the value is unparseable or negative.
 */
ngx_msec_int_t ngx_http_llm_parse_retry_after(u_char *value, size_t len,
    ngx_uint_t ms);


#endif /* _NGX_HTTP_LLM_CLASSIFY_H_INCLUDED_ */
