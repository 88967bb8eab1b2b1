
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

#include "llm_preflight.h"


/*
 * `llm-preflight readiness`: the fallback-readiness runbook.  The happy
 * and the error request on each path a route depends on, --primary and
 * --fallback, each a gateway location that reaches one path.  A path is
 * ready when it answers 2xx in the family's documented shape, refuses
 * the bad request with a clean 4xx, and spends no retries on either.
 */


typedef struct {
    const char                 *name;       /* primary, fallback */
    char                        url[1400];
    const char                 *status_family;
    const char                 *shape;
    long                        retries;    /* -1: not known */
    int                         ready;
} lp_path_t;


static int lp_path_url(lp_conf_t *cf, lp_path_t *p, const char *given);
static void lp_path_check(lp_conf_t *cf, lp_path_t *p, lp_buf_t *notes);
static void lp_initials(const char *name, char *out, size_t size);


int
lp_readiness_command(lp_conf_t *cf)
{
    int           n, i, rc;
    char          time[32], initials[16], credential[96];
    lp_buf_t      notes;
    lp_path_t     paths[2];
    lp_record_t   rec, *sf, *rs, *rc_obj, *urls;
    const char   *decision;

    memset(paths, 0, sizeof(paths));
    memset(&notes, 0, sizeof(lp_buf_t));
    memset(&rec, 0, sizeof(lp_record_t));

    paths[0].name = "primary";
    paths[1].name = "fallback";

    n = cf->fallback ? 2 : 1;

    if (lp_path_url(cf, &paths[0], cf->primary) != 0
        || (n == 2 && lp_path_url(cf, &paths[1], cf->fallback) != 0))
    {
        return LP_EXIT_USAGE;
    }

    lp_run_id(cf);
    lp_time_iso(time, sizeof(time));

    cf->deadline = lp_now_ms() + cf->timeout_ms;

    for (i = 0; i < n; i++) {
        lp_path_check(cf, &paths[i], &notes);
    }

    if (!paths[0].ready || (n == 2 && !paths[1].ready)) {
        decision = "review_required";

    } else {
        decision = (n == 2) ? "primary_ok" : "fallback_not_needed";
    }

    if (n == 1) {
        lp_note(&notes, "no --fallback: the route depends on one path");
    }

    lp_initials(cf->operator_name, initials, sizeof(initials));

    if (cf->key) {
        snprintf(credential, sizeof(credential), "[redacted: $%s]",
                 cf->key_env);

    } else {
        snprintf(credential, sizeof(credential), "[none sent]");
    }

    lp_record_str(&rec, "run_id", cf->run_id);
    lp_record_str(&rec, "time", time);
    lp_record_str(&rec, "environment",
                  cf->environment ? cf->environment : "unspecified");
    lp_record_str(&rec, "api_surface", lp_family_names[cf->family]);
    lp_record_str(&rec, "model", cf->model);
    lp_record_str(&rec, "credential", credential);

    urls = lp_record_obj(&rec, "paths");
    sf = lp_record_obj(&rec, "status_family");
    rc_obj = lp_record_obj(&rec, "retry_count");

    lp_record_str(&rec, "fallback_decision", decision);

    rs = lp_record_obj(&rec, "response_shape_observed");

    for (i = 0; i < n; i++) {
        lp_record_str(urls, paths[i].name, paths[i].url);
        lp_record_str(sf, paths[i].name, paths[i].status_family);
        lp_record_str(rs, paths[i].name, paths[i].shape);

        if (paths[i].retries >= 0) {
            lp_record_int(rc_obj, paths[i].name, paths[i].retries);

        } else {
            lp_record_null(rc_obj, paths[i].name);
        }
    }

    lp_record_str(&rec, "evidence_link", cf->evidence_link);
    lp_record_str(&rec, "operator_initials", initials[0] ? initials : NULL);
    lp_record_bool(&rec, "follow_up_needed",
                   strcmp(decision, "review_required") == 0);
    lp_record_str(&rec, "notes", notes.data ? notes.data : "");
    lp_record_str(&rec, "client", lp_client());

    rc = LP_EXIT_USAGE;

    if (lp_record_emit(cf, &rec) == 0) {
        rc = strcmp(decision, "review_required") == 0 ? LP_EXIT_HOLD : 0;
    }

    lp_record_free(&rec);
    lp_buf_free(&notes);

    return rc;
}


/*
 * A path is an endpoint URL of the family (".../v1/chat/completions"),
 * or a base URL the family's path is added to.
 */

static int
lp_path_url(lp_conf_t *cf, lp_path_t *p, const char *given)
{
    int          f;
    size_t       len, plen;
    const char  *path;

    len = strlen(given);

    while (len && given[len - 1] == '/') {
        len--;
    }

    for (f = 0; f < 3; f++) {
        path = lp_family_path(f) + 3;     /* without "/v1" */
        plen = strlen(path);

        if (len >= plen && strncmp(given + len - plen, path, plen) == 0) {
            break;
        }
    }

    if (f < 3 && f != cf->family) {
        lp_error(cf, "--%s is a %s endpoint, not %s", p->name,
                 lp_family_names[f], lp_family_names[cf->family]);
        return -1;
    }

    snprintf(p->url, sizeof(p->url), "%.*s%s", (int) len, given,
             f < 3 ? "" : lp_family_path(cf->family));

    return 0;
}


static void
lp_path_check(lp_conf_t *cf, lp_path_t *p, lp_buf_t *notes)
{
    char        id[112], model[160], type[96];
    lp_http_t   happy, error;
    lp_shape_t  s;

    memset(&happy, 0, sizeof(lp_http_t));
    memset(&error, 0, sizeof(lp_http_t));

    p->status_family = "other";
    p->shape = "mismatch";
    p->retries = -1;
    p->ready = 0;

    /* the happy request */

    snprintf(id, sizeof(id), "%s-%s-happy", cf->run_id, p->name);

    happy.url = p->url;
    happy.request_id = id;
    happy.stream = cf->stream;
    happy.body = lp_family_body(cf->family, cf->model, cf->stream);

    if (happy.body) {
        lp_http_request(cf, &happy);
    }

    if (happy.attempts >= 1) {
        p->retries = happy.attempts - 1;
    }

    if (happy.body == NULL || happy.not_run) {
        lp_note(notes, "%s: not run (--timeout spent)", p->name);
        goto done;
    }

    if (happy.error[0]) {
        lp_note(notes, "%s: %s", p->name, happy.error);
        goto done;
    }

    if (happy.status >= 200 && happy.status <= 299) {
        p->status_family = "2xx";

        if (lp_sse_is(&happy) == cf->stream) {
            lp_family_check(cf->family, &happy, &s);

            if (s.shape_ok && s.text_ok && s.usage_ok && s.end_ok
                && !s.error_event)
            {
                p->shape = "documented_shape_seen";

            } else {
                lp_note(notes, "%s: response shape: %s", p->name, s.what);
            }

        } else {
            lp_note(notes, "%s: asked for %s, the answer is %s", p->name,
                    cf->stream ? "a stream" : "a JSON answer",
                    cf->stream ? "no stream" : "a stream");
        }

    } else if (happy.status >= 400 && happy.status <= 499
               && lp_error_object(&happy, type, sizeof(type)))
    {
        p->status_family = "expected_error";
        lp_note(notes, "%s: answered %ld %s", p->name, happy.status, type);

    } else if (lp_error_object(&happy, type, sizeof(type))) {
        lp_note(notes, "%s: answered %ld %s", p->name, happy.status, type);

    } else {
        lp_note(notes, "%s: answered %ld", p->name, happy.status);
    }

    if (strcmp(p->name, "primary") == 0 && happy.fallback == 1) {
        lp_note(notes, "primary: answered by its fallback "
                "(x-llm-fallback: 1)");
        goto done;
    }

    if (p->retries > 0) {
        lp_note(notes, "%s: %ld retr%s before the answer", p->name,
                p->retries, p->retries == 1 ? "y" : "ies");
    }

    if (strcmp(p->status_family, "2xx") != 0
        || strcmp(p->shape, "documented_shape_seen") != 0)
    {
        goto done;
    }

    /* the bad request */

    snprintf(id, sizeof(id), "%s-%s-error", cf->run_id, p->name);
    snprintf(model, sizeof(model), "preflight-invalid-model-%s", cf->run_id);

    error.url = p->url;
    error.request_id = id;
    error.stream = cf->stream;
    error.body = lp_family_body(cf->family, model, cf->stream);

    if (error.body) {
        lp_http_request(cf, &error);
    }

    if (error.body == NULL || error.not_run) {
        lp_note(notes, "%s: error path not run (--timeout spent)", p->name);
        goto done;
    }

    if (error.error[0] || error.status < 400 || error.status > 499
        || !lp_error_object(&error, type, sizeof(type)))
    {
        if (error.error[0]) {
            lp_note(notes, "%s: error path: %s", p->name, error.error);

        } else {
            lp_note(notes, "%s: error path answered %ld, not a 4xx error "
                    "object", p->name, error.status);
        }

        goto done;
    }

    if (error.attempts > 1) {
        lp_note(notes, "%s: error path retried (%ld attempts)", p->name,
                error.attempts);
        goto done;
    }

    p->ready = (p->retries <= 0);

    lp_note(notes, "%s: %ld in %ld ms, error path %ld %s", p->name,
            happy.status, happy.ms, error.status, type);

done:

    free((char *) happy.body);
    free((char *) error.body);
    lp_http_free(&happy);
    lp_http_free(&error);
}


/* "Jane Q. Doe" -> "JQD"; "jd" -> "JD"; at most 4 letters */

static void
lp_initials(const char *name, char *out, size_t size)
{
    size_t  n;
    int     start;

    out[0] = '\0';

    if (name == NULL) {
        return;
    }

    n = 0;
    start = 1;

    if (strlen(name) <= 4 && strchr(name, ' ') == NULL) {
        for ( /* void */ ; *name && n + 1 < size; name++) {
            if (isalpha((unsigned char) *name)) {
                out[n++] = toupper((unsigned char) *name);
            }
        }

        out[n] = '\0';
        return;
    }

    for ( /* void */ ; *name && n < 4 && n + 1 < size; name++) {
        if (isalpha((unsigned char) *name)) {
            if (start) {
                out[n++] = toupper((unsigned char) *name);
            }

            start = 0;

        } else {
            start = 1;
        }
    }

    out[n] = '\0';
}
