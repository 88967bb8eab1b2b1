
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ZONE_H_INCLUDED_
#define _NGX_HTTP_LLM_ZONE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_classify.h"
#include "ngx_http_llm_metrics.h"


/* per-second slots: windows of 1 to 60 seconds */
#define NGX_HTTP_LLM_SLOTS          61
#define NGX_HTTP_LLM_WINDOW_MAX     60

#define NGX_HTTP_LLM_NODE_ROUTE     1
#define NGX_HTTP_LLM_NODE_TARGET    2
#define NGX_HTTP_LLM_NODE_CANARY    3   /* a route's canary target */
#define NGX_HTTP_LLM_NODE_LATENCY   4   /* a route's histograms */
#define NGX_HTTP_LLM_NODE_PAIR      5   /* a route's target: tokens, ... */

/* a node the configuration dropped is freed once idle this long, s */
#define NGX_HTTP_LLM_NODE_IDLE      60

/* hex digits of a node's random id in {prefix:nodes} */
#define NGX_HTTP_LLM_NODE_ID_LEN    16

/* decisions counted per route, indexes of ngx_http_llm_decision_names */
#define NGX_HTTP_LLM_DECISIONS      8


/*
 * Slot counters.  A target counts its failures where a route counts its
 * requests, a canary its attempts and failures: one slot layout for all
 * keeps a node within a page of the zone.  Routes' counters are synced
 * to Redis, targets' and canaries' are not.
 */
#define NGX_HTTP_LLM_REQUESTS       0   /* route: client requests */
#define NGX_HTTP_LLM_RETRIES        1   /* route: later attempts */
#define NGX_HTTP_LLM_FAILURES       0   /* target: failed attempts */
#define NGX_HTTP_LLM_CANARY_ATTEMPTS    0   /* canary: counted attempts */
#define NGX_HTTP_LLM_CANARY_FAILURES    1   /* canary: ... that failed */
#define NGX_HTTP_LLM_COUNTERS       2
#define NGX_HTTP_LLM_SHARED         2


/*
 * A second of counters.  With llm_redis, synced is how much of count this
 * node has already sent to Redis, and cluster the sum of all nodes that
 * Redis answered last (it holds the synced part too): the second's total
 * is max(cluster, synced) + count - synced.
 */

typedef struct {
    ngx_atomic_t                 sec;       /* ngx_time() of the slot */
    ngx_atomic_t                 count[NGX_HTTP_LLM_COUNTERS];
    ngx_atomic_t                 synced[NGX_HTTP_LLM_SHARED];
    ngx_atomic_t                 cluster[NGX_HTTP_LLM_SHARED];
} ngx_http_llm_slot_t;


/*
 * A route, a target or a canary in the shared zone, found by kind and
 * name (routes by their llm_route name, targets by "URI model", canaries
 * by "route URI model"), so that a reload with the same zone finds its
 * counters again.  Counters are atomics; only a slot rotation, and a
 * canary's hold changing, take the zone's mutex.
 */

typedef struct {
    ngx_rbtree_node_t            node;      /* key: crc32 of kind + name */
    ngx_queue_t                  queue;     /* of the zone's nodes */

    ngx_uint_t                   kind;
    ngx_uint_t                   mark;      /* wanted at the last reload */
    ngx_atomic_t                 used;      /* last counted in, ngx_time() */

    /* totals since the zone was created */
    ngx_atomic_t                 requests;  /* route */
    ngx_atomic_t                 attempts;  /* route, target */
    ngx_atomic_t                 retries;   /* route */
    ngx_atomic_t                 skipped;   /* target: in cooldown */
    ngx_atomic_t                 decisions[NGX_HTTP_LLM_DECISIONS];
    ngx_atomic_t                 errors[NGX_HTTP_LLM_ERR_LAST];

    /* target: no attempt before this time, ms since the epoch */
    ngx_atomic_t                 cooldown_until;
    ngx_atomic_t                 cooldowns;     /* times it began */
    ngx_atomic_t                 cooldown_shared;   /* sent or got, ms */

    /*
     * route: outages logged once as they begin and end, with counts:
     * every target cooling down (requests answered 503 meanwhile), the
     * retry budget spent (retries refused meanwhile)
     */
    ngx_atomic_t                 all_cooling;
    ngx_atomic_t                 all_cooling_answers;
    ngx_atomic_t                 budget_out;
    ngx_atomic_t                 budget_refusals;

    /*
     * target: no cooldown is longer, ms: the smallest llm_cooldown max=
     * of the routes that use it, written when the zone is initialised
     */
    ngx_atomic_t                 cooldown_max;

    /*
     * canary: on hold while hold is 1 and hold_weight is the weight the
     * route gives the target (ngx_http_llm_canary.c); since is the wall
     * ms of the latest change of state; the figures are the window's
     * that put it on hold; shared is the since of the hold Redis has,
     * remote that the hold came from another node
     */
    ngx_atomic_t                 hold;
    ngx_atomic_t                 hold_weight;
    ngx_atomic_t                 hold_since;
    ngx_atomic_t                 hold_attempts;
    ngx_atomic_t                 hold_failures;
    ngx_atomic_t                 hold_shared;
    ngx_atomic_t                 hold_remote;

    /*
     * route, with llm_redis: requests and retries (the totals above)
     * when the syncer last wrote the cluster's view; between two views
     * the node spends only its share of the room the view left, the
     * share's fraction of a retry rounded up or down at random for
     * each view by the dither (ngx_http_llm_budget.c)
     */
    ngx_atomic_t                 view_requests;
    ngx_atomic_t                 view_retries;
    ngx_atomic_t                 view_dither;   /* 0-999, thousandths */
    ngx_atomic_t                 view_msec;     /* written, wall ms */
    ngx_atomic_t                 view_born;     /* first after a gap */

    /* the metrics kinds have no slots: ngx_http_llm_metrics.c */
    union {
        ngx_http_llm_slot_t      slots[NGX_HTTP_LLM_SLOTS];
        ngx_http_llm_metrics_t   metrics;
    };

    size_t                       len;
    u_char                       name[1];
} ngx_http_llm_node_t;


/* the Redis link as the syncing worker last saw it, for every worker */
#define NGX_HTTP_LLM_LINK_OFF       0   /* no llm_redis */
#define NGX_HTTP_LLM_LINK_DOWN      1
#define NGX_HTTP_LLM_LINK_UP        2


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;
    ngx_uint_t                   mark;      /* of the wanted nodes */

    /* a route or target of the configuration found no room */
    ngx_atomic_t                 full;
    /* ... a route's metrics, or those of one of its targets */
    ngx_atomic_t                 metrics_full;

    /* written by the syncing worker only */
    ngx_atomic_t                 cluster_msec;  /* view written, wall ms */
    ngx_atomic_t                 link;      /* NGX_HTTP_LLM_LINK_* */
    ngx_atomic_t                 syncs;     /* batches answered */
    ngx_atomic_t                 sync_errors;   /* batches lost */
    ngx_atomic_t                 link_downs;    /* times the link fell */
    ngx_atomic_t                 nodes;     /* last known, 0: unknown */
    ngx_atomic_t                 rank;      /* this node's, by id */

    /* the link fell, came back: wall ms, 0: not (ngx_http_llm_budget.c) */
    ngx_atomic_t                 down_msec;
    ngx_atomic_t                 back_msec;

    /*
     * this node's id in Redis, random hex made with the zone: a reload
     * keeps it, a restart makes another (pids and hostnames repeat)
     */
    u_char                       node_id[NGX_HTTP_LLM_NODE_ID_LEN];
} ngx_http_llm_shctx_t;


/* a node the configuration wants, found or made when the zone is ready */

typedef struct {
    ngx_uint_t                   kind;
    ngx_str_t                    name;
    ngx_http_llm_node_t        **node;
    ngx_msec_t                   cooldown_max;  /* target: of its route */
    ngx_uint_t                   weight;    /* canary: the route gives it */
} ngx_http_llm_node_ref_t;


typedef struct {
    ngx_str_t                    name;
    ngx_slab_pool_t             *shpool;
    ngx_http_llm_shctx_t        *sh;
    ngx_array_t                  refs;      /* of ngx_http_llm_node_ref_t */

    /* with llm_redis: a cluster view older than this is not used, ms */
    ngx_msec_t                   stale;
} ngx_http_llm_zone_t;


char *ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_zone_want(ngx_conf_t *cf, ngx_shm_zone_t *shm_zone,
    ngx_uint_t kind, ngx_str_t *name, ngx_http_llm_node_t **node,
    ngx_msec_t cooldown_max, ngx_uint_t weight);

void ngx_http_llm_slot_add(ngx_shm_zone_t *shm_zone, ngx_http_llm_node_t *n,
    ngx_uint_t counter, ngx_atomic_int_t v);
ngx_http_llm_slot_t *ngx_http_llm_slot_locked(ngx_http_llm_node_t *n,
    time_t sec);
ngx_atomic_uint_t ngx_http_llm_slot_sum(ngx_http_llm_node_t *n,
    ngx_uint_t counter, ngx_uint_t window, ngx_uint_t cluster);
ngx_atomic_uint_t ngx_http_llm_slot_sum_smooth(ngx_http_llm_node_t *n,
    ngx_uint_t counter, ngx_uint_t window, ngx_uint_t cluster);
ngx_uint_t ngx_http_llm_cluster_fresh(ngx_shm_zone_t *shm_zone);
ngx_uint_t ngx_http_llm_route_fresh(ngx_shm_zone_t *shm_zone,
    ngx_http_llm_node_t *n);
ngx_uint_t ngx_http_llm_cluster_back(ngx_shm_zone_t *shm_zone,
    ngx_uint_t window);
ngx_uint_t ngx_http_llm_cluster_nodes(ngx_shm_zone_t *shm_zone,
    ngx_uint_t *rank);

ngx_msec_t ngx_http_llm_wall_msec(void);


#define ngx_http_llm_count(n, field, v)                                       \
    do {                                                                      \
        if (n) {                                                              \
            (void) ngx_atomic_fetch_add(&(n)->field, v);                      \
            ngx_http_llm_used(n);                                             \
        }                                                                     \
    } while (0)


/* a canary's hold applies at the weight it was taken at only */
#define ngx_http_llm_canary_on_hold(n, w)                                     \
    ((n)->hold && (ngx_uint_t) (n)->hold_weight == (w))


/* a node in use is not freed by a reload that drops it: zone.c */
#define ngx_http_llm_used(n)                                                  \
    do {                                                                      \
        if ((n)->used != (ngx_atomic_uint_t) ngx_time()) {                    \
            (n)->used = ngx_time();                                           \
        }                                                                     \
    } while (0)


#endif /* _NGX_HTTP_LLM_ZONE_H_INCLUDED_ */
