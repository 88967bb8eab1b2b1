
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_llm_module.h"


/*
 * The Redis link of llm_redis (design.md 4): hiredis' async API driven by
 * nginx's event loop, in one worker per node (worker 0), never on the
 * request path.  What goes over it is ngx_http_llm_sync.c's business.
 *
 * The adapter: hiredis owns the socket and closes it; nginx gets a
 * connection for the same fd only to have events on it, and gives that
 * back (without closing) in hiredis' cleanup hook, which hiredis calls
 * whenever it frees a context: an error, EOF, our own redisAsyncFree().
 * That hook is therefore the one place where the link goes down.  Events
 * are level-triggered, as hiredis expects (it reads at most 16 KB a call
 * and asks again).  hiredis 0.14 has no timeouts: connecting and every
 * batch are bounded by nginx timers, and a timed out link is freed.
 * Every timer is cancelable, so a worker that quits does not wait for
 * them, and the context is freed in exit_process, before nginx looks for
 * sockets left open.
 */


#define NGX_HTTP_LLM_REDIS_BACKOFF_MIN  100
#define NGX_HTTP_LLM_REDIS_BACKOFF_MAX  2000


typedef struct {
    ngx_http_llm_redis_conf_t   *conf;
    ngx_log_t                   *log;

    redisAsyncContext           *ac;
    ngx_connection_t            *c;         /* for events on ac's fd */
    ngx_uint_t                   up;        /* PING answered */

    ngx_event_t                  connecting;    /* connect + AUTH timeout */
    ngx_event_t                  reconnect;
    ngx_msec_t                   backoff;
    ngx_connection_t             dummy;     /* timers' data: fd -1 */

    u_char                       reason[128];   /* of the loss we caused */
    size_t                       reason_len;

    unsigned                     down_logged:1;
    unsigned                     announced:1;   /* "connected" logged */
    unsigned                     exiting:1;
} ngx_http_llm_link_t;


static void ngx_http_llm_redis_connect(void);
static void ngx_http_llm_redis_setup(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_llm_redis_ready_reply(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_http_llm_redis_lost(redisAsyncContext *ac);
static void ngx_http_llm_redis_down(u_char *reason, size_t len);
static void ngx_http_llm_redis_retry(void);
static void ngx_http_llm_redis_connect_handler(ngx_event_t *ev);
static void ngx_http_llm_redis_timeout_handler(ngx_event_t *ev);
static void ngx_http_llm_redis_read_handler(ngx_event_t *rev);
static void ngx_http_llm_redis_write_handler(ngx_event_t *wev);
static void ngx_http_llm_redis_add_read(void *data);
static void ngx_http_llm_redis_del_read(void *data);
static void ngx_http_llm_redis_add_write(void *data);
static void ngx_http_llm_redis_del_write(void *data);
static void ngx_http_llm_redis_cleanup(void *data);
static ngx_int_t ngx_http_llm_redis_address(ngx_conf_t *cf,
    ngx_http_llm_redis_conf_t *rc, ngx_str_t *value);


static ngx_http_llm_link_t  ngx_http_llm_link;


/* llm_redis ADDRESS [prefix=STR] [sync=TIME] [timeout=TIME] [password=STR]
 *     [db=N] [cluster] */

char *
ngx_http_llm_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_llm_main_conf_t *lmcf = conf;

    u_char                     *p;
    ngx_int_t                   n;
    ngx_str_t                  *value, s;
    ngx_uint_t                  i;
    ngx_http_llm_redis_conf_t  *rc;

    if (lmcf->redis) {
        return "is duplicate";
    }

    rc = ngx_pcalloc(cf->pool, sizeof(ngx_http_llm_redis_conf_t));
    if (rc == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    if (ngx_http_llm_redis_address(cf, rc, &value[1]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&rc->prefix, "llm");
    rc->sync = 250;
    rc->timeout = 1000;
    rc->db = -1;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "prefix=", 7) == 0) {
            rc->prefix.data = value[i].data + 7;
            rc->prefix.len = value[i].len - 7;

            /* braces would move the hash tag that keeps a route's keys
             * in one Redis Cluster slot */
            if (rc->prefix.len == 0 || rc->prefix.len > 64
                || ngx_strlchr(rc->prefix.data,
                               rc->prefix.data + rc->prefix.len, '{')
                || ngx_strlchr(rc->prefix.data,
                               rc->prefix.data + rc->prefix.len, '}'))
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "sync=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            rc->sync = ngx_parse_time(&s, 0);

            if (rc->sync == (ngx_msec_t) NGX_ERROR
                || rc->sync < 10 || rc->sync > 60000)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid sync \"%V\", it must be "
                                   "from 10ms to 60s", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            rc->timeout = ngx_parse_time(&s, 0);

            if (rc->timeout == (ngx_msec_t) NGX_ERROR || rc->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "password=", 9) == 0) {
            rc->password.data = value[i].data + 9;
            rc->password.len = value[i].len - 9;

            if (rc->password.len == 0) {
                goto hidden;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "db=", 3) == 0) {
            n = ngx_atoi(value[i].data + 3, value[i].len - 3);

            if (n == NGX_ERROR) {
                goto invalid;
            }

            rc->db = n;
            continue;
        }

        /*
         * Redis Cluster, or a proxy to it: each call of a tick keeps to
         * one hash slot (ngx_http_llm_sync_script.c)
         */

        if (ngx_strncmp(value[i].data, "cluster", 7) == 0) {
            if (value[i].len != 7) {
                goto invalid;
            }

            rc->cluster = 1;
            continue;
        }

        goto hidden;
    }

    /* a Redis Cluster has database 0 alone, and refuses SELECT */

    if (rc->cluster && rc->db > 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"db\" parameter is incompatible with "
                           "\"cluster\"");
        return NGX_CONF_ERROR;
    }

    lmcf->redis = rc;

    return NGX_CONF_OK;

hidden:

    /* a password, or what may be a mistyped password=, is not repeated */

    p = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');

    if (p) {
        s.data = value[i].data;
        s.len = p - s.data + 1;

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V...\"", &s);
        return NGX_CONF_ERROR;
    }

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * ip:port, [ipv6]:port, an IP alone (port 6379), or unix:/path.  A host
 * name is refused: hiredis would resolve it with blocking DNS, in the
 * worker, at every reconnect.
 */

static ngx_int_t
ngx_http_llm_redis_address(ngx_conf_t *cf, ngx_http_llm_redis_conf_t *rc,
    ngx_str_t *value)
{
    u_char      *p;
    size_t       len;
    ngx_int_t    rv;
    ngx_addr_t   addr;

    rc->address = *value;

    if (value->len > 5 && ngx_strncmp(value->data, "unix:", 5) == 0) {
        len = value->len - 5;

        if (len >= sizeof(((struct sockaddr_un *) 0)->sun_path)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "too long path in \"llm_redis\" address "
                               "\"%V\"", value);
            return NGX_ERROR;
        }

        rc->path = ngx_pnalloc(cf->pool, len + 1);
        if (rc->path == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_cpystrn((u_char *) rc->path, value->data + 5, len + 1);

        return NGX_OK;
    }

    rv = ngx_parse_addr_port(cf->pool, &addr, value->data, value->len);

    if (rv == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rv == NGX_DECLINED) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid address \"%V\" in \"llm_redis\": "
                           "an IP address or \"unix:\" path is required, "
                           "a host name would be resolved with blocking "
                           "DNS", value);
        return NGX_ERROR;
    }

    rc->port = ngx_inet_get_port(addr.sockaddr);

    if (rc->port == 0) {
        rc->port = 6379;
    }

    p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    len = ngx_sock_ntop(addr.sockaddr, addr.socklen, p, NGX_SOCKADDR_STRLEN,
                        0);
    p[len] = '\0';

    rc->host = (char *) p;

    return NGX_OK;
}


/*
 * In worker 0 only (one link per node, whatever worker_processes is):
 * the cache manager and loader run init_process too, and a respawned
 * worker 0 takes its place.  Not with master_process off, where a reload
 * would leave the link with the configuration it started with: that
 * debugging mode counts locally.
 */

ngx_int_t
ngx_http_llm_redis_init_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_link_t       *link;
    ngx_http_llm_main_conf_t  *lmcf;

    if (ngx_process != NGX_PROCESS_WORKER || ngx_worker != 0) {
        return NGX_OK;
    }

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_llm_module);

    if (lmcf == NULL || lmcf->redis == NULL) {
        return NGX_OK;
    }

    link = &ngx_http_llm_link;
    ngx_memzero(link, sizeof(ngx_http_llm_link_t));

    link->conf = lmcf->redis;
    link->log = cycle->log;
    link->backoff = NGX_HTTP_LLM_REDIS_BACKOFF_MIN;

    link->dummy.fd = (ngx_socket_t) -1;

    link->connecting.handler = ngx_http_llm_redis_timeout_handler;
    link->connecting.log = cycle->log;
    link->connecting.data = &link->dummy;
    link->connecting.cancelable = 1;

    link->reconnect.handler = ngx_http_llm_redis_connect_handler;
    link->reconnect.log = cycle->log;
    link->reconnect.data = &link->dummy;
    link->reconnect.cancelable = 1;

    if (ngx_http_llm_sync_init(cycle, lmcf->redis) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_llm_redis_connect();

    return NGX_OK;
}


void
ngx_http_llm_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    if (link->conf == NULL) {
        return;
    }

    link->exiting = 1;

    if (link->connecting.timer_set) {
        ngx_del_timer(&link->connecting);
    }

    if (link->reconnect.timer_set) {
        ngx_del_timer(&link->reconnect);
    }

    ngx_http_llm_sync_exit();

    if (link->ac) {
        /* not in a hiredis callback: frees now, cleanup hook included */
        redisAsyncFree(link->ac);
    }
}


static void
ngx_http_llm_redis_connect(void)
{
    u_char                     *p;
    ngx_connection_t           *c;
    redisAsyncContext          *ac;
    ngx_http_llm_link_t        *link;
    ngx_http_llm_redis_conf_t  *rc;

    link = &ngx_http_llm_link;
    rc = link->conf;

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, link->log, 0,
                   "llm redis connect %V", &rc->address);

    if (rc->path) {
        ac = redisAsyncConnectUnix(rc->path);

    } else {
        ac = redisAsyncConnect(rc->host, rc->port);
    }

    if (ac == NULL) {
        ngx_http_llm_redis_down((u_char *) "out of memory",
                                sizeof("out of memory") - 1);
        return;
    }

    if (ac->err) {
        /* refused at once, no such socket, ...: nothing attached yet */
        p = (u_char *) ac->errstr;
        ngx_http_llm_redis_down(p, ngx_strlen(p));
        redisAsyncFree(ac);
        return;
    }

    c = ngx_get_connection(ac->c.fd, link->log);

    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_llm_redis_down((u_char *) "no free connection",
                                sizeof("no free connection") - 1);
        return;
    }

    c->data = link;
    c->read->handler = ngx_http_llm_redis_read_handler;
    c->write->handler = ngx_http_llm_redis_write_handler;
    c->read->log = link->log;
    c->write->log = link->log;

    link->ac = ac;
    link->c = c;
    link->reason_len = 0;

    ac->data = link;
    ac->ev.data = link;
    ac->ev.addRead = ngx_http_llm_redis_add_read;
    ac->ev.delRead = ngx_http_llm_redis_del_read;
    ac->ev.addWrite = ngx_http_llm_redis_add_write;
    ac->ev.delWrite = ngx_http_llm_redis_del_write;
    ac->ev.cleanup = ngx_http_llm_redis_cleanup;

    /* pipelined: AUTH and SELECT first, PING's answer says it is ready */

    if (rc->password.len
        && redisAsyncCommand(ac, ngx_http_llm_redis_setup, "AUTH",
                             "AUTH %b", rc->password.data,
                             rc->password.len)
           != REDIS_OK)
    {
        goto failed;
    }

    if (rc->db >= 0
        && redisAsyncCommand(ac, ngx_http_llm_redis_setup, "SELECT",
                             "SELECT %d", (int) rc->db)
           != REDIS_OK)
    {
        goto failed;
    }

    if (redisAsyncCommand(ac, ngx_http_llm_redis_ready_reply, NULL, "PING")
        != REDIS_OK)
    {
        goto failed;
    }

    ngx_add_timer(&link->connecting, rc->timeout);

    return;

failed:

    ngx_http_llm_redis_fail("out of memory", sizeof("out of memory") - 1);
}


/* an AUTH or SELECT answer: only a refusal matters */

static void
ngx_http_llm_redis_setup(redisAsyncContext *ac, void *r, void *data)
{
    u_char      *p, buf[128];
    redisReply  *reply = r;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR) {
        return;
    }

    /* Redis' own words, which do not repeat the password */
    p = ngx_snprintf(buf, sizeof(buf), "%s refused: %*s", (char *) data,
                     (size_t) ngx_min(reply->len, 80), reply->str);

    ngx_http_llm_redis_fail((char *) buf, p - buf);
}


static void
ngx_http_llm_redis_ready_reply(redisAsyncContext *ac, void *r, void *data)
{
    u_char               *p, buf[128];
    redisReply           *reply = r;
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    if (reply == NULL || link->ac != ac || link->reason_len) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        p = ngx_snprintf(buf, sizeof(buf), "PING refused: %*s",
                         (size_t) ngx_min(reply->len, 80), reply->str);
        ngx_http_llm_redis_fail((char *) buf, p - buf);
        return;
    }

    if (link->connecting.timer_set) {
        ngx_del_timer(&link->connecting);
    }

    /* the syncer may send; the link is back once a batch is answered */
    link->up = 1;
}


/*
 * A batch Redis answered in full.  Only this brings the link back, not
 * the PING: a Redis that answers PING but refuses the sync (a key of
 * another type, OOM, READONLY) stays one outage, logged once, with a
 * backoff that keeps growing.
 */

void
ngx_http_llm_redis_synced(void)
{
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    link->backoff = NGX_HTTP_LLM_REDIS_BACKOFF_MIN;

    if (link->down_logged) {
        ngx_log_error(NGX_LOG_WARN, link->log, 0,
                      "llm redis %V is back, retry budgets and cooldowns "
                      "are shared again", &link->conf->address);
        link->down_logged = 0;
        link->announced = 1;

    } else if (!link->announced) {
        ngx_log_error(NGX_LOG_NOTICE, link->log, 0,
                      "llm redis %V connected", &link->conf->address);
        link->announced = 1;
    }

    ngx_http_llm_sync_link(NGX_HTTP_LLM_LINK_UP);
}


ngx_uint_t
ngx_http_llm_redis_ready(void)
{
    return ngx_http_llm_link.ac != NULL && ngx_http_llm_link.up;
}


ngx_int_t
ngx_http_llm_redis_command(redisCallbackFn *fn, void *data, int argc,
    const char **argv, const size_t *argvlen)
{
    if (!ngx_http_llm_redis_ready()) {
        return NGX_ERROR;
    }

    if (redisAsyncCommandArgv(ngx_http_llm_link.ac, fn, data, argc, argv,
                              argvlen)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * Drops the link for a reason of ours (a timeout, a refusal).  Inside a
 * hiredis callback the free is deferred by hiredis until the callback
 * returns; either way the cleanup hook follows and takes the link down.
 */

void
ngx_http_llm_redis_fail(const char *reason, size_t len)
{
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    if (link->ac == NULL || link->reason_len) {
        return;
    }

    link->reason_len = ngx_min(len, sizeof(link->reason));
    ngx_memcpy(link->reason, reason, link->reason_len);

    redisAsyncFree(link->ac);
}


/* from the cleanup hook: the context is being freed */

static void
ngx_http_llm_redis_lost(redisAsyncContext *ac)
{
    u_char               *p;
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    if (link->connecting.timer_set) {
        ngx_del_timer(&link->connecting);
    }

    if (link->exiting) {
        return;
    }

    if (link->reason_len) {
        ngx_http_llm_redis_down(link->reason, link->reason_len);

    } else if (ac->err) {
        p = (u_char *) ac->errstr;
        ngx_http_llm_redis_down(p, ngx_strlen(p));

    } else {
        ngx_http_llm_redis_down((u_char *) "connection closed",
                                sizeof("connection closed") - 1);
    }
}


/*
 * The link is down (or never came up): the zones go back to local
 * counting, which is logged once per outage, and a reconnect is planned.
 */

static void
ngx_http_llm_redis_down(u_char *reason, size_t len)
{
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    /*
     * A worker quitting after a reload leaves the shared state to the
     * new worker 0, which may already be linked.
     */

    if (link->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    ngx_http_llm_sync_link(NGX_HTTP_LLM_LINK_DOWN);

    if (!link->down_logged) {
        ngx_log_error(NGX_LOG_WARN, link->log, 0,
                      "llm redis %V is unavailable (%*s), retry budgets "
                      "and cooldowns are counted by this node alone until "
                      "it is back", &link->conf->address, len, reason);
        link->down_logged = 1;

    } else {
        ngx_log_debug3(NGX_LOG_DEBUG_EVENT, link->log, 0,
                       "llm redis %V still unavailable (%*s)",
                       &link->conf->address, len, reason);
    }

    ngx_http_llm_redis_retry();
}


/*
 * Capped exponential backoff, 100ms to 2s, each wait drawn between half
 * and all of it so that nodes do not come back in step.
 */

static void
ngx_http_llm_redis_retry(void)
{
    ngx_msec_t            delay;
    ngx_http_llm_link_t  *link;

    link = &ngx_http_llm_link;

    if (link->exiting || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    delay = link->backoff / 2
            + (ngx_msec_t) ngx_random() % (link->backoff / 2 + 1);

    link->backoff = ngx_min(link->backoff * 2,
                            NGX_HTTP_LLM_REDIS_BACKOFF_MAX);

    if (!link->reconnect.timer_set) {
        ngx_add_timer(&link->reconnect, delay);
    }
}


static void
ngx_http_llm_redis_connect_handler(ngx_event_t *ev)
{
    if (ngx_http_llm_link.exiting || ngx_exiting || ngx_quit
        || ngx_terminate || ngx_http_llm_link.ac)
    {
        return;
    }

    ngx_http_llm_redis_connect();
}


/* connecting, AUTH, SELECT and PING took longer than timeout= */

static void
ngx_http_llm_redis_timeout_handler(ngx_event_t *ev)
{
    ngx_http_llm_redis_fail("timed out connecting",
                            sizeof("timed out connecting") - 1);
}


static void
ngx_http_llm_redis_read_handler(ngx_event_t *rev)
{
    ngx_connection_t     *c;
    ngx_http_llm_link_t  *link;

    c = rev->data;
    link = c->data;

    if (link->c != c || link->ac == NULL) {
        return;
    }

    /* may free the context: nothing of it is touched afterwards */
    redisAsyncHandleRead(link->ac);
}


static void
ngx_http_llm_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t     *c;
    ngx_http_llm_link_t  *link;

    c = wev->data;
    link = c->data;

    if (link->c != c || link->ac == NULL) {
        return;
    }

    redisAsyncHandleWrite(link->ac);
}


/* hiredis' hooks: idempotent, level-triggered */

static void
ngx_http_llm_redis_add_read(void *data)
{
    ngx_http_llm_link_t *link = data;

    if (link->c && !link->c->read->active) {
        (void) ngx_add_event(link->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_llm_redis_del_read(void *data)
{
    ngx_http_llm_link_t *link = data;

    if (link->c && link->c->read->active) {
        (void) ngx_del_event(link->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_llm_redis_add_write(void *data)
{
    ngx_http_llm_link_t *link = data;

    if (link->c && !link->c->write->active) {
        (void) ngx_add_event(link->c->write, NGX_WRITE_EVENT,
                             NGX_LEVEL_EVENT);
    }
}


static void
ngx_http_llm_redis_del_write(void *data)
{
    ngx_http_llm_link_t *link = data;

    if (link->c && link->c->write->active) {
        (void) ngx_del_event(link->c->write, NGX_WRITE_EVENT,
                             NGX_LEVEL_EVENT);
    }
}


/*
 * hiredis frees the context and closes the fd right after this returns:
 * the events are forgotten without a syscall (closing the fd takes it
 * out of epoll), and nginx's connection is given back without closing.
 */

static void
ngx_http_llm_redis_cleanup(void *data)
{
    ngx_http_llm_link_t *link = data;

    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    c = link->c;
    ac = link->ac;

    link->c = NULL;
    link->ac = NULL;
    link->up = 0;

    if (c) {
        if (c->read->active) {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (c->write->active) {
            (void) ngx_del_event(c->write, NGX_WRITE_EVENT,
                                 NGX_CLOSE_EVENT);
        }

        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }

        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
        }

        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;
    }

    if (ac) {
        ngx_http_llm_redis_lost(ac);
    }
}
