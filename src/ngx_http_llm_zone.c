
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"

#if (NGX_LINUX)
#include <sys/random.h>
#endif


/*
 * The shared zone of llm_zone: a node per route and per target, found by
 * name in an rbtree (as limit_req finds its keys), with totals and
 * per-second slots; and the nodes of ngx_http_llm_metrics.c.  Nodes
 * are made when the zone is initialised, for every route and target of
 * the configuration, never on the request path; a reload with the same
 * zone name and size finds the old nodes, so counters and cooldowns
 * survive it.  The request path only adds to atomics, and takes the
 * zone's mutex for nothing but a slot rotation (ngx_http_llm_slot.c).
 */


static ngx_int_t ngx_http_llm_zone_init(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_llm_zone_nodes(ngx_shm_zone_t *shm_zone);
static void ngx_http_llm_zone_id(u_char *id);
static void ngx_http_llm_zone_reclaim(ngx_shm_zone_t *shm_zone);
static void ngx_http_llm_zone_cap(ngx_shm_zone_t *shm_zone,
    ngx_http_llm_node_t *n, ngx_msec_t now);
static void ngx_http_llm_zone_canary(ngx_shm_zone_t *shm_zone,
    ngx_http_llm_node_t *n, ngx_uint_t weight, ngx_msec_t now);
static ngx_http_llm_node_t *ngx_http_llm_zone_node(
    ngx_http_llm_zone_t *zone, ngx_uint_t kind, ngx_str_t *name,
    ngx_uint_t create);
static void ngx_http_llm_zone_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static uint32_t ngx_http_llm_zone_hash(ngx_uint_t kind, ngx_str_t *name);


static char  *ngx_http_llm_zone_kinds[] = {
    "", "route", "target", "canary", "route", "route and target"
};


/* llm_zone NAME:SIZE */

char *
ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    u_char               *p;
    ssize_t               size;
    ngx_str_t            *value, name, s;
    ngx_shm_zone_t       *shm_zone, **pz;
    ngx_http_llm_zone_t  *zone;

    value = cf->args->elts;

    p = (u_char *) ngx_strchr(value[1].data, ':');

    if (p == NULL || p == value[1].data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data;
    name.len = p - value[1].data;

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small, it must be at "
                           "least %uzk", &value[1], 8 * ngx_pagesize / 1024);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_llm_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate llm zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    zone = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_zone_t));
    if (zone == NULL) {
        return NGX_CONF_ERROR;
    }

    zone->name = name;

    if (ngx_array_init(&zone->refs, cf->pool, 8,
                       sizeof(ngx_http_llm_node_ref_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_llm_zone_init;
    shm_zone->data = zone;

    pz = ngx_array_push(&lmcf->zones);
    if (pz == NULL) {
        return NGX_CONF_ERROR;
    }

    *pz = shm_zone;

    return NGX_CONF_OK;
}


/* asks for a node of the zone, found or made when the zone is ready */

ngx_int_t
ngx_http_llm_zone_want(ngx_conf_t *cf, ngx_shm_zone_t *shm_zone,
    ngx_uint_t kind, ngx_str_t *name, ngx_http_llm_node_t **node,
    ngx_msec_t cooldown_max, ngx_uint_t weight)
{
    ngx_http_llm_zone_t      *zone;
    ngx_http_llm_node_ref_t  *ref;

    zone = shm_zone->data;

    ref = ngx_array_push(&zone->refs);
    if (ref == NULL) {
        return NGX_ERROR;
    }

    ref->kind = kind;
    ref->name = *name;
    ref->node = node;
    ref->cooldown_max = cooldown_max;
    ref->weight = weight;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_zone_init(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_llm_zone_t  *ozone = data;

    size_t                len;
    ngx_http_llm_zone_t  *zone;

    zone = shm_zone->data;

    if (ozone) {
        /* a reload with the same zone: its nodes are still there */
        zone->sh = ozone->sh;
        zone->shpool = ozone->shpool;

        return ngx_http_llm_zone_nodes(shm_zone);
    }

    zone->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        zone->sh = zone->shpool->data;
        return ngx_http_llm_zone_nodes(shm_zone);
    }

    zone->sh = ngx_slab_alloc(zone->shpool, sizeof(ngx_http_llm_shctx_t));
    if (zone->sh == NULL) {
        return NGX_ERROR;
    }

    zone->shpool->data = zone->sh;

    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel,
                    ngx_http_llm_zone_insert);
    ngx_queue_init(&zone->sh->queue);

    ngx_http_llm_zone_id(zone->sh->node_id);

    len = sizeof(" in llm zone \"\"") + shm_zone->shm.name.len;

    zone->shpool->log_ctx = ngx_slab_alloc(zone->shpool, len);
    if (zone->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(zone->shpool->log_ctx, " in llm zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone is reported once, below, not by the slab allocator */
    zone->shpool->log_nomem = 0;

    return ngx_http_llm_zone_nodes(shm_zone);
}


/*
 * A node's id among the nodes of llm_redis, made once with the zone:
 * random, because what else tells nodes apart repeats (containers with
 * one hostname, nginx as PID 1 in each).
 */

static void
ngx_http_llm_zone_id(u_char *id)
{
    u_char           raw[NGX_HTTP_LLM_NODE_ID_LEN / 2];
    ngx_uint_t       i;
    struct timeval   tv;

#if (NGX_LINUX)
    if (getrandom(raw, sizeof(raw), 0) == (ssize_t) sizeof(raw)) {
        (void) ngx_hex_dump(id, raw, sizeof(raw));
        return;
    }
#endif

    ngx_gettimeofday(&tv);

    for (i = 0; i < sizeof(raw); i++) {
        raw[i] = (u_char) (ngx_random() ^ (tv.tv_usec >> (i % 3) * 8)
                           ^ ngx_pid);
    }

    (void) ngx_hex_dump(id, raw, sizeof(raw));
}


/*
 * Finds or makes the node of every route and target the configuration
 * asked for, after freeing the nodes it no longer wants.  A full zone
 * leaves a node out: that route or target is then not counted (and its
 * budget allows everything), which is an error the status page shows
 * ("full") until a reload finds room; a metrics node left out is shown
 * as "metrics_full".
 */

static ngx_int_t
ngx_http_llm_zone_nodes(ngx_shm_zone_t *shm_zone)
{
    ngx_uint_t                i, j, full, metrics_full;
    ngx_msec_t                now, cap;
    ngx_http_llm_node_t      *n;
    ngx_http_llm_zone_t      *zone;
    ngx_http_llm_node_ref_t  *ref;

    zone = shm_zone->data;
    ref = zone->refs.elts;

    ngx_shmtx_lock(&zone->shpool->mutex);

    ngx_http_llm_zone_reclaim(shm_zone);

    full = 0;
    metrics_full = 0;

    for (i = 0; i < zone->refs.nelts; i++) {
        *ref[i].node = ngx_http_llm_zone_node(zone, ref[i].kind,
                                              &ref[i].name, 1);

        if (*ref[i].node != NULL) {
            continue;
        }

        /* metrics are wanted last: counters get the room first */

        if (ref[i].kind >= NGX_HTTP_LLM_NODE_LATENCY) {
            metrics_full = 1;

        } else {
            full = 1;
        }

        /* a route of several servers, a target of several routes: once */

        for (j = 0; j < i; j++) {
            if (ref[j].kind == ref[i].kind
                && ref[j].name.len == ref[i].name.len
                && ngx_strncmp(ref[j].name.data, ref[i].name.data,
                               ref[i].name.len) == 0)
            {
                break;
            }
        }

        if (j == i && ref[i].kind >= NGX_HTTP_LLM_NODE_LATENCY) {
            ngx_log_error(NGX_LOG_ERR, shm_zone->shm.log, 0,
                          "llm zone \"%V\" is full: %s \"%V\" has no "
                          "metrics", &shm_zone->shm.name,
                          ngx_http_llm_zone_kinds[ref[i].kind], &ref[i].name);

        } else if (j == i) {
            ngx_log_error(NGX_LOG_ERR, shm_zone->shm.log, 0,
                          "llm zone \"%V\" is full: %s \"%V\" is not "
                          "counted, %s",
                          &shm_zone->shm.name,
                          ngx_http_llm_zone_kinds[ref[i].kind], &ref[i].name,
                          ref[i].kind == NGX_HTTP_LLM_NODE_CANARY
                          ? "it is never put on hold"
                          : "its retries are not limited");
        }
    }

    zone->sh->full = full;
    zone->sh->metrics_full = metrics_full;

    /*
     * A target's cap is the smallest max= of the routes that use it, and
     * a reload that lowers it cuts the cooldowns already running.
     */

    now = ngx_http_llm_wall_msec();

    for (i = 0; i < zone->refs.nelts; i++) {
        n = *ref[i].node;

        if (n && ref[i].kind == NGX_HTTP_LLM_NODE_CANARY) {
            ngx_http_llm_zone_canary(shm_zone, n, ref[i].weight, now);
            continue;
        }

        if (n == NULL || ref[i].kind != NGX_HTTP_LLM_NODE_TARGET) {
            continue;
        }

        cap = ref[i].cooldown_max;

        for (j = 0; j < zone->refs.nelts; j++) {
            if (*ref[j].node == n && ref[j].cooldown_max < cap) {
                cap = ref[j].cooldown_max;
            }
        }

        n->cooldown_max = cap;

        ngx_http_llm_zone_cap(shm_zone, n, now);
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);

    return NGX_OK;
}


/*
 * Frees the nodes of routes and targets the new configuration does not
 * name, with the zone's mutex held, so that a reload that replaces
 * routes finds room for the new ones.
 *
 * Workers of the previous configuration are still running while this
 * runs in the master, and they keep serving the requests they have:
 * they may still add to the counters of a node the new configuration
 * dropped.  So a node is freed only when no request counted in it for
 * NGX_HTTP_LLM_NODE_IDLE seconds (or ever); a busier one stays until a
 * later reload.  What remains, a request of an old worker idle for that
 * long (a stream) that counts again afterwards, or the old worker 0's
 * last sync writing a cooldown or the cluster's sums, cannot corrupt
 * the zone: after its first two small allocations the zone holds
 * nothing but nodes, each of whole pages (larger than half a page), the
 * slab allocator keeps no bookkeeping inside free pages, and no worker
 * writes a node's tree links or name.  Such a late write lands in the
 * counters of the node that took the page, at the same offsets: a count
 * or a cooldown (within max=) on the wrong node, once.  The metrics
 * kinds keep their counters where the others have slots: a late count
 * there may move a slot's second, leaving that second's counts out of
 * the windows until the slot is reset at its next use, a minute later.
 */

static void
ngx_http_llm_zone_reclaim(ngx_shm_zone_t *shm_zone)
{
    time_t                    now;
    ngx_uint_t                i;
    ngx_queue_t              *q, *next;
    ngx_http_llm_node_t      *n;
    ngx_http_llm_zone_t      *zone;
    ngx_http_llm_node_ref_t  *ref;

    zone = shm_zone->data;
    ref = zone->refs.elts;

    /* a mark for the nodes the configuration wants, never 0 */

    zone->sh->mark = zone->sh->mark + 1 ? zone->sh->mark + 1 : 1;

    for (i = 0; i < zone->refs.nelts; i++) {
        n = ngx_http_llm_zone_node(zone, ref[i].kind, &ref[i].name, 0);

        if (n) {
            n->mark = zone->sh->mark;
        }
    }

    now = ngx_time();

    for (q = ngx_queue_head(&zone->sh->queue);
         q != ngx_queue_sentinel(&zone->sh->queue);
         q = next)
    {
        next = ngx_queue_next(q);
        n = ngx_queue_data(q, ngx_http_llm_node_t, queue);

        if (n->mark == zone->sh->mark
            || (n->used && (time_t) n->used + NGX_HTTP_LLM_NODE_IDLE > now))
        {
            continue;
        }

        ngx_log_error(NGX_LOG_INFO, shm_zone->shm.log, 0,
                      "llm zone \"%V\": %s \"%*s\" is no longer "
                      "configured, its counters are freed",
                      &shm_zone->shm.name, ngx_http_llm_zone_kinds[n->kind],
                      n->len, n->name);

        ngx_queue_remove(q);
        ngx_rbtree_delete(&zone->sh->rbtree, &n->node);
        ngx_slab_free_locked(zone->shpool, n);
    }
}


/* cuts a cooldown longer than the target's cap, with the mutex held */

static void
ngx_http_llm_zone_cap(ngx_shm_zone_t *shm_zone, ngx_http_llm_node_t *n,
    ngx_msec_t now)
{
    ngx_msec_t  old, end;

    end = now + n->cooldown_max;

    for ( ;; ) {
        old = n->cooldown_until;

        if (old <= end) {
            return;
        }

        if (ngx_atomic_cmp_set(&n->cooldown_until, old, end)) {
            break;
        }
    }

    /* with llm_redis, the cut end goes out and replaces the longer one */
    n->cooldown_shared = 0;

    ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                  "llm target \"%*s\": cooldown cut to %M ms, the "
                  "llm_cooldown max= of its routes",
                  n->len, n->name, n->cooldown_max);
}


/*
 * A canary of the new configuration, with the mutex held.  A hold
 * outlives a reload that leaves the target's weight as it was; a new
 * weight is the operator's release (docs/directives.md, "Canary guard"):
 * the hold and the window that led to it are dropped, so the target
 * starts afresh.  A node new to the zone is "ok" from now.
 */

static void
ngx_http_llm_zone_canary(ngx_shm_zone_t *shm_zone, ngx_http_llm_node_t *n,
    ngx_uint_t weight, ngx_msec_t now)
{
    ngx_str_t   route, target;
    ngx_uint_t  i;

    if (n->hold_since == 0) {
        n->hold_since = now;
    }

    if (!n->hold || n->hold_weight == weight) {
        return;
    }

    n->hold = 0;
    n->hold_since = now;
    n->hold_shared = 0;
    n->hold_remote = 0;

    for (i = 0; i < NGX_HTTP_LLM_SLOTS; i++) {
        ngx_memzero(&n->slots[i], sizeof(ngx_http_llm_slot_t));
    }

    ngx_http_llm_canary_name(n, &route, &target);

    ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                  "llm route \"%V\": canary \"%V\" released from hold, "
                  "its weight changed from %uA to %ui", &route, &target,
                  n->hold_weight, weight);
}


/* with the zone's mutex held */

static ngx_http_llm_node_t *
ngx_http_llm_zone_node(ngx_http_llm_zone_t *zone, ngx_uint_t kind,
    ngx_str_t *name, ngx_uint_t create)
{
    uint32_t              hash;
    ngx_rbtree_node_t    *node, *sentinel;
    ngx_http_llm_node_t  *n;

    hash = ngx_http_llm_zone_hash(kind, name);

    node = zone->sh->rbtree.root;
    sentinel = zone->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        n = (ngx_http_llm_node_t *) node;

        if (n->kind == kind && n->len == name->len
            && ngx_memcmp(n->name, name->data, name->len) == 0)
        {
            return n;
        }

        node = (n->kind < kind
                || (n->kind == kind
                    && ngx_memn2cmp(n->name, name->data, n->len, name->len)
                       < 0))
               ? node->right : node->left;
    }

    if (!create) {
        return NULL;
    }

    n = ngx_slab_alloc_locked(zone->shpool,
                              offsetof(ngx_http_llm_node_t, name) + name->len);
    if (n == NULL) {
        return NULL;
    }

    ngx_memzero(n, offsetof(ngx_http_llm_node_t, name));

    n->node.key = hash;
    n->kind = kind;
    n->len = name->len;
    ngx_memcpy(n->name, name->data, name->len);

    ngx_rbtree_insert(&zone->sh->rbtree, &n->node);
    ngx_queue_insert_tail(&zone->sh->queue, &n->queue);

    return n;
}


static void
ngx_http_llm_zone_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t    **p;
    ngx_http_llm_node_t   *n, *t;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            n = (ngx_http_llm_node_t *) node;
            t = (ngx_http_llm_node_t *) temp;

            p = (t->kind < n->kind
                 || (t->kind == n->kind
                     && ngx_memn2cmp(t->name, n->name, t->len, n->len) < 0))
                ? &temp->right : &temp->left;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static uint32_t
ngx_http_llm_zone_hash(ngx_uint_t kind, ngx_str_t *name)
{
    u_char    k;
    uint32_t  crc;

    k = (u_char) kind;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, &k, 1);
    ngx_crc32_update(&crc, name->data, name->len);
    ngx_crc32_final(crc);

    return crc;
}
