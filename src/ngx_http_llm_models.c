
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * llm_models (docs/directives.md): the union of model catalogs in
 * OpenAI's /v1/models list shape, made once per configuration.
 */


static u_char *ngx_http_llm_models_body(ngx_http_llm_catalog_t **cats,
    ngx_uint_t n, u_char *p, size_t *len);
static ngx_int_t ngx_http_llm_models_handler(ngx_http_request_t *r);


/* llm_models NAME ... */

char *
ngx_http_llm_models(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t                    *value, *name;
    ngx_uint_t                    i;
    ngx_http_llm_models_t        *m, **list;
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_llm_catalog_conf_t  *ccf;

    if (llcf->models) {
        return "is duplicate";
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_models\" cannot be combined with another "
                           "content handler in one location");
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_llm_models_handler;

    ccf = ngx_http_llm_catalog_conf(cf);
    if (ccf == NULL) {
        return NGX_CONF_ERROR;
    }

    m = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_models_t));
    if (m == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_array_init(&m->names, cf->pool, cf->args->nelts - 1,
                       sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        name = ngx_array_push(&m->names);
        if (name == NULL) {
            return NGX_CONF_ERROR;
        }

        *name = value[i];
    }

    m->clcf = clcf;
    m->conf_file = cf->conf_file->file.name;
    m->conf_line = cf->conf_file->line;

    list = ngx_array_push(&ccf->lists);
    if (list == NULL) {
        return NGX_CONF_ERROR;
    }

    *list = m;
    llcf->models = m;

    return NGX_CONF_OK;
}


/* the answer of an llm_models location, made once per configuration */

ngx_int_t
ngx_http_llm_models_init(ngx_conf_t *cf, ngx_http_llm_catalog_conf_t *ccf,
    ngx_http_llm_models_t *m)
{
    size_t                     len;
    ngx_str_t                 *name;
    ngx_uint_t                 i, j, n;
    ngx_http_llm_catalog_t   **cats, *c;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = m->clcf;

    /* proxy_pass, return, ... given after llm_models replace its handler */

    if (clcf->handler != ngx_http_llm_models_handler) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"llm_models\" cannot be combined with another "
                      "content handler in one location in %V:%ui",
                      &m->conf_file, m->conf_line);
        return NGX_ERROR;
    }

    cats = ngx_palloc(cf->temp_pool, m->names.nelts * sizeof(void *));
    if (cats == NULL) {
        return NGX_ERROR;
    }

    name = m->names.elts;
    n = 0;

    for (i = 0; i < m->names.nelts; i++) {
        c = ngx_http_llm_catalog_lookup(ccf, &name[i]);

        if (c == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown llm_catalog \"%V\" in %V:%ui",
                          &name[i], &m->conf_file, m->conf_line);
            return NGX_ERROR;
        }

        for (j = 0; j < n; j++) {
            if (cats[j] == c) {
                break;
            }
        }

        if (j == n) {
            cats[n++] = c;
        }
    }

    (void) ngx_http_llm_models_body(cats, n, NULL, &len);

    m->body.data = ngx_pnalloc(cf->pool, len);
    if (m->body.data == NULL) {
        return NGX_ERROR;
    }

    m->body.len = ngx_http_llm_models_body(cats, n, m->body.data, &len)
                  - m->body.data;

    ngx_pfree(cf->temp_pool, cats);

    return NGX_OK;
}


/*
 * The union of the catalogs in OpenAI's list shape: the catalogs in the
 * order named, each one's models in its file's order, an id already
 * listed by an earlier catalog left out.  With p NULL, only the length.
 */

static u_char *
ngx_http_llm_models_body(ngx_http_llm_catalog_t **cats, ngx_uint_t n,
    u_char *p, size_t *len)
{
    size_t                         size;
    ngx_str_t                     *owner;
    ngx_uint_t                     i, j, k, first;
    ngx_http_llm_catalog_model_t  *m;

    static u_char  head[] = "{\"object\":\"list\",\"data\":[";
    static u_char  tail[] = "]}\n";

    size = sizeof(head) - 1 + sizeof(tail) - 1;

    if (p) {
        p = ngx_cpymem(p, head, sizeof(head) - 1);
    }

    first = 1;

    for (i = 0; i < n; i++) {
        m = cats[i]->models.elts;

        for (k = 0; k < cats[i]->models.nelts; k++) {

            for (j = 0; j < i; j++) {
                if (ngx_http_llm_catalog_find(cats[j], &m[k].id)) {
                    break;
                }
            }

            if (j < i) {
                continue;
            }

            /* a model without an owner is the catalog's */

            owner = m[k].owned_by.len ? &m[k].owned_by : &cats[i]->name;

            size += sizeof(",{\"id\":\"\",\"object\":\"model\",\"created\":"
                           ",\"owned_by\":\"\"}") - 1
                    + m[k].id.len
                    + ngx_escape_json(NULL, m[k].id.data, m[k].id.len)
                    + NGX_TIME_T_LEN
                    + owner->len
                    + ngx_escape_json(NULL, owner->data, owner->len);

            if (p == NULL) {
                continue;
            }

            if (!first) {
                *p++ = ',';
            }

            first = 0;

            p = ngx_cpymem(p, "{\"id\":\"", sizeof("{\"id\":\"") - 1);
            p = (u_char *) ngx_escape_json(p, m[k].id.data, m[k].id.len);
            p = ngx_sprintf(p, "\",\"object\":\"model\",\"created\":%T,"
                               "\"owned_by\":\"", m[k].created);
            p = (u_char *) ngx_escape_json(p, owner->data, owner->len);
            p = ngx_cpymem(p, "\"}", 2);
        }
    }

    *len = size;

    if (p) {
        p = ngx_cpymem(p, tail, sizeof(tail) - 1);
    }

    return p;
}


static ngx_int_t
ngx_http_llm_models_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_chain_t               out;
    ngx_http_llm_models_t    *m;
    ngx_http_llm_loc_conf_t  *llcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        if (ngx_http_llm_add_header(r, "Allow", (u_char *) "GET, HEAD",
                                    sizeof("GET, HEAD") - 1)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    llcf = ngx_http_get_module_loc_conf(r, ngx_http_llm_module);
    m = llcf->models;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the configuration's own bytes, read only */

    b->pos = m->body.data;
    b->last = m->body.data + m->body.len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = m->body.len;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
