#!/usr/bin/perl

# Attempt engine (docs/design.md section 2): what the client gets when no attempt follows.
# Covers: the last provider answer unchanged (status, body, Content-Type,
# Content-Length, Retry-After, a custom header; a chunked one too) plus
# one x-should-retry: false when retries were spent, also when the
# provider sent its own x-should-retry; no x-should-retry when nothing was
# retried or the request succeeded; x-should-retry agreeing with
# $llm_retry_decision; the gateway's 502 and 504 (JSON) when no provider
# answered (refused connections, read timeouts); a provider answer
# followed by a refused fallback: the provider's answer; multi-MB error
# bodies: judged from their beginning and dropped when retried, streamed whole when
# final (held, then decided final; or committed as the last attempt),
# with proxy_buffering on and off, the worker's peak RSS (VmHWM) not
# growing by the body size; a multi-MB answer retried, then a refused
# fallback: never a truncated body presented as complete.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Digest::MD5 qw(md5_hex);
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%ENGINE%%

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;

        location = /last/v1/chat/completions {
            llm_route last;
            llm_target /_llm/t tries=2;
        }

        location = /single/v1/chat/completions {
            llm_route single;
            llm_target /_llm/t;
        }

        location = /one/v1/chat/completions {
            llm_route one;
            llm_target /_llm/t tries=3;
            llm_attempts 1;
        }

        location = /refused/v1/chat/completions {
            llm_route refused;
            llm_target /_llm/refused tries=2;
            llm_fallback /_llm/refused;
        }

        location = /timeout/v1/chat/completions {
            llm_route timeout;
            llm_target /_llm/slow tries=2;
        }

        location = /mixed/v1/chat/completions {
            llm_route mixed;
            llm_target /_llm/t;
            llm_fallback /_llm/refused;
        }

        location = /big/v1/chat/completions {
            llm_route big;
            llm_target /_llm/t tries=2;
        }

        location = /bignobuf/v1/chat/completions {
            llm_route bignobuf;
            llm_target /_llm/nobuf tries=2;
        }

        location = /bigfinal/v1/chat/completions {
            llm_route bigfinal;
            llm_target /_llm/t tries=2;
            llm_retry_on rate_limited;
        }

        location = /bigref/v1/chat/completions {
            llm_route bigref;
            llm_target /_llm/t;
            llm_fallback /_llm/refused;
        }

        location ~ ^/_llm/(t|slowclient)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }

        location /_llm/nobuf {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/nobuf/v1/chat/completions;
            proxy_buffering off;
        }

        location /_llm/slow {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/slow/v1/chat/completions;
            proxy_read_timeout 300ms;
        }

        location /_llm/refused {
            internal;
            # nothing listens there: the harness only reserved the port
            proxy_pass http://127.0.0.1:%%PORT_8083%%/v1/chat/completions;
        }
    }

    # small socket buffers towards the client: a client that reads late
    # makes nginx keep the answer in its buffers and the proxy temp file
    server {
        listen 127.0.0.1:%%PORT_8084%% sndbuf=32k;

        location = /v1/chat/completions {
            llm_route slowclient;
            llm_target /_llm/slowclient tries=2;
        }

        location ~ ^/_llm/(slowclient)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

my $port = engine_run($t, $conf);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"the end"}]}';

sub post {
    my ($uri, %h) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { %h }, timeout => 20));
}

sub seen {
    my ($id) = @_;
    return join ', ', map { (split m{/}, $_->{path})[1] }
                      @{mock_for($t, 'prov', $id)};
}

# values of a header as sent, in order
sub header_values {
    my ($r, $name) = @_;
    return map { $_->[1] } grep { lc $_->[0] eq lc $name }
                           @{$r->{header_list}};
}

###############################################################################
# the last provider answer, unchanged

for my $round (1, 2) {
    my $id = "last-$round";
    my $r = post("/last/v1/chat/completions?id=$id",
                 'X-Case' => '1:500;2:rl+ra=30+hdr=X-Provider-Trace:tr-9z');

    is($r->{status}, 429, "last answer: status ($round)");
    is($r->{body}, error_body('rl'), "last answer: body ($round)");
    is($r->{headers}{'content-length'}, length error_body('rl'),
       "last answer: Content-Length ($round)");
    is($r->{headers}{'content-type'}, 'application/json',
       "last answer: Content-Type ($round)");
    is($r->{headers}{'retry-after'}, '30',
       "last answer: Retry-After ($round)");
    is($r->{headers}{'x-provider-trace'}, 'tr-9z',
       "last answer: custom header ($round)");
    is($r->{headers}{'x-mock-attempt'}, 2,
       "last answer: of the second attempt ($round)");
    is(join(',', header_values($r, 'x-should-retry')), 'false',
       "last answer: one x-should-retry: false ($round)");
    is(seen($id), 't, t', "last answer: two requests ($round)");

    my $e = log_entry($t, $id);
    is($e->{status}, 429, "last answer: logged status ($round)");
    is($e->{decision}, 'attempts_exhausted', "last answer: decision ($round)");
    is($e->{errors}, 'server_error, rate_limited',
       "last answer: errors ($round)");
}

{
    my $id = 'last-chunked';
    my $r = post("/last/v1/chat/completions?id=$id",
                 'X-Case' => '1:503;2:500+chunked=1');
    is($r->{status}, 500, 'last answer chunked: status');
    is($r->{body}, error_body('500'), 'last answer chunked: body');
    ok($r->{complete}, 'last answer chunked: complete');
    is($r->{headers}{'x-should-retry'}, 'false',
       'last answer chunked: x-should-retry');
}

{
    my $id = 'last-first-held';
    my $r = post("/last/v1/chat/completions?id=$id",
                 'X-Case' => '1:503+chunked=1+ra=0;2:ok');
    is($r->{status}, 200, 'held chunked error, then 200: status');
    is($r->{body}, completion_body(), 'held chunked error, then 200: body');
    ok(!defined $r->{headers}{'retry-after'},
       'held chunked error, then 200: nothing of the held answer');
    ok(!defined $r->{headers}{'x-should-retry'},
       'held chunked error, then 200: no x-should-retry');
}

# a held chunked answer replayed: the client gets it framed anew

for my $case ([ '/last', '1:ctx+chunked=1', 'ctx', 'not retryable' ],
              [ '/mixed', '1:500+chunked=1', '500', 'then refused' ],
              [ '/last', '*:500+chunked=1', '500', 'retried' ])
{
    my ($route, $xcase, $kind, $name) = @$case;
    my $id = "replay-chunked-$kind-" . ($name =~ tr/ /_/r);
    my $r = post("$route/v1/chat/completions?id=$id", 'X-Case' => $xcase);
    is($r->{status}, action_response($kind)->{status},
       "held chunked answer, $name: status");
    is($r->{body}, error_body($kind), "held chunked answer, $name: body");
    ok($r->{complete}, "held chunked answer, $name: complete");
}

# keepalive: answers held, replayed, retried and passed keep their framing

{
    my @cases = ('1:500;2:ok', '*:rl', '1:401', '1:ok', '1:503;2:ctx',
                 '1:500+chunked=1;2:ok', '1:ok+chunked=1');
    my $i = 0;
    my @reqs = map {
        $i++;
        http_request('POST', "/last/v1/chat/completions?id=ka-$i",
                     body => $REQ, keepalive => 1,
                     headers => [ 'Content-Type' => 'application/json',
                                  'X-Case' => $_ ])
    } @cases;

    my ($resps, $open) = http_keepalive(\@reqs, port => $port);
    my @r = map { parse_response($_) } @$resps;

    is(join(',', map { $_->{status} // '-' } @r),
       '200,429,401,200,400,200,200', 'keepalive: statuses in order');
    is(join(',', map { $_->{body} eq ($_->{status} == 200 ? completion_body()
                     : $_->{status} == 429 ? error_body('rl')
                     : $_->{status} == 401 ? error_body('401')
                     : error_body('ctx')) ? 1 : 0 } @r),
       '1,1,1,1,1,1,1', 'keepalive: bodies');
    is(scalar(grep { $_->{complete} } @r), 7, 'keepalive: each complete');
    ok($open, 'keepalive: the connection stays open');
}

# the provider's own x-should-retry: the client still gets one value

{
    my $id = 'own-xsr';
    my $r = post("/last/v1/chat/completions?id=$id",
                 'X-Case' => '*:500+hdr=x-should-retry:true');
    is($r->{status}, 500, "provider's x-should-retry: status");
    is(seen($id), 't, t', "provider's x-should-retry: retried");

    is(join(',', header_values($r, 'x-should-retry')), 'false',
       "provider's x-should-retry: one x-should-retry: false");
}

###############################################################################
# no x-should-retry when nothing was retried

for my $round (1, 2) {
    my $id = "ok-$round";
    my $r = post("/last/v1/chat/completions?id=$id", 'X-Case' => '1:ok');
    is($r->{status}, 200, "success: 200 ($round)");
    is($r->{body}, completion_body(), "success: body ($round)");
    ok(!defined $r->{headers}{'x-should-retry'},
       "success: no x-should-retry ($round)");
}

{
    my $id = 'ok-after-retry';
    my $r = post("/last/v1/chat/completions?id=$id",
                 'X-Case' => '1:500;2:ok');
    is($r->{status}, 200, 'success after a retry: 200');
    ok(!defined $r->{headers}{'x-should-retry'},
       'success after a retry: no x-should-retry');
}

for my $kind (qw(401 ctx 404)) {
    my $id = "noretry-$kind";
    my $r = post("/last/v1/chat/completions?id=$id", 'X-Case' => "1:$kind");
    is($r->{status}, action_response($kind)->{status},
       "not retryable $kind: status");
    is($r->{body}, error_body($kind), "not retryable $kind: body");
    ok(!defined $r->{headers}{'x-should-retry'},
       "not retryable $kind: no x-should-retry");
    is(seen($id), 't', "not retryable $kind: one request");
    is(log_entry($t, $id)->{decision}, 'not_retryable',
       "not retryable $kind: decision");
}

# a route that allows this request no second attempt at all (one target,
# one try; or llm_attempts 1) is transparent: the provider's error is
# passed on as it is, without x-should-retry, so the client's own retries
# stay the one retry layer; its decision is not_retryable

for my $case ([ 'single', '1:500' ], [ 'one', '1:503' ]) {
    my ($route, $xcase) = @$case;
    my $id = "agree-$route";
    my $r = post("/$route/v1/chat/completions?id=$id", 'X-Case' => $xcase);
    my $e = log_entry($t, $id);

    is(seen($id), 't', "$route: one attempt");
    is($e->{decision}, 'not_retryable', "$route: decision");
    ok(!defined $r->{headers}{'x-should-retry'},
       "$route: no x-should-retry from a route that cannot retry");
}

###############################################################################
# no provider answer: the gateway's 502, 504 as OpenAI error objects

for my $round (1, 2) {
    my $id = "refused-$round";
    my $r = post("/refused/v1/chat/completions?id=$id");
    is($r->{status}, 502, "all refused: 502 ($round)");
    like($r->{body}, qr/^\{"error":\{.*"code":"bad_gateway"\}\}\n\z/,
         "all refused: the gateway's error object ($round)");
    is($r->{headers}{'x-should-retry'}, 'false',
       "all refused: x-should-retry ($round)");

    my $e = log_entry($t, $id);
    is($e->{statuses}, '502, 502, 502', "all refused: statuses ($round)");
    is($e->{errors}, 'connect_error, connect_error, connect_error',
       "all refused: errors ($round)");
    is($e->{decision}, 'attempts_exhausted', "all refused: decision ($round)");
    is($e->{status}, 502, "all refused: logged status ($round)");
}

{
    my $id = 'timeout';
    my $r = post("/timeout/v1/chat/completions?id=$id",
                 'X-Case' => '*:stall+stall=1');
    is($r->{status}, 504, 'all timed out: 504');
    like($r->{body}, qr/^\{"error":\{.*"code":"gateway_timeout"\}\}\n\z/,
         "all timed out: the gateway's error object");
    is($r->{headers}{'x-should-retry'}, 'false', 'all timed out: x-should-retry');
    is(seen($id), 'slow, slow', 'all timed out: two requests');
    # nginx's own time: the client's is late by its scheduling
    my $e = log_entry($t, $id);
    my $took = $e->{request_time} // -1;
    ok($took >= 0.55 && $took < 1.5,
       "all timed out: two read timeouts ($took s)");

    is($e->{errors}, 'timeout, timeout', 'all timed out: errors');
    is($e->{statuses}, '504, 504', 'all timed out: statuses');
}

for my $round (1, 2) {
    my $id = "mixed-$round";
    my $r = post("/mixed/v1/chat/completions?id=$id",
                 'X-Case' => '1:500+hdr=X-Provider-Trace:m1');
    is($r->{status}, 500, "answer, then refused: the provider's 500 ($round)");
    is($r->{body}, error_body('500'),
       "answer, then refused: the provider's body ($round)");
    is($r->{headers}{'x-provider-trace'}, 'm1',
       "answer, then refused: the provider's headers ($round)");
    is($r->{headers}{'x-should-retry'}, 'false',
       "answer, then refused: x-should-retry ($round)");

    my $e = log_entry($t, $id);
    is($e->{statuses}, '500, 502', "answer, then refused: statuses ($round)");
    is($e->{errors}, 'server_error, connect_error',
       "answer, then refused: errors ($round)");
    is($e->{status}, 500, "answer, then refused: logged status ($round)");
}

###############################################################################
# multi-MB error answers

my $SIZE = 5_000_000;
my $BIG = error_body('big', size => $SIZE);

# dies when /proc cannot tell: never a pass on 0 - 0
sub hwm { $t->worker_hwm_kb }

my $hwm_before = hwm();

for my $route (qw(big bignobuf)) {
    my $path = $route eq 'big' ? 't' : 'nobuf';

    for my $round (1, 2) {
        my $id = "$route-$round";
        my $r = post("/$route/v1/chat/completions?id=$id",
                     'X-Case' => "*:big+size=$SIZE");

        is($r->{status}, 500, "$route: the last big 500 ($round)");
        is(length $r->{body}, $SIZE, "$route: all of it ($round)");
        ok($r->{body} eq $BIG, "$route: its bytes ($round)");
        is($r->{headers}{'x-mock-attempt'}, 2,
           "$route: of the second attempt ($round)");
        is($r->{headers}{'x-should-retry'}, 'false',
           "$route: x-should-retry ($round)");
        is(seen($id), "$path, $path", "$route: retried ($round)");
        my ($first) = split /, /, log_entry($t, $id)->{errors} // '';
        is($first, 'server_error',
           "$route: judged from the beginning ($round)");
    }

    my $id = "$route-ok";
    my $r = post("/$route/v1/chat/completions?id=$id",
                 'X-Case' => "1:big+size=$SIZE+status=429;2:ok");
    is($r->{status}, 200, "$route: big 429 retried, then 200");
    is($r->{body}, completion_body(), "$route: big 429 retried, body");
}

for my $round (1, 2) {
    my $id = "bigfinal-$round";
    my $r = post("/bigfinal/v1/chat/completions?id=$id",
                 'X-Case' => "1:big+size=$SIZE");
    is($r->{status}, 500, "held big 500, decided final: status ($round)");
    is(length $r->{body}, $SIZE,
       "held big 500, decided final: all of it ($round)");
    ok($r->{body} eq $BIG, "held big 500, decided final: bytes ($round)");
    ok(!defined $r->{headers}{'x-should-retry'},
       "held big 500, decided final: no x-should-retry ($round)");
    is(seen($id), 't', "held big 500, decided final: one request ($round)");
    is(log_entry($t, $id)->{decision}, 'not_retryable',
       "held big 500, decided final: decision ($round)");
}

{
    my $hwm_after = hwm();
    ok(defined $hwm_before && defined $hwm_after
       && $hwm_after - $hwm_before < 4096,
       "big answers: worker's peak RSS grew by "
       . (($hwm_after // 0) - ($hwm_before // 0)) . " kB, not by the "
       . "bodies' size");
}

{
    my $id = 'bigref';
    my $r = post("/bigref/v1/chat/completions?id=$id",
                 'X-Case' => "1:big+size=$SIZE");
    is(seen($id), 't', 'big 500, then refused: one request at the mock');

    # the big answer was dropped after its beginning: the client must not
    # get that beginning as if it were the whole answer
    is($r->{status}, 502, 'big 500, then refused: nginx\'s 502, not the '
       . 'beginning of the dropped answer (got ' . length($r->{body})
       . ' bytes)');
    is($r->{headers}{'x-should-retry'}, 'false',
       'big 500, then refused: x-should-retry: false');
}

###############################################################################
# a complete answer to a client that reads late: the upstream is done
# before the answer's last byte went through the module's body filter

for my $case ([ 'ok+size=1000000', 200 ], [ 'big+size=1000000', 500 ]) {
    my ($action, $status) = @$case;

    for my $round (1, 2) {
        my $id = "late-$status-$round";
        my $sock = http_start(http_request('POST',
            "/v1/chat/completions?id=$id", body => $REQ,
            headers => [ 'Content-Type' => 'application/json',
                         'X-Case' => "*:$action" ]),
            port => $t->port(8084));

        sleep 0.3;
        my $r = parse_response(read_all($sock, 10));
        close $sock;

        my $want = $status == 200
            ? length completion_body(content => 'x' x 1000000) : 1000000;

        is($r->{status}, $status, "late reader, $status: status ($round)");
        is(length $r->{body}, $want, "late reader, $status: all of it ($round)");
        ok($r->{complete}, "late reader, $status: complete ($round)");

        my $e = log_entry($t, $id);
        my $last = (split /, /, $e->{errors} // '')[-1];

        is($last, $status == 200 ? '-' : 'server_error',
           "late reader, $status: recorded as delivered ($round)");
    }
}

done_testing;
