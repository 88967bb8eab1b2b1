
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_SYNC_H_INCLUDED_
#define _NGX_HTTP_LLM_SYNC_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_module.h"


/*
 * The syncer of llm_redis (design.md 4), in the worker that holds the
 * link: ngx_http_llm_sync.c ticks and sends a batch, the script calls of
 * ngx_http_llm_sync_script.c carry the routes' counts and read the
 * news (one call, or with llm_redis cluster one per hash slot),
 * ngx_http_llm_sync_news.c writes and takes the cooldowns, the
 * canaries' holds and the nodes.
 */


#define NGX_HTTP_LLM_SYNC_WRITE       0
#define NGX_HTTP_LLM_SYNC_SCRIPT      1
#define NGX_HTTP_LLM_SYNC_NODES       2
#define NGX_HTTP_LLM_SYNC_COOLDOWNS   3   /* the MGETs of cluster mode */
#define NGX_HTTP_LLM_SYNC_CANARIES    4

/* a route's index in the fleet's counts (ngx_http_llm_sync_script.c) */
#define NGX_HTTP_LLM_SYNC_UNKNOWN     -1    /* not asked for yet */
#define NGX_HTTP_LLM_SYNC_REFUSED     -2    /* none left: counted here */
#define NGX_HTTP_LLM_SYNC_INDEX_MAX   4096  /* routes a fleet counts: the
                                               script's 4096 */

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
    ngx_str_t                    name;      /* the route's, its index's
                                               field in {prefix:w}:ix */
    ngx_int_t                    ix;        /* its index in the epoch, or
                                               NGX_HTTP_LLM_SYNC_UNKNOWN,
                                               _REFUSED */
    ngx_uint_t                   window;
    ngx_uint_t                   read;      /* seconds the script reads */
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


/* a count taken from a route's slot, to be added in Redis */

typedef struct {
    ngx_http_llm_sync_route_t   *route;
    time_t                       sec;
    ngx_uint_t                   k;         /* NGX_HTTP_LLM_REQUESTS, ... */
    ngx_atomic_int_t             delta;
} ngx_http_llm_sync_delta_t;


/*
 * A tick's script call (or the MGET that stands for it): its arguments,
 * which go again as EVAL on NOSCRIPT, the routes whose seconds its reply
 * holds, and those it asks an index for
 */

typedef struct {
    ngx_array_t                  routes;    /* of ngx_http_llm_sync_route_t *
                                               read */
    ngx_array_t                  names;     /* of ngx_http_llm_sync_route_t *
                                               given an index */
    ngx_array_t                  deltas;    /* of ngx_http_llm_sync_delta_t */
    ngx_array_t                  argv;
    ngx_array_t                  argvlen;
    ngx_uint_t                   read;      /* seconds read, up to now */
    ngx_uint_t                   keys;      /* news keys read back */
    ngx_uint_t                   news;      /* reads the cooldowns and
                                               holds after the seconds */
    ngx_uint_t                   script;    /* the script, not an MGET */
    ngx_uint_t                   evaled;    /* sent again as EVAL */
} ngx_http_llm_sync_call_t;


/* one pipeline in flight */

typedef struct {
    ngx_pool_t                  *pool;
    ngx_uint_t                   pending;   /* replies still to come */
    ngx_uint_t                   lost;      /* replies that never came */
    u_char                       error[96]; /* Redis' first error reply */
    size_t                       error_len;
    time_t                       now;       /* last second of the windows */
    ngx_uint_t                   again;     /* the script call went again
                                               in a new epoch */
} ngx_http_llm_batch_t;


typedef struct {
    ngx_http_llm_batch_t        *batch;
    ngx_http_llm_sync_call_t    *call;      /* of a script call */
    ngx_uint_t                   what;      /* NGX_HTTP_LLM_SYNC_* */
} ngx_http_llm_sync_reply_t;


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
    ngx_str_t                    counts_key; /* "{prefix:w}:ix" */
    size_t                       epoch_len;
    u_char                       epoch[32]; /* of the counts' keys */
    u_char                       epoch_new[16]; /* when there is none */
    u_char                       sha[40];   /* the script's SHA1, hex */
} ngx_http_llm_syncer_t;


extern ngx_http_llm_syncer_t  ngx_http_llm_syncer;


/* ngx_http_llm_sync.c */
ngx_int_t ngx_http_llm_sync_command(ngx_http_llm_batch_t *batch,
    ngx_uint_t what, ngx_http_llm_sync_call_t *call, int argc,
    const char **argv, const size_t *argvlen);
void ngx_http_llm_sync_error(ngx_http_llm_batch_t *batch, const char *err);
ngx_atomic_int_t ngx_http_llm_sync_number(redisReply *reply);

/* ngx_http_llm_sync_script.c */
ngx_int_t ngx_http_llm_sync_script_init(ngx_cycle_t *cycle);
ngx_int_t ngx_http_llm_sync_script(ngx_http_llm_batch_t *batch);
ngx_uint_t ngx_http_llm_sync_script_again(ngx_http_llm_sync_call_t *call,
    redisReply *reply);

/* ngx_http_llm_sync_view.c */
void ngx_http_llm_sync_view(ngx_http_llm_batch_t *batch,
    ngx_http_llm_sync_call_t *call, redisReply *reply);

/* ngx_http_llm_sync_news.c */
ngx_int_t ngx_http_llm_sync_cooldowns(ngx_http_llm_batch_t *batch);
ngx_int_t ngx_http_llm_sync_news_read(ngx_http_llm_batch_t *batch);
void ngx_http_llm_sync_cooldowns_got(ngx_http_llm_batch_t *batch,
    redisReply *reply);
ngx_int_t ngx_http_llm_sync_canaries(ngx_http_llm_batch_t *batch);
void ngx_http_llm_sync_canaries_got(ngx_http_llm_batch_t *batch,
    redisReply *reply);
ngx_int_t ngx_http_llm_sync_alive(ngx_http_llm_batch_t *batch);
void ngx_http_llm_sync_nodes(ngx_http_llm_batch_t *batch, redisReply *reply);


#endif /* _NGX_HTTP_LLM_SYNC_H_INCLUDED_ */
