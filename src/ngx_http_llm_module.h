
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_MODULE_H_INCLUDED_
#define _NGX_HTTP_LLM_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_scan.h"


typedef struct {
    ngx_str_t                    uri;       /* internal target location */
} ngx_http_llm_target_t;


typedef struct {
    ngx_str_t                    route;     /* llm_route NAME; empty: off */
    ngx_array_t                 *targets;   /* of ngx_http_llm_target_t */

    /* where the location's first llm_ directive is, for merge errors */
    ngx_str_t                    conf_file;
    ngx_uint_t                   conf_line;
} ngx_http_llm_loc_conf_t;


/* per client request, kept on the main request */

typedef struct {
    ngx_http_llm_loc_conf_t     *conf;      /* the route's location */

    ngx_http_llm_scan_t         *scan;      /* of the request body */
    ngx_str_t                    model;     /* requested; empty: unknown */

    ngx_http_request_t          *attempt;   /* subrequest in flight */
    ngx_http_llm_target_t       *target;    /* of the latest attempt */
    ngx_uint_t                   attempts;

    ngx_int_t                    attempt_rc;    /* as finalized */
    ngx_uint_t                   attempt_status;

    unsigned                     committed:1;   /* client got the headers */
    unsigned                     answered:1;    /* ... and the last byte */
    unsigned                     attempt_done:1;
} ngx_http_llm_ctx_t;


ngx_int_t ngx_http_llm_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_llm_request_init(ngx_conf_t *cf);
ngx_int_t ngx_http_llm_request_inspect(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
ngx_int_t ngx_http_llm_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *message, const char *code);
ngx_int_t ngx_http_llm_filter_init(ngx_conf_t *cf);
ngx_int_t ngx_http_llm_add_variables(ngx_conf_t *cf);


extern ngx_module_t  ngx_http_llm_module;


#endif /* _NGX_HTTP_LLM_MODULE_H_INCLUDED_ */
