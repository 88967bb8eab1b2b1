
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The attempt plan of a request (design.md 2): the weighted pick among the
 * route's targets, then its fallbacks in order, targets in cooldown
 * passed over.  What follows a failed attempt is decided in
 * ngx_http_llm_decide.c.
 */


static void ngx_http_llm_split_value(ngx_http_request_t *r,
    ngx_http_llm_loc_conf_t *conf, ngx_str_t *key);


/*
 * The weighted pick among llm_target (weight 0: never picked): each
 * target owns a range of [0, total weight), in the order of the
 * configuration, as split_clients lays out its percentages.  With
 * llm_split_key the point in that space is the key's MurmurHash2, scaled,
 * so one key stays on one target while the weights stay, and a change of
 * weights moves only the keys between the boundaries that moved; else it
 * is random.  The key's value is neither kept nor logged: only its bucket
 * is, for $llm_split_bucket.
 */

ngx_http_llm_target_t *
ngx_http_llm_pick(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    uint32_t                hash;
    ngx_str_t               key;
    ngx_uint_t              i, n;
    ngx_http_llm_target_t  *target;

    target = ctx->conf->targets->elts;

    if (ctx->conf->split_key) {

        ngx_http_llm_split_value(r, ctx->conf, &key);

        if (key.len) {
            hash = ngx_murmur_hash2(key.data, key.len);

            ctx->split_bucket = (ngx_int_t)
                (((uint64_t) hash * NGX_HTTP_LLM_SPLIT_BUCKETS) >> 32);

            n = (ngx_uint_t)
                (((uint64_t) hash * ctx->conf->total_weight) >> 32);

            goto found;
        }
    }

    if (ctx->conf->targets->nelts == 1) {
        return target;
    }

    n = (ngx_uint_t) ngx_random() % ctx->conf->total_weight;

found:

    for (i = 0; n >= target[i].weight; i++) {
        n -= target[i].weight;
    }

    if (target[i].canary && ngx_http_llm_canary_held(ctx, &target[i])) {
        /* a canary on hold: its keys and share go to the heaviest */
        i = ctx->conf->canary_heaviest;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->log, 0,
                   "llm pick \"%V\", bucket %i", &target[i].key,
                   ctx->split_bucket);

    return &target[i];
}


/*
 * The value of llm_split_key.  A key that is one request header
 * ("$http_authorization", the usual case) is found by the header's hash,
 * which the parser computed, instead of through the variable, which
 * compares every header's name byte by byte and copies the value: that
 * keeps the sticky pick within a couple of hundred instructions.  When
 * the header comes more than once, the variable's value is the one used,
 * as nginx joins the lines since 1.23.
 */

static void
ngx_http_llm_split_value(ngx_http_request_t *r, ngx_http_llm_loc_conf_t *conf,
    ngx_str_t *key)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h, *found;

    if (conf->split_header.len == 0) {
        goto complex;
    }

    found = NULL;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != conf->split_hash
            || h[i].key.len != conf->split_header.len
            || ngx_strncmp(h[i].lowcase_key, conf->split_header.data,
                           conf->split_header.len) != 0)
        {
            continue;
        }

        if (found) {
            goto complex;
        }

        found = &h[i];
    }

    if (found) {
        *key = found->value;

    } else {
        key->len = 0;
    }

    return;

complex:

    if (ngx_http_complex_value(r, conf->split_key, key) != NGX_OK) {
        key->len = 0;
    }
}


/* step 0 is the picked target, step n the n-th llm_fallback */

ngx_http_llm_target_t *
ngx_http_llm_plan_target(ngx_http_llm_ctx_t *ctx, ngx_uint_t step)
{
    ngx_http_llm_target_t  *fallback;

    if (step == 0) {
        return ctx->picked;
    }

    if (ctx->conf->fallbacks == NULL || step > ctx->conf->fallbacks->nelts) {
        return NULL;
    }

    fallback = ctx->conf->fallbacks->elts;

    return &fallback[step - 1];
}


/*
 * The target of the current step, skipping those that are cooling down
 * and fallbacks whose catalog does not list the client's model: each is
 * recorded in the attempt lists as skipped, and the plan moves on at
 * once.  NULL when no target is left.
 */

ngx_http_llm_target_t *
ngx_http_llm_plan_skip(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t               cooling;
    ngx_http_llm_target_t   *target;
    ngx_http_llm_attempt_t  *at;

    for ( ;; ) {
        target = ngx_http_llm_plan_target(ctx, ctx->step);

        if (target == NULL) {
            return NULL;
        }

        cooling = (ngx_http_llm_target_cooling(target) != 0);

        if (!cooling && ngx_http_llm_catalog_serves(ctx, target)) {
            return target;
        }

        at = ngx_http_llm_plan_record(ctx, target, 1);
        if (at == NULL) {
            return NULL;
        }

        if (cooling) {
            ngx_http_llm_count(target->node, skipped, 1);
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->log, 0,
                       "llm target \"%V\" skipped, %s", &target->key,
                       cooling ? "cooling down" : "model not in its catalog");

        ctx->step++;
        ctx->step_tries = 0;
    }
}


/* the record of a target tried or skipped, for the $llm_attempt_* lists */

ngx_http_llm_attempt_t *
ngx_http_llm_plan_record(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target, ngx_uint_t skipped)
{
    ngx_http_llm_attempt_t  *at;

    at = ngx_array_push(&ctx->tried);
    if (at == NULL) {
        return NULL;
    }

    at->target = target;
    at->status = 0;
    at->error = NGX_HTTP_LLM_ERR_NONE;
    at->time = 0;
    at->skipped = skipped;

    return at;
}


/*
 * A route's outage, logged as it begins and as it ends, with the count of
 * what happened meanwhile, never once per request: "on" tells that a
 * request met it (every target cooling down, the retry budget spent),
 * "off" that one got through.  Workers race through the zone's atomics;
 * only the one that flips the state logs.
 */

void
ngx_http_llm_outage(ngx_http_llm_ctx_t *ctx, ngx_uint_t outage,
    ngx_uint_t on)
{
    char                 *begins;
    ngx_atomic_t         *state, *count;
    ngx_atomic_uint_t     n;
    ngx_http_llm_node_t  *node;

    node = ctx->conf->node;

    if (outage == NGX_HTTP_LLM_OUTAGE_COOLING) {
        begins = "every target is cooling down, answering 503";

    } else {
        begins = "retry budget exhausted, retries refused";
    }

    if (node == NULL) {
        /* not counted (the zone is full): nothing to tell the state by */
        if (on) {
            ngx_log_error(NGX_LOG_WARN, ctx->log, 0,
                          "llm route \"%V\": %s", &ctx->conf->route,
                          begins);
        }

        return;
    }

    if (outage == NGX_HTTP_LLM_OUTAGE_COOLING) {
        state = &node->all_cooling;
        count = &node->all_cooling_answers;

    } else {
        state = &node->budget_out;
        count = &node->budget_refusals;
    }

    if (on) {
        (void) ngx_atomic_fetch_add(count, 1);

        if (*state == 0 && ngx_atomic_cmp_set(state, 0, 1)) {
            ngx_log_error(NGX_LOG_WARN, ctx->log, 0,
                          "llm route \"%V\": %s", &ctx->conf->route,
                          begins);
        }

        return;
    }

    if (*state == 0 || !ngx_atomic_cmp_set(state, 1, 0)) {
        return;
    }

    do {
        n = *count;
    } while (!ngx_atomic_cmp_set(count, n, 0));

    if (outage == NGX_HTTP_LLM_OUTAGE_COOLING) {
        ngx_log_error(NGX_LOG_WARN, ctx->log, 0,
                      "llm route \"%V\": a target is back after %uA "
                      "request%s answered 503", &ctx->conf->route, n,
                      n == 1 ? "" : "s");

    } else {
        ngx_log_error(NGX_LOG_WARN, ctx->log, 0,
                      "llm route \"%V\": retry budget available again "
                      "after %uA retr%s refused", &ctx->conf->route, n,
                      n == 1 ? "y" : "ies");
    }
}


/* retry-after-ms first (finer), then Retry-After; -1: none */

ngx_msec_int_t
ngx_http_llm_retry_after(ngx_http_request_t *sr)
{
    ngx_uint_t        i, ms;
    ngx_msec_int_t    found, v;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    found = -1;

    part = &sr->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0) {
            continue;
        }

        if (h[i].key.len == sizeof("retry-after-ms") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "retry-after-ms",
                               h[i].key.len) == 0)
        {
            ms = 1;

        } else if (h[i].key.len == sizeof("Retry-After") - 1
                   && ngx_strncasecmp(h[i].key.data,
                                      (u_char *) "Retry-After",
                                      h[i].key.len) == 0)
        {
            if (found != -1) {
                continue;
            }

            ms = 0;

        } else {
            continue;
        }

        v = ngx_http_llm_parse_retry_after(h[i].value.data, h[i].value.len,
                                           ms);

        if (v >= 0 && (ms || found == -1)) {
            found = v;
        }
    }

    return found;
}
