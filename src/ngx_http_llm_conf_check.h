
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_CONF_CHECK_H_INCLUDED_
#define _NGX_HTTP_LLM_CONF_CHECK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


/* a location with llm_ directives of its own, for the checks */
typedef struct {
    void                        *conf;      /* ngx_http_llm_loc_conf_t */
    ngx_http_core_loc_conf_t    *clcf;
} ngx_http_llm_location_t;


ngx_int_t ngx_http_llm_conf_location(ngx_conf_t *cf, void *conf);
ngx_int_t ngx_http_llm_conf_check(ngx_conf_t *cf);
ngx_int_t ngx_http_llm_bind_zones(ngx_conf_t *cf);


ngx_int_t ngx_http_llm_wiring_check(ngx_conf_t *cf);

#endif /* _NGX_HTTP_LLM_CONF_CHECK_H_INCLUDED_ */
