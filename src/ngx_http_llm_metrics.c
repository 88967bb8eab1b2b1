
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_status.h"


/*
 * Latency and token metrics (docs/status.md, "Latency and tokens"): per
 * route, the request's duration and its time to the first byte as
 * histograms with fixed buckets; per route and target, the tokens of
 * the answers and the attempts by outcome.  Each route has a node of
 * kind LATENCY and each of its targets one of kind PAIR in the route's
 * zone, wanted after every counter node so that a small zone gives its
 * room to budgets and cooldowns first; like them they are found again
 * by name after a reload.  A request is counted once, when it is
 * logged: its attempts are all recorded by then (a request nginx ends
 * has its cleanup run first), and the request path only adds to
 * atomics.
 */


static ngx_int_t ngx_http_llm_metrics_route(ngx_conf_t *cf,
    ngx_http_llm_loc_conf_t *llcf, ngx_array_t *targets);
static ngx_int_t ngx_http_llm_metrics_log(ngx_http_request_t *r);
static void ngx_http_llm_metrics_observe(ngx_http_llm_histogram_t *h,
    ngx_msec_int_t ms);
static void ngx_http_llm_metrics_json_histogram(ngx_http_llm_status_t *st,
    ngx_http_llm_histogram_t *h);
static void ngx_http_llm_metrics_json_pair(ngx_http_llm_status_t *st,
    ngx_http_llm_node_t *n);
static void ngx_http_llm_metrics_header(ngx_http_llm_status_t *st,
    char *name, char *type, char *help);
static void ngx_http_llm_metrics_histograms(ngx_http_llm_status_t *st,
    char *name, size_t offset);
static void ngx_http_llm_metrics_pairs(ngx_http_llm_status_t *st,
    char *name, ngx_uint_t what);
static void ngx_http_llm_metrics_labels(ngx_http_llm_status_t *st,
    char *name, ngx_str_t *route, ngx_http_llm_target_t *target);


/* upper bounds of the buckets but +Inf, ms, and as Prometheus' le= */

static ngx_msec_t  ngx_http_llm_bucket_ms[NGX_HTTP_LLM_BUCKETS - 1] = {
    50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000, 60000, 120000
};

static ngx_str_t  ngx_http_llm_bucket_le[NGX_HTTP_LLM_BUCKETS] = {
    ngx_string("0.05"), ngx_string("0.1"), ngx_string("0.25"),
    ngx_string("0.5"), ngx_string("1"), ngx_string("2.5"), ngx_string("5"),
    ngx_string("10"), ngx_string("20"), ngx_string("30"), ngx_string("60"),
    ngx_string("120"), ngx_string("+Inf")
};


/* what a per route and target family reports */
#define NGX_HTTP_LLM_PAIR_INPUT     0
#define NGX_HTTP_LLM_PAIR_OUTPUT    1
#define NGX_HTTP_LLM_PAIR_OUTCOMES  2


/*
 * The metrics nodes of every counted route, once the counter nodes are
 * wanted, and the log phase handler that counts in them.  Tokens are
 * counted from the usage of the answers the module reads: streams
 * always, other answers when the configuration uses the usage
 * variables, or with llm_count_tokens (design.md 2): reading one costs
 * some 9,000 instructions (bench/README.md).
 */

ngx_int_t
ngx_http_llm_metrics_init(ngx_conf_t *cf)
{
    ngx_uint_t                  i;
    ngx_http_handler_pt        *h;
    ngx_http_llm_loc_conf_t    *llcf;
    ngx_http_llm_main_conf_t   *lmcf;
    ngx_http_llm_route_name_t  *rn;
    ngx_http_core_main_conf_t  *cmcf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    ngx_conf_init_value(lmcf->count_tokens, 0);

    if (lmcf->zones.nelts == 0) {
        return NGX_OK;
    }

    rn = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        llcf = rn[i].conf;

        if (llcf->zone == NULL) {
            continue;
        }

        if (ngx_http_llm_zone_want(cf, llcf->zone, NGX_HTTP_LLM_NODE_LATENCY,
                                   &llcf->route, &llcf->metrics, 0, 0)
            != NGX_OK
            || ngx_http_llm_metrics_route(cf, llcf, llcf->targets) != NGX_OK
            || ngx_http_llm_metrics_route(cf, llcf, llcf->fallbacks)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (lmcf->count_tokens) {
        lmcf->read_answers = 1;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_llm_metrics_log;

    return NGX_OK;
}


/* a node per route and target, named "route URI model" as a canary's */

static ngx_int_t
ngx_http_llm_metrics_route(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *llcf,
    ngx_array_t *targets)
{
    u_char                 *p;
    ngx_str_t               name;
    ngx_uint_t              i;
    ngx_http_llm_target_t  *target;

    if (targets == NULL) {
        return NGX_OK;
    }

    target = targets->elts;

    for (i = 0; i < targets->nelts; i++) {
        name.len = llcf->route.len + 1 + target[i].key.len;
        name.data = ngx_pnalloc(cf->pool, name.len);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(name.data, llcf->route.data, llcf->route.len);
        *p++ = ' ';
        ngx_memcpy(p, target[i].key.data, target[i].key.len);

        if (ngx_http_llm_zone_want(cf, llcf->zone, NGX_HTTP_LLM_NODE_PAIR,
                                   &name, &target[i].metrics, 0, 0)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A client request of a route, counted as it is logged if it was counted
 * in requests (its body passed the check): its duration as
 * $request_time, its time to the first byte as $llm_ttft when it has
 * one, each attempt's outcome, the answer's tokens as
 * $llm_usage_input_tokens and $llm_usage_output_tokens.
 */

static ngx_int_t
ngx_http_llm_metrics_log(ngx_http_request_t *r)
{
    ngx_uint_t               i, err;
    ngx_time_t              *tp;
    ngx_msec_int_t           ms;
    ngx_http_llm_ctx_t      *ctx;
    ngx_http_llm_node_t     *n;
    ngx_http_llm_answer_t   *a;
    ngx_http_llm_attempt_t  *at;

    if (r != r->main) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    /* the attempt list is made as the request is counted */

    if (ctx == NULL || ctx->tried.nalloc == 0) {
        return NGX_OK;
    }

    n = ctx->conf->metrics;

    if (n) {
        tp = ngx_timeofday();

        ms = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                               + (tp->msec - r->start_msec));

        ngx_http_llm_metrics_observe(&n->metrics.duration, ms);

        if (ctx->first_byte) {
            ms = (ngx_msec_int_t) (ctx->first_byte - ctx->request_start);
            ngx_http_llm_metrics_observe(&n->metrics.ttfb, ms);
        }

        ngx_http_llm_used(n);
    }

    at = ctx->tried.elts;

    for (i = 0; i < ctx->tried.nelts; i++) {
        /* a target passed over in its cooldown was no attempt */

        if (at[i].skipped || at[i].target == NULL) {
            continue;
        }

        n = at[i].target->metrics;

        if (n == NULL) {
            continue;
        }

        err = at[i].error < NGX_HTTP_LLM_ERR_LAST ? at[i].error : 0;

        ngx_http_llm_count(n, metrics.outcomes[err], 1);
    }

    a = ctx->reading;

    if (a == NULL || ctx->target == NULL || ctx->target->metrics == NULL) {
        return NGX_OK;
    }

    n = ctx->target->metrics;

    if (a->input_tokens > 0) {
        ngx_http_llm_count(n, metrics.input_tokens,
                           (ngx_atomic_int_t) a->input_tokens);
    }

    if (a->output_tokens > 0) {
        ngx_http_llm_count(n, metrics.output_tokens,
                           (ngx_atomic_int_t) a->output_tokens);
    }

    return NGX_OK;
}


static void
ngx_http_llm_metrics_observe(ngx_http_llm_histogram_t *h, ngx_msec_int_t ms)
{
    ngx_uint_t  i;

    if (ms < 0) {
        /* the clock went back */
        ms = 0;
    }

    for (i = 0; i < NGX_HTTP_LLM_BUCKETS - 1; i++) {
        if ((ngx_msec_t) ms <= ngx_http_llm_bucket_ms[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&h->bucket[i], 1);
    (void) ngx_atomic_fetch_add(&h->sum, ms);
}


/*
 * A route's metrics on the JSON page: its histograms, null when the
 * zone had no room for them, and its targets' tokens and outcomes
 */

void
ngx_http_llm_metrics_json(ngx_http_llm_status_t *st,
    ngx_http_llm_status_route_t *route)
{
    ngx_uint_t                     i, k, *index;
    ngx_http_llm_node_t          **pair;
    ngx_http_llm_status_target_t  *t;

    ngx_http_llm_status_literal(st, ",\"duration\":");

    if (route->metrics) {
        ngx_http_llm_metrics_json_histogram(st,
                                            &route->metrics->metrics.duration);
        ngx_http_llm_status_literal(st, ",\"ttfb\":");
        ngx_http_llm_metrics_json_histogram(st,
                                            &route->metrics->metrics.ttfb);

    } else {
        ngx_http_llm_status_literal(st, "null,\"ttfb\":null");
    }

    ngx_http_llm_status_literal(st, ",\"by_target\":{");

    index = route->targets.elts;
    pair = route->pairs.elts;
    t = st->targets.elts;

    for (i = 0, k = 0; i < route->targets.nelts; i++) {

        if (pair[i] == NULL) {
            continue;
        }

        if (k++) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_string(st, &t[index[i]].target->key);
        ngx_http_llm_status_literal(st, ":");
        ngx_http_llm_metrics_json_pair(st, pair[i]);
    }

    ngx_http_llm_status_literal(st, "}");
}


/* cumulative, as Prometheus': a bucket counts every one at most its le */

static void
ngx_http_llm_metrics_json_histogram(ngx_http_llm_status_t *st,
    ngx_http_llm_histogram_t *h)
{
    ngx_uint_t         i;
    ngx_atomic_uint_t  count;

    ngx_http_llm_status_literal(st, "{\"buckets\":{");

    count = 0;

    for (i = 0; i < NGX_HTTP_LLM_BUCKETS; i++) {
        count += h->bucket[i];

        if (i) {
            ngx_http_llm_status_literal(st, ",");
        }

        ngx_http_llm_status_string(st, &ngx_http_llm_bucket_le[i]);
        ngx_http_llm_status_literal(st, ":");
        ngx_http_llm_status_number(st, count);
    }

    ngx_http_llm_status_literal(st, "},\"count\":");
    ngx_http_llm_status_number(st, count);
    ngx_http_llm_status_literal(st, ",\"sum\":");
    ngx_http_llm_status_decimal(st, h->sum);
    ngx_http_llm_status_literal(st, "}");
}


static void
ngx_http_llm_metrics_json_pair(ngx_http_llm_status_t *st,
    ngx_http_llm_node_t *n)
{
    ngx_uint_t  i;

    ngx_http_llm_status_literal(st, "{\"input_tokens\":");
    ngx_http_llm_status_number(st, n->metrics.input_tokens);
    ngx_http_llm_status_literal(st, ",\"output_tokens\":");
    ngx_http_llm_status_number(st, n->metrics.output_tokens);
    ngx_http_llm_status_literal(st, ",\"attempts\":{\"ok\":");
    ngx_http_llm_status_number(st, n->metrics.outcomes[0]);

    for (i = 1; i < NGX_HTTP_LLM_ERR_LAST; i++) {
        ngx_http_llm_status_literal(st, ",");
        ngx_http_llm_status_string(st, &ngx_http_llm_err_names[i]);
        ngx_http_llm_status_literal(st, ":");
        ngx_http_llm_status_number(st, n->metrics.outcomes[i]);
    }

    ngx_http_llm_status_literal(st, "}}");
}


/* the families of this file in the Prometheus text, after the others */

void
ngx_http_llm_metrics_prometheus(ngx_http_llm_status_t *st)
{
    ngx_http_llm_metrics_header(st, "nginx_llm_route_request_duration_seconds",
        "histogram",
        "Time from the client request's first byte to its log, as "
        "$request_time, of the llm route's counted requests.");
    ngx_http_llm_metrics_histograms(st,
        "nginx_llm_route_request_duration_seconds",
        offsetof(ngx_http_llm_metrics_t, duration));

    ngx_http_llm_metrics_header(st,
        "nginx_llm_route_time_to_first_byte_seconds", "histogram",
        "Time to the first byte of the answer sent to the client, as "
        "$llm_ttft: for a stream its first event.");
    ngx_http_llm_metrics_histograms(st,
        "nginx_llm_route_time_to_first_byte_seconds",
        offsetof(ngx_http_llm_metrics_t, ttfb));

    ngx_http_llm_metrics_header(st, "nginx_llm_route_target_input_tokens_total",
        "counter",
        "Input tokens the llm target reported for the answers of the route.");
    ngx_http_llm_metrics_pairs(st, "nginx_llm_route_target_input_tokens_total",
                               NGX_HTTP_LLM_PAIR_INPUT);

    ngx_http_llm_metrics_header(st,
        "nginx_llm_route_target_output_tokens_total", "counter",
        "Output tokens the llm target reported for the answers of the "
        "route.");
    ngx_http_llm_metrics_pairs(st,
                               "nginx_llm_route_target_output_tokens_total",
                               NGX_HTTP_LLM_PAIR_OUTPUT);

    ngx_http_llm_metrics_header(st, "nginx_llm_route_target_attempts_total",
        "counter",
        "Attempts of the llm route at the target by outcome: ok or the "
        "error category.");
    ngx_http_llm_metrics_pairs(st, "nginx_llm_route_target_attempts_total",
                               NGX_HTTP_LLM_PAIR_OUTCOMES);
}


static void
ngx_http_llm_metrics_header(ngx_http_llm_status_t *st, char *name,
    char *type, char *help)
{
    ngx_http_llm_status_literal(st, "# HELP ");
    ngx_http_llm_status_copy(st, (u_char *) name, ngx_strlen(name));
    ngx_http_llm_status_literal(st, " ");
    ngx_http_llm_status_copy(st, (u_char *) help, ngx_strlen(help));
    ngx_http_llm_status_literal(st, "\n# TYPE ");
    ngx_http_llm_status_copy(st, (u_char *) name, ngx_strlen(name));
    ngx_http_llm_status_literal(st, " ");
    ngx_http_llm_status_copy(st, (u_char *) type, ngx_strlen(type));
    ngx_http_llm_status_literal(st, "\n");
}


/* _bucket samples, cumulative, then _sum and _count, per counted route */

static void
ngx_http_llm_metrics_histograms(ngx_http_llm_status_t *st, char *name,
    size_t offset)
{
    size_t                        len;
    ngx_uint_t                    i, b;
    ngx_atomic_uint_t             count;
    ngx_http_llm_histogram_t     *h;
    ngx_http_llm_status_route_t  *route;

    len = ngx_strlen(name);
    route = st->routes.elts;

    for (i = 0; i < st->routes.nelts; i++) {

        if (route[i].metrics == NULL) {
            continue;
        }

        h = (ngx_http_llm_histogram_t *)
                ((u_char *) &route[i].metrics->metrics + offset);

        count = 0;

        for (b = 0; b < NGX_HTTP_LLM_BUCKETS; b++) {
            count += h->bucket[b];

            ngx_http_llm_status_copy(st, (u_char *) name, len);
            ngx_http_llm_status_literal(st, "_bucket{route=\"");
            ngx_http_llm_status_label(st, route[i].name);
            ngx_http_llm_status_literal(st, "\",le=\"");
            ngx_http_llm_status_copy(st, ngx_http_llm_bucket_le[b].data,
                                     ngx_http_llm_bucket_le[b].len);
            ngx_http_llm_status_literal(st, "\"} ");
            ngx_http_llm_status_number(st, count);
            ngx_http_llm_status_literal(st, "\n");
        }

        ngx_http_llm_status_copy(st, (u_char *) name, len);
        ngx_http_llm_status_literal(st, "_sum{route=\"");
        ngx_http_llm_status_label(st, route[i].name);
        ngx_http_llm_status_literal(st, "\"} ");
        ngx_http_llm_status_decimal(st, h->sum);
        ngx_http_llm_status_literal(st, "\n");

        ngx_http_llm_status_copy(st, (u_char *) name, len);
        ngx_http_llm_status_literal(st, "_count{route=\"");
        ngx_http_llm_status_label(st, route[i].name);
        ngx_http_llm_status_literal(st, "\"} ");
        ngx_http_llm_status_number(st, count);
        ngx_http_llm_status_literal(st, "\n");
    }
}


static void
ngx_http_llm_metrics_pairs(ngx_http_llm_status_t *st, char *name,
    ngx_uint_t what)
{
    ngx_uint_t                     i, j, e, *index;
    ngx_http_llm_node_t          **pair, *n;
    ngx_http_llm_target_t         *target;
    ngx_http_llm_status_route_t   *route;
    ngx_http_llm_status_target_t  *t;

    route = st->routes.elts;
    t = st->targets.elts;

    for (i = 0; i < st->routes.nelts; i++) {
        index = route[i].targets.elts;
        pair = route[i].pairs.elts;

        for (j = 0; j < route[i].targets.nelts; j++) {
            n = pair[j];

            if (n == NULL) {
                continue;
            }

            target = t[index[j]].target;

            if (what != NGX_HTTP_LLM_PAIR_OUTCOMES) {
                ngx_http_llm_metrics_labels(st, name, route[i].name, target);
                ngx_http_llm_status_literal(st, "} ");
                ngx_http_llm_status_number(st,
                                           what == NGX_HTTP_LLM_PAIR_INPUT
                                           ? n->metrics.input_tokens
                                           : n->metrics.output_tokens);
                ngx_http_llm_status_literal(st, "\n");
                continue;
            }

            for (e = 0; e < NGX_HTTP_LLM_ERR_LAST; e++) {
                ngx_http_llm_metrics_labels(st, name, route[i].name, target);
                ngx_http_llm_status_literal(st, ",outcome=\"");

                if (e == 0) {
                    ngx_http_llm_status_literal(st, "ok");

                } else {
                    ngx_http_llm_status_copy(st,
                                             ngx_http_llm_err_names[e].data,
                                             ngx_http_llm_err_names[e].len);
                }

                ngx_http_llm_status_literal(st, "\"} ");
                ngx_http_llm_status_number(st, n->metrics.outcomes[e]);
                ngx_http_llm_status_literal(st, "\n");
            }
        }
    }
}


/* name{route="...",target="...",model="..." up to the closing brace */

static void
ngx_http_llm_metrics_labels(ngx_http_llm_status_t *st, char *name,
    ngx_str_t *route, ngx_http_llm_target_t *target)
{
    ngx_http_llm_status_copy(st, (u_char *) name, ngx_strlen(name));
    ngx_http_llm_status_literal(st, "{route=\"");
    ngx_http_llm_status_label(st, route);
    ngx_http_llm_status_literal(st, "\",target=\"");
    ngx_http_llm_status_label(st, &target->uri);
    ngx_http_llm_status_literal(st, "\",model=\"");
    ngx_http_llm_status_label(st, &target->model);
    ngx_http_llm_status_literal(st, "\"");
}
