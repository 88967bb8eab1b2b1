
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * A stream goes to the client in whole events (docs/directives.md,
 * "Streams").  The bytes up to the last blank line of what the provider
 * sent are passed on at once, in the provider's own buffers; the bytes of
 * an event not yet ended are held back, copied into a buffer of the
 * module's, until its blank line comes.  A stream cut inside an event
 * then never hands the client half of that event's JSON: the held bytes
 * are dropped and the protocol's error event follows alone.
 *
 * A provider that sends each event in one piece, as they do, costs no
 * copy and no wait.  An event longer than NGX_HTTP_LLM_SSE_EVENT_MAX is
 * passed on as it comes rather than held without bound.
 */


#define NGX_HTTP_LLM_SSE_EVENT_MAX   (1024 * 1024)
#define NGX_HTTP_LLM_SSE_BUF_MIN     4096


#if (NGX_LINUX)
#define ngx_http_llm_memrchr  memrchr
#else
static void *ngx_http_llm_memrchr(void *s, int c, size_t n);
#endif

static u_char *ngx_http_llm_sse_boundary(ngx_http_llm_ctx_t *ctx, u_char *p,
    u_char *last);
static u_char *ngx_http_llm_sse_last(ngx_http_llm_ctx_t *ctx, u_char *p,
    u_char *t, u_char **e, ngx_uint_t *end);
static u_char *ngx_http_llm_sse_run(ngx_uint_t *state, u_char *p,
    u_char *last);
static ngx_int_t ngx_http_llm_sse_keep(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, u_char *p, u_char *last);
static ngx_int_t ngx_http_llm_sse_release(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_chain_t ***ll);
static ngx_int_t ngx_http_llm_sse_link(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_chain_t ***ll);


/*
 * The body filter's part for a committed stream: what of "in" the client
 * gets now, passed on to the next filter.
 */

ngx_int_t
ngx_http_llm_sse_forward(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t *in, ngx_http_output_body_filter_pt next)
{
    u_char       *q;
    size_t        held;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t  *cl, *out, **ll;

    out = NULL;
    ll = &out;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (!ngx_buf_in_memory(b) || b->pos == b->last) {

            if (b->last_buf || b->last_in_chain) {
                /* a clean end: an unended last event is the provider's */
                if (ngx_http_llm_sse_release(r, ctx, &ll) != NGX_OK) {
                    return NGX_ERROR;
                }
            }

            if (ngx_http_llm_sse_link(r, b, &ll) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        q = ngx_http_llm_sse_boundary(ctx, b->pos, b->last);

        if (q) {
            /* whole events up to q: what was held, then b up to q */

            if (ngx_http_llm_sse_release(r, ctx, &ll) != NGX_OK
                || ngx_http_llm_sse_keep(r, ctx, q, b->last) != NGX_OK)
            {
                return NGX_ERROR;
            }

            b->last = q;
            ctx->sse_open = 0;

            if (ngx_http_llm_sse_link(r, b, &ll) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        held = ctx->sse_hold ? ngx_buf_size(ctx->sse_hold) : 0;

        if (ctx->sse_open
            || held + (b->last - b->pos) > NGX_HTTP_LLM_SSE_EVENT_MAX)
        {
            /* an event too long to hold: the client gets it as it comes */

            if (ngx_http_llm_sse_release(r, ctx, &ll) != NGX_OK
                || ngx_http_llm_sse_link(r, b, &ll) != NGX_OK)
            {
                return NGX_ERROR;
            }

            ctx->sse_open = 1;
            continue;
        }

        if (ngx_http_llm_sse_keep(r, ctx, b->pos, b->last) != NGX_OK) {
            return NGX_ERROR;
        }

        /* consumed: the upstream module may reuse its buffer */
        b->pos = b->last;
    }

    *ll = NULL;

    rc = next(r, out);

    ngx_chain_update_chains(r->pool, &ctx->sse_free, &ctx->sse_busy, &out,
                            (ngx_buf_tag_t) &ngx_http_llm_module);

    return rc;
}


/*
 * The end of the last blank line in [p, last), or NULL.  Lines end with
 * LF, CR or CR LF; the state of the line scanned last is kept across
 * buffers, so a blank line split between two is found too.
 *
 * Only runs of line ends can hold a blank line, and only the last run
 * holding one matters: the runs are looked at from the end, each read
 * forward from the state before it (none after a byte of a line; the
 * kept one at the buffer's start).  A buffer of whole events ends with
 * one, read at once; the line ends are searched with memrchr(), each
 * byte once at most.
 */

static u_char *
ngx_http_llm_sse_boundary(ngx_http_llm_ctx_t *ctx, u_char *p, u_char *last)
{
    u_char      *q, *e, *t, *lf, *cr;
    ngx_uint_t   end;

    /* after a byte of a line: at no line's start */

    end = 0;
    e = last;

    if (last[-1] == LF || last[-1] == CR) {

        /* the buffer ends with a run, of a blank line most often */

        q = ngx_http_llm_sse_last(ctx, p, last - 1, &e, &end);

        if (q) {
            goto done;
        }
    }

    lf = ngx_http_llm_memrchr(p, LF, e - p);
    cr = ngx_http_llm_memrchr(p, CR, e - p);

    for ( ;; ) {
        t = (lf == NULL) ? cr : (cr == NULL || lf > cr) ? lf : cr;

        if (t == NULL) {
            q = NULL;
            break;
        }

        q = ngx_http_llm_sse_last(ctx, p, t, &e, NULL);

        if (q) {
            break;
        }

        /* the line ends before the run */

        if (lf && lf >= e) {
            lf = ngx_http_llm_memrchr(p, LF, e - p);
        }

        if (cr && cr >= e) {
            cr = ngx_http_llm_memrchr(p, CR, e - p);
        }
    }

done:

    ctx->sse_bol = end & 1;
    ctx->sse_cr = (end >> 1) & 1;
    ctx->sse_blank = (end >> 2) & 1;

    return q;
}


/*
 * The run of line ends that ends at t, read forward from the state
 * before it (none after a byte of a line; the kept one at the buffer's
 * start): the end of its last blank line, or NULL.  *e: where the run
 * starts; *end, when given: the state after it.
 */

static u_char *
ngx_http_llm_sse_last(ngx_http_llm_ctx_t *ctx, u_char *p, u_char *t,
    u_char **e, ngx_uint_t *end)
{
    u_char      *run, *q;
    ngx_uint_t   state;

    for (run = t; run > p && (run[-1] == LF || run[-1] == CR); run--) {
        /* void */
    }

    state = (run == p) ? (ctx->sse_bol | ctx->sse_cr << 1
                          | ctx->sse_blank << 2)
                       : 0;

    q = ngx_http_llm_sse_run(&state, run, t + 1);

    *e = run;

    if (end) {
        *end = state;
    }

    return q;
}


/*
 * A run of line ends read forward from *state (bit 0: at a line's
 * start, 1: after a CR, 2: that CR ended a blank line): the end of its
 * last blank line, or NULL.
 */

static u_char *
ngx_http_llm_sse_run(ngx_uint_t *state, u_char *p, u_char *last)
{
    u_char      *q;
    ngx_uint_t   bol, cr, blank;

    q = NULL;

    bol = *state & 1;
    cr = (*state >> 1) & 1;
    blank = (*state >> 2) & 1;

    for ( /* void */ ; p < last; p++) {

        if (*p == LF) {

            if (cr) {
                /*
                 * the LF of a CR LF: the CR ended the line; when that
                 * was a blank line, the event ends after the LF
                 */
                if (blank) {
                    q = p + 1;
                }

                cr = 0;
                blank = 0;
                continue;
            }

            if (bol) {
                q = p + 1;
            }

            bol = 1;
            continue;
        }

        /* CR */

        if (bol) {
            q = p + 1;
        }

        blank = bol;
        bol = 1;
        cr = 1;
    }

    *state = bol | cr << 1 | blank << 2;

    return q;
}


#if !(NGX_LINUX)

static void *
ngx_http_llm_memrchr(void *s, int c, size_t n)
{
    u_char  *p;

    for (p = (u_char *) s + n; p > (u_char *) s; p--) {
        if (p[-1] == (u_char) c) {
            return p - 1;
        }
    }

    return NULL;
}

#endif


/* appends [p, last) to the held bytes of the event not yet ended */

static ngx_int_t
ngx_http_llm_sse_keep(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    u_char *p, u_char *last)
{
    size_t        need, size;
    ngx_buf_t    *b, *old;
    ngx_chain_t  *cl, **ll;

    if (p == last) {
        return NGX_OK;
    }

    old = ctx->sse_hold;
    need = (last - p) + (old ? ngx_buf_size(old) : 0);

    if (old && (size_t) (old->end - old->last) >= (size_t) (last - p)) {
        old->last = ngx_cpymem(old->last, p, last - p);
        return NGX_OK;
    }

    /* a free buffer of the module's that is large enough, else a new one */

    b = NULL;

    for (ll = &ctx->sse_free; *ll; ll = &(*ll)->next) {
        cl = *ll;

        if ((size_t) (cl->buf->end - cl->buf->start) >= need) {
            b = cl->buf;
            *ll = cl->next;
            ngx_free_chain(r->pool, cl);
            break;
        }
    }

    if (b == NULL) {
        for (size = NGX_HTTP_LLM_SSE_BUF_MIN; size < need; size *= 2) {
            /* void */
        }

        b = ngx_create_temp_buf(r->pool, size);
        if (b == NULL) {
            return NGX_ERROR;
        }

        b->tag = (ngx_buf_tag_t) &ngx_http_llm_module;
    }

    b->pos = b->start;
    b->last = b->start;

    if (old) {
        b->last = ngx_cpymem(b->last, old->pos, old->last - old->pos);

        /* never passed on: free at once */

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        old->pos = old->start;
        old->last = old->start;

        cl->buf = old;
        cl->next = ctx->sse_free;
        ctx->sse_free = cl;
    }

    b->last = ngx_cpymem(b->last, p, last - p);

    ctx->sse_hold = b;

    return NGX_OK;
}


/* passes the held bytes on, now that their event has ended */

static ngx_int_t
ngx_http_llm_sse_release(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_chain_t ***ll)
{
    ngx_buf_t  *b;

    b = ctx->sse_hold;

    if (b == NULL) {
        return NGX_OK;
    }

    ctx->sse_hold = NULL;

    b->flush = 1;

    return ngx_http_llm_sse_link(r, b, ll);
}


static ngx_int_t
ngx_http_llm_sse_link(ngx_http_request_t *r, ngx_buf_t *b, ngx_chain_t ***ll)
{
    ngx_chain_t  *cl;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    **ll = cl;
    *ll = &cl->next;

    return NGX_OK;
}


/*
 * A stream cut after it began (the provider reset or stalled past the
 * target's proxy_read_timeout) ends with the protocol's own error event
 * and the end of the stream, so a client never takes a half answer for a
 * whole one.  The bytes of an event the provider did not end were never
 * passed on; only an event too long to hold was, and it is ended first:
 * its data is incomplete, and the error that follows says so.
 */

ngx_int_t
ngx_http_llm_stream_error(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_buf_t    *b;
    ngx_str_t     event;
    ngx_chain_t   out;

    static ngx_str_t  anthropic = ngx_string(
        "event: error\n"
        "data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\","
        "\"message\":\"the provider's stream was interrupted\"}}\n\n");

    static ngx_str_t  responses = ngx_string(
        "event: error\n"
        "data: {\"type\":\"error\",\"code\":\"stream_interrupted\","
        "\"message\":\"the provider's stream was interrupted\","
        "\"param\":null}\n\n");

    static ngx_str_t  openai = ngx_string(
        "data: {\"error\":{\"message\":\"the provider's stream was "
        "interrupted\",\"type\":\"server_error\",\"param\":null,"
        "\"code\":\"stream_interrupted\"}}\n\n");

    switch (ctx->family) {
    case NGX_HTTP_LLM_FAMILY_MESSAGES:
        event = anthropic;
        break;
    case NGX_HTTP_LLM_FAMILY_RESPONSES:
        event = responses;
        break;
    default:
        event = openai;
    }

    /* the held bytes of an unended event are dropped */
    ctx->sse_hold = NULL;

    b = ngx_create_temp_buf(r->pool, event.len + 2);
    if (b == NULL) {
        return NGX_ERROR;
    }

    if (ctx->sse_open) {
        *b->last++ = LF;
        *b->last++ = LF;
    }

    b->last = ngx_cpymem(b->last, event.data, event.len);
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
