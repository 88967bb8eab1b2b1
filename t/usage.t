#!/usr/bin/perl

# What the module reads from good answers as they pass (docs/logging.md, issue 4
# items 3-5), through nginx: $llm_usage_input_tokens/_output_tokens,
# $llm_response_model, $llm_response_shape, $llm_ttft for a chat
# completion, chat streams with and without include_usage, an Anthropic
# message stream (message_start + message_delta), a Responses stream
# (response.completed); answers of the wrong shape; streams that carry
# the provider's own error event (Anthropic event: error, OpenAI data:
# {"error":...}) reach the client as sent, are not retried, and are
# recorded as stream_interrupted; a chat stream that ends without
# [DONE] gets the gateway's error event.  Prompt and completion text
# never reach a log.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format usage '$arg_id|$status|$llm_usage_input_tokens|'
                     '$llm_usage_output_tokens|$llm_response_model|'
                     '$llm_response_shape|$llm_ttft|$llm_attempts|'
                     '$llm_error_type';
    access_log %%TESTDIR%%/logs/access.log usage;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider tries=2;
            llm_backoff base=1ms max=5ms;
        }

        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/provider tries=2;
            llm_backoff base=1ms max=5ms;
        }

        location = /v1/responses {
            llm_route responses;
            llm_target /_llm/provider;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/x;
        }
    }
}
EOF

my $PROMPT = 'CANARY-prompt-77e1';
my $COMPLETION = 'CANARY-completion-91b4';
$t->canary($PROMPT, $COMPLETION);

my %ANSWER = (
    chat => [ 'application/json',
        '{"id":"chatcmpl-1","object":"chat.completion","created":1,'
        . '"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
        . '"message":{"role":"assistant","content":"' . $COMPLETION
        . ' \"usage\": {\"prompt_tokens\": 999}"},"finish_reason":"stop"}],'
        . '"usage":{"prompt_tokens":12,"completion_tokens":34,'
        . '"total_tokens":46}}' ],

    'chat-error-200' => [ 'application/json',
        '{"error":{"message":"oops","type":"server_error"}}' ],

    'chat-on-messages' => [ 'application/json',
        '{"object":"chat.completion","model":"m","choices":[],'
        . '"usage":{"prompt_tokens":1,"completion_tokens":2}}' ],

    'chat-stream-usage' => [ 'text/event-stream', sse(
        map({ qq({"object":"chat.completion.chunk","model":"gpt-4o",)
              . qq("choices":[{"index":0,"delta":{"content":"$COMPLETION"}}],)
              . qq("usage":null}) } 1 .. 3),
        '{"object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
        . '"usage":{"prompt_tokens":7,"completion_tokens":3}}',
        '[DONE]') ],

    'chat-stream' => [ 'text/event-stream', sse(
        map({ qq({"object":"chat.completion.chunk","model":"gpt-4o",)
              . qq("choices":[{"index":0,"delta":{"content":"x"}}]}) } 1 .. 3),
        '[DONE]') ],

    'chat-stream-no-done' => [ 'text/event-stream', sse(
        map({ qq({"object":"chat.completion.chunk","model":"gpt-4o",)
              . qq("choices":[{"index":0,"delta":{"content":"x"}}]}) } 1 .. 2)
    ) ],

    'chat-stream-error' => [ 'text/event-stream', sse(
        '{"object":"chat.completion.chunk","model":"gpt-4o","choices":'
        . '[{"index":0,"delta":{"content":"x"}}]}',
        '{"error":{"message":"overloaded","type":"server_error"}}') ],

    'messages-stream' => [ 'text/event-stream',
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"
        . "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\","
        . "\"model\":\"claude-3-5-haiku-20241022\",\"content\":[],"
        . "\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"
        . "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        . "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
        . "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\""
        . "$COMPLETION\"}}\n\n"
        . "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
        . "{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n"
        . "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n" ],

    'messages-stream-error' => [ 'text/event-stream',
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"
        . "{\"type\":\"message\",\"model\":\"claude-3-5-haiku\",\"content\":[],"
        . "\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"
        . "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
        . "\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n" ],

    'responses-stream' => [ 'text/event-stream',
        "event: response.created\ndata: {\"type\":\"response.created\","
        . "\"response\":{\"object\":\"response\",\"model\":\"gpt-4.1\","
        . "\"output\":[]}}\n\n"
        . "event: response.output_text.delta\ndata: {\"type\":"
        . "\"response.output_text.delta\",\"delta\":\"$COMPLETION\"}\n\n"
        . "event: response.completed\ndata: {\"type\":\"response.completed\","
        . "\"response\":{\"object\":\"response\",\"model\":\"gpt-4.1\","
        . "\"output\":[],\"usage\":{\"input_tokens\":40,"
        . "\"output_tokens\":60}}}\n\n" ],
);

sub sse { join '', map { "data: $_\n\n" } @_ }

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => sub {
    my ($req) = @_;
    my $a = $ANSWER{$req->{headers}{'x-case'}} or return [ 500, [], 'no' ];
    return { status => 200, headers => [ 'Content-Type' => $a->[0] ],
             chunked => ($a->[0] =~ /stream/ ? 100 : 0), body => $a->[1] };
});

$t->run;

my $port = $t->port(8080);

sub post {
    my ($path, $id, $case) = @_;
    my $r = parse_response(http_post(
        "$path?id=$id",
        qq({"model":"m","stream":true,"messages":[{"role":"user",)
        . qq("content":"$PROMPT"}]}),
        port => $port, headers => { 'X-Case' => $case }));
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/) // '';
    my @f = split /\|/, $line, -1;
    $r->{log} = { status => $f[1], input => $f[2], output => $f[3],
                  model => $f[4], shape => $f[5], ttft => $f[6],
                  attempts => $f[7], error => $f[8] };
    return $r;
}

my @cases = (
    # path, case, input, output, model, shape
    [ '/v1/chat/completions', 'chat', 12, 34, 'gpt-4o-mini-2024-07-18',
      'ok' ],
    [ '/v1/chat/completions', 'chat-stream-usage', 7, 3, 'gpt-4o', 'ok' ],
    [ '/v1/chat/completions', 'chat-stream', '-', '-', 'gpt-4o', 'ok' ],
    [ '/v1/messages', 'messages-stream', 25, 15,
      'claude-3-5-haiku-20241022', 'ok' ],
    [ '/v1/responses', 'responses-stream', 40, 60, 'gpt-4.1', 'ok' ],
    [ '/v1/chat/completions', 'chat-error-200', '-', '-', '-', 'mismatch' ],
    [ '/v1/messages', 'chat-on-messages', 1, 2, 'm', 'mismatch' ],
);

for my $c (@cases) {
    my ($path, $case, $in, $out, $model, $shape) = @$c;

    for my $round (1, 2) {
        my $r = post($path, "$case-$round", $case);
        my $e = $r->{log};

        is($r->{status}, 200, "$case: 200 ($round)");
        is($r->{body}, $ANSWER{$case}[1], "$case: the answer unchanged");
        is($e->{input}, $in, "$case: input tokens ($round)");
        is($e->{output}, $out, "$case: output tokens ($round)");
        is($e->{model}, $model, "$case: response model ($round)");
        is($e->{shape}, $shape, "$case: shape ($round)");
        like($e->{ttft}, qr/^\d+\.\d{3}$/, "$case: ttft ($round)");
        is($e->{error}, '-', "$case: no error ($round)");
    }
}

# the provider's own error event: passed on, not retried, recorded

for my $c ([ '/v1/messages', 'messages-stream-error' ],
           [ '/v1/chat/completions', 'chat-stream-error' ])
{
    my ($path, $case) = @$c;
    my $r = post($path, $case, $case);
    my $e = $r->{log};

    is($r->{body}, $ANSWER{$case}[1], "$case: the events as sent, no more");
    ok($r->{complete}, "$case: the end of the stream");
    is($e->{attempts}, 1, "$case: not retried");
    is($e->{error}, 'stream_interrupted', "$case: recorded");
}

# a chat stream that ends without [DONE]: the gateway's error event

{
    my $r = post('/v1/chat/completions', 'no-done', 'chat-stream-no-done');

    is($r->{body}, $ANSWER{'chat-stream-no-done'}[1]
       . 'data: {"error":{"message":"the provider\'s stream was '
       . 'interrupted","type":"server_error","param":null,'
       . '"code":"stream_interrupted"}}' . "\n\n",
       'no [DONE]: the gateway\'s error event after the events');
    is($r->{log}{error}, 'stream_interrupted', 'no [DONE]: recorded');
}

done_testing;
