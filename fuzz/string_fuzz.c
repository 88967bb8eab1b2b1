
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


/*
 * libFuzzer target for the JSON string decoder (ngx_http_llm_json_string
 * in src/ngx_http_llm_scan.c), whose output may reach a log: whatever
 * escapes and bytes it is given, what it returns must be strict UTF-8
 * (no surrogate, no overlong form, nothing above U+10FFFF), checked by a
 * validator of its own here.  A reference decoder written apart, code
 * point by code point, says what the result must be: the same bytes, or
 * a refusal (invalid JSON, invalid UTF-8, a surrogate escape that is not
 * half of a high-low pair, longer than the output room).  The same string
 * as an answer's "model" goes through the answer reader too: its model is
 * strict UTF-8, the reference cut at a character, or not found.
 *
 * The first input byte picks the mode (bit 0: tokens or raw bytes), the
 * second the output room.  In token mode the rest is a program of
 * tokens: \u escapes of high and low surrogates, alone, paired, reversed,
 * any \uXXXX in either case of hex, \u0000, short escapes valid or not,
 * escapes cut short, raw valid UTF-8, raw surrogates and overlong forms,
 * raw bytes; in raw mode the rest is the string's body as it is.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"
#include "ngx_http_llm_answer.h"


#define STRING_MAX  16384


static size_t build(const uint8_t *data, size_t size, u_char *out);
static size_t put_u(u_char *p, uint32_t u, ngx_uint_t upper);
static ngx_int_t ref_decode(const u_char *s, size_t len, u_char *out,
    size_t *n);
static size_t put_utf8(u_char *p, uint32_t cp);
static ngx_int_t hex4(const u_char *p, size_t left, uint32_t *u);
static ngx_uint_t utf8_valid(const u_char *p, size_t len);
static void answer(u_char *raw, size_t len, u_char *ref, size_t ref_len,
    ngx_uint_t ref_ok);


static void       *allocs[4];
static ngx_uint_t  nallocs;

static u_char      body[STRING_MAX];
static u_char      raw[STRING_MAX + 2];
static u_char      ref[STRING_MAX * 2];
static u_char      doc[STRING_MAX + 16];


/* the pool stand-in of the answer reader: freed after each run */

void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    if (nallocs == 4) {
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


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char    *o;
    size_t     len, room, n, ref_len;
    ngx_int_t  rc, ref_rc;

    if (size < 2) {
        return 0;
    }

    room = (data[1] == 255) ? 2 * STRING_MAX : data[1];

    if (data[0] & 1) {
        len = build(data + 2, size - 2, body);

    } else {
        len = ngx_min(size - 2, (size_t) STRING_MAX);
        ngx_memcpy(body, data + 2, len);
    }

    raw[0] = '"';
    ngx_memcpy(raw + 1, body, len);
    raw[len + 1] = '"';

    ref_rc = ref_decode(body, len, ref, &ref_len);

    /* the output room exactly: ASan sees a write past it */

    o = malloc(room ? room : 1);

    rc = ngx_http_llm_json_string(raw, len + 2, o, room, &n);

    if (rc == NGX_OK) {
        if (n > room || !utf8_valid(o, n)) {
            __builtin_trap();
        }
    }

    if (ref_rc == NGX_OK && ref_len <= room) {
        if (rc != NGX_OK || n != ref_len || ngx_memcmp(o, ref, n) != 0) {
            __builtin_trap();
        }

    } else if (rc != NGX_DECLINED) {
        __builtin_trap();
    }

    free(o);

    answer(raw, len + 2, ref, ref_len, ref_rc == NGX_OK);

    return 0;
}


/* the token program: each token an op byte and its parameter bytes */

static size_t
build(const uint8_t *data, size_t size, u_char *p)
{
    u_char        *start, *end;
    uint32_t       u, v;
    ngx_uint_t     op, upper;
    const uint8_t *last;

    static const char  short_esc[] = "\"\\/bfnrtuxU0 '";

    start = p;
    end = p + STRING_MAX - 32;
    last = data + size;

#define param(i)  ((data + (i) < last) ? data[i] : 0)

    while (data < last && p < end) {
        op = data[0] & 0x0f;
        upper = data[0] & 0x10;
        u = (param(1) << 8) | param(2);
        v = (param(3) << 8) | param(4);

        switch (op) {

        case 0:     /* a high surrogate escape */
            p += put_u(p, 0xd800 | (u & 0x3ff), upper);
            data += 3;
            break;

        case 1:     /* a low surrogate escape */
            p += put_u(p, 0xdc00 | (u & 0x3ff), upper);
            data += 3;
            break;

        case 2:     /* a pair */
            p += put_u(p, 0xd800 | (u & 0x3ff), upper);
            p += put_u(p, 0xdc00 | (v & 0x3ff), !upper);
            data += 5;
            break;

        case 3:     /* a reversed pair */
            p += put_u(p, 0xdc00 | (u & 0x3ff), upper);
            p += put_u(p, 0xd800 | (v & 0x3ff), upper);
            data += 5;
            break;

        case 4:     /* any \uXXXX */
            p += put_u(p, u, upper);
            data += 3;
            break;

        case 5:     /* \u0000, or a small one */
            p += put_u(p, param(1) & 0x01, upper);
            data += 2;
            break;

        case 6:     /* a short escape, valid or not */
            *p++ = '\\';
            *p++ = short_esc[param(1) % (sizeof(short_esc) - 1)];
            data += 2;
            break;

        case 7:     /* an escape cut short */
            p += put_u(p, u, upper) - (1 + param(3) % 4);
            data += 4;
            break;

        case 8:     /* raw printable ASCII */
            *p++ = 0x20 + param(1) % 0x5f;
            data += 2;
            break;

        case 9:     /* a raw byte, any */
            *p++ = param(1);
            data += 2;
            break;

        case 10:    /* raw valid UTF-8 of a code point */
            u = ((param(1) << 16) | u) % 0x110000;
            if (u >= 0xd800 && u <= 0xdfff) {
                u -= 0x800;
            }
            p += put_utf8(p, u);
            data += 4;
            break;

        case 11:    /* a raw surrogate */
            u = 0xd800 | (u & 0x7ff);
            *p++ = 0xe0 | (u >> 12);
            *p++ = 0x80 | ((u >> 6) & 0x3f);
            *p++ = 0x80 | (u & 0x3f);
            data += 3;
            break;

        case 12:    /* a raw overlong form of an ASCII byte */
            u = param(1) & 0x7f;
            if (param(2) & 1) {
                *p++ = 0xc0 | (u >> 6);
                *p++ = 0x80 | (u & 0x3f);
            } else {
                *p++ = 0xe0;
                *p++ = 0x80 | (u >> 6);
                *p++ = 0x80 | (u & 0x3f);
            }
            data += 3;
            break;

        case 13:    /* raw UTF-8 above U+10FFFF or cut short */
            *p++ = 0xf4 + (param(1) & 0x0b);
            *p++ = 0x80 | (param(2) & 0x3f);
            if (param(1) & 0x80) {
                *p++ = 0x80 | (param(3) & 0x3f);
            }
            data += 4;
            break;

        case 14:    /* a lone backslash */
            *p++ = '\\';
            data += 1;
            break;

        default:    /* a high surrogate, then a token that is not low */
            p += put_u(p, 0xd800 | (u & 0x3ff), upper);
            data += 3;

            if (param(0) & 1) {
                p += put_u(p, (param(0) << 8) | param(1), upper);
                data += 2;
            }

            break;
        }
    }

#undef param

    return p - start;
}


static size_t
put_u(u_char *p, uint32_t u, ngx_uint_t upper)
{
    static const char  lower_hex[] = "0123456789abcdef";
    static const char  upper_hex[] = "0123456789ABCDEF";
    const char        *hex;

    hex = upper ? upper_hex : lower_hex;

    p[0] = '\\';
    p[1] = 'u';
    p[2] = hex[(u >> 12) & 0xf];
    p[3] = hex[(u >> 8) & 0xf];
    p[4] = hex[(u >> 4) & 0xf];
    p[5] = hex[u & 0xf];

    return 6;
}


/*
 * The reference: JSON (RFC 8259) string body to code points, each
 * checked, then to UTF-8.  Written for clarity, not speed.
 */

static ngx_int_t
ref_decode(const u_char *s, size_t len, u_char *o, size_t *n)
{
    size_t    i, k, need;
    uint32_t  cp, lo, min;
    u_char   *start;

    start = o;
    i = 0;

    while (i < len) {

        if (s[i] == '"' || s[i] < 0x20) {
            return NGX_DECLINED;
        }

        if (s[i] == '\\') {
            if (i + 1 >= len) {
                return NGX_DECLINED;
            }

            switch (s[i + 1]) {
            case '"':  cp = 0x22; break;
            case '\\': cp = 0x5c; break;
            case '/':  cp = 0x2f; break;
            case 'b':  cp = 0x08; break;
            case 'f':  cp = 0x0c; break;
            case 'n':  cp = 0x0a; break;
            case 'r':  cp = 0x0d; break;
            case 't':  cp = 0x09; break;

            case 'u':
                if (hex4(s + i + 2, len - i - 2, &cp) != NGX_OK) {
                    return NGX_DECLINED;
                }

                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    return NGX_DECLINED;
                }

                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (i + 12 > len || s[i + 6] != '\\' || s[i + 7] != 'u'
                        || hex4(s + i + 8, len - i - 8, &lo) != NGX_OK
                        || lo < 0xdc00 || lo > 0xdfff)
                    {
                        return NGX_DECLINED;
                    }

                    cp = 0x10000 + (((cp & 0x3ff) << 10) | (lo & 0x3ff));
                    i += 6;
                }

                i += 4;
                break;

            default:
                return NGX_DECLINED;
            }

            i += 2;
            o += put_utf8(o, cp);
            continue;
        }

        if (s[i] < 0x80) {
            *o++ = s[i++];
            continue;
        }

        /* raw UTF-8, by the bits of the first byte */

        if ((s[i] & 0xe0) == 0xc0) {
            need = 1; cp = s[i] & 0x1f; min = 0x80;

        } else if ((s[i] & 0xf0) == 0xe0) {
            need = 2; cp = s[i] & 0x0f; min = 0x800;

        } else if ((s[i] & 0xf8) == 0xf0) {
            need = 3; cp = s[i] & 0x07; min = 0x10000;

        } else {
            return NGX_DECLINED;
        }

        if (i + need >= len) {
            return NGX_DECLINED;
        }

        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return NGX_DECLINED;
            }

            cp = (cp << 6) | (s[i + k] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return NGX_DECLINED;
        }

        ngx_memcpy(o, s + i, need + 1);
        o += need + 1;
        i += need + 1;
    }

    *n = o - start;

    return NGX_OK;
}


static size_t
put_utf8(u_char *p, uint32_t cp)
{
    if (cp < 0x80) {
        p[0] = (u_char) cp;
        return 1;
    }

    if (cp < 0x800) {
        p[0] = 0xc0 | (cp >> 6);
        p[1] = 0x80 | (cp & 0x3f);
        return 2;
    }

    if (cp < 0x10000) {
        p[0] = 0xe0 | (cp >> 12);
        p[1] = 0x80 | ((cp >> 6) & 0x3f);
        p[2] = 0x80 | (cp & 0x3f);
        return 3;
    }

    p[0] = 0xf0 | (cp >> 18);
    p[1] = 0x80 | ((cp >> 12) & 0x3f);
    p[2] = 0x80 | ((cp >> 6) & 0x3f);
    p[3] = 0x80 | (cp & 0x3f);
    return 4;
}


static ngx_int_t
hex4(const u_char *p, size_t left, uint32_t *u)
{
    size_t  i;
    int     d;

    if (left < 4) {
        return NGX_DECLINED;
    }

    *u = 0;

    for (i = 0; i < 4; i++) {
        if (p[i] >= '0' && p[i] <= '9') {
            d = p[i] - '0';

        } else if (p[i] >= 'a' && p[i] <= 'f') {
            d = p[i] - 'a' + 10;

        } else if (p[i] >= 'A' && p[i] <= 'F') {
            d = p[i] - 'A' + 10;

        } else {
            return NGX_DECLINED;
        }

        *u = *u * 16 + d;
    }

    return NGX_OK;
}


/*
 * Strict UTF-8 (RFC 3629), by decoding: every sequence complete, its
 * continuation bytes 10xxxxxx, its code point in the range its length
 * encodes (no overlong form), not a surrogate, at most U+10FFFF.
 */

static ngx_uint_t
utf8_valid(const u_char *p, size_t len)
{
    size_t    i, k, n;
    uint32_t  cp;

    static const uint32_t  min[] = { 0, 0x80, 0x800, 0x10000 };

    for (i = 0; i < len; i += n + 1) {

        if (p[i] < 0x80) {
            n = 0;
            continue;
        }

        if ((p[i] & 0xe0) == 0xc0) {
            n = 1;
            cp = p[i] & 0x1f;

        } else if ((p[i] & 0xf0) == 0xe0) {
            n = 2;
            cp = p[i] & 0x0f;

        } else if ((p[i] & 0xf8) == 0xf0) {
            n = 3;
            cp = p[i] & 0x07;

        } else {
            return 0;
        }

        if (len - i <= n) {
            return 0;
        }

        for (k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            cp = (cp << 6) | (p[i + k] & 0x3f);
        }

        if (cp < min[n] || cp > 0x10ffff
            || (cp >= 0xd800 && cp <= 0xdfff))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * {"model":<raw>} as a plain answer: the model read is strict UTF-8;
 * when the reference took the string, it is the reference cut at a
 * character within NGX_HTTP_LLM_ANSWER_MODEL_MAX bytes (a prefix of it
 * when the string was too long to keep whole); else nothing.
 */

static void
answer(u_char *s, size_t len, u_char *r, size_t r_len, ngx_uint_t ok)
{
    size_t                  n, want;
    ngx_log_t               log;
    ngx_pool_t              pool;
    ngx_uint_t              i;
    ngx_http_llm_answer_t   a;

    n = sizeof("{\"model\":") - 1;
    ngx_memcpy(doc, "{\"model\":", n);
    ngx_memcpy(doc + n, s, len);
    doc[n + len] = '}';
    n += len + 1;

    ngx_memzero(&log, sizeof(ngx_log_t));
    ngx_memzero(&pool, sizeof(ngx_pool_t));
    pool.log = &log;
    nallocs = 0;

    if (ngx_http_llm_answer_init(&a, &pool, 6, 0) != NGX_OK) {
        __builtin_trap();
    }

    ngx_http_llm_answer_feed(&a, doc, doc + n);
    ngx_http_llm_answer_end(&a);

    if (a.model_len > NGX_HTTP_LLM_ANSWER_MODEL_MAX
        || !utf8_valid(a.model, a.model_len))
    {
        __builtin_trap();
    }

    if (ok) {
        want = ngx_min(r_len, (size_t) NGX_HTTP_LLM_ANSWER_MODEL_MAX);

        while (want < r_len && want && (r[want] & 0xc0) == 0x80) {
            want--;
        }

        /* kept whole (6 raw bytes per decoded one at most), or a prefix */

        if (len <= 6 * NGX_HTTP_LLM_ANSWER_MODEL_MAX + 2) {
            if (a.model_len != want) {
                __builtin_trap();
            }

        } else if (a.model_len > want) {
            __builtin_trap();
        }

        /* a prefix of a valid string kept is valid: found */

        if ((r_len && a.model_len == 0)
            || ngx_memcmp(a.model, r, a.model_len) != 0)
        {
            __builtin_trap();
        }
    }

    for (i = 0; i < nallocs; i++) {
        free(allocs[i]);
    }
}
