
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_answer.h"


/*
 * An answer can be megabytes of completion text, so it is never parsed
 * whole (SPEC 3.1).  A structural scan as in ngx_http_llm_scan.c
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
 * memory.  All the state is one allocation of a few kilobytes.
 */


/* a member name, raw: "response" with every character escaped fits */
#define NGX_HTTP_LLM_ANSWER_KEY_MAX     64

#define NGX_HTTP_LLM_ANSWER_USAGE_MAX   4096
#define NGX_HTTP_LLM_ANSWER_NAME_MAX    64      /* "object", "type" */
#define NGX_HTTP_LLM_ANSWER_ERROR_MAX   1024    /* response.error */
#define NGX_HTTP_LLM_ANSWER_PREFIX_MAX  2048    /* of each document */
#define NGX_HTTP_LLM_ANSWER_EVENT_MAX   48      /* the event field */
#define NGX_HTTP_LLM_ANSWER_FIELD_MAX   8       /* an SSE field name */

/* a \u00XX escape is 6 raw bytes for one decoded: room for MODEL_MAX */
#define NGX_HTTP_LLM_ANSWER_MODEL_RAW                                        \
    (6 * NGX_HTTP_LLM_ANSWER_MODEL_MAX + 2)

/* deeper containers are junk in a usage object: yajl stops there */
#define NGX_HTTP_LLM_ANSWER_USAGE_DEPTH 16

/* response.error is classified as {"error":...} */
#define NGX_HTTP_LLM_ANSWER_WRAP        "{\"error\":"


/* the scan of a JSON document */

enum {
    sw_start = 0,
    sw_first_key,
    sw_key,
    sw_key_string,
    sw_colon,
    sw_value,
    sw_string,
    sw_literal,
    sw_nested,
    sw_nested_string,
    sw_after_value,
    sw_done,
    sw_error
};


/* SSE framing */

enum {
    sw_sse_bom = 0,
    sw_sse_line,
    sw_sse_name,
    sw_sse_space,
    sw_sse_value,
    sw_sse_skip
};


enum {
    ngx_http_llm_field_other = 0,
    ngx_http_llm_field_data,
    ngx_http_llm_field_event
};


/* the members followed; also bit numbers of the "seen" mask */

enum {
    ngx_http_llm_m_other = 0,
    ngx_http_llm_m_model,
    ngx_http_llm_m_usage,
    ngx_http_llm_m_object,
    ngx_http_llm_m_type,
    ngx_http_llm_m_error,
    ngx_http_llm_m_choices,
    ngx_http_llm_m_output,
    ngx_http_llm_m_content,
    ngx_http_llm_m_data,
    ngx_http_llm_m_message,
    ngx_http_llm_m_response,

    /* in "message" or "response" */
    ngx_http_llm_m_nested_model,
    ngx_http_llm_m_nested_usage,
    ngx_http_llm_m_nested_object,
    ngx_http_llm_m_nested_type,
    ngx_http_llm_m_nested_error,
    ngx_http_llm_m_nested_output,
    ngx_http_llm_m_nested_content
};


/* usage keys */

enum {
    ngx_http_llm_usage_other = 0,
    ngx_http_llm_usage_input,
    ngx_http_llm_usage_output
};


typedef struct {
    u_char                      *data;
    size_t                       size;
    size_t                       len;       /* of the value, kept or not */
    unsigned                     complete:1;    /* the value ended */
} ngx_http_llm_answer_cap_t;


typedef struct {
    /* the scan of the current document */
    ngx_uint_t                   state;
    ngx_uint_t                   depth;     /* open brackets */
    ngx_uint_t                   level;     /* 2: in message or response */
    ngx_uint_t                   member;    /* ngx_http_llm_m_* */
    ngx_uint_t                   seen;      /* a bit per member */
    ngx_uint_t                   backslashes;   /* odd run at a piece end */
    ngx_http_llm_answer_cap_t   *cap;       /* the value being kept */

    /* SSE framing */
    ngx_uint_t                   sse_state;
    ngx_uint_t                   field;
    ngx_uint_t                   data_lines;    /* of the pending event */
    size_t                       name_len;

    ngx_uint_t                   family;
    ngx_log_t                   *log;

    unsigned                     error:1;   /* a top-level "error" */
    unsigned                     judged:1;  /* a plain answer, once */
    unsigned                     cr:1;      /* a line ended with CR */
    unsigned                     bom:2;     /* bytes of a BOM matched */
    unsigned                     ended:1;

    ngx_http_llm_answer_cap_t    key;
    ngx_http_llm_answer_cap_t    event;
    ngx_http_llm_answer_cap_t    prefix;
    ngx_http_llm_answer_cap_t    model;
    ngx_http_llm_answer_cap_t    usage;
    ngx_http_llm_answer_cap_t    object;
    ngx_http_llm_answer_cap_t    type;
    ngx_http_llm_answer_cap_t    nested_object;
    ngx_http_llm_answer_cap_t    nested_type;
    ngx_http_llm_answer_cap_t    nested_error;

    /* buffers last: not zeroed */
    u_char                       key_buf[NGX_HTTP_LLM_ANSWER_KEY_MAX];
    u_char                       name_buf[NGX_HTTP_LLM_ANSWER_FIELD_MAX];
    u_char                       event_buf[NGX_HTTP_LLM_ANSWER_EVENT_MAX];
    u_char                       prefix_buf[NGX_HTTP_LLM_ANSWER_PREFIX_MAX];
    u_char                       usage_buf[NGX_HTTP_LLM_ANSWER_USAGE_MAX];
    u_char                       object_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       type_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       nested_object_buf[
                                     NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       nested_type_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];

    /* one spare byte each: a closing quote, a closing brace */
    u_char                       model_buf[NGX_HTTP_LLM_ANSWER_MODEL_RAW + 1];
    u_char                       error_buf[sizeof(NGX_HTTP_LLM_ANSWER_WRAP)
                                     - 1 + NGX_HTTP_LLM_ANSWER_ERROR_MAX + 1];
} ngx_http_llm_answer_state_t;


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   value;
} ngx_http_llm_answer_name_t;


typedef struct {
    ngx_uint_t                   depth;
    ngx_uint_t                   key;       /* ngx_http_llm_usage_* */
    off_t                        input;
    off_t                        output;
} ngx_http_llm_answer_usage_t;


typedef struct {
    u_char                      *buf;
    size_t                       len;
    ngx_uint_t                   strings;
} ngx_http_llm_answer_model_t;


static void ngx_http_llm_answer_data(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last);
static void ngx_http_llm_answer_json(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last);
static ngx_http_llm_answer_cap_t *ngx_http_llm_answer_value(
    ngx_http_llm_answer_t *a, ngx_http_llm_answer_state_t *st, u_char c);
static void ngx_http_llm_answer_close(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static ngx_uint_t ngx_http_llm_answer_member(
    ngx_http_llm_answer_state_t *st);
static u_char *ngx_http_llm_answer_string_end(ngx_uint_t *backslashes,
    u_char *p, u_char *last);
static void ngx_http_llm_answer_keep(ngx_http_llm_answer_cap_t *cap,
    u_char *p, u_char *last);
static void ngx_http_llm_answer_cap_init(ngx_http_llm_answer_cap_t *cap,
    u_char *buf, size_t size);
static void ngx_http_llm_answer_reset(ngx_http_llm_answer_state_t *st);
static u_char *ngx_http_llm_answer_eol(u_char *p, u_char *last, u_char **lf,
    u_char **cr);
static void ngx_http_llm_answer_field(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_dispatch(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_event(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_body(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_error(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, ngx_uint_t failed);
static void ngx_http_llm_answer_judge(ngx_http_llm_answer_t *a,
    ngx_uint_t ok);
static void ngx_http_llm_answer_string(ngx_http_llm_answer_cap_t *cap,
    ngx_str_t *s, u_char *buf);
static ngx_uint_t ngx_http_llm_answer_is(ngx_str_t *s, char *value);
static ngx_uint_t ngx_http_llm_answer_lookup(ngx_http_llm_answer_name_t *names,
    u_char *s, size_t len);
static void ngx_http_llm_answer_usage(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static void ngx_http_llm_answer_model(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static size_t ngx_http_llm_answer_cut(u_char *raw, size_t n);
static ngx_uint_t ngx_http_llm_answer_hex4(u_char *p);
static size_t ngx_http_llm_answer_utf8(u_char *p, size_t len);
static int ngx_http_llm_answer_usage_start(void *data);
static int ngx_http_llm_answer_usage_end(void *data);
static int ngx_http_llm_answer_usage_key(void *data, const unsigned char *s,
    size_t len);
static int ngx_http_llm_answer_usage_number(void *data, const char *s,
    size_t len);
static int ngx_http_llm_answer_model_string(void *data,
    const unsigned char *s, size_t len);


static ngx_http_llm_answer_name_t  ngx_http_llm_answer_members[] = {
    { ngx_string("model"), ngx_http_llm_m_model },
    { ngx_string("usage"), ngx_http_llm_m_usage },
    { ngx_string("object"), ngx_http_llm_m_object },
    { ngx_string("type"), ngx_http_llm_m_type },
    { ngx_string("error"), ngx_http_llm_m_error },
    { ngx_string("choices"), ngx_http_llm_m_choices },
    { ngx_string("output"), ngx_http_llm_m_output },
    { ngx_string("content"), ngx_http_llm_m_content },
    { ngx_string("data"), ngx_http_llm_m_data },
    { ngx_string("message"), ngx_http_llm_m_message },
    { ngx_string("response"), ngx_http_llm_m_response },
    { ngx_null_string, ngx_http_llm_m_other }
};


static ngx_http_llm_answer_name_t  ngx_http_llm_answer_usage_keys[] = {
    { ngx_string("prompt_tokens"), ngx_http_llm_usage_input },
    { ngx_string("input_tokens"), ngx_http_llm_usage_input },
    { ngx_string("completion_tokens"), ngx_http_llm_usage_output },
    { ngx_string("output_tokens"), ngx_http_llm_usage_output },
    { ngx_null_string, ngx_http_llm_usage_other }
};


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


/* the events that end a stream, besides "[DONE]" */

static ngx_str_t  ngx_http_llm_answer_ends[] = {
    ngx_string("message_stop"),
    ngx_string("response.completed"),
    ngx_string("response.incomplete"),
    ngx_string("response.failed"),
    ngx_null_string
};


static yajl_callbacks  ngx_http_llm_answer_usage_callbacks = {
    NULL,                                  /* null */
    NULL,                                  /* boolean */
    NULL,                                  /* integer */
    NULL,                                  /* double */
    ngx_http_llm_answer_usage_number,      /* number */
    NULL,                                  /* string */
    ngx_http_llm_answer_usage_start,       /* start_map */
    ngx_http_llm_answer_usage_key,         /* map_key */
    ngx_http_llm_answer_usage_end,         /* end_map */
    ngx_http_llm_answer_usage_start,       /* start_array */
    ngx_http_llm_answer_usage_end          /* end_array */
};


static yajl_callbacks  ngx_http_llm_answer_model_callbacks = {
    NULL,                                  /* null */
    NULL,                                  /* boolean */
    NULL,                                  /* integer */
    NULL,                                  /* double */
    NULL,                                  /* number */
    ngx_http_llm_answer_model_string,      /* string */
    NULL,                                  /* start_map */
    NULL,                                  /* map_key */
    NULL,                                  /* end_map */
    NULL,                                  /* start_array */
    NULL                                   /* end_array */
};


/* bytes that end a run inside a nested value: strings and brackets */

static u_char  ngx_http_llm_answer_stop[256] = {
    ['"'] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1
};


static u_char  ngx_http_llm_answer_bom[] = { 0xef, 0xbb, 0xbf };

static u_char  ngx_http_llm_answer_lf[] = "\n";


/* the states that skip whitespace before their token */

static const ngx_uint_t  ngx_http_llm_answer_ws_states =
    (1 << sw_start) | (1 << sw_first_key) | (1 << sw_key) | (1 << sw_colon)
    | (1 << sw_value) | (1 << sw_after_value) | (1 << sw_done);


#define ngx_http_llm_answer_ws(c)                                             \
    ((c) == ' ' || (c) == '\n' || (c) == '\r' || (c) == '\t')

#define ngx_http_llm_answer_literal(c)                                        \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')                \
     || ((c) >= '0' && (c) <= '9') || (c) == '-' || (c) == '+'                \
     || (c) == '.')

#define ngx_http_llm_answer_seen(st, m)                                       \
    ((st)->seen & ((ngx_uint_t) 1 << (m)))


ngx_int_t
ngx_http_llm_answer_init(ngx_http_llm_answer_t *a, ngx_pool_t *pool,
    ngx_uint_t family, ngx_uint_t sse)
{
    ngx_http_llm_answer_state_t  *st;

    /* the buffers need no zeroing: a length says what they hold */

    st = ngx_palloc(pool, sizeof(ngx_http_llm_answer_state_t));
    if (st == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(st, offsetof(ngx_http_llm_answer_state_t, key_buf));

    st->family = family;
    st->log = pool->log;
    st->sse_state = sw_sse_bom;

    ngx_http_llm_answer_cap_init(&st->key, st->key_buf,
                                 sizeof(st->key_buf));
    ngx_http_llm_answer_cap_init(&st->event, st->event_buf,
                                 sizeof(st->event_buf));
    ngx_http_llm_answer_cap_init(&st->prefix, st->prefix_buf,
                                 sizeof(st->prefix_buf));
    ngx_http_llm_answer_cap_init(&st->model, st->model_buf,
                                 sizeof(st->model_buf) - 1);
    ngx_http_llm_answer_cap_init(&st->usage, st->usage_buf,
                                 sizeof(st->usage_buf));
    ngx_http_llm_answer_cap_init(&st->object, st->object_buf,
                                 sizeof(st->object_buf));
    ngx_http_llm_answer_cap_init(&st->type, st->type_buf,
                                 sizeof(st->type_buf));
    ngx_http_llm_answer_cap_init(&st->nested_object, st->nested_object_buf,
                                 sizeof(st->nested_object_buf));
    ngx_http_llm_answer_cap_init(&st->nested_type, st->nested_type_buf,
                                 sizeof(st->nested_type_buf));

    ngx_memcpy(st->error_buf, NGX_HTTP_LLM_ANSWER_WRAP,
               sizeof(NGX_HTTP_LLM_ANSWER_WRAP) - 1);
    ngx_http_llm_answer_cap_init(&st->nested_error,
                                 st->error_buf
                                 + sizeof(NGX_HTTP_LLM_ANSWER_WRAP) - 1,
                                 NGX_HTTP_LLM_ANSWER_ERROR_MAX);

    ngx_http_llm_answer_reset(st);

    a->input_tokens = -1;
    a->output_tokens = -1;
    a->model_len = 0;
    a->shape = NGX_HTTP_LLM_SHAPE_UNCHECKED;
    a->error = NGX_HTTP_LLM_ERR_NONE;
    a->events = 0;
    a->sse = sse ? 1 : 0;
    a->done = 0;
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

            q = ngx_http_llm_answer_eol(p, last, &lf, &cr);

            if (st->sse_state == sw_sse_value && q > p) {

                if (st->field == ngx_http_llm_field_data) {
                    ngx_http_llm_answer_data(a, st, p, q);

                } else if (st->field == ngx_http_llm_field_event) {
                    ngx_http_llm_answer_keep(&st->event, p, q);
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


static void
ngx_http_llm_answer_data(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last)
{
    ngx_http_llm_answer_keep(&st->prefix, p, last);
    ngx_http_llm_answer_json(a, st, p, last);
}


static void
ngx_http_llm_answer_json(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last)
{
    u_char  c, *q, *start;

    while (p < last) {

        /* whitespace between tokens, in one run */

        if ((1 << st->state) & ngx_http_llm_answer_ws_states) {

            while (ngx_http_llm_answer_ws(*p)) {
                if (++p == last) {
                    return;
                }
            }
        }

        switch (st->state) {

        case sw_start:

            if (*p != '{') {
                st->state = sw_error;
                return;
            }

            st->depth = 1;
            st->level = 1;
            st->state = sw_first_key;
            p++;
            break;

        case sw_first_key:
        case sw_key:
            c = *p;

            if (c == '"') {
                st->key.len = 0;
                st->backslashes = 0;
                st->state = sw_key_string;
                ngx_http_llm_answer_keep(&st->key, p, p + 1);
                p++;
                break;
            }

            if (c == '}' && st->state == sw_first_key) {
                ngx_http_llm_answer_close(a, st);
                p++;
                break;
            }

            st->state = sw_error;
            return;

        case sw_key_string:
            q = ngx_http_llm_answer_string_end(&st->backslashes, p, last);

            ngx_http_llm_answer_keep(&st->key, p, q ? q : last);

            if (q == NULL) {
                return;
            }

            st->member = ngx_http_llm_answer_member(st);
            st->state = sw_colon;
            p = q;
            break;

        case sw_colon:

            if (*p != ':') {
                st->state = sw_error;
                return;
            }

            st->state = sw_value;
            p++;
            break;

        case sw_value:
            c = *p;

            if (c == '{'
                && a->sse
                && st->level == 1
                && (st->member == ngx_http_llm_m_message
                    || st->member == ngx_http_llm_m_response))
            {
                /* follow the members of this object too */
                st->seen |= (ngx_uint_t) 1 << st->member;
                st->depth = 2;
                st->level = 2;
                st->state = sw_first_key;
                p++;
                break;
            }

            st->cap = ngx_http_llm_answer_value(a, st, c);

            if (c == '"') {
                if (st->cap) {
                    ngx_http_llm_answer_keep(st->cap, p, p + 1);
                }

                st->backslashes = 0;
                st->state = sw_string;
                p++;
                break;
            }

            if (c == '{' || c == '[') {
                if (st->cap) {
                    ngx_http_llm_answer_keep(st->cap, p, p + 1);
                }

                st->depth++;
                st->state = sw_nested;
                p++;
                break;
            }

            if (ngx_http_llm_answer_literal(c)) {
                st->state = sw_literal;
                break;
            }

            st->state = sw_error;
            return;

        case sw_string:
            q = ngx_http_llm_answer_string_end(&st->backslashes, p, last);

            if (st->cap) {
                ngx_http_llm_answer_keep(st->cap, p, q ? q : last);
            }

            if (q == NULL) {
                return;
            }

            if (st->cap) {
                st->cap->complete = 1;
                st->cap = NULL;
            }

            st->state = sw_after_value;
            p = q;
            break;

        case sw_literal:

            while (p < last && ngx_http_llm_answer_literal(*p)) {
                p++;
            }

            if (p == last) {
                return;
            }

            st->state = sw_after_value;
            break;

        case sw_nested:

            /* a value's insides, token after token in one loop */

            start = p;

            for ( ;; ) {
                while (p < last && !ngx_http_llm_answer_stop[*p]) {
                    p++;
                }

                if (p == last) {
                    break;
                }

                c = *p++;

                if (c == '"') {
                    st->backslashes = 0;
                    q = ngx_http_llm_answer_string_end(&st->backslashes, p,
                                                       last);

                    if (q == NULL) {
                        st->state = sw_nested_string;
                        p = last;
                        break;
                    }

                    p = q;
                    continue;
                }

                if (c == '{' || c == '[') {
                    st->depth++;
                    continue;
                }

                /* the kinds of brackets are left to the provider */

                if (--st->depth == st->level) {
                    st->state = sw_after_value;
                    break;
                }
            }

            if (st->cap) {
                ngx_http_llm_answer_keep(st->cap, start, p);

                if (st->state == sw_after_value) {
                    st->cap->complete = 1;
                    st->cap = NULL;
                }
            }

            break;

        case sw_nested_string:
            q = ngx_http_llm_answer_string_end(&st->backslashes, p, last);

            if (st->cap) {
                ngx_http_llm_answer_keep(st->cap, p, q ? q : last);
            }

            if (q == NULL) {
                return;
            }

            st->state = sw_nested;
            p = q;
            break;

        case sw_after_value:
            c = *p;

            if (c == ',') {
                st->state = sw_key;
                p++;
                break;
            }

            if (c == '}') {
                ngx_http_llm_answer_close(a, st);
                p++;
                break;
            }

            st->state = sw_error;
            return;

        case sw_done:
            /* something after the object */
            st->state = sw_error;
            return;

        default: /* sw_error */
            return;
        }
    }
}


/*
 * A value starts with c: marks its member seen and returns where to keep
 * its bytes, if they are looked at.
 */

static ngx_http_llm_answer_cap_t *
ngx_http_llm_answer_value(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char c)
{
    ngx_http_llm_answer_cap_t  *cap;

    st->seen |= (ngx_uint_t) 1 << st->member;

    switch (st->member) {

    case ngx_http_llm_m_error:

        /* Responses objects carry "error": null */

        if (c != 'n') {
            st->error = 1;
        }

        return NULL;

    case ngx_http_llm_m_model:
    case ngx_http_llm_m_nested_model:

        /* the first model is kept: chat chunks repeat it in each */

        if (c != '"' || a->model_len) {
            return NULL;
        }

        cap = &st->model;
        break;

    case ngx_http_llm_m_usage:
    case ngx_http_llm_m_nested_usage:

        /* "usage": null in all chunks of a chat stream but the last */

        if (c != '{') {
            return NULL;
        }

        cap = &st->usage;
        break;

    case ngx_http_llm_m_object:
    case ngx_http_llm_m_type:
    case ngx_http_llm_m_nested_object:
    case ngx_http_llm_m_nested_type:

        if (c != '"') {
            return NULL;
        }

        switch (st->member) {

        case ngx_http_llm_m_object:
            cap = &st->object;
            break;

        case ngx_http_llm_m_type:
            cap = &st->type;
            break;

        case ngx_http_llm_m_nested_object:
            cap = &st->nested_object;
            break;

        default:
            cap = &st->nested_type;
        }

        break;

    case ngx_http_llm_m_nested_error:

        if (c != '{') {
            return NULL;
        }

        cap = &st->nested_error;
        break;

    default:
        return NULL;
    }

    cap->len = 0;
    cap->complete = 0;

    return cap;
}


static void
ngx_http_llm_answer_close(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    if (st->level == 2) {
        st->depth = 1;
        st->level = 1;
        st->state = sw_after_value;
        return;
    }

    st->depth = 0;
    st->state = sw_done;

    if (!a->sse) {
        ngx_http_llm_answer_body(a, st);
    }
}


static ngx_uint_t
ngx_http_llm_answer_member(ngx_http_llm_answer_state_t *st)
{
    u_char      *name, buf[NGX_HTTP_LLM_ANSWER_KEY_MAX];
    size_t       len;
    ngx_uint_t   m;

    if (st->key.len > st->key.size) {
        /* even with every character escaped, no name we know */
        return ngx_http_llm_m_other;
    }

    name = st->key.data + 1;
    len = st->key.len - 2;

    if (memchr(name, '\\', len)) {

        /* "mod\u0065l" is "model" to the provider too */

        if (ngx_http_llm_json_string(st->key.data, st->key.len, buf,
                                     sizeof(buf), &len)
            != NGX_OK)
        {
            return ngx_http_llm_m_other;
        }

        name = buf;
    }

    m = ngx_http_llm_answer_lookup(ngx_http_llm_answer_members, name, len);

    if (st->level == 1) {
        return m;
    }

    switch (m) {

    case ngx_http_llm_m_model:
        return ngx_http_llm_m_nested_model;

    case ngx_http_llm_m_usage:
        return ngx_http_llm_m_nested_usage;

    case ngx_http_llm_m_object:
        return ngx_http_llm_m_nested_object;

    case ngx_http_llm_m_type:
        return ngx_http_llm_m_nested_type;

    case ngx_http_llm_m_error:
        return ngx_http_llm_m_nested_error;

    case ngx_http_llm_m_output:
        return ngx_http_llm_m_nested_output;

    case ngx_http_llm_m_content:
        return ngx_http_llm_m_nested_content;

    default:
        return ngx_http_llm_m_other;
    }
}


/*
 * Skips the bytes of a string up to and including its closing quote;
 * returns the position after the quote, or NULL when the piece ends in
 * the string.  A quote is escaped when an odd run of backslashes stands
 * before it; a run may have begun in the previous piece.
 */

static u_char *
ngx_http_llm_answer_string_end(ngx_uint_t *backslashes, u_char *p,
    u_char *last)
{
    u_char  *q, *b;

    for ( ;; ) {
        q = memchr(p, '"', last - p);

        if (q == NULL) {
            for (b = last; b > p && b[-1] == '\\'; b--) { /* void */ }

            if (b == p) {
                *backslashes ^= (last - b) & 1;

            } else {
                *backslashes = (last - b) & 1;
            }

            return NULL;
        }

        for (b = q; b > p && b[-1] == '\\'; b--) { /* void */ }

        if ((((q - b) & 1) ^ (b == p ? *backslashes : 0)) == 0) {
            *backslashes = 0;
            return q + 1;
        }

        *backslashes = 0;
        p = q + 1;
    }
}


/* keeps up to size bytes of a value; len counts all of them */

static void
ngx_http_llm_answer_keep(ngx_http_llm_answer_cap_t *cap, u_char *p,
    u_char *last)
{
    size_t  n;

    if (cap->len < cap->size) {
        n = ngx_min((size_t) (last - p), cap->size - cap->len);
        ngx_memcpy(cap->data + cap->len, p, n);
    }

    cap->len += last - p;
}


static void
ngx_http_llm_answer_cap_init(ngx_http_llm_answer_cap_t *cap, u_char *buf,
    size_t size)
{
    cap->data = buf;
    cap->size = size;
    cap->len = 0;
    cap->complete = 0;
}


/* a new document: the next event's data */

static void
ngx_http_llm_answer_reset(ngx_http_llm_answer_state_t *st)
{
    st->state = sw_start;
    st->depth = 0;
    st->level = 1;
    st->member = ngx_http_llm_m_other;
    st->seen = 0;
    st->backslashes = 0;
    st->cap = NULL;
    st->error = 0;

    st->prefix.len = 0;
    st->model.len = 0;
    st->usage.len = 0;
    st->object.len = 0;
    st->type.len = 0;
    st->nested_object.len = 0;
    st->nested_type.len = 0;
    st->nested_error.len = 0;
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
        ngx_http_llm_answer_event(a, st);
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
        a->done = 1;
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

static void
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

    ngx_http_llm_answer_usage(a, st);
    ngx_http_llm_answer_model(a, st);

    if (err) {
        ngx_http_llm_answer_error(a, st, 0);
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

    if (failed && st->nested_error.len) {
        cap = &st->nested_error;
        n = ngx_min(cap->len, cap->size);
        cap->data[n] = '}';

        err = ngx_http_llm_classify_response(0, st->error_buf,
                                             cap->data + n + 1
                                             - st->error_buf);

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


static ngx_uint_t
ngx_http_llm_answer_is(ngx_str_t *s, char *value)
{
    size_t  len;

    len = ngx_strlen(value);

    return s->len == len && ngx_strncmp(s->data, value, len) == 0;
}


static ngx_uint_t
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


/*
 * The kept usage object, parsed.  A usage object cut at the bound (never
 * seen in practice) gives what came before the cut, a number cut there
 * included: yajl only reports a number once a byte after it ends it.
 */

static void
ngx_http_llm_answer_usage(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    yajl_handle                  h;
    ngx_http_llm_answer_usage_t  ctx;

    if (st->usage.len == 0) {
        return;
    }

    ctx.depth = 0;
    ctx.key = ngx_http_llm_usage_other;
    ctx.input = -1;
    ctx.output = -1;

    h = yajl_alloc(&ngx_http_llm_answer_usage_callbacks, NULL, &ctx);
    if (h == NULL) {
        return;
    }

    (void) yajl_config(h, yajl_dont_validate_strings, 1);

    (void) yajl_parse(h, st->usage.data,
                      ngx_min(st->usage.len, st->usage.size));

    yajl_free(h);

    if (ctx.input >= 0) {
        a->input_tokens = ctx.input;
    }

    if (ctx.output >= 0) {
        a->output_tokens = ctx.output;
    }
}


/*
 * The kept model string, decoded and cut to a valid UTF-8 prefix of at
 * most NGX_HTTP_LLM_ANSWER_MODEL_MAX bytes.  A string longer than kept is
 * closed after its last whole character or escape, a quote added in the
 * spare byte, which still decodes to more than MODEL_MAX bytes.
 */

static void
ngx_http_llm_answer_model(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st)
{
    u_char                       *raw, *p, *end;
    size_t                        n, len;
    yajl_handle                   h;
    yajl_status                   rc;
    ngx_http_llm_answer_model_t   ctx;

    if (a->model_len || st->model.len == 0) {
        return;
    }

    raw = st->model.data;

    if (st->model.complete && st->model.len <= st->model.size) {
        n = st->model.len;

    } else if (st->model.len > st->model.size) {
        n = ngx_http_llm_answer_cut(raw, st->model.size);
        raw[n++] = '"';

    } else {
        /* its document ended inside it */
        return;
    }

    /* printable ASCII without escapes, nearly always, is its own value */

    end = raw + n - 1;

    for (p = raw + 1; p < end; p++) {
        if (*p < 0x20 || *p >= 0x7f || *p == '\\') {
            break;
        }
    }

    if (p == end) {
        len = ngx_min(n - 2, NGX_HTTP_LLM_ANSWER_MODEL_MAX);
        ngx_memcpy(a->model, raw + 1, len);
        a->model_len = len;
        return;
    }

    ctx.buf = a->model;
    ctx.len = 0;
    ctx.strings = 0;

    h = yajl_alloc(&ngx_http_llm_answer_model_callbacks, NULL, &ctx);
    if (h == NULL) {
        return;
    }

    /* invalid UTF-8 ends the prefix kept, it does not lose the model */
    (void) yajl_config(h, yajl_dont_validate_strings, 1);

    rc = yajl_parse(h, raw, n);

    if (rc == yajl_status_ok) {
        rc = yajl_complete_parse(h);
    }

    yajl_free(h);

    if (rc != yajl_status_ok || ctx.strings != 1) {
        return;
    }

    a->model_len = ngx_http_llm_answer_utf8(a->model, ctx.len);
}


/*
 * The length of the longest prefix of a raw string (from its opening
 * quote, n bytes kept) that ends between characters: not inside an
 * escape, nor between the two escapes of a surrogate pair.
 */

static size_t
ngx_http_llm_answer_cut(u_char *raw, size_t n)
{
    size_t      i, unit;
    ngx_uint_t  cp;

    for (i = 1; i < n; i += unit) {

        if (raw[i] != '\\') {
            unit = 1;
            continue;
        }

        if (i + 1 == n) {
            break;
        }

        if (raw[i + 1] != 'u') {
            unit = 2;

        } else if (i + 6 > n) {
            break;

        } else {
            unit = 6;
            cp = ngx_http_llm_answer_hex4(raw + i + 2);

            if ((cp & 0xfc00) == 0xd800) {

                /* a high surrogate: is a low one after it? */

                if (i + 8 > n) {
                    break;
                }

                if (raw[i + 6] == '\\' && raw[i + 7] == 'u') {
                    unit = 12;
                }
            }
        }

        if (i + unit > n) {
            break;
        }
    }

    return ngx_min(i, n);
}


static ngx_uint_t
ngx_http_llm_answer_hex4(u_char *p)
{
    u_char      c;
    ngx_uint_t  i, cp;

    cp = 0;

    for (i = 0; i < 4; i++) {
        c = ngx_tolower(p[i]);

        if (c >= '0' && c <= '9') {
            cp = cp * 16 + (c - '0');

        } else if (c >= 'a' && c <= 'f') {
            cp = cp * 16 + (c - 'a' + 10);

        } else {
            /* yajl rejects it */
            return 0x10000;
        }
    }

    return cp;
}


/* the length of the longest valid UTF-8 prefix (RFC 3629) */

static size_t
ngx_http_llm_answer_utf8(u_char *p, size_t len)
{
    u_char  c, lo, hi, *s, *last;
    size_t  n, i;

    s = p;
    last = p + len;

    while (s < last) {
        c = *s;

        if (c < 0x80) {
            s++;
            continue;
        }

        lo = 0x80;
        hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;

            if (c == 0xe0) {
                lo = 0xa0;

            } else if (c == 0xed) {
                hi = 0x9f;     /* not a surrogate */
            }

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;

            if (c == 0xf0) {
                lo = 0x90;

            } else if (c == 0xf4) {
                hi = 0x8f;
            }

        } else {
            break;
        }

        if ((size_t) (last - s) <= n || s[1] < lo || s[1] > hi) {
            break;
        }

        for (i = 2; i <= n; i++) {
            if (s[i] < 0x80 || s[i] > 0xbf) {
                break;
            }
        }

        if (i <= n) {
            break;
        }

        s += n + 1;
    }

    return s - p;
}


/*
 * The depth bound also bounds yajl's own stack: returning 0 stops the
 * parse.
 */

static int
ngx_http_llm_answer_usage_start(void *data)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    if (ctx->depth == NGX_HTTP_LLM_ANSWER_USAGE_DEPTH) {
        return 0;
    }

    ctx->depth++;
    ctx->key = ngx_http_llm_usage_other;

    return 1;
}


static int
ngx_http_llm_answer_usage_end(void *data)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    ctx->depth--;
    ctx->key = ngx_http_llm_usage_other;

    return 1;
}


static int
ngx_http_llm_answer_usage_key(void *data, const unsigned char *s, size_t len)
{
    ngx_http_llm_answer_usage_t  *ctx = data;

    ctx->key = (ctx->depth == 1)
               ? ngx_http_llm_answer_lookup(ngx_http_llm_answer_usage_keys,
                                            (u_char *) s, len)
               : ngx_http_llm_usage_other;

    return 1;
}


/*
 * Token counts are non-negative integers; a fraction, an exponent or a
 * sign is not a count, and 18 digits are far more than any.
 */

static int
ngx_http_llm_answer_usage_number(void *data, const char *s, size_t len)
{
    off_t                         n;
    size_t                        i;
    ngx_http_llm_answer_usage_t  *ctx = data;

    if (ctx->key == ngx_http_llm_usage_other || len == 0 || len > 18) {
        return 1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 1;
        }

        n = n * 10 + (s[i] - '0');
    }

    if (ctx->key == ngx_http_llm_usage_input) {
        ctx->input = n;

    } else {
        ctx->output = n;
    }

    return 1;
}


static int
ngx_http_llm_answer_model_string(void *data, const unsigned char *s,
    size_t len)
{
    ngx_http_llm_answer_model_t  *ctx = data;

    ctx->strings++;
    ctx->len = ngx_min(len, NGX_HTTP_LLM_ANSWER_MODEL_MAX);
    ngx_memcpy(ctx->buf, s, ctx->len);

    return 1;
}
