
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

#include "llm_preflight.h"


/*
 * GET {base}/v1/models, OpenAI's list or Anthropic's pages (has_more,
 * last_id, followed with after_id up to LP_CATALOG_PAGES): the evidence
 * that a candidate is listed, and `llm-preflight catalog`, which writes
 * the list in the shape llm_catalog reads.
 */


#define LP_CATALOG_PAGES  20


static int lp_catalog_page_url(char *url, size_t size, const char *base,
    const char *after);


/*
 * Returns 0 when the catalog was read (*listed tells whether it holds
 * the model), -1 when not (why is in "why"); *status is the HTTP status
 * of the first page, 0 without one.
 */

int
lp_catalog_fetch(lp_conf_t *cf, const char *base, const char *model,
    int *listed, long *status, char ***ids, size_t *nids, char *why,
    size_t why_size)
{
    int        page, rc;
    char       url[1400], last[256], after[256];
    lp_http_t  h;

    *listed = 0;
    *status = 0;
    after[0] = '\0';

    for (page = 0; page < LP_CATALOG_PAGES; page++) {

        if (lp_catalog_page_url(url, sizeof(url), base, after) != 0) {
            snprintf(why, why_size, "a next page id that is no URL part");
            return -1;
        }

        memset(&h, 0, sizeof(lp_http_t));
        h.url = url;

        lp_http_request(cf, &h);

        if (page == 0) {
            *status = h.status;
        }

        if (h.error[0] || h.status < 200 || h.status > 299) {
            if (h.error[0]) {
                snprintf(why, why_size, "GET /v1/models: %s", h.error);

            } else {
                snprintf(why, why_size, "GET /v1/models answered %ld",
                         h.status);
            }

            lp_http_free(&h);
            return -1;
        }

        rc = lp_catalog_ids(&h, model, ids, nids, listed, last,
                            sizeof(last));
        lp_http_free(&h);

        if (rc != 0) {
            snprintf(why, why_size, "GET /v1/models answered no model list");
            return -1;
        }

        if (last[0] == '\0' || (*listed && ids == NULL)) {
            return 0;
        }

        memcpy(after, last, sizeof(after));
    }

    snprintf(why, why_size, "GET /v1/models: more than %d pages",
             LP_CATALOG_PAGES);

    return -1;
}


static int
lp_catalog_page_url(char *url, size_t size, const char *base,
    const char *after)
{
    int          n;
    const char  *p;

    if (after[0] == '\0') {
        n = snprintf(url, size, "%s/v1/models", base);
        return (n < 0 || (size_t) n >= size) ? -1 : 0;
    }

    /* Anthropic's ids are URL-safe; anything else is not followed */
    for (p = after; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'
              || *p == '.' || *p == ':'))
        {
            return -1;
        }
    }

    n = snprintf(url, size, "%s/v1/models?limit=1000&after_id=%s", base,
                 after);

    return (n < 0 || (size_t) n >= size) ? -1 : 0;
}


/* `llm-preflight catalog`: the list for llm_catalog, on stdout */

int
lp_catalog_command(lp_conf_t *cf)
{
    int                   rc, listed;
    long                  status;
    char                **ids, why[320];
    size_t                nids, i, len;
    yajl_gen              g;
    const unsigned char  *buf;

    ids = NULL;
    nids = 0;

    cf->deadline = lp_now_ms() + cf->timeout_ms;

    if (lp_catalog_fetch(cf, cf->base, NULL, &listed, &status, &ids, &nids,
                         why, sizeof(why))
        != 0)
    {
        lp_error(cf, "%s", why);
        rc = LP_EXIT_HOLD;
        goto done;
    }

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        lp_error(cf, "out of memory");
        rc = LP_EXIT_HOLD;
        goto done;
    }

    yajl_gen_config(g, yajl_gen_beautify, 1);
    yajl_gen_config(g, yajl_gen_indent_string, "  ");

    yajl_gen_map_open(g);
    yajl_gen_string(g, (const unsigned char *) "object", 6);
    yajl_gen_string(g, (const unsigned char *) "list", 4);
    yajl_gen_string(g, (const unsigned char *) "data", 4);
    yajl_gen_array_open(g);

    for (i = 0; i < nids; i++) {
        yajl_gen_map_open(g);
        yajl_gen_string(g, (const unsigned char *) "id", 2);
        yajl_gen_string(g, (const unsigned char *) ids[i], strlen(ids[i]));
        yajl_gen_string(g, (const unsigned char *) "object", 6);
        yajl_gen_string(g, (const unsigned char *) "model", 5);
        yajl_gen_map_close(g);
    }

    yajl_gen_array_close(g);
    yajl_gen_map_close(g);

    rc = LP_EXIT_HOLD;

    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok
        && lp_output(cf, STDOUT_FILENO, (const char *) buf, len) == 0)
    {
        rc = 0;
    }

    yajl_gen_free(g);

done:

    for (i = 0; i < nids; i++) {
        free(ids[i]);
    }

    free(ids);

    return rc;
}
