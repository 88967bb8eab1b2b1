
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_METRICS_H_INCLUDED_
#define _NGX_HTTP_LLM_METRICS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_classify.h"


/*
 * Histogram buckets, fixed: 12 upper bounds from 50 ms to 120 s (an LLM
 * call takes from a fraction of a second to minutes) and +Inf
 * (docs/status.md, "Latency and tokens")
 */
#define NGX_HTTP_LLM_BUCKETS        13


/* counts per bucket, not cumulative: one atomic add per observation */

typedef struct {
    ngx_atomic_t                 bucket[NGX_HTTP_LLM_BUCKETS];
    ngx_atomic_t                 sum;       /* ms */
} ngx_http_llm_histogram_t;


/*
 * The metrics of a route (node kind NGX_HTTP_LLM_NODE_LATENCY: the
 * histograms) or of a route and one of its targets (NODE_PAIR: tokens
 * and attempts by outcome), in the space of a node's slots, which
 * these kinds do not use: a node stays a page.
 */

typedef struct {
    ngx_http_llm_histogram_t     duration;
    ngx_http_llm_histogram_t     ttfb;
    ngx_atomic_t                 input_tokens;
    ngx_atomic_t                 output_tokens;
    ngx_atomic_t                 outcomes[NGX_HTTP_LLM_ERR_LAST]; /* 0: ok */
} ngx_http_llm_metrics_t;


ngx_int_t ngx_http_llm_metrics_init(ngx_conf_t *cf);

#endif /* _NGX_HTTP_LLM_METRICS_H_INCLUDED_ */
