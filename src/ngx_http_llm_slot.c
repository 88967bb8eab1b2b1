
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * A node's per-second slots (design.md 3): what this node counted each
 * second and what Redis last said the cluster counted, the sums over a
 * window that the budgets judge on, and how fresh the cluster's view is.
 */


static ngx_atomic_int_t ngx_http_llm_slot_value(ngx_http_llm_node_t *n,
    time_t sec, ngx_uint_t counter, ngx_uint_t cluster);


/*
 * Adds v to a counter of the node's slot for the current second.  A slot
 * last used a minute ago is reset first, under the zone's mutex; the
 * counters are zeroed before the second is set, so a worker that sees
 * the new second adds to zeroed counters.
 */

void
ngx_http_llm_slot_add(ngx_shm_zone_t *shm_zone, ngx_http_llm_node_t *n,
    ngx_uint_t counter, ngx_atomic_int_t v)
{
    time_t                now;
    ngx_slab_pool_t      *shpool;
    ngx_http_llm_slot_t  *slot;

    now = ngx_time();
    slot = &n->slots[now % NGX_HTTP_LLM_SLOTS];

    if ((time_t) slot->sec != now) {
        shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

        ngx_shmtx_lock(&shpool->mutex);
        slot = ngx_http_llm_slot_locked(n, now);
        ngx_shmtx_unlock(&shpool->mutex);

        if (slot == NULL) {
            /* the clock went back: the slot holds a later second */
            return;
        }
    }

    (void) ngx_atomic_fetch_add(&slot->count[counter], v);

    ngx_http_llm_used(n);
}


/*
 * The slot of a second, with the zone's mutex held: reset when it still
 * holds an older second; NULL when it already holds a later one.
 */

ngx_http_llm_slot_t *
ngx_http_llm_slot_locked(ngx_http_llm_node_t *n, time_t sec)
{
    ngx_uint_t            i;
    ngx_http_llm_slot_t  *slot;

    slot = &n->slots[sec % NGX_HTTP_LLM_SLOTS];

    if ((time_t) slot->sec == sec) {
        return slot;
    }

    if ((time_t) slot->sec > sec) {
        return NULL;
    }

    for (i = 0; i < NGX_HTTP_LLM_COUNTERS; i++) {
        slot->count[i] = 0;
    }

    for (i = 0; i < NGX_HTTP_LLM_SHARED; i++) {
        slot->synced[i] = 0;
        slot->cluster[i] = 0;
    }

    ngx_memory_barrier();
    slot->sec = sec;

    return slot;
}


/*
 * The sum of a slot counter over the last window seconds: this node's
 * own, or with cluster set (a shared counter and a fresh view of Redis)
 * the whole cluster's, as Redis last told it plus what this node counted
 * since it last sent its counts.
 */

ngx_atomic_uint_t
ngx_http_llm_slot_sum(ngx_http_llm_node_t *n, ngx_uint_t counter,
    ngx_uint_t window, ngx_uint_t cluster)
{
    time_t            now;
    ngx_uint_t        i;
    ngx_atomic_int_t  sum;

    now = ngx_time();
    sum = 0;

    for (i = 0; i < window; i++) {
        sum += ngx_http_llm_slot_value(n, now - i, counter, cluster);
    }

    return sum > 0 ? (ngx_atomic_uint_t) sum : 0;
}


/*
 * The same over a window that slides by the millisecond, in thousandths:
 * the last window seconds and the part of the second before them that
 * is still within window seconds of now, counted as spread evenly over
 * it.  A second's counts leave the window over a second, not at once:
 * a budget spent in one second is not all back at one instant
 * (design.md 4).
 */

ngx_atomic_uint_t
ngx_http_llm_slot_sum_smooth(ngx_http_llm_node_t *n, ngx_uint_t counter,
    ngx_uint_t window, ngx_uint_t cluster)
{
    ngx_time_t        *tp;
    ngx_atomic_int_t   sum, old;

    tp = ngx_timeofday();

    sum = (ngx_atomic_int_t) ngx_http_llm_slot_sum(n, counter, window,
                                                   cluster) * 1000;

    old = ngx_http_llm_slot_value(n, tp->sec - (time_t) window, counter,
                                  cluster);
    if (old > 0) {
        sum += old * (1000 - (ngx_atomic_int_t) tp->msec);
    }

    return sum > 0 ? (ngx_atomic_uint_t) sum : 0;
}


/* a slot counter of a second, 0 if its slot holds another second */

static ngx_atomic_int_t
ngx_http_llm_slot_value(ngx_http_llm_node_t *n, time_t sec,
    ngx_uint_t counter, ngx_uint_t cluster)
{
    ngx_atomic_int_t      count, synced, shared;
    ngx_http_llm_slot_t  *slot;

    slot = &n->slots[sec % NGX_HTTP_LLM_SLOTS];

    if ((time_t) slot->sec != sec) {
        return 0;
    }

    count = (ngx_atomic_int_t) slot->count[counter];

    if (!cluster) {
        return count;
    }

    synced = (ngx_atomic_int_t) slot->synced[counter];
    shared = (ngx_atomic_int_t) slot->cluster[counter];

    /* Redis may have lost what was sent: a restart, a lost batch */
    return ngx_max(shared, synced) + count - synced;
}


/* whether the zone's cluster view is recent enough to be used */

ngx_uint_t
ngx_http_llm_cluster_fresh(ngx_shm_zone_t *shm_zone)
{
    ngx_msec_t            at;
    ngx_http_llm_zone_t  *zone;

    zone = shm_zone->data;

    if (zone->stale == 0) {
        return 0;
    }

    at = zone->sh->cluster_msec;

    return at && ngx_http_llm_wall_msec() - at <= zone->stale;
}


/*
 * whether a route's own view is: the syncer reads only the routes this
 * node counted in lately (ngx_http_llm_sync.c)
 */

ngx_uint_t
ngx_http_llm_route_fresh(ngx_shm_zone_t *shm_zone, ngx_http_llm_node_t *n)
{
    ngx_msec_t            at;
    ngx_http_llm_zone_t  *zone;

    if (!ngx_http_llm_cluster_fresh(shm_zone)) {
        return 0;
    }

    zone = shm_zone->data;
    at = n->view_msec;

    return at && ngx_http_llm_wall_msec() - at <= zone->stale;
}


/* whether the link came back from an outage less than window s ago */

ngx_uint_t
ngx_http_llm_cluster_back(ngx_shm_zone_t *shm_zone, ngx_uint_t window)
{
    ngx_msec_t            at;
    ngx_http_llm_zone_t  *zone;

    zone = shm_zone->data;
    at = zone->sh->back_msec;

    return at && ngx_http_llm_wall_msec() - at < window * 1000;
}


/*
 * The number of nodes Redis last counted, and this node's rank among
 * them, for a zone judged on its own counters while Redis is away: 1
 * and 0 without llm_redis, or before Redis ever answered.
 */

ngx_uint_t
ngx_http_llm_cluster_nodes(ngx_shm_zone_t *shm_zone, ngx_uint_t *rank)
{
    ngx_uint_t            nodes, r;
    ngx_http_llm_zone_t  *zone;

    zone = shm_zone->data;
    *rank = 0;

    if (zone->stale == 0) {
        return 1;
    }

    /* rank first: the syncer writes nodes last */
    r = zone->sh->rank;
    nodes = zone->sh->nodes;

    if (nodes == 0) {
        return 1;
    }

    *rank = r < nodes ? r : nodes - 1;

    return nodes;
}


/* wall-clock milliseconds: cooldowns are shared with other nodes later */

ngx_msec_t
ngx_http_llm_wall_msec(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (ngx_msec_t) tp->sec * 1000 + tp->msec;
}
