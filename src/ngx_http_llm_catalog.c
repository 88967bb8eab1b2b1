
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * Model catalogs (docs/directives.md, "Model catalogs").  llm_catalog
 * reads a /v1/models list, OpenAI's or Anthropic's, when the
 * configuration is read, so a reload reads it again and a bad file fails
 * "nginx -t".  Targets name a catalog with catalog=: a target's model=
 * must be in it, and a client's model that would reach the target
 * unrewritten is checked against it before any attempt.  llm_models
 * serves the union of catalogs in OpenAI's list shape.
 */


/* catalog files are read whole into memory: a few KB to a few hundred */
#define NGX_HTTP_LLM_CATALOG_FILE_MAX  (16 * 1024 * 1024)


typedef struct {
    ngx_array_t                    *list;      /* targets or fallbacks */
    ngx_uint_t                      index;     /* of the target in it */
    ngx_str_t                       name;
    ngx_str_t                       conf_file;
    ngx_uint_t                      conf_line;
} ngx_http_llm_catalog_use_t;


static char *ngx_http_llm_catalog_read(ngx_conf_t *cf,
    ngx_http_llm_catalog_t *c);
static ngx_int_t ngx_http_llm_catalog_index(ngx_conf_t *cf,
    ngx_http_llm_catalog_t *c, ngx_array_t *models);
static int ngx_http_llm_catalog_cmp_model(const void *one, const void *two);
static ngx_int_t ngx_http_llm_catalog_cmp(ngx_str_t *a, ngx_str_t *b);
static ngx_int_t ngx_http_llm_catalog_refuse(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);


/* llm_catalog NAME FILE */

char *
ngx_http_llm_catalog(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    u_char                       *p;
    ngx_str_t                    *value;
    ngx_http_llm_catalog_t       *c;
    ngx_http_llm_catalog_conf_t  *ccf;

    value = cf->args->elts;

    /* the name is only ever shown in messages and as owned_by */

    if (value[1].len == 0 || value[1].len > 64) {
        goto invalid;
    }

    for (p = value[1].data; p < value[1].data + value[1].len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'
              || *p == '.'))
        {
            goto invalid;
        }
    }

    ccf = ngx_http_llm_catalog_conf(cf);
    if (ccf == NULL) {
        return NGX_CONF_ERROR;
    }

    c = ngx_http_llm_catalog_lookup(ccf, &value[1]);

    if (c) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate llm_catalog \"%V\", first defined "
                           "in %V:%ui", &value[1], &c->conf_file,
                           c->conf_line);
        return NGX_CONF_ERROR;
    }

    c = ngx_array_push(&ccf->catalogs);
    if (c == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(c, sizeof(ngx_http_llm_catalog_t));

    c->name = value[1];
    c->file = value[2];
    c->conf_file = cf->conf_file->file.name;
    c->conf_line = cf->conf_file->line;

    /* relative to the configuration's directory, as "include" is */

    if (ngx_conf_full_name(cf->cycle, &c->file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return ngx_http_llm_catalog_read(cf, c);

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid llm_catalog name \"%V\"", &value[1]);
    return NGX_CONF_ERROR;
}


ngx_http_llm_catalog_conf_t *
ngx_http_llm_catalog_conf(ngx_conf_t *cf)
{
    ngx_http_llm_main_conf_t     *lmcf;
    ngx_http_llm_catalog_conf_t  *ccf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    if (lmcf->catalog) {
        return lmcf->catalog;
    }

    ccf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_catalog_conf_t));
    if (ccf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&ccf->catalogs, cf->pool, 2,
                       sizeof(ngx_http_llm_catalog_t))
        != NGX_OK
        || ngx_array_init(&ccf->uses, cf->pool, 4,
                          sizeof(ngx_http_llm_catalog_use_t))
           != NGX_OK
        || ngx_array_init(&ccf->lists, cf->pool, 1,
                          sizeof(ngx_http_llm_models_t *))
           != NGX_OK)
    {
        return NULL;
    }

    lmcf->catalog = ccf;

    return ccf;
}


ngx_http_llm_catalog_t *
ngx_http_llm_catalog_lookup(ngx_http_llm_catalog_conf_t *ccf,
    ngx_str_t *name)
{
    ngx_uint_t               i;
    ngx_http_llm_catalog_t  *c;

    c = ccf->catalogs.elts;

    for (i = 0; i < ccf->catalogs.nelts; i++) {
        if (c[i].name.len == name->len
            && ngx_strncmp(c[i].name.data, name->data, name->len) == 0)
        {
            return &c[i];
        }
    }

    return NULL;
}


static char *
ngx_http_llm_catalog_read(ngx_conf_t *cf, ngx_http_llm_catalog_t *c)
{
    char             *rv;
    u_char           *text;
    size_t            size;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_file_t        file;
    ngx_array_t       models;
    ngx_file_info_t   fi;

    fd = ngx_open_file(c->file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", c->file.data);
        return NGX_CONF_ERROR;
    }

    rv = NGX_CONF_ERROR;
    text = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%s\" failed", c->file.data);
        goto done;
    }

    if (ngx_file_size(&fi) > NGX_HTTP_LLM_CATALOG_FILE_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm catalog file \"%s\" is larger than %uz "
                           "bytes", c->file.data,
                           (size_t) NGX_HTTP_LLM_CATALOG_FILE_MAX);
        goto done;
    }

    size = (size_t) ngx_file_size(&fi);

    text = ngx_pnalloc(cf->temp_pool, size + 1);
    if (text == NULL) {
        goto done;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.fd = fd;
    file.name = c->file;
    file.log = cf->log;

    n = ngx_read_file(&file, text, size, 0);

    if (n == NGX_ERROR) {
        goto done;
    }

    if ((size_t) n != size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           ngx_read_file_n " \"%s\" returned only "
                           "%z bytes instead of %uz", c->file.data, n, size);
        goto done;
    }

    if (ngx_array_init(&models, cf->temp_pool, 64,
                       sizeof(ngx_http_llm_catalog_model_t))
        != NGX_OK)
    {
        goto done;
    }

    rv = ngx_http_llm_catalog_parse(cf, c, text, size, &models);

    if (rv == NGX_CONF_OK
        && ngx_http_llm_catalog_index(cf, c, &models) != NGX_OK)
    {
        rv = NGX_CONF_ERROR;
    }

    ngx_array_destroy(&models);

done:

    if (text) {
        ngx_pfree(cf->temp_pool, text);
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cf->log, ngx_errno,
                      ngx_close_file_n " \"%s\" failed", c->file.data);
    }

    return rv;
}


/*
 * The models in the file's order, each id once (the first), and their
 * ids sorted for binary search: a catalog may list a few hundred.
 */

static ngx_int_t
ngx_http_llm_catalog_index(ngx_conf_t *cf, ngx_http_llm_catalog_t *c,
    ngx_array_t *models)
{
    ngx_uint_t                      i, n, unique;
    ngx_http_llm_catalog_model_t   *m, **sorted, *keep;

    n = models->nelts;
    m = models->elts;

    sorted = ngx_palloc(cf->temp_pool, n * sizeof(void *));
    if (sorted == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        sorted[i] = &m[i];
    }

    ngx_qsort(sorted, n, sizeof(void *), ngx_http_llm_catalog_cmp_model);

    c->ids = ngx_palloc(cf->pool, n * sizeof(ngx_str_t));
    if (c->ids == NULL) {
        return NGX_ERROR;
    }

    /* equal ids sort in file order: the first one is kept */

    unique = 0;

    for (i = 0; i < n; i++) {
        if (unique
            && ngx_http_llm_catalog_cmp(&sorted[i]->id, &c->ids[unique - 1])
               == 0)
        {
            sorted[i]->id.len = 0;
            continue;
        }

        c->ids[unique++] = sorted[i]->id;
    }

    c->nids = unique;

    if (ngx_array_init(&c->models, cf->pool, unique,
                       sizeof(ngx_http_llm_catalog_model_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        if (m[i].id.len == 0) {
            continue;
        }

        keep = ngx_array_push(&c->models);
        if (keep == NULL) {
            return NGX_ERROR;
        }

        *keep = m[i];
    }

    ngx_pfree(cf->temp_pool, sorted);

    return NGX_OK;
}


static int
ngx_http_llm_catalog_cmp_model(const void *one, const void *two)
{
    ngx_int_t                             rc;
    ngx_http_llm_catalog_model_t  *const *a = one;
    ngx_http_llm_catalog_model_t  *const *b = two;

    rc = ngx_http_llm_catalog_cmp(&(*a)->id, &(*b)->id);

    if (rc != 0) {
        return (int) rc;
    }

    /* one array: addresses follow the file's order */
    return (*a < *b) ? -1 : (*a > *b);
}


static ngx_int_t
ngx_http_llm_catalog_cmp(ngx_str_t *a, ngx_str_t *b)
{
    ngx_int_t  rc;

    rc = ngx_memn2cmp(a->data, b->data, a->len, b->len);

    return (rc > 0) - (rc < 0);
}


ngx_uint_t
ngx_http_llm_catalog_find(ngx_http_llm_catalog_t *c, ngx_str_t *id)
{
    ngx_int_t   rc;
    ngx_uint_t  lo, hi, mid;

    lo = 0;
    hi = c->nids;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        rc = ngx_http_llm_catalog_cmp(id, &c->ids[mid]);

        if (rc == 0) {
            return 1;
        }

        if (rc < 0) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return 0;
}


/* catalog=NAME of llm_target and llm_fallback, resolved once all is read */

ngx_int_t
ngx_http_llm_catalog_use(ngx_conf_t *cf, ngx_array_t *list, ngx_str_t *name)
{
    ngx_http_llm_catalog_use_t   *use;
    ngx_http_llm_catalog_conf_t  *ccf;

    ccf = ngx_http_llm_catalog_conf(cf);
    if (ccf == NULL) {
        return NGX_ERROR;
    }

    use = ngx_array_push(&ccf->uses);
    if (use == NULL) {
        return NGX_ERROR;
    }

    /* the list's elements may still move: the target is found later */

    use->list = list;
    use->index = list->nelts - 1;
    use->name = *name;
    use->conf_file = cf->conf_file->file.name;
    use->conf_line = cf->conf_file->line;

    return NGX_OK;
}


/*
 * Postconfiguration: catalogs may be declared after the servers that
 * use them.
 */

ngx_int_t
ngx_http_llm_catalog_init(ngx_conf_t *cf)
{
    ngx_uint_t                    i;
    ngx_http_llm_target_t        *target;
    ngx_http_llm_models_t       **lists;
    ngx_http_llm_catalog_t       *c;
    ngx_http_llm_catalog_use_t   *use;
    ngx_http_llm_main_conf_t     *lmcf;
    ngx_http_llm_catalog_conf_t  *ccf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
    ccf = lmcf->catalog;

    if (ccf == NULL) {
        return NGX_OK;
    }

    use = ccf->uses.elts;

    for (i = 0; i < ccf->uses.nelts; i++) {
        c = ngx_http_llm_catalog_lookup(ccf, &use[i].name);

        if (c == NULL) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "unknown llm_catalog \"%V\" in %V:%ui",
                          &use[i].name, &use[i].conf_file,
                          use[i].conf_line);
            return NGX_ERROR;
        }

        target = use[i].list->elts;
        target = &target[use[i].index];
        target->catalog = c;

        if (target->model.len
            && !ngx_http_llm_catalog_find(c, &target->model))
        {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "model \"%V\" of %s is not in catalog \"%V\" "
                          "(%V) in %V:%ui", &target->model,
                          target->fallback ? "llm_fallback" : "llm_target",
                          &c->name, &c->file, &use[i].conf_file,
                          use[i].conf_line);
            return NGX_ERROR;
        }
    }

    lists = ccf->lists.elts;

    for (i = 0; i < ccf->lists.nelts; i++) {
        if (ngx_http_llm_models_init(cf, ccf, lists[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * Before the first attempt: a client's model that would reach the picked
 * target unrewritten must be in the target's catalog.  NGX_DECLINED when
 * the request goes on, else what to finalize it with.  A request without
 * a model, or with one that is not a valid JSON string of at most 256
 * bytes, has no model of the catalog either.
 */

ngx_int_t
ngx_http_llm_catalog_check(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    ngx_http_llm_target_t  *target;

    target = ctx->picked;

    if (target == NULL || ngx_http_llm_catalog_serves(ctx, target)) {
        return NGX_DECLINED;
    }

    /* the gateway's own refusal: no attempt, nothing to retry */

    ctx->error = NGX_HTTP_LLM_ERR_INVALID_REQUEST;
    (void) ngx_http_llm_decide(ctx, NGX_HTTP_LLM_DECIDE_REFUSED);

    /* the model is client input: $llm_model may log it, escaped */

    ngx_log_error(NGX_LOG_INFO, ctx->log, 0,
                  "llm route \"%V\": the model asked for is not in "
                  "catalog \"%V\" of target \"%V\", refused",
                  &ctx->conf->route, &target->catalog->name, &target->uri);

    return ngx_http_llm_catalog_refuse(r, ctx);
}


/*
 * Whether the target takes the request's model: it rewrites the model,
 * or has no catalog, or its catalog lists the model.  A fallback that
 * does not is passed over (ngx_http_llm_plan_skip), as the provider
 * would refuse what it does not serve.
 */

ngx_uint_t
ngx_http_llm_catalog_serves(ngx_http_llm_ctx_t *ctx,
    ngx_http_llm_target_t *target)
{
    return target->catalog == NULL
           || target->model.len
           || (ctx->model.len
               && ngx_http_llm_catalog_find(target->catalog, &ctx->model));
}


/*
 * 400 in the family's error shape, as the provider itself would refuse
 * an unknown model, so SDKs raise their usual error: Anthropic's for
 * messages, OpenAI's for the others.  The model is quoted only when it
 * is known (valid UTF-8, at most 256 bytes), JSON-escaped.
 */

static ngx_int_t
ngx_http_llm_catalog_refuse(ngx_http_request_t *r, ngx_http_llm_ctx_t *ctx)
{
    u_char       *p;
    size_t        len;
    ngx_str_t    *model;
    ngx_buf_t    *b;
    ngx_uint_t    messages;

    static u_char  openai_head[] = "{\"error\":{\"message\":\"";
    static u_char  openai_tail[] = "\",\"type\":\"invalid_request_error\","
                                   "\"param\":\"model\","
                                   "\"code\":\"model_not_found\"}}\n";
    static u_char  anthropic_head[] = "{\"type\":\"error\",\"error\":"
                                      "{\"type\":\"not_found_error\","
                                      "\"message\":\"";
    static u_char  anthropic_tail[] = "\"}}\n";

    messages = (ctx->family == NGX_HTTP_LLM_FAMILY_MESSAGES);

    model = (ctx->model.len
             && ctx->model.len <= NGX_HTTP_LLM_CATALOG_ID_MAX)
            ? &ctx->model : NULL;

    len = sizeof(openai_head) + sizeof(openai_tail)
          + sizeof("The model `` does not exist or you do not have access "
                   "to it.")
          + (model ? model->len + ngx_escape_json(NULL, model->data,
                                                  model->len)
                   : 0);

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    if (messages) {
        p = ngx_cpymem(p, anthropic_head, sizeof(anthropic_head) - 1);

        if (model) {
            p = ngx_cpymem(p, "model: ", sizeof("model: ") - 1);
            p = (u_char *) ngx_escape_json(p, model->data, model->len);

        } else if (ctx->body.model_end == -1) {
            p = ngx_cpymem(p, "model: Field required",
                           sizeof("model: Field required") - 1);

        } else {
            p = ngx_cpymem(p, "model: not found",
                           sizeof("model: not found") - 1);
        }

        p = ngx_cpymem(p, anthropic_tail, sizeof(anthropic_tail) - 1);

    } else {
        p = ngx_cpymem(p, openai_head, sizeof(openai_head) - 1);

        if (model) {
            p = ngx_cpymem(p, "The model `", sizeof("The model `") - 1);
            p = (u_char *) ngx_escape_json(p, model->data, model->len);
            p = ngx_cpymem(p, "` does not exist or you do not have access "
                              "to it.",
                           sizeof("` does not exist or you do not have "
                                  "access to it.") - 1);

        } else if (ctx->body.model_end == -1) {
            p = ngx_cpymem(p, "you must provide a model parameter",
                           sizeof("you must provide a model parameter")
                           - 1);

        } else {
            p = ngx_cpymem(p, "The model does not exist or you do not "
                              "have access to it.",
                           sizeof("The model does not exist or you do not "
                                  "have access to it.") - 1);
        }

        p = ngx_cpymem(p, openai_tail, sizeof(openai_tail) - 1);
    }

    b->last = p;

    return ngx_http_llm_send_json(r, NGX_HTTP_BAD_REQUEST, b);
}
