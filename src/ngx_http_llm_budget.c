
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Retry budgets (design.md 4), on the counters of the shared zone
 * (ngx_http_llm_zone.c).
 *
 * The budget is additive, as Finagle's RetryBudget and tower's TpsBudget:
 * every client request of the route deposits ratio, every attempt after
 * the first withdraws one, and a retry is allowed while
 *
 *     retries_in_window + 1 <= min * window + ratio * requests_in_window
 *
 * The retry is counted first and taken back if it does not fit, so
 * workers racing for the last retry never both get it.
 */


static ngx_atomic_uint_t ngx_http_llm_budget_allowance(
    ngx_http_llm_loc_conf_t *llcf, ngx_uint_t cluster);
static ngx_int_t ngx_http_llm_budget_share(ngx_http_llm_loc_conf_t *llcf,
    ngx_atomic_uint_t allowance, ngx_atomic_uint_t retries);
static ngx_int_t ngx_http_llm_budget_back(ngx_http_llm_loc_conf_t *llcf);


/* llm_retry_budget [ratio=R] [min=N/s] [window=TIME] [zone=NAME] | off */

char *
ngx_http_llm_retry_budget(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    if (llcf->budget != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        llcf->budget = 0;
        return NGX_CONF_OK;
    }

    /* what is not given takes its default in merge */
    llcf->budget = 1;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "ratio=", 6) == 0) {

            if (ngx_http_llm_ratio(cf, &value[i], sizeof("ratio=") - 1,
                                   &llcf->budget_ratio)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "min=", 4) == 0) {

            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            if (s.len < 3 || ngx_strncmp(s.data + s.len - 2, "/s", 2) != 0) {
                goto invalid;
            }

            n = ngx_atoi(s.data, s.len - 2);

            if (n == NGX_ERROR || n > 100000) {
                goto invalid;
            }

            llcf->budget_min = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            if (ngx_http_llm_window(cf, &value[i], &llcf->budget_window)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {
            llcf->budget_zone.data = value[i].data + 5;
            llcf->budget_zone.len = value[i].len - 5;

            if (llcf->budget_zone.len == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/* NAME=RATIO from 0 to 1, in thousandths: ratio= and errors= */

ngx_int_t
ngx_http_llm_ratio(ngx_conf_t *cf, ngx_str_t *param, size_t skip,
    ngx_uint_t *thousandths)
{
    ngx_int_t  n;

    n = ngx_atofp(param->data + skip, param->len - skip, 3);

    if (n == NGX_ERROR || n > 1000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid ratio \"%V\", it must be "
                           "between 0 and 1", param);
        return NGX_ERROR;
    }

    *thousandths = n;

    return NGX_OK;
}


/* window=TIME: whole seconds, as many as the zone has slots for */

ngx_int_t
ngx_http_llm_window(ngx_conf_t *cf, ngx_str_t *param, ngx_uint_t *seconds)
{
    ngx_str_t   s;
    ngx_msec_t  ms;

    s.data = param->data + sizeof("window=") - 1;
    s.len = param->len - (sizeof("window=") - 1);

    ms = ngx_parse_time(&s, 0);

    if (ms == (ngx_msec_t) NGX_ERROR || ms % 1000
        || ms == 0 || ms > NGX_HTTP_LLM_WINDOW_MAX * 1000)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid window \"%V\", it must be a whole "
                           "number of seconds from 1s to 60s", param);
        return NGX_ERROR;
    }

    *seconds = ms / 1000;

    return NGX_OK;
}


/*
 * Takes one retry from the route's budget: NGX_OK, or NGX_DECLINED when
 * the budget is spent.  Without a budget (or a node) every retry passes,
 * and is counted when there is a node.
 */

ngx_int_t
ngx_http_llm_budget_withdraw(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t                cluster;
    ngx_atomic_uint_t         retries, allowance;
    ngx_http_llm_node_t      *n;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ctx->conf;
    n = llcf->node;

    if (n == NULL) {
        return NGX_OK;
    }

    ngx_http_llm_slot_add(llcf->zone, n, NGX_HTTP_LLM_RETRIES, 1);
    (void) ngx_atomic_fetch_add(&n->retries, 1);

    if (llcf->budget) {
        cluster = ngx_http_llm_route_fresh(llcf->zone, llcf->node);
        ctx->budget_cluster = cluster;

        /* thousandths, of a window that slides by the millisecond */

        allowance = ngx_http_llm_budget_allowance(llcf, cluster);
        retries = ngx_http_llm_slot_sum_smooth(n, NGX_HTTP_LLM_RETRIES,
                                               llcf->budget_window, cluster);

        if (retries > allowance
            || (cluster && ngx_http_llm_budget_share(llcf, allowance, retries)
                           != NGX_OK)
            || (cluster && ngx_http_llm_budget_back(llcf) != NGX_OK))
        {
            ngx_http_llm_slot_add(llcf->zone, n, NGX_HTTP_LLM_RETRIES, -1);
            (void) ngx_atomic_fetch_add(&n->retries, -1);
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/*
 * For a window after an outage, Redis may still miss what other nodes
 * counted alone meanwhile: they send it as they come back, over a
 * second or two.  The same after a route's first view (at a start, or
 * once it was idle here): the others judged it alone too until theirs.
 * Until those counts leave the window, a retry must fit the node's own
 * part of the budget as well, as when it counts alone.
 */

static ngx_int_t
ngx_http_llm_budget_back(ngx_http_llm_loc_conf_t *llcf)
{
    ngx_msec_t         born;
    ngx_atomic_uint_t  allowance, retries;

    born = llcf->node->view_born;

    if (!ngx_http_llm_cluster_back(llcf->zone, llcf->budget_window)
        && (born == 0
            || ngx_http_llm_wall_msec() - born >= llcf->budget_window * 1000))
    {
        return NGX_OK;
    }

    allowance = ngx_http_llm_budget_allowance(llcf, 0);
    retries = ngx_http_llm_slot_sum_smooth(llcf->node, NGX_HTTP_LLM_RETRIES,
                                           llcf->budget_window, 0);

    return retries > allowance ? NGX_DECLINED : NGX_OK;
}


/*
 * Every node judges on the same view of the cluster between two syncs:
 * were each to spend all the room it shows, N nodes would spend it N
 * times.  So since the view a node spends at most a third of its share
 * of the room the view left, by its share of the window's requests (the
 * fleet's requests all count on some node), plus what its own requests
 * deposited since.  The retry being judged is counted already in
 * retries and in n->retries.  docs/directives.md derives the overshoot.
 */

static ngx_int_t
ngx_http_llm_budget_share(ngx_http_llm_loc_conf_t *llcf,
    ngx_atomic_uint_t allowance, ngx_atomic_uint_t retries)
{
    int64_t               room, spent, deposit, own, all, share;
    ngx_uint_t            rank;
    ngx_http_llm_node_t  *n;

    n = llcf->node;

    spent = (int64_t) (n->retries - n->view_retries) * 1000;
    deposit = (int64_t) (n->requests - n->view_requests)
              * (int64_t) llcf->budget_ratio;

    /* the room as the view left it: what this node took since is back */
    room = (int64_t) allowance - (int64_t) retries + spent - deposit;

    if (room < 0) {
        room = 0;
    }

    own = ngx_http_llm_slot_sum_smooth(n, NGX_HTTP_LLM_REQUESTS,
                                       llcf->budget_window, 0);
    all = ngx_http_llm_slot_sum_smooth(n, NGX_HTTP_LLM_REQUESTS,
                                       llcf->budget_window, 1);

    /*
     * A third of it when other nodes count too: what they spend between
     * two views reaches this node's view one or two views later, so a
     * view may show a room the others already took their share of, once
     * or twice.
     */

    if (all > 0 && own == all) {
        share = room;

    } else if (all > 0 && own < all) {
        share = room * own / (3 * all);

    } else {
        share = room / (3 * ngx_http_llm_cluster_nodes(llcf->zone, &rank));
    }

    /*
     * Shares in whole retries would leave the last retries of a room
     * unspent (a room of 10 over 3 nodes: 3 each); the dither rounds a
     * share up with the odds of its fraction, so they add up to the
     * room on average.  Not a room of less than a retry: some node
     * would take one it does not hold.
     */

    if (room >= 1000) {
        share += (int64_t) n->view_dither;
    }

    return spent <= share + deposit ? NGX_OK : NGX_DECLINED;
}


/*
 * Retries the budget allows in the window, in thousandths.  The ratio
 * part adds up across nodes whatever they know of each other; the floor
 * does not: a node that judges on its own counters while Redis is away
 * takes its part of it, among the nodes Redis last counted.  The parts
 * are whole retries, split by the nodes' ranks so that they add up to
 * the floor: an equal share in thousandths would allow no retry at all
 * on any node of a fleet larger than the floor (docs/directives.md).
 */

static ngx_atomic_uint_t
ngx_http_llm_budget_allowance(ngx_http_llm_loc_conf_t *llcf,
    ngx_uint_t cluster)
{
    ngx_uint_t         nodes, rank;
    ngx_atomic_uint_t  requests, floor;

    requests = ngx_http_llm_slot_sum_smooth(llcf->node, NGX_HTTP_LLM_REQUESTS,
                                            llcf->budget_window, cluster);

    floor = (ngx_atomic_uint_t) llcf->budget_min * llcf->budget_window;

    if (!cluster) {
        nodes = ngx_http_llm_cluster_nodes(llcf->zone, &rank);

        /* node k of n: floor * (k + 1) / n - floor * k / n */
        floor = floor * (rank + 1) / nodes - floor * rank / nodes;
    }

    return floor * 1000
           + (ngx_atomic_uint_t) llcf->budget_ratio * requests / 1000;
}


/* retries the budget allows now, for the status page; -1: no budget */

ngx_msec_int_t
ngx_http_llm_budget_left(ngx_http_llm_loc_conf_t *llcf)
{
    ngx_uint_t         cluster;
    ngx_atomic_uint_t  allowance, retries;

    if (!llcf->budget || llcf->node == NULL) {
        return -1;
    }

    cluster = ngx_http_llm_route_fresh(llcf->zone, llcf->node);

    allowance = ngx_http_llm_budget_allowance(llcf, cluster);
    retries = ngx_http_llm_slot_sum_smooth(llcf->node, NGX_HTTP_LLM_RETRIES,
                                           llcf->budget_window, cluster);

    return allowance > retries ? (ngx_msec_int_t) (allowance - retries) / 1000
                               : 0;
}


void
ngx_http_llm_count_attempt(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target)
{
    ngx_http_llm_node_t      *n;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ctx->conf;
    n = llcf->node;

    ctx->attempts++;

    ngx_http_llm_count(target->node, attempts, 1);
    ngx_http_llm_count(n, attempts, 1);
}


/*
 * A client request of the route, counted (and deposited into its budget)
 * once its body passed the check, whatever follows: even when every
 * target is cooling down and no attempt is made.
 */

void
ngx_http_llm_count_request(ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_node_t      *n;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ctx->conf;
    n = llcf->node;

    if (n == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&n->requests, 1);
    ngx_http_llm_slot_add(llcf->zone, n, NGX_HTTP_LLM_REQUESTS, 1);

    ctx->budget_cluster = ngx_http_llm_route_fresh(llcf->zone, llcf->node);
}
