
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <signal.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

#include "llm_preflight.h"


/*
 * llm-preflight: the model-change runbook as a command
 * (docs/llm-preflight.md).  `check` proves a candidate model through the
 * gateway as its clients see it: the catalog lists it, a tiny request
 * answers in the family's documented shape, a bad request fails cleanly
 * without retries, the access log holds both requests' records and no
 * secret; the record ends in promote, hold or rollback.
 */


typedef struct {
    const char                 *happy;      /* pass, fail, not_run */
    const char                 *error;
    const char                 *shape;
    const char                 *telemetry;
    const char                 *catalog;    /* listed, not_listed, ... */
} lp_check_t;


static int lp_check_command(lp_conf_t *cf);
static void lp_check_happy(lp_conf_t *cf, lp_http_t *h, lp_check_t *c,
    lp_buf_t *notes);
static void lp_check_error(lp_conf_t *cf, lp_http_t *h, lp_check_t *c,
    lp_buf_t *notes);
static void lp_check_telemetry(lp_conf_t *cf, lp_log_t *log,
    lp_http_t *happy, lp_http_t *error, lp_check_t *c, lp_buf_t *notes);
static void lp_status_field(lp_record_t *r, const char *key, lp_http_t *h);


const char  *lp_family_names[] = { "chat", "responses", "messages" };


int
main(int argc, char **argv)
{
    int        rc;
    lp_conf_t  cf;

    signal(SIGPIPE, SIG_IGN);

    memset(&cf, 0, sizeof(lp_conf_t));

    rc = lp_parse_options(&cf, argc, argv);

    if (rc == 1) {
        return 0;
    }

    if (rc != 0) {
        return rc;
    }

    if (lp_http_init() != 0) {
        lp_error(&cf, "libcurl could not be initialized");
        return LP_EXIT_USAGE;
    }

    if (strcmp(cf.command, "check") == 0) {
        rc = lp_check_command(&cf);

    } else if (strcmp(cf.command, "readiness") == 0) {
        rc = lp_readiness_command(&cf);

    } else {
        rc = lp_catalog_command(&cf);
    }

    lp_http_cleanup();

    if (cf.record_fd != -1) {
        close(cf.record_fd);
    }

    return rc;
}


static int
lp_check_command(lp_conf_t *cf)
{
    int          rc, listed, decision;
    long         status;
    char         url[1400], id_happy[96], id_error[96], model[160];
    char         why[320], time[32];
    lp_buf_t     notes;
    lp_log_t     log;
    lp_http_t    happy, error;
    lp_check_t   c;
    lp_record_t  rec, *obj;

    static const char  *decisions[] = { "promote", "hold", "rollback" };

    if (cf->access_log && lp_log_open(&log, cf->access_log) != 0) {
        lp_error(cf, "--access-log %.256s: cannot be read", cf->access_log);
        return LP_EXIT_USAGE;
    }

    lp_run_id(cf);
    lp_time_iso(time, sizeof(time));

    memset(&notes, 0, sizeof(lp_buf_t));
    memset(&rec, 0, sizeof(lp_record_t));
    memset(&happy, 0, sizeof(lp_http_t));
    memset(&error, 0, sizeof(lp_http_t));
    memset(&c, 0, sizeof(lp_check_t));

    cf->deadline = lp_now_ms() + cf->timeout_ms;

    /* 1. catalog evidence */

    if (lp_catalog_fetch(cf, cf->base, cf->model, &listed, &status, NULL,
                         NULL, why, sizeof(why))
        != 0)
    {
        c.catalog = "unavailable";
        lp_note(&notes, "catalog not confirmed: %s", why);

    } else if (listed) {
        c.catalog = "listed";
        lp_note(&notes, "catalog lists the candidate");

    } else {
        c.catalog = "not_listed";
        lp_note(&notes, "catalog does not list the candidate");
    }

    /* 2. endpoint evidence: the happy path */

    snprintf(url, sizeof(url), "%s%s", cf->base, lp_family_path(cf->family));
    snprintf(id_happy, sizeof(id_happy), "%s-happy", cf->run_id);
    snprintf(id_error, sizeof(id_error), "%s-error", cf->run_id);

    happy.url = url;
    happy.request_id = id_happy;
    happy.stream = cf->stream;
    happy.body = lp_family_body(cf->family, cf->model, cf->stream);

    lp_check_happy(cf, &happy, &c, &notes);

    /* 3. the controlled error path: a model no gateway serves */

    snprintf(model, sizeof(model), "preflight-invalid-model-%s", cf->run_id);

    error.url = url;
    error.request_id = id_error;
    error.stream = cf->stream;
    error.body = lp_family_body(cf->family, model, cf->stream);

    lp_check_error(cf, &error, &c, &notes);

    /* 4. telemetry evidence */

    if (cf->access_log) {
        lp_check_telemetry(cf, &log, &happy, &error, &c, &notes);

    } else {
        c.telemetry = "not_checked";
        lp_note(&notes, "telemetry not checked (no --access-log)");
    }

    if (cf->rollback_owner == NULL) {
        lp_note(&notes, "no rollback owner named (--rollback-owner)");
    }

    /* 6. the decision */

    if (strcmp(c.happy, "fail") == 0) {
        decision = 2;

    } else if (strcmp(c.happy, "pass") != 0
               || strcmp(c.catalog, "listed") != 0
               || strcmp(c.shape, "documented_shape_seen") != 0
               || strcmp(c.error, "pass") != 0
               || strcmp(c.telemetry, "yes") != 0
               || cf->rollback_owner == NULL)
    {
        decision = 1;

    } else {
        decision = 0;
    }

    /* 5. the record */

    lp_record_str(&rec, "run_id", cf->run_id);
    lp_record_str(&rec, "time", time);
    lp_record_str(&rec, "operator", cf->operator_name);
    lp_record_str(&rec, "model_candidate", cf->model);
    lp_record_str(&rec, "endpoint_family", lp_family_names[cf->family]);
    lp_record_str(&rec, "gateway", cf->base);
    lp_record_bool(&rec, "stream", cf->stream);
    lp_record_str(&rec, "catalog", c.catalog);
    lp_record_str(&rec, "happy_path_status", c.happy);
    lp_record_str(&rec, "error_path_status", c.error);

    obj = lp_record_obj(&rec, "http_status_observed");

    if (status) {
        lp_record_int(obj, "catalog", status);

    } else {
        lp_record_null(obj, "catalog");
    }

    lp_status_field(obj, "happy_path", &happy);
    lp_status_field(obj, "error_path", &error);

    lp_record_str(&rec, "response_shape_checked", c.shape);
    lp_record_str(&rec, "telemetry_fields_present", c.telemetry);
    lp_record_str(&rec, "fallback_decision", decisions[decision]);
    lp_record_str(&rec, "notes", notes.data ? notes.data : "");

    if (cf->change_ticket) {
        lp_record_str(&rec, "change_ticket", cf->change_ticket);
    }

    if (cf->rollback_owner) {
        lp_record_str(&rec, "rollback_owner", cf->rollback_owner);
    }

    lp_record_str(&rec, "client", lp_client());

    rc = (lp_record_emit(cf, &rec) == 0) ? decision : LP_EXIT_USAGE;

    lp_record_free(&rec);
    lp_buf_free(&notes);
    free((char *) happy.body);
    free((char *) error.body);
    lp_http_free(&happy);
    lp_http_free(&error);

    return rc;
}


static void
lp_check_happy(lp_conf_t *cf, lp_http_t *h, lp_check_t *c, lp_buf_t *notes)
{
    int         sse;
    char        type[96];
    lp_shape_t  s;

    c->shape = "not_checked";

    if (h->body == NULL) {
        c->happy = "not_run";
        lp_note(notes, "happy path not run: out of memory");
        return;
    }

    lp_http_request(cf, h);

    if (h->not_run) {
        c->happy = "not_run";
        lp_note(notes, "happy path not run: --timeout spent");
        return;
    }

    if (h->error[0]) {
        c->happy = "fail";

        if (h->status) {
            lp_note(notes, "happy path %ld cut off after %ld ms: %s",
                    h->status, h->ms, h->error);

        } else {
            lp_note(notes, "happy path failed after %ld ms: %s", h->ms,
                    h->error);
        }

        return;
    }

    if (h->status < 200 || h->status > 299) {
        c->happy = "fail";

        if (!lp_error_object(h, type, sizeof(type))) {
            snprintf(type, sizeof(type), "without an error object");
        }

        if (h->attempts >= 0) {
            lp_note(notes, "happy path answered %ld %s in %ld ms after %ld "
                    "attempt%s", h->status, type, h->ms, h->attempts,
                    h->attempts == 1 ? "" : "s");

        } else {
            lp_note(notes, "happy path answered %ld %s in %ld ms",
                    h->status, type, h->ms);
        }

        return;
    }

    /* the gateway kept the client going, but not with the candidate */

    if (h->fallback == 1) {
        c->happy = "fail";
        lp_note(notes, "happy path %ld answered by a fallback "
                "(x-llm-fallback: 1), not by the candidate", h->status);
        return;
    }

    c->happy = "pass";

    if (h->attempts > 1) {
        lp_note(notes, "happy path %ld in %ld ms after %ld attempts",
                h->status, h->ms, h->attempts);

    } else {
        lp_note(notes, "happy path %ld in %ld ms", h->status, h->ms);
    }

    sse = lp_sse_is(h);

    if (sse != cf->stream) {
        c->shape = "mismatch";
        lp_note(notes, "asked for %s, the answer is %s",
                cf->stream ? "a stream" : "a JSON answer",
                sse ? "a stream" : "no stream");
        return;
    }

    lp_family_check(cf->family, h, &s);

    if (s.shape_ok && s.text_ok && s.usage_ok && s.end_ok
        && !s.error_event)
    {
        c->shape = "documented_shape_seen";

    } else {
        c->shape = "mismatch";
        lp_note(notes, "response shape: %s", s.what);
    }
}


/*
 * The bad request must come back as the caller's mistake: a 4xx with an
 * error object, at once, without retries.  A 2xx means the gateway or
 * provider served a model that does not exist; a 5xx, that a caller's
 * mistake looks like an outage (and would be retried by SDKs).
 */

static void
lp_check_error(lp_conf_t *cf, lp_http_t *h, lp_check_t *c, lp_buf_t *notes)
{
    char  type[96];

    c->error = "fail";

    if (h->body == NULL) {
        c->error = "not_run";
        lp_note(notes, "error path not run: out of memory");
        return;
    }

    lp_http_request(cf, h);

    if (h->not_run) {
        c->error = "not_run";
        lp_note(notes, "error path not run: --timeout spent");
        return;
    }

    if (h->error[0]) {
        lp_note(notes, "error path failed after %ld ms: %s", h->ms,
                h->error);
        return;
    }

    if (h->status < 400 || h->status > 499) {
        lp_note(notes, "error path answered %ld, not a 4xx", h->status);
        return;
    }

    if (!lp_error_object(h, type, sizeof(type))) {
        lp_note(notes, "error path %ld without an error object "
                "(error.type or error.code)", h->status);
        return;
    }

    if (h->attempts > 1) {
        lp_note(notes, "error path %ld %s after %ld attempts: the gateway "
                "retried a caller's mistake", h->status, type, h->attempts);
        return;
    }

    if (h->ms > LP_ERROR_QUICK_MS) {
        lp_note(notes, "error path %ld %s took %ld ms", h->status, type,
                h->ms);
        return;
    }

    c->error = "pass";

    if (h->attempts >= 0) {
        lp_note(notes, "error path %ld %s in %ld ms, %ld attempt%s",
                h->status, type, h->ms, h->attempts,
                h->attempts == 1 ? "" : "s");

    } else {
        lp_note(notes, "error path %ld %s in %ld ms", h->status, type,
                h->ms);
    }
}


static void
lp_check_telemetry(lp_conf_t *cf, lp_log_t *log, lp_http_t *happy,
    lp_http_t *error, lp_check_t *c, lp_buf_t *notes)
{
    int             i, n, secret, usage[2], ok;
    lp_http_t      *hs[2];
    const char     *ids[2], *names[2];
    lp_log_line_t   lines[2];

    n = 0;
    memset(lines, 0, sizeof(lines));

    /* a request that was never made leaves no line */

    if (!happy->not_run && happy->body) {
        hs[n] = happy;
        ids[n] = happy->request_id;
        names[n] = "happy path";
        usage[n] = (happy->status >= 200 && happy->status <= 299);
        n++;
    }

    if (!error->not_run && error->body) {
        hs[n] = error;
        ids[n] = error->request_id;
        names[n] = "error path";
        usage[n] = 0;
        n++;
    }

    if (n == 0) {
        c->telemetry = "not_checked";
        lp_note(notes, "telemetry not checked: no request was made");
        return;
    }

    lp_log_find(cf, log, ids, usage, lines, n, &secret);

    ok = 1;

    for (i = 0; i < n; i++) {

        if (!lines[i].found) {
            ok = 0;
            lp_note(notes, "no access log line with X-Request-Id %s",
                    ids[i]);
            continue;
        }

        if (!lines[i].fields_ok) {
            ok = 0;
            lp_note(notes, "the %s's log line lacks %s", names[i],
                    lines[i].missing);
        }

        if (hs[i]->status && lines[i].status != hs[i]->status) {
            ok = 0;
            lp_note(notes, "the %s's log line has status %ld, the client "
                    "got %ld", names[i], lines[i].status, hs[i]->status);
        }

        if (hs[i] == error && lines[i].attempts > 1
            && strcmp(c->error, "pass") == 0)
        {
            c->error = "fail";
            lp_note(notes, "the error path's log line shows %ld attempts: "
                    "the gateway retried a caller's mistake",
                    lines[i].attempts);
        }
    }

    if (secret & 1) {
        ok = 0;
        lp_note(notes, "the access log holds the API key");
    }

    if (secret & 2) {
        ok = 0;
        lp_note(notes, "the access log holds the prompt");
    }

    c->telemetry = ok ? "yes" : "no";

    if (ok) {
        lp_note(notes, "telemetry: %d log line%s with the fields, no secret",
                n, n == 1 ? "" : "s");
    }
}


static void
lp_status_field(lp_record_t *r, const char *key, lp_http_t *h)
{
    if (h->status) {
        lp_record_int(r, key, h->status);

    } else {
        lp_record_null(r, key);
    }
}


/* utilities */

long
lp_now_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


long
lp_left_ms(lp_conf_t *cf)
{
    return cf->deadline - lp_now_ms();
}


void
lp_time_iso(char *buf, size_t size)
{
    time_t     now;
    struct tm  tm;

    now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}


/* a run id for the record and the requests' X-Request-Id */

void
lp_run_id(lp_conf_t *cf)
{
    int            fd;
    char           stamp[32];
    time_t         now;
    struct tm      tm;
    unsigned char  r[3];

    if (cf->run_id) {
        return;
    }

    now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);

    fd = open("/dev/urandom", O_RDONLY|O_CLOEXEC);

    if (fd == -1 || read(fd, r, sizeof(r)) != (ssize_t) sizeof(r)) {
        r[0] = (unsigned char) getpid();
        r[1] = (unsigned char) (getpid() >> 8);
        r[2] = (unsigned char) lp_now_ms();
    }

    if (fd != -1) {
        close(fd);
    }

    snprintf(cf->run_id_buf, sizeof(cf->run_id_buf), "pf-%s-%02x%02x%02x",
             stamp, r[0], r[1], r[2]);

    cf->run_id = cf->run_id_buf;
}


void
lp_note(lp_buf_t *notes, const char *fmt, ...)
{
    char     line[512];
    va_list  args;

    va_start(args, fmt);
    vsnprintf(line, sizeof(line), fmt, args);
    va_end(args);

    if (notes->len) {
        (void) lp_buf_add(notes, "; ", 2);
    }

    (void) lp_buf_add(notes, line, strlen(line));
}


const char *
lp_client(void)
{
    static char  client[96];

    snprintf(client, sizeof(client), LP_NAME "/%s libcurl/%s", LP_VERSION,
             lp_http_libcurl_version());

    return client;
}


/* one line on stderr, checked for the key as any output */

void
lp_error(lp_conf_t *cf, const char *fmt, ...)
{
    int      n;
    char     line[600];
    va_list  args;

    n = snprintf(line, sizeof(line), LP_NAME ": ");

    va_start(args, fmt);
    vsnprintf(line + n, sizeof(line) - n - 1, fmt, args);
    va_end(args);

    /* one line, whatever the arguments held */
    for (n = 0; line[n]; n++) {
        if (line[n] == '\n' || line[n] == '\r') {
            line[n] = ' ';
        }
    }

    line[n++] = '\n';

    (void) lp_output(cf, STDERR_FILENO, line, n);
}
