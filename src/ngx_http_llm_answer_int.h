
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_ANSWER_INT_H_INCLUDED_
#define _NGX_HTTP_LLM_ANSWER_INT_H_INCLUDED_


/*
 * Private to the answer reader: ngx_http_llm_answer.c (the interface,
 * SSE framing, judging), ngx_http_llm_answer_json.c (the scan of a JSON
 * document), ngx_http_llm_answer_value.c (the kept values decoded) and
 * ngx_http_llm_answer_reuse.c (the last event's reading reused).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_answer.h"


/* a member name, raw: "response" with every character escaped fits */
#define NGX_HTTP_LLM_ANSWER_KEY_MAX     64

#define NGX_HTTP_LLM_ANSWER_USAGE_MAX   4096
#define NGX_HTTP_LLM_ANSWER_NAME_MAX    64      /* "object", "type" */
#define NGX_HTTP_LLM_ANSWER_ERROR_MAX   1024    /* response.error */
#define NGX_HTTP_LLM_ANSWER_PREFIX_MAX  2048    /* of each document */
#define NGX_HTTP_LLM_ANSWER_EVENT_MAX   48      /* the event field */
#define NGX_HTTP_LLM_ANSWER_FIELD_MAX   8       /* an SSE field name */
#define NGX_HTTP_LLM_ANSWER_SPANS       8       /* strings of an event */

/* a span's offsets; the top bit of its start: no backslash in it */
#define NGX_HTTP_LLM_ANSWER_SPAN_MAX    0x7fff
#define NGX_HTTP_LLM_ANSWER_SPAN_CLEAN  0x8000

/*
 * What the state holds in itself of the values that may be long; a
 * longer one grows its buffer from the pool, once per answer (and kept
 * for the next documents), so an idle stream of short events costs no
 * more than these
 */
#define NGX_HTTP_LLM_ANSWER_PREFIX_INLINE  384
#define NGX_HTTP_LLM_ANSWER_MODEL_INLINE   64
#define NGX_HTTP_LLM_ANSWER_GROW_MIN       256

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
    size_t                       size;      /* kept at most now */
    size_t                       max;       /* kept at most ever */
    size_t                       len;       /* of the value, kept or not */
    u_char                       head;      /* bytes before data: a wrap */
    unsigned                     complete:1;    /* the value ended */
} ngx_http_llm_answer_cap_t;


/* what the scan of a document ended with, for its replay */

typedef struct {
    size_t                       len;       /* of the document; 0: none */
    ngx_uint_t                   member;
    ngx_uint_t                   seen;
    uint16_t                     object;    /* the caps' len, complete */
    uint16_t                     type;
    uint16_t                     nested_object;
    uint16_t                     nested_type;
    unsigned                     error:1;
    unsigned                     named:1;   /* its event had a name */
} ngx_http_llm_answer_last_t;


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
    ngx_pool_t                  *pool;      /* for buffers that grow */

    unsigned                     error:1;   /* a top-level "error" */
    unsigned                     judged:1;  /* a plain answer, once */
    unsigned                     cr:1;      /* a line ended with CR */
    unsigned                     bom:2;     /* bytes of a BOM matched */
    unsigned                     ended:1;
    unsigned                     past_snap:1;   /* this document's */
    unsigned                     replayed:1;    /* this document */

    /*
     * The scan's state at the first nested value of an event, taken for
     * the next event that begins with the same bytes (the id, object,
     * created and model members that every chunk of a stream repeats):
     * it starts there (ngx_http_llm_answer_data()).  The bytes are the
     * kept prefix of the last event.
     */
    size_t                       snap_len;      /* 0: none */
    ngx_uint_t                   snap_member;
    ngx_uint_t                   snap_seen;
    size_t                       snap_object;   /* object.len */
    size_t                       snap_type;     /* type.len */

    /*
     * The last event, for the next one that differs from it only inside
     * one string that is not kept (a chunk's text): its length, what its
     * scan ended with, and its strings not kept (the offsets of their
     * quotes, the last NGX_HTTP_LLM_ANSWER_SPANS of them)
     */
    ngx_http_llm_answer_last_t   last;
    ngx_uint_t                   nspans;
    size_t                       span;          /* a string's start */
    uint16_t                     spans[NGX_HTTP_LLM_ANSWER_SPANS][2];

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
    u_char                       object_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       type_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       nested_object_buf[
                                     NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       nested_type_buf[NGX_HTTP_LLM_ANSWER_NAME_MAX];
    u_char                       prefix_buf[
                                     NGX_HTTP_LLM_ANSWER_PREFIX_INLINE];

    /* one spare byte: a closing quote */
    u_char                       model_buf[
                                     NGX_HTTP_LLM_ANSWER_MODEL_INLINE + 1];

    /* usage and response.error have no buffer until one comes */
} ngx_http_llm_answer_state_t;


typedef struct {
    ngx_str_t                    name;
    ngx_uint_t                   value;
} ngx_http_llm_answer_name_t;


#define ngx_http_llm_answer_seen(st, m)                                       \
    ((st)->seen & ((ngx_uint_t) 1 << (m)))


void ngx_http_llm_answer_body(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
ngx_uint_t ngx_http_llm_answer_lookup(ngx_http_llm_answer_name_t *names,
    u_char *s, size_t len);
void ngx_http_llm_answer_cap_init(ngx_http_llm_answer_cap_t *cap,
    u_char *buf, size_t size, size_t max);
void ngx_http_llm_answer_json(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last);
void ngx_http_llm_answer_keep_long(ngx_http_llm_answer_state_t *st,
    ngx_http_llm_answer_cap_t *cap, u_char *p, u_char *last);
void ngx_http_llm_answer_reset(ngx_http_llm_answer_state_t *st);
void ngx_http_llm_answer_snap(ngx_http_llm_answer_state_t *st, size_t len);
u_char *ngx_http_llm_answer_reuse(ngx_http_llm_answer_state_t *st, u_char *p,
    u_char *last);
u_char *ngx_http_llm_answer_replay_data(ngx_http_llm_answer_state_t *st,
    u_char *p, u_char *last, u_char **lf);
void ngx_http_llm_answer_save(ngx_http_llm_answer_state_t *st);
void ngx_http_llm_answer_model(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
void ngx_http_llm_answer_usage(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);


/* a string not kept ended: [start, end] are its quotes' offsets */

static ngx_inline void
ngx_http_llm_answer_span(ngx_http_llm_answer_state_t *st, size_t start,
    size_t end)
{
    ngx_uint_t  i;

    if (end <= NGX_HTTP_LLM_ANSWER_SPAN_MAX) {
        i = st->nspans++ % NGX_HTTP_LLM_ANSWER_SPANS;
        st->spans[i][0] = (uint16_t) start;
        st->spans[i][1] = (uint16_t) end;
    }
}


/* keeps up to max bytes of a value; len counts all of them */

static ngx_inline void
ngx_http_llm_answer_keep(ngx_http_llm_answer_state_t *st,
    ngx_http_llm_answer_cap_t *cap, u_char *p, u_char *last)
{
    size_t  n;

    n = last - p;

    /* called a dozen times an event: the common case inline */

    if (cap->len + n <= cap->size) {
        ngx_memcpy(cap->data + cap->len, p, n);
        cap->len += n;
        return;
    }

    ngx_http_llm_answer_keep_long(st, cap, p, last);
}


#endif /* _NGX_HTTP_LLM_ANSWER_INT_H_INCLUDED_ */
