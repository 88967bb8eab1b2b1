
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_MODULE_H_INCLUDED_
#define _NGX_HTTP_LLM_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

/* named by the concern headers before they are defined below */
typedef struct ngx_http_llm_ctx_s     ngx_http_llm_ctx_t;
typedef struct ngx_http_llm_target_s  ngx_http_llm_target_t;


#include "ngx_http_llm_limits.h"
#include "ngx_http_llm_scan.h"
#include "ngx_http_llm_classify.h"
#include "ngx_http_llm_zone.h"
#include "ngx_http_llm_answer.h"
#include "ngx_http_llm_redis.h"
#include "ngx_http_llm_catalog.h"


#include "ngx_http_llm_decide.h"


/* the module's version: logged at start, on the status page, in CHANGES */
#define NGX_HTTP_LLM_VERSION             "0.2.0"


/* endpoint families, design.md 1 */
#define NGX_HTTP_LLM_FAMILY_UNSET        0
#define NGX_HTTP_LLM_FAMILY_CHAT         1
#define NGX_HTTP_LLM_FAMILY_RESPONSES    2
#define NGX_HTTP_LLM_FAMILY_MESSAGES     3
#define NGX_HTTP_LLM_FAMILY_EMBEDDINGS   4
#define NGX_HTTP_LLM_FAMILY_COMPLETIONS  5
#define NGX_HTTP_LLM_FAMILY_OTHER        6


/* what the module did after a failed attempt: $llm_retry_decision */
#define NGX_HTTP_LLM_DECISION_NONE       0
#define NGX_HTTP_LLM_DECISION_RETRY      1
#define NGX_HTTP_LLM_DECISION_FALLBACK   2
#define NGX_HTTP_LLM_DECISION_NOT_RETRYABLE  3
#define NGX_HTTP_LLM_DECISION_EXHAUSTED  4
#define NGX_HTTP_LLM_DECISION_DEADLINE   5
#define NGX_HTTP_LLM_DECISION_BUDGET     6


/* a route's outages, logged as they begin and end: ngx_http_llm_outage() */
#define NGX_HTTP_LLM_OUTAGE_COOLING      0   /* every target cooling */
#define NGX_HTTP_LLM_OUTAGE_BUDGET       1   /* retry budget spent */


/* $llm_split_bucket: a sticky key's place among this many buckets */
#define NGX_HTTP_LLM_SPLIT_BUCKETS       10000


/* provider error answers are kept up to this size to be classified */
/* the defaults of llm_retry_budget, llm_cooldown, llm_canary, set in merge */
#define NGX_HTTP_LLM_BUDGET_RATIO_DEFAULT    200     /* thousandths */
#define NGX_HTTP_LLM_BUDGET_MIN_DEFAULT      10      /* retries a second */
#define NGX_HTTP_LLM_BUDGET_WINDOW_DEFAULT   10      /* seconds */
#define NGX_HTTP_LLM_COOLDOWN_FAILS_DEFAULT  5
#define NGX_HTTP_LLM_COOLDOWN_WINDOW_DEFAULT 10      /* seconds */
#define NGX_HTTP_LLM_COOLDOWN_TIME_DEFAULT   10000   /* ms */
#define NGX_HTTP_LLM_COOLDOWN_MAX_DEFAULT    300000  /* ms */
#define NGX_HTTP_LLM_CANARY_ERRORS_DEFAULT   50      /* thousandths */
#define NGX_HTTP_LLM_CANARY_MIN_DEFAULT      20      /* attempts */
#define NGX_HTTP_LLM_CANARY_WINDOW_DEFAULT   60      /* seconds */

#define NGX_HTTP_LLM_ERROR_BODY_MAX      65536


struct ngx_http_llm_target_s {
    ngx_str_t                    uri;       /* internal target location */
    ngx_str_t                    model;     /* model=; empty: the client's */
    ngx_str_t                    model_json;    /* model, JSON-encoded */
    ngx_str_t                    key;       /* "URI model": its zone node */
    ngx_uint_t                   weight;
    ngx_uint_t                   tries;
    ngx_http_llm_node_t         *node;      /* counters and cooldown */
    ngx_http_llm_node_t         *canary;    /* of its route; NULL: none */
    ngx_http_llm_node_t         *metrics;   /* of its route and it */
    ngx_http_llm_catalog_t      *catalog;   /* catalog=; NULL: none */
    ngx_uint_t                   family;    /* family=; UNSET: the route's */
    ngx_str_t                    conf_file; /* of its directive */
    ngx_uint_t                   conf_line;
    unsigned                     fallback:1;
};


typedef struct {
    ngx_str_t                    route;     /* llm_route NAME; empty: off */
    ngx_uint_t                   family;    /* UNSET: from the URI */
    ngx_array_t                 *targets;   /* of ngx_http_llm_target_t */
    ngx_array_t                 *fallbacks; /* of ngx_http_llm_target_t */
    ngx_uint_t                   total_weight;
    ngx_http_complex_value_t    *split_key; /* llm_split_key; NULL: random */
    ngx_str_t                    split_header;  /* key "$http_NAME": NAME */
    ngx_uint_t                   split_hash;    /* ... its header hash */

    ngx_uint_t                   retry_on;  /* bit per NGX_HTTP_LLM_ERR_* */
    ngx_uint_t                   attempts;
    ngx_msec_t                   backoff_base;
    ngx_msec_t                   backoff_max;
    ngx_msec_t                   deadline;
    ngx_flag_t                   check_answer;  /* llm_check_answer */
    ngx_flag_t                   response_headers;  /* x-llm-* on answers */

    /* llm_retry_budget; ratio in thousandths, 0 .. 1000 */
    ngx_uint_t                   budget;    /* 1: on; 0: off; unset */
    ngx_uint_t                   budget_ratio;
    ngx_uint_t                   budget_min;    /* retries a second */
    ngx_uint_t                   budget_window; /* seconds */
    ngx_str_t                    budget_zone;   /* zone=; empty: first */

    /* llm_cooldown */
    ngx_uint_t                   cooldown;  /* 1: on; 0: off; unset */
    ngx_uint_t                   cooldown_fails;
    ngx_uint_t                   cooldown_window;   /* seconds */
    ngx_msec_t                   cooldown_time;
    ngx_msec_t                   cooldown_max;  /* max=: of any cooldown */

    /* llm_canary; errors in thousandths */
    ngx_uint_t                   canary;    /* 1: on */
    ngx_uint_t                   canary_errors;
    ngx_uint_t                   canary_min;
    ngx_uint_t                   canary_window; /* seconds */
    ngx_uint_t                   canary_heaviest;   /* index of targets */

    ngx_flag_t                   status;    /* llm_status here */
    ngx_http_llm_models_t       *models;    /* llm_models here */

    ngx_shm_zone_t              *zone;      /* the route's counters */
    ngx_http_llm_node_t         *node;
    ngx_http_llm_node_t         *metrics;   /* its histograms */

    /* where the location's first llm_ directive is, for merge errors */
    ngx_str_t                    conf_file;
    ngx_uint_t                   conf_line;
} ngx_http_llm_loc_conf_t;


typedef struct {
    ngx_str_t                    name;
    void                        *server;    /* its core srv conf */
    void                        *location;  /* its core loc conf */
    ngx_str_t                    file;
    ngx_uint_t                   line;
    ngx_http_llm_loc_conf_t     *conf;
} ngx_http_llm_route_name_t;


typedef struct {
    ngx_array_t                  routes;    /* of ngx_http_llm_route_name_t */
    ngx_array_t                  zones;     /* of ngx_shm_zone_t * */
    ngx_array_t                  locations; /* of ngx_http_llm_location_t */
    ngx_http_llm_redis_conf_t   *redis;     /* llm_redis; NULL: none */
    ngx_str_t                    redis_file;    /* of llm_redis */
    ngx_uint_t                   redis_line;
    ngx_flag_t                   read_answers;  /* usage variables used */
    ngx_flag_t                   count_tokens;  /* llm_count_tokens */
    ngx_http_llm_catalog_conf_t *catalog;   /* NULL: no catalog in use */
} ngx_http_llm_main_conf_t;


/* one attempt, for the $llm_attempt_* lists */

typedef struct {
    ngx_http_llm_target_t       *target;
    ngx_uint_t                   status;    /* provider's or nginx's */
    ngx_uint_t                   error;     /* NGX_HTTP_LLM_ERR_* */
    ngx_msec_t                   time;
    unsigned                     skipped:1; /* target in cooldown */
} ngx_http_llm_attempt_t;


/* what the scan found in the client body, kept once it is inspected */

typedef struct {
    off_t                        object_start;  /* the top-level "{" */
    off_t                        model_start;   /* the "model" value */
    off_t                        model_end;     /* past it; -1: none */
    ngx_uint_t                   members;   /* of the top-level object */
    ngx_uint_t                   stream;    /* NGX_HTTP_LLM_STREAM_* */
} ngx_http_llm_body_t;


/* per client request, kept on the main request */

struct ngx_http_llm_ctx_s {
    ngx_http_llm_loc_conf_t     *conf;      /* the route's location */

    ngx_http_llm_scan_t         *scan;      /* while the body is read */
    ngx_http_llm_body_t          body;      /* what the scan found */
    ngx_str_t                    model;     /* requested; empty: unknown */
    ngx_uint_t                   family;

    ngx_array_t                  tried;     /* of ngx_http_llm_attempt_t */
    ngx_uint_t                   attempts;  /* made: not the skipped */
    ngx_log_t                   *log;       /* &request_log */
    ngx_log_t                    request_log;

    /* the plan: the picked target, then the fallbacks in order */
    ngx_http_llm_target_t       *picked;
    ngx_uint_t                   step;      /* 0: picked; n: fallback n */
    ngx_int_t                    split_bucket;  /* 0 .. 9999, -1: none */
    ngx_uint_t                   step_tries;

    ngx_http_request_t          *attempt;   /* subrequest in flight */
    ngx_http_llm_target_t       *target;    /* of the latest attempt */
    ngx_msec_t                   start;     /* of the first attempt */
    ngx_msec_t                   attempt_start;

    ngx_int_t                    attempt_rc;    /* as finalized */
    ngx_uint_t                   attempt_status;
    ngx_uint_t                   error;     /* of the latest attempt */
    ngx_uint_t                   decision;

    /* the latest provider error answer, replayed if it is the last */
    ngx_http_request_t          *answer;
    ngx_buf_t                   *answer_body;
    ngx_msec_int_t               retry_after;   /* ms, -1: none */

    ngx_http_llm_answer_t       *reading;   /* the committed good answer */
    ngx_msec_t                   first_byte;    /* of the answer, or 0 */
    ngx_msec_t                   request_start; /* for $llm_ttft */

    ngx_event_t                  backoff;   /* wait before an attempt */
    ngx_msec_t                   wait;      /* of the decided retry */
    /* a stream's event not yet ended, held back: ngx_http_llm_sse.c */
    ngx_buf_t                   *sse_hold;
    ngx_chain_t                 *sse_free;
    ngx_chain_t                 *sse_busy;

    ngx_http_llm_state_e         state;     /* of the latest attempt */

    /* what the latest attempt's answer showed, whatever its state */
    unsigned                     answered:1;    /* its last byte passed */
    unsigned                     last_sent:1;   /* and ended the client's
                                                   response */
    unsigned                     attempt_done:1;    /* post_subrequest ran */
    unsigned                     answer_partial:1;  /* kept, not whole */
    unsigned                     can_retry:1;
    unsigned                     retried:1;     /* a retry was spent */
    unsigned                     sse:1;         /* text/event-stream */
    unsigned                     sse_bol:1;     /* at a line's start */
    unsigned                     sse_cr:1;      /* after a CR */
    unsigned                     sse_blank:1;   /* ... ending a blank line */
    unsigned                     sse_open:1;    /* client has half an event */
    unsigned                     budget_cluster:1;  /* judged on Redis' */
    unsigned                     canary_hold:1; /* picked a held canary */
};


extern ngx_str_t     ngx_http_llm_family_names[];
extern ngx_str_t     ngx_http_llm_decision_names[];
extern ngx_module_t  ngx_http_llm_module;


/* each concern's functions, in its own header */

#include "ngx_http_llm_route.h"
#include "ngx_http_llm_request.h"
#include "ngx_http_llm_handler.h"
#include "ngx_http_llm_plan.h"
#include "ngx_http_llm_attempt.h"
#include "ngx_http_llm_filter.h"
#include "ngx_http_llm_sse.h"
#include "ngx_http_llm_final.h"
#include "ngx_http_llm_budget.h"
#include "ngx_http_llm_cooldown.h"
#include "ngx_http_llm_canary.h"
#include "ngx_http_llm_var.h"
#include "ngx_http_llm_status.h"
#include "ngx_http_llm_conf_check.h"


#endif /* _NGX_HTTP_LLM_MODULE_H_INCLUDED_ */
