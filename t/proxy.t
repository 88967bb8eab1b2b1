#!/usr/bin/perl

# Pass-through of an llm route: client -> llm_route -> llm_target (an
# internal location with the user's proxy_pass) -> mock provider, with one
# attempt and no retries.  Covers: a chat.completion answer (status,
# Content-Type, provider headers, body) unchanged; 429 and 500 answers
# unchanged; request bodies of 4 MB kept in memory and spilled to a temp
# file, a chunked client body, all reaching the provider byte for byte
# with a right Content-Length; keepalive between client and nginx with
# Content-Length and chunked answers; a plain proxy_pass location next to
# routes untouched; GET -> 405 without an attempt; access log variables;
# connect refused -> 502; read timeout -> 504; an answer cut after its
# headers -> no clean end for the client; query string passed on;
# Accept-Encoding not passed on, the other headers in order (more than
# a list part's 20, Accept-Encoding anywhere among them).  Happy requests
# run twice.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Digest::MD5 qw(md5_hex);
use Time::HiRes qw(time);

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format llm '$request_uri rt=$request_time route=$llm_route '
                   'target=$llm_target attempts=$llm_attempts status=$status '
                   'us=$upstream_status ua=$upstream_addr';

    access_log %%TESTDIR%%/logs/access.log llm;

    client_max_body_size 20m;

    upstream provider {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            client_body_buffer_size 8m;
            llm_route chat;
            llm_target /_llm/provider;
        }

        location = /spill/v1/chat/completions {
            client_body_buffer_size 16k;
            llm_route spill;
            llm_target /_llm/provider;
        }

        location = /refused/v1/chat/completions {
            llm_route refused;
            llm_target /_llm/refused;
        }

        location = /slow/v1/chat/completions {
            llm_route slow;
            llm_target /_llm/slow;
        }

        location /plain/ {
            proxy_pass http://127.0.0.1:%%PORT_8081%%;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://provider/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /_llm/refused {
            internal;
            # nothing listens there: the harness only reserved the port
            proxy_pass http://127.0.0.1:%%PORT_8082%%/v1/chat/completions;
        }

        location /_llm/slow {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
            proxy_read_timeout 1s;
        }
    }
}
EOF

my $COMPLETION = '{"id":"chatcmpl-9x","object":"chat.completion",'
    . '"created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":'
    . '[{"index":0,"message":{"role":"assistant","content":"Hi there!"},'
    . '"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":'
    . '9,"completion_tokens":3,"total_tokens":12}}';

my $RATE_LIMITED = '{"error":{"message":"Rate limit reached for gpt-4o-mini '
    . 'in organization org-x on requests per min (RPM): Limit 3, Used 3.",'
    . '"type":"requests","param":null,"code":"rate_limit_exceeded"}}';

my $SERVER_ERROR = '{"error":{"message":"The server had an error while '
    . 'processing your request.","type":"server_error","param":null,'
    . '"code":null}}';

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => \&provider);
$t->run;

my $port = $t->port(8080);
# a client credential never reaches a log; except that at debug level
# nginx itself logs every request header ("http header: ...")
my $SECRET = 'sk-CANARY-proxy-7f3a9c';
$t->canary($SECRET) unless $t->log_level eq 'debug';

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"Say hi"}]}';

###############################################################################

sub provider {
    my ($req, $conn) = @_;
    my $case = $req->{headers}{'x-mock'}
        || ($req->{path} =~ m{^/plain/} ? 'plain' : 'ok');
    my @echo = ('x-echo-id' => $req->{headers}{'x-test-id'} || '-');

    if ($case eq 'ok') {
        return { status => 200,
                 headers => [ 'Content-Type' => 'application/json',
                              'x-request-id' => 'req_abc123',
                              'openai-processing-ms' => '321',
                              'openai-version' => '2020-10-01', @echo ],
                 body => $COMPLETION };
    }

    if ($case eq 'chunked') {
        return { status => 200, chunked => 50,
                 headers => [ 'Content-Type' => 'application/json',
                              'x-request-id' => 'req_chunked', @echo ],
                 body => $COMPLETION };
    }

    if ($case eq '429') {
        return { status => 429,
                 headers => [ 'Content-Type' => 'application/json',
                              'Retry-After' => '7',
                              'x-ratelimit-remaining-requests' => '0',
                              'x-request-id' => 'req_429', @echo ],
                 body => $RATE_LIMITED };
    }

    if ($case eq '500') {
        return { status => 500,
                 headers => [ 'Content-Type' => 'application/json',
                              'x-request-id' => 'req_500', @echo ],
                 body => $SERVER_ERROR };
    }

    if ($case eq 'stall') {
        $conn->stall(3);
        return { status => 200, body => $COMPLETION, close => 1 };
    }

    if ($case eq 'partial') {
        return $conn->partial(content_length => length($COMPLETION) + 500,
                              body => substr($COMPLETION, 0, 40));
    }

    if ($case eq 'chunked-cut') {
        return $conn->sse(events => [ '{"n":1}', '{"n":2}', '{"n":3}' ],
                          cut => 2);
    }

    return { status => 200, headers => [ 'Content-Type' => 'text/plain' ],
             body => "plain $req->{method} $req->{uri}\n" };
}

sub post {
    my ($uri, $body, %h) = @_;
    return parse_response(http_post($uri, $body, port => $port,
                                    headers => { %h }));
}

# the access log line of a request, found by its unique request URI
sub log_line {
    my ($uri) = @_;
    return $t->wait_for_log('logs/access.log', qr/^\Q$uri\E /) || '';
}

sub last_request {
    my ($path) = @_;
    my @r = grep { $_->{path} eq $path } @{$t->mock_requests('provider')};
    return $r[-1] || {};
}

my $mport = $t->port(8081);
my $errors_from = $t->log_offset('logs/error.log');

###############################################################################
# answers pass through unchanged

for my $round (1, 2) {
    my $uri = "/v1/chat/completions?case=ok$round";
    my $r = post($uri, $REQ, 'X-Test-Id' => "ok$round");

    is($r->{status}, 200, "chat.completion status ($round)");
    is($r->{headers}{'content-type'}, 'application/json',
       "chat.completion Content-Type ($round)");
    is($r->{headers}{'x-request-id'}, 'req_abc123',
       "x-request-id passed ($round)");
    is($r->{headers}{'openai-processing-ms'}, '321',
       "openai-processing-ms passed ($round)");
    is($r->{headers}{'openai-version'}, '2020-10-01',
       "openai-version passed ($round)");
    is($r->{headers}{'x-echo-id'}, "ok$round", "own answer ($round)");
    is($r->{headers}{'content-length'}, length $COMPLETION,
       "Content-Length ($round)");
    is($r->{body}, $COMPLETION, "body unchanged ($round)");
    ok($r->{complete}, "complete ($round)");

    my $m = last_request('/v1/chat/completions');
    is($m->{method}, 'POST', "provider got a POST ($round)");
    is($m->{body}, $REQ, "provider got the body ($round)");
    is($m->{headers}{'content-length'}, length $REQ,
       "provider got Content-Length ($round)");
    is($m->{headers}{'x-test-id'}, "ok$round",
       "client headers passed on ($round)");

    my $want = " route=chat target=/_llm/provider attempts=1 status=200"
        . " us=200 ua=127.0.0.1:$mport";
    like(log_line($uri), qr/\Q$want\E$/, "access log of a success ($round)");
}

for my $round (1, 2) {
    my $r = post("/v1/chat/completions?case=429-$round", $REQ,
                 'X-Mock' => '429');

    is($r->{status}, 429, "429 passed ($round)");
    is($r->{headers}{'retry-after'}, '7', "Retry-After passed ($round)");
    is($r->{headers}{'x-ratelimit-remaining-requests'}, '0',
       "x-ratelimit header passed ($round)");
    is($r->{headers}{'content-type'}, 'application/json',
       "429 Content-Type ($round)");
    is($r->{body}, $RATE_LIMITED, "429 error body unchanged ($round)");

    $r = post("/v1/chat/completions?case=500-$round", $REQ,
              'X-Mock' => '500');

    is($r->{status}, 500, "500 passed ($round)");
    is($r->{headers}{'x-request-id'}, 'req_500',
       "500 headers passed ($round)");
    is($r->{body}, $SERVER_ERROR, "500 error body unchanged ($round)");

    like(log_line("/v1/chat/completions?case=429-$round"),
         qr/ attempts=1 status=429 us=429 /, "access log of a 429 ($round)");
}

###############################################################################
# request bodies reach the provider byte for byte

my $big = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
    . join('', map { sprintf "%07d,", $_ } 1 .. 524288) . '"}]}';

for my $case ([ 'memory', '/v1/chat/completions' ],
              [ 'temp file', '/spill/v1/chat/completions' ])
{
    my ($name, $uri) = @$case;

    for my $round (1, 2) {
        my $from = $t->log_offset('logs/error.log');
        my $r = post("$uri?big=$round", $big);

        is($r->{status}, 200, "4 MB body in $name: status ($round)");

        my $m = last_request('/v1/chat/completions');
        is($m->{query}, "big=$round", "4 MB body in $name: seen ($round)");
        is($m->{body_length}, length $big,
           "4 MB body in $name: length ($round)");
        is($m->{headers}{'content-length'}, length $big,
           "4 MB body in $name: Content-Length ($round)");
        is($m->{body_md5}, md5_hex($big),
           "4 MB body in $name: bytes ($round)");
        ok(!$m->{chunked}, "4 MB body in $name: not chunked ($round)");

        SKIP: {
            skip 'the log level hides where the body was kept', 1
                if $t->log_level =~ /^(?:error|crit|alert|emerg)$/;

            my $log = $t->read_from('logs/error.log', $from);
            my $spilled = $log =~ /buffered to a temporary file/ ? 1 : 0;
            is($spilled, $name eq 'temp file' ? 1 : 0,
               "4 MB body in $name: where nginx kept it ($round)");
        }
    }
}

for my $case ([ 'memory', '/v1/chat/completions', 3000 ],
              [ 'temp file', '/spill/v1/chat/completions', 100000 ])
{
    my ($name, $uri, $size) = @$case;
    my $body = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
        . '"content":"' . ('z' x $size) . '"}]}';

    for my $round (1, 2) {
        my $r = parse_response(http_post("$uri?chunked=$round", $body,
                                         port => $port, chunked => 1000));
        is($r->{status}, 200, "chunked body in $name: status ($round)");

        my $m = last_request('/v1/chat/completions');
        is($m->{query}, "chunked=$round",
           "chunked body in $name: seen ($round)");
        ok(!$m->{chunked}, "chunked body in $name: de-chunked ($round)");
        ok(!defined $m->{headers}{'transfer-encoding'},
           "chunked body in $name: no Transfer-Encoding ($round)");
        is($m->{headers}{'content-length'}, length $body,
           "chunked body in $name: Content-Length ($round)");
        is($m->{body_md5}, md5_hex($body),
           "chunked body in $name: bytes ($round)");
    }
}

###############################################################################
# query string and headers of the attempt

for my $round (1, 2) {
    my $q = "api-version=2024-06-01&x=a%20b&r=$round";
    my $r = post("/v1/chat/completions?$q", $REQ,
                 'Accept-Encoding' => 'gzip, deflate, br',
                 'Authorization' => "Bearer $SECRET");
    is($r->{status}, 200, "query string: status ($round)");

    my $m = last_request('/v1/chat/completions');
    is($m->{uri}, "/v1/chat/completions?$q",
       "query string reaches the provider ($round)");

    my $ae = $m->{headers}{'accept-encoding'};
    ok(!defined $ae || $ae eq 'identity',
       "Accept-Encoding not passed on ($round)");
    is($m->{headers}{authorization}, "Bearer $SECRET",
       "Authorization passed on ($round)");
    ok(!$r->{headers}{'content-encoding'}, "identity answer ($round)");
}

# Accept-Encoding among more headers than a list part holds (20): first,
# in the middle, across the parts and last; every other header reaches the
# provider once and in order

for my $at ([0], [7, 8], [19, 20], [29], [3, 21, 29]) {
    my @h = map { ("X-H-$_" => "v$_") } 0 .. 29;
    my %ae = map { $_ => 1 } @$at;
    @h = map { $ae{$_} ? ('Accept-Encoding' => 'gzip')
                       : @h[2 * $_, 2 * $_ + 1] } 0 .. 29;
    my $uri = '/v1/chat/completions?ae=' . join(',', @$at);
    my $r = parse_response(http_post($uri, $REQ, port => $port,
                                     headers => \@h));
    is($r->{status}, 200, "Accept-Encoding at @$at of 30: status");

    my $m = last_request('/v1/chat/completions');
    my @got = map { "$_->[0]: $_->[1]" }
              grep { $_->[0] =~ /^(x-h-|accept-encoding)/i }
              @{$m->{header_list}};
    my @want = map { "X-H-$_: v$_" } grep { !$ae{$_} } 0 .. 29;
    is("@got", "@want", "Accept-Encoding at @$at of 30: the others in order");
}

###############################################################################
# keepalive between client and nginx

for my $round (1, 2) {
    my @cases = ('ok', 'chunked', '429', 'ok', 'chunked');
    my $i = 0;
    my @reqs = map {
        $i++;
        http_request('POST', "/v1/chat/completions?ka=$round-$i",
                     body => $REQ, keepalive => 1,
                     headers => [ 'Content-Type' => 'application/json',
                                  'X-Mock' => $_,
                                  'X-Test-Id' => "ka$round-$i" ])
    } @cases;

    my ($resps, $open) = http_keepalive(\@reqs, port => $port);
    my @r = map { parse_response($_) } @$resps;

    is(scalar @r, scalar @cases, "keepalive: all answered ($round)");
    is(join(',', map { $_->{status} // '' } @r), '200,200,429,200,200',
       "keepalive: statuses in order ($round)");
    is(join(',', map { $_->{headers}{'x-echo-id'} // '' } @r),
       join(',', map { "ka$round-$_" } 1 .. 5),
       "keepalive: answers in order ($round)");
    is(scalar(grep { $_->{complete} } @r), 5,
       "keepalive: each answer complete ($round)");
    is($r[1]{body}, $COMPLETION, "keepalive: chunked answer body ($round)");
    ok($r[1]{chunked} || defined $r[1]{headers}{'content-length'},
       "keepalive: chunked answer framed ($round)");
    ok($open, "keepalive: connection stays open ($round)");
}

my @ka = grep { $_->{query} =~ /^ka=/ } @{$t->mock_requests('provider')};
my %conns = map { $_->{conn} => 1 } @ka;
ok(keys %conns < @ka, 'upstream keepalive connections reused by attempts');

###############################################################################
# a location without llm_route is untouched

for my $round (1, 2) {
    my $r = parse_response(http_get("/plain/x?round=$round", port => $port,
                           headers => { 'Accept-Encoding' => 'gzip' }));
    is($r->{status}, 200, "plain location: status ($round)");
    is($r->{body}, "plain GET /plain/x?round=$round\n",
       "plain location: body ($round)");

    my $m = last_request('/plain/x');
    is($m->{headers}{'accept-encoding'}, 'gzip',
       "plain location: Accept-Encoding kept ($round)");

    like(log_line("/plain/x?round=$round"),
         qr/ route=- target=- attempts=- status=200 us=200 /,
         "plain location: no llm variables in the log ($round)");
}

my $happy_errors = $t->read_from('logs/error.log', $errors_from);
unlike($happy_errors, qr/\[(?:error|crit)\]/, 'no errors on happy paths');

###############################################################################
# not a POST

for my $round (1, 2) {
    my $before = $t->mock_count('provider');
    my $r = parse_response(http_get("/v1/chat/completions?get=$round",
                                    port => $port));

    is($r->{status}, 405, "GET: 405 ($round)");
    is($r->{headers}{allow}, 'POST', "GET: Allow: POST ($round)");
    is($t->mock_count('provider'), $before, "GET: no attempt ($round)");

    my $line = log_line("/v1/chat/completions?get=$round");
    like($line, qr/ status=405 us=- ua=-$/, "GET: access log ($round)");

    like($line, qr/ route=chat target=- attempts=0 /,
         "GET: route and no attempts in the log ($round)");
}

###############################################################################
# no answer from the target: the gateway's 502 and 504 error objects

for my $round (1, 2) {
    my $r = post("/refused/v1/chat/completions?refused=$round", $REQ);

    is($r->{status}, 502, "connect refused: 502 ($round)");
    like($r->{body}, qr/"code":"bad_gateway"/,
         "connect refused: error object ($round)");
    my $want = " route=refused target=/_llm/refused attempts=1 status=502"
        . " us=502 ua=127.0.0.1:" . $t->port(8082);
    like(log_line("/refused/v1/chat/completions?refused=$round"),
         qr/\Q$want\E$/, "connect refused: access log ($round)");
}

{
    my $before = $t->mock_count('provider');
    my $r = post('/slow/v1/chat/completions?slow=1', $REQ,
                 'X-Mock' => 'stall');

    # nginx's own time: the client's is late by its scheduling
    my ($took) = log_line('/slow/v1/chat/completions?slow=1')
                 =~ / rt=([\d.]+) /;
    $took //= -1;

    is($r->{status}, 504, 'read timeout: 504');
    like($r->{body}, qr/"code":"gateway_timeout"/,
         'read timeout: error object');
    ok($took >= 0.9 && $took < 2.9, 'read timeout: after proxy_read_timeout')
        or diag("took $took s");
    is($t->mock_count('provider'), $before + 1, 'read timeout: one attempt');
    like(log_line('/slow/v1/chat/completions?slow=1'),
         qr/ route=slow .* attempts=1 status=504 us=504 /,
         'read timeout: access log');
}

###############################################################################
# an answer cut after its headers: no clean end for the client
#
# The client must be able to tell: a JSON answer with a Content-Length
# comes short and the connection closes (as with a plain proxy_pass); an
# SSE stream (chunked) ends with the protocol's own error event after the
# events that came, then the end of the stream (docs/design.md section
# 5).  Once each, with "Connection: close" and on a keepalive connection.

for my $case ([ 'partial', 'cut answer with Content-Length' ],
              [ 'chunked-cut', 'cut chunked answer' ])
{
    my ($mock, $name) = @$case;

    my $start = time;
    my $raw = http_post("/v1/chat/completions?$mock=close", $REQ,
                        port => $port, timeout => 8,
                        headers => { 'X-Mock' => $mock });
    my $took = time - $start;
    my $r = parse_response($raw);

    is($r->{status}, 200, "$name: headers came");
    like($r->{body}, $mock eq 'partial' ? qr/^\Q${\ substr($COMPLETION, 0, 40)}\E$/
                                        : qr/^data: \{"n":1\}/,
         "$name: bytes before the cut came");
    ok($took < 5, "$name: connection closed, no hang");

    my $error_event = qr/\n\ndata: \{"error":\{"message":"the provider's stream was interrupted","type":"server_error","param":null,"code":"stream_interrupted"\}\}\n\n\z/;

    if ($mock eq 'partial') {
        ok(!$r->{complete}, "$name: no clean end") or diag($raw);

    } else {
        like($r->{body}, qr/^data: \{"n":1\}\n\ndata: \{"n":2\}\n\n/,
             "$name: the events before the cut, whole");
        like($r->{body}, $error_event, "$name: then the error event")
            or diag($raw);
        ok($r->{complete}, "$name: then the end of the stream");
    }

    my $s = http_start(http_request('POST', "/v1/chat/completions?$mock=ka",
                                    body => $REQ, keepalive => 1,
                                    headers => [ 'X-Mock' => $mock ]),
                       port => $port);
    $r = parse_response(read_response($s, 2));
    my $closed = conn_closed($s, 1.5);

    is($r->{status}, 200, "$name, keepalive: headers came");

    if ($mock eq 'partial') {
        ok($closed, "$name, keepalive: connection closed");

    } else {
        like($r->{body}, $error_event, "$name, keepalive: the error event");
        ok($r->{complete}, "$name, keepalive: the end of the stream");
    }
}

# the server still serves after all of the above
is(post('/v1/chat/completions?final=1', $REQ)->{status}, 200,
   'still serving');

done_testing;
