
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _NGX_HTTP_LLM_REDIS_H_INCLUDED_
#define _NGX_HTTP_LLM_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>


/*
 * llm_redis ADDRESS [prefix=] [sync=] [timeout=] [password=] [db=]
 *     [cluster]
 */

typedef struct {
    ngx_str_t                    address;   /* as written, for logs */
    char                        *host;      /* an IP literal, or NULL */
    int                          port;
    char                        *path;      /* of a unix socket, or NULL */
    ngx_str_t                    prefix;
    ngx_msec_t                   sync;
    ngx_msec_t                   timeout;
    ngx_str_t                    password;  /* never logged */
    ngx_int_t                    db;        /* -1: no SELECT */
    ngx_uint_t                   cluster;   /* a tick's calls by hash slot */
} ngx_http_llm_redis_conf_t;


char *ngx_http_llm_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_llm_redis_init_process(ngx_cycle_t *cycle);
void ngx_http_llm_redis_exit_process(ngx_cycle_t *cycle);

/* the link (ngx_http_llm_redis.c), for the syncer */
ngx_uint_t ngx_http_llm_redis_ready(void);
ngx_int_t ngx_http_llm_redis_command(redisCallbackFn *fn, void *data,
    int argc, const char **argv, const size_t *argvlen);
void ngx_http_llm_redis_fail(const char *reason, size_t len);
void ngx_http_llm_redis_synced(void);

/* the syncer (ngx_http_llm_sync.c), for the link */
ngx_int_t ngx_http_llm_sync_init(ngx_cycle_t *cycle,
    ngx_http_llm_redis_conf_t *conf);
void ngx_http_llm_sync_link(ngx_uint_t state);
void ngx_http_llm_sync_exit(void);


#endif /* _NGX_HTTP_LLM_REDIS_H_INCLUDED_ */
