
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#ifndef _LLM_PREFLIGHT_H_INCLUDED_
#define _LLM_PREFLIGHT_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <yajl/yajl_tree.h>


#ifndef LP_VERSION
#define LP_VERSION              "unknown"
#endif

#define LP_NAME                 "llm-preflight"

/* exit statuses, docs/llm-preflight.md "EXIT STATUS" */
#define LP_EXIT_PROMOTE         0
#define LP_EXIT_HOLD            1
#define LP_EXIT_ROLLBACK        2
#define LP_EXIT_USAGE           3

/* an answer larger than this is cut off and the request failed */
#define LP_BODY_MAX             (4 * 1024 * 1024)

/* JSON nested deeper than this is not parsed (yajl_tree recurses) */
#define LP_JSON_DEPTH_MAX       64

/* connect timeout, within the run's --timeout */
#define LP_CONNECT_TIMEOUT_MS   10000

/* the longest wait for the access log lines of the run */
#define LP_LOG_WAIT_MS          3000

/* an error path slower than this spent time on retries or waits */
#define LP_ERROR_QUICK_MS       5000

#define LP_PROMPT               "Return the word ok"

#define LP_FAMILY_CHAT          0
#define LP_FAMILY_RESPONSES     1
#define LP_FAMILY_MESSAGES      2

#define LP_HEADERS_MAX          16


typedef struct {
    char                       *data;
    size_t                      len;
    size_t                      size;
} lp_buf_t;


/* a request made by the command, and what came back */

typedef struct {
    const char                 *url;
    const char                 *body;       /* NULL: GET */
    const char                 *request_id; /* X-Request-Id; NULL: none */
    int                         stream;     /* Accept: text/event-stream */

    long                        status;     /* 0: no HTTP answer */
    char                        error[256]; /* transport error, or "" */
    int                         timed_out;
    int                         too_large;  /* cut off at LP_BODY_MAX */
    int                         not_run;    /* the run's time was spent */
    long                        attempts;   /* x-llm-attempts; -1: none */
    long                        fallback;   /* x-llm-fallback; -1: none */
    int                         should_retry_false;
    char                        content_type[64];
    lp_buf_t                    answer;
    long                        ms;         /* time taken */
} lp_http_t;


/* what a run is told: options of every subcommand */

typedef struct {
    const char                 *command;
    const char                 *base;
    const char                 *primary;
    const char                 *fallback;
    int                         family;     /* -1: not given */
    const char                 *model;
    const char                 *operator_name;
    const char                 *run_id;
    const char                 *key_env;
    int                         key_env_given;
    const char                 *headers[LP_HEADERS_MAX];
    int                         nheaders;
    const char                 *access_log;
    int                         stream;
    long                        timeout_ms;
    const char                 *change_ticket;
    const char                 *rollback_owner;
    const char                 *format;
    const char                 *record;
    const char                 *environment;
    const char                 *evidence_link;

    /* derived */
    char                        run_id_buf[80];
    const char                 *key;        /* NULL: no key sent */
    long                        deadline;   /* ms, monotonic */
    int                         record_fd;
} lp_conf_t;


/* the contract check of one answer */

typedef struct {
    int                         shape_ok;   /* the family's documented shape */
    int                         text_ok;    /* non-empty text */
    int                         usage_ok;   /* input and output tokens */
    int                         end_ok;     /* a stream's end event */
    int                         error_event;    /* a stream's error event */
    char                        what[96];   /* the first thing missing */
} lp_shape_t;


/* an ordered record of fields, printed as JSON, YAML or markdown */

#define LP_FIELD_STRING         0
#define LP_FIELD_INT            1
#define LP_FIELD_NULL           2
#define LP_FIELD_BOOL           3
#define LP_FIELD_OBJECT         4

#define LP_FIELDS_MAX           32

typedef struct lp_record_s  lp_record_t;

typedef struct {
    const char                 *key;
    int                         type;
    char                       *str;        /* owned */
    long                        num;
    lp_record_t                *obj;        /* owned */
} lp_field_t;

struct lp_record_s {
    lp_field_t                  fields[LP_FIELDS_MAX];
    int                         n;
};


/* llm_preflight.c */
extern const char *lp_family_names[];
long lp_now_ms(void);
long lp_left_ms(lp_conf_t *cf);
void lp_time_iso(char *buf, size_t size);
void lp_run_id(lp_conf_t *cf);
void lp_note(lp_buf_t *notes, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
const char *lp_client(void);
void lp_error(lp_conf_t *cf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* llm_preflight_opts.c */
int lp_parse_options(lp_conf_t *cf, int argc, char **argv);
void lp_usage(int to_stdout);

/* llm_preflight_http.c */
int lp_http_init(void);
void lp_http_cleanup(void);
const char *lp_http_libcurl_version(void);
void lp_http_request(lp_conf_t *cf, lp_http_t *h);
void lp_http_free(lp_http_t *h);

/* llm_preflight_family.c */
const char *lp_family_path(int family);
char *lp_family_body(int family, const char *model, int stream);
void lp_family_check(int family, lp_http_t *h, lp_shape_t *s);
int lp_error_object(lp_http_t *h, char *type, size_t size);
int lp_catalog_ids(lp_http_t *h, const char *model, char ***ids,
    size_t *nids, int *listed, char *last_id, size_t last_size);
yajl_val lp_json_parse(const char *data, size_t len);
int lp_sse_is(lp_http_t *h);

/* llm_preflight_catalog.c */
int lp_catalog_fetch(lp_conf_t *cf, const char *base, const char *model,
    int *listed, long *status, char ***ids, size_t *nids, char *why,
    size_t why_size);
int lp_catalog_command(lp_conf_t *cf);

/* llm_preflight_readiness.c */
int lp_readiness_command(lp_conf_t *cf);

/* llm_preflight_log.c */
typedef struct {
    const char                 *path;
    off_t                       start;
} lp_log_t;

typedef struct {
    int                         found;
    int                         fields_ok;
    long                        status;     /* -1: not a number */
    long                        attempts;   /* -1: not a number */
    char                        missing[160];
} lp_log_line_t;

int lp_log_open(lp_log_t *log, const char *path);
int lp_log_find(lp_conf_t *cf, lp_log_t *log, const char *ids[],
    int usage[], lp_log_line_t lines[], int n, int *secret);

/* llm_preflight_record.c */
void lp_record_str(lp_record_t *r, const char *key, const char *value);
void lp_record_int(lp_record_t *r, const char *key, long value);
void lp_record_null(lp_record_t *r, const char *key);
void lp_record_bool(lp_record_t *r, const char *key, int value);
lp_record_t *lp_record_obj(lp_record_t *r, const char *key);
void lp_record_free(lp_record_t *r);
int lp_record_emit(lp_conf_t *cf, lp_record_t *r);
int lp_output(lp_conf_t *cf, int fd, const char *data, size_t len);

/* buffers */
int lp_buf_add(lp_buf_t *b, const void *data, size_t len);
int lp_buf_printf(lp_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void lp_buf_free(lp_buf_t *b);


#endif /* _LLM_PREFLIGHT_H_INCLUDED_ */
