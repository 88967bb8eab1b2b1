
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

#include <curl/curl.h>

#include "llm_preflight.h"


/*
 * One request to the gateway with libcurl: bounded by the run's time
 * left (connect and total), the answer cut off at LP_BODY_MAX, no
 * redirect followed (a redirect could carry the key elsewhere), no retry.
 * The key goes in a header of the request only.
 */


static size_t lp_http_write(char *data, size_t size, size_t n, void *ctx);
static size_t lp_http_header(char *data, size_t size, size_t n, void *ctx);
static long lp_http_number(const char *v, size_t len);


int
lp_http_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}


void
lp_http_cleanup(void)
{
    curl_global_cleanup();
}


const char *
lp_http_libcurl_version(void)
{
    return curl_version_info(CURLVERSION_NOW)->version;
}


void
lp_http_request(lp_conf_t *cf, lp_http_t *h)
{
    int                 i, anthropic;
    long                left, t0;
    char                line[512];
    CURL               *curl;
    CURLcode            rc;
    struct curl_slist  *hl, *tmp;

    h->status = 0;
    h->error[0] = '\0';
    h->attempts = -1;
    h->fallback = -1;
    h->content_type[0] = '\0';

    left = lp_left_ms(cf);

    if (left <= 0) {
        h->not_run = 1;
        snprintf(h->error, sizeof(h->error), "not made: --timeout spent");
        return;
    }

    curl = curl_easy_init();
    if (curl == NULL) {
        snprintf(h->error, sizeof(h->error), "curl_easy_init() failed");
        return;
    }

    hl = NULL;
    anthropic = (cf->family == LP_FAMILY_MESSAGES);

#define lp_header_add(s)                                                     \
    if ((tmp = curl_slist_append(hl, (s))) == NULL) { goto failed; }        \
    hl = tmp

    if (h->body) {
        lp_header_add("Content-Type: application/json");
    }

    lp_header_add(h->stream ? "Accept: text/event-stream"
                            : "Accept: application/json");
    /* no 100-continue round trip */
    lp_header_add("Expect:");

    if (h->request_id) {
        snprintf(line, sizeof(line), "X-Request-Id: %s", h->request_id);
        lp_header_add(line);
    }

    if (anthropic) {
        lp_header_add("anthropic-version: 2023-06-01");
    }

    if (cf->key) {
        /* the key: in this buffer and curl's list only, wiped below */
        tmp = NULL;

        if (strlen(cf->key) < sizeof(line) - 32) {
            snprintf(line, sizeof(line), anthropic ? "x-api-key: %s"
                                                   : "Authorization: Bearer %s",
                     cf->key);
            tmp = curl_slist_append(hl, line);
        }

        memset(line, 0, sizeof(line));

        if (tmp == NULL) {
            goto failed;
        }

        hl = tmp;
    }

    for (i = 0; i < cf->nheaders; i++) {
        lp_header_add(cf->headers[i]);
    }

#undef lp_header_add

    curl_easy_setopt(curl, CURLOPT_URL, h->url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, LP_NAME "/" LP_VERSION);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                     left < LP_CONNECT_TIMEOUT_MS ? left
                                                  : LP_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, left);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, h->error);
#if (LIBCURL_VERSION_NUM >= 0x075500)
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS,
                     (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, lp_http_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, lp_http_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, h);

    if (h->body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, h->body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(h->body));
    }

    t0 = lp_now_ms();

    rc = curl_easy_perform(curl);

    h->ms = lp_now_ms() - t0;

    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &h->status);
        h->error[0] = '\0';

    } else {
        if (rc == CURLE_OPERATION_TIMEDOUT) {
            h->timed_out = 1;
        }

        if (rc == CURLE_WRITE_ERROR && h->too_large) {
            snprintf(h->error, sizeof(h->error),
                     "answer larger than %d bytes", LP_BODY_MAX);

        } else if (h->error[0] == '\0') {
            snprintf(h->error, sizeof(h->error), "%s",
                     curl_easy_strerror(rc));
        }

        /* a status seen before the failure stays known */
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &h->status);
    }

    /* the buffer stays NUL-terminated for the JSON parser */
    if (lp_buf_add(&h->answer, "", 0) != 0) {
        snprintf(h->error, sizeof(h->error), "out of memory");
    }

    curl_slist_free_all(hl);
    curl_easy_cleanup(curl);
    return;

failed:

    snprintf(h->error, sizeof(h->error), "out of memory");
    curl_slist_free_all(hl);
    curl_easy_cleanup(curl);
}


void
lp_http_free(lp_http_t *h)
{
    lp_buf_free(&h->answer);
}


static size_t
lp_http_write(char *data, size_t size, size_t n, void *ctx)
{
    lp_http_t  *h = ctx;

    n *= size;

    if (h->answer.len + n > LP_BODY_MAX) {
        h->too_large = 1;
        return 0;
    }

    return lp_buf_add(&h->answer, data, n) == 0 ? n : 0;
}


/* the headers the checks need; a new status line starts afresh */

static size_t
lp_http_header(char *data, size_t size, size_t n, void *ctx)
{
    lp_http_t  *h = ctx;
    size_t      len, klen, vlen;
    char       *colon, *v;

    len = size * n;

    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        h->attempts = -1;
        h->fallback = -1;
        h->should_retry_false = 0;
        h->content_type[0] = '\0';
        return len;
    }

    colon = memchr(data, ':', len);
    if (colon == NULL) {
        return len;
    }

    klen = colon - data;
    v = colon + 1;
    vlen = len - klen - 1;

    while (vlen && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }

    while (vlen && isspace((unsigned char) v[vlen - 1])) {
        vlen--;
    }

    if (klen == 14 && strncasecmp(data, "x-llm-attempts", 14) == 0) {
        h->attempts = lp_http_number(v, vlen);

    } else if (klen == 14 && strncasecmp(data, "x-llm-fallback", 14) == 0) {
        h->fallback = lp_http_number(v, vlen);

    } else if (klen == 14 && strncasecmp(data, "x-should-retry", 14) == 0) {
        h->should_retry_false = (vlen == 5 && strncmp(v, "false", 5) == 0);

    } else if (klen == 12 && strncasecmp(data, "content-type", 12) == 0) {
        if (vlen >= sizeof(h->content_type)) {
            vlen = sizeof(h->content_type) - 1;
        }

        memcpy(h->content_type, v, vlen);
        h->content_type[vlen] = '\0';
    }

    return len;
}


/* a small decimal header value; -1 when it is not one */

static long
lp_http_number(const char *v, size_t len)
{
    long    n;
    size_t  i;

    if (len == 0 || len > 6) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') {
            return -1;
        }

        n = n * 10 + (v[i] - '0');
    }

    return n;
}
