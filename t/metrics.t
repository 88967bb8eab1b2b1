#!/usr/bin/perl

# Latency and token metrics (issue 16, docs/status.md "Latency and
# tokens"), through nginx with two workers.  Covers: the request
# duration and time-to-first-byte histograms per route, their buckets
# cumulative and monotonic, +Inf and _count equal to the requests, each
# request in the bucket its logged $request_time / $llm_ttft belongs in,
# _sum the sum of those; a stream's time to the first event (the mock
# waits before each event); tokens per route and target equal to the
# mock's usage numbers (the fallback's answer counted for the fallback);
# attempts by outcome for successes, a retry, a fallback, a failure that
# is not retried and a client that went away; the same numbers in the
# JSON page and the Prometheus text, which promtool passes; a reload with
# the same zone keeps every count; without the usage variables logged, a
# non-streamed answer's tokens are counted with llm_count_tokens on only,
# a stream's always; a new zone starts from zero; a zone too small for
# the metrics keeps the counters working, says metrics_full, logs it
# once and leaves the metrics out of both pages.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP ();
use Time::HiRes qw(time sleep);

my $JSON = JSON::PP->new;

my @LE = qw(0.05 0.1 0.25 0.5 1 2.5 5 10 20 30 60 120 +Inf);

my @OUTCOMES = qw(ok connect_error timeout rate_limited quota_exhausted
                  overloaded server_error auth_error invalid_request
                  context_length content_filter stream_interrupted
                  invalid_response client_closed);

my ($PROMTOOL) = grep { -x } map { "$_/promtool" }
                 split(/:/, $ENV{PATH} || ''), '/usr/bin';

my $t = Test::LLM->new;

# the zone; llm_count_tokens; whether the log has the usage variables
# (which make the module read every answer, whatever llm_count_tokens)
sub config {
    my ($zone, $tokens, $usage) = @_;

    my $in = $usage ? '$llm_usage_input_tokens' : '-';
    my $out = $usage ? '$llm_usage_output_tokens' : '-';

    $t->write_file_expand('nginx.conf', <<"EOF");
worker_processes 2;

events {}

http {
    llm_zone $zone;
    llm_count_tokens $tokens;

    log_format m '\$arg_id|\$status|\$request_time|\$llm_ttft|'
                 '$in|$out|'
                 '\$llm_attempt_targets|\$llm_attempt_errors';
    access_log %%TESTDIR%%/logs/access.log m;

    proxy_set_header X-Attempt \$llm_attempts;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=5ms;

        location = /chat/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/p model=gpt-4o-mini tries=2;
            llm_fallback /_llm/fb;
            llm_cooldown off;
        }

        location = /stream/v1/chat/completions {
            llm_route stream;
            llm_target /_llm/s;
            llm_cooldown off;
        }

        location ~ ^/_llm/(\\w+)\$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/\$1/v1/chat/completions;
        }

        location = /status {
            llm_status;
        }
    }
}
EOF
}

# a stream whose every event comes 0.3 s after the one before
$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => sub {
    my ($req, $conn) = @_;

    return scripted($req, $conn) unless $req->{path} =~ m{^/s/};

    my $chunk = '{"object":"chat.completion.chunk","model":"gpt-4o",'
        . '"choices":[{"index":0,"delta":{"content":"x"}}]}';
    $conn->sse(delay => 0.3, events => [
        $chunk, $chunk,
        '{"object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
        . '"usage":{"prompt_tokens":5,"completion_tokens":7,'
        . '"total_tokens":12}}',
        '[DONE]' ]);
    return;
});

config('llm:1m', 'off', 1);
$t->run;

my $port = $t->port(8080);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"hi"}]}';

sub post {
    my ($uri, $case) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { 'X-Case' => $case }));
}

sub status {
    my $r = parse_response(http_get('/status', port => $port));
    return eval { $JSON->decode($r->{body}) } || {};
}

sub prometheus {
    return parse_response(http_get('/status?format=prometheus',
                                   port => $port))->{body} // '';
}

# name{labels sorted} => value
sub samples {
    my ($text) = @_;
    my %s;
    for my $line (split /\n/, $text) {
        next if $line =~ /^#/;
        my ($name, $labels, $value) = $line =~ /^(\w+)(?:\{(.*)\})? (\S+)$/
            or next;
        my @l;
        while (defined $labels
               && $labels =~ /\G(\w+)="((?:[^"\\]|\\.)*)",?/gc)
        {
            push @l, "$1=\"$2\"";
        }
        $s{$name . '{' . join(',', sort @l) . '}'} = $value;
    }
    return \%s;
}

sub promtool_ok {
    my ($text, $name) = @_;
    SKIP: {
        skip 'promtool not found: apt-get install prometheus', 2
            unless $PROMTOOL;
        $t->write_file("$name.prom", $text);
        my $file = $t->testdir . "/$name.prom";
        my $out = `$PROMTOOL check metrics < '$file' 2>&1`;
        is($? >> 8, 0, "$name: promtool check metrics passes");
        is($out, '', "$name: promtool has nothing to say") or diag($out);
    }
}

my %LOG;

sub entry {
    my ($id) = @_;
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/, 10);
    return {} unless defined $line;
    my %e;
    @e{qw(id status time ttft input output targets errors)}
        = split /\|/, $line, -1;
    return $LOG{$id} = \%e;
}

###############################################################################
# traffic: three good answers, a retry, a retry and a fallback, a failure
# not retried, a client that goes away, two streams

my @chat = (
    [ ok1 => '*:ok', 200 ],
    [ ok2 => '*:ok', 200 ],
    [ ok3 => '*:ok', 200 ],
    [ retry => '1:500;*:ok', 200 ],
    [ fallback => '1:500;2:500;*:ok', 200 ],
    [ auth => '*:401', 401 ],
);

for my $c (@chat) {
    my ($id, $case, $status) = @$c;
    is(post("/chat/v1/chat/completions?id=$id", $case)->{status}, $status,
       "$id: $status");
    entry($id);
}

{
    my $body = $REQ;
    my $s = http_start("POST /chat/v1/chat/completions?id=gone HTTP/1.1\r\n"
                       . "Host: localhost\r\nX-Case: *:ok+delay=3\r\n"
                       . "Content-Type: application/json\r\n"
                       . "Content-Length: " . length($body) . "\r\n\r\n"
                       . $body, port => $port);
    sleep 0.5;
    close $s;
    is(entry('gone')->{errors}, 'client_closed', 'gone: client_closed');
}

for my $i (1, 2) {
    my $r = post("/stream/v1/chat/completions?id=stream$i", '');
    is($r->{status}, 200, "stream $i: 200");
    my $e = entry("stream$i");
    ok($e->{ttft} >= 0.29, "stream $i: first event after 0.3 s ($e->{ttft})");
    ok($e->{time} >= 1.1, "stream $i: four events ($e->{time} s)");
}

is($LOG{fallback}{targets}, '/_llm/p, /_llm/p, /_llm/fb',
   'fallback: the attempts as planned');

my $s = status();
my $text = prometheus();
my $p = samples($text);

promtool_ok($text, 'traffic');

###############################################################################
# histograms

# expected cumulative counts of values (seconds) in the fixed buckets
sub cumulative {
    my (@v) = @_;
    my @le = map { $_ eq '+Inf' ? 9e9 : $_ } @LE;
    return [ map { my $b = $_; scalar grep { $_ <= $b + 1e-9 } @v } @le ];
}

sub sum3 {
    my $sum = 0;
    $sum += $_ for @_;
    return sprintf '%.3f', $sum;
}

my %ROUTE_IDS = (
    chat => [ (map { $_->[0] } @chat), 'gone' ],
    stream => [ qw(stream1 stream2) ],
);

for my $route (sort keys %ROUTE_IDS) {
    my @ids = @{$ROUTE_IDS{$route}};
    my $r = $s->{routes}{$route} || {};
    my $requests = $r->{requests};

    is($requests, scalar @ids, "$route: requests");

    for my $h ([ duration => 'request_duration_seconds', 'time' ],
               [ ttfb => 'time_to_first_byte_seconds', 'ttft' ])
    {
        my ($field, $family, $logged) = @$h;
        my $name = "nginx_llm_route_$family";
        my @v = grep { $_ ne '-' } map { $LOG{$_}{$logged} } @ids;
        my $json = $r->{$field} || {};

        my @prom = map { $p->{"${name}_bucket{le=\"$_\",route=\"$route\"}"} }
                   @LE;
        my @mono = grep { defined $prom[$_] && defined $prom[$_ - 1]
                          && $prom[$_] >= $prom[$_ - 1] } 1 .. $#prom;

        is(scalar @mono, $#prom, "$route $field: buckets monotonic");
        is_deeply(\@prom, cumulative(@v),
                  "$route $field: each request in the bucket of its "
                  . "logged \$$logged");
        is($p->{"${name}_count{route=\"$route\"}"}, scalar @v,
           "$route $field: _count");
        is($prom[-1], scalar @v, "$route $field: +Inf is _count");
        is(sprintf('%.3f', $p->{"${name}_sum{route=\"$route\"}"} // -1),
           sum3(@v), "$route $field: _sum of the logged times");

        is_deeply([ map { $json->{buckets}{$_} } @LE ], \@prom,
                  "$route $field: JSON buckets as Prometheus'");
        is($json->{count}, scalar @v, "$route $field: JSON count");
        is(sprintf('%.3f', $json->{sum} // -1), sum3(@v),
           "$route $field: JSON sum");
    }

    is($r->{duration}{count}, $requests,
       "$route: duration count is the requests");
}

# the first bytes of the five good answers and of the provider's 401
# passed on, not of the client that went away
is($s->{routes}{chat}{ttfb}{count}, 6,
   'chat: ttfb of the six answered (a 401 passed on too)');

# a stream's first byte is its first event, 0.3 s after the head
is($p->{'nginx_llm_route_time_to_first_byte_seconds_bucket{le="0.25",'
        . 'route="stream"}'}, 0, 'stream: no first event within 0.25 s');
is($p->{'nginx_llm_route_request_duration_seconds_bucket{le="1",'
        . 'route="stream"}'}, 0, 'stream: no stream over within 1 s');

###############################################################################
# tokens and outcomes per route and target

my %expect = (
    'chat /_llm/p gpt-4o-mini' => {
        route => 'chat', target => '/_llm/p', model => 'gpt-4o-mini',
        input_tokens => 4 * 9, output_tokens => 4 * 3,
        attempts => { ok => 4, server_error => 3, auth_error => 1,
                      client_closed => 1 } },
    'chat /_llm/fb' => {
        route => 'chat', target => '/_llm/fb', model => '',
        input_tokens => 9, output_tokens => 3,
        attempts => { ok => 1 } },
    'stream /_llm/s' => {
        route => 'stream', target => '/_llm/s', model => '',
        input_tokens => 2 * 5, output_tokens => 2 * 7,
        attempts => { ok => 2 } },
);

for my $pair (sort keys %expect) {
    my $e = $expect{$pair};
    my ($route, $key) = split / /, $pair, 2;
    my $j = $s->{routes}{$route}{by_target}{$key} || {};
    my $labels = "model=\"$e->{model}\",route=\"$route\","
                 . "target=\"$e->{target}\"";

    for my $dir (qw(input output)) {
        is($j->{"${dir}_tokens"}, $e->{"${dir}_tokens"},
           "$pair: JSON ${dir}_tokens");
        is($p->{"nginx_llm_route_target_${dir}_tokens_total{$labels}"},
           $e->{"${dir}_tokens"}, "$pair: Prometheus $dir tokens");
    }

    my %want = map { $_ => $e->{attempts}{$_} // 0 } @OUTCOMES;
    is_deeply($j->{attempts}, \%want, "$pair: JSON attempts by outcome");
    is_deeply({ map { $_ => $p->{'nginx_llm_route_target_attempts_total{'
                                  . "model=\"$e->{model}\",outcome=\"$_\","
                                  . "route=\"$route\","
                                  . "target=\"$e->{target}\"}"} } @OUTCOMES },
              \%want, "$pair: Prometheus attempts by outcome");
}

# the outcomes add up to the attempts the target counts
{
    my $sum = 0;
    $sum += $_ for values %{$s->{routes}{chat}{by_target}{'/_llm/p gpt-4o-mini'}{attempts}};
    is($sum, $s->{targets}{'/_llm/p gpt-4o-mini'}{attempts},
       'outcomes add up to the target attempts');
}

# the usage the log saw is the usage counted
{
    my ($in, $out) = (0, 0);
    for my $id (@{$ROUTE_IDS{chat}}) {
        $in += $LOG{$id}{input} if $LOG{$id}{input} =~ /^\d+$/;
        $out += $LOG{$id}{output} if $LOG{$id}{output} =~ /^\d+$/;
    }
    my $bt = $s->{routes}{chat}{by_target};
    is($bt->{'/_llm/p gpt-4o-mini'}{input_tokens}
       + $bt->{'/_llm/fb'}{input_tokens}, $in,
       'chat: input tokens as $llm_usage_input_tokens');
    is($bt->{'/_llm/p gpt-4o-mini'}{output_tokens}
       + $bt->{'/_llm/fb'}{output_tokens}, $out,
       'chat: output tokens as $llm_usage_output_tokens');
}

# zone usage, both pages
{
    my $z = $s->{zones}[0] || {};
    ok(JSON::PP::is_bool($z->{metrics_full}) && !$z->{metrics_full},
       'zone: metrics_full false');
    is($p->{"nginx_llm_zone_bytes{kind=\"used\",zone=\"llm\"}"},
       $z->{used_bytes}, 'zone: bytes used in both');
    is($p->{"nginx_llm_zone_bytes{kind=\"total\",zone=\"llm\"}"},
       $z->{total_bytes}, 'zone: bytes total in both');
    is($p->{'nginx_llm_zone_metrics_full{zone="llm"}'}, 0,
       'zone: metrics full 0');
}

###############################################################################
# a reload with the same zone keeps every count

{
    ok($t->reload, 'reload');

    my $after = status();

    for my $route (qw(chat stream)) {
        for my $f (qw(duration ttfb by_target)) {
            is_deeply($after->{routes}{$route}{$f}, $s->{routes}{$route}{$f},
                      "reload: $route $f kept");
        }
    }

    is(post('/chat/v1/chat/completions?id=after', '*:ok')->{status}, 200,
       'reload: a request after it');
    entry('after');
    $after = status();
    is($after->{routes}{chat}{duration}{count}, 8, 'reload: counted on');
    is($after->{routes}{chat}{by_target}{'/_llm/p gpt-4o-mini'}
       {input_tokens}, 5 * 9, 'reload: tokens counted on');
}

###############################################################################
# without the usage variables, llm_count_tokens decides whether a
# non-streamed answer is read for its tokens; streams always are

sub tokens {
    my ($st, $route, $key) = @_;
    my $bt = $st->{routes}{$route}{by_target}{$key} || {};
    return [ $bt->{input_tokens}, $bt->{output_tokens} ];
}

for my $c ([ off => [ 5 * 9, 5 * 3 ] ], [ on => [ 6 * 9, 6 * 3 ] ]) {
    my ($tokens, $chat) = @$c;

    config('llm:1m', $tokens, 0);
    ok($t->reload, "llm_count_tokens $tokens: reload");

    is(post("/chat/v1/chat/completions?id=t$tokens", '*:ok')->{status},
       200, "llm_count_tokens $tokens: an answer");
    entry("t$tokens");
    is(post("/stream/v1/chat/completions?id=ts$tokens", '')->{status},
       200, "llm_count_tokens $tokens: a stream");
    entry("ts$tokens");

    my $st = status();
    is_deeply(tokens($st, 'chat', '/_llm/p gpt-4o-mini'), $chat,
              "llm_count_tokens $tokens: the answer's tokens");
    is_deeply(tokens($st, 'stream', '/_llm/s'),
              [ ($tokens eq 'off' ? 3 : 4) * 5, ($tokens eq 'off' ? 3 : 4) * 7 ],
              "llm_count_tokens $tokens: the stream's tokens");
}

###############################################################################
# a zone with room for the counters but not for every metric

{
    $t->stop;

    # 8 pages: the zone's own bookkeeping, 4 counter nodes, some metrics
    config('small:32k', 'on', 1);
    $t->run;

    my $s = status();
    my $z = $s->{zones}[0] || {};

    ok(JSON::PP::is_bool($z->{full}) && !$z->{full},
       'small zone: counters have room');
    ok($z->{metrics_full}, 'small zone: metrics_full true');
    ok($s->{routes}{chat}{counted} && $s->{routes}{stream}{counted},
       'small zone: both routes counted');

    # a restart with another zone: what is kept starts from zero
    is_deeply([ map { $_->{count} } grep { defined }
                map { $s->{routes}{$_}{duration} } qw(chat stream) ],
              [ map { 0 } grep { defined $s->{routes}{$_}{duration} }
                qw(chat stream) ],
              'small zone: a new zone, histograms from zero');

    my $left = grep { !defined $s->{routes}{$_}{duration}
                      || keys %{$s->{routes}{$_}{by_target}} < 1 }
               qw(chat stream);
    ok($left, 'small zone: some metrics left out');

    my @lines = grep { /llm zone "small" is full: .* has no metrics/ }
                split /\n/, $t->read_file('logs/error.log');
    ok(@lines && !grep({ !/\[error\]/ } @lines),
       'small zone: logged at error');
    my %seen;
    is(scalar(grep { $seen{$_}++ } map { /"small" is full: (.*)/ } @lines),
       0, 'small zone: once each');

    for my $i (1, 2) {
        is(post("/chat/v1/chat/completions?id=small$i", '1:500;*:ok')
           ->{status}, 200, "small zone: a retried request ($i)");
        entry("small$i");
    }

    is(post('/stream/v1/chat/completions?id=smalls', '')->{status}, 200,
       'small zone: a stream');
    entry('smalls');

    $s = status();
    is($s->{routes}{chat}{requests}, 2, 'small zone: requests counted');
    is($s->{routes}{chat}{retries}, 2, 'small zone: retries counted');

    my $text = prometheus();
    like($text, qr/^nginx_llm_zone_metrics_full\{zone="small"\} 1$/m,
         'small zone: nginx_llm_zone_metrics_full 1');

    for my $route (qw(chat stream)) {
        my $d = $s->{routes}{$route}{duration};
        if ($d) {
            is($d->{count}, $s->{routes}{$route}{requests},
               "small zone: $route histogram counts");
        } else {
            unlike($text, qr/_bucket\{route="$route"/,
                   "small zone: $route has no histogram samples");
        }
    }

    promtool_ok($text, 'small');
}

$t->stop;
$t->check_logs(allow => qr/is full: .* has no metrics|llm route "chat": attempt/);

done_testing;
