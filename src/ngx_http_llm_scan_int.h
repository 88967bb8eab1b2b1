
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_SCAN_INT_H_INCLUDED_
#define _NGX_HTTP_LLM_SCAN_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_scan.h"


/*
 * What the scalar scan (ngx_http_llm_scan.c) and its AVX2 blocks
 * (ngx_http_llm_scan_simd.c) share, and no one else
 */


/* -DNGX_HTTP_LLM_NO_SIMD builds the scalar scan only */

#if (defined __x86_64__ && defined __GNUC__ && !defined NGX_HTTP_LLM_NO_SIMD)
#define NGX_HTTP_LLM_HAVE_SIMD  1
#endif


/* the scan's states */

enum {
    sw_start = 0,
    sw_first_key,
    sw_key,
    sw_key_string,
    sw_colon,
    sw_value,
    sw_value_string,
    sw_literal,
    sw_nested,
    sw_nested_string,
    sw_after_value,
    sw_done,
    sw_error
};


/* the bracket stack of the nested values, a bit a level: 1 for "[" */

static ngx_inline ngx_int_t
ngx_http_llm_scan_push(ngx_http_llm_scan_t *s, u_char c)
{
    ngx_uint_t  i;

    i = s->depth;

    if (i >= NGX_HTTP_LLM_SCAN_MAX_DEPTH) {
        return NGX_ERROR;
    }

    if (c == '[') {
        s->brackets[i / 8] |= (u_char) (1 << (i % 8));

    } else {
        s->brackets[i / 8] &= (u_char) ~(1 << (i % 8));
    }

    s->depth++;

    return NGX_OK;
}


static ngx_inline ngx_int_t
ngx_http_llm_scan_pop(ngx_http_llm_scan_t *s, u_char c)
{
    ngx_uint_t  i, square;

    i = s->depth - 1;
    square = (s->brackets[i / 8] >> (i % 8)) & 1;

    if (square != (c == ']')) {
        return NGX_ERROR;
    }

    s->depth--;

    return NGX_OK;
}


#if (NGX_HTTP_LLM_HAVE_SIMD)
u_char *ngx_http_llm_scan_blocks(ngx_http_llm_scan_t *s, u_char *p,
    u_char *last, ngx_uint_t *fallback);
#endif

extern const char  ngx_http_llm_scan_too_deep[];
extern const char  ngx_http_llm_scan_unbalanced[];


#endif /* _NGX_HTTP_LLM_SCAN_INT_H_INCLUDED_ */
