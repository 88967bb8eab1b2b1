
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Request inspection (docs/directives.md, "How an attempt is made").  The
 * structural scan runs in a request body filter, on each piece of the
 * body as it arrives and before nginx writes it to a temp file, so a
 * body spilled to disk is never read back.  A body that another module
 * read before the route ran is scanned where it lies.  The "model"
 * value's byte span is what a per-target rewrite will splice.
 */


static ngx_int_t ngx_http_llm_request_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_llm_request_scan_file(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx, ngx_buf_t *b, u_char **chunk);
static void ngx_http_llm_request_model(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);
static ngx_int_t ngx_http_llm_request_piece(ngx_http_request_t *r,
    ngx_chain_t *body, off_t from, off_t to, ngx_chain_t ***ll);
static ngx_int_t ngx_http_llm_request_memory(ngx_http_request_t *r,
    ngx_chain_t *body, off_t from, off_t to, ngx_chain_t ***ll);
static ngx_int_t ngx_http_llm_request_link(ngx_http_request_t *r,
    ngx_buf_t *b, ngx_chain_t ***ll);


static ngx_http_request_body_filter_pt  ngx_http_next_request_body_filter;


ngx_int_t
ngx_http_llm_request_init(ngx_conf_t *cf)
{
    ngx_http_next_request_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = ngx_http_llm_request_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_request_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    ngx_http_llm_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_request_body_filter(r, in);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

    if (ctx == NULL || ctx->scan == NULL) {
        return ngx_http_next_request_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            ngx_http_llm_scan(ctx->scan, b->pos, b->last);

        } else if (ngx_buf_size(b)) {
            /* body filters get memory buffers; never seen, but be safe */
            ctx->scan->error = "the request body could not be inspected";
        }

        if (b->last_buf) {
            ngx_http_llm_scan_end(ctx->scan);
        }
    }

    return ngx_http_next_request_body_filter(r, in);
}


/*
 * A body read before the content phase (mirror, auth_request, lua's
 * ngx.req.read_body(), njs) passed the request body filters before the
 * route had its context: the scan never saw it.  It is whole in
 * r->request_body->bufs, in memory or in the temp file (spilled, or
 * client_body_in_file_only); it is scanned there, a file in chunks of
 * bounded size.  Called before ngx_http_read_client_request_body(),
 * which then calls the route's body handler at once.
 */

#define NGX_HTTP_LLM_FILE_CHUNK  8192

ngx_int_t
ngx_http_llm_request_scan_read(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char                   *chunk;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_chain_t              *cl;
    ngx_http_request_body_t  *rb;

    rb = r->request_body;

    if (rb == NULL) {
        /* the route reads the body itself, through the filter */
        return NGX_OK;
    }

    if (r->reading_body || rb->rest > 0) {
        /* still arriving for another module, which does not buffer it */
        ctx->scan->error = "the request body could not be inspected";
        return NGX_OK;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm request body read before the route");

    chunk = NULL;
    rc = NGX_OK;

    for (cl = rb->bufs; cl && ctx->scan->error == NULL; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            ngx_http_llm_scan(ctx->scan, b->pos, b->last);
            continue;
        }

        if (b->in_file) {
            rc = ngx_http_llm_request_scan_file(r, ctx, b, &chunk);

            if (rc != NGX_OK) {
                break;
            }
        }
    }

    if (chunk) {
        ngx_pfree(r->pool, chunk);
    }

    return rc;
}


static ngx_int_t
ngx_http_llm_request_scan_file(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_buf_t *b, u_char **chunk)
{
    off_t    offset;
    size_t   size;
    ssize_t  n;

    if (*chunk == NULL) {
        *chunk = ngx_palloc(r->pool, NGX_HTTP_LLM_FILE_CHUNK);
        if (*chunk == NULL) {
            return NGX_ERROR;
        }
    }

    for (offset = b->file_pos;
         offset < b->file_last && ctx->scan->error == NULL;
         offset += n)
    {
        size = (size_t) ngx_min(b->file_last - offset,
                                NGX_HTTP_LLM_FILE_CHUNK);

        n = ngx_read_file(b->file, *chunk, size, offset);

        if (n != (ssize_t) size) {
            ngx_log_error(NGX_LOG_ERR, ctx->log, 0,
                          "llm: short read of the request body temp file");
            return NGX_ERROR;
        }

        ngx_http_llm_scan(ctx->scan, *chunk, *chunk + n);
    }

    return NGX_OK;
}


/*
 * Called once the whole body is read: NGX_OK, or NGX_DECLINED when the
 * request must be refused with 400 (ctx->scan->error says why).  What
 * the attempts need of the scan is kept in ctx->body and the scan freed.
 */

ngx_int_t
ngx_http_llm_request_inspect(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_scan_t  *s;

    s = ctx->scan;

    /* a body that ended without a last buffer (none at all) */
    ngx_http_llm_scan_end(s);

    if (s->error) {
        ngx_log_error(NGX_LOG_INFO, ctx->log, 0,
                      "llm route \"%V\": bad request body: %s, "
                      "at byte %O", &ctx->conf->route, s->error, s->offset);
        return NGX_DECLINED;
    }

    ngx_http_llm_request_model(r, ctx);

    ctx->body.object_start = s->object_start;
    ctx->body.model_start = s->model_start;
    ctx->body.model_end = s->model_end;
    ctx->body.members = s->members;
    ctx->body.stream = s->stream;

    /* the request body filter passes what may follow untouched */

    ngx_pfree(r->pool, s);
    ctx->scan = NULL;

    return NGX_OK;
}


/*
 * The requested model for $llm_model.  A value that is not a valid JSON
 * string once decoded (a bad escape, invalid UTF-8) is a finer grammar
 * error for the provider to refuse; the model then stays unknown here.
 */

static void
ngx_http_llm_request_model(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char               *p;
    size_t                len;
    ngx_http_llm_scan_t  *s;

    s = ctx->scan;

    if (s->model_end == -1 || s->model_too_long) {
        return;
    }

    p = ngx_pnalloc(r->pool, s->model_len);
    if (p == NULL) {
        return;
    }

    if (ngx_http_llm_json_string(s->model, s->model_len, p, s->model_len,
                                 &len)
        != NGX_OK)
    {
        return;
    }

    ctx->model.data = p;
    ctx->model.len = len;
}


/*
 * The body of an attempt.  Without a model rewrite it is the client body
 * itself, in a chain of its own links.  With one, the value's byte span
 * found by the scan is replaced by the target's model: the pieces before
 * and after it are new buffers pointing into the client body's memory or
 * temp file, so nothing of the body is copied.  A body without "model"
 * gets the member inserted after the opening brace.
 *
 * A temp-file body keeps a single file piece at offset 0, as
 * ngx_http_upstream_reinit() expects ("at most one file"): the part after
 * the model goes into memory when it is small; a larger one stays in the
 * file, which only matters if a target re-sends a request already sent
 * (proxy_next_upstream with non_idempotent).
 */

#define NGX_HTTP_LLM_TAIL_READ_MAX  (1024 * 1024)

ngx_int_t
ngx_http_llm_request_body(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target, ngx_chain_t **out, off_t *len)
{
    u_char               *p;
    off_t                 size, from, to;
    ngx_buf_t            *b;
    ngx_chain_t          *body, *cl, **ll;
    ngx_http_llm_body_t  *s;

    body = r->request_body->bufs;
    s = &ctx->body;

    size = 0;

    for (cl = body; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }

    ll = out;

    if (target->model.len == 0) {
        if (ngx_http_llm_request_piece(r, body, 0, size, &ll) != NGX_OK) {
            return NGX_ERROR;
        }

        *ll = NULL;
        *len = size;

        return NGX_OK;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    if (s->model_end != -1) {
        from = s->model_start;
        to = s->model_end;

        b->pos = target->model_json.data;
        b->last = b->pos + target->model_json.len;

    } else {
        from = s->object_start + 1;
        to = from;

        p = ngx_pnalloc(r->pool, sizeof("\"model\":,") - 1
                                 + target->model_json.len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        b->pos = p;
        p = ngx_cpymem(p, "\"model\":", sizeof("\"model\":") - 1);
        p = ngx_cpymem(p, target->model_json.data, target->model_json.len);

        if (s->members) {
            *p++ = ',';
        }

        b->last = p;
    }

    b->start = b->pos;
    b->end = b->last;
    b->memory = 1;

    if (ngx_http_llm_request_piece(r, body, 0, from, &ll) != NGX_OK
        || ngx_http_llm_request_link(r, b, &ll) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (r->request_body->temp_file && size - to <= NGX_HTTP_LLM_TAIL_READ_MAX)
    {
        if (ngx_http_llm_request_memory(r, body, to, size, &ll) != NGX_OK) {
            return NGX_ERROR;
        }

    } else if (ngx_http_llm_request_piece(r, body, to, size, &ll) != NGX_OK) {
        return NGX_ERROR;
    }

    *ll = NULL;
    *len = size - (to - from) + (b->last - b->pos);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "llm model rewrite for \"%V\": [%O, %O), body %O",
                   &target->uri, from, to, *len);

    return NGX_OK;
}


/* new buffers for the bytes [from, to) of the body, sharing its data */

static ngx_int_t
ngx_http_llm_request_piece(ngx_http_request_t *r, ngx_chain_t *body,
    off_t from, off_t to, ngx_chain_t ***ll)
{
    off_t         o, n, lo, hi;
    ngx_buf_t    *b, *nb;
    ngx_chain_t  *cl;

    o = 0;

    for (cl = body; cl && o < to; cl = cl->next, o += n) {
        b = cl->buf;
        n = ngx_buf_size(b);

        lo = ngx_max(o, from);
        hi = ngx_min(o + n, to);

        if (lo >= hi) {
            continue;
        }

        nb = ngx_calloc_buf(r->pool);
        if (nb == NULL) {
            return NGX_ERROR;
        }

        if (ngx_buf_in_memory(b)) {
            nb->memory = 1;
            nb->pos = b->pos + (lo - o);
            nb->last = b->pos + (hi - o);
            nb->start = nb->pos;
            nb->end = nb->last;

        } else {
            nb->in_file = 1;
            nb->file = b->file;
            nb->file_pos = b->file_pos + (lo - o);
            nb->file_last = b->file_pos + (hi - o);
        }

        if (ngx_http_llm_request_link(r, nb, ll) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the bytes [from, to) of the body in one memory buffer */

static ngx_int_t
ngx_http_llm_request_memory(ngx_http_request_t *r, ngx_chain_t *body,
    off_t from, off_t to, ngx_chain_t ***ll)
{
    off_t                o, n, lo, hi;
    ssize_t              got;
    ngx_buf_t           *b, *nb;
    ngx_chain_t         *cl;
    ngx_http_llm_ctx_t  *ctx;

    if (from == to) {
        return NGX_OK;
    }

    nb = ngx_create_temp_buf(r->pool, (size_t) (to - from));
    if (nb == NULL) {
        return NGX_ERROR;
    }

    o = 0;

    for (cl = body; cl && o < to; cl = cl->next, o += n) {
        b = cl->buf;
        n = ngx_buf_size(b);

        lo = ngx_max(o, from);
        hi = ngx_min(o + n, to);

        if (lo >= hi) {
            continue;
        }

        if (ngx_buf_in_memory(b)) {
            nb->last = ngx_cpymem(nb->last, b->pos + (lo - o), hi - lo);
            continue;
        }

        got = ngx_read_file(b->file, nb->last, (size_t) (hi - lo),
                            b->file_pos + (lo - o));

        if (got != (ssize_t) (hi - lo)) {
            ctx = ngx_http_get_module_ctx(r, ngx_http_llm_module);

            ngx_log_error(NGX_LOG_ERR, ctx->log, 0,
                          "llm: short read of the request body temp file");
            return NGX_ERROR;
        }

        nb->last += got;
    }

    return ngx_http_llm_request_link(r, nb, ll);
}


static ngx_int_t
ngx_http_llm_request_link(ngx_http_request_t *r, ngx_buf_t *b,
    ngx_chain_t ***ll)
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


/* the endpoint family from the request URI's ending (design.md 1) */

ngx_uint_t
ngx_http_llm_family(ngx_http_request_t *r)
{
    return ngx_http_llm_family_of(&r->uri);
}


ngx_uint_t
ngx_http_llm_family_of(ngx_str_t *uri)
{
    ngx_uint_t  i;

    static struct {
        ngx_str_t   suffix;
        ngx_uint_t  family;
    } suffixes[] = {
        { ngx_string("/chat/completions"), NGX_HTTP_LLM_FAMILY_CHAT },
        { ngx_string("/responses"), NGX_HTTP_LLM_FAMILY_RESPONSES },
        { ngx_string("/messages"), NGX_HTTP_LLM_FAMILY_MESSAGES },
        { ngx_string("/embeddings"), NGX_HTTP_LLM_FAMILY_EMBEDDINGS },
        { ngx_string("/completions"), NGX_HTTP_LLM_FAMILY_COMPLETIONS },
        { ngx_null_string, 0 }
    };

    for (i = 0; suffixes[i].suffix.len; i++) {
        if (uri->len >= suffixes[i].suffix.len
            && ngx_strncmp(uri->data + uri->len - suffixes[i].suffix.len,
                           suffixes[i].suffix.data,
                           suffixes[i].suffix.len) == 0)
        {
            return suffixes[i].family;
        }
    }

    return NGX_HTTP_LLM_FAMILY_OTHER;
}


/* a family= value: NGX_ERROR when it names none */

ngx_int_t
ngx_http_llm_family_value(ngx_str_t *name)
{
    ngx_uint_t  f;

    for (f = NGX_HTTP_LLM_FAMILY_CHAT; f < NGX_HTTP_LLM_FAMILY_OTHER; f++) {
        if (name->len == ngx_http_llm_family_names[f].len
            && ngx_strncmp(name->data, ngx_http_llm_family_names[f].data,
                           name->len) == 0)
        {
            return f;
        }
    }

    return NGX_ERROR;
}
