
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


/*
 * libFuzzer target for what the module reads of an answer as it passes
 * (src/ngx_http_llm_answer.c): plain JSON bodies and SSE streams.
 * Besides memory errors (built with ASan and UBSan), it checks the one
 * promise about pieces: an answer fed in pieces of any sizes gives the
 * same results as the answer fed whole; and that the results are in
 * range (a model of strict UTF-8 within its bound, known categories).
 * A plain answer that yajl's tree parser takes whole, with no duplicate
 * top-level member, must also give what the tree says: usage, model,
 * shape, and an in-band error or not.
 *
 * The first input byte picks the family (low 3 bits) and plain or SSE
 * (bit 3); the second the size of the pieces and the seed of a run in
 * pieces of random sizes.  The rest is the answer.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_answer.h"
#include "ngx_http_llm_classify.h"
#include <yajl/yajl_tree.h>


typedef struct {
    off_t         in;
    off_t         out;
    u_char        model[NGX_HTTP_LLM_ANSWER_MODEL_MAX];
    size_t        model_len;
    ngx_uint_t    shape;
    ngx_uint_t    error;
    ngx_uint_t    events;
    ngx_uint_t    done;
} result_t;


static void check(result_t *r);
static void oracle(const uint8_t *data, size_t size, ngx_uint_t family,
    result_t *r);
static yajl_val member(yajl_val obj, const char *name);
static size_t utf8(const u_char *p, size_t len);
static ngx_uint_t surrogate_escape(const uint8_t *data, size_t size);


static void       *allocs[16];
static ngx_uint_t  nallocs;


/* the pool stand-in: the state is freed after each run */

void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    if (nallocs == sizeof(allocs) / sizeof(allocs[0])) {
        __builtin_trap();
    }

    p = malloc(size);
    allocs[nallocs++] = p;

    return p;
}


/* the answer reader's state is a large allocation: the same stand-in */

void *
ngx_pmemalign(ngx_pool_t *pool, size_t size, size_t alignment)
{
    return ngx_palloc(pool, size);
}


void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
}


static void
run(const uint8_t *data, size_t size, ngx_uint_t family, ngx_uint_t sse,
    size_t piece, unsigned long seed, result_t *r)
{
    u_char                 *buf;
    size_t                  o, n;
    ngx_log_t               log;
    ngx_pool_t              pool;
    ngx_uint_t              i;
    ngx_http_llm_answer_t   a;

    ngx_memzero(&log, sizeof(ngx_log_t));
    ngx_memzero(&pool, sizeof(ngx_pool_t));
    log.log_level = NGX_LOG_DEBUG_ALL;
    pool.log = &log;
    nallocs = 0;

    if (ngx_http_llm_answer_init(&a, &pool, family, sse) != NGX_OK) {
        __builtin_trap();
    }

    for (o = 0; o < size; o += n) {

        if (piece) {
            n = piece;

        } else {
            seed = seed * 6364136223846793005UL + 1442695040888963407UL;
            n = 1 + (seed >> 33) % 97;
        }

        n = ngx_min(n, size - o);

        /* a buffer of the piece's size: ASan sees a read past it */

        buf = malloc(n);
        ngx_memcpy(buf, data + o, n);
        ngx_http_llm_answer_feed(&a, buf, buf + n);
        free(buf);
    }

    ngx_http_llm_answer_end(&a);

    ngx_memzero(r, sizeof(result_t));
    r->in = a.input_tokens;
    r->out = a.output_tokens;
    ngx_memcpy(r->model, a.model, a.model_len);
    r->model_len = a.model_len;
    r->shape = a.shape;
    r->error = a.error;
    r->events = a.events;
    r->done = a.done;

    for (i = 0; i < nallocs; i++) {
        free(allocs[i]);
    }
}


static void
check(result_t *r)
{
    if (r->in < -1 || r->out < -1
        || r->model_len > NGX_HTTP_LLM_ANSWER_MODEL_MAX
        || r->shape > NGX_HTTP_LLM_SHAPE_MISMATCH
        || r->error >= NGX_HTTP_LLM_ERR_LAST)
    {
        __builtin_trap();
    }

    /* strict UTF-8: no overlong form, surrogate, nor above U+10FFFF */

    if (utf8(r->model, r->model_len) != r->model_len) {
        __builtin_trap();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t      piece;
    result_t    whole, pieces, random;
    ngx_uint_t  family, sse;

    if (size < 2) {
        return 0;
    }

    family = data[0] & 7;
    sse = (data[0] >> 3) & 1;
    piece = (data[1] % 64) + 1;
    data += 2;
    size -= 2;

    run(data, size, family, sse, size ? size : 1, 0, &whole);
    run(data, size, family, sse, piece, 0, &pieces);
    run(data, size, family, sse, 0, data[-1], &random);

    check(&whole);

    if (!sse) {
        oracle(data, size, family, &whole);
    }

    if (ngx_memcmp(&whole, &pieces, sizeof(result_t)) != 0
        || ngx_memcmp(&whole, &random, sizeof(result_t)) != 0)
    {
        __builtin_trap();
    }

    return 0;
}


/*
 * The results, from yajl's tree of the whole answer.  Differences kept
 * on purpose are left out: duplicate top-level members, an embedded NUL
 * in the model (the tree's strings end there), a model with a surrogate
 * escape (yajl patches unpaired ones with "?" or pairs them with any
 * escape; fuzz/string_fuzz.c has an oracle of its own for them).
 */

static void
oracle(const uint8_t *data, size_t size, ngx_uint_t family, result_t *r)
{
    char          *text, buf[128];
    size_t         i, j, n, len;
    off_t          in, out, v;
    yajl_val       root, usage, model, val, object, type, err;
    const char    *key, *digits;
    ngx_uint_t     ok, bad;

    /*
     * yajl_tree_parse() allows comments, and yajl takes \v and \f for
     * whitespace, which JSON does not (RFC 8259)
     */

    if (memchr(data, '\0', size)
        || memchr(data, '/', size)
        || memchr(data, '\v', size)
        || memchr(data, '\f', size)
        || memmem(data, size, "\\u0000", 6) != NULL)
    {
        return;
    }

    text = malloc(size + 1);
    ngx_memcpy(text, data, size);
    text[size] = '\0';

    root = yajl_tree_parse(text, buf, sizeof(buf));
    free(text);

    if (root == NULL) {
        return;
    }

    if (!YAJL_IS_OBJECT(root)) {
        goto done;
    }

    n = root->u.object.len;

    for (i = 0; i < n; i++) {
        for (j = i + 1; j < n; j++) {
            if (strcmp(root->u.object.keys[i], root->u.object.keys[j])
                == 0)
            {
                goto done;
            }
        }
    }

    /* usage: the last count of each kind, as the module's parse */

    in = -1;
    out = -1;
    usage = member(root, "usage");

    if (usage && YAJL_IS_OBJECT(usage)) {

        for (i = 0; i < usage->u.object.len; i++) {
            key = usage->u.object.keys[i];
            val = usage->u.object.values[i];

            if (!YAJL_IS_NUMBER(val)) {
                continue;
            }

            digits = val->u.number.r;
            len = strlen(digits);

            if (len == 0 || len > 18 || strspn(digits, "0123456789") != len) {
                continue;
            }

            v = (off_t) strtoll(digits, NULL, 10);

            if (strcmp(key, "prompt_tokens") == 0
                || strcmp(key, "input_tokens") == 0)
            {
                in = v;

            } else if (strcmp(key, "completion_tokens") == 0
                       || strcmp(key, "output_tokens") == 0)
            {
                out = v;
            }
        }
    }

    if (r->in != in || r->out != out) {
        __builtin_trap();
    }

    model = member(root, "model");

    if (model && YAJL_IS_STRING(model) && !surrogate_escape(data, size)) {
        n = strlen(model->u.string);
        len = utf8((u_char *) model->u.string, n);

        if (len == n) {
            /* valid: cut at a character within MODEL_MAX bytes */

            len = utf8((u_char *) model->u.string,
                       ngx_min(n, NGX_HTTP_LLM_ANSWER_MODEL_MAX));

            if (r->model_len != len
                || ngx_memcmp(r->model, model->u.string, len) != 0)
            {
                __builtin_trap();
            }

        } else if (r->model_len > len
                   || ngx_memcmp(r->model, model->u.string, r->model_len)
                      != 0)
        {
            /*
             * yajl takes raw surrogates, overlong forms and more; the
             * module finds no model, or, when the fault lies past the
             * bytes it keeps, a prefix before it
             */

            __builtin_trap();
        }

    } else if (model && YAJL_IS_STRING(model)) {
        /* yajl patches unpaired surrogates; check() saw valid UTF-8 */

    } else if (r->model_len) {
        __builtin_trap();
    }

    object = member(root, "object");
    type = member(root, "type");
    err = member(root, "error");

#define is(v, s)  ((v) && YAJL_IS_STRING(v) && strcmp((v)->u.string, s) == 0)

    bad = (err && !YAJL_IS_NULL(err)) || is(type, "error")
          || is(object, "error");

    if ((r->error != NGX_HTTP_LLM_ERR_NONE) != bad) {
        __builtin_trap();
    }

    switch (family) {

    case 1:
        ok = is(object, "chat.completion") && member(root, "choices");
        break;

    case 2:
        ok = is(object, "response") && member(root, "output");
        break;

    case 3:
        ok = is(type, "message") && member(root, "content");
        break;

    case 4:
        ok = is(object, "list") && member(root, "data");
        break;

    case 5:
        ok = is(object, "text_completion") && member(root, "choices");
        break;

    default:
        if (r->shape != NGX_HTTP_LLM_SHAPE_UNCHECKED) {
            __builtin_trap();
        }

        goto done;
    }

#undef is

    if (r->shape != ((ok && !bad) ? NGX_HTTP_LLM_SHAPE_OK
                                  : NGX_HTTP_LLM_SHAPE_MISMATCH))
    {
        __builtin_trap();
    }

done:

    yajl_tree_free(root);
}


static yajl_val
member(yajl_val obj, const char *name)
{
    size_t  i;

    for (i = 0; i < obj->u.object.len; i++) {
        if (strcmp(obj->u.object.keys[i], name) == 0) {
            return obj->u.object.values[i];
        }
    }

    return NULL;
}


/* the longest valid UTF-8 prefix, by code points */

static size_t
utf8(const u_char *p, size_t len)
{
    size_t    i, n, k;
    uint32_t  cp, min;

    for (i = 0; i < len; i += n) {

        if (p[i] < 0x80) {
            n = 1;
            continue;
        }

        if ((p[i] & 0xe0) == 0xc0) {
            n = 2;
            cp = p[i] & 0x1f;
            min = 0x80;

        } else if ((p[i] & 0xf0) == 0xe0) {
            n = 3;
            cp = p[i] & 0x0f;
            min = 0x800;

        } else if ((p[i] & 0xf8) == 0xf0) {
            n = 4;
            cp = p[i] & 0x07;
            min = 0x10000;

        } else {
            break;
        }

        if (i + n > len) {
            break;
        }

        for (k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                break;
            }

            cp = (cp << 6) | (p[i + k] & 0x3f);
        }

        if (k < n || cp < min || cp > 0x10ffff
            || (cp >= 0xd800 && cp <= 0xdfff))
        {
            break;
        }
    }

    return ngx_min(i, len);
}


/* a \u escape of a surrogate, \uD800 to \uDFFF, may be in the text */

static ngx_uint_t
surrogate_escape(const uint8_t *data, size_t size)
{
    size_t  i;

    for (i = 0; i + 3 < size; i++) {
        if (data[i] == '\\' && data[i + 1] == 'u'
            && (data[i + 2] | 0x20) == 'd'
            && ((data[i + 3] >= '8' && data[i + 3] <= '9')
                || ((data[i + 3] | 0x20) >= 'a'
                    && (data[i + 3] | 0x20) <= 'f')))
        {
            return 1;
        }
    }

    return 0;
}
