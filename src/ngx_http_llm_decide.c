
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The attempt's state (design.md 2, "The attempt's state"): the one
 * owner of ctx->state.
 */


#define ngx_http_llm_bit(s)  (1 << NGX_HTTP_LLM_ATTEMPT_##s)


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
 * A transition the table does not list is a bug of the module: it is
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
