
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_CATALOG_H_INCLUDED_
#define _NGX_HTTP_LLM_CATALOG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_limits.h"


/* the longest model id a catalog holds, as the longest model= */
#define NGX_HTTP_LLM_CATALOG_ID_MAX  NGX_HTTP_LLM_MODEL_MAX


typedef struct {
    ngx_str_t                    id;
    ngx_str_t                    owned_by;  /* decoded; empty: none */
    time_t                       created;   /* 0: unknown */
} ngx_http_llm_catalog_model_t;


/* llm_catalog NAME FILE, read when the configuration is */

typedef struct {
    ngx_str_t                    name;
    ngx_str_t                    file;      /* the full path */
    ngx_array_t                  models;    /* file order, ids unique */
    ngx_str_t                   *ids;       /* sorted, for lookups */
    ngx_uint_t                   nids;
    ngx_str_t                    conf_file;
    ngx_uint_t                   conf_line;
} ngx_http_llm_catalog_t;


/* llm_models NAME ...: its answer is made once all catalogs are known */

typedef struct {
    ngx_array_t                  names;     /* of ngx_str_t */
    ngx_str_t                    body;
    void                        *clcf;      /* its core loc conf */
    ngx_str_t                    conf_file;
    ngx_uint_t                   conf_line;
} ngx_http_llm_models_t;


typedef struct {
    ngx_array_t                  catalogs;  /* of ngx_http_llm_catalog_t */
    ngx_array_t                  uses;      /* catalog= of targets */
    ngx_array_t                  lists;     /* of ngx_http_llm_models_t * */
} ngx_http_llm_catalog_conf_t;


ngx_http_llm_catalog_conf_t *ngx_http_llm_catalog_conf(ngx_conf_t *cf);
ngx_http_llm_catalog_t *ngx_http_llm_catalog_lookup(
    ngx_http_llm_catalog_conf_t *ccf, ngx_str_t *name);
ngx_uint_t ngx_http_llm_catalog_find(ngx_http_llm_catalog_t *c,
    ngx_str_t *id);
char *ngx_http_llm_catalog_parse(ngx_conf_t *cf, ngx_http_llm_catalog_t *c,
    u_char *text, size_t len, ngx_array_t *models);
ngx_int_t ngx_http_llm_models_init(ngx_conf_t *cf,
    ngx_http_llm_catalog_conf_t *ccf, ngx_http_llm_models_t *m);


/* the directives and their use (module.h declares the types named) */
char *ngx_http_llm_catalog(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_llm_models(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_catalog_use(ngx_conf_t *cf, ngx_array_t *list,
    ngx_str_t *name);
ngx_int_t ngx_http_llm_catalog_init(ngx_conf_t *cf);
ngx_uint_t ngx_http_llm_catalog_serves(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target);
ngx_int_t ngx_http_llm_catalog_check(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);

#endif /* _NGX_HTTP_LLM_CATALOG_H_INCLUDED_ */
