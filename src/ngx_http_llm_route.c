
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * A route and its targets as configured: llm_route NAME and its family,
 * llm_target and llm_fallback with their parameters (docs/directives.md).
 * What relates them to other directives and to the locations is checked
 * once all is read (design.md 6).
 */


static char *ngx_http_llm_route_name(ngx_conf_t *cf, ngx_str_t *name);


char *
ngx_http_llm_route(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_int_t                  f;
    ngx_str_t                 *value, s;
    ngx_http_core_loc_conf_t  *clcf;

    if (llcf->route.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_http_llm_route_name(cf, &value[1]) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3) {

        if (ngx_strncmp(value[2].data, "family=", 7) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        s.data = value[2].data + 7;
        s.len = value[2].len - 7;

        f = ngx_http_llm_family_value(&s);

        if (f == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid family \"%V\"", &s);
            return NGX_CONF_ERROR;
        }

        llcf->family = f;
    }

    llcf->route = value[1];
    ngx_http_llm_conf_where(cf, llcf);

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_route\" cannot be combined with another "
                           "content handler in one location");
        return NGX_CONF_ERROR;
    }

    clcf->handler = ngx_http_llm_handler;

    return NGX_CONF_OK;
}


/*
 * A route's name labels its metrics, logs and Redis keys: it is unique in
 * a server, and kept to characters that need no escaping anywhere.
 */

static char *
ngx_http_llm_route_name(ngx_conf_t *cf, ngx_str_t *name)
{
    u_char                     *p;
    void                       *server;
    ngx_uint_t                  i;
    ngx_http_llm_main_conf_t   *lmcf;
    ngx_http_llm_route_name_t  *rn;

    if (name->len == 0 || name->len > 64) {
        goto invalid;
    }

    for (p = name->data; p < name->data + name->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'
              || *p == '.'))
        {
            goto invalid;
        }
    }

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
    server = ngx_http_conf_get_module_srv_conf(cf, ngx_http_core_module);

    rn = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {
        if (rn[i].server == server
            && rn[i].name.len == name->len
            && ngx_strncmp(rn[i].name.data, name->data, name->len) == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate llm route \"%V\" in a server, "
                               "first defined in %V:%ui",
                               name, &rn[i].file, rn[i].line);
            return NGX_CONF_ERROR;
        }
    }

    rn = ngx_array_push(&lmcf->routes);
    if (rn == NULL) {
        return NGX_CONF_ERROR;
    }

    rn->name = *name;
    rn->server = server;
    rn->conf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_llm_module);
    rn->location = ngx_http_conf_get_module_loc_conf(cf,
                                                     ngx_http_core_module);
    rn->file = cf->conf_file->file.name;
    rn->line = cf->conf_file->line;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid llm route name \"%V\"", name);
    return NGX_CONF_ERROR;
}


/*
 * llm_target URI [model=] [weight=] [tries=] [catalog=] [family=],
 * llm_fallback: no weight
 */

char *
ngx_http_llm_target(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    u_char                 *p;
    ngx_int_t               n;
    ngx_str_t              *value, s;
    ngx_uint_t              i, fallback;
    ngx_array_t           **list;
    ngx_http_llm_target_t  *target;

    value = cf->args->elts;
    fallback = cmd->offset;

    if (value[1].len == 0 || value[1].data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "llm target \"%V\" must be a location URI "
                           "starting with \"/\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    list = fallback ? &llcf->fallbacks : &llcf->targets;

    if (*list == NULL) {
        *list = ngx_array_create(cf->pool, 2, sizeof(ngx_http_llm_target_t));
        if (*list == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    target = ngx_array_push(*list);
    if (target == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(target, sizeof(ngx_http_llm_target_t));

    target->uri = value[1];
    target->weight = 1;
    target->tries = 1;
    target->fallback = fallback;
    target->conf_file = cf->conf_file->file.name;
    target->conf_line = cf->conf_file->line;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "model=", 6) == 0) {

            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            if (s.len == 0 || s.len > NGX_HTTP_LLM_MODEL_MAX) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid model \"%V\"", &s);
                return NGX_CONF_ERROR;
            }

            target->model = s;

            /* what a rewrite splices into the body, quotes included */

            target->model_json.len = s.len + 2
                                     + ngx_escape_json(NULL, s.data, s.len);
            p = ngx_pnalloc(cf->pool, target->model_json.len);
            if (p == NULL) {
                return NGX_CONF_ERROR;
            }

            target->model_json.data = p;
            *p++ = '"';
            p = (u_char *) ngx_escape_json(p, s.data, s.len);
            *p = '"';

            continue;
        }

        if (!fallback && ngx_strncmp(value[i].data, "weight=", 7) == 0) {

            n = ngx_atoi(value[i].data + 7, value[i].len - 7);

            if (n == NGX_ERROR || n > 1000000) {
                goto invalid;
            }

            target->weight = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "tries=", 6) == 0) {

            n = ngx_atoi(value[i].data + 6, value[i].len - 6);

            if (n == NGX_ERROR || n == 0 || n > 100) {
                goto invalid;
            }

            target->tries = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "catalog=", 8) == 0) {

            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            if (s.len == 0) {
                goto invalid;
            }

            /* checked once every llm_catalog is read */

            if (ngx_http_llm_catalog_use(cf, *list, &s) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "family=", 7) == 0) {

            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            /* checked against its route's once the locations are known */

            n = ngx_http_llm_family_value(&s);

            if (n == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid family \"%V\"", &s);
                return NGX_CONF_ERROR;
            }

            target->family = n;
            continue;
        }

        goto invalid;
    }

    /*
     * a target's counters and cooldown are shared by every route that
     * uses the same location for the same model
     */

    target->key = target->uri;

    if (target->model.len) {
        target->key.len = target->uri.len + 1 + target->model.len;
        target->key.data = ngx_pnalloc(cf->pool, target->key.len);
        if (target->key.data == NULL) {
            return NGX_CONF_ERROR;
        }

        p = ngx_cpymem(target->key.data, target->uri.data, target->uri.len);
        *p++ = ' ';
        ngx_memcpy(p, target->model.data, target->model.len);
    }

    if (!fallback) {
        llcf->total_weight += target->weight;
    }

    ngx_http_llm_conf_where(cf, llcf);

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}
