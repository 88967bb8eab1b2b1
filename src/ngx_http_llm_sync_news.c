
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_sync.h"


/*
 * The news of llm_redis (design.md 4): cooldowns and canaries' holds
 * this node began go out in the batch, before the script call that
 * reads every node's back (ngx_http_llm_sync_script.c), or in cluster
 * mode two MGETs, one a slot; once a second the node says it is alive
 * and learns how many nodes are.
 */


/*
 * The Lua script that keeps the later end of a cooldown (Redis 2.6+),
 * unless the end held is past ARGV[3], the latest end the sender trusts
 * (now + the target's llm_cooldown max=): a far-future value, planted or
 * left by a node with a larger max, is replaced.
 */

static ngx_int_t ngx_http_llm_sync_mget(ngx_http_llm_batch_t *batch,
    ngx_uint_t what, ngx_str_t *keys, size_t size, ngx_uint_t n);


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



/*
 * Cooldowns that began here go out (the script, or in cluster mode an
 * MGET, reads every target's): one key each
 */

ngx_int_t
ngx_http_llm_sync_cooldowns(ngx_http_llm_batch_t *batch)
{
    u_char                      *until, *left, *limit;
    ngx_uint_t                   i;
    ngx_msec_t                   now, end, cap;
    const char                  *eval[7];
    size_t                       eval_len[7];
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

    return NGX_OK;
}


/*
 * Redis Cluster: the cooldown ends and the holds are read with an MGET
 * each, of one slot ({prefix:cd}, {prefix:canary}), not in a script call
 */

ngx_int_t
ngx_http_llm_sync_news_read(ngx_http_llm_batch_t *batch)
{
    ngx_http_llm_syncer_t  *sy;

    sy = &ngx_http_llm_syncer;

    if (ngx_http_llm_sync_mget(batch, NGX_HTTP_LLM_SYNC_COOLDOWNS,
                               &((ngx_http_llm_sync_target_t *)
                                 sy->targets.elts)->key,
                               sizeof(ngx_http_llm_sync_target_t),
                               sy->targets.nelts)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_sync_mget(batch, NGX_HTTP_LLM_SYNC_CANARIES,
                                  &((ngx_http_llm_sync_canary_t *)
                                    sy->canaries.elts)->key,
                                  sizeof(ngx_http_llm_sync_canary_t),
                                  sy->canaries.nelts);
}


/* an MGET of keys of one slot: n of them, size bytes apart */

static ngx_int_t
ngx_http_llm_sync_mget(ngx_http_llm_batch_t *batch, ngx_uint_t what,
    ngx_str_t *keys, size_t size, ngx_uint_t n)
{
    size_t       *argvlen;
    ngx_str_t    *key;
    ngx_uint_t    i;
    const char  **argv;

    if (n == 0) {
        return NGX_OK;
    }

    argv = ngx_palloc(batch->pool, (n + 1) * sizeof(char *));
    argvlen = ngx_palloc(batch->pool, (n + 1) * sizeof(size_t));

    if (argv == NULL || argvlen == NULL) {
        return NGX_ERROR;
    }

    argv[0] = "MGET";
    argvlen[0] = sizeof("MGET") - 1;

    for (i = 0; i < n; i++) {
        key = (ngx_str_t *) ((u_char *) keys + i * size);

        argv[i + 1] = (char *) key->data;
        argvlen[i + 1] = key->len;
    }

    return ngx_http_llm_sync_command(batch, what, NULL, (int) n + 1, argv,
                                     argvlen);
}


/*
 * Cooldowns any node began, in wall-clock ms: the later end wins, but
 * never one further away than the target's max= (a node never trusts a
 * far-future value, whoever wrote it): that one cools the target for
 * max from now, and this node's end goes back to Redis at the next tick
 * to replace it, so that later reads do not extend the cut.
 */

void
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
        ngx_http_llm_sync_error(batch, "unexpected reply");
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
 * Holds this node took go out (the script, or in cluster mode an MGET,
 * reads every canary's).  A hold is
 * written once (and again if Redis lost it), marked as sent before it
 * is: a lost batch leaves it out until Redis is read without it.
 */

ngx_int_t
ngx_http_llm_sync_canaries(ngx_http_llm_batch_t *batch)
{
    u_char                      *value;
    ngx_uint_t                   i;
    ngx_msec_t                   since;
    const char                  *set[5];
    size_t                       set_len[5];
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

    return NGX_OK;
}


/*
 * Holds as Redis has them.  One taken at the weight this node gives the
 * target is taken here too; one taken at another weight is another
 * shift's, and is left alone.  A hold of this node's that Redis lost
 * (a restart, an expiry, a DEL by hand) goes out again at the next tick.
 */

void
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
        ngx_http_llm_sync_error(batch, "unexpected reply");
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
 * Once a second: this node is alive, and how many nodes are.  A node
 * that counts alone while Redis is away takes its share of each budget's
 * floor by the last count (ngx_http_llm_budget.c).
 */

ngx_int_t
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

    /* both keys are in the slot of {prefix:nodes}, cluster or not */

    return ngx_http_llm_sync_command(batch, NGX_HTTP_LLM_SYNC_NODES, NULL,
                                     8, argv, argvlen);
}


/*
 * The number of live nodes and this node's rank among them, kept in
 * every zone for when Redis is away
 */

void
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
