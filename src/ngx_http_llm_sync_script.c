
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
 * The fleet's counts (design.md 4): one script call a tick, whatever the
 * number of routes, in keys of one hash slot, "{prefix:w}":
 *
 *   {prefix:w}:ix          a hash: each route's index by its name, "#n"
 *                          the indexes given, "#epoch" a token the node
 *                          that made the hash chose (a route's name has
 *                          no '#': ngx_http_llm_route.c)
 *   {prefix:w}:EPOCH:SEC   the counts of second SEC: one string of 32-bit
 *                          counters (a BITFIELD), route i's requests at
 *                          #2i, its retries at #2i+1
 *
 * so that a tick's writes are one BITFIELD per second written (one, two
 * when the tick follows a second's end), whatever the routes, and its
 * reads one MGET of the seconds that may still grow: Redis' work a tick
 * no longer grows with the routes (an INCRBY per counter did).  A new
 * epoch (the hash lost: a Redis restarted without its data, a FLUSHALL)
 * starts new keys, so that indexes given anew never read old counts.
 *
 *   KEYS   the hash; the seconds read, oldest first; the seconds only
 *          written; without "cluster", the cooldown and canary keys,
 *          read back
 *   ARGV   the epoch this node knows ("" for none), the one it makes
 *          when there is none, the TTL of a second (ms), how many
 *          seconds are read, how many news keys, how many names; the
 *          names of routes without an index; then per second written:
 *          its position in KEYS, n, n pairs "#offset" delta
 *
 * It returns {epoch, the names' indexes (-1: none left), one MGET's
 * values}: the seconds read (none when the epoch is not the node's: its
 * keys were not this epoch's, nor were its writes made), then the news.
 * The writes of a node that does not know the epoch are not made.  A
 * second's PEXPIRE comes with the write that makes its key.  Redis runs
 * a script whole: a call's writes and reads are one step for the others.
 *
 * With "cluster" (Redis Cluster behind a cluster-aware proxy) every key
 * of the call is in "{prefix:w}"'s slot and declared in KEYS, so that
 * Redis' same-slot check holds and a migrating slot redirects the call;
 * the cooldown ends and the holds come from an MGET each
 * (ngx_http_llm_sync_news_read()).
 */


#define NGX_HTTP_LLM_SYNC_GROUP_MAX   256   /* counters a BITFIELD adds */


static const char  ngx_http_llm_sync_lua[] =
    "local ix = KEYS[1] "
    "local e = redis.call('HGET', ix, '#epoch') "
    "if not e then e = ARGV[2] "
    "redis.call('HSET', ix, '#epoch', e, '#n', 0) end "
    "local r, nn, m = tonumber(ARGV[4]), tonumber(ARGV[5]), "
    "tonumber(ARGV[6]) "
    "local reg = {} "
    "if m > 0 then "
    "local got = redis.call('HMGET', ix, unpack(ARGV, 7, 6 + m)) "
    "local n, add = tonumber(redis.call('HGET', ix, '#n')) or 0, {} "
    "for j = 1, m do "
    "local i = tonumber(got[j]) "
    "if not i then "
    "if n < 4096 then "
    "i = n n = n + 1 add[#add + 1] = ARGV[6 + j] add[#add + 1] = i "
    "else i = -1 end end "
    "reg[j] = i end "
    "if #add > 0 then redis.call('HSET', ix, '#n', n, unpack(add)) end "
    "end "
    "if e == ARGV[1] then "
    "local i, last = 7 + m, #ARGV "
    "while i <= last do "
    "local k, c = KEYS[tonumber(ARGV[i])], tonumber(ARGV[i + 1]) "
    "local op, o = {k, 'OVERFLOW', 'SAT'}, 3 "
    "for j = i + 2, i + 2 * c, 2 do "
    "op[o + 1], op[o + 2], op[o + 3], op[o + 4] = "
    "'INCRBY', 'i32', ARGV[j], ARGV[j + 1] "
    "o = o + 4 end "
    "local v = redis.call('BITFIELD', unpack(op)) "
    "if v[1] == tonumber(ARGV[i + 3]) then "
    "redis.call('PEXPIRE', k, ARGV[3]) end "
    "i = i + 2 + 2 * c end "
    "else r = 0 end "
    "local ks = {} "
    "for j = 2, 1 + r do ks[#ks + 1] = KEYS[j] end "
    "for j = #KEYS - nn + 1, #KEYS do ks[#ks + 1] = KEYS[j] end "
    "local c, v = #ks, {} "
    "for a = 1, c, 4000 do "
    "local part = redis.call('MGET', unpack(ks, a, math.min(a + 3999, c))) "
    "for j = 1, #part do v[a + j - 1] = part[j] end end "
    "return {e, reg, v}";


static ngx_int_t ngx_http_llm_sync_take(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_array_t *deltas,
    ngx_http_llm_sync_route_t *route);
static ngx_int_t ngx_http_llm_sync_keys(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_array_t *deltas, ngx_uint_t *pos);
static ngx_int_t ngx_http_llm_sync_writes(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_array_t *deltas, ngx_uint_t *pos);
static ngx_int_t ngx_http_llm_sync_news_mget(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call);
static ngx_int_t ngx_http_llm_sync_news_keys(ngx_http_llm_sync_call_t *call);
static ngx_int_t ngx_http_llm_sync_arg(ngx_http_llm_sync_call_t *call,
    u_char *arg, size_t len);
static u_char *ngx_http_llm_sync_second(ngx_http_llm_batch_t *batch,
    ngx_uint_t age, size_t *len);


/* the script's SHA1, which EVALSHA names it by; the hash's name */

ngx_int_t
ngx_http_llm_sync_script_init(ngx_cycle_t *cycle)
{
    u_char                  hash[20];
    ngx_str_t              *prefix;
    ngx_sha1_t              sha1;
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, ngx_http_llm_sync_lua,
                    sizeof(ngx_http_llm_sync_lua) - 1);
    ngx_sha1_final(hash, &sha1);

    (void) ngx_hex_dump(sy->sha, hash, sizeof(hash));

    prefix = &sy->conf->prefix;

    sy->counts_key.len = sizeof("{:w}:ix") - 1 + prefix->len;
    sy->counts_key.data = ngx_pnalloc(cycle->pool, sy->counts_key.len);
    if (sy->counts_key.data == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_sprintf(sy->counts_key.data, "{%V:w}:ix", prefix);

    return NGX_OK;
}


/*
 * A tick's call: the deltas of every busy route with an index, the
 * seconds they read, the names of those without one
 */

ngx_int_t
ngx_http_llm_sync_script(ngx_http_llm_batch_t *batch)
{
    u_char                      *p;
    ngx_uint_t                   i, pos[NGX_HTTP_LLM_SLOTS];
    ngx_array_t                 *deltas;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_call_t    *call;
    ngx_http_llm_sync_route_t   *route, **rp;

    sy = &ngx_http_llm_syncer;

    call = ngx_pcalloc(batch->pool, sizeof(ngx_http_llm_sync_call_t));
    if (call == NULL) {
        return NGX_ERROR;
    }

    if (ngx_array_init(&call->argv, batch->pool, 64, sizeof(char *))
        != NGX_OK
        || ngx_array_init(&call->argvlen, batch->pool, 64, sizeof(size_t))
           != NGX_OK
        || ngx_array_init(&call->routes, batch->pool, 4,
                          sizeof(ngx_http_llm_sync_route_t *))
           != NGX_OK
        || ngx_array_init(&call->names, batch->pool, 4,
                          sizeof(ngx_http_llm_sync_route_t *))
           != NGX_OK
        || ngx_array_init(&call->deltas, batch->pool, 64,
                          sizeof(ngx_http_llm_sync_delta_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    deltas = &call->deltas;

    /*
     * The epoch this call makes if the hash is gone: a new one each
     * call, so that a hash lost and made again is never taken for the
     * one this node knew
     */

    for (i = 0; i < sizeof(sy->epoch_new); i++) {
        sy->epoch_new[i] = "0123456789abcdef"[ngx_random() & 0xf];
    }

    route = sy->routes.elts;

    for (i = 0; i < sy->routes.nelts; i++) {
        if (ngx_http_llm_sync_take(batch, call, deltas, &route[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (call->routes.nelts == 0 && call->names.nelts == 0
        && deltas->nelts == 0)
    {
        return ngx_http_llm_sync_news_mget(batch, call);
    }

    /* EVALSHA, its SHA1, the number of keys: filled in with the keys */

    for (i = 0; i < 3; i++) {
        if (ngx_http_llm_sync_arg(call, NULL, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_llm_sync_keys(batch, call, deltas, pos) != NGX_OK) {
        return NGX_ERROR;
    }

    /* ARGV: the epochs, the TTL, the reads, the news keys, the names */

    p = ngx_pnalloc(batch->pool, 4 * NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_sync_arg(call, sy->epoch, sy->epoch_len) != NGX_OK
        || ngx_http_llm_sync_arg(call, sy->epoch_new, sizeof(sy->epoch_new))
           != NGX_OK
        || ngx_http_llm_sync_arg(call, p,
                                 ngx_sprintf(p, "%ui",
                                             (NGX_HTTP_LLM_SLOTS + 2) * 1000)
                                 - p)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    p += NGX_INT_T_LEN;

    if (ngx_http_llm_sync_arg(call, p, ngx_sprintf(p, "%ui", call->read) - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p += NGX_INT_T_LEN;

    if (ngx_http_llm_sync_arg(call, p,
                              ngx_sprintf(p, "%ui", call->keys) - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    p += NGX_INT_T_LEN;

    if (ngx_http_llm_sync_arg(call, p,
                              ngx_sprintf(p, "%ui", call->names.nelts) - p)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rp = call->names.elts;

    for (i = 0; i < call->names.nelts; i++) {
        if (ngx_http_llm_sync_arg(call, rp[i]->name.data, rp[i]->name.len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (ngx_http_llm_sync_writes(batch, call, deltas, pos) != NGX_OK) {
        return NGX_ERROR;
    }

    call->script = 1;

    if (sy->conf->cluster && !batch->again
        && ngx_http_llm_sync_news_read(batch) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_SCRIPT, call,
                                     (int) call->argv.nelts, call->argv.elts,
                                     call->argvlen.elts);
}


/* no route to count or read: the news alone */

static ngx_int_t
ngx_http_llm_sync_news_mget(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call)
{
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    if (sy->conf->cluster) {
        return ngx_http_llm_sync_news_read(batch);
    }

    if (sy->targets.nelts + sy->canaries.nelts == 0) {
        return NGX_OK;
    }

    /* one MGET of the keys, its reply read as the script's news */

    if (ngx_http_llm_sync_arg(call, (u_char *) "MGET", 4) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_llm_sync_news_keys(call) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_SCRIPT, call,
                                     (int) call->argv.nelts, call->argv.elts,
                                     call->argvlen.elts);
}


/*
 * A route's deltas, and the seconds to read.  Taken under the mutex: no
 * slot turns over, no other syncer races (an old worker 0 quitting after
 * a reload); marked as sent before they are, at most once.  A route
 * without an index in the epoch yet asks for one, and keeps its deltas
 * for the tick after; its view comes with this one.
 */

static ngx_int_t
ngx_http_llm_sync_take(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_array_t *deltas,
    ngx_http_llm_sync_route_t *route)
{
    time_t                        sec;
    ngx_uint_t                    i, k, counted, known;
    ngx_slab_pool_t              *shpool;
    ngx_atomic_int_t              c, d;
    ngx_http_llm_slot_t          *slot;
    ngx_http_llm_syncer_t        *sy;
    ngx_http_llm_sync_delta_t    *delta;
    ngx_http_llm_sync_route_t   **rp;

    sy = &ngx_http_llm_syncer;

    if (route->ix == NGX_HTTP_LLM_SYNC_REFUSED) {
        return NGX_OK;
    }

    known = (route->ix >= 0 && sy->epoch_len > 0);

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

            if (!known) {
                continue;
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

            delta = ngx_array_push(deltas);
            if (delta == NULL) {
                ngx_shmtx_unlock(&shpool->mutex);
                return NGX_ERROR;
            }

            delta->route = route;
            delta->sec = sec;
            delta->k = k;
            delta->delta = d;

            slot->synced[k] = c;
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
        return NGX_OK;
    }

    if (route->ix == NGX_HTTP_LLM_SYNC_UNKNOWN) {
        rp = ngx_array_push(&call->names);
        if (rp == NULL) {
            return NGX_ERROR;
        }

        *rp = route;
    }

    /*
     * A route given its index by this call is read by it too: the reply
     * has the index before the seconds.  Without an epoch there are no
     * keys to name: the call goes again once it knows one.
     */

    if (sy->epoch_len == 0) {
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

    call->read = ngx_max(call->read, route->read);

    rp = ngx_array_push(&call->routes);
    if (rp == NULL) {
        return NGX_ERROR;
    }

    *rp = route;

    return NGX_OK;
}


/*
 * KEYS: the hash, the seconds read (oldest first), the seconds only
 * written, the news keys (without "cluster"); pos[age] is a written
 * second's position in KEYS, from 1
 */

static ngx_int_t
ngx_http_llm_sync_keys(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_array_t *deltas, ngx_uint_t *pos)
{
    u_char                     *p, *n;
    size_t                      len;
    ngx_uint_t                  i, age, keys;
    ngx_http_llm_syncer_t      *sy;
    ngx_http_llm_sync_delta_t  *delta;

    sy = &ngx_http_llm_syncer;

    ngx_memzero(pos, NGX_HTTP_LLM_SLOTS * sizeof(ngx_uint_t));

    if (ngx_http_llm_sync_arg(call, sy->counts_key.data, sy->counts_key.len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = call->read; i > 0; i--) {
        p = ngx_http_llm_sync_second(batch, i - 1, &len);

        if (p == NULL || ngx_http_llm_sync_arg(call, p, len) != NGX_OK) {
            return NGX_ERROR;
        }

        pos[i - 1] = call->argv.nelts - 3;
    }

    delta = deltas->elts;

    for (i = 0; i < deltas->nelts; i++) {
        age = (ngx_uint_t) (batch->now - delta[i].sec);

        if (pos[age]) {
            continue;
        }

        p = ngx_http_llm_sync_second(batch, age, &len);

        if (p == NULL || ngx_http_llm_sync_arg(call, p, len) != NGX_OK) {
            return NGX_ERROR;
        }

        pos[age] = call->argv.nelts - 3;
    }

    if (!sy->conf->cluster && ngx_http_llm_sync_news_keys(call) != NGX_OK) {
        return NGX_ERROR;
    }

    keys = call->argv.nelts - 3;

    n = ngx_pnalloc(batch->pool, NGX_INT_T_LEN);
    if (n == NULL) {
        return NGX_ERROR;
    }

    ((const char **) call->argv.elts)[0] = "EVALSHA";
    ((size_t *) call->argvlen.elts)[0] = sizeof("EVALSHA") - 1;
    ((const char **) call->argv.elts)[1] = (const char *) sy->sha;
    ((size_t *) call->argvlen.elts)[1] = sizeof(sy->sha);
    ((u_char **) call->argv.elts)[2] = n;
    ((size_t *) call->argvlen.elts)[2] = ngx_sprintf(n, "%ui", keys) - n;

    return NGX_OK;
}


/* "{prefix:w}:EPOCH:SEC" of the second age seconds before the batch's */

static u_char *
ngx_http_llm_sync_second(ngx_http_llm_batch_t *batch, ngx_uint_t age,
    size_t *len)
{
    u_char                 *p, *last;
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    /* "{prefix:w}:" is the hash's name less "ix" */

    p = ngx_pnalloc(batch->pool, sy->counts_key.len - 2 + sy->epoch_len
                                 + 1 + NGX_TIME_T_LEN);
    if (p == NULL) {
        return NULL;
    }

    last = ngx_sprintf(p, "%*s%*s:%T", sy->counts_key.len - 2,
                       sy->counts_key.data, sy->epoch_len, sy->epoch,
                       batch->now - (time_t) age);

    *len = last - p;

    return p;
}


/*
 * Per second written: its position in KEYS, n, and n pairs "#offset"
 * delta; a long list (over 128 busy routes) is cut into several of 256
 * counters at most, which the script adds one after the other: a
 * BITFIELD's arguments stay well under Lua's unpack() limit (8,000)
 */

static ngx_int_t
ngx_http_llm_sync_writes(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, ngx_array_t *deltas, ngx_uint_t *pos)
{
    u_char                     *p, *last, *count;
    ngx_uint_t                  i, age, n, head;
    ngx_http_llm_sync_delta_t  *delta;

    delta = deltas->elts;

    for (age = 0; age < NGX_HTTP_LLM_SLOTS; age++) {
        n = 0;
        head = 0;
        count = NULL;

        for (i = 0; i < deltas->nelts; i++) {
            if ((ngx_uint_t) (batch->now - delta[i].sec) != age) {
                continue;
            }

            if (n == 0) {
                p = ngx_pnalloc(batch->pool, 2 * NGX_INT_T_LEN);
                if (p == NULL) {
                    return NGX_ERROR;
                }

                last = ngx_sprintf(p, "%ui", pos[age]);
                count = last;

                head = call->argv.nelts + 1;

                if (ngx_http_llm_sync_arg(call, p, last - p) != NGX_OK
                    || ngx_http_llm_sync_arg(call, NULL, 0) != NGX_OK)
                {
                    return NGX_ERROR;
                }
            }

            p = ngx_pnalloc(batch->pool, 2 + NGX_INT_T_LEN
                                         + NGX_ATOMIC_T_LEN);
            if (p == NULL) {
                return NGX_ERROR;
            }

            /* route i's requests at #2i, its retries at #2i+1 */
            last = ngx_sprintf(p, "#%ui",
                               2 * (ngx_uint_t) delta[i].route->ix
                               + delta[i].k);

            if (ngx_http_llm_sync_arg(call, p, last - p) != NGX_OK
                || ngx_http_llm_sync_arg(call, last,
                                         ngx_sprintf(last, "%A",
                                                     delta[i].delta)
                                         - last)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (++n == NGX_HTTP_LLM_SYNC_GROUP_MAX) {
                ((u_char **) call->argv.elts)[head] = count;
                ((size_t *) call->argvlen.elts)[head] =
                                      ngx_sprintf(count, "%ui", n) - count;
                n = 0;
            }
        }

        if (n) {
            ((u_char **) call->argv.elts)[head] = count;
            ((size_t *) call->argvlen.elts)[head] =
                                      ngx_sprintf(count, "%ui", n) - count;
        }
    }

    return NGX_OK;
}


/* the cooldown and canary keys, read back after the seconds */

static ngx_int_t
ngx_http_llm_sync_news_keys(ngx_http_llm_sync_call_t *call)
{
    ngx_uint_t                   i;
    ngx_http_llm_syncer_t       *sy;
    ngx_http_llm_sync_target_t  *st;
    ngx_http_llm_sync_canary_t  *sc;

    sy = &ngx_http_llm_syncer;
    st = sy->targets.elts;

    for (i = 0; i < sy->targets.nelts; i++) {
        if (ngx_http_llm_sync_arg(call, st[i].key.data, st[i].key.len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    sc = sy->canaries.elts;

    for (i = 0; i < sy->canaries.nelts; i++) {
        if (ngx_http_llm_sync_arg(call, sc[i].key.data, sc[i].key.len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    call->news = 1;
    call->keys = sy->targets.nelts + sy->canaries.nelts;

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
