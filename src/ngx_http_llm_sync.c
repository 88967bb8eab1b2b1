
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The syncer of llm_redis (design.md 4), in the worker that holds the link.
 * Every sync= tick it sends one pipeline:
 *
 *   for each route with a retry budget this node counted in within its
 *   window, for each second of the window that it counted more in since
 *   the last tick:
 *       INCRBY  {prefix:route}:r:SEC  delta     (client requests)
 *       INCRBY  {prefix:route}:x:SEC  delta     (retries)
 *       PEXPIRE each of them (window + 2) seconds, the first time
 *   MGET the r and x keys of the seconds that may still grow (of the
 *       whole window for the route's first view)
 *   for each target whose cooldown began here since the last tick:
 *       EVAL (SET the key to the later end, PX what is left of it;
 *             an end further away than max= is replaced)
 *   MGET {prefix:cd}:TARGET for every target
 *   for each canary this node put on hold since the last tick:
 *       SET {prefix:canary}:ROUTE:TARGET "weight since attempts failures"
 *           PX a week
 *   MGET {prefix:canary}:ROUTE:TARGET for every canary
 *   once a second, EVAL: this node is alive in the sorted set
 *       {prefix:nodes} (and {prefix:nodes}:ids), how many are, its rank
 *
 * and writes the sums into the zone: the budget then judges on the
 * cluster's counts plus what this node counted since (ngx_http_llm_zone.c).
 * Redis traffic depends on the number of nodes and on sync=, not on the
 * request rate.  Deltas are taken from the zone (all workers' counts)
 * under its mutex and marked as sent before they are: a lost batch loses
 * at most one tick of counts (at most once, as Kong and LiteLLM do), and
 * two syncers (an old worker 0 still quitting after a reload, and the
 * new one) never send the same count twice.  The keys of a route share
 * one hash tag, as do the cooldown keys, so each MGET stays within one
 * slot of a Redis Cluster.
 */


#define NGX_HTTP_LLM_SYNC_WRITE       0
#define NGX_HTTP_LLM_SYNC_WINDOW      1
#define NGX_HTTP_LLM_SYNC_COOLDOWNS   2
#define NGX_HTTP_LLM_SYNC_NODES       3
#define NGX_HTTP_LLM_SYNC_CANARIES    4

/* a node that did not say it is alive for this long is not counted, ms */
#define NGX_HTTP_LLM_SYNC_NODE_TTL    65000

/*
 * A canary's hold in Redis, ms: long enough for a node restarted days
 * later with the same weight to hold it still; a node that holds it
 * writes it again when it is gone (docs/directives.md, "Canary guard")
 */
#define NGX_HTTP_LLM_SYNC_HOLD_TTL    "604800000"


typedef struct {
    ngx_shm_zone_t              *zone;
    ngx_http_llm_node_t         *node;
    ngx_str_t                    tag;       /* "{prefix:route}" */
    ngx_uint_t                   window;
    ngx_uint_t                   read;      /* seconds the MGET reads */
} ngx_http_llm_sync_route_t;


typedef struct {
    ngx_http_llm_node_t         *node;
    ngx_str_t                    key;       /* "{prefix:cd}:URI model" */
} ngx_http_llm_sync_target_t;


typedef struct {
    ngx_shm_zone_t              *zone;
    ngx_http_llm_node_t         *node;
    ngx_str_t                    key;   /* "{prefix:canary}:route:URI model" */
    ngx_uint_t                   weight;    /* the route gives the target */
} ngx_http_llm_sync_canary_t;


/* one pipeline in flight */

typedef struct {
    ngx_pool_t                  *pool;
    ngx_uint_t                   pending;   /* replies still to come */
    ngx_uint_t                   lost;      /* replies that never came */
    u_char                       error[96]; /* Redis' first error reply */
    size_t                       error_len;
    time_t                       now;       /* last second of the windows */
} ngx_http_llm_batch_t;


typedef struct {
    ngx_http_llm_batch_t        *batch;
    ngx_uint_t                   what;      /* NGX_HTTP_LLM_SYNC_* */
    ngx_http_llm_sync_route_t   *route;
} ngx_http_llm_sync_reply_t;


typedef struct {
    time_t                       sec;
    ngx_uint_t                   counter;
    ngx_atomic_int_t             delta;
    ngx_uint_t                   first;     /* first sent: PEXPIRE it */
} ngx_http_llm_delta_t;


typedef struct {
    ngx_http_llm_redis_conf_t   *conf;
    ngx_log_t                   *log;
    ngx_array_t                 *zones;     /* of ngx_shm_zone_t * */
    ngx_array_t                  routes;    /* of ngx_http_llm_sync_route_t */
    ngx_array_t                  targets;   /* of ngx_http_llm_sync_target_t */
    ngx_array_t                  canaries;  /* of ngx_http_llm_sync_canary_t */
    ngx_event_t                  tick;
    ngx_event_t                  quick;     /* news of a cooldown */
    ngx_event_t                  timeout;   /* of the batch in flight */
    ngx_connection_t             dummy;     /* timers' data: fd -1 */
    ngx_http_llm_batch_t        *batch;
    ngx_uint_t                   link;      /* NGX_HTTP_LLM_LINK_* */
    ngx_str_t                    nodes_key; /* "{prefix:nodes}" */
    ngx_str_t                    names_key; /* "{prefix:nodes}:ids" */
    ngx_str_t                    node_id;   /* "hostname:random id" */
    time_t                       alive;     /* when it last said so */
} ngx_http_llm_syncer_t;


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
static ngx_int_t ngx_http_llm_sync_route(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_route_t *route);
static ngx_int_t ngx_http_llm_sync_cooldowns(ngx_http_llm_batch_t *batch);
static ngx_int_t ngx_http_llm_sync_canaries(ngx_http_llm_batch_t *batch);
static ngx_int_t ngx_http_llm_sync_alive(ngx_http_llm_batch_t *batch);
static void ngx_http_llm_sync_nodes(ngx_http_llm_batch_t *batch,
    redisReply *reply);
static ngx_int_t ngx_http_llm_sync_command(ngx_http_llm_batch_t *batch,
    ngx_uint_t what, ngx_http_llm_sync_route_t *route, int argc,
    const char **argv, const size_t *argvlen);
static u_char *ngx_http_llm_sync_key(ngx_pool_t *pool, ngx_str_t *tag,
    char kind, time_t sec, size_t *len);
static void ngx_http_llm_sync_reply(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_llm_sync_window(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_route_t *route, redisReply *reply);
static void ngx_http_llm_sync_cooldowns_got(ngx_http_llm_batch_t *batch,
    redisReply *reply);
static void ngx_http_llm_sync_canaries_got(ngx_http_llm_batch_t *batch,
    redisReply *reply);
static ngx_atomic_int_t ngx_http_llm_sync_number(redisReply *reply);
static void ngx_http_llm_sync_done(ngx_http_llm_batch_t *batch);


static ngx_http_llm_syncer_t  ngx_http_llm_syncer;


/*
 * The Lua script that keeps the later end of a cooldown (Redis 2.6+),
 * unless the end held is past ARGV[3], the latest end the sender trusts
 * (now + the target's llm_cooldown max=): a far-future value, planted or
 * left by a node with a larger max, is replaced.
 */

static const char  ngx_http_llm_cooldown_script[] =
    "local u = tonumber(redis.call('GET', KEYS[1]) or '0') "
    "if tonumber(ARGV[1]) > u or u > tonumber(ARGV[3]) then "
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end "
    "return 1";


/*
 * The one that counts the nodes: this node's heartbeat (KEYS[1], score:
 * now, ms), the nodes not heard of for ARGV[3] ms dropped, how many are
 * left, and this node's rank among them by id (KEYS[2], all scores 0):
 * nodes split a budget's floor by rank while Redis is away.
 */

static const char  ngx_http_llm_nodes_script[] =
    "local old = ARGV[1] - ARGV[3] "
    "local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', old, "
    "'LIMIT', 0, 1000) "
    "for _, m in ipairs(dead) do redis.call('ZREM', KEYS[1], m) "
    "redis.call('ZREM', KEYS[2], m) end "
    "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) "
    "redis.call('ZADD', KEYS[2], 0, ARGV[2]) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) "
    "redis.call('PEXPIRE', KEYS[2], ARGV[3]) "
    "return {redis.call('ZCARD', KEYS[1]), "
    "redis.call('ZLEXCOUNT', KEYS[2], '-', '(' .. ARGV[2])}";


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
    ngx_http_llm_redis_conf_t  *rc;

    rc = lmcf->redis;
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

        route->tag.len = sizeof("{:}") - 1 + rc->prefix.len
                         + llcf->route.len;
        route->tag.data = ngx_pnalloc(cycle->pool, route->tag.len);
        if (route->tag.data == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_sprintf(route->tag.data, "{%V:%V}", &rc->prefix,
                           &llcf->route);
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
    ngx_uint_t                  i;
    ngx_pool_t                 *pool;
    ngx_http_llm_batch_t       *batch;
    ngx_http_llm_syncer_t      *sy;
    ngx_http_llm_sync_route_t  *route;

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

    route = sy->routes.elts;

    for (i = 0; i < sy->routes.nelts; i++) {
        if (ngx_http_llm_sync_route(batch, &route[i]) != NGX_OK) {
            goto failed;
        }
    }

    if (ngx_http_llm_sync_cooldowns(batch) != NGX_OK
        || ngx_http_llm_sync_canaries(batch) != NGX_OK
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


/* a route's deltas, then its window's sums */

static ngx_int_t
ngx_http_llm_sync_route(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_route_t *route)
{
    u_char                *ttl, *delta;
    size_t                 len, ttl_len;
    time_t                 sec;
    ngx_uint_t             i, k, n, nkeys, counted;
    ngx_array_t            deltas;
    const char           **argv;
    ngx_slab_pool_t       *shpool;
    ngx_atomic_int_t       c, d;
    ngx_http_llm_slot_t   *slot;
    ngx_http_llm_delta_t  *dl;
    size_t                *argvlen;

    if (ngx_array_init(&deltas, batch->pool, 4, sizeof(ngx_http_llm_delta_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* taken under the mutex: no slot turns over, no other syncer races */

    shpool = (ngx_slab_pool_t *) route->zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    counted = 0;

    for (i = 0; i < route->window; i++) {
        sec = batch->now - i;
        slot = &route->node->slots[sec % NGX_HTTP_LLM_SLOTS];

        if ((time_t) slot->sec != sec) {
            continue;
        }

        for (k = 0; k < NGX_HTTP_LLM_SHARED; k++) {

            if (slot->count[k]) {
                counted = 1;
            }

            /*
             * Read once: other workers add to count without the mutex,
             * and what they add after this read goes in the next batch.
             */

            c = (ngx_atomic_int_t) slot->count[k];
            d = c - (ngx_atomic_int_t) slot->synced[k];

            if (d == 0) {
                continue;
            }

            dl = ngx_array_push(&deltas);
            if (dl == NULL) {
                ngx_shmtx_unlock(&shpool->mutex);
                return NGX_ERROR;
            }

            dl->sec = sec;
            dl->counter = k;
            dl->delta = d;
            dl->first = (slot->synced[k] == 0);

            slot->synced[k] = c;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    /*
     * A route this node counted nothing in for a window decides
     * nothing on the cluster's view: it costs no command.  The first
     * requests after that are judged on this node's counters until the
     * next view (ngx_http_llm_route_fresh()).
     */

    if (!counted) {
        return NGX_OK;
    }

    ttl = ngx_pnalloc(batch->pool, NGX_INT_T_LEN);
    if (ttl == NULL) {
        return NGX_ERROR;
    }

    ttl_len = ngx_sprintf(ttl, "%ui", (route->window + 2) * 1000) - ttl;

    argv = ngx_palloc(batch->pool, 3 * sizeof(char *));
    argvlen = ngx_palloc(batch->pool, 3 * sizeof(size_t));
    if (argv == NULL || argvlen == NULL) {
        return NGX_ERROR;
    }

    dl = deltas.elts;

    for (i = 0; i < deltas.nelts; i++) {
        argv[1] = (char *) ngx_http_llm_sync_key(batch->pool, &route->tag,
                                                 dl[i].counter
                                                 == NGX_HTTP_LLM_REQUESTS
                                                 ? 'r' : 'x',
                                                 dl[i].sec, &argvlen[1]);
        delta = ngx_pnalloc(batch->pool, NGX_ATOMIC_T_LEN + 1);

        if (argv[1] == NULL || delta == NULL) {
            return NGX_ERROR;
        }

        len = ngx_sprintf(delta, "%A", dl[i].delta) - delta;

        argv[0] = "INCRBY";
        argvlen[0] = sizeof("INCRBY") - 1;
        argv[2] = (char *) delta;
        argvlen[2] = len;

        if (ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_WRITE, route,
                                      3, argv, argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /*
         * Once per key and node: the key's life starts with its second,
         * a later PEXPIRE would move its end by less than a tick.
         */

        if (!dl[i].first) {
            continue;
        }

        argv[0] = "PEXPIRE";
        argvlen[0] = sizeof("PEXPIRE") - 1;
        argv[2] = (char *) ttl;
        argvlen[2] = ttl_len;

        if (ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_WRITE, route,
                                      3, argv, argvlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /*
     * MGET r:SEC... x:SEC..., oldest second first.  A second stops
     * growing once every node's batches of it came (within a sync and a
     * timeout): the route's first view reads the window, the next ones
     * only the seconds that may still grow, and keep what they read of
     * the others in the slots.
     */

    if (ngx_http_llm_route_fresh(route->zone, route->node)) {
        route->read = (ngx_http_llm_syncer.conf->sync
                       + ngx_http_llm_syncer.conf->timeout) / 1000 + 2;
        route->read = ngx_min(route->read, route->window);

    } else {
        route->read = route->window;
    }

    nkeys = 2 * route->read;

    argv = ngx_palloc(batch->pool, (nkeys + 1) * sizeof(char *));
    argvlen = ngx_palloc(batch->pool, (nkeys + 1) * sizeof(size_t));
    if (argv == NULL || argvlen == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "MGET";
    argvlen[0] = sizeof("MGET") - 1;

    for (n = 0; n < nkeys; n++) {
        sec = batch->now - (time_t) route->read + 1
              + (time_t) (n % route->read);

        argv[n + 1] = (char *) ngx_http_llm_sync_key(batch->pool, &route->tag,
                                                     n < route->read
                                                     ? 'r' : 'x',
                                                     sec, &argvlen[n + 1]);
        if (argv[n + 1] == NULL) {
            return NGX_ERROR;
        }
    }

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_WINDOW, route,
                                     nkeys + 1, argv, argvlen);
}


/* cooldowns that began here go out; every target's comes back */

static ngx_int_t
ngx_http_llm_sync_cooldowns(ngx_http_llm_batch_t *batch)
{
    u_char                      *until, *left, *limit;
    ngx_uint_t                   i;
    ngx_msec_t                   now, end, cap;
    const char                 **argv, *eval[7];
    size_t                      *argvlen, eval_len[7];
    ngx_http_llm_node_t         *n;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_target_t  *st;

    sy = &ngx_http_llm_syncer;
    st = sy->targets.elts;

    if (sy->targets.nelts == 0) {
        return NGX_OK;
    }

    now = ngx_http_llm_wall_msec();

    eval[0] = "EVAL";
    eval_len[0] = sizeof("EVAL") - 1;
    eval[1] = ngx_http_llm_cooldown_script;
    eval_len[1] = sizeof(ngx_http_llm_cooldown_script) - 1;
    eval[2] = "1";
    eval_len[2] = 1;

    for (i = 0; i < sy->targets.nelts; i++) {
        n = st[i].node;
        end = n->cooldown_until;

        if (end <= now || end <= (ngx_msec_t) n->cooldown_shared) {
            continue;
        }

        n->cooldown_shared = end;

        until = ngx_pnalloc(batch->pool, 3 * NGX_INT64_LEN);
        if (until == NULL) {
            return NGX_ERROR;
        }

        cap = n->cooldown_max ? (ngx_msec_t) n->cooldown_max
                              : (ngx_msec_t) NGX_HTTP_LLM_RETRY_AFTER_MAX;

        left = ngx_sprintf(until, "%M", end);
        limit = ngx_sprintf(left, "%M", end - now);

        eval[3] = (char *) st[i].key.data;
        eval_len[3] = st[i].key.len;
        eval[4] = (char *) until;
        eval_len[4] = left - until;
        eval[5] = (char *) left;
        eval_len[5] = limit - left;
        eval[6] = (char *) limit;
        eval_len[6] = ngx_sprintf(limit, "%M", now + cap) - limit;

        if (ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_WRITE, NULL,
                                      7, eval, eval_len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    argv = ngx_palloc(batch->pool, (sy->targets.nelts + 1) * sizeof(char *));
    argvlen = ngx_palloc(batch->pool,
                         (sy->targets.nelts + 1) * sizeof(size_t));
    if (argv == NULL || argvlen == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "MGET";
    argvlen[0] = sizeof("MGET") - 1;

    for (i = 0; i < sy->targets.nelts; i++) {
        argv[i + 1] = (char *) st[i].key.data;
        argvlen[i + 1] = st[i].key.len;
    }

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_COOLDOWNS, NULL,
                                     sy->targets.nelts + 1, argv, argvlen);
}


/*
 * Holds this node took go out; every canary's comes back.  A hold is
 * written once (and again if Redis lost it), marked as sent before it
 * is: a lost batch leaves it out until Redis is read without it.
 */

static ngx_int_t
ngx_http_llm_sync_canaries(ngx_http_llm_batch_t *batch)
{
    u_char                      *value;
    ngx_uint_t                   i;
    ngx_msec_t                   since;
    const char                 **argv, *set[5];
    size_t                      *argvlen, set_len[5];
    ngx_http_llm_node_t         *n;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_canary_t  *sc;

    sy = &ngx_http_llm_syncer;
    sc = sy->canaries.elts;

    if (sy->canaries.nelts == 0) {
        return NGX_OK;
    }

    set[0] = "SET";
    set_len[0] = sizeof("SET") - 1;
    set[3] = "PX";
    set_len[3] = sizeof("PX") - 1;
    set[4] = NGX_HTTP_LLM_SYNC_HOLD_TTL;
    set_len[4] = sizeof(NGX_HTTP_LLM_SYNC_HOLD_TTL) - 1;

    for (i = 0; i < sy->canaries.nelts; i++) {
        n = sc[i].node;

        if (!ngx_http_llm_canary_on_hold(n, sc[i].weight)) {
            continue;
        }

        since = n->hold_since;

        if ((ngx_msec_t) n->hold_shared == since) {
            continue;
        }

        n->hold_shared = since;

        value = ngx_pnalloc(batch->pool, 4 * NGX_ATOMIC_T_LEN);
        if (value == NULL) {
            return NGX_ERROR;
        }

        set[1] = (char *) sc[i].key.data;
        set_len[1] = sc[i].key.len;
        set[2] = (char *) value;
        set_len[2] = ngx_sprintf(value, "%ui %M %uA %uA", sc[i].weight, since,
                                 n->hold_attempts, n->hold_failures)
                     - value;

        if (ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_WRITE, NULL,
                                      5, set, set_len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    argv = ngx_palloc(batch->pool, (sy->canaries.nelts + 1) * sizeof(char *));
    argvlen = ngx_palloc(batch->pool,
                         (sy->canaries.nelts + 1) * sizeof(size_t));
    if (argv == NULL || argvlen == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "MGET";
    argvlen[0] = sizeof("MGET") - 1;

    for (i = 0; i < sy->canaries.nelts; i++) {
        argv[i + 1] = (char *) sc[i].key.data;
        argvlen[i + 1] = sc[i].key.len;
    }

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_CANARIES, NULL,
                                     sy->canaries.nelts + 1, argv, argvlen);
}


/*
 * Once a second: this node is alive, and how many nodes are.  A node
 * that counts alone while Redis is away takes its share of each budget's
 * floor by the last count (ngx_http_llm_budget.c).
 */

static ngx_int_t
ngx_http_llm_sync_alive(ngx_http_llm_batch_t *batch)
{
    u_char                 *now, *last;
    const char             *argv[8];
    size_t                  argvlen[8];
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    /* until Redis took it: a refused one goes again in every batch */
    if (sy->alive == batch->now) {
        return NGX_OK;
    }

    now = ngx_pnalloc(batch->pool, 2 * NGX_INT64_LEN);
    if (now == NULL) {
        return NGX_ERROR;
    }

    last = ngx_sprintf(now, "%M", ngx_http_llm_wall_msec());

    argv[0] = "EVAL";
    argvlen[0] = sizeof("EVAL") - 1;
    argv[1] = ngx_http_llm_nodes_script;
    argvlen[1] = sizeof(ngx_http_llm_nodes_script) - 1;
    argv[2] = "2";
    argvlen[2] = 1;
    argv[3] = (char *) sy->nodes_key.data;
    argvlen[3] = sy->nodes_key.len;
    argv[4] = (char *) sy->names_key.data;
    argvlen[4] = sy->names_key.len;
    argv[5] = (char *) now;
    argvlen[5] = last - now;
    argv[6] = (char *) sy->node_id.data;
    argvlen[6] = sy->node_id.len;
    argv[7] = (char *) last;
    argvlen[7] = ngx_sprintf(last, "%d", NGX_HTTP_LLM_SYNC_NODE_TTL) - last;

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_NODES, NULL,
                                     8, argv, argvlen);
}


static ngx_int_t
ngx_http_llm_sync_command(ngx_http_llm_batch_t *batch, ngx_uint_t what,
    ngx_http_llm_sync_route_t *route, int argc, const char **argv,
    const size_t *argvlen)
{
    ngx_http_llm_sync_reply_t  *sr;

    sr = ngx_palloc(batch->pool, sizeof(ngx_http_llm_sync_reply_t));
    if (sr == NULL) {
        return NGX_ERROR;
    }

    sr->batch = batch;
    sr->what = what;
    sr->route = route;

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


/* {prefix:route}:r:SEC */

static u_char *
ngx_http_llm_sync_key(ngx_pool_t *pool, ngx_str_t *tag, char kind, time_t sec,
    size_t *len)
{
    u_char  *key, *p;

    key = ngx_pnalloc(pool, tag->len + sizeof(":r:") - 1 + NGX_TIME_T_LEN);
    if (key == NULL) {
        return NULL;
    }

    p = ngx_sprintf(key, "%V:%c:%T", tag, kind, sec);
    *len = p - key;

    return key;
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

    } else if (reply->type == REDIS_REPLY_ERROR) {

        if (batch->error_len == 0) {
            batch->error_len = ngx_min((size_t) reply->len,
                                       sizeof(batch->error));
            ngx_memcpy(batch->error, reply->str, batch->error_len);
        }

    } else if (sr->what == NGX_HTTP_LLM_SYNC_WINDOW) {
        ngx_http_llm_sync_window(batch, sr->route, reply);

    } else if (sr->what == NGX_HTTP_LLM_SYNC_COOLDOWNS) {
        ngx_http_llm_sync_cooldowns_got(batch, reply);

    } else if (sr->what == NGX_HTTP_LLM_SYNC_NODES) {
        ngx_http_llm_sync_nodes(batch, reply);

    } else if (sr->what == NGX_HTTP_LLM_SYNC_CANARIES) {
        ngx_http_llm_sync_canaries_got(batch, reply);
    }

    if (--batch->pending == 0) {
        ngx_http_llm_sync_done(batch);
    }
}


/* the cluster's sums of a route's window, written into its slots */

static void
ngx_http_llm_sync_window(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_route_t *route, redisReply *reply)
{
    time_t                sec;
    ngx_uint_t            i, w;
    ngx_slab_pool_t      *shpool;
    ngx_http_llm_slot_t  *slot;

    w = route->read;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 * w) {
        batch->error_len = ngx_cpymem(batch->error, "unexpected MGET reply",
                                      sizeof("unexpected MGET reply") - 1)
                           - batch->error;
        return;
    }

    shpool = (ngx_slab_pool_t *) route->zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < w; i++) {
        sec = batch->now - (time_t) w + 1 + (time_t) i;

        slot = ngx_http_llm_slot_locked(route->node, sec);

        if (slot == NULL) {
            continue;
        }

        slot->cluster[NGX_HTTP_LLM_REQUESTS] =
                              ngx_http_llm_sync_number(reply->element[i]);
        slot->cluster[NGX_HTTP_LLM_RETRIES] =
                              ngx_http_llm_sync_number(reply->element[w + i]);
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
 * Cooldowns any node began, in wall-clock ms: the later end wins, but
 * never one further away than the target's max= (a node never trusts a
 * far-future value, whoever wrote it): that one cools the target for
 * max from now, and this node's end goes back to Redis at the next tick
 * to replace it, so that later reads do not extend the cut.
 */

static void
ngx_http_llm_sync_cooldowns_got(ngx_http_llm_batch_t *batch,
    redisReply *reply)
{
    ngx_uint_t                   i;
    ngx_msec_t                   now, end, old, cap;
    ngx_http_llm_node_t         *n;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_target_t  *st;

    sy = &ngx_http_llm_syncer;
    st = sy->targets.elts;

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != sy->targets.nelts)
    {
        batch->error_len = ngx_cpymem(batch->error, "unexpected MGET reply",
                                      sizeof("unexpected MGET reply") - 1)
                           - batch->error;
        return;
    }

    now = ngx_http_llm_wall_msec();

    for (i = 0; i < sy->targets.nelts; i++) {
        end = (ngx_msec_t) ngx_http_llm_sync_number(reply->element[i]);
        n = st[i].node;

        if (end <= now) {
            continue;
        }

        cap = n->cooldown_max;

        if (cap && end > now + cap) {
            end = now + cap;
            n->cooldown_shared = 0;

        } else if (end > (ngx_msec_t) n->cooldown_shared) {
            n->cooldown_shared = end;
        }

        for ( ;; ) {
            old = n->cooldown_until;

            if (old >= end) {
                break;
            }

            if (ngx_atomic_cmp_set(&n->cooldown_until, old, end)) {

                if (old <= now) {
                    (void) ngx_atomic_fetch_add(&n->cooldowns, 1);

                    ngx_log_error(NGX_LOG_NOTICE, sy->log, 0,
                                  "llm target \"%*s\" cooling down for "
                                  "%M ms, as another node found",
                                  n->len, n->name, end - now);
                }

                break;
            }
        }
    }
}


/*
 * Holds as Redis has them.  One taken at the weight this node gives the
 * target is taken here too; one taken at another weight is another
 * shift's, and is left alone.  A hold of this node's that Redis lost
 * (a restart, an expiry, a DEL by hand) goes out again at the next tick.
 */

static void
ngx_http_llm_sync_canaries_got(ngx_http_llm_batch_t *batch,
    redisReply *reply)
{
    off_t                        v[4];
    u_char                      *p, *last, *f;
    ngx_uint_t                   i, k;
    redisReply                  *e;
    ngx_http_llm_node_t         *n;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_canary_t  *sc;

    sy = &ngx_http_llm_syncer;
    sc = sy->canaries.elts;

    if (reply->type != REDIS_REPLY_ARRAY
        || reply->elements != sy->canaries.nelts)
    {
        batch->error_len = ngx_cpymem(batch->error, "unexpected MGET reply",
                                      sizeof("unexpected MGET reply") - 1)
                           - batch->error;
        return;
    }

    for (i = 0; i < sy->canaries.nelts; i++) {
        e = reply->element[i];
        n = sc[i].node;

        if (e->type != REDIS_REPLY_STRING) {
            if (n->hold_shared && ngx_http_llm_canary_on_hold(n, sc[i].weight))
            {
                n->hold_shared = 0;
            }

            continue;
        }

        /* "weight since attempts failures" */

        p = (u_char *) e->str;
        last = p + e->len;

        for (k = 0; k < 4; k++) {
            f = p;

            while (p < last && *p != ' ') {
                p++;
            }

            v[k] = ngx_atoof(f, p - f);

            if (v[k] == NGX_ERROR) {
                break;
            }

            if (p < last) {
                p++;
            }
        }

        if (k < 4 || v[0] != (off_t) sc[i].weight || v[1] == 0) {
            continue;
        }

        (void) ngx_http_llm_canary_adopt(sc[i].zone, n, sc[i].weight,
                                         (ngx_msec_t) v[1], (ngx_uint_t) v[2],
                                         (ngx_uint_t) v[3], sy->log);
    }
}


/*
 * The number of live nodes and this node's rank among them, kept in
 * every zone for when Redis is away
 */

static void
ngx_http_llm_sync_nodes(ngx_http_llm_batch_t *batch, redisReply *reply)
{
    ngx_uint_t              i, nodes, rank;
    ngx_shm_zone_t        **zones;
    ngx_http_llm_zone_t    *zone;
    ngx_http_llm_syncer_t  *sy;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_INTEGER
        || reply->element[0]->integer < 1
        || reply->element[1]->integer < 0)
    {
        return;
    }

    nodes = (ngx_uint_t) reply->element[0]->integer;
    rank = (ngx_uint_t) reply->element[1]->integer;

    /* the two sets disagree for a moment after one was lost */
    if (rank >= nodes) {
        rank = nodes - 1;
    }

    sy = &ngx_http_llm_syncer;
    sy->alive = batch->now;

    zones = sy->zones->elts;

    for (i = 0; i < sy->zones->nelts; i++) {
        zone = zones[i]->data;
        zone->sh->rank = rank;
        zone->sh->nodes = nodes;
    }
}


/* an MGET element: a number, or nil for a key no node wrote (yet) */

static ngx_atomic_int_t
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
