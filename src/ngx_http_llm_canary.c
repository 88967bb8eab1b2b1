
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The canary guard of llm_canary (docs/directives.md, "Canary guard").
 * Every weighted target of a route but its heaviest carries shifted
 * traffic; each has a node of its own in the route's zone, of kind
 * canary, named "route URI model".  Not the target's node: a target
 * ("URI model") may serve several routes, at a different weight in
 * each, and a hold belongs to one route's shift; nor the route's node,
 * whose slots are the budget's.  The canary node counts attempts and
 * failures in per-second slots, so the window slides as the budget's
 * does, and keeps the hold: shared by all workers, kept across reloads
 * with the zone (ngx_http_llm_zone.c drops a hold whose weight changed)
 * and, with llm_redis, shared with other nodes (ngx_http_llm_sync.c).
 *
 * Counting is on the request path, adds to atomics only, and reads the
 * window's sums only after a failure; the zone's mutex is taken only to
 * put a canary on hold.
 */


static void ngx_http_llm_canary_take(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_node_t *n, ngx_atomic_uint_t attempts,
    ngx_atomic_uint_t failures);


/* llm_canary [errors=RATIO] [min=N] [window=TIME] */

char *
ngx_http_llm_canary(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value;
    ngx_uint_t   i;

    if (llcf->canary) {
        return "is duplicate";
    }

    /* what is not given takes its default in merge */
    llcf->canary = 1;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "errors=", 7) == 0) {

            if (ngx_http_llm_ratio(cf, &value[i], sizeof("errors=") - 1,
                                   &llcf->canary_errors)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "min=", 4) == 0) {

            n = ngx_atoi(value[i].data + 4, value[i].len - 4);

            if (n == NGX_ERROR || n == 0 || n > 1000000) {
                goto invalid;
            }

            llcf->canary_min = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            if (ngx_http_llm_window(cf, &value[i], &llcf->canary_window)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        goto invalid;
    }

    if (llcf->conf_line == 0) {
        llcf->conf_file = cf->conf_file->file.name;
        llcf->conf_line = cf->conf_file->line;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * At the end of the configuration, for a route with llm_canary: its
 * heaviest target (the first listed of the heaviest), and a node for
 * every other llm_target, weight 0 included, so that a reload that sets
 * a held canary's weight to 0 releases it as any new weight does.
 */

ngx_int_t
ngx_http_llm_canary_want(ngx_conf_t *cf, ngx_shm_zone_t *zone,
    ngx_http_llm_loc_conf_t *llcf)
{
    u_char                 *p;
    ngx_str_t               name;
    ngx_uint_t              i, heaviest;
    ngx_http_llm_target_t  *target;

    if (!llcf->canary) {
        return NGX_OK;
    }

    target = llcf->targets->elts;
    heaviest = 0;

    for (i = 1; i < llcf->targets->nelts; i++) {
        if (target[i].weight > target[heaviest].weight) {
            heaviest = i;
        }
    }

    llcf->canary_heaviest = heaviest;

    for (i = 0; i < llcf->targets->nelts; i++) {

        if (i == heaviest) {
            continue;
        }

        name.len = llcf->route.len + 1 + target[i].key.len;
        name.data = ngx_pnalloc(cf->pool, name.len);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(name.data, llcf->route.data, llcf->route.len);
        *p++ = ' ';
        ngx_memcpy(p, target[i].key.data, target[i].key.len);

        if (ngx_http_llm_zone_want(cf, zone, NGX_HTTP_LLM_NODE_CANARY, &name,
                                   &target[i].canary, 0, target[i].weight)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the route and the target key of a canary node, "route URI model" */

void
ngx_http_llm_canary_name(ngx_http_llm_node_t *n, ngx_str_t *route,
    ngx_str_t *target)
{
    u_char  *p, *last;

    last = n->name + n->len;

    /* route names have no spaces */
    p = ngx_strlchr(n->name, last, ' ');

    if (p == NULL) {
        p = last;
    }

    route->data = n->name;
    route->len = p - n->name;

    target->data = (p < last) ? p + 1 : last;
    target->len = last - target->data;
}


/*
 * The weighted pick landed on a canary: whether it is on hold, and the
 * request goes to the route's heaviest target instead.
 */

ngx_uint_t
ngx_http_llm_canary_held(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target)
{
    if (!ngx_http_llm_canary_on_hold(target->canary, target->weight)) {
        return 0;
    }

    ctx->canary_hold = 1;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->log, 0,
                   "llm canary \"%V\" on hold", &target->key);

    return 1;
}


/*
 * An attempt at a canary ended, and not because the client went away
 * nor because nginx ended the request.  Errors that belong to the
 * request say nothing of the target: they are not counted at all, so
 * that bad requests neither put a canary on hold nor hide its failures.
 */

void
ngx_http_llm_canary_count(ngx_http_llm_ctx_t *ctx)
{
    ngx_atomic_uint_t         attempts, failures;
    ngx_http_llm_node_t      *n;
    ngx_http_llm_target_t    *target;
    ngx_http_llm_loc_conf_t  *llcf;

    switch (ctx->error) {

    case NGX_HTTP_LLM_ERR_INVALID_REQUEST:
    case NGX_HTTP_LLM_ERR_CONTEXT_LENGTH:
    case NGX_HTTP_LLM_ERR_CONTENT_FILTER:
    case NGX_HTTP_LLM_ERR_CLIENT_CLOSED:
        return;

    default:
        break;
    }

    llcf = ctx->conf;
    target = ctx->target;
    n = target->canary;

    ngx_http_llm_slot_add(llcf->zone, n, NGX_HTTP_LLM_CANARY_ATTEMPTS, 1);

    if (ctx->error == NGX_HTTP_LLM_ERR_NONE) {
        return;
    }

    ngx_http_llm_slot_add(llcf->zone, n, NGX_HTTP_LLM_CANARY_FAILURES, 1);

    if (ngx_http_llm_canary_on_hold(n, target->weight)) {
        return;
    }

    attempts = ngx_http_llm_slot_sum(n, NGX_HTTP_LLM_CANARY_ATTEMPTS,
                                     llcf->canary_window, 0);

    if (attempts < llcf->canary_min) {
        return;
    }

    failures = ngx_http_llm_slot_sum(n, NGX_HTTP_LLM_CANARY_FAILURES,
                                     llcf->canary_window, 0);

    if (failures * 1000 <= llcf->canary_errors * attempts) {
        return;
    }

    ngx_http_llm_canary_take(ctx, n, attempts, failures);
}


/*
 * Puts a canary on hold, under the zone's mutex: of the workers that
 * find it failing at once, one does, and logs it.  The hold is written
 * before it is raised, so that a worker or the syncer that sees it sees
 * its weight and figures.
 */

static void
ngx_http_llm_canary_take(ngx_http_llm_ctx_t *ctx, ngx_http_llm_node_t *n,
    ngx_atomic_uint_t attempts, ngx_atomic_uint_t failures)
{
    ngx_uint_t                ratio;
    ngx_slab_pool_t          *shpool;
    ngx_http_llm_target_t    *target, *heaviest;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ctx->conf;
    target = ctx->target;
    shpool = (ngx_slab_pool_t *) llcf->zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_llm_canary_on_hold(n, target->weight)) {
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    n->hold = 0;
    ngx_memory_barrier();

    n->hold_weight = target->weight;
    n->hold_attempts = attempts;
    n->hold_failures = failures;
    n->hold_since = ngx_http_llm_wall_msec();
    n->hold_shared = 0;
    n->hold_remote = 0;

    ngx_memory_barrier();
    n->hold = 1;

    ngx_shmtx_unlock(&shpool->mutex);

    ratio = (ngx_uint_t) (failures * 1000 / attempts);
    heaviest = llcf->targets->elts;
    heaviest = &heaviest[llcf->canary_heaviest];

    ngx_log_error(NGX_LOG_WARN, ctx->log, 0,
                  "llm route \"%V\": canary \"%V\" put on hold, %uA of %uA "
                  "attempts failed in the last %uis, ratio %ui.%03ui above "
                  "errors=%ui.%03ui; its traffic goes to \"%V\"",
                  &llcf->route, &target->key, failures, attempts,
                  llcf->canary_window, ratio / 1000, ratio % 1000,
                  llcf->canary_errors / 1000, llcf->canary_errors % 1000,
                  &heaviest->key);
}


/*
 * A hold another node took, as Redis has it, for a canary at the weight
 * this node gives it (the syncer checked): taken here too, unless it is
 * on hold already.  Returns 1 when it was taken.
 */

ngx_uint_t
ngx_http_llm_canary_adopt(ngx_shm_zone_t *zone, ngx_http_llm_node_t *n,
    ngx_uint_t weight, ngx_msec_t since, ngx_uint_t attempts,
    ngx_uint_t failures, ngx_log_t *log)
{
    ngx_str_t         route, target;
    ngx_slab_pool_t  *shpool;

    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_llm_canary_on_hold(n, weight)) {
        ngx_shmtx_unlock(&shpool->mutex);
        return 0;
    }

    n->hold = 0;
    ngx_memory_barrier();

    n->hold_weight = weight;
    n->hold_attempts = attempts;
    n->hold_failures = failures;
    n->hold_since = since;
    n->hold_shared = since;
    n->hold_remote = 1;

    ngx_memory_barrier();
    n->hold = 1;

    ngx_shmtx_unlock(&shpool->mutex);

    ngx_http_llm_canary_name(n, &route, &target);

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "llm route \"%V\": canary \"%V\" put on hold, as another "
                  "node found: %ui of %ui attempts failed",
                  &route, &target, failures, attempts);

    return 1;
}
