
/*
 * Copyright (C) The ngx_http_llm_module authors
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "llm_preflight.h"


/*
 * The command line and the environment.  Anything wrong is one line on
 * stderr and exit status 3, before any request is made.  The key is
 * read from the environment only: no option takes it, and --header
 * refuses credential headers.
 */


#define LP_CHECK      0x01
#define LP_READINESS  0x02
#define LP_CATALOG    0x04
#define LP_ALL        (LP_CHECK|LP_READINESS|LP_CATALOG)


typedef struct {
    const char                 *name;
    int                         commands;   /* where it applies */
    int                         flag;       /* takes no value */
    size_t                      offset;     /* in lp_conf_t */
} lp_option_t;


#define lp_off(field)  offsetof(lp_conf_t, field)

static lp_option_t  lp_options[] = {
    { "base", LP_CHECK|LP_CATALOG, 0, lp_off(base) },
    { "primary", LP_READINESS, 0, lp_off(primary) },
    { "fallback", LP_READINESS, 0, lp_off(fallback) },
    { "family", LP_ALL, 0, 0 },
    { "model", LP_CHECK|LP_READINESS, 0, lp_off(model) },
    { "operator", LP_CHECK|LP_READINESS, 0, lp_off(operator_name) },
    { "run-id", LP_CHECK|LP_READINESS, 0, lp_off(run_id) },
    { "key-env", LP_ALL, 0, lp_off(key_env) },
    { "header", LP_ALL, 0, 0 },
    { "access-log", LP_CHECK, 0, lp_off(access_log) },
    { "stream", LP_CHECK|LP_READINESS, 1, lp_off(stream) },
    { "timeout", LP_ALL, 0, 0 },
    { "change-ticket", LP_CHECK, 0, lp_off(change_ticket) },
    { "rollback-owner", LP_CHECK, 0, lp_off(rollback_owner) },
    { "format", LP_CHECK|LP_READINESS, 0, lp_off(format) },
    { "record", LP_CHECK|LP_READINESS, 0, lp_off(record) },
    { "environment", LP_READINESS, 0, lp_off(environment) },
    { "evidence-link", LP_READINESS, 0, lp_off(evidence_link) },
    { NULL, 0, 0, 0 }
};


static const char  *lp_forbidden_headers[] = {
    "authorization", "proxy-authorization", "x-api-key", "api-key",
    "cookie", "x-request-id", "content-type", "content-length", "host",
    "transfer-encoding", NULL
};


static lp_option_t *lp_option_find(const char *name);
static int lp_option(lp_conf_t *cf, int commands, const char *name,
    const char *value);
static int lp_check_url(lp_conf_t *cf, const char *opt, const char *url);
static int lp_check_text(lp_conf_t *cf, const char *opt, const char *v,
    size_t max);
static int lp_check_header(lp_conf_t *cf, const char *h);
static int lp_parse_time(const char *s, long *ms);
static int lp_environment(lp_conf_t *cf);
static void lp_key_prescan(lp_conf_t *cf, int argc, char **argv);


void
lp_usage(int to_stdout)
{
    fprintf(to_stdout ? stdout : stderr,
"usage: " LP_NAME " check --base URL --family chat|responses|messages\n"
"           --model NAME [--operator NAME] [--run-id ID] [--key-env VAR]\n"
"           [--header 'K: V']... [--access-log FILE] [--stream]\n"
"           [--timeout 30s] [--change-ticket ID] [--rollback-owner NAME]\n"
"           [--format json|yaml|markdown] [--record FILE]\n"
"       " LP_NAME " readiness --primary URL [--fallback URL]\n"
"           --family F --model NAME [--environment NAME]\n"
"           [--evidence-link URL] [--operator NAME] [...]\n"
"       " LP_NAME " catalog --base URL [--family F] [--key-env VAR]\n"
"       " LP_NAME " --help | --version\n"
"See docs/llm-preflight.md.\n");
}


/*
 * Returns 0 to run, 1 when --help or --version was answered, or
 * LP_EXIT_USAGE.
 */

int
lp_parse_options(lp_conf_t *cf, int argc, char **argv)
{
    int          i, commands;
    char         name[64];
    const char  *arg, *eq, *value;

    cf->family = -1;
    cf->timeout_ms = 30000;
    cf->format = "json";
    cf->record_fd = -1;

    lp_key_prescan(cf, argc, argv);

    if (argc < 2) {
        lp_error(cf, "no command: check, readiness or catalog "
                 "(see --help)");
        return LP_EXIT_USAGE;
    }

    arg = argv[1];

    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
        lp_usage(1);
        return 1;
    }

    if (strcmp(arg, "--version") == 0) {
        printf(LP_NAME " %s (libcurl %s)\n", LP_VERSION,
               lp_http_libcurl_version());
        return 1;
    }

    if (strcmp(arg, "check") == 0) {
        commands = LP_CHECK;

    } else if (strcmp(arg, "readiness") == 0) {
        commands = LP_READINESS;

    } else if (strcmp(arg, "catalog") == 0) {
        commands = LP_CATALOG;

    } else {
        lp_error(cf, "unknown command \"%.64s\": check, readiness or "
                 "catalog", arg);
        return LP_EXIT_USAGE;
    }

    cf->command = arg;

    for (i = 2; i < argc; i++) {
        arg = argv[i];

        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            lp_error(cf, "unexpected argument \"%.64s\"", arg);
            return LP_EXIT_USAGE;
        }

        arg += 2;
        eq = strchr(arg, '=');

        snprintf(name, sizeof(name), "%.*s",
                 (int) (eq ? (size_t) (eq - arg) : strlen(arg)), arg);

        if (lp_option_find(name) == NULL) {
            lp_error(cf, "unknown option \"--%s\"", name);
            return LP_EXIT_USAGE;
        }

        if (eq) {
            value = eq + 1;

        } else if (lp_option_find(name)->flag) {
            value = NULL;

        } else if (i + 1 < argc) {
            value = argv[++i];

        } else {
            lp_error(cf, "--%s needs a value", name);
            return LP_EXIT_USAGE;
        }

        if (lp_option(cf, commands, name, value) != 0) {
            return LP_EXIT_USAGE;
        }
    }

    /* what each command needs */

    if (commands & (LP_CHECK|LP_CATALOG)) {
        if (cf->base == NULL) {
            lp_error(cf, "%s needs --base URL", cf->command);
            return LP_EXIT_USAGE;
        }
    }

    if (commands & LP_READINESS) {
        if (cf->primary == NULL) {
            lp_error(cf, "readiness needs --primary URL");
            return LP_EXIT_USAGE;
        }
    }

    if (commands & (LP_CHECK|LP_READINESS)) {
        if (cf->family == -1) {
            lp_error(cf, "%s needs --family chat|responses|messages",
                     cf->command);
            return LP_EXIT_USAGE;
        }

        if (cf->model == NULL) {
            lp_error(cf, "%s needs --model NAME", cf->command);
            return LP_EXIT_USAGE;
        }
    }

    if (cf->family == -1) {
        cf->family = LP_FAMILY_CHAT;
    }

    return lp_environment(cf);
}


static lp_option_t *
lp_option_find(const char *name)
{
    lp_option_t  *o;

    for (o = lp_options; o->name; o++) {
        if (strcmp(o->name, name) == 0) {
            return o;
        }
    }

    return NULL;
}


static int
lp_option(lp_conf_t *cf, int commands, const char *name, const char *value)
{
    int           f;
    size_t        n;
    lp_option_t  *o;

    o = lp_option_find(name);

    if (!(o->commands & commands)) {
        lp_error(cf, "--%s does not apply to %s", name, cf->command);
        return -1;
    }

    if (o->flag) {
        if (value) {
            lp_error(cf, "--%s takes no value", name);
            return -1;
        }

        *(int *) ((char *) cf + o->offset) = 1;
        return 0;
    }

    if (strcmp(name, "family") == 0) {
        for (f = 0; f < 3; f++) {
            if (strcmp(value, lp_family_names[f]) == 0) {
                cf->family = f;
                return 0;
            }
        }

        lp_error(cf, "--family: \"%.32s\" is not chat, responses or "
                 "messages", value);
        return -1;
    }

    if (strcmp(name, "header") == 0) {
        if (cf->nheaders == LP_HEADERS_MAX) {
            lp_error(cf, "--header: at most %d", LP_HEADERS_MAX);
            return -1;
        }

        if (lp_check_header(cf, value) != 0) {
            return -1;
        }

        cf->headers[cf->nheaders++] = value;
        return 0;
    }

    if (strcmp(name, "timeout") == 0) {
        if (lp_parse_time(value, &cf->timeout_ms) != 0) {
            lp_error(cf, "--timeout: \"%.32s\" is no time from 1ms to 1h "
                     "(30s, 500ms, 2m)", value);
            return -1;
        }

        return 0;
    }

    if (strcmp(name, "base") == 0 || strcmp(name, "primary") == 0
        || strcmp(name, "fallback") == 0)
    {
        if (lp_check_url(cf, name, value) != 0) {
            return -1;
        }

        if (strcmp(name, "base") == 0) {
            /* "https://gw/" and "https://gw" are one base: argv is ours */
            n = strlen(value);

            while (n > 8 && value[n - 1] == '/') {
                ((char *) value)[--n] = '\0';
            }
        }

    } else if (strcmp(name, "format") == 0) {
        if (strcmp(value, "json") && strcmp(value, "yaml")
            && strcmp(value, "markdown"))
        {
            lp_error(cf, "--format: \"%.32s\" is not json, yaml or "
                     "markdown", value);
            return -1;
        }

    } else if (strcmp(name, "run-id") == 0) {
        if (value[0] == '\0' || strlen(value) > 64
            || strspn(value, "abcdefghijklmnopqrstuvwxyz"
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
               != strlen(value))
        {
            lp_error(cf, "--run-id: 1 to 64 of A-Z a-z 0-9 . _ : -");
            return -1;
        }

    } else if (strcmp(name, "key-env") == 0) {
        if (value[0] == '\0' || (value[0] >= '0' && value[0] <= '9')
            || strspn(value, "abcdefghijklmnopqrstuvwxyz"
                             "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
               != strlen(value) || strlen(value) > 64)
        {
            lp_error(cf, "--key-env: \"%.64s\" is no environment variable "
                     "name", value);
            return -1;
        }

        cf->key_env_given = 1;

    } else if (strcmp(name, "access-log") != 0
               && strcmp(name, "record") != 0)
    {
        if (lp_check_text(cf, name, value,
                          strcmp(name, "model") == 0 ? 256 : 512)
            != 0)
        {
            return -1;
        }
    }

    *(const char **) ((char *) cf + o->offset) = value;

    return 0;
}


/*
 * http or https, no credentials in it (they come from the environment),
 * no query or fragment: the URL goes into the record as given.
 */

static int
lp_check_url(lp_conf_t *cf, const char *opt, const char *url)
{
    size_t       n;
    const char  *host, *slash, *at;

    if (strncmp(url, "http://", 7) == 0) {
        host = url + 7;

    } else if (strncmp(url, "https://", 8) == 0) {
        host = url + 8;

    } else {
        lp_error(cf, "--%s: an http:// or https:// URL", opt);
        return -1;
    }

    slash = strchr(host, '/');
    at = strchr(host, '@');

    if (*host == '\0' || *host == '/') {
        lp_error(cf, "--%s: the URL has no host", opt);
        return -1;
    }

    if (at && (slash == NULL || at < slash)) {
        lp_error(cf, "--%s: no credentials in the URL; the key comes from "
                 "--key-env", opt);
        return -1;
    }

    if (strpbrk(url, "?#")) {
        lp_error(cf, "--%s: no query or fragment in the URL", opt);
        return -1;
    }

    for (n = 0; url[n]; n++) {
        if ((unsigned char) url[n] <= ' ' || url[n] == 0x7f) {
            lp_error(cf, "--%s: a space or control character in the URL",
                     opt);
            return -1;
        }
    }

    if (n > 1024) {
        lp_error(cf, "--%s: the URL is longer than 1024 bytes", opt);
        return -1;
    }

    return 0;
}


static int
lp_check_text(lp_conf_t *cf, const char *opt, const char *v, size_t max)
{
    size_t  n;

    n = strlen(v);

    if (n == 0 || n > max) {
        lp_error(cf, "--%s: 1 to %zu bytes", opt, max);
        return -1;
    }

    for ( /* void */ ; *v; v++) {
        if ((unsigned char) *v < ' ' || *v == 0x7f) {
            lp_error(cf, "--%s: a control character", opt);
            return -1;
        }
    }

    return 0;
}


static int
lp_check_header(lp_conf_t *cf, const char *h)
{
    int          i;
    size_t       n;
    const char  *colon, *p;

    colon = strchr(h, ':');
    n = colon ? (size_t) (colon - h) : 0;

    if (n == 0
        || strspn(h, "abcdefghijklmnopqrstuvwxyz"
                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != n)
    {
        lp_error(cf, "--header: \"Name: value\"");
        return -1;
    }

    for (i = 0; lp_forbidden_headers[i]; i++) {
        if (strlen(lp_forbidden_headers[i]) == n
            && strncasecmp(h, lp_forbidden_headers[i], n) == 0)
        {
            if (i < 5) {
                lp_error(cf, "--header: no %.*s on the command line; the "
                         "key comes from --key-env", (int) n, h);

            } else {
                lp_error(cf, "--header: %.*s is the command's own",
                         (int) n, h);
            }

            return -1;
        }
    }

    for (p = colon + 1; *p; p++) {
        if ((unsigned char) *p < ' ' || *p == 0x7f) {
            lp_error(cf, "--header: a control character in the value");
            return -1;
        }
    }

    if (strlen(h) > 400) {
        lp_error(cf, "--header: longer than 400 bytes");
        return -1;
    }

    return 0;
}


/* nginx's time units as far as a run needs them: ms, s, m, h */

static int
lp_parse_time(const char *s, long *ms)
{
    long   n, scale;
    char  *end;

    if (*s < '0' || *s > '9') {
        return -1;
    }

    errno = 0;
    n = strtol(s, &end, 10);

    if (errno || n <= 0 || n > 3600000) {
        return -1;
    }

    if (strcmp(end, "ms") == 0) {
        scale = 1;

    } else if (*end == '\0' || strcmp(end, "s") == 0) {
        scale = 1000;

    } else if (strcmp(end, "m") == 0) {
        scale = 60000;

    } else if (strcmp(end, "h") == 0) {
        scale = 3600000;

    } else {
        return -1;
    }

    if (n > 3600000 / scale) {
        return -1;
    }

    *ms = n * scale;

    return 0;
}


/*
 * The key is known before any argument is looked at, so that even an
 * error message quoting an argument is checked for it (lp_output()).
 */

static void
lp_key_prescan(lp_conf_t *cf, int argc, char **argv)
{
    int          i;
    const char  *var, *key;

    var = NULL;

    for (i = 2; i < argc; i++) {
        if (strncmp(argv[i], "--key-env=", 10) == 0) {
            var = argv[i] + 10;

        } else if (strcmp(argv[i], "--key-env") == 0 && i + 1 < argc) {
            var = argv[i + 1];

        } else if ((strcmp(argv[i], "--family=messages") == 0
                    || (strcmp(argv[i], "--family") == 0 && i + 1 < argc
                        && strcmp(argv[i + 1], "messages") == 0))
                   && var == NULL)
        {
            var = "ANTHROPIC_API_KEY";
        }
    }

    key = getenv(var ? var : "OPENAI_API_KEY");

    if (key && strlen(key) >= 8) {
        cf->key = key;
    }
}


/* the key, the record file and the access log: before any request */

static int
lp_environment(lp_conf_t *cf)
{
    size_t       n;
    const char  *key, *user;

    if (cf->key_env == NULL) {
        cf->key_env = (cf->family == LP_FAMILY_MESSAGES) ? "ANTHROPIC_API_KEY"
                                                         : "OPENAI_API_KEY";
    }

    key = getenv(cf->key_env);
    cf->key = NULL;

    if (key == NULL || *key == '\0') {
        if (cf->key_env_given) {
            lp_error(cf, "environment variable %s is not set", cf->key_env);
            return LP_EXIT_USAGE;
        }

        key = NULL;
    }

    if (key) {
        n = strlen(key);

        /* a short key would be found in any text: the check needs length */
        if (n < 8 || n > 400
            || strspn(key, "!\"#$%&'()*+,-./0123456789:;<=>?@"
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                           "abcdefghijklmnopqrstuvwxyz{|}~")
               != n)
        {
            lp_error(cf, "the key in %s is not usable: 8 to 400 printable "
                     "characters without spaces", cf->key_env);
            return LP_EXIT_USAGE;
        }

        cf->key = key;
    }

    if (cf->operator_name == NULL) {
        user = getenv("USER");

        if (user && *user && strlen(user) <= 64
            && strcspn(user, "\t\r\n") == strlen(user))
        {
            cf->operator_name = user;
        }
    }

    if (cf->record) {
        cf->record_fd = open(cf->record, O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC,
                             0644);

        if (cf->record_fd == -1) {
            lp_error(cf, "--record %.256s: %s", cf->record, strerror(errno));
            return LP_EXIT_USAGE;
        }
    }

    return 0;
}
