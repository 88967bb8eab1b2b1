
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "llm_preflight.h"


/*
 * The three endpoint families are separate contracts (docs/directives.md,
 * "Errors of the gateway"; docs/llm-preflight.md): the request each
 * takes, the answer it documents, whole or as SSE with its own end
 * event, and its error object.
 */


typedef struct {
    char                        event[64];  /* "event:" line, or "" */
    char                       *data;       /* data lines joined by \n */
} lp_sse_event_t;


static yajl_val lp_get(yajl_val v, const char *k1, const char *k2,
    const char *k3);
static const char *lp_get_string(yajl_val v, const char *k1,
    const char *k2);
static int lp_is_int(yajl_val v, const char *k1, const char *k2);
static void lp_shape_miss(lp_shape_t *s, const char *what);
static void lp_check_whole(int family, yajl_val root, lp_shape_t *s);
static void lp_check_stream(int family, lp_http_t *h, lp_shape_t *s);
static int lp_sse_next(const char **p, const char *end, lp_sse_event_t *e,
    lp_buf_t *data);
static int lp_json_depth_ok(const char *p, size_t len);


static const char  *lp_family_paths[] = {
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages"
};


const char *
lp_family_path(int family)
{
    return lp_family_paths[family];
}


/* the minimal request of the family, JSON-encoded by yajl */

char *
lp_family_body(int family, const char *model, int stream)
{
    char                 *out;
    size_t                len;
    yajl_gen              g;
    const unsigned char  *buf;

#define lp_s(str)                                                            \
    yajl_gen_string(g, (const unsigned char *) (str), strlen(str))

    g = yajl_gen_alloc(NULL);
    if (g == NULL) {
        return NULL;
    }

    yajl_gen_map_open(g);
    lp_s("model");
    lp_s(model);

    if (family == LP_FAMILY_RESPONSES) {
        lp_s("input");
        lp_s(LP_PROMPT);

    } else {
        if (family == LP_FAMILY_MESSAGES) {
            lp_s("max_tokens");
            yajl_gen_integer(g, 32);
        }

        lp_s("messages");
        yajl_gen_array_open(g);
        yajl_gen_map_open(g);
        lp_s("role");
        lp_s("user");
        lp_s("content");
        lp_s(LP_PROMPT);
        yajl_gen_map_close(g);
        yajl_gen_array_close(g);
    }

    if (stream) {
        lp_s("stream");
        yajl_gen_bool(g, 1);

        if (family == LP_FAMILY_CHAT) {
            /* usage comes in a last chunk only when asked for */
            lp_s("stream_options");
            yajl_gen_map_open(g);
            lp_s("include_usage");
            yajl_gen_bool(g, 1);
            yajl_gen_map_close(g);
        }
    }

    yajl_gen_map_close(g);

#undef lp_s

    out = NULL;

    if (yajl_gen_get_buf(g, &buf, &len) == yajl_gen_status_ok) {
        out = malloc(len + 1);
        if (out) {
            memcpy(out, buf, len);
            out[len] = '\0';
        }
    }

    yajl_gen_free(g);

    return out;
}


int
lp_sse_is(lp_http_t *h)
{
    return strncasecmp(h->content_type, "text/event-stream",
                       sizeof("text/event-stream") - 1) == 0;
}


/* a 2xx answer against the family's documented shape */

void
lp_family_check(int family, lp_http_t *h, lp_shape_t *s)
{
    yajl_val  root;

    memset(s, 0, sizeof(lp_shape_t));

    if (lp_sse_is(h)) {
        lp_check_stream(family, h, s);
        return;
    }

    root = lp_json_parse(h->answer.data, h->answer.len);

    if (root == NULL) {
        lp_shape_miss(s, "the answer is no JSON object");
        return;
    }

    s->end_ok = 1;
    lp_check_whole(family, root, s);

    yajl_tree_free(root);
}


static void
lp_check_whole(int family, yajl_val root, lp_shape_t *s)
{
    size_t       i, j;
    yajl_val     a, item, c;
    const char  *t;

    switch (family) {

    case LP_FAMILY_CHAT:
        t = lp_get_string(root, "object", NULL);
        a = lp_get(root, "choices", NULL, NULL);
        s->shape_ok = t && strcmp(t, "chat.completion") == 0
                      && YAJL_IS_ARRAY(a) && a->u.array.len > 0;

        if (!s->shape_ok) {
            lp_shape_miss(s, "no chat.completion with choices");
            break;
        }

        t = lp_get_string(a->u.array.values[0], "message", "content");
        s->text_ok = t && *t;
        s->usage_ok = lp_is_int(root, "usage", "prompt_tokens")
                      && lp_is_int(root, "usage", "completion_tokens");
        break;

    case LP_FAMILY_RESPONSES:
        t = lp_get_string(root, "object", NULL);
        a = lp_get(root, "output", NULL, NULL);
        s->shape_ok = t && strcmp(t, "response") == 0 && YAJL_IS_ARRAY(a)
                      && lp_get_string(root, "status", NULL);

        if (!s->shape_ok) {
            lp_shape_miss(s, "no response with output and status");
            break;
        }

        for (i = 0; i < a->u.array.len && !s->text_ok; i++) {
            item = a->u.array.values[i];
            t = lp_get_string(item, "type", NULL);
            c = lp_get(item, "content", NULL, NULL);

            if (t == NULL || strcmp(t, "message") != 0 || !YAJL_IS_ARRAY(c)) {
                continue;
            }

            for (j = 0; j < c->u.array.len; j++) {
                t = lp_get_string(c->u.array.values[j], "text", NULL);
                if (t && *t) {
                    s->text_ok = 1;
                    break;
                }
            }
        }

        s->usage_ok = lp_is_int(root, "usage", "input_tokens")
                      && lp_is_int(root, "usage", "output_tokens");
        break;

    default: /* LP_FAMILY_MESSAGES */
        t = lp_get_string(root, "type", NULL);
        a = lp_get(root, "content", NULL, NULL);
        s->shape_ok = t && strcmp(t, "message") == 0 && YAJL_IS_ARRAY(a);

        if (!s->shape_ok) {
            lp_shape_miss(s, "no message with content");
            break;
        }

        for (i = 0; i < a->u.array.len; i++) {
            t = lp_get_string(a->u.array.values[i], "text", NULL);
            if (t && *t) {
                s->text_ok = 1;
                break;
            }
        }

        s->usage_ok = lp_is_int(root, "usage", "input_tokens")
                      && lp_is_int(root, "usage", "output_tokens");
        break;
    }

    if (!s->text_ok) {
        lp_shape_miss(s, "no text in the answer");
    }

    if (!s->usage_ok) {
        lp_shape_miss(s, "no usage in the answer");
    }
}


/*
 * A stream: chat completion chunks ending in "data: [DONE]"; Responses
 * events ending in response.completed; Anthropic events ending in
 * message_stop.  Text and usage are gathered on the way.
 */

static void
lp_check_stream(int family, lp_http_t *h, lp_shape_t *s)
{
    int              last_end, in_ok, out_ok, chunks;
    size_t           i;
    yajl_val         root, a, d;
    lp_buf_t         data;
    const char      *p, *end, *t, *type;
    lp_sse_event_t   e;

    p = h->answer.data;
    end = p + h->answer.len;
    memset(&data, 0, sizeof(lp_buf_t));

    last_end = 0;
    in_ok = 0;
    out_ok = 0;
    chunks = 0;
    s->shape_ok = 1;

    while (lp_sse_next(&p, end, &e, &data)) {

        last_end = 0;

        if (family == LP_FAMILY_CHAT && strcmp(e.data, "[DONE]") == 0) {
            last_end = 1;
            continue;
        }

        root = lp_json_parse(e.data, strlen(e.data));

        if (root == NULL) {
            s->shape_ok = 0;
            lp_shape_miss(s, "an event whose data is no JSON object");
            continue;
        }

        type = lp_get_string(root, "type", NULL);

        if (lp_get(root, "error", NULL, NULL)
            || strcmp(e.event, "error") == 0
            || (type && (strcmp(type, "error") == 0
                         || strcmp(type, "response.failed") == 0)))
        {
            s->error_event = 1;
            lp_shape_miss(s, "the stream carried an error event");
            yajl_tree_free(root);
            continue;
        }

        switch (family) {

        case LP_FAMILY_CHAT:
            t = lp_get_string(root, "object", NULL);

            if (t == NULL || strcmp(t, "chat.completion.chunk") != 0) {
                s->shape_ok = 0;
                lp_shape_miss(s, "a chunk that is no chat.completion.chunk");
                break;
            }

            chunks++;
            a = lp_get(root, "choices", NULL, NULL);

            for (i = 0; YAJL_IS_ARRAY(a) && i < a->u.array.len; i++) {
                t = lp_get_string(a->u.array.values[i], "delta", "content");
                if (t && *t) {
                    s->text_ok = 1;
                }
            }

            if (lp_is_int(root, "usage", "prompt_tokens")
                && lp_is_int(root, "usage", "completion_tokens"))
            {
                in_ok = out_ok = 1;
            }

            break;

        case LP_FAMILY_RESPONSES:
            if (type == NULL) {
                s->shape_ok = 0;
                lp_shape_miss(s, "an event without a type");
                break;
            }

            chunks++;

            if (strcmp(type, "response.output_text.delta") == 0) {
                t = lp_get_string(root, "delta", NULL);
                if (t && *t) {
                    s->text_ok = 1;
                }

            } else if (strcmp(type, "response.completed") == 0) {
                last_end = 1;
                d = lp_get(root, "response", "usage", NULL);
                in_ok = lp_is_int(d, "input_tokens", NULL);
                out_ok = lp_is_int(d, "output_tokens", NULL);
            }

            break;

        default: /* LP_FAMILY_MESSAGES */
            if (type == NULL) {
                s->shape_ok = 0;
                lp_shape_miss(s, "an event without a type");
                break;
            }

            chunks++;

            if (strcmp(type, "message_start") == 0) {
                d = lp_get(root, "message", "usage", NULL);
                in_ok = in_ok || lp_is_int(d, "input_tokens", NULL);

            } else if (strcmp(type, "content_block_delta") == 0) {
                t = lp_get_string(root, "delta", "text");
                if (t && *t) {
                    s->text_ok = 1;
                }

            } else if (strcmp(type, "message_delta") == 0) {
                out_ok = out_ok || lp_is_int(root, "usage", "output_tokens");

            } else if (strcmp(type, "message_stop") == 0) {
                last_end = 1;
            }

            break;
        }

        yajl_tree_free(root);
    }

    lp_buf_free(&data);

    if (chunks == 0) {
        s->shape_ok = 0;
        lp_shape_miss(s, "a stream without events");
    }

    s->end_ok = last_end;
    s->usage_ok = in_ok && out_ok;

    if (!s->end_ok) {
        lp_shape_miss(s, family == LP_FAMILY_CHAT
                         ? "the stream did not end with [DONE]"
                         : family == LP_FAMILY_RESPONSES
                           ? "the stream did not end with response.completed"
                           : "the stream did not end with message_stop");
    }

    if (!s->text_ok) {
        lp_shape_miss(s, "no text in the stream");
    }

    if (!s->usage_ok) {
        lp_shape_miss(s, "no usage in the stream");
    }
}


/*
 * The next event of an SSE body: its "event:" name and its data lines
 * joined; events without data are skipped.  Pointers into "data" and
 * the body stay valid until the next call.
 */

static int
lp_sse_next(const char **pp, const char *end, lp_sse_event_t *e,
    lp_buf_t *data)
{
    int          has_data;
    size_t       len;
    const char  *p, *eol, *v;

    p = *pp;

    while (p < end) {

        e->event[0] = '\0';
        data->len = 0;
        has_data = 0;

        /* the lines of one event, up to a blank line or the end */

        while (p < end) {
            eol = memchr(p, '\n', end - p);
            len = (eol ? eol : end) - p;

            if (len && p[len - 1] == '\r') {
                len--;
            }

            v = p;
            p = eol ? eol + 1 : end;

            if (len == 0) {
                break;
            }

            if (len >= 5 && strncmp(v, "data:", 5) == 0) {
                v += 5;
                len -= 5;

                if (len && *v == ' ') {
                    v++;
                    len--;
                }

                if (has_data && lp_buf_add(data, "\n", 1) != 0) {
                    return 0;
                }

                if (lp_buf_add(data, v, len) != 0) {
                    return 0;
                }

                has_data = 1;

            } else if (len >= 6 && strncmp(v, "event:", 6) == 0) {
                v += 6;
                len -= 6;

                if (len && *v == ' ') {
                    v++;
                    len--;
                }

                if (len >= sizeof(e->event)) {
                    len = sizeof(e->event) - 1;
                }

                memcpy(e->event, v, len);
                e->event[len] = '\0';
            }
        }

        if (has_data) {
            if (lp_buf_add(data, "", 0) != 0) {
                return 0;
            }

            e->data = data->data;
            *pp = p;
            return 1;
        }
    }

    *pp = p;
    return 0;
}


/*
 * The error object of an error answer: OpenAI's {"error":{"type",
 * "code"}} or Anthropic's {"type":"error","error":{"type"}}.  Its type
 * and code, sanitized, go to "type" for the notes.
 */

int
lp_error_object(lp_http_t *h, char *type, size_t size)
{
    size_t       i, n;
    yajl_val     root, err;
    const char  *t, *c;

    type[0] = '\0';

    root = lp_json_parse(h->answer.data, h->answer.len);
    if (root == NULL) {
        return 0;
    }

    err = lp_get(root, "error", NULL, NULL);
    t = lp_get_string(err, "type", NULL);
    c = lp_get_string(err, "code", NULL);

    if (!YAJL_IS_OBJECT(err) || (t == NULL && c == NULL)) {
        yajl_tree_free(root);
        return 0;
    }

    snprintf(type, size, "%s%s%s", t ? t : "", t && c ? "/" : "",
             c ? c : "");

    /* provider text is not for the record: a short token only */

    n = strlen(type);

    for (i = 0; i < n; i++) {
        if (!((type[i] >= 'a' && type[i] <= 'z')
              || (type[i] >= 'A' && type[i] <= 'Z')
              || (type[i] >= '0' && type[i] <= '9')
              || type[i] == '_' || type[i] == '.' || type[i] == '-'
              || type[i] == '/'))
        {
            type[i] = '?';
        }
    }

    if (n > 64) {
        type[64] = '\0';
    }

    yajl_tree_free(root);

    return 1;
}


/*
 * The model ids of a /v1/models page, OpenAI's list or Anthropic's; a
 * page of Anthropic's with has_more gives the last id to go on from.
 * Returns -1 when the page is no list.
 */

int
lp_catalog_ids(lp_http_t *h, const char *model, char ***ids, size_t *nids,
    int *listed, char *last_id, size_t last_size)
{
    size_t       i;
    char       **p;
    yajl_val     root, a, more;
    const char  *id;

    last_id[0] = '\0';

    root = lp_json_parse(h->answer.data, h->answer.len);
    if (root == NULL) {
        return -1;
    }

    a = lp_get(root, "data", NULL, NULL);

    if (!YAJL_IS_ARRAY(a)) {
        yajl_tree_free(root);
        return -1;
    }

    for (i = 0; i < a->u.array.len; i++) {
        id = lp_get_string(a->u.array.values[i], "id", NULL);

        if (id == NULL || *id == '\0') {
            continue;
        }

        if (model && strcmp(id, model) == 0) {
            *listed = 1;
        }

        if (ids) {
            p = realloc(*ids, (*nids + 1) * sizeof(char *));
            if (p == NULL) {
                yajl_tree_free(root);
                return -1;
            }

            *ids = p;
            p[*nids] = strdup(id);

            if (p[*nids] == NULL) {
                yajl_tree_free(root);
                return -1;
            }

            (*nids)++;
        }
    }

    more = lp_get(root, "has_more", NULL, NULL);
    id = lp_get_string(root, "last_id", NULL);

    if (YAJL_IS_TRUE(more) && id && strlen(id) < last_size) {
        snprintf(last_id, last_size, "%s", id);
    }

    yajl_tree_free(root);

    return 0;
}


/* a JSON object, or NULL; nesting is bounded before yajl_tree sees it */

yajl_val
lp_json_parse(const char *data, size_t len)
{
    yajl_val  v;
    char      err[128];

    if (data == NULL || len == 0 || strlen(data) != len
        || !lp_json_depth_ok(data, len))
    {
        return NULL;
    }

    v = yajl_tree_parse(data, err, sizeof(err));

    if (v && !YAJL_IS_OBJECT(v)) {
        yajl_tree_free(v);
        return NULL;
    }

    return v;
}


static int
lp_json_depth_ok(const char *p, size_t len)
{
    int     depth, in_string;
    size_t  i;

    depth = 0;
    in_string = 0;

    for (i = 0; i < len; i++) {

        if (in_string) {
            if (p[i] == '\\') {
                i++;

            } else if (p[i] == '"') {
                in_string = 0;
            }

            continue;
        }

        switch (p[i]) {
        case '"':
            in_string = 1;
            break;
        case '{':
        case '[':
            if (++depth > LP_JSON_DEPTH_MAX) {
                return 0;
            }
            break;
        case '}':
        case ']':
            depth--;
            break;
        }
    }

    return 1;
}


static yajl_val
lp_get(yajl_val v, const char *k1, const char *k2, const char *k3)
{
    const char  *path[4];

    if (!YAJL_IS_OBJECT(v)) {
        return NULL;
    }

    path[0] = k1;
    path[1] = k2;
    path[2] = k2 ? k3 : NULL;
    path[3] = NULL;

    return yajl_tree_get(v, path, yajl_t_any);
}


static const char *
lp_get_string(yajl_val v, const char *k1, const char *k2)
{
    yajl_val  s;

    s = lp_get(v, k1, k2, NULL);

    return YAJL_GET_STRING(s);
}


static int
lp_is_int(yajl_val v, const char *k1, const char *k2)
{
    yajl_val  n;

    n = lp_get(v, k1, k2, NULL);

    return YAJL_IS_INTEGER(n) && YAJL_GET_INTEGER(n) >= 0;
}


static void
lp_shape_miss(lp_shape_t *s, const char *what)
{
    if (s->what[0] == '\0') {
        snprintf(s->what, sizeof(s->what), "%s", what);
    }
}
