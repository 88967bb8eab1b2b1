#!/usr/bin/perl

# llm_check_answer (docs/directives.md): with it on, a good answer that
# is not a stream, up to 64 KB, is held and judged by its shape before
# the client gets it.  An error object in a 200, another family's object
# (a chat completion on a messages route) or a body that is no JSON is
# invalid_response: retried or fallen back from, and the next attempt's
# answer goes to the client.  An answer of the family's shape is passed
# on unchanged (status, headers, Content-Length, body; usage read,
# $llm_ttft set), chunked or not, with proxy_buffering on or off.
# Off (the default): the same answers go to the client as they are.  An
# answer longer than the held size (chunked, length unknown) goes on
# unchecked and whole; so does the answer of an attempt no other attempt
# could follow.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Digest::MD5 qw(md5_hex);

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%LOG_FORMAT%%
    log_format usage '$arg_id|$llm_usage_input_tokens|$llm_usage_output_tokens|'
                     '$llm_response_shape|$llm_ttft';
    access_log %%TESTDIR%%/logs/access.log engine;
    access_log %%TESTDIR%%/logs/usage.log usage;

    proxy_set_header X-Attempt $llm_attempts;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;
        llm_check_answer on;

        location = /chat/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/t tries=2;
            llm_fallback /_llm/chat_ok;
        }

        location = /err/v1/chat/completions {
            llm_route err;
            llm_target /_llm/err200;
            llm_fallback /_llm/chat_ok;
        }

        location = /off/v1/chat/completions {
            llm_route off;
            llm_target /_llm/err200;
            llm_fallback /_llm/chat_ok;
            llm_check_answer off;
        }

        location = /html/v1/chat/completions {
            llm_route html;
            llm_target /_llm/html200;
            llm_fallback /_llm/chat_ok;
        }

        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/chat_ok;
            llm_fallback /_llm/anth_ok;
        }

        location = /last/v1/chat/completions {
            llm_route last;
            llm_target /_llm/err200;
        }

        location = /noretry/v1/chat/completions {
            llm_route noretry;
            llm_target /_llm/err200;
            llm_fallback /_llm/chat_ok;
            llm_retry_on server_error;
        }

        location = /nobuf/v1/chat/completions {
            llm_route nobuf;
            llm_target /_llm/nobuf tries=3;
        }

        location /_llm/nobuf {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/nobuf/v1/chat/completions;
            proxy_buffering off;
        }

        location ~ ^/_llm/(t)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }

        location /_llm/ {
            internal;
            default_type application/json;

            location = /_llm/chat_ok {
                internal;
                return 200 '{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}';
            }

            location = /_llm/anth_ok {
                internal;
                return 200 '{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":2}}';
            }

            location = /_llm/err200 {
                internal;
                return 200 '{"error":{"message":"upstream model failed","type":"server_error","param":null,"code":null}}';
            }

            location = /_llm/html200 {
                internal;
                default_type text/html;
                return 200 '<html><body>maintenance</body></html>';
            }
        }
    }
}
EOF

my $port = engine_run($t, $conf);

my $REQ = '{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user",'
    . '"content":"the end"}]}';

sub post {
    my ($uri, %h) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { %h }, timeout => 20));
}

sub usage_entry {
    my ($id) = @_;
    my $line = $t->wait_for_log('logs/usage.log', qr/^\Q$id\E\|/, 5);
    return [ split /\|/, $line // '', -1 ];
}

for my $round (1, 2) {

    # an error object in a 200: the fallback's answer
    my $r = post("/err/v1/chat/completions?id=err-$round");
    is($r->{status}, 200, "error in a 200: status ($round)");
    like($r->{body}, qr/"object":"chat.completion"/,
         "error in a 200: the fallback's answer ($round)");
    is($r->{headers}{'content-length'}, length $r->{body},
       "error in a 200: Content-Length ($round)");
    my $e = log_entry($t, "err-$round");
    is($e->{errors}, 'invalid_response, -',
       "error in a 200: attempt errors ($round)");
    is($e->{decision}, 'fallback', "error in a 200: decision ($round)");
    is($e->{statuses}, '200, 200', "error in a 200: statuses ($round)");
    my $u = usage_entry("err-$round");
    is_deeply([ @$u[0 .. 3] ], [ "err-$round", 7, 1, 'ok' ],
              "error in a 200: usage of the answer given ($round)");
    like($u->[4], qr/^\d+\.\d{3}$/, "error in a 200: \$llm_ttft ($round)");

    # not JSON
    $r = post("/html/v1/chat/completions?id=html-$round");
    like($r->{body}, qr/"object":"chat.completion"/,
         "html in a 200: the fallback's answer ($round)");
    is(log_entry($t, "html-$round")->{errors}, 'invalid_response, -',
       "html in a 200: attempt errors ($round)");

    # another family's object on a messages route
    $r = post("/v1/messages?id=msg-$round");
    is($r->{status}, 200, "chat answer on messages: status ($round)");
    like($r->{body}, qr/^\{"id":"msg_1","type":"message"/,
         "chat answer on messages: the Anthropic fallback's ($round)");
    is(log_entry($t, "msg-$round")->{errors}, 'invalid_response, -',
       "chat answer on messages: attempt errors ($round)");

    # off: passed on as it is
    $r = post("/off/v1/chat/completions?id=off-$round");
    is($r->{status}, 200, "off: status ($round)");
    like($r->{body}, qr/^\{"error":/, "off: the 200 error object ($round)");
    is(log_entry($t, "off-$round")->{errors}, '-',
       "off: one attempt, no error ($round)");
}

# a good answer checked: passed on unchanged, after a retry of a bad one

{
    my $r = post('/chat/v1/chat/completions?id=retry',
                 'X-Case' => '1:500+status=200;*:ok');
    is($r->{status}, 200, 'retry: status');
    is($r->{body}, completion(), 'retry: the second attempt\'s answer');
    is($r->{headers}{'x-mock-attempt'}, 2, 'retry: its headers');
    is($r->{headers}{'content-length'}, length completion(),
       'retry: Content-Length');
    my $e = log_entry($t, 'retry');
    is($e->{errors}, 'invalid_response, -', 'retry: attempt errors');
    is($e->{targets}, '/_llm/t, /_llm/t', 'retry: the same target again');
    is($e->{decision}, 'retry', 'retry: decision');
    is(usage_entry('retry')->[3], 'ok', 'retry: $llm_response_shape');
    like(usage_entry('retry')->[4], qr/^\d+\.\d{3}$/, 'retry: $llm_ttft');

    $r = post('/chat/v1/chat/completions?id=good', 'X-Case' => '*:ok');
    is($r->{body}, completion(), 'good: the answer');
    $e = log_entry($t, 'good');
    is($e->{errors}, '-', 'good: one attempt');
    is($e->{decision}, '-', 'good: no decision');
}

# chunked, through a target without proxy_buffering: checked all the
# same, the good one (a third attempt could follow) replayed with its
# length

for my $round (1, 2) {
    my $r = post("/nobuf/v1/chat/completions?id=nobuf-$round",
                 'X-Case' => '1:500+status=200+chunked=1;*:ok+chunked=1');
    is($r->{status}, 200, "nobuf: status ($round)");
    is($r->{body}, completion(), "nobuf: the second answer ($round)");
    is($r->{headers}{'content-length'}, length completion(),
       "nobuf: replayed with its length ($round)")
        or diag(join "\n", map { "$_->[0]: $_->[1]" } @{$r->{header_list}});
    is(log_entry($t, "nobuf-$round")->{errors}, 'invalid_response, -',
       "nobuf: attempt errors ($round)");
}

# longer than the held size: unchecked, whole

for my $chunked (0, 1) {
    my $id = "big-$chunked";
    my $case = '*:ok+size=100000' . ($chunked ? '+chunked=1' : '');
    my $r = post("/chat/v1/chat/completions?id=$id", 'X-Case' => $case);
    my $want = completion(content => 'x' x 100000);
    is($r->{status}, 200, "big ($chunked): status");
    is(length $r->{body}, length $want, "big ($chunked): length");
    is(md5_hex($r->{body}), md5_hex($want), "big ($chunked): whole");
    is(log_entry($t, $id)->{errors}, '-', "big ($chunked): one attempt");
}

# no attempt may follow: passed on unchecked

{
    my $r = post('/last/v1/chat/completions?id=last');
    like($r->{body}, qr/^\{"error":/, 'last: the answer as it is');
    is(log_entry($t, 'last')->{errors}, '-', 'last: unchecked');

    $r = post('/noretry/v1/chat/completions?id=noretry');
    like($r->{body}, qr/^\{"error":/,
         'invalid_response not in llm_retry_on: the answer as it is');
}

done_testing;
