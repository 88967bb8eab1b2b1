
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The decision point of the attempt engine (design.md 2): the one owner
 * of ctx->state, the attempt's state, and of ctx->decision, what follows
 * a failed attempt.
 */


/* an error not known yet: NGX_HTTP_LLM_DECIDE_ASK and _HEADER */
#define NGX_HTTP_LLM_ERR_ANY  NGX_HTTP_LLM_ERR_LAST

#define ngx_http_llm_bit(s)   (1 << NGX_HTTP_LLM_ATTEMPT_##s)


static ngx_uint_t ngx_http_llm_decide_failed(ngx_http_llm_ctx_t *ctx);
static ngx_uint_t ngx_http_llm_decide_rules(ngx_http_llm_ctx_t *ctx,
    ngx_uint_t err, ngx_msec_t *wait);
static ngx_uint_t ngx_http_llm_decide_usable(ngx_http_llm_ctx_t *ctx,
    ngx_uint_t step);
static ngx_msec_t ngx_http_llm_backoff_delay(ngx_http_llm_ctx_t *ctx);


/*
 * The states each state may move to.  An answer replayed at the end
 * (ngx_http_llm_replay) commits from whatever state the latest attempt
 * left: the answer replayed may be an earlier attempt's.
 */

static ngx_uint_t  ngx_http_llm_transitions[NGX_HTTP_LLM_ATTEMPT_STATES] = {

    /* NONE */      ngx_http_llm_bit(SENT),

    /* SENT */      ngx_http_llm_bit(SENT) | ngx_http_llm_bit(INVALID)
                    | ngx_http_llm_bit(HELD) | ngx_http_llm_bit(CHECKING)
                    | ngx_http_llm_bit(COMMITTED),

    /* INVALID */   ngx_http_llm_bit(SENT) | ngx_http_llm_bit(COMMITTED),

    /* HELD */      ngx_http_llm_bit(SENT) | ngx_http_llm_bit(DROPPED)
                    | ngx_http_llm_bit(PASSED) | ngx_http_llm_bit(COMMITTED),

    /* CHECKING */  ngx_http_llm_bit(SENT) | ngx_http_llm_bit(COMMITTED),

    /* DROPPED */   ngx_http_llm_bit(SENT),

    /* COMMITTED */ 0,

    /* PASSED */    0
};


/* $llm_retry_decision */

ngx_str_t  ngx_http_llm_decision_names[] = {
    ngx_string("-"),
    ngx_string("retry"),
    ngx_string("fallback"),
    ngx_string("not_retryable"),
    ngx_string("attempts_exhausted"),
    ngx_string("deadline"),
    ngx_string("budget_exhausted"),
    ngx_null_string
};


static ngx_str_t  ngx_http_llm_state_names[] = {
    ngx_string("none"),
    ngx_string("sent"),
    ngx_string("invalid"),
    ngx_string("held"),
    ngx_string("checking"),
    ngx_string("dropped"),
    ngx_string("committed"),
    ngx_string("passed")
};


/*
 * The attempt's state (design.md 2, "The attempt's state").  A
 * transition the table does not list is a bug of the module: it is
 * logged at alert level in every build (the tests fail on an alert), and
 * made all the same, so the request ends as it would have.
 */

void
ngx_http_llm_attempt_set_state(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_state_e state)
{
    if (!(ngx_http_llm_transitions[ctx->state] & (1 << state))) {
        ngx_log_error(NGX_LOG_ALERT, ctx->log, 0,
                      "llm attempt state \"%V\" cannot become \"%V\"",
                      &ngx_http_llm_state_names[ctx->state],
                      &ngx_http_llm_state_names[state]);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->log, 0,
                   "llm attempt state %V -> %V",
                   &ngx_http_llm_state_names[ctx->state],
                   &ngx_http_llm_state_names[state]);

    if (state == NGX_HTTP_LLM_ATTEMPT_SENT) {
        /* what the answer's bytes told of the previous attempt */
        ctx->answered = 0;
        ctx->attempt_done = 0;
    }

    ctx->state = state;
}


/*
 * The one decision after an attempt (design.md 2, "The decision"): the
 * filters and the end of an attempt ask it; only here are the rules, and
 * only here is ctx->decision written.
 *
 *   ASK       may any attempt follow the one in flight, whatever its
 *             error?  NGX_HTTP_LLM_DECISION_NONE if one may, else why
 *             not; nothing is recorded (llm_check_answer asks it);
 *   HEADER    the same, for an error answer whose header came: NONE, it
 *             is held back; else it goes on to the client, and the reason
 *             is recorded (x-should-retry), until the attempt's end
 *             decides with the error's category;
 *   EARLY     a held error answer too long to keep, classified from its
 *             beginning (ctx->error): decided on now, as at NEXT;
 *   END       the attempt ended, classified (ctx->error), before its log
 *             line (log_subrequest) is written: a client gone
 *             (client_closed) is no decision, and is not counted; a
 *             committed answer that failed is decided on for the record;
 *             else the decision is left to NEXT;
 *   NEXT      the client request resumes after a failed attempt, the
 *             failure told to the target's counters and cooldown: what
 *             follows, recorded, counted, a retry or a fallback taken from
 *             the retry budget and the plan moved on (ctx->step,
 *             ctx->wait), unless it was decided on EARLY;
 *   REFUSED   the gateway refused the request before any attempt.
 */

ngx_uint_t
ngx_http_llm_decide(ngx_http_llm_ctx_t *ctx, ngx_uint_t when)
{
    ngx_uint_t  d;

    switch (when) {

    case NGX_HTTP_LLM_DECIDE_ASK:
        return ngx_http_llm_decide_rules(ctx, NGX_HTTP_LLM_ERR_ANY, NULL);

    case NGX_HTTP_LLM_DECIDE_HEADER:
        d = ngx_http_llm_decide_rules(ctx, NGX_HTTP_LLM_ERR_ANY, NULL);

        if (d != NGX_HTTP_LLM_DECISION_NONE) {
            ctx->decision = d;
        }

        return d;

    case NGX_HTTP_LLM_DECIDE_REFUSED:
        ctx->decision = NGX_HTTP_LLM_DECISION_NOT_RETRYABLE;
        return ctx->decision;

    case NGX_HTTP_LLM_DECIDE_END:

        if (ctx->error == NGX_HTTP_LLM_ERR_CLIENT_CLOSED) {
            /* nothing follows a client gone, and nothing is counted */
            ctx->decision = NGX_HTTP_LLM_DECISION_NONE;
            return ctx->decision;
        }

        if (ctx->state != NGX_HTTP_LLM_ATTEMPT_COMMITTED
            || ctx->error == NGX_HTTP_LLM_ERR_NONE)
        {
            return ctx->decision;
        }

        break;

    case NGX_HTTP_LLM_DECIDE_NEXT:

        if (ctx->state == NGX_HTTP_LLM_ATTEMPT_DROPPED) {
            return ctx->decision;
        }

        break;
    }

    /* EARLY, END of a committed answer, NEXT */

    return ngx_http_llm_decide_failed(ctx);
}


/*
 * A failed attempt: what follows, recorded and counted; a retry or a
 * fallback is taken from the retry budget, and moves the plan on.
 */

static ngx_uint_t
ngx_http_llm_decide_failed(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t  d;
    ngx_msec_t  wait;

    ctx->wait = 0;

    d = ngx_http_llm_decide_rules(ctx, ctx->error, &wait);

    if (ngx_http_llm_committed(ctx)
        && (d == NGX_HTTP_LLM_DECISION_RETRY
            || d == NGX_HTTP_LLM_DECISION_FALLBACK))
    {
        /*
         * an answer the client has: nothing follows it (a target that
         * came back from a cooldown since its header does not change it)
         */
        d = NGX_HTTP_LLM_DECISION_EXHAUSTED;
    }

    if (d == NGX_HTTP_LLM_DECISION_RETRY
        || d == NGX_HTTP_LLM_DECISION_FALLBACK)
    {
        /* every attempt after the first needs the route's budget */

        if (ngx_http_llm_budget_withdraw(ctx) != NGX_OK) {

            if (d == NGX_HTTP_LLM_DECISION_FALLBACK) {
                ctx->step_tries = ctx->target->tries;
            }

            d = NGX_HTTP_LLM_DECISION_BUDGET;

            ngx_http_llm_outage(ctx, NGX_HTTP_LLM_OUTAGE_BUDGET, 1);

        } else {
            ngx_http_llm_outage(ctx, NGX_HTTP_LLM_OUTAGE_BUDGET, 0);

            if (d == NGX_HTTP_LLM_DECISION_FALLBACK) {
                ctx->step++;
                ctx->step_tries = 0;

            } else {
                ctx->wait = wait;
            }
        }
    }

    if (ctx->conf->node && d < NGX_HTTP_LLM_DECISIONS) {
        (void) ngx_atomic_fetch_add(&ctx->conf->node->decisions[d], 1);
    }

    ctx->decision = d;

    return d;
}


/*
 * The rules, by design.md 2, with no side effect: only categories listed
 * in llm_retry_on go on; the same target again while its tries= last
 * (never for errors that the same target would repeat, nor when its own
 * failure put it in cooldown), after *wait; else the next step of the
 * plan, if one from there on may be tried now; within llm_attempts and
 * llm_deadline.  A Retry-After longer than llm_backoff max moves on to
 * the next target at once.  With err NGX_HTTP_LLM_ERR_ANY (the error not
 * known yet) the answer is whether anything may follow: NONE if so.
 */

static ngx_uint_t
ngx_http_llm_decide_rules(ngx_http_llm_ctx_t *ctx, ngx_uint_t err,
    ngx_msec_t *wait)
{
    ngx_uint_t                any, same, late;
    ngx_msec_t                elapsed, w;
    ngx_http_llm_loc_conf_t  *conf;

    conf = ctx->conf;
    any = (err == NGX_HTTP_LLM_ERR_ANY);

    if (!any
        && (err == NGX_HTTP_LLM_ERR_NONE
            || err == NGX_HTTP_LLM_ERR_STREAM_INTERRUPTED
            || !(conf->retry_on & (1 << err))))
    {
        return NGX_HTTP_LLM_DECISION_NOT_RETRYABLE;
    }

    if (!ctx->can_retry) {
        return NGX_HTTP_LLM_DECISION_NOT_RETRYABLE;
    }

    if (ctx->attempts >= conf->attempts) {
        return NGX_HTTP_LLM_DECISION_EXHAUSTED;
    }

    elapsed = ngx_current_msec - ctx->start;

    if (conf->deadline && elapsed >= conf->deadline) {
        return NGX_HTTP_LLM_DECISION_DEADLINE;
    }

    late = 0;

    if (ctx->step_tries < ctx->target->tries) {

        if (any) {
            return NGX_HTTP_LLM_DECISION_NONE;
        }

        same = ngx_http_llm_target_cooling(ctx->target) == 0
               && err != NGX_HTTP_LLM_ERR_QUOTA
               && err != NGX_HTTP_LLM_ERR_AUTH
               && err != NGX_HTTP_LLM_ERR_CONTEXT_LENGTH
               && err != NGX_HTTP_LLM_ERR_INVALID_REQUEST
               && err != NGX_HTTP_LLM_ERR_CONTENT_FILTER;

        if (same) {
            if (ctx->retry_after >= 0) {
                w = (ngx_msec_t) ctx->retry_after;
                same = (w <= conf->backoff_max);

            } else {
                w = ngx_http_llm_backoff_delay(ctx);
            }

            if (same && conf->deadline && elapsed + w >= conf->deadline) {
                same = 0;
                late = 1;
            }

            if (same) {
                *wait = w;
                return NGX_HTTP_LLM_DECISION_RETRY;
            }
        }
    }

    /* moving to a fallback does not wait */

    if (ngx_http_llm_decide_usable(ctx, ctx->step + 1)) {
        return any ? NGX_HTTP_LLM_DECISION_NONE
                   : NGX_HTTP_LLM_DECISION_FALLBACK;
    }

    return late ? NGX_HTTP_LLM_DECISION_DEADLINE
                : NGX_HTTP_LLM_DECISION_EXHAUSTED;
}


/*
 * Whether a step from "step" on has a target that may be tried now: not
 * cooling down, serving the client's model.
 */

static ngx_uint_t
ngx_http_llm_decide_usable(ngx_http_llm_ctx_t *ctx, ngx_uint_t step)
{
    ngx_http_llm_target_t  *target;

    for ( /* void */ ; (target = ngx_http_llm_plan_target(ctx, step)); step++)
    {
        if (ngx_http_llm_target_cooling(target) == 0
            && ngx_http_llm_catalog_serves(ctx, target))
        {
            return 1;
        }
    }

    return 0;
}


/*
 * Exponential backoff with full jitter: a random wait in
 * [0, min(max, base * 2^(n-1))] before the n-th retry on a target.
 */

static ngx_msec_t
ngx_http_llm_backoff_delay(ngx_http_llm_ctx_t *ctx)
{
    ngx_uint_t                n;
    ngx_msec_t                cap;
    ngx_http_llm_loc_conf_t  *conf;

    conf = ctx->conf;
    cap = conf->backoff_base;

    for (n = 1; n < ctx->step_tries && cap < conf->backoff_max; n++) {
        cap *= 2;
    }

    cap = ngx_min(cap, conf->backoff_max);

    if (cap == 0) {
        return 0;
    }

    return (ngx_msec_t) ngx_random() % (cap + 1);
}


/*
 * A provider that asks for a wait longer than the route waits (rate
 * limits, quota, overload with a Retry-After above llm_backoff max) is
 * left alone for that long by every worker.
 */

ngx_msec_int_t
ngx_http_llm_cooldown_wait(ngx_http_llm_ctx_t *ctx)
{
    if (ctx->retry_after > (ngx_msec_int_t) ctx->conf->backoff_max
        && (ctx->error == NGX_HTTP_LLM_ERR_RATE_LIMITED
            || ctx->error == NGX_HTTP_LLM_ERR_QUOTA
            || ctx->error == NGX_HTTP_LLM_ERR_OVERLOADED))
    {
        return ctx->retry_after;
    }

    return 0;
}
