
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_answer_int.h"


/*
 * An answer can be megabytes of completion text, so it is never parsed
 * whole (design.md 1).  A structural scan as in ngx_http_llm_scan.c
 * (strings skipped with memchr(), brackets counted) walks each JSON
 * document: the body of a plain answer, or the data of one SSE event.
 * It follows the members of the top-level object and, in a stream, of
 * its "message" (Anthropic) or "response" (Responses API) object, and
 * keeps the raw bytes of the few values looked at, each up to a bound:
 *
 *     model, message.model, response.model        the model
 *     usage, message.usage, response.usage        the token counts
 *     object, type, message.type, response.object the shape
 *     error, response.error                       an in-band error
 *     choices, output, content, data              present or not
 *
 * When the document ends, yajl parses the kept values, small and whole,
 * and nothing else.  The first bytes of each document are kept too: an
 * error event is classified from them.  Values nested deeper, such as a
 * "usage" key inside tool arguments, are only bracket-counted.
 *
 * SSE framing follows the WHATWG rules; data lines are not buffered but
 * streamed through the scan as they pass, so a huge data line costs no
 * memory.  The state is one allocation of under a kilobyte; a value
 * longer than kept there (a usage object, a long first event) grows a
 * buffer of its own from the pool, once per answer, up to its bound.
 *
 * This file holds the interface, the SSE framing and the judging of each
 * document; ngx_http_llm_answer_json.c the scan of a document,
 * ngx_http_llm_answer_value.c the decoding of the kept values, and
 * ngx_http_llm_answer_reuse.c what of the last event's reading a stream's
 * next event reuses.
 */


static void ngx_http_llm_answer_data(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last);
static u_char *ngx_http_llm_answer_eol(u_char *p, u_char *last, u_char **lf,
    u_char **cr);
static void ngx_http_llm_answer_field(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_dispatch(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_event(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_error(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, ngx_uint_t failed);
static void ngx_http_llm_answer_judge(ngx_http_llm_answer_t *a,
    ngx_uint_t ok);
static void ngx_http_llm_answer_string(ngx_http_llm_answer_cap_t *cap,
    ngx_str_t *s, u_char *buf);


/* a string is a literal: the lengths first, as most are not (every event) */

#define ngx_http_llm_answer_is(s, value)                                      \
    ((s)->len == sizeof(value) - 1                                            \
     && ngx_memcmp((s)->data, value, sizeof(value) - 1) == 0)


/* Anthropic's stream events (an "error" event is judged apart) */

static ngx_str_t  ngx_http_llm_answer_messages_events[] = {
    ngx_string("message_start"),
    ngx_string("message_delta"),
    ngx_string("message_stop"),
    ngx_string("content_block_start"),
    ngx_string("content_block_delta"),
    ngx_string("content_block_stop"),
    ngx_string("ping"),
    ngx_null_string
};


/* the events that end a Responses or messages stream */

static ngx_str_t  ngx_http_llm_answer_ends[] = {
    ngx_string("message_stop"),
    ngx_string("response.completed"),
    ngx_string("response.incomplete"),
    ngx_string("response.failed"),
    ngx_null_string
};


static u_char  ngx_http_llm_answer_bom[] = { 0xef, 0xbb, 0xbf };

static u_char  ngx_http_llm_answer_lf[] = "\n";


ngx_int_t
ngx_http_llm_answer_init(ngx_http_llm_answer_t *a, ngx_pool_t *pool,
    ngx_uint_t family, ngx_uint_t sse)
{
    ngx_http_llm_answer_state_t  *st;

    /*
     * the buffers need no zeroing: a length says what they hold.  The
     * state lives as long as the answer, a stream's to its end: a large
     * allocation, as ~1.5 KB of a request pool's 4 KB blocks it would
     * cost an idle stream a block more (bench/README.md, "Streams")
     */

    st = ngx_pmemalign(pool, sizeof(ngx_http_llm_answer_state_t),
                       NGX_ALIGNMENT);
    if (st == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(st, offsetof(ngx_http_llm_answer_state_t, key_buf));

    st->family = family;
    st->log = pool->log;
    st->pool = pool;
    st->sse_state = sw_sse_bom;

    ngx_http_llm_answer_cap_init(&st->key, st->key_buf,
                                 sizeof(st->key_buf), sizeof(st->key_buf));
    ngx_http_llm_answer_cap_init(&st->event, st->event_buf,
                                 sizeof(st->event_buf),
                                 sizeof(st->event_buf));
    ngx_http_llm_answer_cap_init(&st->prefix, st->prefix_buf,
                                 sizeof(st->prefix_buf),
                                 NGX_HTTP_LLM_ANSWER_PREFIX_MAX);
    ngx_http_llm_answer_cap_init(&st->model, st->model_buf,
                                 sizeof(st->model_buf) - 1,
                                 NGX_HTTP_LLM_ANSWER_MODEL_RAW);
    ngx_http_llm_answer_cap_init(&st->usage, NULL, 0,
                                 NGX_HTTP_LLM_ANSWER_USAGE_MAX);
    ngx_http_llm_answer_cap_init(&st->object, st->object_buf,
                                 sizeof(st->object_buf),
                                 sizeof(st->object_buf));
    ngx_http_llm_answer_cap_init(&st->type, st->type_buf,
                                 sizeof(st->type_buf), sizeof(st->type_buf));
    ngx_http_llm_answer_cap_init(&st->nested_object, st->nested_object_buf,
                                 sizeof(st->nested_object_buf),
                                 sizeof(st->nested_object_buf));
    ngx_http_llm_answer_cap_init(&st->nested_type, st->nested_type_buf,
                                 sizeof(st->nested_type_buf),
                                 sizeof(st->nested_type_buf));

    /* response.error is kept after {"error": and classified so */

    ngx_http_llm_answer_cap_init(&st->nested_error,
                                 (u_char *) NGX_HTTP_LLM_ANSWER_WRAP
                                 + sizeof(NGX_HTTP_LLM_ANSWER_WRAP) - 1,
                                 0, NGX_HTTP_LLM_ANSWER_ERROR_MAX);
    st->nested_error.head = sizeof(NGX_HTTP_LLM_ANSWER_WRAP) - 1;

    ngx_http_llm_answer_reset(st);

    a->input_tokens = -1;
    a->output_tokens = -1;
    a->model_len = 0;
    a->shape = NGX_HTTP_LLM_SHAPE_UNCHECKED;
    a->error = NGX_HTTP_LLM_ERR_NONE;
    a->events = 0;
    a->sse = sse ? 1 : 0;
    a->done = 0;
    a->shape_only = 0;
    a->state = st;

    return NGX_OK;
}


void
ngx_http_llm_answer_feed(ngx_http_llm_answer_t *a, u_char *p, u_char *last)
{
    u_char                       *q, *lf, *cr;
    ngx_http_llm_answer_state_t  *st;

    st = a->state;

    if (st == NULL || st->ended || p == NULL || p >= last) {
        return;
    }

    if (!a->sse) {

        if (a->shape_only) {
            /* no prefix: it is kept for the error's category */
            ngx_http_llm_answer_json(a, st, p, last);
            return;
        }

        ngx_http_llm_answer_data(a, st, p, last);
        return;
    }

    /* where the next LF and CR are, searched once per piece and line */

    lf = NULL;
    cr = NULL;

    while (p < last) {

        switch (st->sse_state) {

        case sw_sse_bom:

            if (*p == ngx_http_llm_answer_bom[st->bom]) {
                p++;

                if (++st->bom == sizeof(ngx_http_llm_answer_bom)) {
                    st->sse_state = sw_sse_line;
                }

                break;
            }

            /* a broken BOM begins a line that names no field we read */

            st->sse_state = st->bom ? sw_sse_skip : sw_sse_line;
            break;

        case sw_sse_line:

            if (st->cr) {
                st->cr = 0;

                if (*p == '\n') {
                    p++;
                    break;
                }
            }

            if (*p == '\r' || *p == '\n') {
                ngx_http_llm_answer_dispatch(a, st);
                st->cr = (*p == '\r');
                p++;
                break;
            }

            if (*p == ':') {
                /* a comment: keepalives */
                st->sse_state = sw_sse_skip;
                p++;
                break;
            }

            /* nearly every line of a stream: "data:" whole in the piece */

            if (last - p > 5 && ngx_memcmp(p, "data:", 5) == 0) {
                st->field = ngx_http_llm_field_data;
                st->sse_state = sw_sse_space;
                p += 5;
                break;
            }

            st->name_len = 0;
            st->sse_state = sw_sse_name;

            /* fall through */

        case sw_sse_name:

            while (p < last && *p != ':' && *p != '\r' && *p != '\n'
                   && st->name_len < sizeof(st->name_buf))
            {
                st->name_buf[st->name_len++] = *p++;
            }

            if (p == last) {
                break;
            }

            if (st->name_len == sizeof(st->name_buf)) {
                st->sse_state = sw_sse_skip;
                break;
            }

            if (st->name_len == 4
                && ngx_strncmp(st->name_buf, "data", 4) == 0)
            {
                st->field = ngx_http_llm_field_data;

            } else if (st->name_len == 5
                       && ngx_strncmp(st->name_buf, "event", 5) == 0)
            {
                st->field = ngx_http_llm_field_event;

            } else {
                st->field = ngx_http_llm_field_other;
            }

            if (*p == ':') {
                st->sse_state = sw_sse_space;
                p++;
                break;
            }

            /* a line without a colon: the field, with an empty value */

            ngx_http_llm_answer_field(a, st);
            st->sse_state = sw_sse_value;
            break;

        case sw_sse_space:

            if (*p == ' ') {
                p++;
            }

            ngx_http_llm_answer_field(a, st);
            st->sse_state = sw_sse_value;
            break;

        default: /* sw_sse_value, sw_sse_skip */

            if (st->sse_state == sw_sse_value
                && st->field == ngx_http_llm_field_data
                && st->prefix.len == 0
                && st->last.len)
            {
                /* the last event again: its line is read no further */

                q = ngx_http_llm_answer_replay_data(st, p, last, &lf);

                if (q) {
                    st->cr = 0;
                    st->sse_state = sw_sse_line;
                    p = q + 1;
                    break;
                }
            }

            q = ngx_http_llm_answer_eol(p, last, &lf, &cr);

            if (st->sse_state == sw_sse_value && q > p) {

                if (st->field == ngx_http_llm_field_data) {
                    ngx_http_llm_answer_data(a, st, p, q);

                } else if (st->field == ngx_http_llm_field_event) {
                    ngx_http_llm_answer_keep(st, &st->event, p, q);
                }
            }

            p = q;

            if (p == last) {
                break;
            }

            st->cr = (*p == '\r');
            st->sse_state = sw_sse_line;
            p++;
        }
    }
}


void
ngx_http_llm_answer_end(ngx_http_llm_answer_t *a)
{
    ngx_http_llm_answer_state_t  *st;

    st = a->state;

    if (st == NULL || st->ended) {
        return;
    }

    st->ended = 1;

    if (!a->sse) {

        if (!st->judged) {
            /* truncated, or not a JSON object */
            ngx_http_llm_answer_body(a, st);

        } else if (st->state == sw_error
                   && a->shape != NGX_HTTP_LLM_SHAPE_UNCHECKED)
        {
            /* something after the object */
            a->shape = NGX_HTTP_LLM_SHAPE_MISMATCH;
        }
    }

    /* an event the stream cut before its empty line is dropped (WHATWG) */

    ngx_log_debug7(NGX_LOG_DEBUG_HTTP, st->log, 0,
                   "llm answer: events:%ui done:%ui shape:%ui error:%ui "
                   "input:%O output:%O model:%uz",
                   a->events, (ngx_uint_t) a->done, a->shape, a->error,
                   a->input_tokens, a->output_tokens, a->model_len);
}


/*
 * Data of the document.  One that begins as the last one did is read from
 * where they differ (ngx_http_llm_answer_reuse.c).
 */

static void
ngx_http_llm_answer_data(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last)
{
    u_char  *q;

    /* more data after a replayed line: the event is not the last one */

    st->replayed = 0;

    if (st->prefix.len == 0) {
        /* a document begins; the prefix holds [p, q) already */
        q = ngx_http_llm_answer_reuse(st, p, last);
        p = q;
    }

    ngx_http_llm_answer_keep(st, &st->prefix, p, last);
    ngx_http_llm_answer_json(a, st, p, last);
}


/*
 * The end of the line at p: the first CR or LF, or last.  Each search
 * runs ahead of p once and is remembered, so lines ending with CR alone
 * do not make the search for LF run over the rest of the piece again
 * and again.
 */

static u_char *
ngx_http_llm_answer_eol(u_char *p, u_char *last, u_char **lf, u_char **cr)
{
    if (*lf == NULL || *lf < p) {
        *lf = memchr(p, '\n', last - p);

        if (*lf == NULL) {
            *lf = last;
        }
    }

    if (*cr == NULL || *cr < p) {
        *cr = memchr(p, '\r', last - p);

        if (*cr == NULL) {
            *cr = last;
        }
    }

    return ngx_min(*lf, *cr);
}


/* a field's value starts */

static void
ngx_http_llm_answer_field(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    switch (st->field) {

    case ngx_http_llm_field_data:

        /* the data lines of an event are joined with LF */

        if (st->data_lines++) {
            ngx_http_llm_answer_data(a, st, ngx_http_llm_answer_lf,
                                     ngx_http_llm_answer_lf + 1);
        }

        break;

    case ngx_http_llm_field_event:
        st->event.len = 0;
        break;
    }
}


static void
ngx_http_llm_answer_dispatch(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    /* an event without data is not dispatched (WHATWG) */

    if (st->data_lines) {

        if (st->replayed && st->event.len == 0 && !st->last.named) {
            /* the last event again: what it was judged stands */
            a->events++;

        } else {
            ngx_http_llm_answer_event(a, st);
        }

        ngx_http_llm_answer_save(st);
        ngx_http_llm_answer_reset(st);
        st->data_lines = 0;
    }

    st->event.len = 0;
}


/* a stream's event is dispatched */

static void
ngx_http_llm_answer_event(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    u_char       object_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char       type_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char       nested_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    ngx_str_t    name, type, object, nested, *end;
    ngx_uint_t   json, failed, err, ok;

    a->events++;

    if (st->prefix.len == 6
        && ngx_strncmp(st->prefix.data, "[DONE]", 6) == 0)
    {
        /*
         * OpenAI's chat and completions streams end so; Responses and
         * messages streams end with an event of their own, which a
         * "[DONE]" (sent by some compatible servers after it) does not
         * stand for
         */

        if (st->family != NGX_HTTP_LLM_FAMILY_RESPONSES
            && st->family != NGX_HTTP_LLM_FAMILY_MESSAGES)
        {
            a->done = 1;
        }

        return;
    }

    /* a name too long to keep is none we know */

    name.data = st->event.data;
    name.len = (st->event.len <= st->event.size) ? st->event.len : 0;

    json = (st->state == sw_done);

    ngx_http_llm_answer_string(&st->type, &type, type_buf);
    ngx_http_llm_answer_string(&st->object, &object, object_buf);

    failed = ngx_http_llm_answer_is(&name, "response.failed")
             || ngx_http_llm_answer_is(&type, "response.failed");

    err = st->error
          || failed
          || ngx_http_llm_answer_is(&name, "error")
          || ngx_http_llm_answer_is(&type, "error")
          || ngx_http_llm_answer_is(&object, "error");

    ngx_http_llm_answer_usage(a, st);
    ngx_http_llm_answer_model(a, st);

    if (err) {
        ngx_http_llm_answer_error(a, st, failed);
    }

    for (end = ngx_http_llm_answer_ends; end->len; end++) {
        if ((name.len == end->len
             && ngx_strncmp(name.data, end->data, end->len) == 0)
            || (type.len == end->len
                && ngx_strncmp(type.data, end->data, end->len) == 0))
        {
            a->done = 1;
            break;
        }
    }

    switch (st->family) {

    case NGX_HTTP_LLM_FAMILY_CHAT:

        /* the usage chunk has "choices": [] */

        ok = ngx_http_llm_answer_is(&object, "chat.completion.chunk")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_choices);
        break;

    case NGX_HTTP_LLM_FAMILY_COMPLETIONS:
        ok = ngx_http_llm_answer_is(&object, "text_completion")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_choices);
        break;

    case NGX_HTTP_LLM_FAMILY_RESPONSES:

        /* response.created, .completed, ... carry the response object */

        ok = type.len > 9 && ngx_strncmp(type.data, "response.", 9) == 0;

        if (ok && ngx_http_llm_answer_seen(st, ngx_http_llm_m_response)) {
            ngx_http_llm_answer_string(&st->nested_object, &nested,
                                       nested_buf);

            ok = ngx_http_llm_answer_is(&nested, "response")
                 && ngx_http_llm_answer_seen(st,
                                             ngx_http_llm_m_nested_output);
        }

        break;

    case NGX_HTTP_LLM_FAMILY_MESSAGES:
        ok = 0;

        for (end = ngx_http_llm_answer_messages_events; end->len; end++) {
            if (type.len == end->len
                && ngx_strncmp(type.data, end->data, end->len) == 0)
            {
                ok = 1;
                break;
            }
        }

        if (ok && ngx_http_llm_answer_is(&type, "message_start")) {
            ngx_http_llm_answer_string(&st->nested_type, &nested,
                                       nested_buf);

            ok = ngx_http_llm_answer_is(&nested, "message")
                 && ngx_http_llm_answer_seen(st,
                                             ngx_http_llm_m_nested_content);
        }

        break;

    default:
        /* embeddings do not stream; others have no documented shape */
        return;
    }

    ngx_http_llm_answer_judge(a, ok && json && !err);
}


/* a plain answer's object ended, or the answer did */

void
ngx_http_llm_answer_body(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    u_char      object_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char      type_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    ngx_str_t   type, object;
    ngx_uint_t  err, ok;

    st->judged = 1;

    ngx_http_llm_answer_string(&st->type, &type, type_buf);
    ngx_http_llm_answer_string(&st->object, &object, object_buf);

    /* OpenAI's {"error":...}, Anthropic's "type": "error", vLLM's object */

    err = st->error
          || ngx_http_llm_answer_is(&type, "error")
          || ngx_http_llm_answer_is(&object, "error");

    if (!a->shape_only) {
        ngx_http_llm_answer_usage(a, st);
        ngx_http_llm_answer_model(a, st);

        if (err) {
            ngx_http_llm_answer_error(a, st, 0);
        }
    }

    switch (st->family) {

    case NGX_HTTP_LLM_FAMILY_CHAT:
        ok = ngx_http_llm_answer_is(&object, "chat.completion")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_choices);
        break;

    case NGX_HTTP_LLM_FAMILY_RESPONSES:
        ok = ngx_http_llm_answer_is(&object, "response")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_output);
        break;

    case NGX_HTTP_LLM_FAMILY_MESSAGES:
        ok = ngx_http_llm_answer_is(&type, "message")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_content);
        break;

    case NGX_HTTP_LLM_FAMILY_EMBEDDINGS:
        ok = ngx_http_llm_answer_is(&object, "list")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_data);
        break;

    case NGX_HTTP_LLM_FAMILY_COMPLETIONS:
        ok = ngx_http_llm_answer_is(&object, "text_completion")
             && ngx_http_llm_answer_seen(st, ngx_http_llm_m_choices);
        break;

    default:
        return;
    }

    a->shape = (ok && !err && st->state == sw_done)
               ? NGX_HTTP_LLM_SHAPE_OK : NGX_HTTP_LLM_SHAPE_MISMATCH;
}


/*
 * The category of an in-band error, the first one kept.  The classifier
 * reads the document's first bytes; response.failed has its error one
 * level down, so that member is handed over as {"error":...}.  Whatever
 * the body says, the protocol said error: never "none".
 */

static void
ngx_http_llm_answer_error(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, ngx_uint_t failed)
{
    size_t                      n;
    ngx_uint_t                  err;
    ngx_http_llm_answer_cap_t  *cap;

    if (a->error != NGX_HTTP_LLM_ERR_NONE) {
        return;
    }

    /* no buffer: the pool had no memory for one */

    if (failed && st->nested_error.len && st->nested_error.size) {
        cap = &st->nested_error;
        n = ngx_min(cap->len, cap->size);
        cap->data[n] = '}';

        err = ngx_http_llm_classify_response(0, cap->data - cap->head,
                                             cap->head + n + 1);

    } else {
        err = ngx_http_llm_classify_response(0, st->prefix.data,
                                             ngx_min(st->prefix.len,
                                                     st->prefix.size));
    }

    if (err == NGX_HTTP_LLM_ERR_NONE
        || err == NGX_HTTP_LLM_ERR_INVALID_RESPONSE)
    {
        err = NGX_HTTP_LLM_ERR_SERVER;
    }

    a->error = err;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, st->log, 0,
                   "llm answer: in-band error %V",
                   &ngx_http_llm_err_names[err]);
}


static void
ngx_http_llm_answer_judge(ngx_http_llm_answer_t *a, ngx_uint_t ok)
{
    /* one event out of shape makes the stream so */

    if (a->shape != NGX_HTTP_LLM_SHAPE_MISMATCH) {
        a->shape = ok ? NGX_HTTP_LLM_SHAPE_OK : NGX_HTTP_LLM_SHAPE_MISMATCH;
    }
}


/*
 * A kept "object" or "type" string, decoded.  Empty when absent, cut by
 * the end of its document, or invalid; only the kept beginning of one
 * too long to keep (never equal to a name we compare with).
 */

static void
ngx_http_llm_answer_string(ngx_http_llm_answer_cap_t *cap, ngx_str_t *s,
    u_char *buf)
{
    size_t  len;

    s->len = 0;
    s->data = buf;

    if (cap->len == 0) {
        return;
    }

    if (cap->len > cap->size) {
        s->data = cap->data + 1;
        s->len = cap->size - 1;
        return;
    }

    if (!cap->complete) {
        return;
    }

    if (memchr(cap->data, '\\', cap->len) == NULL) {
        s->data = cap->data + 1;
        s->len = cap->len - 2;
        return;
    }

    if (ngx_http_llm_json_string(cap->data, cap->len, buf,
                                 NGX_HTTP_LLM_ANSWER_NAME_MAX, &len)
        == NGX_OK)
    {
        s->len = len;
    }
}


ngx_uint_t
ngx_http_llm_answer_lookup(ngx_http_llm_answer_name_t *names, u_char *s,
    size_t len)
{
    /* called for each member: the first byte spares most ngx_memcmp()s */

    for ( /* void */ ; names->name.len; names++) {
        if (names->name.len == len
            && len
            && names->name.data[0] == s[0]
            && ngx_memcmp(names->name.data, s, len) == 0)
        {
            return names->value;
        }
    }

    return names->value;
}


