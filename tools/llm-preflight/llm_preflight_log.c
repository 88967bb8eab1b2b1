
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <sys/stat.h>

#include <yajl/yajl_tree.h>

#include "llm_preflight.h"


/*
 * Telemetry evidence: the gateway's JSON access log (conf.example's
 * llm_json, docs/logging.md) read from where it ended when the run
 * began.  nginx writes a request's line once the answer is sent, so the
 * lines are waited for, up to LP_LOG_WAIT_MS.  Every line read is also
 * searched for the key and the prompt, which no line may hold.
 */


#define LP_LOG_LINE_MAX  (1024 * 1024)


/* keys of llm_json: one of each group must be there */

static const char  *lp_log_required[][3] = {
    { "http.request.method", NULL, NULL },
    { "llm.route", "llm.target", NULL },
    { "http.response.status_code", NULL, NULL },
    { "error.type", NULL, NULL },
    { "llm.retry_decision", NULL, NULL },
    { "llm.attempts", NULL, NULL },
    { NULL, NULL, NULL }
};

static const char  *lp_log_usage[] = {
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    NULL
};


static void lp_log_line(lp_conf_t *cf, char *line, size_t len,
    const char *ids[], int usage[], lp_log_line_t lines[], int n,
    int *secret);
static void lp_log_fields(yajl_val root, int usage, lp_log_line_t *l);
static const char *lp_log_value(yajl_val root, const char *key);
static long lp_log_number(const char *v);
static void lp_log_missing(lp_log_line_t *l, const char *key);


int
lp_log_open(lp_log_t *log, const char *path)
{
    FILE         *f;
    struct stat   st;

    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }

    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        errno = EINVAL;
        return -1;
    }

    fclose(f);

    log->path = path;
    log->start = st.st_size;

    return 0;
}


/*
 * Finds the lines of the request ids; returns how many were found.
 * *secret gets 1 when a line read holds the key, 2 the prompt.
 */

int
lp_log_find(lp_conf_t *cf, lp_log_t *log, const char *ids[], int usage[],
    lp_log_line_t lines[], int n, int *secret)
{
    int              i, found;
    long             wait, until;
    char            *line;
    FILE            *f;
    size_t           cap;
    ssize_t          len;
    struct stat      st;
    struct timespec  ts;

    line = NULL;
    cap = 0;
    *secret = 0;

    wait = lp_left_ms(cf);
    wait = wait < 200 ? 200 : wait > LP_LOG_WAIT_MS ? LP_LOG_WAIT_MS : wait;
    until = lp_now_ms() + wait;

    for ( ;; ) {

        f = fopen(log->path, "r");

        if (f && fstat(fileno(f), &st) == 0) {

            /* rotated since the run began: the new file from its start */
            if (st.st_size < log->start) {
                log->start = 0;
            }

            if (fseeko(f, log->start, SEEK_SET) == 0) {

                while ((len = getline(&line, &cap, f)) > 0) {

                    /* a line still being written is read again later */
                    if (line[len - 1] != '\n') {
                        break;
                    }

                    log->start += len;

                    if (len <= LP_LOG_LINE_MAX) {
                        lp_log_line(cf, line, len, ids, usage, lines, n,
                                    secret);
                    }
                }
            }
        }

        if (f) {
            fclose(f);
        }

        found = 0;

        for (i = 0; i < n; i++) {
            found += lines[i].found;
        }

        if (found == n || lp_now_ms() >= until) {
            break;
        }

        ts.tv_sec = 0;
        ts.tv_nsec = 50 * 1000 * 1000;
        nanosleep(&ts, NULL);
    }

    free(line);

    return found;
}


static void
lp_log_line(lp_conf_t *cf, char *line, size_t len, const char *ids[],
    int usage[], lp_log_line_t lines[], int n, int *secret)
{
    int          i;
    char         quoted[128];
    size_t       k;
    yajl_val     root, v;
    const char  *s;

    line[len - 1] = '\0';

    if (cf->key && strstr(line, cf->key)) {
        *secret |= 1;
    }

    if (strstr(line, LP_PROMPT)) {
        *secret |= 2;
    }

    for (i = 0; i < n; i++) {

        if (lines[i].found) {
            continue;
        }

        snprintf(quoted, sizeof(quoted), "\"%s\"", ids[i]);

        if (strstr(line, quoted) == NULL) {
            continue;
        }

        root = lp_json_parse(line, len - 1);
        if (root == NULL) {
            continue;
        }

        /* the id is a whole value of the line, not part of another */

        s = NULL;

        for (k = 0; k < root->u.object.len; k++) {
            v = root->u.object.values[k];

            if (YAJL_IS_STRING(v) && strcmp(v->u.string, ids[i]) == 0) {
                s = v->u.string;
                break;
            }
        }

        if (s) {
            lines[i].found = 1;
            lp_log_fields(root, usage[i], &lines[i]);
        }

        yajl_tree_free(root);
    }
}


static void
lp_log_fields(yajl_val root, int usage, lp_log_line_t *l)
{
    int          i, j, any;
    const char  *v;

    l->missing[0] = '\0';
    l->fields_ok = 1;

    for (i = 0; lp_log_required[i][0]; i++) {
        any = 0;

        for (j = 0; j < 3 && lp_log_required[i][j]; j++) {
            v = lp_log_value(root, lp_log_required[i][j]);

            /* error.type and llm.retry_decision are "" when all went well */
            if (v && (*v || i == 3 || i == 4)) {
                any = 1;
            }
        }

        if (!any) {
            lp_log_missing(l, lp_log_required[i][0]);
        }
    }

    for (i = 0; usage && lp_log_usage[i]; i++) {
        v = lp_log_value(root, lp_log_usage[i]);

        if (v == NULL || *v == '\0') {
            lp_log_missing(l, lp_log_usage[i]);
        }
    }

    v = lp_log_value(root, "http.response.status_code");
    l->status = v ? lp_log_number(v) : -1;

    v = lp_log_value(root, "llm.attempts");
    l->attempts = v ? lp_log_number(v) : -1;
}


/* a key's value as a string; llm_json writes every value as one */

static const char *
lp_log_value(yajl_val root, const char *key)
{
    size_t  i;

    for (i = 0; i < root->u.object.len; i++) {
        if (strcmp(root->u.object.keys[i], key) == 0) {
            return YAJL_GET_STRING(root->u.object.values[i]);
        }
    }

    return NULL;
}


static long
lp_log_number(const char *v)
{
    long   n;
    char  *end;

    if (*v < '0' || *v > '9') {
        return -1;
    }

    errno = 0;
    n = strtol(v, &end, 10);

    return (errno || *end) ? -1 : n;
}


static void
lp_log_missing(lp_log_line_t *l, const char *key)
{
    size_t  len;

    l->fields_ok = 0;
    len = strlen(l->missing);

    snprintf(l->missing + len, sizeof(l->missing) - len, "%s%s",
             len ? ", " : "", key);
}
