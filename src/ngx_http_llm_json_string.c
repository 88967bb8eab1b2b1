
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"


/*
 * JSON strings decoded to strict UTF-8 (design.md 5): the request's model
 * and the answer's values that may be logged.  Fuzzed on its own
 * (fuzz/string_fuzz.c).
 */


static uint32_t ngx_http_llm_json_hex4(u_char *p, u_char *last);


/*
 * Decodes one JSON string (raw bytes with the quotes).  What it gives
 * may reach a log (docs/logging.md), so it is valid UTF-8 or nothing:
 * NGX_DECLINED for a string that is not valid JSON (a control byte, a bad
 * escape, a quote inside), that holds raw bytes that are not UTF-8
 * (RFC 3629: no overlong form, no surrogate, nothing above U+10FFFF, no
 * cut sequence), or a \u escape of a surrogate that is not half of a
 * high-low pair (alone, reversed, a high one before any other escape or
 * character); and for one longer than size once decoded.  Nothing is
 * replaced: a name patched with U+FFFD or "?" is a name nobody sent, and
 * invalid bytes already made the string "not found".  \u0000 is U+0000,
 * valid UTF-8: it decodes, and nginx's log escaping writes it escaped.
 */

ngx_int_t
ngx_http_llm_json_string(u_char *raw, size_t len, u_char *buf, size_t size,
    size_t *decoded)
{
    u_char    c, *p, *last, *b, *end;
    size_t    n;
    uint32_t  cp, lo;

    if (len < 2 || raw[0] != '"' || raw[len - 1] != '"') {
        return NGX_DECLINED;
    }

    p = raw + 1;
    last = raw + len - 1;
    b = buf;
    end = buf + size;

    while (p < last) {
        c = *p;

        /* printable ASCII, nearly all of a model name, is itself */

        if (c >= 0x20 && c < 0x80 && c != '\\' && c != '"') {
            if (b == end) {
                return NGX_DECLINED;
            }

            *b++ = c;
            p++;
            continue;
        }

        if (c >= 0x80) {
            n = ngx_http_llm_utf8_char(p, last);

            if (n == 0 || (size_t) (end - b) < n) {
                return NGX_DECLINED;
            }

            b = ngx_cpymem(b, p, n);
            p += n;
            continue;
        }

        if (c != '\\' || last - p < 2) {
            /* a control byte, a quote, a backslash at the end */
            return NGX_DECLINED;
        }

        c = p[1];
        p += 2;

        switch (c) {

        case '"':
        case '\\':
        case '/':
            break;

        case 'b':
            c = '\b';
            break;

        case 'f':
            c = '\f';
            break;

        case 'n':
            c = '\n';
            break;

        case 'r':
            c = '\r';
            break;

        case 't':
            c = '\t';
            break;

        case 'u':
            cp = ngx_http_llm_json_hex4(p, last);

            if (cp > 0xffff || (cp >= 0xdc00 && cp <= 0xdfff)) {
                return NGX_DECLINED;
            }

            p += 4;

            if (cp >= 0xd800 && cp <= 0xdbff) {

                if (last - p < 6 || p[0] != '\\' || p[1] != 'u') {
                    return NGX_DECLINED;
                }

                lo = ngx_http_llm_json_hex4(p + 2, last);

                if (lo < 0xdc00 || lo > 0xdfff) {
                    return NGX_DECLINED;
                }

                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                p += 6;
            }

            n = (cp < 0x80) ? 1 : (cp < 0x800) ? 2 : (cp < 0x10000) ? 3 : 4;

            if ((size_t) (end - b) < n) {
                return NGX_DECLINED;
            }

            switch (n) {

            case 1:
                *b++ = (u_char) cp;
                break;

            case 2:
                *b++ = (u_char) (0xc0 | (cp >> 6));
                *b++ = (u_char) (0x80 | (cp & 0x3f));
                break;

            case 3:
                *b++ = (u_char) (0xe0 | (cp >> 12));
                *b++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
                *b++ = (u_char) (0x80 | (cp & 0x3f));
                break;

            default:
                *b++ = (u_char) (0xf0 | (cp >> 18));
                *b++ = (u_char) (0x80 | ((cp >> 12) & 0x3f));
                *b++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
                *b++ = (u_char) (0x80 | (cp & 0x3f));
            }

            continue;

        default:
            return NGX_DECLINED;
        }

        if (b == end) {
            return NGX_DECLINED;
        }

        *b++ = c;
    }

    *decoded = b - buf;

    return NGX_OK;
}


/* the value of 4 hex digits at p, or 0x10000 when they are not */

static uint32_t
ngx_http_llm_json_hex4(u_char *p, u_char *last)
{
    u_char      c;
    uint32_t    cp;
    ngx_uint_t  i;

    if (last - p < 4) {
        return 0x10000;
    }

    cp = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            cp = cp * 16 + (c - '0');

        } else {
            c |= 0x20;

            if (c < 'a' || c > 'f') {
                return 0x10000;
            }

            cp = cp * 16 + (c - 'a' + 10);
        }
    }

    return cp;
}


/*
 * The length of the UTF-8 character at p (RFC 3629, table 3-7 of The
 * Unicode Standard), or 0 when the bytes there are not one: a stray
 * continuation byte, an overlong form, a surrogate, above U+10FFFF, or a
 * sequence cut by last.
 */

size_t
ngx_http_llm_utf8_char(u_char *p, u_char *last)
{
    u_char  c, lo, hi;
    size_t  n, i;

    c = *p;

    if (c < 0x80) {
        return 1;
    }

    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;

        if (c == 0xe0) {
            lo = 0xa0;          /* not overlong */

        } else if (c == 0xed) {
            hi = 0x9f;          /* not a surrogate */
        }

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;

        if (c == 0xf0) {
            lo = 0x90;          /* not overlong */

        } else if (c == 0xf4) {
            hi = 0x8f;          /* not above U+10FFFF */
        }

    } else {
        return 0;
    }

    if ((size_t) (last - p) < n || p[1] < lo || p[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}
