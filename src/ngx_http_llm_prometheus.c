
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_status.h"


/*
 * The status page in the Prometheus text exposition format (0.0.4):
 * each family once, with its HELP and TYPE lines and all its samples
 * together; label values escaped as the format says.
 */


/* what a Prometheus family reports, and of what */
#define NGX_HTTP_LLM_METRIC_ROUTE       0   /* a route counter */
#define NGX_HTTP_LLM_METRIC_DECISIONS   1   /* ... by decision */
#define NGX_HTTP_LLM_METRIC_BUDGET      2
#define NGX_HTTP_LLM_METRIC_TARGET      3   /* a target counter */
#define NGX_HTTP_LLM_METRIC_ERRORS      4   /* ... by error category */
#define NGX_HTTP_LLM_METRIC_COOLING     5
#define NGX_HTTP_LLM_METRIC_REMAINING   6
#define NGX_HTTP_LLM_METRIC_CANARY      7   /* a route's canary */


typedef struct {
    ngx_str_t                    name;
    ngx_str_t                    help;
    ngx_str_t                    type;
    ngx_uint_t                   kind;
    size_t                       offset;    /* of a node counter */
} ngx_http_llm_metric_t;


static void ngx_http_llm_status_routes(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m);
static void ngx_http_llm_status_targets(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m);
static void ngx_http_llm_status_canary_holds(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m);
static void ngx_http_llm_status_sample(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m, ngx_str_t *route, ngx_http_llm_target_t *target,
    char *label, ngx_str_t *value);
static void ngx_http_llm_status_zones(ngx_http_llm_status_t *st);
static void ngx_http_llm_status_redis(ngx_http_llm_status_t *st);
static uintptr_t ngx_http_llm_status_escape_label(u_char *dst, u_char *src,
    size_t size);


/* the families in the order they are written */

static ngx_http_llm_metric_t  ngx_http_llm_metrics[] = {

    { ngx_string("nginx_llm_route_requests_total"),
      ngx_string("Client requests to the llm route."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_ROUTE,
      offsetof(ngx_http_llm_node_t, requests) },

    { ngx_string("nginx_llm_route_attempts_total"),
      ngx_string("Attempts sent to the targets of the llm route."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_ROUTE,
      offsetof(ngx_http_llm_node_t, attempts) },

    { ngx_string("nginx_llm_route_retries_total"),
      ngx_string("Attempts after the first of a request, retries and "
                 "fallbacks, taken from the retry budget."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_ROUTE,
      offsetof(ngx_http_llm_node_t, retries) },

    { ngx_string("nginx_llm_route_client_closed_total"),
      ngx_string("Attempts of the llm route ended by a client that went "
                 "away."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_ROUTE,
      offsetof(ngx_http_llm_node_t, errors[NGX_HTTP_LLM_ERR_CLIENT_CLOSED]) },

    { ngx_string("nginx_llm_route_decisions_total"),
      ngx_string("What the llm route decided after a failed attempt."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_DECISIONS, 0 },

    { ngx_string("nginx_llm_route_budget_remaining"),
      ngx_string("Retries the retry budget of the llm route allows now."),
      ngx_string("gauge"), NGX_HTTP_LLM_METRIC_BUDGET, 0 },

    { ngx_string("nginx_llm_target_attempts_total"),
      ngx_string("Attempts sent to the llm target."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_TARGET,
      offsetof(ngx_http_llm_node_t, attempts) },

    { ngx_string("nginx_llm_target_skipped_total"),
      ngx_string("Attempts not sent to the llm target while it was "
                 "cooling down."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_TARGET,
      offsetof(ngx_http_llm_node_t, skipped) },

    { ngx_string("nginx_llm_target_errors_total"),
      ngx_string("Failed attempts at the llm target by error category."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_ERRORS, 0 },

    { ngx_string("nginx_llm_target_cooling"),
      ngx_string("1 while the llm target is cooling down, else 0."),
      ngx_string("gauge"), NGX_HTTP_LLM_METRIC_COOLING, 0 },

    { ngx_string("nginx_llm_target_cooldown_remaining_seconds"),
      ngx_string("Seconds until the cooldown of the llm target ends."),
      ngx_string("gauge"), NGX_HTTP_LLM_METRIC_REMAINING, 0 },

    { ngx_string("nginx_llm_target_cooldowns_total"),
      ngx_string("Cooldowns the llm target went into."),
      ngx_string("counter"), NGX_HTTP_LLM_METRIC_TARGET,
      offsetof(ngx_http_llm_node_t, cooldowns) },

    { ngx_string("nginx_llm_canary_hold"),
      ngx_string("1 while the canary target of the llm route is on hold, "
                 "its traffic sent to the route's heaviest target, else 0."),
      ngx_string("gauge"), NGX_HTTP_LLM_METRIC_CANARY, 0 },

    { ngx_null_string, ngx_null_string, ngx_null_string, 0, 0 }
};


/*
 * Text exposition format 0.0.4: each family's HELP and TYPE lines, then
 * all its samples.  Only counted routes and targets have samples: a
 * route without a zone has no counters to report.
 */

void
ngx_http_llm_status_prometheus(ngx_http_llm_status_t *st)
{
    ngx_http_llm_metric_t  *m;

    ngx_http_llm_status_literal(st,
        "# HELP nginx_llm_build_info The llm module's version and the "
        "nginx it was built for.\n"
        "# TYPE nginx_llm_build_info gauge\n"
        "nginx_llm_build_info{version=\"" NGX_HTTP_LLM_VERSION "\","
        "nginx=\"" NGINX_VERSION "\"} 1\n");

    for (m = ngx_http_llm_metrics; m->name.len; m++) {

        ngx_http_llm_status_literal(st, "# HELP ");
        ngx_http_llm_status_copy(st, m->name.data, m->name.len);
        ngx_http_llm_status_literal(st, " ");
        ngx_http_llm_status_copy(st, m->help.data, m->help.len);
        ngx_http_llm_status_literal(st, "\n# TYPE ");
        ngx_http_llm_status_copy(st, m->name.data, m->name.len);
        ngx_http_llm_status_literal(st, " ");
        ngx_http_llm_status_copy(st, m->type.data, m->type.len);
        ngx_http_llm_status_literal(st, "\n");

        if (m->kind < NGX_HTTP_LLM_METRIC_TARGET) {
            ngx_http_llm_status_routes(st, m);

        } else if (m->kind == NGX_HTTP_LLM_METRIC_CANARY) {
            ngx_http_llm_status_canary_holds(st, m);

        } else {
            ngx_http_llm_status_targets(st, m);
        }
    }

    ngx_http_llm_metrics_prometheus(st);

    ngx_http_llm_status_zones(st);

    if (st->redis) {
        ngx_http_llm_status_redis(st);
    }
}


/* the zones' pages, and whether a route or target found no room */

static void
ngx_http_llm_status_zones(ngx_http_llm_status_t *st)
{
    ngx_uint_t                   i;
    ngx_http_llm_status_zone_t  *z;

    z = st->zones.elts;

    ngx_http_llm_status_literal(st,
        "# HELP nginx_llm_zone_bytes Bytes of the memory pages of the llm "
        "zone, in use and in all.\n"
        "# TYPE nginx_llm_zone_bytes gauge\n");

    for (i = 0; i < st->zones.nelts; i++) {
        ngx_http_llm_status_literal(st, "nginx_llm_zone_bytes{zone=\"");
        ngx_http_llm_status_label(st, &z[i].zone->shm.name);
        ngx_http_llm_status_literal(st, "\",kind=\"used\"} ");
        ngx_http_llm_status_number(st, z[i].used);
        ngx_http_llm_status_literal(st, "\nnginx_llm_zone_bytes{zone=\"");
        ngx_http_llm_status_label(st, &z[i].zone->shm.name);
        ngx_http_llm_status_literal(st, "\",kind=\"total\"} ");
        ngx_http_llm_status_number(st, z[i].total);
        ngx_http_llm_status_literal(st, "\n");
    }

    ngx_http_llm_status_literal(st,
        "# HELP nginx_llm_zone_full 1 while a route or target of the "
        "configuration found no room in the llm zone and is not counted, "
        "else 0.\n"
        "# TYPE nginx_llm_zone_full gauge\n");

    for (i = 0; i < st->zones.nelts; i++) {
        ngx_http_llm_status_literal(st, "nginx_llm_zone_full{zone=\"");
        ngx_http_llm_status_label(st, &z[i].zone->shm.name);
        ngx_http_llm_status_literal(st, "\"} ");
        ngx_http_llm_status_number(st, z[i].full ? 1 : 0);
        ngx_http_llm_status_literal(st, "\n");
    }

    ngx_http_llm_status_literal(st,
        "# HELP nginx_llm_zone_metrics_full 1 while the latency or token "
        "metrics of a route or target found no room in the llm zone, "
        "else 0.\n"
        "# TYPE nginx_llm_zone_metrics_full gauge\n");

    for (i = 0; i < st->zones.nelts; i++) {
        ngx_http_llm_status_literal(st,
                                    "nginx_llm_zone_metrics_full{zone=\"");
        ngx_http_llm_status_label(st, &z[i].zone->shm.name);
        ngx_http_llm_status_literal(st, "\"} ");
        ngx_http_llm_status_number(st, z[i].metrics_full ? 1 : 0);
        ngx_http_llm_status_literal(st, "\n");
    }
}


/* the Redis link, with llm_redis only */

static void
ngx_http_llm_status_redis(ngx_http_llm_status_t *st)
{
    ngx_http_llm_status_link_t  *link;

    link = &st->link;

    ngx_http_llm_status_literal(st,
        "# HELP nginx_llm_redis_up 1 while the link to llm_redis is up, "
        "else 0.\n"
        "# TYPE nginx_llm_redis_up gauge\n"
        "nginx_llm_redis_up ");
    ngx_http_llm_status_number(st, link->up);

    ngx_http_llm_status_literal(st,
        "\n# HELP nginx_llm_redis_cluster_view 1 while retry budgets are "
        "judged on the cluster's counts, 0 while on this node's alone.\n"
        "# TYPE nginx_llm_redis_cluster_view gauge\n"
        "nginx_llm_redis_cluster_view ");
    ngx_http_llm_status_number(st, link->cluster);

    ngx_http_llm_status_literal(st,
        "\n# HELP nginx_llm_redis_nodes Nodes sharing llm_redis as Redis "
        "last counted them, 0 before it did.\n"
        "# TYPE nginx_llm_redis_nodes gauge\n"
        "nginx_llm_redis_nodes ");
    ngx_http_llm_status_number(st, link->nodes);

    ngx_http_llm_status_literal(st,
        "\n# HELP nginx_llm_redis_syncs_total Batches Redis answered in "
        "full.\n"
        "# TYPE nginx_llm_redis_syncs_total counter\n"
        "nginx_llm_redis_syncs_total ");
    ngx_http_llm_status_number(st, link->syncs);

    ngx_http_llm_status_literal(st,
        "\n# HELP nginx_llm_redis_sync_errors_total Batches lost to a "
        "timeout, an error reply or a closed link.\n"
        "# TYPE nginx_llm_redis_sync_errors_total counter\n"
        "nginx_llm_redis_sync_errors_total ");
    ngx_http_llm_status_number(st, link->sync_errors);

    ngx_http_llm_status_literal(st,
        "\n# HELP nginx_llm_redis_link_downs_total Times the link to "
        "llm_redis went down.\n"
        "# TYPE nginx_llm_redis_link_downs_total counter\n"
        "nginx_llm_redis_link_downs_total ");
    ngx_http_llm_status_number(st, link->link_downs);
    ngx_http_llm_status_literal(st, "\n");
}


static void
ngx_http_llm_status_routes(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m)
{
    ngx_uint_t                    i, d;
    ngx_http_llm_node_t          *n;
    ngx_http_llm_status_route_t  *route;

    route = st->routes.elts;

    for (i = 0; i < st->routes.nelts; i++) {

        n = route[i].conf->node;

        if (n == NULL) {
            continue;
        }

        switch (m->kind) {

        case NGX_HTTP_LLM_METRIC_DECISIONS:

            for (d = 1;
                 d < NGX_HTTP_LLM_DECISIONS
                 && ngx_http_llm_decision_names[d].len;
                 d++)
            {
                ngx_http_llm_status_sample(st, m, route[i].name, NULL,
                                           "decision",
                                           &ngx_http_llm_decision_names[d]);
                ngx_http_llm_status_number(st, n->decisions[d]);
                ngx_http_llm_status_literal(st, "\n");
            }

            break;

        case NGX_HTTP_LLM_METRIC_BUDGET:

            if (route[i].left < 0) {
                break;
            }

            ngx_http_llm_status_sample(st, m, route[i].name, NULL, NULL,
                                       NULL);
            ngx_http_llm_status_number(st, route[i].left);
            ngx_http_llm_status_literal(st, "\n");
            break;

        default: /* NGX_HTTP_LLM_METRIC_ROUTE */

            ngx_http_llm_status_sample(st, m, route[i].name, NULL, NULL,
                                       NULL);
            ngx_http_llm_status_number(st,
                                   ngx_http_llm_status_counter(n, m->offset));
            ngx_http_llm_status_literal(st, "\n");
        }
    }
}


static void
ngx_http_llm_status_targets(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m)
{
    ngx_uint_t                     i, e;
    ngx_http_llm_node_t           *n;
    ngx_http_llm_status_target_t  *t;

    t = st->targets.elts;

    for (i = 0; i < st->targets.nelts; i++) {

        n = t[i].target->node;

        if (n == NULL) {
            continue;
        }

        switch (m->kind) {

        case NGX_HTTP_LLM_METRIC_ERRORS:

            for (e = 1; e < NGX_HTTP_LLM_ERR_CLIENT_CLOSED; e++) {
                ngx_http_llm_status_sample(st, m, NULL, t[i].target, "error",
                                           &ngx_http_llm_err_names[e]);
                ngx_http_llm_status_number(st, n->errors[e]);
                ngx_http_llm_status_literal(st, "\n");
            }

            break;

        case NGX_HTTP_LLM_METRIC_COOLING:

            ngx_http_llm_status_sample(st, m, NULL, t[i].target, NULL, NULL);
            ngx_http_llm_status_number(st, t[i].remaining ? 1 : 0);
            ngx_http_llm_status_literal(st, "\n");
            break;

        case NGX_HTTP_LLM_METRIC_REMAINING:

            ngx_http_llm_status_sample(st, m, NULL, t[i].target, NULL, NULL);
            ngx_http_llm_status_decimal(st, t[i].remaining);
            ngx_http_llm_status_literal(st, "\n");
            break;

        default: /* NGX_HTTP_LLM_METRIC_TARGET */

            ngx_http_llm_status_sample(st, m, NULL, t[i].target, NULL, NULL);
            ngx_http_llm_status_number(st,
                                   ngx_http_llm_status_counter(n, m->offset));
            ngx_http_llm_status_literal(st, "\n");
        }
    }
}


/* a sample per counted canary: route, then the target's labels */

static void
ngx_http_llm_status_canary_holds(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m)
{
    ngx_uint_t                     i, k;
    ngx_http_llm_status_route_t   *route;
    ngx_http_llm_status_canary_t  *c;

    route = st->routes.elts;

    for (i = 0; i < st->routes.nelts; i++) {
        c = route[i].canaries.elts;

        for (k = 0; k < route[i].canaries.nelts; k++) {
            ngx_http_llm_status_copy(st, m->name.data, m->name.len);
            ngx_http_llm_status_literal(st, "{route=\"");
            ngx_http_llm_status_label(st, route[i].name);
            ngx_http_llm_status_literal(st, "\",target=\"");
            ngx_http_llm_status_label(st, &c[k].target->uri);
            ngx_http_llm_status_literal(st, "\",model=\"");
            ngx_http_llm_status_label(st, &c[k].target->model);
            ngx_http_llm_status_literal(st, "\"} ");
            ngx_http_llm_status_number(st, c[k].hold ? 1 : 0);
            ngx_http_llm_status_literal(st, "\n");
        }
    }
}


/* a sample's name and labels, up to its value */

static void
ngx_http_llm_status_sample(ngx_http_llm_status_t *st,
    ngx_http_llm_metric_t *m, ngx_str_t *route, ngx_http_llm_target_t *target,
    char *label, ngx_str_t *value)
{
    ngx_http_llm_status_copy(st, m->name.data, m->name.len);

    if (route) {
        ngx_http_llm_status_literal(st, "{route=\"");
        ngx_http_llm_status_label(st, route);

    } else {
        ngx_http_llm_status_literal(st, "{target=\"");
        ngx_http_llm_status_label(st, &target->uri);
        ngx_http_llm_status_literal(st, "\",model=\"");
        ngx_http_llm_status_label(st, &target->model);
    }

    if (label) {
        ngx_http_llm_status_literal(st, "\",");
        ngx_http_llm_status_copy(st, (u_char *) label, ngx_strlen(label));
        ngx_http_llm_status_literal(st, "=\"");
        ngx_http_llm_status_label(st, value);
    }

    ngx_http_llm_status_literal(st, "\"} ");
}


/* a label value, without its quotes */

void
ngx_http_llm_status_label(ngx_http_llm_status_t *st, ngx_str_t *s)
{
    u_char  *p;
    size_t   len;

    len = s->len + ngx_http_llm_status_escape_label(NULL, s->data, s->len);

    p = ngx_http_llm_status_reserve(st, len);

    if (p) {
        st->pos = (u_char *) ngx_http_llm_status_escape_label(p, s->data,
                                                              s->len);
    }
}


/*
 * The exposition format escapes a backslash, a double quote and a line
 * feed in label values.  As ngx_escape_json(): without dst, returns the
 * bytes escaping adds; with it, where the escaped value ends.
 */

static uintptr_t
ngx_http_llm_status_escape_label(u_char *dst, u_char *src, size_t size)
{
    u_char      ch;
    ngx_uint_t  n;

    if (dst == NULL) {
        n = 0;

        while (size--) {
            ch = *src++;

            if (ch == '\\' || ch == '"' || ch == '\n') {
                n++;
            }
        }

        return (uintptr_t) n;
    }

    while (size--) {
        ch = *src++;

        switch (ch) {

        case '\\':
        case '"':
            *dst++ = '\\';
            *dst++ = ch;
            break;

        case '\n':
            *dst++ = '\\';
            *dst++ = 'n';
            break;

        default:
            *dst++ = ch;
        }
    }

    return (uintptr_t) dst;
}
