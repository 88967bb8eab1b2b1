
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_DECIDE_H_INCLUDED_
#define _NGX_HTTP_LLM_DECIDE_H_INCLUDED_


/*
 * Where the answer of the latest attempt stands (design.md 2, "The
 * attempt's state").  ctx->state is written only by
 * ngx_http_llm_attempt_set_state(), which refuses a transition its table
 * does not list.  Committed states come last: ngx_http_llm_committed().
 */

typedef enum {
    NGX_HTTP_LLM_ATTEMPT_NONE = 0,  /* no attempt made yet */
    NGX_HTTP_LLM_ATTEMPT_SENT,      /* in flight, no answer header yet */
    NGX_HTTP_LLM_ATTEMPT_INVALID,   /* a reply without a status line */
    NGX_HTTP_LLM_ATTEMPT_HELD,      /* an error answer kept back */
    NGX_HTTP_LLM_ATTEMPT_CHECKING,  /* a good answer kept, llm_check_answer */
    NGX_HTTP_LLM_ATTEMPT_DROPPED,   /* held, decided early: another follows */
    NGX_HTTP_LLM_ATTEMPT_COMMITTED, /* the client got its headers */
    NGX_HTTP_LLM_ATTEMPT_PASSED,    /* held, decided early: committed */
    NGX_HTTP_LLM_ATTEMPT_STATES
} ngx_http_llm_state_e;


/* the client got the headers of an answer: no attempt follows */
#define ngx_http_llm_committed(ctx)                                          \
    ((ctx)->state >= NGX_HTTP_LLM_ATTEMPT_COMMITTED)

/* an answer of the attempt is kept in ctx->answer_body */
#define ngx_http_llm_kept(ctx)                                               \
    ((ctx)->state == NGX_HTTP_LLM_ATTEMPT_HELD                               \
     || (ctx)->state == NGX_HTTP_LLM_ATTEMPT_CHECKING                        \
     || (ctx)->state == NGX_HTTP_LLM_ATTEMPT_DROPPED)


/* when ngx_http_llm_decide() is asked */
#define NGX_HTTP_LLM_DECIDE_ASK      0  /* may any attempt follow? */
#define NGX_HTTP_LLM_DECIDE_HEADER   1  /* an error answer's header came */
#define NGX_HTTP_LLM_DECIDE_EARLY    2  /* a held answer too long to keep */
#define NGX_HTTP_LLM_DECIDE_END      3  /* the attempt ended: ctx->error */
#define NGX_HTTP_LLM_DECIDE_NEXT     4  /* the client request resumes */
#define NGX_HTTP_LLM_DECIDE_REFUSED  5  /* the gateway refused: no attempt */


void ngx_http_llm_attempt_set_state(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_state_e state);
ngx_uint_t ngx_http_llm_decide(ngx_http_llm_ctx_t *ctx, ngx_uint_t when);
ngx_msec_int_t ngx_http_llm_cooldown_wait(ngx_http_llm_ctx_t *ctx);


#endif /* _NGX_HTTP_LLM_DECIDE_H_INCLUDED_ */
