
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_status.h"


/*
 * llm_status: the counters of the llm zones as JSON, or as Prometheus
 * text with ?format=prometheus (docs/status.md).  Counters are read
 * without a lock: each is one atomic word, and a page a few requests
 * behind on one counter is as good as any.  The body is built twice,
 * once to measure it, with every number counted at its widest so that
 * counters moving meanwhile still fit, and once to write it.  This
 * file serves the page from what it reads of the zones;
 * ngx_http_llm_status_json.c writes the JSON, ngx_http_llm_prometheus.c
 * the Prometheus text.
 */


#define NGX_HTTP_LLM_STATUS_JSON        0
#define NGX_HTTP_LLM_STATUS_PROMETHEUS  1


typedef void (*ngx_http_llm_status_pt)(ngx_http_llm_status_t *st);


static ngx_int_t ngx_http_llm_status_not_allowed(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_status_collect(ngx_http_request_t *r,
    ngx_http_llm_status_t *st);
static ngx_int_t ngx_http_llm_status_add_targets(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route, ngx_array_t *targets);
static ngx_int_t ngx_http_llm_status_canaries(ngx_http_request_t *r,
    ngx_http_llm_status_route_t *route);


static ngx_str_t  ngx_http_llm_status_types[] = {
    ngx_string("application/json"),
    ngx_string("text/plain; version=0.0.4; charset=utf-8")
};


ngx_int_t
ngx_http_llm_status_handler(ngx_http_request_t *r)
{
    ngx_int_t                rc;
    ngx_str_t                value;
    ngx_buf_t               *b;
    ngx_uint_t               format;
    ngx_chain_t              out;
    ngx_http_llm_status_t    st;
    ngx_http_llm_status_pt   build;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_llm_status_not_allowed(r);
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    format = NGX_HTTP_LLM_STATUS_JSON;

    if (ngx_http_arg(r, (u_char *) "format", 6, &value) == NGX_OK) {

        if (value.len == 10
            && ngx_strncmp(value.data, "prometheus", 10) == 0)
        {
            format = NGX_HTTP_LLM_STATUS_PROMETHEUS;

        } else if (value.len != 4
                   || ngx_strncmp(value.data, "json", 4) != 0)
        {
            return NGX_HTTP_BAD_REQUEST;
        }
    }

    ngx_memzero(&st, sizeof(ngx_http_llm_status_t));

    if (ngx_http_llm_status_collect(r, &st) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    build = (format == NGX_HTTP_LLM_STATUS_PROMETHEUS)
            ? ngx_http_llm_status_prometheus : ngx_http_llm_status_json;

    build(&st);

    b = ngx_create_temp_buf(r->pool, st.len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st.start = b->start;
    st.pos = b->pos;
    st.end = b->end;

    build(&st);

    if (st.overflow) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "llm status longer than the %uz bytes measured",
                      st.len);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = st.pos;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = ngx_http_llm_status_types[format];
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_llm_status_not_allowed(ngx_http_request_t *r)
{
    if (ngx_http_llm_add_header(r, "Allow", (u_char *) "GET, HEAD",
                                sizeof("GET, HEAD") - 1)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_HTTP_NOT_ALLOWED;
}


/*
 * Routes and targets, each once: a route name may be used in several
 * servers (all of them count in one node), and a target ("URI model")
 * in several routes.  Where only some of them are counted, the page
 * shows a counted one.
 */

static ngx_int_t
ngx_http_llm_status_collect(ngx_http_request_t *r, ngx_http_llm_status_t *st)
{
    ngx_uint_t                     i, k;
    ngx_atomic_uint_t              until;
    ngx_slab_pool_t               *shpool;
    ngx_http_llm_node_t           *n;
    ngx_shm_zone_t                *zone, **zones;
    ngx_http_llm_shctx_t          *sh;
    ngx_http_llm_main_conf_t      *lmcf;
    ngx_http_llm_route_name_t     *rn;
    ngx_http_llm_status_zone_t    *z;
    ngx_http_llm_status_route_t   *route;
    ngx_http_llm_status_target_t  *t;

    lmcf = ngx_http_get_module_main_conf(r, ngx_http_llm_module);

    st->now = ngx_http_llm_wall_msec();

    if (ngx_array_init(&st->zones, r->pool, lmcf->zones.nelts + 1,
                       sizeof(ngx_http_llm_status_zone_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    zones = lmcf->zones.elts;

    for (i = 0; i < lmcf->zones.nelts; i++) {
        z = ngx_array_push(&st->zones);
        if (z == NULL) {
            return NGX_ERROR;
        }

        /* pages, as the slab allocator counts them: nodes take whole ones */

        shpool = (ngx_slab_pool_t *) zones[i]->shm.addr;

        z->zone = zones[i];
        z->total = (size_t) (shpool->last - shpool->pages)
                   << ngx_pagesize_shift;
        z->used = z->total - (shpool->pfree << ngx_pagesize_shift);
        z->full = ((ngx_http_llm_zone_t *) zones[i]->data)->sh->full;
        z->metrics_full =
                 ((ngx_http_llm_zone_t *) zones[i]->data)->sh->metrics_full;
    }

    /* every zone holds the same link state: the first one tells */
    if (lmcf->redis && lmcf->zones.nelts) {
        st->redis = lmcf->redis;

        zone = ((ngx_shm_zone_t **) lmcf->zones.elts)[0];
        sh = ((ngx_http_llm_zone_t *) zone->data)->sh;

        st->link.up = (sh->link == NGX_HTTP_LLM_LINK_UP);
        st->link.cluster = ngx_http_llm_cluster_fresh(zone);
        st->link.view_at = sh->cluster_msec;
        st->link.nodes = sh->nodes;
        st->link.syncs = sh->syncs;
        st->link.sync_errors = sh->sync_errors;
        st->link.link_downs = sh->link_downs;
    }

    if (ngx_array_init(&st->routes, r->pool, lmcf->routes.nelts + 1,
                       sizeof(ngx_http_llm_status_route_t))
        != NGX_OK
        || ngx_array_init(&st->targets, r->pool, 2 * lmcf->routes.nelts + 1,
                          sizeof(ngx_http_llm_status_target_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    rn = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {

        route = st->routes.elts;

        for (k = 0; k < st->routes.nelts; k++) {
            if (route[k].name->len == rn[i].name.len
                && ngx_strncmp(route[k].name->data, rn[i].name.data,
                               rn[i].name.len) == 0)
            {
                break;
            }
        }

        if (k < st->routes.nelts) {
            route = &route[k];

            if (route->conf->node == NULL) {
                route->conf = rn[i].conf;
            }

            if (route->metrics == NULL) {
                route->metrics = rn[i].conf->metrics;
            }

        } else {
            route = ngx_array_push(&st->routes);
            if (route == NULL) {
                return NGX_ERROR;
            }

            route->name = &rn[i].name;
            route->conf = rn[i].conf;
            route->metrics = rn[i].conf->metrics;

            if (ngx_array_init(&route->targets, r->pool, 2,
                               sizeof(ngx_uint_t))
                != NGX_OK
                || ngx_array_init(&route->pairs, r->pool, 2,
                                  sizeof(ngx_http_llm_node_t *))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        if (ngx_http_llm_status_add_targets(st, route, rn[i].conf->targets)
            != NGX_OK
            || ngx_http_llm_status_add_targets(st, route,
                                               rn[i].conf->fallbacks)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    /* read once, so that both passes over the body see the same */

    route = st->routes.elts;

    for (i = 0; i < st->routes.nelts; i++) {
        route[i].left = route[i].conf->budget
                        ? ngx_http_llm_budget_left(route[i].conf) : -1;

        if (ngx_http_llm_status_canaries(r, &route[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    t = st->targets.elts;

    for (i = 0; i < st->targets.nelts; i++) {
        n = t[i].target->node;
        until = n ? n->cooldown_until : 0;
        t[i].remaining = (until > st->now) ? (ngx_msec_t) (until - st->now)
                                           : 0;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_status_add_targets(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route, ngx_array_t *targets)
{
    ngx_uint_t                     i, k, j, *index;
    ngx_http_llm_node_t          **pair;
    ngx_http_llm_target_t         *target;
    ngx_http_llm_status_target_t  *t;

    if (targets == NULL) {
        return NGX_OK;
    }

    target = targets->elts;

    for (i = 0; i < targets->nelts; i++) {

        t = st->targets.elts;

        for (k = 0; k < st->targets.nelts; k++) {
            if (t[k].target->key.len == target[i].key.len
                && ngx_strncmp(t[k].target->key.data, target[i].key.data,
                               target[i].key.len) == 0)
            {
                break;
            }
        }

        if (k < st->targets.nelts) {
            if (t[k].target->node == NULL) {
                t[k].target = &target[i];
            }

        } else {
            t = ngx_array_push(&st->targets);
            if (t == NULL) {
                return NGX_ERROR;
            }

            t->target = &target[i];
        }

        /*
         * the route's own list, in the order of its plan, with the
         * metrics of the route and each target
         */

        index = route->targets.elts;
        pair = route->pairs.elts;

        for (j = 0; j < route->targets.nelts; j++) {
            if (index[j] == k) {
                break;
            }
        }

        if (j < route->targets.nelts) {
            if (pair[j] == NULL) {
                pair[j] = target[i].metrics;
            }

            continue;
        }

        index = ngx_array_push(&route->targets);
        pair = ngx_array_push(&route->pairs);

        if (index == NULL || pair == NULL) {
            return NGX_ERROR;
        }

        *index = k;
        *pair = target[i].metrics;
    }

    return NGX_OK;
}


/*
 * A route's canaries: on hold, the figures that put them there; else
 * the window's counts.  Read once, as the state decides what is written.
 */

static ngx_int_t
ngx_http_llm_status_canaries(ngx_http_request_t *r,
    ngx_http_llm_status_route_t *route)
{
    ngx_uint_t                     i;
    ngx_http_llm_node_t           *n;
    ngx_http_llm_target_t         *target;
    ngx_http_llm_loc_conf_t       *llcf;
    ngx_http_llm_status_canary_t  *c;

    llcf = route->conf;

    if (ngx_array_init(&route->canaries, r->pool, 1,
                       sizeof(ngx_http_llm_status_canary_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!llcf->canary) {
        return NGX_OK;
    }

    target = llcf->targets->elts;

    for (i = 0; i < llcf->targets->nelts; i++) {
        n = target[i].canary;

        if (n == NULL) {
            continue;
        }

        c = ngx_array_push(&route->canaries);
        if (c == NULL) {
            return NGX_ERROR;
        }

        c->target = &target[i];
        c->hold = ngx_http_llm_canary_on_hold(n, target[i].weight);
        c->since = n->hold_since;

        if (c->hold) {
            c->remote = n->hold_remote;
            c->attempts = n->hold_attempts;
            c->failures = n->hold_failures;

        } else {
            c->remote = 0;
            c->attempts = ngx_http_llm_slot_sum(n,
                                                NGX_HTTP_LLM_CANARY_ATTEMPTS,
                                                llcf->canary_window, 0);
            c->failures = ngx_http_llm_slot_sum(n,
                                                NGX_HTTP_LLM_CANARY_FAILURES,
                                                llcf->canary_window, 0);
        }

        if (c->failures > c->attempts) {
            /* read a moment apart */
            c->failures = c->attempts;
        }
    }

    return NGX_OK;
}


char *
ngx_http_llm_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_llm_status_handler) {
        return "is duplicate";
    }

    if (clcf->handler) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_status\" cannot be combined with another "
                           "content handler in one location");
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_llm_status_handler;

    /* merge checks that no later directive replaced the handler */

    llcf->status = 1;

    if (llcf->conf_line == 0) {
        llcf->conf_file = cf->conf_file->file.name;
        llcf->conf_line = cf->conf_file->line;
    }

    return NGX_CONF_OK;
}
