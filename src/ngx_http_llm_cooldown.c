
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Target cooldowns (design.md 3, 4): a target that failed fails= times in a
 * window=, or that a provider asked to wait with Retry-After, is skipped
 * until its cooldown ends, on every worker and, through Redis, on every
 * node.
 */


/*
 * llm_cooldown [fails=N] [window=TIME] [time=TIME] [max=TIME]
 * llm_cooldown off [max=TIME]
 *
 * max= bounds every cooldown of the route's targets, those a provider
 * asks for with Retry-After too: "off" turns off only the cooldowns of
 * repeated failures.
 */

char *
ngx_http_llm_cooldown(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s, *time, *max;
    ngx_msec_t   ms;
    ngx_uint_t   i, off;

    static ngx_str_t  default_max = ngx_string("max=5m");

    if (llcf->cooldown != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    off = (cf->args->nelts > 1 && ngx_strcmp(value[1].data, "off") == 0);

    /* what is not given takes its default in merge */

    llcf->cooldown = !off;

    if (off) {
        llcf->cooldown_fails = 0;
        llcf->cooldown_window = 0;
        llcf->cooldown_time = 0;
    }

    time = NULL;
    max = NULL;

    for (i = off ? 2 : 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "max=", 4) == 0) {

            s.data = value[i].data + 4;
            s.len = value[i].len - 4;

            ms = ngx_parse_time(&s, 0);

            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0
                || ms > (ngx_msec_t) NGX_HTTP_LLM_RETRY_AFTER_MAX)
            {
                goto invalid;
            }

            llcf->cooldown_max = ms;
            max = &value[i];
            continue;
        }

        if (off) {
            goto invalid;
        }

        if (ngx_strncmp(value[i].data, "fails=", 6) == 0) {

            n = ngx_atoi(value[i].data + 6, value[i].len - 6);

            if (n == NGX_ERROR || n == 0 || n > 100000) {
                goto invalid;
            }

            llcf->cooldown_fails = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "window=", 7) == 0) {
            if (ngx_http_llm_window(cf, &value[i], &llcf->cooldown_window)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "time=", 5) == 0) {

            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            ms = ngx_parse_time(&s, 0);

            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                goto invalid;
            }

            llcf->cooldown_time = ms;
            time = &value[i];
            continue;
        }

        goto invalid;
    }

    /* a time= without max= is checked against max='s default */

    if (time
        && llcf->cooldown_time > (max ? llcf->cooldown_max
                                      : NGX_HTTP_LLM_COOLDOWN_MAX_DEFAULT))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must not be longer than \"%V\"",
                           time, max ? max : &default_max);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * A failed attempt on a target.  The target cools down (no attempt goes
 * there, from any worker) for wait ms when the provider asked for a wait
 * longer than the route waits (a Retry-After above llm_backoff max), or
 * for llm_cooldown time= once it failed fails= times in window=; never
 * longer than the target's max= (one Retry-After of a year must not take
 * it out for a year, docs/directives.md).  Errors
 * that belong to the request (invalid_request, context_length,
 * content_filter) say nothing of the target's health and do not count.
 */

void
ngx_http_llm_target_failed(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target, ngx_uint_t err, ngx_msec_int_t wait)
{
    ngx_msec_t                now, until, old, cap;
    ngx_atomic_uint_t         fails;
    ngx_http_llm_node_t      *n;
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ctx->conf;
    n = target->node;

    if (n == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&n->errors[err], 1);
    ngx_http_llm_used(n);

    if (err == NGX_HTTP_LLM_ERR_INVALID_REQUEST
        || err == NGX_HTTP_LLM_ERR_CONTEXT_LENGTH
        || err == NGX_HTTP_LLM_ERR_CONTENT_FILTER
        || err == NGX_HTTP_LLM_ERR_NONE)
    {
        return;
    }

    ngx_http_llm_slot_add(llcf->zone, n, NGX_HTTP_LLM_FAILURES, 1);

    now = ngx_http_llm_wall_msec();
    until = 0;

    if (wait > 0) {
        /* a provider's wait, however far, is capped below */
        until = now + wait;

    } else if (llcf->cooldown_fails) {
        /* failures are this node's own: each node judges its links */
        fails = ngx_http_llm_slot_sum(n, NGX_HTTP_LLM_FAILURES,
                                      llcf->cooldown_window, 0);

        if (fails >= llcf->cooldown_fails) {
            until = now + llcf->cooldown_time;
        }
    }

    if (until == 0) {
        return;
    }

    cap = n->cooldown_max;

    if (cap && until > now + cap) {
        until = now + cap;
    }

    /* the later end wins; only the worker that starts a cooldown logs */

    for ( ;; ) {
        old = n->cooldown_until;

        if (old >= until) {
            return;
        }

        if (ngx_atomic_cmp_set(&n->cooldown_until, old, until)) {
            break;
        }
    }

    if (old <= now) {
        (void) ngx_atomic_fetch_add(&n->cooldowns, 1);

        ngx_log_error(NGX_LOG_WARN, ctx->log, 0,
                      "llm target \"%V\" cooling down for %M ms after %V",
                      &target->key, until - now,
                      &ngx_http_llm_err_names[err]);
    }
}


/* ms left of the target's cooldown; 0 when it may be tried */

ngx_msec_int_t
ngx_http_llm_target_cooling(ngx_http_llm_target_t *target)
{
    ngx_msec_t  now, until;

    if (target->node == NULL) {
        return 0;
    }

    until = target->node->cooldown_until;

    if (until == 0) {
        return 0;
    }

    now = ngx_http_llm_wall_msec();

    return until > now ? (ngx_msec_int_t) (until - now) : 0;
}
