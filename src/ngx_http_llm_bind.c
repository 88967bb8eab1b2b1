
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_conf_check.h"


static ngx_int_t ngx_http_llm_bind_route(ngx_conf_t *cf,
    ngx_http_llm_main_conf_t *lmcf, ngx_http_llm_loc_conf_t *llcf);
static ngx_int_t ngx_http_llm_bind_targets(ngx_conf_t *cf,
    ngx_shm_zone_t *zone, ngx_http_llm_loc_conf_t *llcf,
    ngx_array_t *targets);


/*
 * At the end of the configuration: binds every route to its zone (its
 * llm_retry_budget zone=, else the first llm_zone) and asks the zone for
 * the nodes of the route, of its targets and of its canaries.
 */

ngx_int_t
ngx_http_llm_bind_zones(ngx_conf_t *cf)
{
    ngx_uint_t                  i;
    ngx_shm_zone_t            **zones;
    ngx_http_llm_zone_t        *zone;
    ngx_http_llm_main_conf_t   *lmcf;
    ngx_http_llm_route_name_t  *rn;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    /*
     * A cluster view older than three syncs counts as Redis being down,
     * or than a sync and a batch's timeout when that is longer: a slow
     * batch ends the link when it times out, not before.
     */

    zones = lmcf->zones.elts;

    for (i = 0; i < lmcf->zones.nelts; i++) {
        zone = zones[i]->data;
        zone->stale = lmcf->redis
                      ? ngx_max(3 * lmcf->redis->sync,
                                lmcf->redis->sync + lmcf->redis->timeout)
                      : 0;
    }

    rn = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        if (ngx_http_llm_bind_route(cf, lmcf, rn[i].conf) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_bind_route(ngx_conf_t *cf, ngx_http_llm_main_conf_t *lmcf,
    ngx_http_llm_loc_conf_t *llcf)
{
    ngx_uint_t       i;
    ngx_shm_zone_t  **zones, *zone;

    zones = lmcf->zones.elts;
    zone = NULL;

    if (llcf->budget_zone.len) {

        for (i = 0; i < lmcf->zones.nelts; i++) {
            if (zones[i]->shm.name.len == llcf->budget_zone.len
                && ngx_strncmp(zones[i]->shm.name.data,
                               llcf->budget_zone.data,
                               llcf->budget_zone.len) == 0)
            {
                zone = zones[i];
                break;
            }
        }

        if (zone == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown llm zone \"%V\" in %V:%ui",
                          &llcf->budget_zone, &llcf->conf_file,
                          llcf->conf_line);
            return NGX_ERROR;
        }

    } else if (lmcf->zones.nelts) {
        zone = zones[0];

    } else if (llcf->budget || llcf->canary) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"%s\" requires \"llm_zone\" in %V:%ui",
                      llcf->budget ? "llm_retry_budget" : "llm_canary",
                      &llcf->conf_file, llcf->conf_line);
        return NGX_ERROR;

    } else {
        /* no zone at all: nothing is counted */
        return NGX_OK;
    }

    llcf->zone = zone;

    if (ngx_http_llm_zone_want(cf, zone, NGX_HTTP_LLM_NODE_ROUTE,
                               &llcf->route, &llcf->node, 0, 0)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_llm_bind_targets(cf, zone, llcf, llcf->targets) != NGX_OK
        || ngx_http_llm_bind_targets(cf, zone, llcf, llcf->fallbacks)
           != NGX_OK
        || ngx_http_llm_canary_want(cf, zone, llcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_bind_targets(ngx_conf_t *cf, ngx_shm_zone_t *zone,
    ngx_http_llm_loc_conf_t *llcf, ngx_array_t *targets)
{
    ngx_uint_t              i;
    ngx_http_llm_target_t  *target;

    if (targets == NULL) {
        return NGX_OK;
    }

    target = targets->elts;

    for (i = 0; i < targets->nelts; i++) {
        if (ngx_http_llm_zone_want(cf, zone, NGX_HTTP_LLM_NODE_TARGET,
                                   &target[i].key, &target[i].node,
                                   llcf->cooldown_max, 0)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
