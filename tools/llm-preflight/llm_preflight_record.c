
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <errno.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

#include "llm_preflight.h"


/*
 * The record: fields in the runbook's order, printed as JSON (yajl, so
 * every string is escaped), YAML or a markdown table, and appended as
 * one JSON line to --record.  Nothing is written anywhere before the
 * whole text is checked for the key (lp_output()).
 */


static lp_field_t *lp_record_add(lp_record_t *r, const char *key, int type);
static void lp_record_json(yajl_gen g, lp_record_t *r);
static int lp_record_yaml(lp_buf_t *b, lp_record_t *r, int indent);
static int lp_record_markdown(lp_buf_t *b, lp_record_t *r,
    const char *prefix);
static int lp_yaml_string(lp_buf_t *b, const char *s);
static char *lp_record_text(lp_record_t *r, int beautify);


static lp_field_t *
lp_record_add(lp_record_t *r, const char *key, int type)
{
    lp_field_t  *f;

    if (r->n == LP_FIELDS_MAX) {
        /* a programming error: the records are fixed */
        abort();
    }

    f = &r->fields[r->n++];
    memset(f, 0, sizeof(lp_field_t));
    f->key = key;
    f->type = type;

    return f;
}


void
lp_record_str(lp_record_t *r, const char *key, const char *value)
{
    lp_field_t  *f;

    if (value == NULL) {
        lp_record_null(r, key);
        return;
    }

    f = lp_record_add(r, key, LP_FIELD_STRING);
    f->str = strdup(value);

    if (f->str == NULL) {
        f->type = LP_FIELD_NULL;
    }
}


void
lp_record_int(lp_record_t *r, const char *key, long value)
{
    lp_record_add(r, key, LP_FIELD_INT)->num = value;
}


void
lp_record_null(lp_record_t *r, const char *key)
{
    lp_record_add(r, key, LP_FIELD_NULL);
}


void
lp_record_bool(lp_record_t *r, const char *key, int value)
{
    lp_record_add(r, key, LP_FIELD_BOOL)->num = value ? 1 : 0;
}


lp_record_t *
lp_record_obj(lp_record_t *r, const char *key)
{
    lp_field_t  *f;

    f = lp_record_add(r, key, LP_FIELD_OBJECT);
    f->obj = calloc(1, sizeof(lp_record_t));

    if (f->obj == NULL) {
        abort();
    }

    return f->obj;
}


void
lp_record_free(lp_record_t *r)
{
    int  i;

    for (i = 0; i < r->n; i++) {
        free(r->fields[i].str);

        if (r->fields[i].obj) {
            lp_record_free(r->fields[i].obj);
            free(r->fields[i].obj);
        }
    }

    r->n = 0;
}


/*
 * The record to stdout in --format, and as one JSON line to --record.
 * Returns 0, or -1 when it was not written (the error is on stderr).
 */

int
lp_record_emit(lp_conf_t *cf, lp_record_t *r)
{
    int       rc;
    char     *line, *text;
    size_t    len;
    lp_buf_t  b;

    memset(&b, 0, sizeof(lp_buf_t));
    text = NULL;
    rc = -1;

    line = lp_record_text(r, 0);
    if (line == NULL) {
        lp_error(cf, "out of memory");
        return -1;
    }

    if (strcmp(cf->format, "yaml") == 0) {
        if (lp_buf_add(&b, "---\n", 4) != 0 || lp_record_yaml(&b, r, 0) != 0
            || lp_buf_add(&b, "", 0) != 0)
        {
            lp_error(cf, "out of memory");
            goto done;
        }

        text = b.data;
        b.data = NULL;

    } else if (strcmp(cf->format, "markdown") == 0) {
        if (lp_buf_printf(&b, "| field | value |\n|---|---|\n") != 0
            || lp_record_markdown(&b, r, "") != 0
            || lp_buf_add(&b, "", 0) != 0)
        {
            lp_error(cf, "out of memory");
            goto done;
        }

        text = b.data;
        b.data = NULL;

    } else {
        text = lp_record_text(r, 1);
        if (text == NULL) {
            lp_error(cf, "out of memory");
            goto done;
        }
    }

    if (lp_output(cf, STDOUT_FILENO, text, strlen(text)) != 0) {
        goto done;
    }

    if (cf->record_fd != -1) {
        len = strlen(line);
        line[len] = '\n';

        if (lp_output(cf, cf->record_fd, line, len + 1) != 0) {
            goto done;
        }
    }

    rc = 0;

done:

    free(line);
    free(text);
    lp_buf_free(&b);

    return rc;
}


/*
 * Every byte the command writes goes through here: a text that holds
 * the key is not written.  One write() a text, so that records appended
 * by runs at the same time do not interleave.
 */

int
lp_output(lp_conf_t *cf, int fd, const char *data, size_t len)
{
    ssize_t            n;

    static const char  withheld[] = LP_NAME ": output withheld: "
                                    "it would contain the API key\n";

    if (cf->key && memmem(data, len, cf->key, strlen(cf->key))) {
        n = write(STDERR_FILENO, withheld, sizeof(withheld) - 1);
        (void) n;
        return -1;
    }

    while (len) {
        n = write(fd, data, len);

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            if (fd != STDERR_FILENO) {
                lp_error(cf, "write failed: %s", strerror(errno));
            }

            return -1;
        }

        data += n;
        len -= n;
    }

    return 0;
}


static char *
lp_record_text(lp_record_t *r, int beautify)
{
    char                 *out;
    size_t                len;
    yajl_gen              g;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NULL;
    }

    if (beautify) {
        yajl_gen_config(g, yajl_gen_beautify, 1);
        yajl_gen_config(g, yajl_gen_indent_string, "  ");
    }

    /* the record's strings are the command's own, ids and names given */
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    lp_record_json(g, r);

    out = NULL;

    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
        out = malloc(len + 2);

        if (out) {
            memcpy(out, buf, len);

            /* beautified yajl output ends with a newline already */
            if (len && out[len - 1] == '\n') {
                len--;
            }

            out[len] = beautify ? '\n' : '\0';
            out[len + 1] = '\0';
        }
    }

    yajl_gen_free(g);

    return out;
}


static void
lp_record_json(yajl_gen g, lp_record_t *r)
{
    int          i;
    lp_field_t  *f;

    yajl_gen_map_open(g);

    for (i = 0; i < r->n; i++) {
        f = &r->fields[i];

        yajl_gen_string(g, (const unsigned char *) f->key, strlen(f->key));

        switch (f->type) {
        case LP_FIELD_STRING:
            if (yajl_gen_string(g, (const unsigned char *) f->str,
                                strlen(f->str))
                != yajl_gen_status_ok)
            {
                /* not UTF-8: an argument's bytes are not guessed at */
                yajl_gen_null(g);
            }
            break;
        case LP_FIELD_INT:
            yajl_gen_integer(g, f->num);
            break;
        case LP_FIELD_BOOL:
            yajl_gen_bool(g, (int) f->num);
            break;
        case LP_FIELD_OBJECT:
            lp_record_json(g, f->obj);
            break;
        default:
            yajl_gen_null(g);
            break;
        }
    }

    yajl_gen_map_close(g);
}


static int
lp_record_yaml(lp_buf_t *b, lp_record_t *r, int indent)
{
    int          i, rc;
    lp_field_t  *f;

    for (i = 0; i < r->n; i++) {
        f = &r->fields[i];

        rc = lp_buf_printf(b, "%*s%s:", indent, "", f->key);

        switch (f->type) {
        case LP_FIELD_STRING:
            rc = rc || lp_buf_add(b, " ", 1) || lp_yaml_string(b, f->str)
                 || lp_buf_add(b, "\n", 1);
            break;
        case LP_FIELD_INT:
            rc = rc || lp_buf_printf(b, " %ld\n", f->num);
            break;
        case LP_FIELD_BOOL:
            rc = rc || lp_buf_printf(b, " %s\n", f->num ? "true" : "false");
            break;
        case LP_FIELD_OBJECT:
            rc = rc || lp_buf_add(b, "\n", 1)
                 || lp_record_yaml(b, f->obj, indent + 2);
            break;
        default:
            rc = rc || lp_buf_add(b, " null\n", 6);
            break;
        }

        if (rc) {
            return -1;
        }
    }

    return 0;
}


/* a YAML double-quoted scalar: JSON's escapes are YAML's too */

static int
lp_yaml_string(lp_buf_t *b, const char *s)
{
    int                   rc;
    size_t                len;
    yajl_gen              g;
    const unsigned char  *buf;

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return -1;
    }

    yajl_gen_config(g, yajl_gen_validate_utf8, 1);

    if (yajl_gen_string(g, (const unsigned char *) s, strlen(s))
        != yajl_gen_status_ok)
    {
        yajl_gen_null(g);
    }

    rc = -1;

    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
        rc = lp_buf_add(b, buf, len);
    }

    yajl_gen_free(g);

    return rc;
}


static int
lp_record_markdown(lp_buf_t *b, lp_record_t *r, const char *prefix)
{
    int          i, rc;
    char         key[128];
    const char  *p;
    lp_field_t  *f;

    for (i = 0; i < r->n; i++) {
        f = &r->fields[i];

        snprintf(key, sizeof(key), "%s%s", prefix, f->key);

        if (f->type == LP_FIELD_OBJECT) {
            snprintf(key, sizeof(key), "%s%s.", prefix, f->key);

            if (lp_record_markdown(b, f->obj, key) != 0) {
                return -1;
            }

            continue;
        }

        rc = lp_buf_printf(b, "| %s | ", key);

        switch (f->type) {
        case LP_FIELD_STRING:
            for (p = f->str; *p && rc == 0; p++) {
                if (*p == '|' || *p == '\\' || *p == '`') {
                    rc = lp_buf_add(b, "\\", 1);
                }

                rc = rc || lp_buf_add(b, (*p == '\n' || *p == '\r') ? " " : p,
                                      1);
            }
            break;
        case LP_FIELD_INT:
            rc = rc || lp_buf_printf(b, "%ld", f->num);
            break;
        case LP_FIELD_BOOL:
            rc = rc || lp_buf_printf(b, "%s", f->num ? "true" : "false");
            break;
        default:
            rc = rc || lp_buf_add(b, "-", 1);
            break;
        }

        if (rc || lp_buf_add(b, " |\n", 3) != 0) {
            return -1;
        }
    }

    return 0;
}


/* growing buffers, always with room for a terminating NUL */

int
lp_buf_add(lp_buf_t *b, const void *data, size_t len)
{
    char    *p;
    size_t   size;

    if (b->len + len + 1 > b->size) {
        size = b->size ? b->size : 256;

        while (size < b->len + len + 1) {
            size *= 2;
        }

        p = realloc(b->data, size);
        if (p == NULL) {
            return -1;
        }

        b->data = p;
        b->size = size;
    }

    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';

    return 0;
}


int
lp_buf_printf(lp_buf_t *b, const char *fmt, ...)
{
    int       n, rc;
    char      small[512], *big;
    va_list   args;

    va_start(args, fmt);
    n = vsnprintf(small, sizeof(small), fmt, args);
    va_end(args);

    if (n < 0) {
        return -1;
    }

    if ((size_t) n < sizeof(small)) {
        return lp_buf_add(b, small, n);
    }

    big = malloc(n + 1);
    if (big == NULL) {
        return -1;
    }

    va_start(args, fmt);
    vsnprintf(big, n + 1, fmt, args);
    va_end(args);

    rc = lp_buf_add(b, big, n);
    free(big);

    return rc;
}


void
lp_buf_free(lp_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->size = 0;
}
