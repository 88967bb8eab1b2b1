
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ZONE_H_INCLUDED_
#define _NGX_HTTP_LLM_ZONE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_classify.h"


/* per-second slots: windows of 1 to 60 seconds */
#define NGX_HTTP_LLM_SLOTS          61
#define NGX_HTTP_LLM_WINDOW_MAX     60

#define NGX_HTTP_LLM_NODE_ROUTE     1
#define NGX_HTTP_LLM_NODE_TARGET    2

/* decisions counted per route, indexes of ngx_http_llm_decision_names */
#define NGX_HTTP_LLM_DECISIONS      8


typedef struct {
    ngx_atomic_t                 sec;       /* ngx_time() of the slot */
    ngx_atomic_t                 requests;  /* route: client requests */
    ngx_atomic_t                 retries;   /* route: later attempts */
    ngx_atomic_t                 failures;  /* target: failed attempts */
} ngx_http_llm_slot_t;


/*
 * A route or a target in the shared zone, found by kind and name (routes
 * by their llm_route name, targets by "URI model"), so that a reload with
 * the same zone finds its counters again.  Counters are atomics; only a
 * slot rotation takes the zone's mutex.
 */

typedef struct {
    ngx_rbtree_node_t            node;      /* key: crc32 of kind + name */
    ngx_queue_t                  queue;     /* of the zone's nodes */

    ngx_uint_t                   kind;

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

    ngx_http_llm_slot_t          slots[NGX_HTTP_LLM_SLOTS];

    size_t                       len;
    u_char                       name[1];
} ngx_http_llm_node_t;


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;
    ngx_atomic_t                 full;      /* "zone is full" logged */
} ngx_http_llm_shctx_t;


/* a node the configuration wants, found or made when the zone is ready */

typedef struct {
    ngx_uint_t                   kind;
    ngx_str_t                    name;
    ngx_http_llm_node_t        **node;
} ngx_http_llm_node_ref_t;


typedef struct {
    ngx_str_t                    name;
    ngx_slab_pool_t             *shpool;
    ngx_http_llm_shctx_t        *sh;
    ngx_array_t                  refs;      /* of ngx_http_llm_node_ref_t */
} ngx_http_llm_zone_t;


char *ngx_http_llm_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_zone_want(ngx_conf_t *cf, ngx_shm_zone_t *shm_zone,
    ngx_uint_t kind, ngx_str_t *name, ngx_http_llm_node_t **node);

void ngx_http_llm_slot_add(ngx_shm_zone_t *shm_zone, ngx_http_llm_node_t *n,
    size_t field, ngx_atomic_int_t v);
ngx_atomic_uint_t ngx_http_llm_slot_sum(ngx_http_llm_node_t *n, size_t field,
    ngx_uint_t window);

ngx_msec_t ngx_http_llm_wall_msec(void);


#define ngx_http_llm_count(n, field, v)                                       \
    do {                                                                      \
        if (n) {                                                              \
            (void) ngx_atomic_fetch_add(&(n)->field, v);                      \
        }                                                                     \
    } while (0)


#endif /* _NGX_HTTP_LLM_ZONE_H_INCLUDED_ */
