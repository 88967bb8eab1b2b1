
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_sync.h"


/*
 * The syncer of llm_redis (design.md 4), in the worker that holds the link.
 * Every sync= tick it sends one pipeline:
 *
 *   for each target whose cooldown began here since the last tick:
 *       EVAL (SET the key to the later end, PX what is left of it;
 *             an end further away than max= is replaced)
 *   for each canary this node put on hold since the last tick:
 *       SET {prefix:canary}:ROUTE:TARGET "weight since attempts failures"
 *           PX a week
 *   EVALSHA of the sync script (ngx_http_llm_sync_script.c): what this
 *       node counted since the last tick in every route with a retry
 *       budget it counted in within its window, added with a BITFIELD
 *       per second to {prefix:w}:EPOCH:SEC (each route's place in it
 *       given by {prefix:w}:ix), then the fleet's counts of the seconds
 *       that may still grow (of the whole window for a route's first
 *       view); the cooldown ends {prefix:cd}:TARGET and the holds
 *       {prefix:canary}:ROUTE:TARGET of every target and canary
 *   once a second, EVAL: this node is alive in the sorted set
 *       {prefix:nodes} (and {prefix:nodes}:ids), how many are, its rank
 *
 * With "cluster" (Redis Cluster, or a cluster-aware proxy) each command
 * keeps to one hash slot: the EVALSHA's keys are all {prefix:w}'s, and
 * the cooldown ends and the holds are read with an MGET each; the
 * writes and the heartbeat are of one slot already.
 *
 * and writes the sums into the zone: the budget then judges on the
 * cluster's counts plus what this node counted since (ngx_http_llm_zone.c).
 * Redis traffic depends on the number of nodes and on sync=, not on the
 * request rate; a node's calls a tick, and Redis' commands, not on its
 * routes either.  Deltas
 * are taken from the zone (all workers' counts) under its mutex and
 * marked as sent before they are: a lost batch loses at most one tick
 * of counts (at most once, as Kong and LiteLLM do), and two syncers (an
 * old worker 0 still quitting after a reload, and the new one) never
 * send the same count twice.
 */


static ngx_int_t ngx_http_llm_sync_routes(ngx_cycle_t *cycle,
    ngx_http_llm_main_conf_t *lmcf);
static ngx_int_t ngx_http_llm_sync_targets(ngx_cycle_t *cycle,
    ngx_array_t *targets);
static ngx_int_t ngx_http_llm_sync_canary_list(ngx_cycle_t *cycle,
    ngx_http_llm_loc_conf_t *llcf);
static void ngx_http_llm_sync_tick(ngx_event_t *ev);
static void ngx_http_llm_sync_quick(ngx_event_t *ev);
static void ngx_http_llm_sync_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_llm_sync_send(void);
static void ngx_http_llm_sync_reply(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_llm_sync_done(ngx_http_llm_batch_t *batch);


ngx_http_llm_syncer_t  ngx_http_llm_syncer;


ngx_int_t
ngx_http_llm_sync_init(ngx_cycle_t *cycle, ngx_http_llm_redis_conf_t *conf)
{
    ngx_http_llm_shctx_t      *sh;
    ngx_http_llm_syncer_t     *sy;
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);

    sy = &ngx_http_llm_syncer;
    ngx_memzero(sy, sizeof(ngx_http_llm_syncer_t));

    sy->conf = conf;
    sy->log = cycle->log;
    sy->zones = &lmcf->zones;
    sy->link = NGX_HTTP_LLM_LINK_DOWN;

    if (ngx_array_init(&sy->routes, cycle->pool, 4,
                       sizeof(ngx_http_llm_sync_route_t))
        != NGX_OK
        || ngx_array_init(&sy->targets, cycle->pool, 4,
                          sizeof(ngx_http_llm_sync_target_t))
           != NGX_OK
        || ngx_array_init(&sy->canaries, cycle->pool, 2,
                          sizeof(ngx_http_llm_sync_canary_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_llm_sync_routes(cycle, lmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * A node is its zone: worker 0 changes with reloads, the id made
     * with the (first) zone stays; the hostname only helps people.
     */

    sh = ((ngx_http_llm_zone_t *)
          ((ngx_shm_zone_t **) lmcf->zones.elts)[0]->data)->sh;

    sy->nodes_key.len = sizeof("{:nodes}") - 1 + conf->prefix.len;
    sy->nodes_key.data = ngx_pnalloc(cycle->pool, sy->nodes_key.len);

    sy->names_key.len = sy->nodes_key.len + sizeof(":ids") - 1;
    sy->names_key.data = ngx_pnalloc(cycle->pool, sy->names_key.len);

    sy->node_id.data = ngx_pnalloc(cycle->pool, cycle->hostname.len + 1
                                                + NGX_HTTP_LLM_NODE_ID_LEN);

    if (sy->nodes_key.data == NULL || sy->names_key.data == NULL
        || sy->node_id.data == NULL)
    {
        return NGX_ERROR;
    }

    if (ngx_http_llm_sync_script_init(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    (void) ngx_sprintf(sy->nodes_key.data, "{%V:nodes}", &conf->prefix);
    (void) ngx_sprintf(sy->names_key.data, "{%V:nodes}:ids", &conf->prefix);

    sy->node_id.len = ngx_sprintf(sy->node_id.data, "%V:%*s",
                                  &cycle->hostname,
                                  (size_t) NGX_HTTP_LLM_NODE_ID_LEN,
                                  sh->node_id)
                      - sy->node_id.data;

    sy->dummy.fd = (ngx_socket_t) -1;

    sy->tick.handler = ngx_http_llm_sync_tick;
    sy->tick.log = cycle->log;
    sy->tick.data = &sy->dummy;
    sy->tick.cancelable = 1;

    /*
     * Not cancelable: a worker quitting after a reload waits (timeout= at
     * most) for the batch in flight, whose counts are already marked as
     * sent; the next worker 0 sends what is counted after it.
     */

    sy->timeout.handler = ngx_http_llm_sync_timeout;
    sy->timeout.log = cycle->log;
    sy->timeout.data = &sy->dummy;

    /*
     * The zones' link state stays as it is: after a reload the old
     * worker 0 may still be syncing until this one's link is up.
     */

    ngx_add_timer(&sy->tick, conf->sync);

    /*
     * A cooldown begun here goes out within an eighth of a sync, not at
     * the next tick: the others read it at theirs, so that every node
     * learns it within about one sync.
     */

    if (conf->sync >= 80) {
        sy->quick.handler = ngx_http_llm_sync_quick;
        sy->quick.log = cycle->log;
        sy->quick.data = &sy->dummy;
        sy->quick.cancelable = 1;

        ngx_add_timer(&sy->quick, conf->sync / 8);
    }

    return NGX_OK;
}


/*
 * The routes with a retry budget, every target and every canary, each
 * node once (a route may be named in several locations; a target in
 * several routes).
 */

static ngx_int_t
ngx_http_llm_sync_routes(ngx_cycle_t *cycle, ngx_http_llm_main_conf_t *lmcf)
{
    ngx_uint_t                  i, j;
    ngx_http_llm_loc_conf_t    *llcf;
    ngx_http_llm_route_name_t  *rn;
    ngx_http_llm_sync_route_t  *route;

    rn = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        llcf = rn[i].conf;

        if (llcf->node == NULL) {
            continue;
        }

        if (ngx_http_llm_sync_targets(cycle, llcf->targets) != NGX_OK
            || ngx_http_llm_sync_targets(cycle, llcf->fallbacks) != NGX_OK
            || ngx_http_llm_sync_canary_list(cycle, llcf) != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (!llcf->budget) {
            continue;
        }

        route = ngx_http_llm_syncer.routes.elts;

        for (j = 0; j < ngx_http_llm_syncer.routes.nelts; j++) {
            if (route[j].node == llcf->node) {
                route[j].window = ngx_max(route[j].window,
                                          llcf->budget_window);
                break;
            }
        }

        if (j < ngx_http_llm_syncer.routes.nelts) {
            continue;
        }

        route = ngx_array_push(&ngx_http_llm_syncer.routes);
        if (route == NULL) {
            return NGX_ERROR;
        }

        route->zone = llcf->zone;
        route->node = llcf->node;
        route->window = llcf->budget_window;

        route->name = llcf->route;
        route->ix = NGX_HTTP_LLM_SYNC_UNKNOWN;
        route->read = 0;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_sync_targets(ngx_cycle_t *cycle, ngx_array_t *targets)
{
    ngx_uint_t                   i, j;
    ngx_http_llm_target_t       *target;
    ngx_http_llm_redis_conf_t   *rc;
    ngx_http_llm_sync_target_t  *st;

    if (targets == NULL) {
        return NGX_OK;
    }

    rc = ngx_http_llm_syncer.conf;
    target = targets->elts;

    for (i = 0; i < targets->nelts; i++) {

        if (target[i].node == NULL) {
            continue;
        }

        st = ngx_http_llm_syncer.targets.elts;

        for (j = 0; j < ngx_http_llm_syncer.targets.nelts; j++) {
            if (st[j].node == target[i].node) {
                break;
            }
        }

        if (j < ngx_http_llm_syncer.targets.nelts) {
            continue;
        }

        st = ngx_array_push(&ngx_http_llm_syncer.targets);
        if (st == NULL) {
            return NGX_ERROR;
        }

        st->node = target[i].node;

        st->key.len = sizeof("{:cd}:") - 1 + rc->prefix.len
                      + target[i].key.len;
        st->key.data = ngx_pnalloc(cycle->pool, st->key.len);
        if (st->key.data == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_sprintf(st->key.data, "{%V:cd}:%V", &rc->prefix,
                           &target[i].key);
    }

    return NGX_OK;
}


/* the canaries of a route with llm_canary */

static ngx_int_t
ngx_http_llm_sync_canary_list(ngx_cycle_t *cycle,
    ngx_http_llm_loc_conf_t *llcf)
{
    ngx_uint_t                   i, j;
    ngx_http_llm_target_t       *target;
    ngx_http_llm_redis_conf_t   *rc;
    ngx_http_llm_sync_canary_t  *sc;

    if (!llcf->canary) {
        return NGX_OK;
    }

    rc = ngx_http_llm_syncer.conf;
    target = llcf->targets->elts;

    for (i = 0; i < llcf->targets->nelts; i++) {

        if (target[i].canary == NULL) {
            continue;
        }

        sc = ngx_http_llm_syncer.canaries.elts;

        for (j = 0; j < ngx_http_llm_syncer.canaries.nelts; j++) {
            if (sc[j].node == target[i].canary) {
                break;
            }
        }

        if (j < ngx_http_llm_syncer.canaries.nelts) {
            continue;
        }

        sc = ngx_array_push(&ngx_http_llm_syncer.canaries);
        if (sc == NULL) {
            return NGX_ERROR;
        }

        sc->zone = llcf->zone;
        sc->node = target[i].canary;
        sc->weight = target[i].weight;

        sc->key.len = sizeof("{:canary}::") - 1 + rc->prefix.len
                      + llcf->route.len + target[i].key.len;
        sc->key.data = ngx_pnalloc(cycle->pool, sc->key.len);
        if (sc->key.data == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_sprintf(sc->key.data, "{%V:canary}:%V:%V", &rc->prefix,
                           &llcf->route, &target[i].key);
    }

    return NGX_OK;
}


void
ngx_http_llm_sync_exit(void)
{
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    if (sy->quick.timer_set) {
        ngx_del_timer(&sy->quick);
    }

    if (sy->tick.timer_set) {
        ngx_del_timer(&sy->tick);
    }

    if (sy->timeout.timer_set) {
        ngx_del_timer(&sy->timeout);
    }
}


/*
 * The link changed: every worker learns it from the zones, for the
 * status page.  A link that went down makes the cluster view stale at
 * once, so requests stop being judged on it before it ages out.
 */

void
ngx_http_llm_sync_link(ngx_uint_t state)
{
    ngx_uint_t              i;
    ngx_shm_zone_t        **zones;
    ngx_http_llm_zone_t    *zone;
    ngx_http_llm_shctx_t   *sh;
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;
    zones = sy->zones->elts;

    for (i = 0; i < sy->zones->nelts; i++) {
        zone = zones[i]->data;
        sh = zone->sh;

        if (state == NGX_HTTP_LLM_LINK_DOWN) {
            sh->cluster_msec = 0;

            if (sh->down_msec == 0) {
                sh->down_msec = ngx_http_llm_wall_msec();
            }

            if (sy->link == NGX_HTTP_LLM_LINK_UP) {
                (void) ngx_atomic_fetch_add(&sh->link_downs, 1);
            }
        }

        if (state == NGX_HTTP_LLM_LINK_UP && sh->down_msec) {
            sh->back_msec = ngx_http_llm_wall_msec();
            sh->down_msec = 0;
        }

        sh->link = state;
    }

    sy->link = state;
}


static void
ngx_http_llm_sync_tick(ngx_event_t *ev)
{
    ngx_http_llm_syncer_t  *sy;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    sy = &ngx_http_llm_syncer;

    ngx_add_timer(&sy->tick, sy->conf->sync);

    /* a batch still in flight: its timeout will tell */
    if (sy->batch || !ngx_http_llm_redis_ready()) {
        return;
    }

    if (ngx_http_llm_sync_send() != NGX_OK) {
        ngx_http_llm_redis_fail("out of memory", sizeof("out of memory") - 1);
    }
}


/* a cooldown not sent yet: the tick comes now */

static void
ngx_http_llm_sync_quick(ngx_event_t *ev)
{
    ngx_uint_t                   i;
    ngx_msec_t                   now, end;
    ngx_http_llm_node_t         *n;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_target_t  *st;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    sy = &ngx_http_llm_syncer;

    ngx_add_timer(&sy->quick, sy->conf->sync / 8);

    if (sy->batch || !ngx_http_llm_redis_ready()) {
        return;
    }

    now = ngx_http_llm_wall_msec();
    st = sy->targets.elts;

    for (i = 0; i < sy->targets.nelts; i++) {
        n = st[i].node;
        end = n->cooldown_until;

        if (end > now && end > (ngx_msec_t) n->cooldown_shared) {
            break;
        }
    }

    if (i == sy->targets.nelts) {
        return;
    }

    if (sy->tick.timer_set) {
        ngx_del_timer(&sy->tick);
    }

    ngx_http_llm_sync_tick(&sy->tick);
}


static void
ngx_http_llm_sync_timeout(ngx_event_t *ev)
{
    ngx_http_llm_redis_fail("timed out syncing",
                            sizeof("timed out syncing") - 1);
}


static ngx_int_t
ngx_http_llm_sync_send(void)
{
    ngx_pool_t                 *pool;
    ngx_http_llm_batch_t       *batch;
    ngx_http_llm_syncer_t      *sy;

    sy = &ngx_http_llm_syncer;

    pool = ngx_create_pool(4096, sy->log);
    if (pool == NULL) {
        return NGX_ERROR;
    }

    batch = ngx_pcalloc(pool, sizeof(ngx_http_llm_batch_t));
    if (batch == NULL) {
        ngx_destroy_pool(pool);
        return NGX_ERROR;
    }

    batch->pool = pool;
    batch->now = ngx_time();

    /* replies may come only once this returns: the event loop reads them */
    sy->batch = batch;

    /* a node's own news first: the script reads it back */

    if (ngx_http_llm_sync_cooldowns(batch) != NGX_OK
        || ngx_http_llm_sync_canaries(batch) != NGX_OK
        || ngx_http_llm_sync_script(batch) != NGX_OK
        || ngx_http_llm_sync_alive(batch) != NGX_OK)
    {
        goto failed;
    }

    if (batch->pending == 0) {
        /* nothing to send or read: the view is as fresh as it gets */
        ngx_http_llm_sync_done(batch);
        return NGX_OK;
    }

    ngx_add_timer(&sy->timeout, sy->conf->timeout);

    return NGX_OK;

failed:

    if (batch->pending == 0) {
        sy->batch = NULL;
        ngx_destroy_pool(pool);
    }

    /* else the link is dropped and the replies come back empty */

    return NGX_ERROR;
}


ngx_int_t
ngx_http_llm_sync_command(ngx_http_llm_batch_t *batch, ngx_uint_t what,
    ngx_http_llm_sync_call_t *call, int argc, const char **argv,
    const size_t *argvlen)
{
    ngx_http_llm_sync_reply_t  *sr;

    sr = ngx_palloc(batch->pool, sizeof(ngx_http_llm_sync_reply_t));
    if (sr == NULL) {
        return NGX_ERROR;
    }

    sr->batch = batch;
    sr->call = call;
    sr->what = what;

    /* hiredis copies the arguments into its output buffer */

    if (ngx_http_llm_redis_command(ngx_http_llm_sync_reply, sr, argc, argv,
                                   argvlen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    batch->pending++;

    return NGX_OK;
}



static void
ngx_http_llm_sync_reply(redisAsyncContext *ac, void *r, void *data)
{
    ngx_http_llm_sync_reply_t *sr = data;

    redisReply            *reply;
    ngx_http_llm_batch_t  *batch;

    reply = r;
    batch = sr->batch;

    if (reply == NULL) {
        /* the link went down: the context is being freed */
        batch->lost++;

    } else if (sr->what == NGX_HTTP_LLM_SYNC_SCRIPT
               && ngx_http_llm_sync_script_again(sr->call, reply))
    {
        /* the same reply comes back to this callback */

        if (ngx_http_llm_redis_command(ngx_http_llm_sync_reply, sr,
                                       (int) sr->call->argv.nelts,
                                       sr->call->argv.elts,
                                       sr->call->argvlen.elts)
            == NGX_OK)
        {
            return;
        }

        batch->lost++;

    } else if (reply->type == REDIS_REPLY_ERROR) {

        if (batch->error_len == 0) {
            batch->error_len = ngx_min((size_t) reply->len,
                                       sizeof(batch->error));
            ngx_memcpy(batch->error, reply->str, batch->error_len);
        }

    } else if (sr->what == NGX_HTTP_LLM_SYNC_SCRIPT) {
        ngx_http_llm_sync_view(batch, sr->call, reply);

    } else if (sr->what == NGX_HTTP_LLM_SYNC_COOLDOWNS) {
        ngx_http_llm_sync_cooldowns_got(batch, reply);

    } else if (sr->what == NGX_HTTP_LLM_SYNC_CANARIES) {
        ngx_http_llm_sync_canaries_got(batch, reply);

    } else if (sr->what == NGX_HTTP_LLM_SYNC_NODES) {
        ngx_http_llm_sync_nodes(batch, reply);
    }

    if (--batch->pending == 0) {
        ngx_http_llm_sync_done(batch);
    }
}


/* a reply not as the batch asked for: the link is dropped */

void
ngx_http_llm_sync_error(ngx_http_llm_batch_t *batch, const char *err)
{
    batch->error_len = ngx_min(ngx_strlen(err), sizeof(batch->error));
    ngx_memcpy(batch->error, err, batch->error_len);
}


/* an MGET element: a number, or nil for a key no node wrote (yet) */

ngx_atomic_int_t
ngx_http_llm_sync_number(redisReply *reply)
{
    ngx_int_t  n;

    if (reply->type == REDIS_REPLY_INTEGER) {
        return reply->integer > 0 ? (ngx_atomic_int_t) reply->integer : 0;
    }

    if (reply->type != REDIS_REPLY_STRING) {
        return 0;
    }

    /* a negative sum (counts taken back) reads as 0: ngx_atoi fails */
    n = ngx_atoi((u_char *) reply->str, reply->len);

    return n == NGX_ERROR ? 0 : (ngx_atomic_int_t) n;
}


/*
 * Every reply came (or the link fell): a batch answered in full makes
 * the zones' cluster view fresh; an error reply drops the link, which
 * comes back with backoff (NOAUTH after a restart, OOM, READONLY, ...).
 */

static void
ngx_http_llm_sync_done(ngx_http_llm_batch_t *batch)
{
    u_char                 *p, buf[128];
    ngx_uint_t              i, failed;
    ngx_msec_t              now;
    ngx_shm_zone_t        **zones;
    ngx_http_llm_zone_t    *zone;
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    if (sy->timeout.timer_set) {
        ngx_del_timer(&sy->timeout);
    }

    failed = batch->lost || batch->error_len;
    now = ngx_http_llm_wall_msec();
    zones = sy->zones->elts;

    for (i = 0; i < sy->zones->nelts; i++) {
        zone = zones[i]->data;

        if (failed) {
            (void) ngx_atomic_fetch_add(&zone->sh->sync_errors, 1);
            continue;
        }

        zone->sh->cluster_msec = now;
        (void) ngx_atomic_fetch_add(&zone->sh->syncs, 1);
    }

    if (!failed) {
        ngx_http_llm_redis_synced();
    }

    if (batch->error_len && !batch->lost) {
        p = ngx_snprintf(buf, sizeof(buf), "sync refused: %*s",
                         batch->error_len, batch->error);
        ngx_http_llm_redis_fail((char *) buf, p - buf);
    }

    sy->batch = NULL;
    ngx_destroy_pool(batch->pool);
}
