
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


static ngx_int_t ngx_http_llm_wiring_target(ngx_conf_t *cf,
    ngx_http_llm_route_name_t *rn, ngx_uint_t family,
    ngx_http_core_loc_conf_t *srv, ngx_http_llm_target_t *target);
static ngx_int_t ngx_http_llm_wiring_find(ngx_http_core_loc_conf_t *pclcf,
    ngx_str_t *uri, ngx_http_core_loc_conf_t **found);
static ngx_int_t ngx_http_llm_wiring_static(
    ngx_http_location_tree_node_t *node, ngx_str_t *uri,
    ngx_http_core_loc_conf_t **found);


/*
 * Wiring mistakes that would only show at runtime fail nginx -t instead
 * (docs/directives.md, llm_target): every target URI is resolved against
 * its server's locations as nginx resolves the URI of a subrequest, once
 * the location trees are built, and its location must exist, be
 * "internal" (it sets the provider's credentials) and not be a route
 * itself.  A target's family= must be its route's.
 */

ngx_int_t
ngx_http_llm_wiring_check(ngx_conf_t *cf)
{
    ngx_uint_t                  i, j, n, family;
    ngx_array_t                *lists[2];
    ngx_http_llm_target_t      *target;
    ngx_http_core_srv_conf_t   *cscf;
    ngx_http_core_loc_conf_t   *srv, *clcf;
    ngx_http_llm_main_conf_t   *lmcf;
    ngx_http_llm_route_name_t  *rn;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);

    rn = lmcf->routes.elts;

    for (i = 0; i < lmcf->routes.nelts; i++) {

        cscf = rn[i].server;
        srv = cscf->ctx->loc_conf[ngx_http_core_module.ctx_index];

        /*
         * the route's family: its family=, else the ending of its
         * location when that is a fixed prefix; unknown otherwise
         */

        family = rn[i].conf->family;
        clcf = rn[i].location;

        if (family == NGX_HTTP_LLM_FAMILY_UNSET && clcf->name.len
#if (NGX_PCRE)
            && clcf->regex == NULL
#endif
            && !clcf->named)
        {
            family = ngx_http_llm_family_of(&clcf->name);

            if (family == NGX_HTTP_LLM_FAMILY_OTHER) {
                family = NGX_HTTP_LLM_FAMILY_UNSET;
            }
        }

        lists[0] = rn[i].conf->targets;
        lists[1] = rn[i].conf->fallbacks;

        for (n = 0; n < 2; n++) {

            if (lists[n] == NULL) {
                continue;
            }

            target = lists[n]->elts;

            for (j = 0; j < lists[n]->nelts; j++) {
                if (ngx_http_llm_wiring_target(cf, &rn[i], family, srv,
                                               &target[j])
                    != NGX_OK)
                {
                    return NGX_ERROR;
                }
            }
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_wiring_target(ngx_conf_t *cf, ngx_http_llm_route_name_t *rn,
    ngx_uint_t family, ngx_http_core_loc_conf_t *srv,
    ngx_http_llm_target_t *target)
{
    ngx_int_t                  rc;
    ngx_http_llm_loc_conf_t   *llcf;
    ngx_http_core_loc_conf_t  *found;

    if (target->family != NGX_HTTP_LLM_FAMILY_UNSET
        && target->family != family)
    {
        if (family == NGX_HTTP_LLM_FAMILY_UNSET) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "llm target \"%V\" has \"family=%V\", but the "
                          "family of llm route \"%V\" is not known from its "
                          "location, set it with \"llm_route %V family=\" "
                          "in %V:%ui", &target->uri,
                          &ngx_http_llm_family_names[target->family],
                          &rn->name, &rn->name,
                          &target->conf_file, target->conf_line);
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "family \"%V\" of llm target \"%V\" differs from "
                      "family \"%V\" of llm route \"%V\" in %V:%ui",
                      &ngx_http_llm_family_names[target->family],
                      &target->uri, &ngx_http_llm_family_names[family],
                      &rn->name, &target->conf_file, target->conf_line);
        return NGX_ERROR;
    }

    found = NULL;

    rc = ngx_http_llm_wiring_find(srv, &target->uri, &found);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    /* an auto redirect (NGX_DONE) answers 301, not the location */

    if (found == NULL || rc == NGX_DONE) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "llm target \"%V\" of llm route \"%V\" matches no "
                      "location in %V:%ui", &target->uri, &rn->name,
                      &target->conf_file, target->conf_line);
        return NGX_ERROR;
    }

    llcf = found->loc_conf[ngx_http_llm_module.ctx_index];

    if (llcf->route.len) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "llm target \"%V\" of llm route \"%V\" is location "
                      "\"%V\" of llm route \"%V\" in %V:%ui",
                      &target->uri, &rn->name, &found->name, &llcf->route,
                      &target->conf_file, target->conf_line);
        return NGX_ERROR;
    }

    if (!found->internal) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "llm target \"%V\" of llm route \"%V\" is location "
                      "\"%V\", which is not \"internal\" in %V:%ui",
                      &target->uri, &rn->name, &found->name,
                      &target->conf_file, target->conf_line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The location nginx picks for uri below pclcf, as
 * ngx_http_core_find_location() does: the longest prefix, an exact match
 * ending the search, then the regular expressions in order unless the
 * prefix has "^~".  *found is left alone when nothing matches (the
 * server's own configuration would serve the URI).
 */

static ngx_int_t
ngx_http_llm_wiring_find(ngx_http_core_loc_conf_t *pclcf, ngx_str_t *uri,
    ngx_http_core_loc_conf_t **found)
{
    ngx_int_t                   rc;
#if (NGX_PCRE)
    ngx_int_t                   n;
    ngx_uint_t                  noregex;
    ngx_http_core_loc_conf_t  **clcfp;

    noregex = 0;
#endif

    rc = ngx_http_llm_wiring_static(pclcf->static_locations, uri, found);

    if (rc == NGX_AGAIN) {

#if (NGX_PCRE)
        noregex = (*found)->noregex;
#endif

        /* nested locations */

        rc = ngx_http_llm_wiring_find(*found, uri, found);
    }

    if (rc == NGX_OK || rc == NGX_DONE) {
        return rc;
    }

#if (NGX_PCRE)

    if (noregex == 0 && pclcf->regex_locations) {

        for (clcfp = pclcf->regex_locations; *clcfp; clcfp++) {

            n = ngx_regex_exec((*clcfp)->regex->regex, uri, NULL, 0);

            if (n >= 0) {
                *found = *clcfp;

                rc = ngx_http_llm_wiring_find(*found, uri, found);

                return (rc == NGX_ERROR) ? rc : NGX_OK;
            }

            if (n != NGX_REGEX_NO_MATCHED) {
                return NGX_ERROR;
            }
        }
    }

#endif

    return rc;
}


/* ngx_http_core_find_static_location() over a URI instead of a request */

static ngx_int_t
ngx_http_llm_wiring_static(ngx_http_location_tree_node_t *node,
    ngx_str_t *uri, ngx_http_core_loc_conf_t **found)
{
    u_char     *p;
    size_t      len, n;
    ngx_int_t   rc, rv;

    len = uri->len;
    p = uri->data;

    rv = NGX_DECLINED;

    for ( ;; ) {

        if (node == NULL) {
            return rv;
        }

        n = (len <= (size_t) node->len) ? len : node->len;

        rc = ngx_filename_cmp(p, node->name, n);

        if (rc != 0) {
            node = (rc < 0) ? node->left : node->right;
            continue;
        }

        if (len > (size_t) node->len) {

            if (node->inclusive) {
                *found = node->inclusive;
                rv = NGX_AGAIN;

                node = node->tree;
                p += n;
                len -= n;

                continue;
            }

            /* exact only */

            node = node->right;
            continue;
        }

        if (len == (size_t) node->len) {

            if (node->exact) {
                *found = node->exact;
                return NGX_OK;
            }

            *found = node->inclusive;
            return NGX_AGAIN;
        }

        /* len < node->len */

        if (len + 1 == (size_t) node->len && node->auto_redirect) {
            *found = node->exact ? node->exact : node->inclusive;
            rv = NGX_DONE;
        }

        node = node->left;
    }
}
