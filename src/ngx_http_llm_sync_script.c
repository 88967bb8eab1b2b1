
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_sync.h"


/*
 * The script calls of a batch (design.md 4).  One Lua script adds this
 * node's deltas of busy routes to the per-second keys and returns the
 * fleet's sums of the seconds the node reads:
 *
 *   KEYS   keys to read back first, then keys only declared
 *   ARGV   now (Unix seconds), how many of KEYS to read back, then for
 *          each route this node counted in within its window:
 *          "{prefix:route}", TTL (ms), seconds to read, deltas, then per
 *          delta: "r" or "x" and its age (seconds before now, "r0"), the
 *          delta
 *
 * It returns one MGET's values: the keys read back, then per route
 * r1..rN and x1..xN, oldest second first (an MGET of 4000 keys at most,
 * under Lua's unpack limit).  A key's PEXPIRE comes with the write that
 * made it, whichever node's: one a key, not one a key and node.  The
 * keys of the counts are built in the script, each suffix once a call,
 * so the call stays short.  Redis runs a script whole: a call's writes
 * and reads are one step for the others.
 *
 * One Redis server: one EVALSHA a tick, whatever the number of routes;
 * KEYS are the cooldown and canary keys, all read back.  A tick with no
 * busy route sends a plain MGET of them, whose reply is laid out alike.
 *
 * Redis Cluster ("cluster"): every call keeps to one hash slot, so that
 * a cluster-aware proxy routes it by its first key and Redis' CROSSSLOT
 * check holds.  An MGET of the cooldown keys ({prefix:cd}), one of the
 * canary keys ({prefix:canary}), and an EVALSHA per busy route, whose
 * KEYS declare every key the script touches, all in "{prefix:route}",
 * none read back: the seconds it reads, then those it writes older than
 * these.  Declared keys also let Redis redirect a call during a slot's
 * migration rather than run it on a node that lacks some of them.
 */


static const char  ngx_http_llm_sync_lua[] =
    "local now, c = tonumber(ARGV[1]), tonumber(ARGV[2]) "
    "local ks, wx, rx = {}, {}, {} "
    "for j = 1, c do ks[j] = KEYS[j] end "
    "local i, m = 3, #ARGV "
    "while i <= m do "
    "local tag, ttl = ARGV[i], ARGV[i + 1] "
    "local read, n = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]) "
    "i = i + 4 "
    "for j = i, i + 2 * n - 2, 2 do "
    "local a = ARGV[j] "
    "local s = wx[a] "
    "if not s then "
    "s = ':' .. string.sub(a, 1, 1) .. ':' "
    ".. (now - tonumber(string.sub(a, 2))) "
    "wx[a] = s end "
    "local k, d = tag .. s, tonumber(ARGV[j + 1]) "
    "if redis.call('INCRBY', k, d) == d then "
    "redis.call('PEXPIRE', k, ttl) end end "
    "i = i + 2 * n "
    "for age = read - 1, 0, -1 do "
    "local p = rx[age] "
    "if not p then "
    "local s = now - age p = {':r:' .. s, ':x:' .. s} rx[age] = p end "
    "c = c + 1 "
    "ks[c] = tag .. p[1] "
    "ks[c + read] = tag .. p[2] end "
    "c = c + read end "
    "if c == 0 then return {} end "
    "if c <= 4000 then return redis.call('MGET', unpack(ks)) end "
    "local v = {} "
    "for a = 1, c, 4000 do "
    "local part = redis.call('MGET', unpack(ks, a, math.min(a + 3999, c))) "
    "for j = 1, #part do v[a + j - 1] = part[j] end end "
    "return v";


static ngx_int_t ngx_http_llm_sync_one(ngx_http_llm_batch_t *batch);
static ngx_int_t ngx_http_llm_sync_slots(ngx_http_llm_batch_t *batch);
static ngx_int_t ngx_http_llm_sync_declared(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *args, ngx_http_llm_sync_route_t *route);
static ngx_http_llm_sync_call_t *ngx_http_llm_sync_call(
    ngx_http_llm_batch_t *batch, ngx_uint_t n);
static ngx_int_t ngx_http_llm_sync_script_route(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_http_llm_sync_route_t *route);
static ngx_int_t ngx_http_llm_sync_arg(ngx_http_llm_sync_call_t *call,
    u_char *arg, size_t len);
static void ngx_http_llm_sync_window(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_route_t *route, redisReply *reply);


/* the script's SHA1, which EVALSHA names it by */

void
ngx_http_llm_sync_script_init(void)
{
    u_char      hash[20];
    ngx_sha1_t  sha1;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, ngx_http_llm_sync_lua,
                    sizeof(ngx_http_llm_sync_lua) - 1);
    ngx_sha1_final(hash, &sha1);

    (void) ngx_hex_dump(ngx_http_llm_syncer.sha, hash, sizeof(hash));
}


ngx_int_t
ngx_http_llm_sync_script(ngx_http_llm_batch_t *batch)
{
    if (ngx_http_llm_syncer.conf->cluster) {
        return ngx_http_llm_sync_slots(batch);
    }

    return ngx_http_llm_sync_one(batch);
}


/* one Redis server: one call a tick */

static ngx_int_t
ngx_http_llm_sync_one(ngx_http_llm_batch_t *batch)
{
    u_char                      *p, *keys, *last;
    size_t                      *argvlen;
    ngx_uint_t                   i;
    const char                 **argv;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_call_t    *call;
    ngx_http_llm_sync_route_t   *route;
    ngx_http_llm_sync_target_t  *st;
    ngx_http_llm_sync_canary_t  *sc;

    sy = &ngx_http_llm_syncer;

    call = ngx_http_llm_sync_call(batch, 64);
    if (call == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(batch->pool, 2 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    /* the number of keys, which are all read back */

    keys = p;
    last = ngx_sprintf(keys, "%ui", sy->targets.nelts + sy->canaries.nelts);

    if (ngx_http_llm_sync_arg(call, (u_char *) "EVALSHA", 7) != NGX_OK
        || ngx_http_llm_sync_arg(call, sy->sha, sizeof(sy->sha)) != NGX_OK
        || ngx_http_llm_sync_arg(call, keys, last - keys) != NGX_OK)
    {
        return NGX_ERROR;
    }

    p += NGX_INT_T_LEN;
    st = sy->targets.elts;
    sc = sy->canaries.elts;

    for (i = 0; i < sy->targets.nelts; i++) {
        if (ngx_http_llm_sync_arg(call, st[i].key.data, st[i].key.len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    for (i = 0; i < sy->canaries.nelts; i++) {
        if (ngx_http_llm_sync_arg(call, sc[i].key.data, sc[i].key.len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_http_llm_sync_arg(call, p, ngx_sprintf(p, "%T", batch->now) - p)
        != NGX_OK
        || ngx_http_llm_sync_arg(call, keys, last - keys) != NGX_OK)
    {
        return NGX_ERROR;
    }

    route = sy->routes.elts;

    for (i = 0; i < sy->routes.nelts; i++) {
        if (ngx_http_llm_sync_script_route(batch, call, &route[i]) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    call->news = 1;
    call->script = (call->routes.nelts > 0);

    if (call->script) {
        return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_SCRIPT, call,
                                         (int) call->argv.nelts,
                                         call->argv.elts,
                                         call->argvlen.elts);
    }

    /* no busy route: an MGET of the keys, its reply laid out alike */

    if (sy->targets.nelts + sy->canaries.nelts == 0) {
        return NGX_OK;
    }

    argv = call->argv.elts;
    argvlen = call->argvlen.elts;

    argv[2] = "MGET";
    argvlen[2] = sizeof("MGET") - 1;

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_SCRIPT, call,
                                     (int) (1 + sy->targets.nelts
                                            + sy->canaries.nelts),
                                     &argv[2], &argvlen[2]);
}


/*
 * Redis Cluster: a call per hash slot that has work, the cooldowns',
 * the canaries', and each busy route's
 */

static ngx_int_t
ngx_http_llm_sync_slots(ngx_http_llm_batch_t *batch)
{
    ngx_uint_t                  i;
    ngx_http_llm_syncer_t      *sy;
    ngx_http_llm_sync_call_t   *args;
    ngx_http_llm_sync_route_t  *route;

    sy = &ngx_http_llm_syncer;

    if (ngx_http_llm_sync_news_read(batch) != NGX_OK) {
        return NGX_ERROR;
    }

    /* a route's arguments, taken here, then copied into its own call */

    args = ngx_http_llm_sync_call(batch, 16);
    if (args == NULL) {
        return NGX_ERROR;
    }

    route = sy->routes.elts;

    for (i = 0; i < sy->routes.nelts; i++) {
        args->argv.nelts = 0;
        args->argvlen.nelts = 0;
        args->routes.nelts = 0;

        if (ngx_http_llm_sync_script_route(batch, args, &route[i]) != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (args->routes.nelts == 0) {
            continue;
        }

        if (ngx_http_llm_sync_declared(batch, args, &route[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A busy route's call in cluster mode: its KEYS are every key the script
 * reads or writes, all in the route's slot, none read back
 */

static ngx_int_t
ngx_http_llm_sync_declared(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *args, ngx_http_llm_sync_route_t *route)
{
    u_char                     **a, *p, *last, *now;
    size_t                      *al, len;
    ngx_int_t                    age;
    ngx_uint_t                   i, k, n, read, keys;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_call_t    *call;
    ngx_http_llm_sync_route_t  **rp;

    sy = &ngx_http_llm_syncer;

    a = args->argv.elts;
    al = args->argvlen.elts;

    /* "{prefix:route}", TTL, seconds to read, deltas, then pairs */

    read = route->read;
    n = (args->argv.nelts - 4) / 2;

    call = ngx_http_llm_sync_call(batch, 6 + 2 * read + 3 * n);
    if (call == NULL) {
        return NGX_ERROR;
    }

    len = route->tag.len + sizeof(":r:") - 1 + NGX_TIME_T_LEN;

    p = ngx_pnalloc(batch->pool, (2 * read + n) * len + 3 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_sync_arg(call, (u_char *) "EVALSHA", 7) != NGX_OK
        || ngx_http_llm_sync_arg(call, sy->sha, sizeof(sy->sha)) != NGX_OK
        || ngx_http_llm_sync_arg(call, NULL, 0) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* the seconds read, r then x, oldest first, as the script reads them */

    for (k = 0; k < 2; k++) {
        for (i = read; i > 0; i--) {
            last = ngx_sprintf(p, "%V:%c:%T", &route->tag, k ? 'x' : 'r',
                               batch->now - (time_t) (i - 1));

            if (ngx_http_llm_sync_arg(call, p, last - p) != NGX_OK) {
                return NGX_ERROR;
            }

            p = last;
        }
    }

    /* the seconds written that are not read: after an outage, say */

    for (i = 0; i < n; i++) {
        age = ngx_atoi(a[4 + 2 * i] + 1, al[4 + 2 * i] - 1);

        if (age == NGX_ERROR || (ngx_uint_t) age < read) {
            continue;
        }

        last = ngx_sprintf(p, "%V:%c:%T", &route->tag, a[4 + 2 * i][0],
                           batch->now - (time_t) age);

        if (ngx_http_llm_sync_arg(call, p, last - p) != NGX_OK) {
            return NGX_ERROR;
        }

        p = last;
    }

    keys = call->argv.nelts - 3;

    now = p;
    last = ngx_sprintf(now, "%ui", keys);

    ((u_char **) call->argv.elts)[2] = now;
    ((size_t *) call->argvlen.elts)[2] = last - now;

    /* ARGV: now, none of KEYS read back, the route's arguments */

    now = last;
    last = ngx_sprintf(now, "%T", batch->now);

    if (ngx_http_llm_sync_arg(call, now, last - now) != NGX_OK
        || ngx_http_llm_sync_arg(call, (u_char *) "0", 1) != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < args->argv.nelts; i++) {
        if (ngx_http_llm_sync_arg(call, a[i], al[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    rp = ngx_array_push(&call->routes);
    if (rp == NULL) {
        return NGX_ERROR;
    }

    *rp = route;

    call->script = 1;

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_SCRIPT, call,
                                     (int) call->argv.nelts, call->argv.elts,
                                     call->argvlen.elts);
}


static ngx_http_llm_sync_call_t *
ngx_http_llm_sync_call(ngx_http_llm_batch_t *batch, ngx_uint_t n)
{
    ngx_http_llm_sync_call_t  *call;

    call = ngx_pcalloc(batch->pool, sizeof(ngx_http_llm_sync_call_t));
    if (call == NULL) {
        return NULL;
    }

    if (ngx_array_init(&call->argv, batch->pool, n, sizeof(char *))
        != NGX_OK
        || ngx_array_init(&call->argvlen, batch->pool, n, sizeof(size_t))
           != NGX_OK
        || ngx_array_init(&call->routes, batch->pool, 4,
                          sizeof(ngx_http_llm_sync_route_t *))
           != NGX_OK)
    {
        return NULL;
    }

    return call;
}


/*
 * A route's deltas, and the seconds to read.  Taken under the mutex: no
 * slot turns over, no other syncer races (an old worker 0 quitting after
 * a reload); marked as sent before they are, at most once.
 */

static ngx_int_t
ngx_http_llm_sync_script_route(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_http_llm_sync_route_t *route)
{
    u_char                      *p, *last;
    time_t                       sec;
    ngx_uint_t                   i, k, n, at, counted;
    ngx_slab_pool_t             *shpool;
    ngx_atomic_int_t             c, d;
    ngx_http_llm_slot_t         *slot;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_route_t  **rp;
    u_char                     **argv;
    size_t                      *argvlen;

    sy = &ngx_http_llm_syncer;

    /* "{prefix:route}", TTL, seconds to read, deltas: filled in below */

    at = call->argv.nelts;

    for (i = 0; i < 4; i++) {
        if (ngx_http_llm_sync_arg(call, NULL, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    shpool = (ngx_slab_pool_t *) route->zone->shm.addr;

    ngx_shmtx_lock(&shpool->mutex);

    counted = 0;
    n = 0;

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

            p = ngx_pnalloc(batch->pool,
                            1 + NGX_INT_T_LEN + NGX_ATOMIC_T_LEN);
            if (p == NULL) {
                ngx_shmtx_unlock(&shpool->mutex);
                return NGX_ERROR;
            }

            /* "r0": requests of this second, "x1": retries of the last */

            last = ngx_sprintf(p, "%c%ui",
                               k == NGX_HTTP_LLM_REQUESTS ? 'r' : 'x', i);

            if (ngx_http_llm_sync_arg(call, p, last - p) != NGX_OK
                || ngx_http_llm_sync_arg(call, last,
                                         ngx_sprintf(last, "%A", d) - last)
                   != NGX_OK)
            {
                ngx_shmtx_unlock(&shpool->mutex);
                return NGX_ERROR;
            }

            slot->synced[k] = c;
            n++;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    /*
     * A route this node counted nothing in for a window decides
     * nothing on the cluster's view: it costs nothing.  The first
     * requests after that are judged on this node's counters until the
     * next view (ngx_http_llm_route_fresh()).
     */

    if (!counted) {
        call->argv.nelts = at;
        call->argvlen.nelts = at;
        return NGX_OK;
    }

    /*
     * A second stops growing once every node's batches of it came
     * (within a sync and a timeout): the route's first view reads the
     * window, the next ones only the seconds that may still grow, and
     * keep what they read of the others in the slots.
     */

    if (ngx_http_llm_route_fresh(route->zone, route->node)) {
        route->read = (sy->conf->sync + sy->conf->timeout) / 1000 + 2;
        route->read = ngx_min(route->read, route->window);

    } else {
        /* and the second before it, which leaves the window smoothly */
        route->read = ngx_min(route->window + 1, NGX_HTTP_LLM_SLOTS);
    }

    p = ngx_pnalloc(batch->pool, 3 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    argv = call->argv.elts;
    argvlen = call->argvlen.elts;

    argv[at] = route->tag.data;
    argvlen[at] = route->tag.len;

    /* a key lives its window and 2 s from its first write */

    argv[at + 1] = p;
    last = ngx_sprintf(p, "%ui", (route->window + 2) * 1000);
    argvlen[at + 1] = last - p;

    argv[at + 2] = last;
    p = ngx_sprintf(last, "%ui", route->read);
    argvlen[at + 2] = p - last;

    argv[at + 3] = p;
    argvlen[at + 3] = ngx_sprintf(p, "%ui", n) - p;

    rp = ngx_array_push(&call->routes);
    if (rp == NULL) {
        return NGX_ERROR;
    }

    *rp = route;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_sync_arg(ngx_http_llm_sync_call_t *call, u_char *arg,
    size_t len)
{
    u_char  **a;
    size_t   *l;

    a = ngx_array_push(&call->argv);
    l = ngx_array_push(&call->argvlen);

    if (a == NULL || l == NULL) {
        return NGX_ERROR;
    }

    *a = arg;
    *l = len;

    return NGX_OK;
}


/*
 * NOSCRIPT: a Redis restarted, or its scripts flushed, since it last
 * ran the script: the call goes again as EVAL, which loads it for the
 * next ticks' EVALSHA.  Once a call.
 */

ngx_uint_t
ngx_http_llm_sync_script_again(ngx_http_llm_sync_call_t *call,
    redisReply *reply)
{
    const char  **argv;
    size_t       *argvlen;

    if (reply->type != REDIS_REPLY_ERROR || !call->script || call->evaled
        || reply->len < 8 || ngx_strncmp(reply->str, "NOSCRIPT", 8) != 0)
    {
        return 0;
    }

    call->evaled = 1;

    argv = call->argv.elts;
    argvlen = call->argvlen.elts;

    argv[0] = "EVAL";
    argvlen[0] = sizeof("EVAL") - 1;
    argv[1] = ngx_http_llm_sync_lua;
    argvlen[1] = sizeof(ngx_http_llm_sync_lua) - 1;

    return 1;
}


/*
 * The cooldown ends and the holds (when the call read them), then each
 * route's r1..rN x1..xN: each part handed on as an array of its own (a
 * view into the reply)
 */

void
ngx_http_llm_sync_script_got(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, redisReply *reply)
{
    size_t                       n;
    ngx_uint_t                   i;
    redisReply                   part;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_route_t  **route;

    sy = &ngx_http_llm_syncer;
    route = call->routes.elts;

    n = call->news ? sy->targets.nelts + sy->canaries.nelts : 0;

    for (i = 0; i < call->routes.nelts; i++) {
        n += 2 * route[i]->read;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != n) {
        ngx_http_llm_sync_error(batch, "unexpected script reply");
        return;
    }

    ngx_memzero(&part, sizeof(redisReply));
    part.type = REDIS_REPLY_ARRAY;
    part.element = reply->element;

    if (call->news) {
        part.elements = sy->targets.nelts;

        ngx_http_llm_sync_cooldowns_got(batch, &part);

        part.element += part.elements;
        part.elements = sy->canaries.nelts;

        ngx_http_llm_sync_canaries_got(batch, &part);

        part.element += part.elements;
    }

    for (i = 0; i < call->routes.nelts; i++) {
        part.elements = 2 * route[i]->read;

        ngx_http_llm_sync_window(batch, route[i], &part);

        part.element += part.elements;
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
        ngx_http_llm_sync_error(batch, "unexpected script reply");
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
