
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_llm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_llm_route(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_target(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static void ngx_http_llm_conf_where(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *llcf);


static ngx_command_t  ngx_http_llm_commands[] = {

    { ngx_string("llm_route"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_route,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_target"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_target,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_llm_module_ctx = {
    ngx_http_llm_preconfiguration,         /* preconfiguration */
    ngx_http_llm_postconfiguration,        /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_llm_create_loc_conf,          /* create location configuration */
    ngx_http_llm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_llm_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_module_ctx,              /* module context */
    ngx_http_llm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_llm_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_llm_add_variables(cf);
}


static ngx_int_t
ngx_http_llm_postconfiguration(ngx_conf_t *cf)
{
    if (ngx_http_llm_request_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_llm_filter_init(cf);
}


static void *
ngx_http_llm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_loc_conf_t));
    if (llcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     llcf->route = { 0, NULL };
     *     llcf->targets = NULL;
     *     llcf->conf_file = { 0, NULL };
     *     llcf->conf_line = 0;
     */

    return llcf;
}


/*
 * A route is a property of one location, like proxy_pass: llm_route and
 * llm_target are not inherited by nested locations, and each needs the
 * other in the same location.
 */

static char *
ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_llm_loc_conf_t  *conf = child;

    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    /* proxy_pass, return, ... given after llm_route replace its handler */

    if (conf->route.len && clcf->handler != ngx_http_llm_handler) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_route\" cannot be combined with another "
                      "content handler in one location in %V:%ui",
                      &conf->conf_file, conf->conf_line);
        return NGX_CONF_ERROR;
    }

    if (conf->route.len && conf->targets == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"llm_target\" is defined for llm route \"%V\" "
                      "in %V:%ui",
                      &conf->route, &conf->conf_file, conf->conf_line);
        return NGX_CONF_ERROR;
    }

    if (conf->route.len == 0 && conf->targets) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_target\" requires \"llm_route\" in the same "
                      "location in %V:%ui",
                      &conf->conf_file, conf->conf_line);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_route(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    u_char                    *p;
    ngx_str_t                 *value;
    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->route.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len > 64) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid llm route name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    /*
     * the name is a metrics label and a Redis key part: keep it to
     * characters that need no escaping anywhere
     */

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'
            || *p == '.')
        {
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid llm route name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    llcf->route = value[1];
    ngx_http_llm_conf_where(cf, llcf);

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_route\" cannot be combined with another "
                           "content handler in one location");
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_llm_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_llm_target(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t              *value;
    ngx_http_llm_target_t  *target;

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm target \"%V\" must be a location URI "
                           "starting with \"/\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (llcf->targets == NULL) {
        llcf->targets = ngx_array_create(cf->pool, 2,
                                         sizeof(ngx_http_llm_target_t));
        if (llcf->targets == NULL) {
            return NGX_CONF_ERROR;
        }

    } else {
        /* weights among several targets come with the attempt engine */
        return "is duplicate";
    }

    target = ngx_array_push(llcf->targets);
    if (target == NULL) {
        return NGX_CONF_ERROR;
    }

    target->uri = value[1];
    ngx_http_llm_conf_where(cf, llcf);

    return NGX_CONF_OK;
}


static void
ngx_http_llm_conf_where(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *llcf)
{
    if (llcf->conf_line == 0) {
        llcf->conf_file = cf->conf_file->file.name;
        llcf->conf_line = cf->conf_file->line;
    }
}
