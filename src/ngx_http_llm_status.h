
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_STATUS_H_INCLUDED_
#define _NGX_HTTP_LLM_STATUS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/* a number in thousandths, "0.2": the widest integer part, ".", 3 digits */
#define NGX_HTTP_LLM_STATUS_DECIMAL_LEN  (NGX_ATOMIC_T_LEN + 4)


typedef struct {
    ngx_http_llm_target_t       *target;    /* the first one counted */
    ngx_msec_t                   remaining; /* of its cooldown, ms */
} ngx_http_llm_status_target_t;


/* a canary of a route, read once as the link below */

typedef struct {
    ngx_http_llm_target_t       *target;
    ngx_uint_t                   hold;
    ngx_uint_t                   remote;    /* the hold came from Redis */
    ngx_msec_t                   since;
    ngx_atomic_uint_t            attempts;
    ngx_atomic_uint_t            failures;
} ngx_http_llm_status_canary_t;


typedef struct {
    ngx_str_t                   *name;
    ngx_http_llm_loc_conf_t     *conf;      /* the first one counted */
    ngx_msec_int_t               left;      /* of the budget; -1: none */
    ngx_array_t                  targets;   /* of ngx_uint_t: indexes */
    ngx_array_t                  canaries;
                                        /* of ngx_http_llm_status_canary_t */
    ngx_http_llm_node_t         *metrics;   /* its histograms, or NULL */
    ngx_array_t                  pairs;     /* of ngx_http_llm_node_t *, as
                                               targets: their metrics */
} ngx_http_llm_status_route_t;


/* an llm_zone's pages, read once as the link below */

typedef struct {
    ngx_shm_zone_t              *zone;
    size_t                       used;      /* bytes of pages in use */
    size_t                       total;     /* bytes of all its pages */
    ngx_uint_t                   full;      /* a node found no room */
    ngx_uint_t                   metrics_full;  /* ... of metrics */
} ngx_http_llm_status_zone_t;


/*
 * The Redis link, read once: the page is built twice (measured, then
 * written) and a state that changed in between would not fit.
 */

typedef struct {
    ngx_uint_t                   up;
    ngx_uint_t                   cluster; /* budgets on the cluster's sums */
    ngx_msec_t                   view_at; /* of the cluster view, 0: none */
    ngx_atomic_uint_t            nodes;
    ngx_atomic_uint_t            syncs;
    ngx_atomic_uint_t            sync_errors;
    ngx_atomic_uint_t            link_downs;
} ngx_http_llm_status_link_t;


typedef struct {
    ngx_array_t                  routes;  /* of ngx_http_llm_status_route_t */
    ngx_array_t                  targets; /* of ngx_http_llm_status_target_t */
    ngx_array_t                  zones;   /* of ngx_http_llm_status_zone_t */
    ngx_http_llm_redis_conf_t   *redis;   /* NULL: no llm_redis */
    ngx_http_llm_status_link_t   link;
    ngx_msec_t                   now;     /* ms since the epoch */

    /* the body: measured into len while start is NULL, then written */
    u_char                      *start;
    u_char                      *pos;
    u_char                      *end;
    size_t                       len;
    unsigned                     overflow:1;
} ngx_http_llm_status_t;


#define ngx_http_llm_status_literal(st, s)                                   \
    ngx_http_llm_status_copy(st, (u_char *) s, sizeof(s) - 1)

/* a node counter; an uncounted route or target reads as zeros */
#define ngx_http_llm_status_counter(n, off)                                  \
    ((n) ? *(ngx_atomic_t *) ((u_char *) (n) + (off)) : 0)


u_char *ngx_http_llm_status_reserve(ngx_http_llm_status_t *st,
    size_t len);
void ngx_http_llm_status_copy(ngx_http_llm_status_t *st, u_char *s,
    size_t len);
void ngx_http_llm_status_number(ngx_http_llm_status_t *st,
    ngx_atomic_uint_t n);
void ngx_http_llm_status_decimal(ngx_http_llm_status_t *st,
    ngx_atomic_uint_t n);
void ngx_http_llm_status_bool(ngx_http_llm_status_t *st,
    ngx_uint_t v);
void ngx_http_llm_status_string(ngx_http_llm_status_t *st,
    ngx_str_t *s);
void ngx_http_llm_status_json(ngx_http_llm_status_t *st);
void ngx_http_llm_status_prometheus(ngx_http_llm_status_t *st);
void ngx_http_llm_status_label(ngx_http_llm_status_t *st, ngx_str_t *s);

void ngx_http_llm_metrics_json(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route);
void ngx_http_llm_metrics_prometheus(ngx_http_llm_status_t *st);


char *ngx_http_llm_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_status_handler(ngx_http_request_t *r);

#endif /* _NGX_HTTP_LLM_STATUS_H_INCLUDED_ */
