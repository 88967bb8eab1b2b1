
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <yajl/yajl_parse.h>
#include "ngx_http_llm_module.h"


/*
 * The parse of a catalog file (docs/directives.md, llm_catalog): a
 * /v1/models list, OpenAI's or Anthropic's, read with yajl's callbacks
 * when the configuration is read.  Errors name the line and column.
 */


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


static void ngx_http_llm_catalog_where(u_char *text, size_t at,
    ngx_uint_t *line, ngx_uint_t *column);
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


char *
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
