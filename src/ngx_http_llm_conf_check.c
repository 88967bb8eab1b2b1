
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_conf_check.h"


/*
 * The checks that span directives, made in one pass once the whole
 * configuration is read and merged (design.md 1): a directive's handler
 * checks only its own arguments and merge only fills in defaults, so
 * that every rule that relates two directives, or a directive and the
 * locations, has this one home.  Each error names the file and line of
 * the location's first llm_ directive, or of the directive at fault.
 */


static ngx_int_t ngx_http_llm_check_location(ngx_conf_t *cf,
    ngx_http_llm_location_t *loc);
static ngx_int_t ngx_http_llm_check_route(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *conf, ngx_http_core_loc_conf_t *clcf);
static ngx_int_t ngx_http_llm_check_return(ngx_conf_t *cf, void **loc_conf);


/*
 * Called from merge for every location: one with llm_ directives of its
 * own is kept for ngx_http_llm_conf_check().
 */

ngx_int_t
ngx_http_llm_conf_location(ngx_conf_t *cf, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_http_llm_location_t   *loc;
    ngx_http_llm_main_conf_t  *lmcf;

    if (llcf->route.len == 0 && llcf->targets == NULL
        && llcf->fallbacks == NULL && llcf->split_key == NULL
        && !llcf->canary && !llcf->status)
    {
        return NGX_OK;
    }

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    loc = ngx_array_push(&lmcf->locations);
    if (loc == NULL) {
        return NGX_ERROR;
    }

    loc->conf = llcf;
    loc->clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    return NGX_OK;
}


ngx_int_t
ngx_http_llm_conf_check(ngx_conf_t *cf)
{
    ngx_uint_t                 i;
    ngx_http_llm_location_t   *loc;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    if (lmcf->redis && lmcf->zones.nelts == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_redis\" requires \"llm_zone\" in %V:%ui",
                      &lmcf->redis_file, lmcf->redis_line);
        return NGX_ERROR;
    }

    loc = lmcf->locations.elts;

    for (i = 0; i < lmcf->locations.nelts; i++) {
        if (ngx_http_llm_check_location(cf, &loc[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    /* zone= names, catalog= names, then target URIs against locations */

    if (ngx_http_llm_bind_zones(cf) != NGX_OK
        || ngx_http_llm_catalog_init(cf) != NGX_OK
        || ngx_http_llm_wiring_check(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_check_location(ngx_conf_t *cf, ngx_http_llm_location_t *loc)
{
    ngx_http_llm_loc_conf_t   *conf;
    ngx_http_core_loc_conf_t  *clcf;

    conf = loc->conf;
    clcf = loc->clcf;

    /* proxy_pass, return, ... given after llm_status replace its handler */

    if (conf->status && clcf->handler != ngx_http_llm_status_handler) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_status\" cannot be combined with another "
                      "content handler in one location in %V:%ui",
                      &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    if (conf->route.len) {
        return ngx_http_llm_check_route(cf, conf, clcf);
    }

    if (conf->targets || conf->fallbacks || conf->split_key || conf->canary) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"%s\" requires \"llm_route\" in the same "
                      "location in %V:%ui",
                      conf->targets ? "llm_target"
                      : conf->fallbacks ? "llm_fallback"
                      : conf->split_key ? "llm_split_key"
                                        : "llm_canary",
                      &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_check_route(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *conf,
    ngx_http_core_loc_conf_t *clcf)
{
    /* proxy_pass, return, ... given after llm_route replace its handler */

    if (clcf->handler != ngx_http_llm_handler) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_route\" cannot be combined with another "
                      "content handler in one location in %V:%ui",
                      &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    if (ngx_http_llm_check_return(cf, clcf->loc_conf) != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_route\" cannot be combined with \"return\" "
                      "in one location in %V:%ui",
                      &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    if (conf->targets == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "no \"llm_target\" is defined for llm route \"%V\" "
                      "in %V:%ui",
                      &conf->route, &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    if (conf->total_weight == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "all targets of llm route \"%V\" have zero weight "
                      "in %V:%ui",
                      &conf->route, &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    if (conf->backoff_base > conf->backoff_max) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "llm_backoff base is greater than max for llm route "
                      "\"%V\" in %V:%ui",
                      &conf->route, &conf->conf_file, conf->conf_line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A "return" of the rewrite module in the route's own location answers
 * in the rewrite phase: the route would never run.  The rewrite module
 * keeps the location's script in the first member of its location
 * configuration (ngx_http_rewrite_module.c, so since nginx 0.x); each
 * step begins with its code function.  A "return" inside an "if" block
 * runs on the if's condition only (such as an OPTIONS preflight) and
 * lies within the span the if jumps over.  Without the rewrite module
 * there is no "return".
 */

static ngx_int_t
ngx_http_llm_check_return(ngx_conf_t *cf, void **loc_conf)
{
    u_char                      *p, *last, *block_end;
    uintptr_t                    code;
    ngx_uint_t                   i;
    ngx_array_t                **codes;
    ngx_module_t                *m;
    ngx_http_script_if_code_t   *if_code;

    m = NULL;

    for (i = 0; cf->cycle->modules[i]; i++) {
        if (ngx_strcmp(cf->cycle->modules[i]->name,
                       "ngx_http_rewrite_module")
            == 0)
        {
            m = cf->cycle->modules[i];
            break;
        }
    }

    if (m == NULL) {
        return NGX_OK;
    }

    codes = (ngx_array_t **) loc_conf[m->ctx_index];

    if (*codes == NULL) {
        return NGX_OK;
    }

    p = (*codes)->elts;
    last = p + (*codes)->nelts;
    block_end = p;

    for ( /* void */ ; p + sizeof(uintptr_t) <= last; p += sizeof(uintptr_t)) {
        code = *(uintptr_t *) p;

        if (code == (uintptr_t) ngx_http_script_if_code
            && p + sizeof(ngx_http_script_if_code_t) <= last)
        {
            if_code = (ngx_http_script_if_code_t *) p;

            if (p + if_code->next <= last) {
                block_end = p + if_code->next;
            }

            continue;
        }

        if (code == (uintptr_t) ngx_http_script_return_code
            && p >= block_end)
        {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}
