
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <yajl/yajl_parse.h>
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


typedef enum {
    ngx_http_llm_ck_other = 0,
    ngx_http_llm_ck_data,
    ngx_http_llm_ck_id,
    ngx_http_llm_ck_owned_by,
    ngx_http_llm_ck_created,
    ngx_http_llm_ck_created_at
} ngx_http_llm_catalog_key_e;


/*
 * The parse of a catalog file.  Depth 1 is the top-level object, 2 the
 * "data" array, 3 one model's object; members nested deeper (such as
 * the "permission" objects of older OpenAI lists, with ids of their
 * own) are not looked at.
 */

typedef struct {
    yajl_handle                     handle;
    ngx_pool_t                     *pool;
    ngx_array_t                    *models;
    ngx_http_llm_catalog_model_t   *model;
    ngx_uint_t                      depth;
    ngx_http_llm_catalog_key_e      top_key;
    ngx_http_llm_catalog_key_e      key;
    const char                     *error;
    size_t                          error_at;  /* bytes consumed then */
    unsigned                        in_data:1;
    unsigned                        seen_data:1;
    unsigned                        has_id:1;
} ngx_http_llm_catalog_parse_t;


static ngx_http_llm_catalog_conf_t *ngx_http_llm_catalog_conf(
    ngx_conf_t *cf);
static ngx_http_llm_catalog_t *ngx_http_llm_catalog_lookup(
    ngx_http_llm_catalog_conf_t *ccf, ngx_str_t *name);
static char *ngx_http_llm_catalog_read(ngx_conf_t *cf,
    ngx_http_llm_catalog_t *c);
static char *ngx_http_llm_catalog_parse(ngx_conf_t *cf,
    ngx_http_llm_catalog_t *c, u_char *text, size_t len,
    ngx_array_t *models);
static void ngx_http_llm_catalog_where(u_char *text, size_t at,
    ngx_uint_t *line, ngx_uint_t *column);
static ngx_int_t ngx_http_llm_catalog_index(ngx_conf_t *cf,
    ngx_http_llm_catalog_t *c, ngx_array_t *models);
static int ngx_http_llm_catalog_cmp_model(const void *one, const void *two);
static ngx_int_t ngx_http_llm_catalog_cmp(ngx_str_t *a, ngx_str_t *b);
static ngx_uint_t ngx_http_llm_catalog_find(ngx_http_llm_catalog_t *c,
    ngx_str_t *id);
static time_t ngx_http_llm_catalog_time(u_char *p, size_t len);

static int ngx_http_llm_catalog_fail(ngx_http_llm_catalog_parse_t *ps,
    const char *error);
static int ngx_http_llm_catalog_scalar(ngx_http_llm_catalog_parse_t *ps,
    ngx_uint_t string, const u_char *s, size_t len);
static int ngx_http_llm_catalog_null(void *ctx);
static int ngx_http_llm_catalog_boolean(void *ctx, int b);
static int ngx_http_llm_catalog_number(void *ctx, const char *s,
    size_t len);
static int ngx_http_llm_catalog_string(void *ctx, const unsigned char *s,
    size_t len);
static int ngx_http_llm_catalog_start_map(void *ctx);
static int ngx_http_llm_catalog_map_key(void *ctx, const unsigned char *s,
    size_t len);
static int ngx_http_llm_catalog_end_map(void *ctx);
static int ngx_http_llm_catalog_start_array(void *ctx);
static int ngx_http_llm_catalog_end_array(void *ctx);

static ngx_int_t ngx_http_llm_models_init(ngx_conf_t *cf,
    ngx_http_llm_catalog_conf_t *ccf, ngx_http_llm_models_t *m);
static u_char *ngx_http_llm_models_body(ngx_http_llm_catalog_t **cats,
    ngx_uint_t n, u_char *p, size_t *len);
static ngx_int_t ngx_http_llm_models_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_llm_catalog_refuse(ngx_http_request_t *r,
    ngx_http_llm_ctx_t *ctx);


static yajl_callbacks  ngx_http_llm_catalog_callbacks = {
    ngx_http_llm_catalog_null,
    ngx_http_llm_catalog_boolean,
    NULL,                                  /* integer */
    NULL,                                  /* double */
    ngx_http_llm_catalog_number,
    ngx_http_llm_catalog_string,
    ngx_http_llm_catalog_start_map,
    ngx_http_llm_catalog_map_key,
    ngx_http_llm_catalog_end_map,
    ngx_http_llm_catalog_start_array,
    ngx_http_llm_catalog_end_array
};


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


static ngx_http_llm_catalog_conf_t *
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


static ngx_http_llm_catalog_t *
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


static char *
ngx_http_llm_catalog_parse(ngx_conf_t *cf, ngx_http_llm_catalog_t *c,
    u_char *text, size_t len, ngx_array_t *models)
{
    u_char                        *err, *e;
    size_t                         at;
    ngx_uint_t                     line, column;
    yajl_status                    st;
    ngx_http_llm_catalog_parse_t   ps;

    ngx_memzero(&ps, sizeof(ngx_http_llm_catalog_parse_t));
    ps.pool = cf->pool;
    ps.models = models;

    ps.handle = yajl_alloc(&ngx_http_llm_catalog_callbacks, NULL, &ps);
    if (ps.handle == NULL) {
        return NGX_CONF_ERROR;
    }

    st = yajl_parse(ps.handle, text, len);
    at = yajl_get_bytes_consumed(ps.handle);

    if (st == yajl_status_ok) {
        st = yajl_complete_parse(ps.handle);

        /* completing parses one more space: an error is at the end */
        at = len + 1;
    }

    if (st != yajl_status_ok) {

        if (ps.error) {
            at = ps.error_at;
            err = NULL;

        } else {
            err = yajl_get_error(ps.handle, 0, NULL, 0);
        }

        /* the position of the last byte read, or just past the end */

        at = (at > len) ? len : (at ? at - 1 : 0);

        ngx_http_llm_catalog_where(text, at, &line, &column);

        if (err) {
            /* "parse error: ...\n", "... in json text.\n" */
            e = err + ngx_strlen(err);

            while (e > err && (e[-1] == '\n' || e[-1] == '.')) {
                *--e = '\0';
            }
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid llm catalog file \"%s\" at line %ui, "
                           "column %ui: %s", c->file.data, line, column,
                           err ? (char *) err : ps.error);

        if (err) {
            yajl_free_error(ps.handle, err);
        }

        yajl_free(ps.handle);
        return NGX_CONF_ERROR;
    }

    yajl_free(ps.handle);

    if (!ps.seen_data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid llm catalog file \"%s\": no \"data\" "
                           "array of models", c->file.data);
        return NGX_CONF_ERROR;
    }

    if (models->nelts == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid llm catalog file \"%s\": no models",
                           c->file.data);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* line and column (in bytes) of the byte at an offset, 1-based */

static void
ngx_http_llm_catalog_where(u_char *text, size_t at, ngx_uint_t *line,
    ngx_uint_t *column)
{
    u_char  *p, *bol;

    *line = 1;
    bol = text;

    for (p = text; p < text + at; p++) {
        if (*p == '\n') {
            (*line)++;
            bol = p + 1;
        }
    }

    *column = (text + at) - bol + 1;
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


static ngx_uint_t
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


/*
 * Anthropic's "created_at", RFC 3339: "2025-02-24T00:00:00Z", with an
 * optional fraction and an offset instead of "Z".  Seconds since the
 * epoch, 0 when it is none of these.
 */

static time_t
ngx_http_llm_catalog_time(u_char *p, size_t len)
{
    u_char      *last;
    ngx_int_t    year, month, day, hour, min, sec, off, days, era, yoe;
    ngx_uint_t   i;

    static const char  pattern[] = "dddd-dd-ddTdd:dd:dd";

    if (len < sizeof(pattern)) {
        return 0;
    }

    for (i = 0; i < sizeof(pattern) - 1; i++) {
        if (pattern[i] == 'd' ? (p[i] < '0' || p[i] > '9')
                              : (p[i] != pattern[i]
                                 && !(i == 10 && (p[i] == 't'
                                                  || p[i] == ' '))))
        {
            return 0;
        }
    }

#define ngx_http_llm_d2(s)  (((s)[0] - '0') * 10 + (s)[1] - '0')

    year = ngx_http_llm_d2(p) * 100 + ngx_http_llm_d2(p + 2);
    month = ngx_http_llm_d2(p + 5);
    day = ngx_http_llm_d2(p + 8);
    hour = ngx_http_llm_d2(p + 11);
    min = ngx_http_llm_d2(p + 14);
    sec = ngx_http_llm_d2(p + 17);

    last = p + len;
    p += sizeof(pattern) - 1;

    if (*p == '.') {
        do {
            p++;
        } while (p < last && *p >= '0' && *p <= '9');
    }

    if (p + 1 == last && (*p == 'Z' || *p == 'z')) {
        off = 0;

    } else if (p + 6 == last && (*p == '+' || *p == '-')
               && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9'
               && p[3] == ':'
               && p[4] >= '0' && p[4] <= '9' && p[5] >= '0' && p[5] <= '9')
    {
        off = ngx_http_llm_d2(p + 1) * 3600 + ngx_http_llm_d2(p + 4) * 60;

        if (*p == '+') {
            off = -off;
        }

    } else {
        return 0;
    }

#undef ngx_http_llm_d2

    if (year < 1970 || month < 1 || month > 12 || day < 1 || day > 31
        || hour > 23 || min > 59 || sec > 60)
    {
        return 0;
    }

    /* days from the civil date, March-based years (H. Hinnant) */

    year -= (month <= 2);
    era = year / 400;
    yoe = year - era * 400;
    days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100
           + (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
           - 719468;

    return (time_t) days * 86400 + hour * 3600 + min * 60 + sec + off;
}


/* the yajl callbacks */

static int
ngx_http_llm_catalog_fail(ngx_http_llm_catalog_parse_t *ps,
    const char *error)
{
    ps->error = error;
    ps->error_at = yajl_get_bytes_consumed(ps->handle);

    return 0;
}


static int
ngx_http_llm_catalog_scalar(ngx_http_llm_catalog_parse_t *ps,
    ngx_uint_t string, const u_char *s, size_t len)
{
    u_char                        *p;
    ngx_http_llm_catalog_model_t  *m;

    if (ps->depth == 0) {
        return ngx_http_llm_catalog_fail(ps, "not a JSON object");
    }

    if (ps->depth == 1 && ps->top_key == ngx_http_llm_ck_data) {
        return ngx_http_llm_catalog_fail(ps, "\"data\" is not an array");
    }

    if (!ps->in_data) {
        return 1;
    }

    if (ps->depth == 2) {
        return ngx_http_llm_catalog_fail(ps, "a model is not an object");
    }

    if (ps->depth != 3) {
        return 1;
    }

    m = ps->model;

    switch (ps->key) {

    case ngx_http_llm_ck_id:

        if (!string) {
            return ngx_http_llm_catalog_fail(ps, "\"id\" is not a string");
        }

        if (len == 0 || len > NGX_HTTP_LLM_CATALOG_ID_MAX) {
            return ngx_http_llm_catalog_fail(ps,
                       "\"id\" is empty or longer than 256 bytes");
        }

        p = ngx_pnalloc(ps->pool, len);
        if (p == NULL) {
            return 0;
        }

        ngx_memcpy(p, s, len);
        m->id.data = p;
        m->id.len = len;
        ps->has_id = 1;
        break;

    case ngx_http_llm_ck_owned_by:

        if (!string || len == 0 || len > NGX_HTTP_LLM_CATALOG_ID_MAX) {
            break;
        }

        p = ngx_pnalloc(ps->pool, len);
        if (p == NULL) {
            return 0;
        }

        ngx_memcpy(p, s, len);
        m->owned_by.data = p;
        m->owned_by.len = len;
        break;

    case ngx_http_llm_ck_created:

        if (!string && s) {
            m->created = ngx_atotm((u_char *) s, len);

            if (m->created == NGX_ERROR) {
                m->created = 0;
            }
        }

        break;

    case ngx_http_llm_ck_created_at:

        if (string && m->created == 0) {
            m->created = ngx_http_llm_catalog_time((u_char *) s, len);
        }

        break;

    default:
        break;
    }

    return 1;
}


static int
ngx_http_llm_catalog_null(void *ctx)
{
    return ngx_http_llm_catalog_scalar(ctx, 0, NULL, 0);
}


static int
ngx_http_llm_catalog_boolean(void *ctx, int b)
{
    return ngx_http_llm_catalog_scalar(ctx, 0, NULL, 0);
}


static int
ngx_http_llm_catalog_number(void *ctx, const char *s, size_t len)
{
    return ngx_http_llm_catalog_scalar(ctx, 0, (const u_char *) s, len);
}


static int
ngx_http_llm_catalog_string(void *ctx, const unsigned char *s, size_t len)
{
    return ngx_http_llm_catalog_scalar(ctx, 1, s, len);
}


static int
ngx_http_llm_catalog_start_map(void *ctx)
{
    ngx_http_llm_catalog_parse_t *ps = ctx;

    if (ps->depth == 1 && ps->top_key == ngx_http_llm_ck_data) {
        return ngx_http_llm_catalog_fail(ps, "\"data\" is not an array");
    }

    if (ps->in_data && ps->depth == 2) {
        ps->model = ngx_array_push(ps->models);
        if (ps->model == NULL) {
            return 0;
        }

        ngx_memzero(ps->model, sizeof(ngx_http_llm_catalog_model_t));
        ps->has_id = 0;
        ps->key = ngx_http_llm_ck_other;

    } else if (ps->in_data && ps->depth == 3
               && ps->key == ngx_http_llm_ck_id)
    {
        return ngx_http_llm_catalog_fail(ps, "\"id\" is not a string");
    }

    ps->depth++;

    return 1;
}


static int
ngx_http_llm_catalog_map_key(void *ctx, const unsigned char *s, size_t len)
{
    ngx_http_llm_catalog_parse_t *ps = ctx;

    ngx_uint_t  i;

    static struct {
        ngx_str_t                   name;
        ngx_http_llm_catalog_key_e  key;
    } keys[] = {
        { ngx_string("id"), ngx_http_llm_ck_id },
        { ngx_string("owned_by"), ngx_http_llm_ck_owned_by },
        { ngx_string("created"), ngx_http_llm_ck_created },
        { ngx_string("created_at"), ngx_http_llm_ck_created_at },
        { ngx_null_string, ngx_http_llm_ck_other }
    };

    if (ps->depth == 1) {
        ps->top_key = (len == 4 && ngx_strncmp(s, "data", 4) == 0)
                      ? ngx_http_llm_ck_data : ngx_http_llm_ck_other;
        return 1;
    }

    if (!ps->in_data || ps->depth != 3) {
        return 1;
    }

    for (i = 0; keys[i].name.len; i++) {
        if (len == keys[i].name.len
            && ngx_strncmp(s, keys[i].name.data, len) == 0)
        {
            break;
        }
    }

    ps->key = keys[i].key;

    return 1;
}


static int
ngx_http_llm_catalog_end_map(void *ctx)
{
    ngx_http_llm_catalog_parse_t *ps = ctx;

    ps->depth--;

    if (ps->in_data && ps->depth == 2 && !ps->has_id) {
        return ngx_http_llm_catalog_fail(ps, "a model has no \"id\"");
    }

    return 1;
}


static int
ngx_http_llm_catalog_start_array(void *ctx)
{
    ngx_http_llm_catalog_parse_t *ps = ctx;

    if (ps->depth == 0) {
        return ngx_http_llm_catalog_fail(ps, "not a JSON object");
    }

    if (ps->depth == 1 && ps->top_key == ngx_http_llm_ck_data) {
        ps->in_data = 1;
        ps->seen_data = 1;

    } else if (ps->in_data && ps->depth == 2) {
        return ngx_http_llm_catalog_fail(ps, "a model is not an object");

    } else if (ps->in_data && ps->depth == 3
               && ps->key == ngx_http_llm_ck_id)
    {
        return ngx_http_llm_catalog_fail(ps, "\"id\" is not a string");
    }

    ps->depth++;

    return 1;
}


static int
ngx_http_llm_catalog_end_array(void *ctx)
{
    ngx_http_llm_catalog_parse_t *ps = ctx;

    ps->depth--;

    if (ps->depth == 1) {
        ps->in_data = 0;
    }

    return 1;
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

static ngx_int_t
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

    if (target == NULL || target->catalog == NULL || target->model.len) {
        return NGX_DECLINED;
    }

    if (ctx->model.len && ngx_http_llm_catalog_find(target->catalog,
                                                    &ctx->model))
    {
        return NGX_DECLINED;
    }

    /* the gateway's own refusal: no attempt, nothing to retry */

    ctx->error = NGX_HTTP_LLM_ERR_INVALID_REQUEST;
    ctx->decision = NGX_HTTP_LLM_DECISION_NOT_RETRYABLE;

    /* the model is client input: $llm_model may log it, escaped */

    ngx_log_error(NGX_LOG_INFO, ctx->log, 0,
                  "llm route \"%V\": the model asked for is not in "
                  "catalog \"%V\" of target \"%V\", refused",
                  &ctx->conf->route, &target->catalog->name, &target->uri);

    return ngx_http_llm_catalog_refuse(r, ctx);
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
    ngx_int_t     rc;
    ngx_str_t    *model;
    ngx_buf_t    *b;
    ngx_uint_t    messages;
    ngx_chain_t   out;

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

        } else if (ctx->scan->model_end == -1) {
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

        } else if (ctx->scan->model_end == -1) {
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
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_BAD_REQUEST;
    r->headers_out.content_length_n = b->last - b->pos;
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
