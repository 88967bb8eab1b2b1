#!/usr/bin/perl

# The shipped access log format (issue 7 items 2-3, docs/logging.md): the
# `log_format llm_json escape=json` of conf.example, read out of that
# file (so a broken format breaks this test), on a route with retries and
# a fallback, in front of a scripted mock provider.  A mix of requests:
# successes, retries, fallbacks, final failures, a request refused as not
# retryable, a broken body (400), a GET (405), a stream with usage, other
# endpoint families, a location that is not an LLM route, and client
# model names with quotes, backslashes, newlines, control bytes, NUL,
# non-ASCII, lone surrogates, raw invalid UTF-8 and an over-long name.
# Every line written is parsed as JSON (JSON::PP, strict UTF-8) and its
# fields checked.  The same requests go through a second format, the
# same text with escape=default: every record stays one line.  The
# "one line per attempt" recipe of docs/logging.md, read out of that
# file, gives a line per attempt; log_subrequest in the route location
# alone gives none.  The caller's X-Request-Id is logged when it is 1 to
# 128 URL-safe characters, "" otherwise.
#
# Canary secrets in the prompt, the completion, a provider error
# message, Authorization, x-api-key and api-key headers and a ?key=
# query string: the harness fails the file if any reaches any log
# (error log at info: nginx core's own debug lines print request
# headers, documented in docs/logging.md).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP ();

my $t = Test::LLM->new;

# the format, as shipped

my $example = "$Test::LLM::REPO/conf.example";
open my $fh, '<', $example or die "can't read $example: $!\n";
my $example_text = do { local $/; <$fh> };
close $fh;

my ($MAP) = $example_text =~ /^\s*(map\s+\$llm_family\s+\$\w+\s*\{[^}]*\})/m;
# the request id map: its regex holds braces, inside quotes
my ($RID_MAP) = $example_text
    =~ /^\s*(map\s+\$http_x_request_id\s+\$\w+\s*\{(?:"[^"]*"|[^"}])*\})/m;
my ($FORMAT) = $example_text
    =~ /^\s*(log_format\s+llm_json\s+escape=json(?:\s+'[^']*')+\s*;)/m;

ok(defined $FORMAT, 'conf.example has log_format llm_json escape=json')
    or BAIL_OUT('no llm_json format in conf.example');
ok(defined $MAP, 'conf.example maps $llm_family to the operation name');
$MAP //= '';
$MAP .= "\n    $RID_MAP" if defined $RID_MAP;

unlike($FORMAT, qr/\$(?:request|request_uri|args|arg_\w+|query_string|
                      http_\w+|request_body|cookie_\w+)\b/x,
       'the format uses no variable that carries secrets');

(my $TEXT = $FORMAT) =~ s/llm_json\s+escape=json/llm_text escape=default/;

# the "one line per attempt" recipe, as documented: its "..." stand for
# the route's targets and for the target's proxy settings

my $doc = "$Test::LLM::REPO/docs/logging.md";
open $fh, '<', $doc or die "can't read $doc: $!\n";
my $doc_text = do { local $/; <$fh> };
close $fh;

my ($RECIPE) = $doc_text
    =~ /^### One line per attempt[^\n]*\n+```nginx\n(.*?)```/ms;
$RECIPE //= '';

like($RECIPE, qr/^location \/_llm\/\w+ \{[^}]*^\s+log_subrequest on;/ms,
     'the log_subrequest recipe puts it in a target location');

$RECIPE =~ s{/var/log/nginx/llm\.json\.log}{%%TESTDIR%%/logs/llm.sub.log}g;
$RECIPE =~ s{^location /_llm/\w+ \{}{location ~ ^/_llm/(\\w+)\$ \{}m;

my @FILL = (
    'llm_target   /_llm/primary model=gpt-4o-mini tries=2;
    llm_fallback /_llm/backup model=claude-3-5-haiku;
    llm_attempts 3;',
    'proxy_set_header X-Attempt $llm_attempts;
    proxy_set_header Connection "";
    proxy_http_version 1.1;
    proxy_pass http://prov/$1/v1/chat/completions;',
);

my $filled = $RECIPE =~ s/^(\s*)\.\.\.\n/$1 . (shift(@FILL) \/\/ '') . "\n"/mge;
is($filled, 2, 'the recipe has a route location and a target location');

my $conf = <<'EOF';
events {}

http {
    %%MAP%%

    %%FORMAT%%

    %%TEXT%%

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        access_log %%TESTDIR%%/logs/llm.json.log llm_json;
        access_log %%TESTDIR%%/logs/llm.text.log llm_text;

        llm_backoff base=1ms max=5ms;

        location = /v1/chat/completions {
            llm_route    chat;
            llm_target   /_llm/primary model=gpt-4o-mini tries=2;
            llm_fallback /_llm/backup model=claude-3-5-haiku;
            llm_attempts 3;
        }

        location = /v1/embeddings {
            llm_route  emb;
            llm_target /_llm/primary;
        }

        location = /v1/completions {
            llm_route  legacy;
            llm_target /_llm/primary;
        }

        location = /v1/messages {
            llm_route  anthropic;
            llm_target /_llm/primary;
        }

        location = /plain {
            return 204;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://prov/$1/v1/chat/completions;
        }
    }

    # the same route, a line per attempt too: docs/logging.md's recipe
    server {
        listen 127.0.0.1:%%PORT_8082%%;

        access_log off;

        llm_backoff base=1ms max=5ms;

%%RECIPE%%
    }

    # log_subrequest in the route location only: no attempt line
    server {
        listen 127.0.0.1:%%PORT_8083%%;

        access_log off;

        llm_backoff base=1ms max=5ms;

        location = /v1/chat/completions {
            llm_route    chat;
            llm_target   /_llm/primary model=gpt-4o-mini tries=2;
            llm_fallback /_llm/backup model=claude-3-5-haiku;
            llm_attempts 3;
            log_subrequest on;
            access_log %%TESTDIR%%/logs/llm.route.log llm_json;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://prov/$1/v1/chat/completions;
        }
    }
}
EOF

$conf =~ s/%%MAP%%/$MAP/;
$conf =~ s/%%FORMAT%%/$FORMAT/;
$conf =~ s/%%TEXT%%/$TEXT/;
$conf =~ s/%%RECIPE%%/$RECIPE/;
$t->write_file_expand('nginx.conf', $conf);

# secrets

my $PROMPT     = 'CANARY-prompt-5c1e';
my $COMPLETION = 'CANARY-completion-0b7a';
my $PROV_ERROR = 'CANARY-provider-error-9d2f';
my $AUTH       = 'sk-CANARY-authorization-44aa';
my $XKEY       = 'sk-ant-CANARY-x-api-key-7e21';
my $AZKEY      = 'CANARY-azure-api-key-31c0';
my $QKEY       = 'CANARY-query-key-a6b3';
$t->canary($PROMPT, $COMPLETION, $PROV_ERROR, $AUTH, $XKEY, $AZKEY, $QKEY);

my %SECRET_HEADERS = (
    'Authorization' => "Bearer $AUTH",
    'x-api-key'     => $XKEY,
    'api-key'       => $AZKEY,
);

sub sse { join '', map { "data: $_\n\n" } @_ }

my $STREAM = sse(
    map({ qq({"object":"chat.completion.chunk","model":"gpt-4o-mini",)
          . qq("choices":[{"index":0,"delta":{"content":"$COMPLETION"}}],)
          . qq("usage":null}) } 1 .. 3),
    '{"object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    . '"usage":{"prompt_tokens":7,"completion_tokens":3}}',
    '[DONE]');

$t->run_mock_provider(port => $t->port(8081), name => 'prov',
                      handler => sub {
    my ($req, $conn) = @_;
    my $case = $req->{headers}{'x-case'} // '';

    if ($case eq 'stream') {
        return { status => 200,
                 headers => [ 'Content-Type' => 'text/event-stream' ],
                 chunked => 100, body => $STREAM };
    }

    if ($case eq 'provider-error') {
        return { status => 500,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => '{"error":{"message":"' . $PROV_ERROR . '",'
                         . '"type":"server_error","code":null}}' };
    }

    if ($case eq 'completion') {
        return { status => 200,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => completion_body(content => $COMPLETION) };
    }

    return scripted($req, $conn);
});

$t->run;

my $port = $t->port(8080);
my $JSON = JSON::PP->new->utf8;         # strict: UTF-8 and JSON grammar
my $BYTES = JSON::PP->new->latin1;      # lenient: any byte taken as is
my $n = 0;

sub body {
    my ($model, %o) = @_;
    my $m = defined $model ? qq("model":$model,) : '';
    my $s = $o{stream} ? '"stream":true,'
        . '"stream_options":{"include_usage":true},' : '';
    return qq({$m$s"messages":[{"role":"user","content":"$PROMPT"}]});
}

# one request; returns (response, json line, text line)
sub send_req {
    my (%o) = @_;

    my $uri = $o{uri} // '/v1/chat/completions';
    $uri .= "?key=$QKEY" unless $o{no_query};

    my $raw = http_request($o{method} // 'POST', $uri,
        body => $o{body},
        headers => [ 'Content-Type' => 'application/json',
                     %SECRET_HEADERS,
                     (defined $o{case} ? ('X-Case' => $o{case}) : ()),
                     (defined $o{rid} ? ('X-Request-Id' => $o{rid}) : ()) ]);

    my $r = parse_response(http($raw, port => $port));
    $n++;

    my @j = _lines('logs/llm.json.log', $n);
    my @d = _lines('logs/llm.text.log', $n);

    return ($r, $j[$n - 1], $d[$n - 1], scalar(@j), scalar(@d));
}

sub _lines {
    my ($name, $want) = @_;
    my @lines = $t->wait_for_lines($name, $want, 5);
    return @lines;
}

# the JSON record of a line, strict; undef when it does not parse
sub record {
    my ($line) = @_;
    return undef unless defined $line;
    my $rec = eval { $JSON->decode($line) };
    return $rec;
}

my @KEYS = ($FORMAT =~ /"([a-z_.-]+)":"\$/g);

# checks common to every line: parses, one object, every key a string,
# no secret, no query string
sub check_line {
    my ($name, $r, $line, $text, $nj, $nd) = @_;

    is($nj, $n, "$name: one JSON line per request");
    is($nd, $n, "$name: one text line per request");

    my $rec = record($line);
    ok(ref $rec eq 'HASH', "$name: the line parses as a JSON object")
        or diag("line: " . ($line // 'none'));
    $rec //= {};

    is_deeply([ sort keys %$rec ], [ sort @KEYS ], "$name: every key")
        if %$rec;
    ok(!grep({ ref $_ || !defined $_ } values %$rec),
       "$name: every value a JSON string") if %$rec;

    unlike($line // '', qr/key=|\Q$QKEY\E/, "$name: no query string");
    unlike($text // '', qr/key=|\Q$QKEY\E/,
           "$name: no query string (escape=default)");
    unlike($rec->{'url.path'} // '', qr/\?/, "$name: url.path has no ?")
        if %$rec;
    unlike($text // '', qr/[\x00-\x1f\x7f-\xff]/,
           "$name: escape=default line is plain ASCII");

    return $rec;
}

###############################################################################
# the mix

my @cases = (
    {
        name => 'success', case => '*:ok', body => body('"gpt-4o"'),
        status => 200,
        want => {
            'http.request.method' => 'POST',
            'url.path' => '/v1/chat/completions',
            'http.response.status_code' => '200',
            'error.type' => '',
            'gen_ai.operation.name' => 'chat',
            'gen_ai.request.model' => 'gpt-4o',
            'gen_ai.response.model' => 'gpt-4o-mini',
            'gen_ai.usage.input_tokens' => '9',
            'gen_ai.usage.output_tokens' => '3',
            'llm.route' => 'chat',
            'llm.family' => 'chat',
            'llm.target' => '/_llm/primary',
            'llm.target_model' => 'gpt-4o-mini',
            'llm.attempts' => '1',
            'llm.retry_decision' => '',
            'llm.fallback' => '0',
            'llm.stream' => '0',
            'llm.response_shape' => 'ok',
            'llm.attempt_targets' => '/_llm/primary',
            'llm.attempt_statuses' => '200',
            'llm.attempt_errors' => '-',
            'upstream.status' => '200',
        },
        ttft => 1,
    },
    {
        name => 'retry then success', case => '1:500;*:ok',
        body => body('"gpt-4o"'), status => 200,
        want => {
            'http.response.status_code' => '200',
            'error.type' => '',
            'llm.attempts' => '2',
            'llm.retry_decision' => 'retry',
            'llm.fallback' => '0',
            'llm.target' => '/_llm/primary',
            'llm.attempt_targets' => '/_llm/primary, /_llm/primary',
            'llm.attempt_statuses' => '500, 200',
            'llm.attempt_errors' => 'server_error, -',
            'gen_ai.usage.input_tokens' => '9',
        },
        ttft => 1,
    },
    {
        name => 'fallback', case => '1:rl;2:anth_ovl;*:ok',
        body => body('"gpt-4o"'), status => 200,
        want => {
            'http.response.status_code' => '200',
            'error.type' => '',
            'llm.attempts' => '3',
            'llm.retry_decision' => 'fallback',
            'llm.fallback' => '1',
            'llm.target' => '/_llm/backup',
            'llm.target_model' => 'claude-3-5-haiku',
            'gen_ai.request.model' => 'gpt-4o',
            'llm.attempt_targets' =>
                '/_llm/primary, /_llm/primary, /_llm/backup',
            'llm.attempt_statuses' => '429, 529, 200',
            'llm.attempt_errors' => 'rate_limited, overloaded, -',
        },
        ttft => 1,
    },
    {
        name => 'final failure', case => '*:503',
        body => body('"gpt-4o"'), status => 503,
        want => {
            'http.response.status_code' => '503',
            'error.type' => 'overloaded',
            'llm.attempts' => '3',
            'llm.retry_decision' => 'attempts_exhausted',
            'llm.fallback' => '1',
            'llm.target' => '/_llm/backup',
            'llm.attempt_statuses' => '503, 503, 503',
            'llm.attempt_errors' => 'overloaded, overloaded, overloaded',
            'gen_ai.response.model' => '',
            'gen_ai.usage.input_tokens' => '',
            'gen_ai.usage.output_tokens' => '',
            'llm.response_shape' => '',
        },
        ttft => 1,
    },
    {
        name => 'not retryable', case => '*:401',
        body => body('"gpt-4o"'), status => 401,
        want => {
            'http.response.status_code' => '401',
            'error.type' => 'auth_error',
            'llm.attempts' => '1',
            'llm.retry_decision' => 'not_retryable',
            'llm.fallback' => '0',
            'llm.attempt_statuses' => '401',
            'llm.attempt_errors' => 'auth_error',
        },
        # an error answer passed on is the first byte too
        ttft => 1,
    },
    {
        name => 'provider error message', case => 'provider-error',
        body => body('"gpt-4o"'), status => 500,
        want => {
            'http.response.status_code' => '500',
            'error.type' => 'server_error',
            'llm.attempts' => '3',
            'llm.retry_decision' => 'attempts_exhausted',
        },
    },
    {
        name => 'completion text', case => 'completion',
        body => body('"gpt-4o"'), status => 200,
        want => { 'llm.attempts' => '1', 'llm.response_shape' => 'ok' },
    },
    {
        name => 'broken body', case => '*:ok',
        body => '{"model":"gpt-4o","messages":[{"role":"user","content":"'
                . $PROMPT . '"}', status => 400,
        want => {
            'http.response.status_code' => '400',
            'llm.route' => 'chat',
            'llm.attempts' => '0',
            'llm.target' => '',
            'llm.stream' => '',
            'llm.attempt_targets' => '',
            'error.type' => '',
            'upstream.status' => '',
            'server.address' => '',
        },
    },
    {
        name => 'GET', method => 'GET', status => 405,
        want => {
            'http.request.method' => 'GET',
            'http.response.status_code' => '405',
            'llm.route' => 'chat',
            'llm.attempts' => '0',
            'gen_ai.request.model' => '',
        },
    },
    {
        name => 'stream with usage', case => 'stream',
        body => body('"gpt-4o"', stream => 1), status => 200,
        want => {
            'http.response.status_code' => '200',
            'llm.stream' => '1',
            'llm.attempts' => '1',
            'gen_ai.response.model' => 'gpt-4o-mini',
            'gen_ai.usage.input_tokens' => '7',
            'gen_ai.usage.output_tokens' => '3',
            'llm.response_shape' => 'ok',
            'error.type' => '',
        },
        ttft => 1,
    },
    {
        name => 'embeddings family', uri => '/v1/embeddings', case => '*:ok',
        body => body('"text-embedding-3-small"'), status => 200,
        want => {
            'llm.route' => 'emb',
            'llm.family' => 'embeddings',
            'gen_ai.operation.name' => 'embeddings',
            'gen_ai.request.model' => 'text-embedding-3-small',
            'llm.target_model' => 'text-embedding-3-small',
        },
    },
    {
        name => 'completions family', uri => '/v1/completions',
        case => '*:ok', body => body('"gpt-3.5-turbo-instruct"'),
        status => 200,
        want => {
            'llm.family' => 'completions',
            'gen_ai.operation.name' => 'text_completion',
        },
    },
    {
        name => 'messages family', uri => '/v1/messages', case => '*:ok',
        body => body('"claude-3-5-haiku"'), status => 200,
        want => {
            'llm.family' => 'messages',
            'gen_ai.operation.name' => 'chat',
        },
    },
    {
        name => 'not an LLM route', uri => '/plain', method => 'GET',
        status => 204,
        want => {
            'url.path' => '/plain',
            'http.response.status_code' => '204',
            'llm.route' => '',
            'llm.family' => '',
            'gen_ai.operation.name' => '',
            'llm.attempts' => '',
            'llm.fallback' => '',
        },
    },
);

# client model names: the JSON text sent, and what the record must say
# (undef: any value, as long as the line parses)
my @models = (
    [ 'quote, backslash, newline, control',
      '"a\"b\\\\c\nd\u0001e"', "a\"b\\c\nd\x01e" ],
    [ 'tab, CR, escape, DEL', '"t\tr\re\u001bx\u007f"', "t\tr\re\x1bx\x7f" ],
    [ 'NUL', '"nul\u0000byte"', "nul\x00byte" ],
    [ 'slash escapes', '"a\/b\bc\fd"', "a/b\x08c\x0cd" ],
    [ 'non-ASCII', '"mod\u00e8le-\u4e2d-\ud83d\ude00"',
      "mod\x{e8}le-\x{4e2d}-\x{1f600}" ],
    [ 'raw UTF-8', qq("mod\xc3\xa8le"), "mod\x{e8}le" ],
    [ 'log injection', '"x\"}\n{\"llm.route\":\"evil\",\"a\":\""',
      "x\"}\n{\"llm.route\":\"evil\",\"a\":\"" ],
    [ 'max length', '"' . ('m' x 256) . '"', 'm' x 256 ],
    [ 'over-long', '"' . ('m' x 257) . '"', '' ],
    [ 'lone surrogate', '"a\ud800b"', '' ],
    [ 'raw invalid UTF-8', qq{"bad\xff\xfe-\xc3(-\xed\xa0\x80"}, '' ],
);

for my $c (@cases) {
    my ($r, $line, $text, $nj, $nd) = send_req(%$c);
    my $name = $c->{name};

    is($r->{status}, $c->{status}, "$name: status");
    my $rec = check_line($name, $r, $line, $text, $nj, $nd);

    for my $k (sort keys %{$c->{want}}) {
        is($rec->{$k}, $c->{want}{$k}, "$name: $k");
    }

    if ($c->{ttft}) {
        like($rec->{'llm.ttft'}, qr/^\d+\.\d{3}$/, "$name: llm.ttft");
    }

    if (($c->{want}{'llm.attempts'} || 0) > 0) {
        like($rec->{'server.address'}, qr/^127\.0\.0\.1:\d+/,
             "$name: server.address");
        like($rec->{'llm.attempt_times'},
             qr/^\d+\.\d{3}(?:, \d+\.\d{3})*$/, "$name: attempt times");
        my $times = () = $rec->{'llm.attempt_times'} =~ /\d+\.\d{3}/g;
        is($times, $c->{want}{'llm.attempts'},
           "$name: a time per attempt");
    }

    like($rec->{time}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$/,
         "$name: time") if $rec;
    like($rec->{'http.server.request.duration'}, qr/^\d+\.\d{3}$/,
         "$name: request duration") if $rec;
}

for my $m (@models) {
    my ($name, $json, $want) = @$m;
    $name = "model: $name";

    my ($r, $line, $text, $nj, $nd) = send_req(
        body => qq({"model":$json,"messages":[{"role":"user",)
                . qq("content":"$PROMPT"}]}),
        case => '*:ok');

    ok(defined $r->{status}, "$name: answered ($r->{status})");

    my $rec = check_line($name, $r, $line, $text, $nj, $nd);

    if ($name =~ /quote/) {
        like($text, qr/"gen_ai\.request\.model":"a\\x22b\\x5Cc\\x0Ad\\x01e"/,
             "$name: escape=default writes \\xXX escapes");
    }
    if ($name =~ /surrogate/) {
        # a lone surrogate cannot be UTF-8: the model is not found, and
        # the line above parsed as strict UTF-8
        unlike($rec->{'gen_ai.request.model'} // '', qr/[\x{d800}-\x{dfff}]/,
               "$name: no surrogate in the record");
    }

    my $lenient = defined $line ? eval { $BYTES->decode($line) } : undef;
    ok(ref $lenient eq 'HASH', "$name: the line parses as bytes")
        or diag("line: " . ($line // 'none'));
    $rec = $lenient if !$rec && $lenient;

    is($rec->{'llm.route'}, 'chat', "$name: llm.route intact");
    is($rec->{'llm.attempts'}, '1', "$name: llm.attempts intact");
    is($rec->{'gen_ai.request.model'}, $want, "$name: the model decoded")
        if defined $want;
    ok(length($rec->{'gen_ai.request.model'} // '') <= 256 * 4,
       "$name: the model length-capped");
}

###############################################################################
# all lines, once more: every one parses, none is split

my @json = split /\n/, $t->read_file('logs/llm.json.log'), -1;
my @text = split /\n/, $t->read_file('logs/llm.text.log'), -1;
is(pop @json, '', 'the JSON log ends with a newline');
is(pop @text, '', 'the text log ends with a newline');
is(scalar @json, $n, "$n requests, $n JSON lines");
is(scalar @text, $n, "$n requests, $n text lines");

is(scalar(grep { !record($_) } @json), 0,
   'every JSON line parses as strict UTF-8 JSON');
is(scalar(grep { !eval { $BYTES->decode($_) } } @json), 0,
   'every JSON line parses as JSON taken byte by byte');
is(scalar(grep { /[^\x20-\x7e]/ } @text), 0,
   'every escape=default line is printable ASCII');
is(scalar(grep { /\\x(?:[01][0-9A-F]|7F|[89A-F][0-9A-F])/ } @json), 0,
   'no \\xXX escape in the JSON lines');

###############################################################################
# log_subrequest on: a line per attempt, then the client request's

{
    my $r = parse_response(http(http_request('POST',
        "/v1/chat/completions?key=$QKEY", body => body('"gpt-4o"'),
        headers => [ 'Content-Type' => 'application/json', %SECRET_HEADERS,
                     'X-Case' => '1:rl;2:500;*:ok' ]),
        port => $t->port(8082)));
    is($r->{status}, 200, 'log_subrequest: 200');

    my @l = $t->wait_for_lines('logs/llm.sub.log', 4);
    is(scalar @l, 4, 'log_subrequest: three attempt lines and the request');
    my @rec = map { record($_) || {} } @l;

    is_deeply([ map { $_->{'url.path'} } @rec ],
              [ '/_llm/primary', '/_llm/primary', '/_llm/backup',
                '/v1/chat/completions' ], 'log_subrequest: url.path');
    is_deeply([ map { $_->{'http.response.status_code'} } @rec ],
              [ 429, 500, 200, 200 ], 'log_subrequest: each status');
    is_deeply([ map { $_->{'llm.attempts'} } @rec ], [ 1, 2, 3, 3 ],
              'log_subrequest: llm.attempts is the position');
    is_deeply([ map { $_->{'error.type'} } @rec ],
              [ 'rate_limited', 'server_error', '', '' ],
              'log_subrequest: each attempt\'s error.type');
    is_deeply([ map { $_->{'llm.retry_decision'} } @rec ],
              [ '', 'retry', 'fallback', 'fallback' ],
              'log_subrequest: the decision after the previous failure');
    is_deeply([ map { $_->{'gen_ai.request.model'} } @rec ],
              [ ('gpt-4o') x 4 ], 'log_subrequest: the client\'s model');
    is($rec[3]{'upstream.status'}, '429 : 500 : 200',
       'log_subrequest: $upstream_status of the request lists attempts');
    unlike(join('', @l), qr/key=|\Q$QKEY\E/,
           'log_subrequest: no query string');
}

# nginx reads log_subrequest in the location serving the subrequest

{
    my $r = parse_response(http(http_request('POST',
        '/v1/chat/completions', body => body('"gpt-4o"'),
        headers => [ 'Content-Type' => 'application/json',
                     'X-Case' => '1:rl;2:500;*:ok' ]),
        port => $t->port(8083)));
    is($r->{status}, 200, 'log_subrequest in the route location: 200');

    my @l = $t->wait_for_lines('logs/llm.route.log', 1);
    my @rec = map { record($_) || {} } @l;
    is_deeply([ map { $_->{'url.path'} } @rec ], [ '/v1/chat/completions' ],
              'log_subrequest in the route location: the request only');
    is($rec[0]{'llm.attempts'}, 3,
       'log_subrequest in the route location: after three attempts');
}

###############################################################################
# the caller's X-Request-Id: logged when 1 to 128 URL-safe characters,
# else "" (the map of conf.example)

for my $c ([ 'pf-20261125T173000Z-a1b2c3-happy', 'an id' ],
           [ 'x' x 128, '128 characters' ],
           [ 'x' x 129, undef, '129 characters' ],
           [ 'an id with spaces', undef, 'spaces' ],
           [ 'id"},{"llm.route":"evil', undef, 'quotes and braces' ],
           [ "id\\x", undef, 'a backslash' ])
{
    my ($id, $want, $name) = @$c;
    $name //= $want;
    $want = defined $c->[1] ? $id : '';
    my ($r, $line) = send_req(body => body('"gpt-4o"'), rid => $id);
    is((record($line) || {})->{'http.request.header.x-request-id'}, $want,
       "X-Request-Id: $name");
}

###############################################################################
# the error log: the module's own lines
#
# nginx ends its own error log lines of a request with the request line
# (query string included); the module's lines end with the URI path.

$t->stop;

my $errlog = $t->read_file('logs/error.log');
my @mine = grep { /llm route/ } split /\n/, $errlog;
ok(scalar @mine, 'the module logged failed attempts at info and error');

for my $secret ($PROMPT, $COMPLETION, $PROV_ERROR, $AUTH, $XKEY, $AZKEY) {
    is(scalar(grep { index($_, $secret) >= 0 } @mine), 0,
       'no ' . substr($secret, 0, 14) . '... in the module\'s error lines');
}

is(scalar(grep { index($_, $QKEY) >= 0 || /request: "/ } @mine), 0,
   'no request line, no ?key= query string in the module\'s error lines');
like($mine[0] // '', qr/, uri: "\/v1\/chat\/completions"$/,
     'the module\'s error lines end with the URI path');

done_testing;
