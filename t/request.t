#!/usr/bin/perl

# Request inspection (docs/design.md section 1): the structural scan of the JSON body.
# Covers: the top-level "model" found (after messages, with whitespace,
# escaped key or value) and nested "model" keys in messages/tools not
# taken for it, in bodies held in memory, spilled to a temp file, and
# sent chunked; broken structure (empty, array/scalar at the top level,
# unbalanced, unterminated string, truncated, trailing garbage, model not
# a string, duplicate model) -> 400 with an OpenAI-style error JSON from
# the gateway, no upstream attempt, one info line in the error log with
# no body bytes; finer grammar errors (bad number, bad escape, invalid
# UTF-8) go to the provider.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format llm '$request_uri model=$llm_model attempts=$llm_attempts '
                   'stream=$llm_stream status=$status';

    access_log %%TESTDIR%%/logs/access.log llm;

    client_max_body_size 20m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /v1/ {
            client_body_buffer_size 1m;
            llm_route chat;
            llm_target /_llm/provider;
        }

        location /spill/ {
            client_body_buffer_size 16k;
            llm_route spill;
            llm_target /_llm/provider;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'provider');
$t->run;

my $port = $t->port(8080);

# prompt bytes never reach the error log, whatever the reason to refuse
my $SECRET = 'CANARY-prompt-5b1e0d';
$t->canary($SECRET);

my $n = 0;

sub post {
    my ($path, $body, %o) = @_;
    my $uri = "$path?n=" . ++$n;
    my $r = parse_response(http_post($uri, $body, port => $port,
                                     %o, timeout => 10));
    $r->{uri} = $uri;
    $r->{log} = $t->wait_for_log('logs/access.log', qr/^\Q$uri\E /) || '';
    return $r;
}

sub attempts { $t->mock_count('provider') }

###############################################################################
# the model is found; nothing else fools the scan

my @good = (
    [ 'plain', '{"model":"gpt-4o-mini","messages":[]}', 'gpt-4o-mini' ],
    [ 'after messages, spaces',
      qq( \n{ "messages" : [ {"role":"user","content":"model: \\"x\\""} ] ,)
      . qq(\r\n\t"model" :\t"m-after" }\n), 'm-after' ],
    [ 'nested model keys',
      '{"messages":[{"role":"user","content":"hi","model":"inner"}],'
      . '"tools":[{"type":"function","function":{"name":"f","parameters":'
      . '{"type":"object","properties":{"model":{"type":"string"}}}}}],'
      . '"metadata":{"model":"meta"},"model":"outer"}', 'outer' ],
    [ 'escaped quotes and backslashes before',
      '{"messages":[{"content":"a \\\\\\" b \\\\","model":"no"}],'
      . '"model":"yes"}', 'yes' ],
    [ 'escaped key', '{"mod\\u0065l":"esc-key"}', 'esc-key' ],
    [ 'escaped value', '{"model":"gpt\\u002d4o"}', 'gpt-4o' ],
    [ 'no model', '{"messages":[{"role":"user","content":"x"}]}', '-' ],
    [ 'empty object', '{}', '-' ],
    [ 'stream and other members',
      '{"stream":true,"stream_options":{"include_usage":true},'
      . '"temperature":0.5,"n":1,"stop":null,"model":"s"}', 's' ],

    # nested values of more than 64 bytes, read 64 at a time by SIMD:
    # escaped quotes, runs of backslashes and brackets in strings across
    # the blocks' bounds
    [ 'long nested values, escapes and brackets in strings',
      '{"messages":[' . join(',', map {
          '{"role":"user","content":"' . ('\\\\' x $_) . '\\"' . ('x' x $_)
          . ' [{\\"model\\":\\"no\\"}] ' . ('\\\\\\\\' x ($_ % 7)) . '"}'
      } 1 .. 70) . '],"model":"m-long"}', 'm-long' ],
);

for my $case (@good) {
    my ($name, $body, $model) = @$case;
    my $before = attempts();
    my $r = post('/v1/chat/completions', $body);

    is($r->{status}, 200, "$name: 200");
    is(attempts(), $before + 1, "$name: one attempt");
    like($r->{log}, qr/ model=\Q$model\E attempts=1 /, "$name: \$llm_model");
    like($r->{log}, $body =~ /"stream":true/ ? qr/ stream=1 / : qr/ stream=0 /,
         "$name: \$llm_stream");

    my $got = $t->mock_requests('provider')->[-1];
    is($got->{body}, $body, "$name: body unchanged");
}

###############################################################################
# large bodies, in memory and in a temp file, and chunked

my $long = join ',', map {
    qq({"role":"user","content":"$SECRET message $_ with \\"model\\": )
    . ('x' x 200) . '"}'
} 1 .. 5000;

my $big = qq({"messages":[$long],"model":"big-model","stream":false});
ok(length($big) > 1_000_000, 'large body is over 1 MB');

for my $path ('/v1/chat/completions', '/spill/v1/chat/completions') {
    my $r = post($path, $big);
    is($r->{status}, 200, "large body $path: 200");
    like($r->{log}, qr/ model=big-model /, "large body $path: model found");
    is($t->mock_requests('provider')->[-1]{body_length}, length $big,
       "large body $path: all of it sent");
}

my $r = post('/spill/v1/chat/completions', $big . ' x');
is($r->{status}, 400, 'large spilled body, trailing garbage: 400');

$r = post('/v1/chat/completions', '{"messages":[],"model":"chunked-model"}',
          chunked => 3);
is($r->{status}, 200, 'chunked body: 200');
like($r->{log}, qr/ model=chunked-model /, 'chunked body: model found');

###############################################################################
# broken structure: 400 from the gateway, no attempt

my @bad = (
    [ 'empty body', '', 'the request body is empty' ],
    [ 'only spaces', "  \n ", 'the request body is empty' ],
    [ 'top-level array', '[{"model":"a"}]',
      'the request body is not a JSON object' ],
    [ 'top-level string', '"model"', 'the request body is not a JSON object' ],
    [ 'top-level number', '42', 'the request body is not a JSON object' ],
    [ 'unbalanced', qq({"messages":[{"content":"$SECRET"}},"model":"a"}),
      'unbalanced brackets in the JSON request' ],
    [ 'unbalanced after long nested values',
      qq({"messages":[{"content":"$SECRET ) . ('\\"[{' x 40)
      . qq("},{"content":") . ('x' x 100) . qq("}},"model":"a"}),
      'unbalanced brackets in the JSON request' ],
    [ 'nested too deeply', '{"a":' . ('[' x 300) . (']' x 300) . '}',
      'the JSON request is nested too deeply' ],
    [ 'unterminated string', qq({"model":"a","messages":[{"content":"$SECRET),
      'unterminated string in the JSON request' ],
    [ 'truncated', qq({"model":"a","messages":[{"content":"$SECRET"}]),
      'the JSON request is truncated' ],
    [ 'trailing garbage', qq({"model":"a"} {"content":"$SECRET"}),
      'unexpected data after the JSON object' ],
    [ 'two objects', '{"model":"a"}{"model":"b"}',
      'unexpected data after the JSON object' ],
    [ 'model is a number', '{"model":4}', '"model" is not a string' ],
    [ 'model is null', '{"model":null}', '"model" is not a string' ],
    [ 'model is an object', '{"model":{"name":"a"}}',
      '"model" is not a string' ],
    [ 'model is an array', '{"model":["a"]}', '"model" is not a string' ],
    [ 'duplicate model', '{"model":"cheap","messages":[],"model":"dear"}',
      'duplicate "model" member' ],
    [ 'duplicate model, escaped', '{"model":"a","mod\\u0065l":"b"}',
      'duplicate "model" member' ],
    [ 'missing colon', qq({"model" "a","messages":[]}),
      'expected ":" after a member name' ],
    [ 'missing comma', qq({"model":"a" "messages":[]}),
      'expected "," or "}" after a member value' ],
    [ 'trailing comma', qq({"model":"a",}),
      'expected a member name in the JSON object' ],
);

for my $case (@bad) {
    my ($name, $body, $message) = @$case;
    my $before = attempts();
    my $r = post('/v1/chat/completions', $body);

    is($r->{status}, 400, "$name: 400");
    is(attempts(), $before, "$name: no attempt");
    like($r->{headers}{'content-type'}, qr{^application/json},
         "$name: JSON answer");

    my $e = eval { decode_json($r->{body}) } || {};
    is($e->{error}{message}, $message, "$name: error message");
    is($e->{error}{type}, 'invalid_request_error', "$name: error type");
    is($e->{error}{code}, 'invalid_json', "$name: error code");
    unlike($r->{body}, qr/\Q$SECRET\E/, "$name: no body bytes in answer");
    like($r->{log}, qr/ attempts=0 stream=- status=400$/, "$name: logged");
}

my $errors = $t->read_file('logs/error.log');
my @info = $errors =~ /^.*\[info\].*bad request body.*$/mg;
is(scalar @info, scalar @bad + 1, 'one info line per refused body');
# the garbage starts one byte after the object and its space
my $at = length($big) + 1;
like($info[0] || '', qr/\Qllm route "spill": bad request body: \E
    \Qunexpected data after the JSON object, at byte $at,\E/x,
     'info line names the route, the reason and the offset');
like($info[1] || '', qr/\Qllm route "chat": bad request body: \E
    \Qthe request body is empty, at byte 0,\E/x, 'empty body: offset 0');
unlike($errors, qr/\[(error|crit)\]/, 'no error lines for client mistakes');

# keepalive survives a 400
my ($rs, $open) = http_keepalive([
    http_request('POST', '/v1/chat/completions', body => '[1]',
                 keepalive => 1),
    http_request('POST', '/v1/chat/completions', body => '{"model":"k"}',
                 keepalive => 1),
], port => $port);
is(parse_response($rs->[0])->{status}, 400, 'keepalive: 400 first');
is(parse_response($rs->[1])->{status}, 200, 'keepalive: then 200');
ok($open, 'keepalive: connection still open');

###############################################################################
# finer grammar errors are the provider's to judge

my @finer = (
    [ 'bad number', '{"model":"a","temperature":01.}' ],
    [ 'bad literal', '{"model":"a","stream":ture}' ],
    [ 'bad escape in model', '{"model":"a\\q"}' ],
    [ 'invalid UTF-8', qq({"model":"a","messages":[{"content":"\xff\xfe"}]}) ],
    [ 'colon in array', '{"model":"a","stop":["x":"y"]}' ],
);

for my $case (@finer) {
    my ($name, $body) = @$case;
    my $before = attempts();
    my $r = post('/v1/chat/completions', $body);

    is($r->{status}, 200, "$name: passed to the provider");
    is(attempts(), $before + 1, "$name: one attempt");
}

like(post('/v1/chat/completions', '{"model":"a\\q"}')->{log},
     qr/ model=- /, 'undecodable model: $llm_model not found');

done_testing;
