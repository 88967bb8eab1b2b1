
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_answer_int.h"


/*
 * The scan of one JSON document of an answer (the body of a plain answer,
 * or the data of one SSE event): strings skipped with memchr(), brackets
 * counted, the members followed kept up to their bounds.
 */


static ngx_http_llm_answer_cap_t *ngx_http_llm_answer_value(
    ngx_http_llm_answer_t *a, ngx_http_llm_answer_state_t *st, u_char c);
static void ngx_http_llm_answer_close(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st);
static ngx_uint_t ngx_http_llm_answer_member(
    ngx_http_llm_answer_state_t *st, u_char *raw, size_t len);
static ngx_uint_t ngx_http_llm_answer_name(u_char *name, size_t len);


/* the states that skip whitespace before their token */

static const ngx_uint_t  ngx_http_llm_answer_ws_states =
    (1 << sw_start) | (1 << sw_first_key) | (1 << sw_key) | (1 << sw_colon)
    | (1 << sw_value) | (1 << sw_after_value) | (1 << sw_done);


void
ngx_http_llm_answer_json(ngx_http_llm_answer_t *a,
    ngx_http_llm_answer_state_t *st, u_char *p, u_char *last)
{
    u_char  c, *q, *start;

    while (p < last) {

        /* whitespace between tokens, in one run */

        if ((1 << st->state) & ngx_http_llm_answer_ws_states) {

            while (ngx_http_llm_json_ws(*p)) {
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
                st->backslashes = 0;

                /* a name whole in this piece is looked up where it is */

                q = ngx_http_llm_json_string_end(&st->backslashes, p + 1,
                                                   last);

                if (q != NULL) {
                    st->member = ngx_http_llm_answer_member(st, p, q - p);
                    st->state = sw_colon;
                    p = q;
                    break;
                }

                st->key.len = 0;
                st->backslashes = 0;
                st->state = sw_key_string;
                ngx_http_llm_answer_keep(st, &st->key, p, p + 1);
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
            q = ngx_http_llm_json_string_end(&st->backslashes, p, last);

            ngx_http_llm_answer_keep(st, &st->key, p, q ? q : last);

            if (q == NULL) {
                return;
            }

            st->member = ngx_http_llm_answer_member(st, st->key.data,
                                                    st->key.len);
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

            if ((c == '{' || c == '[') && a->sse && !st->past_snap) {
                ngx_http_llm_answer_snap(st, st->prefix.len - (last - p));
            }

            st->cap = ngx_http_llm_answer_value(a, st, c);

            if (c == '"') {
                if (st->cap) {
                    ngx_http_llm_answer_keep(st, st->cap, p, p + 1);

                } else {
                    st->span = st->prefix.len - (last - p);
                }

                st->backslashes = 0;
                st->state = sw_string;
                p++;
                break;
            }

            if (c == '{' || c == '[') {
                if (st->cap) {
                    ngx_http_llm_answer_keep(st, st->cap, p, p + 1);
                }

                st->depth++;
                st->state = sw_nested;
                p++;
                break;
            }

            if (ngx_http_llm_json_literal(c)) {
                st->state = sw_literal;
                break;
            }

            st->state = sw_error;
            return;

        case sw_string:
            q = ngx_http_llm_json_string_end(&st->backslashes, p, last);

            if (st->cap) {
                ngx_http_llm_answer_keep(st, st->cap, p, q ? q : last);
            }

            if (q == NULL) {
                return;
            }

            if (st->cap) {
                st->cap->complete = 1;
                st->cap = NULL;

            } else if (a->sse) {
                ngx_http_llm_answer_span(st, st->span,
                                         st->prefix.len - (last - q) - 1);
            }

            st->state = sw_after_value;
            p = q;
            break;

        case sw_literal:

            while (p < last && ngx_http_llm_json_literal(*p)) {
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
                while (p < last && !ngx_http_llm_json_stop[*p]) {
                    p++;
                }

                if (p == last) {
                    break;
                }

                c = *p++;

                if (c == '"') {
                    st->backslashes = 0;
                    st->span = st->prefix.len - (last - p) - 1;

                    q = ngx_http_llm_json_string_end(&st->backslashes, p,
                                                       last);

                    if (q == NULL) {
                        st->state = sw_nested_string;
                        p = last;
                        break;
                    }

                    if (st->cap == NULL && a->sse) {
                        ngx_http_llm_answer_span(st, st->span,
                                                 st->prefix.len
                                                 - (last - q) - 1);
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
                ngx_http_llm_answer_keep(st, st->cap, start, p);

                if (st->state == sw_after_value) {
                    st->cap->complete = 1;
                    st->cap = NULL;
                }
            }

            break;

        case sw_nested_string:
            q = ngx_http_llm_json_string_end(&st->backslashes, p, last);

            if (st->cap) {
                ngx_http_llm_answer_keep(st, st->cap, p, q ? q : last);
            }

            if (q == NULL) {
                return;
            }

            if (st->cap == NULL && a->sse) {
                ngx_http_llm_answer_span(st, st->span,
                                         st->prefix.len - (last - q) - 1);
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

        if (c != '"' || a->model_len || a->shape_only) {
            return NULL;
        }

        cap = &st->model;
        break;

    case ngx_http_llm_m_usage:
    case ngx_http_llm_m_nested_usage:

        /* "usage": null in all chunks of a chat stream but the last */

        if (c != '{' || a->shape_only) {
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

        /* the snapshot's object and type are in these buffers */

        if (st->past_snap) {
            st->snap_len = 0;
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


/* raw: the name with its quotes, len bytes of it (kept or not) */

static ngx_uint_t
ngx_http_llm_answer_member(ngx_http_llm_answer_state_t *st, u_char *raw,
    size_t len)
{
    u_char      *name, buf[NGX_HTTP_LLM_ANSWER_KEY_MAX];
    ngx_uint_t   m;

    if (len > NGX_HTTP_LLM_ANSWER_KEY_MAX) {
        /* even with every character escaped, no name we know */
        return ngx_http_llm_m_other;
    }

    name = raw + 1;
    len -= 2;

    if (memchr(name, '\\', len)) {

        /* "mod\u0065l" is "model" to the provider too */

        if (ngx_http_llm_json_string(raw, len + 2, buf, sizeof(buf), &len)
            != NGX_OK)
        {
            return ngx_http_llm_m_other;
        }

        name = buf;
    }

    m = ngx_http_llm_answer_name(name, len);


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
 * The member a name is, the names followed: model, usage, object, type,
 * error, choices, output, content, data, message, response.  A switch on
 * the length: it runs for every member of every event.
 */

static ngx_uint_t
ngx_http_llm_answer_name(u_char *name, size_t len)
{
    switch (len) {

    case 4:

        if (ngx_memcmp(name, "type", 4) == 0) {
            return ngx_http_llm_m_type;
        }

        if (ngx_memcmp(name, "data", 4) == 0) {
            return ngx_http_llm_m_data;
        }

        break;

    case 5:

        if (ngx_memcmp(name, "model", 5) == 0) {
            return ngx_http_llm_m_model;
        }

        if (ngx_memcmp(name, "usage", 5) == 0) {
            return ngx_http_llm_m_usage;
        }

        if (ngx_memcmp(name, "error", 5) == 0) {
            return ngx_http_llm_m_error;
        }

        break;

    case 6:

        if (ngx_memcmp(name, "object", 6) == 0) {
            return ngx_http_llm_m_object;
        }

        if (ngx_memcmp(name, "output", 6) == 0) {
            return ngx_http_llm_m_output;
        }

        break;

    case 7:

        if (ngx_memcmp(name, "choices", 7) == 0) {
            return ngx_http_llm_m_choices;
        }

        if (ngx_memcmp(name, "content", 7) == 0) {
            return ngx_http_llm_m_content;
        }

        if (ngx_memcmp(name, "message", 7) == 0) {
            return ngx_http_llm_m_message;
        }

        break;

    case 8:

        if (ngx_memcmp(name, "response", 8) == 0) {
            return ngx_http_llm_m_response;
        }

        break;
    }

    return ngx_http_llm_m_other;
}


/*
 * A value longer than its buffer: the buffer grows from the pool, at
 * least fourfold, up to max; when the pool has no memory the value is
 * kept cut, as one longer than max would be.
 */

void
ngx_http_llm_answer_keep_long(ngx_http_llm_answer_state_t *st,
    ngx_http_llm_answer_cap_t *cap, u_char *p, u_char *last)
{
    u_char  *buf;
    size_t   n, size;

    n = last - p;

    if (cap->len + n > cap->size && cap->size < cap->max) {

        size = ngx_max(cap->len + n,
                       ngx_max(cap->size * 4, NGX_HTTP_LLM_ANSWER_GROW_MIN));
        size = ngx_min(size, cap->max);

        /* a spare byte after the value, and the wrap before it */

        buf = ngx_palloc(st->pool, cap->head + size + 1);

        if (buf != NULL) {
            if (cap->data) {
                ngx_memcpy(buf, cap->data - cap->head,
                           cap->head + ngx_min(cap->len, cap->size));
            }

            cap->data = buf + cap->head;
            cap->size = size;
        }
    }

    if (cap->len < cap->size) {
        ngx_memcpy(cap->data + cap->len, p,
                   ngx_min(n, cap->size - cap->len));
    }

    cap->len += n;
}


void
ngx_http_llm_answer_cap_init(ngx_http_llm_answer_cap_t *cap, u_char *buf,
    size_t size, size_t max)
{
    cap->data = buf;
    cap->size = size;
    cap->max = max;
    cap->len = 0;
    cap->head = 0;
    cap->complete = 0;
}


/* a new document: the next event's data */

void
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
    st->past_snap = 0;
    st->replayed = 0;

    st->prefix.len = 0;
    st->model.len = 0;
    st->usage.len = 0;
    st->object.len = 0;
    st->type.len = 0;
    st->nested_object.len = 0;
    st->nested_type.len = 0;
    st->nested_error.len = 0;
}
