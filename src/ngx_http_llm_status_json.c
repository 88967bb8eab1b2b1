
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_status.h"


/*
 * The status page as JSON (docs/status.md), and the writers it shares
 * with the Prometheus text: each runs twice, once to measure the body
 * (st->pos NULL) and once to write it.
 */


static void ngx_http_llm_status_json_redis(ngx_http_llm_status_t *st);
static void ngx_http_llm_status_json_route(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route);
static void ngx_http_llm_status_json_target(ngx_http_llm_status_t *st,
    ngx_http_llm_status_target_t *t);
static void ngx_http_llm_status_json_canary(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route);


void
ngx_http_llm_status_json(ngx_http_llm_status_t *st)
{
    ngx_uint_t                     i;
    ngx_http_llm_status_zone_t    *z;
    ngx_http_llm_status_route_t   *route;
    ngx_http_llm_status_target_t  *t;

    ngx_http_llm_status_literal(st, "{\"version\":1,\"module\":{"
                                "\"version\":\"" NGX_HTTP_LLM_VERSION "\","
                                "\"nginx\":\"" NGINX_VERSION "\"},"
                                "\"time_ms\":");
    ngx_http_llm_status_number(st, st->now);

    ngx_http_llm_status_literal(st, ",\"zones\":[");

    z = st->zones.elts;

    for (i = 0; i < st->zones.nelts; i++) {
        if (i) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_literal(st, "{\"name\":");
        ngx_http_llm_status_string(st, &z[i].zone->shm.name);
        ngx_http_llm_status_literal(st, ",\"size\":");
        ngx_http_llm_status_number(st, z[i].zone->shm.size);
        ngx_http_llm_status_literal(st, ",\"used_bytes\":");
        ngx_http_llm_status_number(st, z[i].used);
        ngx_http_llm_status_literal(st, ",\"total_bytes\":");
        ngx_http_llm_status_number(st, z[i].total);
        ngx_http_llm_status_literal(st, ",\"full\":");
        ngx_http_llm_status_bool(st, z[i].full);
        ngx_http_llm_status_literal(st, ",\"metrics_full\":");
        ngx_http_llm_status_bool(st, z[i].metrics_full);
        ngx_http_llm_status_literal(st, "}");
    }

    ngx_http_llm_status_literal(st, "],\"redis\":");
    ngx_http_llm_status_json_redis(st);

    ngx_http_llm_status_literal(st, ",\"routes\":{");

    route = st->routes.elts;

    for (i = 0; i < st->routes.nelts; i++) {
        if (i) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_json_route(st, &route[i]);
    }

    ngx_http_llm_status_literal(st, "},\"targets\":{");

    t = st->targets.elts;

    for (i = 0; i < st->targets.nelts; i++) {
        if (i) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_json_target(st, &t[i]);
    }

    ngx_http_llm_status_literal(st, "}}\n");
}


/* the Redis link: null without llm_redis */

static void
ngx_http_llm_status_json_redis(ngx_http_llm_status_t *st)
{
    ngx_msec_t                   at;
    ngx_http_llm_status_link_t  *link;

    if (st->redis == NULL) {
        ngx_http_llm_status_literal(st, "null");
        return;
    }

    link = &st->link;
    at = link->view_at;

    ngx_http_llm_status_literal(st, "{\"address\":");
    ngx_http_llm_status_string(st, &st->redis->address);

    ngx_http_llm_status_literal(st, ",\"state\":");

    if (link->up) {
        ngx_http_llm_status_literal(st, "\"up\"");

    } else {
        ngx_http_llm_status_literal(st, "\"down\"");
    }

    ngx_http_llm_status_literal(st, ",\"budget_source\":");

    if (link->cluster) {
        ngx_http_llm_status_literal(st, "\"cluster\"");

    } else {
        ngx_http_llm_status_literal(st, "\"local\"");
    }

    ngx_http_llm_status_literal(st, ",\"view_age_ms\":");

    if (at && st->now >= at) {
        ngx_http_llm_status_number(st, st->now - at);

    } else {
        ngx_http_llm_status_literal(st, "null");
    }

    ngx_http_llm_status_literal(st, ",\"nodes\":");

    if (link->nodes) {
        ngx_http_llm_status_number(st, link->nodes);

    } else {
        ngx_http_llm_status_literal(st, "null");
    }

    ngx_http_llm_status_literal(st, ",\"syncs\":");
    ngx_http_llm_status_number(st, link->syncs);
    ngx_http_llm_status_literal(st, ",\"sync_errors\":");
    ngx_http_llm_status_number(st, link->sync_errors);
    ngx_http_llm_status_literal(st, ",\"link_downs\":");
    ngx_http_llm_status_number(st, link->link_downs);
    ngx_http_llm_status_literal(st, "}");
}


static void
ngx_http_llm_status_json_route(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route)
{
    ngx_uint_t                     i, *index;
    ngx_http_llm_node_t           *n;
    ngx_http_llm_loc_conf_t       *llcf;
    ngx_http_llm_status_target_t  *t;

    llcf = route->conf;
    n = llcf->node;

    ngx_http_llm_status_string(st, route->name);
    ngx_http_llm_status_literal(st, ":{\"zone\":");

    if (llcf->zone) {
        ngx_http_llm_status_string(st, &llcf->zone->shm.name);

    } else {
        ngx_http_llm_status_literal(st, "null");
    }

    ngx_http_llm_status_literal(st, ",\"counted\":");
    ngx_http_llm_status_bool(st, n != NULL);

    ngx_http_llm_status_literal(st, ",\"requests\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t, requests)));
    ngx_http_llm_status_literal(st, ",\"attempts\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t, attempts)));
    ngx_http_llm_status_literal(st, ",\"retries\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t, retries)));
    ngx_http_llm_status_literal(st, ",\"client_closed\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t,
                                   errors[NGX_HTTP_LLM_ERR_CLIENT_CLOSED])));

    ngx_http_llm_status_literal(st, ",\"budget\":");

    if (llcf->budget) {
        ngx_http_llm_status_literal(st, "{\"ratio\":");
        ngx_http_llm_status_decimal(st, llcf->budget_ratio);
        ngx_http_llm_status_literal(st, ",\"min_per_second\":");
        ngx_http_llm_status_number(st, llcf->budget_min);
        ngx_http_llm_status_literal(st, ",\"window\":");
        ngx_http_llm_status_number(st, llcf->budget_window);
        ngx_http_llm_status_literal(st, ",\"left\":");

        if (route->left >= 0) {
            ngx_http_llm_status_number(st, route->left);

        } else {
            ngx_http_llm_status_literal(st, "null");
        }

        ngx_http_llm_status_literal(st, "}");

    } else {
        ngx_http_llm_status_literal(st, "null");
    }

    ngx_http_llm_status_literal(st, ",\"decisions\":{");

    for (i = 1;
         i < NGX_HTTP_LLM_DECISIONS && ngx_http_llm_decision_names[i].len;
         i++)
    {
        if (i > 1) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_string(st, &ngx_http_llm_decision_names[i]);
        ngx_http_llm_status_literal(st, ":");
        ngx_http_llm_status_number(st, n ? n->decisions[i] : 0);
    }

    ngx_http_llm_status_literal(st, "},\"canary\":");
    ngx_http_llm_status_json_canary(st, route);

    ngx_http_llm_status_literal(st, ",\"targets\":[");

    index = route->targets.elts;
    t = st->targets.elts;

    for (i = 0; i < route->targets.nelts; i++) {
        if (i) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_string(st, &t[index[i]].target->key);
    }

    ngx_http_llm_status_literal(st, "]");

    ngx_http_llm_metrics_json(st, route);

    ngx_http_llm_status_literal(st, "}");
}


/* llm_canary: null without it */

static void
ngx_http_llm_status_json_canary(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route)
{
    ngx_uint_t                     i;
    ngx_http_llm_target_t         *heaviest;
    ngx_http_llm_loc_conf_t       *llcf;
    ngx_http_llm_status_canary_t  *c;

    llcf = route->conf;

    if (!llcf->canary) {
        ngx_http_llm_status_literal(st, "null");
        return;
    }

    heaviest = llcf->targets->elts;
    heaviest = &heaviest[llcf->canary_heaviest];

    ngx_http_llm_status_literal(st, "{\"errors\":");
    ngx_http_llm_status_decimal(st, llcf->canary_errors);
    ngx_http_llm_status_literal(st, ",\"min\":");
    ngx_http_llm_status_number(st, llcf->canary_min);
    ngx_http_llm_status_literal(st, ",\"window\":");
    ngx_http_llm_status_number(st, llcf->canary_window);
    ngx_http_llm_status_literal(st, ",\"heaviest\":");
    ngx_http_llm_status_string(st, &heaviest->key);
    ngx_http_llm_status_literal(st, ",\"targets\":{");

    c = route->canaries.elts;

    for (i = 0; i < route->canaries.nelts; i++) {
        if (i) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_string(st, &c[i].target->key);
        ngx_http_llm_status_literal(st, ":{\"state\":");

        if (c[i].hold) {
            ngx_http_llm_status_literal(st, "\"hold\"");

        } else {
            ngx_http_llm_status_literal(st, "\"ok\"");
        }

        ngx_http_llm_status_literal(st, ",\"since_ms\":");
        ngx_http_llm_status_number(st, c[i].since);
        ngx_http_llm_status_literal(st, ",\"weight\":");
        ngx_http_llm_status_number(st, c[i].target->weight);
        ngx_http_llm_status_literal(st, ",\"attempts\":");
        ngx_http_llm_status_number(st, c[i].attempts);
        ngx_http_llm_status_literal(st, ",\"failures\":");
        ngx_http_llm_status_number(st, c[i].failures);
        ngx_http_llm_status_literal(st, ",\"ratio\":");
        ngx_http_llm_status_decimal(st, c[i].attempts
                                        ? c[i].failures * 1000
                                          / c[i].attempts
                                        : 0);
        ngx_http_llm_status_literal(st, ",\"from\":");

        if (!c[i].hold) {
            ngx_http_llm_status_literal(st, "null}");

        } else if (c[i].remote) {
            ngx_http_llm_status_literal(st, "\"redis\"}");

        } else {
            ngx_http_llm_status_literal(st, "\"local\"}");
        }
    }

    ngx_http_llm_status_literal(st, "}}");
}


static void
ngx_http_llm_status_json_target(ngx_http_llm_status_t *st,
    ngx_http_llm_status_target_t *t)
{
    ngx_uint_t              i;
    ngx_http_llm_node_t    *n;
    ngx_http_llm_target_t  *target;

    target = t->target;
    n = target->node;

    ngx_http_llm_status_string(st, &target->key);
    ngx_http_llm_status_literal(st, ":{\"uri\":");
    ngx_http_llm_status_string(st, &target->uri);
    ngx_http_llm_status_literal(st, ",\"model\":");

    if (target->model.len) {
        ngx_http_llm_status_string(st, &target->model);

    } else {
        ngx_http_llm_status_literal(st, "null");
    }

    ngx_http_llm_status_literal(st, ",\"counted\":");
    ngx_http_llm_status_bool(st, n != NULL);

    ngx_http_llm_status_literal(st, ",\"attempts\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t, attempts)));
    ngx_http_llm_status_literal(st, ",\"skipped\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t, skipped)));

    ngx_http_llm_status_literal(st, ",\"errors\":{");

    /* a client that went away is no error of the target's */

    for (i = 1; i < NGX_HTTP_LLM_ERR_CLIENT_CLOSED; i++) {
        if (i > 1) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_string(st, &ngx_http_llm_err_names[i]);
        ngx_http_llm_status_literal(st, ":");
        ngx_http_llm_status_number(st, n ? n->errors[i] : 0);
    }

    ngx_http_llm_status_literal(st, "},\"cooling\":");
    ngx_http_llm_status_bool(st, t->remaining != 0);
    ngx_http_llm_status_literal(st, ",\"cooldown_remaining_ms\":");
    ngx_http_llm_status_number(st, t->remaining);
    ngx_http_llm_status_literal(st, ",\"cooldowns\":");
    ngx_http_llm_status_number(st, ngx_http_llm_status_counter(n,
                                   offsetof(ngx_http_llm_node_t, cooldowns)));
    ngx_http_llm_status_literal(st, "}");
}


/*
 * Room for len bytes at st->pos: NULL while the body is measured (len
 * is counted then), or if the measure fell short (noted, never expected)
 */

u_char *
ngx_http_llm_status_reserve(ngx_http_llm_status_t *st, size_t len)
{
    if (st->start == NULL) {
        st->len += len;
        return NULL;
    }

    if ((size_t) (st->end - st->pos) < len) {
        st->overflow = 1;
        return NULL;
    }

    return st->pos;
}


void
ngx_http_llm_status_copy(ngx_http_llm_status_t *st, u_char *s, size_t len)
{
    u_char  *p;

    p = ngx_http_llm_status_reserve(st, len);

    if (p) {
        st->pos = ngx_cpymem(p, s, len);
    }
}


/* a number is measured at its widest: counters may grow meanwhile */

void
ngx_http_llm_status_number(ngx_http_llm_status_t *st, ngx_atomic_uint_t n)
{
    u_char  *p;

    p = ngx_http_llm_status_reserve(st, NGX_ATOMIC_T_LEN);

    if (p) {
        st->pos = ngx_sprintf(p, "%uA", n);
    }
}


/* thousandths as a decimal number without trailing zeros: 200 is "0.2" */

void
ngx_http_llm_status_decimal(ngx_http_llm_status_t *st, ngx_atomic_uint_t n)
{
    u_char      *p;
    ngx_uint_t   frac;

    p = ngx_http_llm_status_reserve(st, NGX_HTTP_LLM_STATUS_DECIMAL_LEN);

    if (p == NULL) {
        return;
    }

    p = ngx_sprintf(p, "%uA", n / 1000);

    frac = n % 1000;

    if (frac) {

        if (frac % 100 == 0) {
            p = ngx_sprintf(p, ".%ui", frac / 100);

        } else if (frac % 10 == 0) {
            p = ngx_sprintf(p, ".%02ui", frac / 10);

        } else {
            p = ngx_sprintf(p, ".%03ui", frac);
        }
    }

    st->pos = p;
}


void
ngx_http_llm_status_bool(ngx_http_llm_status_t *st, ngx_uint_t v)
{
    if (v) {
        ngx_http_llm_status_literal(st, "true");

    } else {
        ngx_http_llm_status_literal(st, "false");
    }
}


/* a JSON string, quoted */

void
ngx_http_llm_status_string(ngx_http_llm_status_t *st, ngx_str_t *s)
{
    u_char  *p;
    size_t   len;

    len = s->len + 2 + ngx_escape_json(NULL, s->data, s->len);

    p = ngx_http_llm_status_reserve(st, len);

    if (p) {
        *p++ = '"';
        p = (u_char *) ngx_escape_json(p, s->data, s->len);
        *p++ = '"';
        st->pos = p;
    }
}
