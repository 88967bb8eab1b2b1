
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ANSWER_H_INCLUDED_
#define _NGX_HTTP_LLM_ANSWER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_limits.h"


/* $llm_response_shape */
#define NGX_HTTP_LLM_SHAPE_UNCHECKED   0
#define NGX_HTTP_LLM_SHAPE_OK          1
#define NGX_HTTP_LLM_SHAPE_MISMATCH    2

/* the response model kept, in bytes, decoded: as long as any model name */
#define NGX_HTTP_LLM_ANSWER_MODEL_MAX  NGX_HTTP_LLM_MODEL_MAX


/*
 * What the module learns from a provider's answer while its bytes pass
 * to the client (design.md 1, 5): token usage, the model that answered,
 * whether the answer has the documented shape for the route's family,
 * and, for a stream, whether it ended properly or with an in-band error
 * event.  Fed the body piece by piece, it never holds or changes the
 * bytes, and its memory does not grow with the answer.
 *
 * The results do not depend on how the body is cut into pieces.  They
 * are final after ngx_http_llm_answer_end(); before that they hold what
 * the body said so far (a stream's events as they are dispatched).
 *
 *   input_tokens, output_tokens: usage.prompt_tokens/completion_tokens or
 *     usage.input_tokens/output_tokens of the body, of a chat chunk, of
 *     response.usage (Responses), of message.usage and usage (Anthropic's
 *     message_start and message_delta); a later usage overrides; a value
 *     that is not a JSON integer >= 0 counts as absent.
 *   model: the first top-level "model" (message.model, response.model in
 *     a stream), decoded; cut to at most MODEL_MAX bytes at a character;
 *     unknown when not valid UTF-8 (ngx_http_llm_json_string()).
 *   shape: OK or MISMATCH for chat, responses, messages, embeddings and
 *     completions; a stream is MISMATCH once one event is; an error
 *     object (or event) is a MISMATCH too.  UNCHECKED: other families,
 *     or nothing judged yet.
 *   error: NGX_HTTP_LLM_ERR_* of the first in-band error: an SSE error
 *     event, a data object with an "error" member, response.failed, or a
 *     whole JSON answer that is an error object.
 *   done: the stream's end was dispatched: message_stop (messages),
 *     response.completed, response.incomplete or response.failed
 *     (responses), "[DONE]" (other families).
 *
 * An event cut by the end of the stream is not dispatched (WHATWG).
 */

typedef struct {
    /* results */
    off_t          input_tokens;    /* -1: unknown */
    off_t          output_tokens;   /* -1: unknown */
    u_char         model[NGX_HTTP_LLM_ANSWER_MODEL_MAX];
    size_t         model_len;       /* 0: unknown */
    ngx_uint_t     shape;           /* NGX_HTTP_LLM_SHAPE_* */
    ngx_uint_t     error;           /* in-band error: NGX_HTTP_LLM_ERR_* */
    ngx_uint_t     events;          /* SSE events dispatched */
    unsigned       sse:1;           /* fed as text/event-stream */
    unsigned       done:1;          /* the stream's own end was seen */

    /*
     * set by the caller before the first byte of a plain answer: only
     * the shape is wanted (llm_check_answer when no variable reads the
     * answer); usage, model and error are then left unknown, and the
     * values they come from are not kept
     */
    unsigned       shape_only:1;

    /* the implementation's state follows; opaque to callers */
    void          *state;
} ngx_http_llm_answer_t;


/*
 * family: NGX_HTTP_LLM_FAMILY_* of ngx_http_llm_module.h; sse: the answer
 * is text/event-stream.  The state is a large allocation of pool
 * (ngx_pmemalign(), under 1.5 KB), the buffers of longer values small
 * ones when they come.  No yajl handle outlives a call (each located
 * value is parsed whole when its document ends), so an answer abandoned
 * before ngx_http_llm_answer_end() leaves nothing to free.  NGX_ERROR:
 * out of memory.
 */
ngx_int_t ngx_http_llm_answer_init(ngx_http_llm_answer_t *a, ngx_pool_t *pool,
    ngx_uint_t family, ngx_uint_t sse);
void ngx_http_llm_answer_feed(ngx_http_llm_answer_t *a, u_char *p,
    u_char *last);
void ngx_http_llm_answer_end(ngx_http_llm_answer_t *a);


#endif /* _NGX_HTTP_LLM_ANSWER_H_INCLUDED_ */
