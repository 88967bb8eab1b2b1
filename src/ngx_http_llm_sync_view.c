
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_sync.h"


/*
 * The view a tick's script call brings back (design.md 4): the epoch
 * of the fleet's counts, the indexes given to routes, the fleet's sums
 * of the seconds read, written into each route's slots, and the news
 * (cooldown ends, canaries' holds), handed on to ngx_http_llm_sync_news.c.
 * The call itself is made in ngx_http_llm_sync_script.c.
 */


static void ngx_http_llm_sync_unsent(ngx_http_llm_sync_call_t *call);
static void ngx_http_llm_sync_indexes(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, redisReply *reply);
static void ngx_http_llm_sync_window(ngx_http_llm_sync_route_t *route,
    time_t now, redisReply **second);
static ngx_atomic_int_t ngx_http_llm_sync_counter(redisReply *second,
    ngx_uint_t offset);


/*
 * The epoch, the indexes given, then the seconds read (when the epoch
 * is the one the call was made in) and the news
 */

void
ngx_http_llm_sync_view(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, redisReply *reply)
{
    size_t                       n;
    ngx_uint_t                   i, same;
    redisReply                   part, *values, *epoch;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_route_t  **route;

    sy = &ngx_http_llm_syncer;

    if (!call->script) {
        values = reply;
        same = 0;
        goto news;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[0]->len == 0
        || (size_t) reply->element[0]->len > sizeof(sy->epoch)
        || reply->element[1]->type != REDIS_REPLY_ARRAY
        || reply->element[1]->elements != call->names.nelts
        || reply->element[2]->type != REDIS_REPLY_ARRAY)
    {
        ngx_http_llm_sync_error(batch, "unexpected script reply");
        return;
    }

    epoch = reply->element[0];
    values = reply->element[2];

    same = ((size_t) epoch->len == sy->epoch_len
            && ngx_memcmp(epoch->str, sy->epoch, sy->epoch_len) == 0);

    if (!same) {
        /*
         * The first call, or the hash was lost: every index is asked
         * for again, but those this reply gave, which are the epoch's
         */

        for (i = 0; i < sy->routes.nelts; i++) {
            ((ngx_http_llm_sync_route_t *) sy->routes.elts)[i].ix =
                                                  NGX_HTTP_LLM_SYNC_UNKNOWN;
        }

        ngx_memcpy(sy->epoch, epoch->str, epoch->len);
        sy->epoch_len = epoch->len;

        ngx_http_llm_sync_unsent(call);
    }

    ngx_http_llm_sync_indexes(batch, call, reply->element[1]);

    /*
     * A node's first call, or one after the hash was lost, neither
     * wrote nor read (its keys were not the epoch's): it goes again at
     * once in the epoch, with the indexes just given, so that the view
     * comes with this tick; its deltas go with the tick after, once
     * every route has its index again.
     */

    if (!same && !batch->again) {
        batch->again = 1;

        if (ngx_http_llm_sync_script(batch) != NGX_OK) {
            ngx_http_llm_sync_error(batch, "sync script failed");
            return;
        }
    }

news:

    n = same ? call->read : 0;

    if (values->type != REDIS_REPLY_ARRAY
        || values->elements != n + call->keys)
    {
        ngx_http_llm_sync_error(batch, "unexpected script reply");
        return;
    }

    if (same) {
        route = call->routes.elts;

        for (i = 0; i < call->routes.nelts; i++) {

            /* refused an index by this call: counted here alone */

            if (route[i]->ix < 0) {
                continue;
            }

            ngx_http_llm_sync_window(route[i], batch->now,
                                     values->element + n - route[i]->read);
        }
    }

    if (!call->news) {
        return;
    }

    ngx_memzero(&part, sizeof(redisReply));
    part.type = REDIS_REPLY_ARRAY;
    part.element = values->element + n;
    part.elements = sy->targets.nelts;

    ngx_http_llm_sync_cooldowns_got(batch, &part);

    part.element += part.elements;
    part.elements = sy->canaries.nelts;

    ngx_http_llm_sync_canaries_got(batch, &part);
}


/*
 * The script made none of the call's writes (a new epoch: its offsets
 * were the old one's): its deltas are taken back, to be sent again
 */

static void
ngx_http_llm_sync_unsent(ngx_http_llm_sync_call_t *call)
{
    ngx_uint_t                  i;
    ngx_slab_pool_t            *shpool;
    ngx_http_llm_slot_t        *slot;
    ngx_http_llm_sync_delta_t  *delta;

    delta = call->deltas.elts;

    for (i = 0; i < call->deltas.nelts; i++) {
        shpool = (ngx_slab_pool_t *) delta[i].route->zone->shm.addr;
        slot = &delta[i].route->node->slots[delta[i].sec
                                            % NGX_HTTP_LLM_SLOTS];

        ngx_shmtx_lock(&shpool->mutex);

        /* a slot turned over since counts nothing of that second */

        if ((time_t) slot->sec == delta[i].sec) {
            slot->synced[delta[i].k] -= delta[i].delta;
        }

        ngx_shmtx_unlock(&shpool->mutex);
    }

    call->deltas.nelts = 0;
}


/* the indexes of the routes the call named; -1: the fleet has no more */

static void
ngx_http_llm_sync_indexes(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, redisReply *reply)
{
    ngx_uint_t                   i;
    redisReply                  *ix;
    ngx_http_llm_sync_route_t  **route;

    route = call->names.elts;

    for (i = 0; i < call->names.nelts; i++) {
        ix = reply->element[i];

        if (ix->type != REDIS_REPLY_INTEGER
            || ix->integer >= NGX_HTTP_LLM_SYNC_INDEX_MAX)
        {
            ngx_http_llm_sync_error(batch, "unexpected script reply");
            return;
        }

        if (ix->integer >= 0) {
            route[i]->ix = (ngx_int_t) ix->integer;
            continue;
        }

        route[i]->ix = NGX_HTTP_LLM_SYNC_REFUSED;

        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "llm redis: route \"%V\" is counted by this node "
                      "alone, the fleet's counters hold %d routes already",
                      &route[i]->name, NGX_HTTP_LLM_SYNC_INDEX_MAX);
    }
}


/* the cluster's sums of a route's seconds, written into its slots */

static void
ngx_http_llm_sync_window(ngx_http_llm_sync_route_t *route, time_t now,
    redisReply **second)
{
    time_t                sec;
    ngx_uint_t            i, w, offset;
    ngx_slab_pool_t      *shpool;
    ngx_http_llm_slot_t  *slot;

    w = route->read;
    offset = 2 * (ngx_uint_t) route->ix;

    shpool = (ngx_slab_pool_t *) route->zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < w; i++) {
        sec = now - (time_t) w + 1 + (time_t) i;

        slot = ngx_http_llm_slot_locked(route->node, sec);

        if (slot == NULL) {
            continue;
        }

        slot->cluster[NGX_HTTP_LLM_REQUESTS] =
                         ngx_http_llm_sync_counter(second[i], offset);
        slot->cluster[NGX_HTTP_LLM_RETRIES] =
                         ngx_http_llm_sync_counter(second[i], offset + 1);
    }

    /*
     * a first view after none: the other nodes may not have sent yet
     * what they counted meanwhile (ngx_http_llm_budget.c)
     */

    if (!ngx_http_llm_route_fresh(route->zone, route->node)) {
        route->node->view_born = ngx_http_llm_wall_msec();
    }

    route->node->view_msec = ngx_http_llm_wall_msec();

    /* what this node spends from now on is measured from here */
    route->node->view_requests = route->node->requests;
    route->node->view_retries = route->node->retries;
    route->node->view_dither = ngx_random() % 1000;

    ngx_shmtx_unlock(&shpool->mutex);
}


/*
 * A counter of a second: BITFIELD's i32, big-endian; a second no node
 * wrote (nil) or that ends before it (routes given an index later) is 0
 */

static ngx_atomic_int_t
ngx_http_llm_sync_counter(redisReply *second, ngx_uint_t offset)
{
    u_char   *p;
    int32_t   v;

    if (second->type != REDIS_REPLY_STRING
        || (offset + 1) * 4 > (size_t) second->len)
    {
        return 0;
    }

    p = (u_char *) second->str + offset * 4;

    v = (int32_t) ((uint32_t) p[0] << 24 | (uint32_t) p[1] << 16
                   | (uint32_t) p[2] << 8 | (uint32_t) p[3]);

    return v > 0 ? (ngx_atomic_int_t) v : 0;
}
