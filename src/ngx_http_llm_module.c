
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"
#include "ngx_http_llm_conf_check.h"


static ngx_int_t ngx_http_llm_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_llm_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_llm_init_process(ngx_cycle_t *cycle);
static void ngx_http_llm_exit_process(ngx_cycle_t *cycle);
static void *ngx_http_llm_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_llm_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static void ngx_http_llm_merge_budget(ngx_http_llm_loc_conf_t *conf,
    ngx_http_llm_loc_conf_t *prev);
static void ngx_http_llm_merge_cooldown(ngx_http_llm_loc_conf_t *conf,
    ngx_http_llm_loc_conf_t *prev);
static char *ngx_http_llm_retry_on(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_backoff(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_split_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_llm_attempts_check(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_llm_redis_where(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


/* llm_retry_on: a bit per error category; bit 0 is "set" for merging */

#define NGX_HTTP_LLM_RETRY_OFF  (1 << NGX_HTTP_LLM_ERR_LAST)

#define ngx_http_llm_retry_bit(err)  (1 << (err))


static ngx_conf_bitmask_t  ngx_http_llm_retry_on_masks[] = {
    { ngx_string("connect_error"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_CONNECT) },
    { ngx_string("timeout"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_TIMEOUT) },
    { ngx_string("rate_limited"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_RATE_LIMITED) },
    { ngx_string("quota_exhausted"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_QUOTA) },
    { ngx_string("overloaded"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_OVERLOADED) },
    { ngx_string("server_error"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_SERVER) },
    { ngx_string("auth_error"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_AUTH) },
    { ngx_string("invalid_request"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_INVALID_REQUEST) },
    { ngx_string("context_length"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_CONTEXT_LENGTH) },
    { ngx_string("content_filter"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_CONTENT_FILTER) },
    { ngx_string("invalid_response"),
      ngx_http_llm_retry_bit(NGX_HTTP_LLM_ERR_INVALID_RESPONSE) },
    { ngx_string("off"), NGX_HTTP_LLM_RETRY_OFF },
    { ngx_null_string, 0 }
};


static ngx_conf_post_t  ngx_http_llm_attempts_post = {
    ngx_http_llm_attempts_check
};


static ngx_command_t  ngx_http_llm_commands[] = {

    { ngx_string("llm_route"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_llm_route,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_target"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1234|NGX_CONF_TAKE5|NGX_CONF_TAKE6,
      ngx_http_llm_target,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_fallback"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1234|NGX_CONF_TAKE5,
      ngx_http_llm_target,
      NGX_HTTP_LOC_CONF_OFFSET,
      1,
      NULL },

    { ngx_string("llm_canary"),
      NGX_HTTP_LOC_CONF|NGX_CONF_ANY,
      ngx_http_llm_canary,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_split_key"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_split_key,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, split_key),
      NULL },

    { ngx_string("llm_retry_on"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_llm_retry_on,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, retry_on),
      &ngx_http_llm_retry_on_masks },

    { ngx_string("llm_attempts"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, attempts),
      &ngx_http_llm_attempts_post },

    { ngx_string("llm_backoff"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_llm_backoff,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_deadline"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, deadline),
      NULL },

    { ngx_string("llm_check_answer"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, check_answer),
      NULL },

    { ngx_string("llm_response_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_llm_loc_conf_t, response_headers),
      NULL },

    { ngx_string("llm_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_llm_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_count_tokens"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_llm_main_conf_t, count_tokens),
      NULL },

    { ngx_string("llm_retry_budget"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_ANY,
      ngx_http_llm_retry_budget,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_llm_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_llm_redis_where,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_cooldown"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_ANY,
      ngx_http_llm_cooldown,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_catalog"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_llm_catalog,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("llm_models"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_llm_models,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },


      ngx_null_command
};


static ngx_http_module_t  ngx_http_llm_module_ctx = {
    ngx_http_llm_preconfiguration,         /* preconfiguration */
    ngx_http_llm_postconfiguration,        /* postconfiguration */

    ngx_http_llm_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_llm_create_loc_conf,          /* create location configuration */
    ngx_http_llm_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_llm_module = {
    NGX_MODULE_V1,
    &ngx_http_llm_module_ctx,              /* module context */
    ngx_http_llm_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_llm_init_module,              /* init module */
    ngx_http_llm_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_llm_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


ngx_str_t  ngx_http_llm_family_names[] = {
    ngx_null_string,
    ngx_string("chat"),
    ngx_string("responses"),
    ngx_string("messages"),
    ngx_string("embeddings"),
    ngx_string("completions"),
    ngx_string("other"),
    ngx_null_string
};


static ngx_int_t
ngx_http_llm_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_llm_add_variables(cf);
}


static ngx_int_t
ngx_http_llm_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_llm_module);
    lmcf->read_answers = ngx_http_llm_answer_variables_used(cf);

    if (ngx_http_llm_request_init(cf) != NGX_OK
        || ngx_http_llm_conf_check(cf) != NGX_OK
        || ngx_http_llm_metrics_init(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_llm_filter_init(cf);
}


/*
 * The version of the code that is loaded, once per start and reload: a
 * reload keeps the module's code loaded at start, so this line tells an
 * operator which code runs after an upgrade of the file.
 */

static ngx_int_t
ngx_http_llm_init_module(ngx_cycle_t *cycle)
{
    if (!ngx_test_config) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "llm module " NGX_HTTP_LLM_VERSION " (nginx "
                      NGINX_VERSION ")");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_llm_init_process(ngx_cycle_t *cycle)
{
    return ngx_http_llm_redis_init_process(cycle);
}


static void
ngx_http_llm_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_redis_exit_process(cycle);
}


static void *
ngx_http_llm_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_llm_main_conf_t  *lmcf;

    lmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_main_conf_t));
    if (lmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&lmcf->routes, cf->pool, 4,
                       sizeof(ngx_http_llm_route_name_t))
        != NGX_OK
        || ngx_array_init(&lmcf->zones, cf->pool, 1, sizeof(ngx_shm_zone_t *))
           != NGX_OK
        || ngx_array_init(&lmcf->locations, cf->pool, 4,
                          sizeof(ngx_http_llm_location_t))
           != NGX_OK)
    {
        return NULL;
    }

    lmcf->count_tokens = NGX_CONF_UNSET;

    return lmcf;
}


static void *
ngx_http_llm_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_llm_loc_conf_t  *llcf;

    llcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_loc_conf_t));
    if (llcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     llcf->route = { 0, NULL };
     *     llcf->family = NGX_HTTP_LLM_FAMILY_UNSET;
     *     llcf->targets = NULL;
     *     llcf->fallbacks = NULL;
     *     llcf->total_weight = 0;
     *     llcf->retry_on = 0;
     *     llcf->conf_file = { 0, NULL };
     *     llcf->conf_line = 0;
     */

    llcf->attempts = NGX_CONF_UNSET_UINT;
    llcf->backoff_base = NGX_CONF_UNSET_MSEC;
    llcf->backoff_max = NGX_CONF_UNSET_MSEC;
    llcf->deadline = NGX_CONF_UNSET_MSEC;
    llcf->response_headers = NGX_CONF_UNSET;
    llcf->check_answer = NGX_CONF_UNSET;
    llcf->budget = NGX_CONF_UNSET_UINT;
    llcf->budget_ratio = NGX_CONF_UNSET_UINT;
    llcf->budget_min = NGX_CONF_UNSET_UINT;
    llcf->budget_window = NGX_CONF_UNSET_UINT;
    llcf->cooldown = NGX_CONF_UNSET_UINT;
    llcf->cooldown_fails = NGX_CONF_UNSET_UINT;
    llcf->cooldown_window = NGX_CONF_UNSET_UINT;
    llcf->cooldown_time = NGX_CONF_UNSET_MSEC;
    llcf->cooldown_max = NGX_CONF_UNSET_MSEC;
    llcf->canary_errors = NGX_CONF_UNSET_UINT;
    llcf->canary_min = NGX_CONF_UNSET_UINT;
    llcf->canary_window = NGX_CONF_UNSET_UINT;

    return llcf;
}


/*
 * The retry policy (llm_retry_on, llm_attempts, llm_backoff,
 * llm_deadline), llm_response_headers and llm_check_answer are
 * inherited as usual.  A
 * route is a property of one location, like proxy_pass: llm_route,
 * llm_target and llm_fallback are not inherited by nested locations.
 */

static char *
ngx_http_llm_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_llm_loc_conf_t *prev = parent;
    ngx_http_llm_loc_conf_t *conf = child;

    ngx_conf_merge_bitmask_value(conf->retry_on, prev->retry_on,
                                 (NGX_CONF_BITMASK_SET
                                  |ngx_http_llm_retry_bit(
                                       NGX_HTTP_LLM_ERR_CONNECT)
                                  |ngx_http_llm_retry_bit(
                                       NGX_HTTP_LLM_ERR_TIMEOUT)
                                  |ngx_http_llm_retry_bit(
                                       NGX_HTTP_LLM_ERR_RATE_LIMITED)
                                  |ngx_http_llm_retry_bit(
                                       NGX_HTTP_LLM_ERR_OVERLOADED)
                                  |ngx_http_llm_retry_bit(
                                       NGX_HTTP_LLM_ERR_SERVER)
                                  |ngx_http_llm_retry_bit(
                                       NGX_HTTP_LLM_ERR_INVALID_RESPONSE)));

    if (conf->retry_on & NGX_HTTP_LLM_RETRY_OFF) {
        conf->retry_on = NGX_CONF_BITMASK_SET;
    }

    ngx_conf_merge_uint_value(conf->attempts, prev->attempts, 3);
    ngx_conf_merge_msec_value(conf->backoff_base, prev->backoff_base, 100);
    ngx_conf_merge_msec_value(conf->backoff_max, prev->backoff_max, 2000);
    ngx_conf_merge_msec_value(conf->deadline, prev->deadline, 60000);
    ngx_conf_merge_value(conf->response_headers, prev->response_headers, 0);
    ngx_conf_merge_value(conf->check_answer, prev->check_answer, 0);

    ngx_http_llm_merge_budget(conf, prev);
    ngx_http_llm_merge_cooldown(conf, prev);

    /* llm_canary belongs to its route's location: not inherited */

    ngx_conf_init_uint_value(conf->canary_errors,
                             NGX_HTTP_LLM_CANARY_ERRORS_DEFAULT);
    ngx_conf_init_uint_value(conf->canary_min,
                             NGX_HTTP_LLM_CANARY_MIN_DEFAULT);
    ngx_conf_init_uint_value(conf->canary_window,
                             NGX_HTTP_LLM_CANARY_WINDOW_DEFAULT);

    if (ngx_http_llm_conf_location(cf, conf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * llm_retry_budget and llm_cooldown are inherited as a whole: a location
 * with its own directive takes the defaults for what that one does not
 * give, not its parent's values.
 */

static void
ngx_http_llm_merge_budget(ngx_http_llm_loc_conf_t *conf,
    ngx_http_llm_loc_conf_t *prev)
{
    if (conf->budget == NGX_CONF_UNSET_UINT) {
        conf->budget = prev->budget;
        conf->budget_ratio = prev->budget_ratio;
        conf->budget_min = prev->budget_min;
        conf->budget_window = prev->budget_window;
        conf->budget_zone = prev->budget_zone;
    }

    ngx_conf_init_uint_value(conf->budget, 0);
    ngx_conf_init_uint_value(conf->budget_ratio,
                             NGX_HTTP_LLM_BUDGET_RATIO_DEFAULT);
    ngx_conf_init_uint_value(conf->budget_min,
                             NGX_HTTP_LLM_BUDGET_MIN_DEFAULT);
    ngx_conf_init_uint_value(conf->budget_window,
                             NGX_HTTP_LLM_BUDGET_WINDOW_DEFAULT);
}


static void
ngx_http_llm_merge_cooldown(ngx_http_llm_loc_conf_t *conf,
    ngx_http_llm_loc_conf_t *prev)
{
    if (conf->cooldown == NGX_CONF_UNSET_UINT) {
        conf->cooldown = prev->cooldown;
        conf->cooldown_fails = prev->cooldown_fails;
        conf->cooldown_window = prev->cooldown_window;
        conf->cooldown_time = prev->cooldown_time;
        conf->cooldown_max = prev->cooldown_max;
    }

    ngx_conf_init_uint_value(conf->cooldown, 1);
    ngx_conf_init_uint_value(conf->cooldown_fails,
                             NGX_HTTP_LLM_COOLDOWN_FAILS_DEFAULT);
    ngx_conf_init_uint_value(conf->cooldown_window,
                             NGX_HTTP_LLM_COOLDOWN_WINDOW_DEFAULT);
    ngx_conf_init_msec_value(conf->cooldown_max,
                             NGX_HTTP_LLM_COOLDOWN_MAX_DEFAULT);

    /* the default time= is never longer than the max= given */

    ngx_conf_init_msec_value(conf->cooldown_time,
                             ngx_min(NGX_HTTP_LLM_COOLDOWN_TIME_DEFAULT,
                                     conf->cooldown_max));
}


/* llm_retry_on as proxy_next_upstream: "off" stands alone */

static char *
ngx_http_llm_retry_on(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    char                *rv;
    ngx_str_t           *value;
    ngx_uint_t           i, m;
    ngx_conf_bitmask_t  *mask;

    /* nginx's own message names neither the directive nor the values */

    value = cf->args->elts;
    mask = cmd->post;

    for (i = 1; i < cf->args->nelts; i++) {

        for (m = 0; mask[m].name.len; m++) {
            if (mask[m].name.len == value[i].len
                && ngx_strcmp(mask[m].name.data, value[i].data) == 0)
            {
                break;
            }
        }

        if (mask[m].name.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid value \"%V\" in \"llm_retry_on\", "
                               "valid values are "
                               "connect_error, timeout, rate_limited, "
                               "quota_exhausted, overloaded, server_error, "
                               "auth_error, invalid_request, "
                               "context_length, content_filter, "
                               "invalid_response and off", &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    rv = ngx_conf_set_bitmask_slot(cf, cmd, conf);

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if ((llcf->retry_on & NGX_HTTP_LLM_RETRY_OFF) && cf->args->nelts > 2) {
        return "\"off\" cannot be combined with other values";
    }

    return NGX_CONF_OK;
}


/* llm_split_key VALUE: a complex value, in the route's location */

static char *
ngx_http_llm_split_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    char        *rv;
    u_char      *p;
    ngx_str_t   *value, name;
    ngx_uint_t   i;

    rv = ngx_http_set_complex_value_slot(cf, cmd, conf);

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    ngx_http_llm_conf_where(cf, llcf);

    /* a key of one request header is read by the header's hash */

    value = cf->args->elts;

    if (value[1].len <= sizeof("$http_") - 1
        || ngx_strncmp(value[1].data, "$http_", sizeof("$http_") - 1) != 0)
    {
        return NGX_CONF_OK;
    }

    name.data = value[1].data + sizeof("$http_") - 1;
    name.len = value[1].len - (sizeof("$http_") - 1);

    for (i = 0; i < name.len; i++) {
        if (!((name.data[i] >= 'a' && name.data[i] <= 'z')
              || (name.data[i] >= '0' && name.data[i] <= '9')
              || name.data[i] == '_'))
        {
            return NGX_CONF_OK;
        }
    }

    p = ngx_pnalloc(cf->pool, name.len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    /* $http_x_user_id is the header X-User-Id */

    for (i = 0; i < name.len; i++) {
        p[i] = (name.data[i] == '_') ? '-' : name.data[i];
    }

    llcf->split_header.data = p;
    llcf->split_header.len = name.len;
    llcf->split_hash = ngx_hash_key(p, name.len);

    return NGX_CONF_OK;
}


/* llm_backoff base=TIME [max=TIME] */

static char *
ngx_http_llm_backoff(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_loc_conf_t *llcf = conf;

    ngx_str_t   *value, s;
    ngx_msec_t   ms, *field;
    ngx_uint_t   i;

    if (llcf->backoff_base != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "base=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;
            field = &llcf->backoff_base;

        } else if (ngx_strncmp(value[i].data, "max=", 4) == 0) {
            s.data = value[i].data + 4;
            s.len = value[i].len - 4;
            field = &llcf->backoff_max;

        } else {

            if (i < 3 && value[i].len && value[i].data[0] >= '0'
                && value[i].data[0] <= '9')
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid parameter \"%V\", "
                                   "use \"%s%V\"", &value[i],
                                   i == 1 ? "base=" : "max=", &value[i]);
                return NGX_CONF_ERROR;
            }

            goto invalid;
        }

        ms = ngx_parse_time(&s, 0);

        if (ms == (ngx_msec_t) NGX_ERROR || *field != NGX_CONF_UNSET_MSEC) {
            goto invalid;
        }

        *field = ms;
    }

    if (llcf->backoff_base == NGX_CONF_UNSET_MSEC) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"llm_backoff\" must have \"base\" parameter");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/* llm_attempts N: 1 .. 100, the directive named when it is not */

static char *
ngx_http_llm_attempts_check(ngx_conf_t *cf, void *post, void *data)
{
    ngx_int_t  *np = data;

    if (*np < 1 || *np > 100) {
        return "must be between 1 and 100";
    }

    return NGX_CONF_OK;
}


/* llm_redis, its place kept for the checks made once all is read */

static char *
ngx_http_llm_redis_where(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    char  *rv;

    rv = ngx_http_llm_redis(cf, cmd, conf);

    if (rv == NGX_CONF_OK) {
        lmcf->redis_file = cf->conf_file->file.name;
        lmcf->redis_line = cf->conf_file->line;
    }

    return rv;
}


/* where a location's first llm_ directive is, for the checks' errors */

void
ngx_http_llm_conf_where(ngx_conf_t *cf, ngx_http_llm_loc_conf_t *llcf)
{
    if (llcf->conf_line == 0) {
        llcf->conf_file = cf->conf_file->file.name;
        llcf->conf_line = cf->conf_file->line;
    }
}
