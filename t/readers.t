#!/usr/bin/perl

# What the answer and request readers take from JSON, through nginx
# (issue 11 item 12, docs/logging.md): "data: [DONE]" ends a chat stream
# only, so a Responses or messages stream with it but without its own end
# event (response.completed, message_stop) is stream_interrupted; a usage
# count that is not a valid JSON count (1e999, -5, 12abc, 1.5, 0x10, 01,
# a string, ...) is not found ("-"), never a number taken from its first
# digits; a model, requested or answered, with raw invalid UTF-8 or a
# surrogate escape that is not half of a pair (alone, reversed, a high
# one before another escape or at the end) is not found, not cut or
# patched; proper pairs and NUL decode.  Every line of an escape=json
# log, which passes UTF-8 through, must then be strict UTF-8.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Encode ();

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format readers '$arg_id|$status|$llm_usage_input_tokens|'
                       '$llm_usage_output_tokens|$llm_response_model|'
                       '$llm_model|$llm_error_type|$llm_response_shape';
    log_format readers_json escape=json
                       '{"id":"$arg_id","model":"$llm_model",'
                       '"response_model":"$llm_response_model",'
                       '"target_model":"$llm_target_model"}';
    access_log %%TESTDIR%%/logs/access.log readers;
    access_log %%TESTDIR%%/logs/json.log readers_json;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider;
        }

        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/provider;
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

my $PROMPT = 'CANARY-prompt-5a0c';
my $COMPLETION = 'CANARY-completion-e7d2';
$t->canary($PROMPT, $COMPLETION);

sub sse { join '', map { ref $_ ? "event: $_->[0]\ndata: $_->[1]\n\n"
                                 : "data: $_\n\n" } @_ }

my $responses_created = [ 'response.created',
    '{"type":"response.created","response":{"object":"response",'
    . '"model":"gpt-4.1","output":[]}}' ];
my $responses_delta = [ 'response.output_text.delta',
    qq({"type":"response.output_text.delta","delta":"$COMPLETION"}) ];
my $responses_completed = [ 'response.completed',
    '{"type":"response.completed","response":{"object":"response",'
    . '"model":"gpt-4.1","output":[],"usage":{"input_tokens":40,'
    . '"output_tokens":60}}}' ];

my $messages_start = [ 'message_start',
    '{"type":"message_start","message":{"type":"message",'
    . '"model":"claude-3-5-haiku","content":[],'
    . '"usage":{"input_tokens":25,"output_tokens":1}}}' ];
my $messages_delta = [ 'content_block_delta',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    . qq("text":"$COMPLETION"}}) ];
my $messages_stop = [ 'message_stop', '{"type":"message_stop"}' ];

my $chat_chunk = '{"object":"chat.completion.chunk","model":"gpt-4o",'
    . qq("choices":[{"index":0,"delta":{"content":"$COMPLETION"}}]});

my %STREAM = (
    'chat-done' => sse($chat_chunk, $chat_chunk, '[DONE]'),
    'responses-done-only' => sse($responses_created, $responses_delta,
                                 '[DONE]'),
    'responses-completed-done' => sse($responses_created, $responses_delta,
                                      $responses_completed, '[DONE]'),
    'messages-done-only' => sse($messages_start, $messages_delta, '[DONE]'),
    'messages-stop-done' => sse($messages_start, $messages_delta,
                                $messages_stop, '[DONE]'),
);

# a chat completion whose usage or model is given raw
sub chat_body {
    my (%o) = @_;
    my $usage = $o{usage} // '{"prompt_tokens":12,"completion_tokens":34}';
    my $model = $o{model} // '"gpt-4o"';
    return '{"id":"chatcmpl-1","object":"chat.completion","created":1,'
        . qq("model":$model,"choices":[{"index":0,"message":{"role":)
        . qq("assistant","content":"$COMPLETION"},"finish_reason":"stop"}],)
        . qq("usage":$usage});
}

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => sub {
    my ($req) = @_;
    my $case = $req->{headers}{'x-case'} // '';

    if (exists $STREAM{$case}) {
        return { status => 200,
                 headers => [ 'Content-Type' => 'text/event-stream' ],
                 chunked => 64, body => $STREAM{$case} };
    }

    my %o;
    $o{usage} = pack('H*', $1) if $case =~ /^usage:([0-9a-f]+)$/;
    $o{model} = pack('H*', $1) if $case =~ /^model:([0-9a-f]+)$/;

    return { status => 200,
             headers => [ 'Content-Type' => 'application/json' ],
             body => chat_body(%o) };
});

$t->run;

my $port = $t->port(8080);
my $n = 0;

sub post {
    my ($path, $case, %o) = @_;
    my $id = 'r' . ++$n;
    my $model = $o{model} // '"m"';
    my $r = parse_response(http_post("$path?id=$id",
        qq({"model":$model,"stream":true,"messages":[{"role":"user",)
        . qq("content":"$PROMPT"}]}),
        port => $port, headers => { 'X-Case' => $case }));
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/) // '';
    my @f = split /\|/, $line, -1;
    $r->{log} = { status => $f[1], input => $f[2], output => $f[3],
                  response_model => $f[4], model => $f[5], error => $f[6],
                  shape => $f[7] };
    return $r;
}

###############################################################################
# [DONE] ends chat streams only

for my $c (
    [ '/v1/chat/completions', 'chat-done', '-' ],
    [ '/v1/responses', 'responses-done-only', 'stream_interrupted' ],
    [ '/v1/responses', 'responses-completed-done', '-' ],
    [ '/v1/messages', 'messages-done-only', 'stream_interrupted' ],
    [ '/v1/messages', 'messages-stop-done', '-' ],
) {
    my ($path, $case, $error) = @$c;
    my $r = post($path, $case);

    is($r->{status}, 200, "$case: 200");
    is($r->{log}{error}, $error, "$case: \$llm_error_type $error");

    if ($error eq '-') {
        is($r->{body}, $STREAM{$case}, "$case: the stream as sent");
    } else {
        like($r->{body}, qr/\Qdata: [DONE]\E\n\n.*\Qinterrupted\E/s,
             "$case: the gateway's error event after the events");
    }
}

###############################################################################
# a usage count that is not a valid JSON count is not found; the other
# count of the object, before it, still is

for my $v ('1e999', '-5', '12abc', '1.5', '"12"', '0x10', '01', '-0',
           '1E2', '12.', 'true', 'null', '{}', '[12]', '123456789012345678901')
{
    my $r = post('/v1/chat/completions', 'usage:' . unpack('H*',
        qq({"completion_tokens":34,"prompt_tokens":$v})));

    is($r->{status}, 200, "usage $v: 200");
    is($r->{log}{input}, '-', "usage $v: input tokens not found");
    is($r->{log}{output}, '34', "usage $v: output tokens");
}

{
    my $r = post('/v1/chat/completions', 'usage:' . unpack('H*',
        '{"prompt_tokens":0,"completion_tokens":123456789012345678}'));
    is($r->{log}{input}, '0', 'usage 0: input tokens');
    is($r->{log}{output}, '123456789012345678', 'usage 18 digits: output');
}

###############################################################################
# models: invalid UTF-8 or unpaired surrogates are not found

# JSON text, what $llm_response_model / $llm_model show (escape=default)
my @models = (
    [ 'pair', '"a\ud83d\ude00b"', 'a\xF0\x9F\x98\x80b' ],
    [ 'raw UTF-8', qq("mod\xc3\xa8le"), 'mod\xC3\xA8le' ],
    [ 'NUL', '"a\u0000b"', 'a\x00b' ],
    [ 'lone high', '"a\ud800b"', '-' ],
    [ 'lone high, end', '"a\ud800"', '-' ],
    [ 'lone low', '"a\udc00b"', '-' ],
    [ 'reversed pair', '"a\ude00\ud83db"', '-' ],
    [ 'high, high', '"a\ud800\ud800b"', '-' ],
    [ 'high, other escape', '"a\ud800\u0041b"', '-' ],
    [ 'high, short escape', '"a\ud800\nb"', '-' ],
    [ 'high, raw UTF-8', qq("a\\ud800\xc3\xa8b"), '-' ],
    [ 'raw invalid', qq("gpt-\xff\xfe-4o"), '-' ],
    [ 'raw surrogate', qq("gpt-\xed\xa0\x80"), '-' ],
    [ 'raw overlong', qq("gpt-\xc0\xaf"), '-' ],
    [ 'raw cut sequence', qq("gpt-\xe4\xb8"), '-' ],
    [ 'raw above U+10FFFF', qq("gpt-\xf4\x90\x80\x80"), '-' ],
);

for my $m (@models) {
    my ($name, $json, $want) = @$m;

    my $r = post('/v1/chat/completions', 'model:' . unpack('H*', $json));
    is($r->{status}, 200, "response model $name: 200");
    is($r->{log}{response_model}, $want, "response model $name");

    $r = post('/v1/chat/completions', 'plain', model => $json);
    is($r->{status}, 200, "request model $name: 200");
    is($r->{log}{model}, $want, "request model $name");
}

# a long model is cut, at a character
{
    my $json = '"' . ('\u00e8' x 150) . '"';
    my $r = post('/v1/chat/completions', 'model:' . unpack('H*', $json));
    is($r->{log}{response_model}, '\xC3\xA8' x 128,
       'a long response model: 256 bytes, whole characters');

    $json = '"' . ('\u00e8' x 300) . '\ud800"';
    $r = post('/v1/chat/completions', 'model:' . unpack('H*', $json));
    is($r->{log}{response_model}, '\xC3\xA8' x 128,
       'a long response model: what is past the bound is not read');

    $json = '"' . ('\u00e8' x 40) . '\ud800"';
    $r = post('/v1/chat/completions', 'model:' . unpack('H*', $json));
    is($r->{log}{response_model}, '-',
       'a long response model with a lone surrogate within the bound');
}

###############################################################################
# the escape=json log: strict UTF-8, line by line

my @lines = split /\n/, $t->read_file('logs/json.log');
is(scalar @lines, $n, "$n requests, $n JSON lines");

my $bad = 0;
for my $l (@lines) {
    my $copy = $l;
    next if eval { Encode::decode('UTF-8', $copy, Encode::FB_CROAK); 1 };
    $bad++;
    diag("not UTF-8: " . unpack('H*', $l));
}
is($bad, 0, 'every escape=json line is strict UTF-8');

done_testing;
