#!/usr/bin/perl

# Error classification (docs/design.md section 2), a unit test of the pure functions in
# src/ngx_http_llm_classify.c, without nginx: a small C driver written
# here is compiled against the build tree's nginx headers and fed cases
# on stdin.  Covers: real provider error bodies (OpenAI, Anthropic, Azure,
# Gemini, vLLM, Mistral, OpenRouter) for rate limits vs drained quota,
# overload, server errors, auth, context length, content filter, bad
# requests; the status-only cases (empty bodies, HTML from proxies); 2xx,
# 3xx and SSE error events (status 0); bodies cut mid-string, a multi-MB
# prefix, malformed JSON, deeply nested junk, invalid UTF-8, values of
# unexpected types; Retry-After and retry-after-ms parsing (seconds,
# fractions, HTTP-dates before and after now, negative, junk, overflow).
# The driver runs built with ASan + UBSan (leak checks included), so a
# memory error in the parser fails the test, and built with nginx's own
# warning flags and -Werror.  Run `make` first: it creates build/nginx.

use strict;
use warnings;

use Test::More;
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use POSIX qw(strftime);

my $root = abs_path(dirname(__FILE__) . '/..');
my $ngx = "$root/build/nginx";

plan(skip_all => "$ngx/objs missing: run `make` first")
    unless -d "$ngx/objs";

my $dir = tempdir('llm-classify-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# the driver's ngx_time(); Retry-After dates are relative to it
my $now = 1700000000;

sub http_date { strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime(shift)) }

my $max = 2147483647;    # NGX_HTTP_LLM_RETRY_AFTER_MAX

###############################################################################

# Classification cases: [ status, body, expected category, name ]

my @classify = (

    # OpenAI: a 429 is a rate limit or a drained account, the body says
    [ 429, '{"error":{"message":"Rate limit reached for gpt-4o-mini in '
        . 'organization org-abc on tokens per min (TPM): Limit 200000, Used '
        . '199000, Requested 1500. Please try again in 150ms.","type":'
        . '"tokens","param":null,"code":"rate_limit_exceeded"}}',
        'rate_limited', 'openai 429 rate_limit_exceeded' ],
    [ 429, '{"error":{"message":"You exceeded your current quota, please '
        . 'check your plan and billing details.","type":"insufficient_quota",'
        . '"param":null,"code":"insufficient_quota"}}',
        'quota_exhausted', 'openai 429 insufficient_quota' ],
    [ 429, '{"error":{"message":"Your credit balance is too low.","type":'
        . '"insufficient_quota","param":null,"code":'
        . '"credit_balance_exhausted"}}',
        'quota_exhausted', 'openai 429 credit_balance_exhausted' ],
    [ 429, '{"error":{"message":"Project spend limit reached.","type":'
        . '"invalid_request_error","param":null,"code":'
        . '"project_spend_limit_exceeded"}}',
        'quota_exhausted', 'openai 429 project_spend_limit_exceeded' ],
    [ 429, '{"error":{"message":"Organization spend limit reached.",'
        . '"type":"invalid_request_error","code":'
        . '"organization_spend_limit_exceeded"}}',
        'quota_exhausted', 'openai 429 organization_spend_limit_exceeded' ],
    [ 429, '{"error":{"message":"Usage limit reached.","type":'
        . '"invalid_request_error","code":'
        . '"organization_usage_limit_exceeded"}}',
        'quota_exhausted', 'openai 429 organization_usage_limit_exceeded' ],
    [ 400, '{"error":{"code":"billing_hard_limit_reached","message":'
        . '"Billing hard limit has been reached","param":null,"type":'
        . '"invalid_request_error"}}',
        'quota_exhausted', 'openai 400 billing_hard_limit_reached' ],
    [ 429, '{"error":{"message":"Please reduce your rate of requests.",'
        . '"type":"invalid_request_error","param":null,"code":"slow_down"}}',
        'rate_limited', 'openai 429 slow_down' ],
    [ 429, '', 'rate_limited', '429 empty body' ],
    [ 400, '{"error":{"message":"This model\'s maximum context length is '
        . '128000 tokens. However, your messages resulted in 130437 tokens. '
        . 'Please reduce the length of the messages.","type":'
        . '"invalid_request_error","param":"messages","code":'
        . '"context_length_exceeded"}}',
        'context_length', 'openai 400 context_length_exceeded' ],
    [ 400, '{"error":{"message":"Invalid \'messages[1].content\': string '
        . 'too long. Expected a string with maximum length 10485760, but '
        . 'got a string with length 12000000 instead.","type":'
        . '"invalid_request_error","param":"messages[1].content","code":'
        . '"string_above_max_length"}}',
        'context_length', 'openai 400 string_above_max_length' ],
    [ 401, '{"error":{"message":"Incorrect API key provided: sk-proj-****'
        . 'abcd. You can find your API key at https://platform.openai.com/'
        . 'account/api-keys.","type":"invalid_request_error","param":null,'
        . '"code":"invalid_api_key"}}',
        'auth_error', 'openai 401 invalid_api_key' ],
    [ 403, '{"error":{"code":"unsupported_country_region_territory",'
        . '"message":"Country, region, or territory not supported","param":'
        . 'null,"type":"request_forbidden"}}',
        'auth_error', 'openai 403 unsupported region' ],
    [ 404, '{"error":{"message":"The model `gpt-5-turbo` does not exist or '
        . 'you do not have access to it.","type":"invalid_request_error",'
        . '"param":null,"code":"model_not_found"}}',
        'invalid_request', 'openai 404 model_not_found' ],
    [ 400, '{"error":{"code":"content_policy_violation","message":"Your '
        . 'request was rejected as a result of our safety system.","param":'
        . 'null,"type":"invalid_request_error"}}',
        'content_filter', 'openai 400 content_policy_violation' ],
    [ 400, '{"error":{"message":"Invalid value for \'temperature\': '
        . 'expected a number.","type":"invalid_request_error","param":'
        . '"temperature","code":"invalid_type"}}',
        'invalid_request', 'openai 400 invalid_type' ],
    [ 500, '{"error":{"message":"The server had an error while processing '
        . 'your request. Sorry about that!","type":"server_error","param":'
        . 'null,"code":null}}',
        'server_error', 'openai 500 server_error' ],
    [ 503, '{"error":{"message":"The engine is currently overloaded, please '
        . 'try again later","type":"server_error","param":null,"code":null}}',
        'overloaded', 'openai 503 engine overloaded' ],

    # Azure OpenAI
    [ 400, '{"error":{"message":"The response was filtered due to the '
        . 'prompt triggering Azure OpenAI\'s content management policy.",'
        . '"type":null,"param":"prompt","code":"content_filter","status":'
        . '400,"innererror":{"code":"ResponsibleAIPolicyViolation",'
        . '"content_filter_result":{"hate":{"filtered":false,"severity":'
        . '"safe"},"jailbreak":{"filtered":true,"detected":true}}}}}',
        'content_filter', 'azure 400 content_filter' ],
    [ 429, '{"error":{"code":"429","message":"Requests to the '
        . 'ChatCompletions_Create Operation under Azure OpenAI API version '
        . '2024-02-01 have exceeded token rate limit of your current '
        . 'pricing tier. Please retry after 6 seconds."}}',
        'rate_limited', 'azure 429 token rate limit' ],

    # Anthropic
    [ 529, '{"type":"error","error":{"type":"overloaded_error","message":'
        . '"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}',
        'overloaded', 'anthropic 529 overloaded_error' ],
    [ 529, "{\n  \"type\": \"error\",\n  \"error\": {\n    \"type\": "
        . "\"overloaded_error\",\n    \"message\": \"Overloaded\"\n  }\n}\n",
        'overloaded', 'anthropic 529 pretty-printed' ],
    [ 500, '{"type":"error","error":{"type":"overloaded_error","message":'
        . '"Overloaded"}}',
        'overloaded', 'overloaded_error whatever the status' ],
    [ 429, '{"type":"error","error":{"type":"rate_limit_error","message":'
        . '"This request would exceed the rate limit for your organization '
        . 'of 50,000 input tokens per minute."}}',
        'rate_limited', 'anthropic 429 rate_limit_error' ],
    [ 429, '{"type":"error","error":{"type":"rate_limit_error","message":'
        . '"You have reached your specified API usage limits.","details":'
        . '{"error_code":"enforced_spend_limit_reached"}}}',
        'quota_exhausted', 'anthropic 429 enforced_spend_limit_reached' ],
    [ 400, '{"type":"error","error":{"type":"invalid_request_error",'
        . '"message":"prompt is too long: 215873 tokens > 200000 maximum"}}',
        'context_length', 'anthropic 400 prompt is too long' ],
    [ 400, '{"type":"error","error":{"type":"invalid_request_error",'
        . '"message":"input length and `max_tokens` exceed context limit: '
        . '197626 + 21333 > 200000, decrease input length or `max_tokens` '
        . 'and try again"}}',
        'context_length', 'anthropic 400 exceed context limit' ],
    [ 400, '{"type":"error","error":{"type":"invalid_request_error",'
        . '"message":"max_tokens: 100000 > 64000, which is the maximum '
        . 'allowed number of output tokens for claude-sonnet-4"}}',
        'invalid_request', 'anthropic 400 max_tokens too large' ],
    [ 401, '{"type":"error","error":{"type":"authentication_error",'
        . '"message":"invalid x-api-key"}}',
        'auth_error', 'anthropic 401 authentication_error' ],
    [ 403, '{"type":"error","error":{"type":"permission_error","message":'
        . '"Your API key does not have permission to use the specified '
        . 'resource."}}',
        'auth_error', 'anthropic 403 permission_error' ],
    [ 400, '{"type":"error","error":{"type":"authentication_error",'
        . '"message":"x-api-key header is required"}}',
        'auth_error', 'authentication_error on a 400' ],
    [ 404, '{"type":"error","error":{"type":"not_found_error","message":'
        . '"model: claude-9"}}',
        'invalid_request', 'anthropic 404 not_found_error' ],
    [ 413, '{"type":"error","error":{"type":"request_too_large","message":'
        . '"Request exceeds the maximum allowed number of bytes."}}',
        'context_length', 'anthropic 413 request_too_large' ],
    [ 500, '{"type":"error","error":{"type":"api_error","message":'
        . '"Internal server error"}}',
        'server_error', 'anthropic 500 api_error' ],

    # Gemini, vLLM, Mistral, OpenRouter, other OpenAI-compatible servers
    [ 429, '{"error":{"code":429,"message":"Resource has been exhausted '
        . '(e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}',
        'rate_limited', 'gemini 429 RESOURCE_EXHAUSTED' ],
    [ 400, '{"error":{"code":400,"message":"The input token count (1200000) '
        . 'exceeds the maximum number of tokens allowed (1048576).",'
        . '"status":"INVALID_ARGUMENT"}}',
        'context_length', 'gemini 400 input token count' ],
    [ 400, '{"object":"error","message":"This model\'s maximum context '
        . 'length is 4096 tokens. However, you requested 5000 tokens (4000 '
        . 'in the messages, 1000 in the completion).","type":'
        . '"BadRequestError","param":null,"code":400}',
        'context_length', 'vllm 400 top-level message' ],
    [ 400, '{"object":"error","message":"Prompt contains 40000 tokens and 0 '
        . 'draft tokens, too large for model with 32768 maximum context '
        . 'length","type":"invalid_request_error","param":null,"code":null}',
        'context_length', 'mistral 400 maximum context length' ],
    [ 400, '{"error":{"code":400,"message":"the request exceeds the '
        . 'available context size, try increasing it","type":'
        . '"exceed_context_size_error"}}',
        'context_length', 'llama.cpp 400 exceed_context_size_error' ],
    [ 402, '{"error":{"code":402,"message":"Insufficient credits. Add more '
        . 'using https://openrouter.ai/settings/credits"}}',
        'quota_exhausted', 'openrouter 402' ],
    [ 429, '{"error":"insufficient_quota"}',
        'quota_exhausted', 'error as a plain string code' ],
    [ 400, '{"error":"Too many tokens in the prompt for this model"}',
        'context_length', 'error as a plain string sentence' ],
    [ 400, '{"error":"Invalid JSON payload"}',
        'invalid_request', 'error as a plain string, nothing known' ],
    [ 429, '{"code":"insufficient_quota","message":"quota exceeded"}',
        'quota_exhausted', 'top-level code' ],
    [ 422, '{"detail":[{"loc":["body","messages"],"msg":"field required",'
        . '"type":"value_error.missing"}]}',
        'invalid_request', 'fastapi 422 detail' ],

    # the status alone
    [ 500, '', 'server_error', '500 empty body' ],
    [ 400, '', 'invalid_request', '400 empty body' ],
    [ 401, '', 'auth_error', '401 empty body' ],
    [ 402, '', 'quota_exhausted', '402 empty body' ],
    [ 405, '', 'invalid_request', '405 empty body' ],
    [ 408, '', 'timeout', '408' ],
    [ 409, '{"error":{"message":"lock timeout"}}',
        'server_error', '409 conflict, retried like 5xx by the SDKs' ],
    [ 413, "<html><body>413 Request Entity Too Large</body></html>",
        'context_length', '413 from a proxy' ],
    [ 501, '', 'server_error', '501' ],
    [ 503, "<html>\r\n<head><title>503 Service Temporarily Unavailable"
        . "</title></head>\r\n<body>\r\n<center><h1>503 Service "
        . "Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n",
        'overloaded', '503 with an HTML body' ],
    [ 502, "<html><head><title>502 Bad Gateway</title></head><body>"
        . "cloudflare</body></html>",
        'server_error', '502 with an HTML body' ],
    [ 504, 'upstream request timeout', 'server_error', '504 plain text' ],
    [ 404, "<html><body><h1>404 Not Found</h1></body></html>",
        'invalid_request', '404 HTML from a wrong proxy_pass path' ],
    [ 599, '', 'server_error', '599' ],

    # not errors, not HTTP errors
    [ 200, '{"error":{"type":"insufficient_quota"}}',
        '-', '200 is none whatever the body' ],
    [ 204, '', '-', '204' ],
    [ 301, '<html>Moved</html>', 'invalid_response', '301' ],
    [ 100, '', 'invalid_response', '100' ],
    [ 600, '', 'invalid_response', '600' ],

    # status 0: the data of an SSE error event, the body alone speaks
    [ 0, '{"type":"error","error":{"type":"overloaded_error","message":'
        . '"Overloaded"}}',
        'overloaded', 'sse anthropic overloaded_error' ],
    [ 0, '{"type":"error","error":{"type":"api_error","message":'
        . '"Internal server error"}}',
        'server_error', 'sse anthropic api_error' ],
    [ 0, '{"error":{"message":"The server had an error while processing '
        . 'your request.","type":"server_error"}}',
        'server_error', 'sse openai server_error' ],
    [ 0, '{"type":"error","error":{"type":"rate_limit_error","message":'
        . '"Rate limited"}}',
        'rate_limited', 'sse rate_limit_error' ],
    [ 0, '{"type":"error","error":{"type":"invalid_request_error",'
        . '"message":"bad"}}',
        'invalid_request', 'sse invalid_request_error' ],
    [ 0, '{"type":"error","error":{"type":"something_new"}}',
        'server_error', 'sse unknown error type' ],
    [ 0, '{"object":"error","message":"boom"}',
        'server_error', 'sse object error' ],
    [ 0, '{"id":"chatcmpl-1","choices":[]}',
        'invalid_response', 'sse not an error object' ],
    [ 0, 'garbage', 'invalid_response', 'sse garbage' ],
    [ 0, '', 'invalid_response', 'sse empty' ],

    # cut bodies: what came before the cut counts, a cut value does not
    [ 429, '{"error":{"message":"You exceeded your current quota, please '
        . 'check your plan and billing details.","type":"insufficient_quota",'
        . '"param":null,"code":"insuffi',
        'quota_exhausted', 'cut in the middle of a later string' ],
    [ 429, '{"error":{"message":"You exceeded your current quota","type":'
        . '"insufficient_qu',
        'rate_limited', 'cut in the middle of the type' ],
    [ 429, '{"error":{"type":"insufficient_quota"',
        'quota_exhausted', 'cut right after the value' ],
    [ 400, '{"error":{"message":"This model\'s maximum context length is '
        . '8192 tok',
        'invalid_request', 'cut in the message: not seen' ],
    [ 400, '{"error":{"type":"invalid_request_error","code":'
        . '"context_length_exceeded","message":"' . ('x' x (5 << 20)),
        'context_length', 'multi-MB prefix, cut in the message' ],
    [ 429, '{"padding":"' . ('a' x (3 << 20)) . '","error":{"type":'
        . '"insufficient_quota"}}',
        'quota_exhausted', 'multi-MB body, error at the end' ],
    [ 500, '{"data":[' . join(',', (12345) x 400000),
        'server_error', 'multi-MB array prefix' ],

    # malformed JSON, junk, unexpected types
    [ 429, '{"error":{"type":"insufficient_quota",,}}',
        'quota_exhausted', 'malformed after the value' ],
    [ 429, '{"error":{"type" "insufficient_quota"}}',
        'rate_limited', 'malformed before the value' ],
    [ 400, "{error: {type: 'content_filter'}}",
        'invalid_request', 'javascript, not JSON' ],
    [ 400, '[' x 100000, 'invalid_request', 'deeply nested arrays' ],
    [ 400, '{"a":' x 50000, 'invalid_request', 'deeply nested objects' ],
    [ 429, '{"error":{"type":"insufficient_quota"},"x":' . ('[' x 100000),
        'quota_exhausted', 'deep junk after the error' ],
    [ 429, '{"x":' . ('[' x 40) . (']' x 40) . ',"error":{"type":'
        . '"insufficient_quota"}}',
        'rate_limited', 'deep junk before the error stops the parse' ],
    [ 429, '{"x":' . ('[' x 20) . (']' x 20) . ',"error":{"type":'
        . '"insufficient_quota"}}',
        'quota_exhausted', 'moderate nesting before the error' ],
    [ 429, '{"error":{"type":["insufficient_quota"],"code":{"x":'
        . '"insufficient_quota"}}}',
        'rate_limited', 'type an array, code an object' ],
    [ 429, '{"error":{"code":429,"type":true,"message":null}}',
        'rate_limited', 'code a number, type a boolean' ],
    [ 429, '{"error":{"code":99999999999999999999999,"param":1e999,'
        . '"type":"insufficient_quota"}}',
        'quota_exhausted', 'huge numbers before the type' ],
    [ 429, '{"error":42}', 'rate_limited', 'error a number' ],
    [ 400, '{"error":null}', 'invalid_request', 'error null' ],
    [ 429, '[{"error":{"type":"insufficient_quota"}}]',
        'rate_limited', 'top-level array is not an error object' ],
    [ 429, '{"data":{"error":{"type":"insufficient_quota"}}}',
        'rate_limited', 'nested error member is not the error' ],
    [ 429, "{\"error\":{\"message\":\"bad \xff\xfe bytes\",\"code\":"
        . '"insufficient_quota"}}',
        'quota_exhausted', 'invalid UTF-8 in the message' ],
    [ 429, '{"error":{"ty\\u0070e":"insufficient_quota"}}',
        'quota_exhausted', 'escaped member name' ],
    [ 429, '{"error":{"type":"insufficient_quota\\u0000"}}',
        'rate_limited', 'NUL inside a value' ],
    [ 429, '{"error":{"type":"INSUFFICIENT_QUOTA"}}',
        'rate_limited', 'codes are case-sensitive' ],
    [ 400, '{"error":{"message":"' . ('y' x 2000) . ' context window"}}',
        'invalid_request', 'phrase past the searched part of a message' ],
    [ 400, "\x00\x01\x02\xff" x 1000, 'invalid_request', 'binary junk' ],
    [ 400, '{"error":"too many tokens"', 'context_length',
        'a string that ends where the body ends' ],
    [ 400, '{"error":{"message":"Context Window exceeded"',
        'context_length', 'a message that ends where the body ends' ],
);

# Retry-After cases: [ value, ms flag, expected, name ]

my @retry_after = (
    [ '7', 0, 7000, 'seconds' ],
    [ '0', 0, 0, 'zero' ],
    [ '1.5', 0, 1500, 'fractional seconds' ],
    [ '0.0001', 0, 1, 'a fraction below 1 ms rounds up' ],
    [ '1.0001', 0, 1001, 'a fraction rounds up' ],
    [ '2.250', 0, 2250, 'trailing zero' ],
    [ ' 3 ', 0, 3000, 'spaces around' ],
    [ "\t4\t", 0, 4000, 'tabs around' ],
    [ '-1', 0, 'error', 'negative' ],
    [ '+5', 0, 'error', 'a sign' ],
    [ 'abc', 0, 'error', 'junk' ],
    [ '', 0, 'error', 'empty' ],
    [ '   ', 0, 'error', 'blank' ],
    [ '7s', 0, 'error', 'a unit after the number' ],
    [ '1.', 0, 'error', 'a dot and no digits' ],
    [ '.5', 0, 'error', 'no digits before the dot' ],
    [ '1,5', 0, 'error', 'a comma' ],
    [ '1e3', 0, 'error', 'an exponent' ],
    [ '1 2', 0, 'error', 'two numbers' ],
    [ '2147483', 0, 2147483000, 'largest whole seconds' ],
    [ '2147484', 0, $max, 'saturates just past the maximum' ],
    [ '99999999999999999999', 0, $max, 'overflow saturates' ],
    [ '99999999999999999999.5', 0, $max, 'overflow with a fraction' ],
    [ http_date($now + 30), 0, 30000, 'HTTP-date in the future' ],
    [ http_date($now - 30), 0, 0, 'HTTP-date in the past' ],
    [ http_date($now), 0, 0, 'HTTP-date now' ],
    [ 'Sun, 06 Nov 1994 08:49:37 GMT', 0, 0, 'RFC 9110 example date' ],
    [ ' ' . http_date($now + 5) . ' ', 0, 5000, 'HTTP-date with spaces' ],
    [ http_date($now + 100 * 365 * 86400), 0, $max, 'date far ahead' ],
    [ 'Tue, 99 Foo 2023 99:99:99 GMT', 0, 'error', 'broken HTTP-date' ],
    [ '250', 1, 250, 'retry-after-ms' ],
    [ '250.5', 1, 251, 'retry-after-ms fraction rounds up' ],
    [ '0', 1, 0, 'retry-after-ms zero' ],
    [ '-5', 1, 'error', 'retry-after-ms negative' ],
    [ 'abc', 1, 'error', 'retry-after-ms junk' ],
    [ http_date($now + 30), 1, 'error', 'retry-after-ms is never a date' ],
    [ '99999999999999999999', 1, $max, 'retry-after-ms overflow' ],
    [ '2147483647', 1, $max, 'retry-after-ms at the maximum' ],
);

my @names = qw(- connect_error timeout rate_limited quota_exhausted
    overloaded server_error auth_error invalid_request context_length
    content_filter stream_interrupted invalid_response client_closed);

###############################################################################

# The driver.  ngx_time() reads ngx_cached_time, set here from argv[1].
# ngx_parse_http_time() lives in the nginx binary (nginx-dev ships only
# headers): a stand-in parses the RFC 1123 form providers send.  Bodies
# are copied into buffers of their exact size so ASan catches a read
# past len.

my $driver_c = <<'EOF';
#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_llm_classify.h"

static ngx_time_t  now;
volatile ngx_time_t  *ngx_cached_time = &now;

time_t
ngx_parse_http_time(u_char *value, size_t len)
{
    char       buf[64], *end;
    struct tm  tm;

    if (len >= sizeof(buf)) {
        return NGX_ERROR;
    }

    memcpy(buf, value, len);
    buf[len] = '\0';
    memset(&tm, 0, sizeof(tm));

    end = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0') {
        return NGX_ERROR;
    }

    return timegm(&tm);
}

int
main(int argc, char **argv)
{
    char            line[128], kind;
    long            arg;
    size_t          len;
    u_char         *buf;
    ngx_uint_t      i, err;
    ngx_msec_int_t  ms;

    now.sec = atol(argv[1]);

    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "%c %ld %zu", &kind, &arg, &len) != 3) {
            fprintf(stderr, "bad line: %s", line);
            return 2;
        }

        buf = len ? malloc(len) : NULL;
        if (len && (buf == NULL || fread(buf, 1, len, stdin) != len)) {
            fprintf(stderr, "short read\n");
            return 2;
        }

        (void) getchar();

        switch (kind) {

        case 'c':
            err = ngx_http_llm_classify_response(arg, buf, len);
            if (err >= NGX_HTTP_LLM_ERR_LAST) {
                printf("bad %lu\n", (unsigned long) err);
            } else {
                printf("%s\n",
                       (char *) ngx_http_llm_err_names[err].data);
            }
            break;

        case 'r':
            ms = ngx_http_llm_parse_retry_after(buf, len, arg);
            if (ms == NGX_ERROR) {
                printf("error\n");
            } else {
                printf("%ld\n", (long) ms);
            }
            break;

        default: /* 'n' */
            for (i = 0; ngx_http_llm_err_names[i].len; i++) {
                printf("%s%s", i ? " " : "",
                       (char *) ngx_http_llm_err_names[i].data);
            }
            printf(" %lu\n", (unsigned long) i);
        }

        free(buf);
    }

    return 0;
}
EOF

open(my $fh, '>', "$dir/driver.c") or die "driver.c: $!";
print $fh $driver_c;
close $fh;

my @incs = map { ('-I', $_) } "$ngx/src/core", "$ngx/src/event",
    "$ngx/src/event/modules", "$ngx/src/os/unix", "$ngx/objs", "$root/src";

my @srcs = ("$dir/driver.c", "$root/src/ngx_http_llm_classify.c");

# nginx's own warning flags, as the module is built
my @plain = qw(-O2 -W -Wall -Wpointer-arith -Wno-unused-parameter -Werror);
my @asan = ('-O1', '-g', '-fno-omit-frame-pointer',
    '-fsanitize=address,undefined', '-fno-sanitize-recover=all');

my %builds = (
    plain => [ @plain ],
    asan => [ @asan ],
);

for my $build (sort keys %builds) {
    my $out = "$dir/driver-$build";
    my $rc = system("gcc @{ $builds{$build} } @incs @srcs -o $out -lyajl "
        . "> $dir/cc-$build.log 2>&1");

    ok($rc == 0, "driver builds ($build)")
        or diag(slurp("$dir/cc-$build.log"));
}

# one input for all cases: "kind arg len\n" then len bytes and "\n"
my $input = "n 0 0\n\n";

for my $c (@classify) {
    $input .= 'c ' . $c->[0] . ' ' . length($c->[1]) . "\n" . $c->[1] . "\n";
}

for my $r (@retry_after) {
    $input .= 'r ' . $r->[1] . ' ' . length($r->[0]) . "\n" . $r->[0] . "\n";
}

open($fh, '>:raw', "$dir/input") or die "input: $!";
print $fh $input;
close $fh;

local $ENV{ASAN_OPTIONS} = 'detect_leaks=1:abort_on_error=0';
local $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1:halt_on_error=1';

# ASan sees our code's accesses and every leak, not yajl's own reads of
# the body (yajl is not instrumented): valgrind sees those, when present

my @runs = ([ 'asan', '' ], [ 'plain', '' ]);

if (system('valgrind --version > /dev/null 2>&1') == 0) {
    push @runs, [ 'plain', 'valgrind -q --error-exitcode=99 '
        . '--leak-check=full --errors-for-leak-kinds=definite,indirect' ];

} else {
    diag('valgrind not found: yajl\'s reads of the body go unchecked');
}

for my $run (@runs) {
    my ($build, $wrapper) = @$run;
    my $bin = "$dir/driver-$build";
    my $name = $wrapper ? "$build, valgrind" : $build;
    my $tag = $wrapper ? "$build-valgrind" : $build;

    SKIP: {
        skip("driver ($build) did not build", 3 + @classify + @retry_after)
            unless -x $bin;

        my $rc = system("$wrapper $bin $now < $dir/input > $dir/out-$tag "
            . "2> $dir/err-$tag");
        my $err = slurp("$dir/err-$tag");

        is($rc, 0, "driver exits cleanly ($name)");
        is($err, '', "no sanitizer, valgrind or driver report ($name)")
            or diag($err);

        my @out = split /\n/, slurp("$dir/out-$tag");

        is(shift(@out) // '', join(' ', @names) . ' ' . scalar(@names),
            "category names ($name)");

        for my $c (@classify) {
            is(shift(@out) // '(none)', $c->[2],
                "$c->[3]: $c->[0] -> $c->[2] ($name)");
        }

        for my $r (@retry_after) {
            my $what = $r->[1] ? 'retry-after-ms' : 'Retry-After';
            is(shift(@out) // '(none)', $r->[2],
                "$r->[3]: $what \"$r->[0]\" -> $r->[2] ($name)");
        }
    }
}

done_testing;

###############################################################################

sub slurp {
    my ($name) = @_;
    open(my $fh, '<:raw', $name) or return '';
    local $/;
    return scalar <$fh>;
}

###############################################################################
