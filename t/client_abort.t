#!/usr/bin/perl

# A client that goes away is not a provider failure (docs/directives.md,
# "Retries and fallbacks").  Covers: clients that close after the first
# SSE event ("stop generating"), or before the provider answered (FIN and
# RST, HTTP/1.1 and h2), more times than llm_cooldown fails=, leave the
# target out of any cooldown: the next client gets its answer, not 503;
# the attempt is recorded as client_closed with status 499 (as plain
# proxy_pass logs it), never invalid_request or stream_interrupted; the
# target's error counters stay at zero and the route counts the aborts.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Mock;

use JSON::PP qw(decode_json);
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format abort '$arg_id|$status|$llm_attempts|$llm_attempt_errors|'
                     '$llm_error_type|$llm_retry_decision|'
                     '$llm_attempt_statuses';
    access_log %%TESTDIR%%/logs/access.log abort;

    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        listen 127.0.0.1:%%PORT_8082%% http2;

        # llm_cooldown at its defaults: 5 failures in 10s cool a target

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider tries=2;
            llm_backoff base=1ms max=10ms;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
            proxy_read_timeout 5s;
        }

        location = /status {
            llm_status;
        }
    }
}
EOF

my @CHUNKS = map {
    qq({"id":"c1","object":"chat.completion.chunk","choices":)
    . qq([{"index":0,"delta":{"content":"w$_"}}]})
} 1 .. 4;

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
    handler => sub {
        my ($req, $conn) = @_;
        my $q = $req->{query} // '';
        my ($kind) = ($req->{body} =~ /"case":"(\w+)"/);
        $kind //= 'ok';

        if ($kind eq 'stream') {
            # the first event at once, the others slowly
            $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                    'Transfer-Encoding' => 'chunked',
                                    'Connection' => 'close' ]) or return;
            $conn->send_chunk(Test::LLM::Mock::sse_event($CHUNKS[0]))
                or return;
            for my $e (@CHUNKS[1 .. 3], '[DONE]') {
                sleep 0.5;
                $conn->send_chunk(Test::LLM::Mock::sse_event($e)) or return;
            }
            $conn->end_chunks;
            $conn->close;
            return;
        }

        if ($kind eq 'slow') {
            sleep 1.5;
        }

        return { status => 200,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => Test::LLM::Mock::chat_completion() };
    });

$t->run;

my $port = $t->port(8080);

sub body {
    my ($case, $stream) = @_;
    return qq({"model":"m","case":"$case")
        . ($stream ? ',"stream":true' : '') . '}';
}

sub request {
    my ($id, $body) = @_;
    return "POST /v1/chat/completions?id=$id HTTP/1.1\r\n"
        . "Host: localhost\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

sub rst_close {
    my ($s) = @_;
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    close $s;
}

sub entry {
    my ($id) = @_;
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/, 5);
    return {} unless defined $line;
    my %e;
    @e{qw(id status attempts errors error decision statuses)}
        = split /\|/, $line, -1;
    return \%e;
}

###############################################################################

# "stop generating": the client reads the first event and closes

for my $i (1 .. 3) {
    my $s = http_start(request("sse$i", body('stream', 1)), port => $port);
    my ($got, $ok) = read_until($s, qr/"w1"/, 5);
    ok($ok, "sse $i: the first event arrived");
    close $s;
}

for my $i (1 .. 3) {
    my $s = http_start(request("sserst$i", body('stream', 1)), port => $port);
    my ($got, $ok) = read_until($s, qr/"w1"/, 5);
    ok($ok, "sse rst $i: the first event arrived");
    rst_close($s);
}

# before the provider answered: FIN, then RST

for my $i (1 .. 3) {
    my $s = http_start(request("fin$i", body('slow')), port => $port);
    sleep 0.3;
    close $s;
}

for my $i (1 .. 3) {
    my $s = http_start(request("rst$i", body('slow')), port => $port);
    sleep 0.3;
    rst_close($s);
}

# h2: curl gives up before the provider answers

SKIP: {
    my $curl = `curl --version 2>/dev/null`;
    skip 'curl with HTTP/2 is not available', 3
        unless $curl =~ /HTTP2/;

    for my $i (1 .. 3) {
        system('curl', '-s', '-o', '/dev/null', '--http2-prior-knowledge',
               '-m', '0.4', '-H', 'Content-Type: application/json',
               '--data-binary', body('slow'),
               'http://127.0.0.1:' . $t->port(8082)
               . "/v1/chat/completions?id=h2$i");
        ok($? >> 8 == 28, "h2 $i: curl timed out before the answer");
    }
}

# the attempts in flight see the aborts within their timeouts

sleep 2;

my @ids = ((map { "sse$_" } 1 .. 3), (map { "sserst$_" } 1 .. 3),
           (map { "fin$_" } 1 .. 3), (map { "rst$_" } 1 .. 3));
push @ids, map { "h2$_" } 1 .. 3 if `curl --version 2>/dev/null` =~ /HTTP2/;

for my $id (@ids) {
    my $e = entry($id);
    my $want = $id =~ /^sse/ ? qr/^(?:200|499)$/ : qr/^499$/;
    like($e->{status} // '', $want, "$id: status as proxy_pass logs it");
    is($e->{errors}, 'client_closed', "$id: the attempt is client_closed");
    is($e->{error}, 'client_closed', "$id: \$llm_error_type");
    is($e->{attempts}, 1, "$id: no further attempt");
}

# the target is healthy: the next clients get their answers

for my $i (1 .. 2) {
    my $r = parse_response(http_post('/v1/chat/completions?id=after' . $i,
                                     body('ok'), port => $port));
    is($r->{status}, 200, "after the aborts, request $i is answered");
}

my $r = parse_response(http_post('/v1/chat/completions?id=afters',
                                 body('stream', 1), port => $port));
is($r->{status}, 200, 'after the aborts, a stream is answered');
like($r->{body}, qr/\[DONE\]/, 'the stream is whole');

my $log = $t->read_file('logs/error.log');
unlike($log, qr/cooling down/, 'no cooldown began');
unlike($log, qr/stream_interrupted|invalid_request/,
       'no provider failure logged');

my $st = decode_json(parse_response(http_get('/status', port => $port))
                     ->{body});
my $target = $st->{targets}{'/_llm/provider'};
my $errors = 0;
$errors += $_ for values %{$target->{errors}};
is($errors, 0, 'the target counted no error');
ok(!exists $target->{errors}{client_closed},
   'client_closed is not a target error');
is($target->{cooldowns}, 0, 'the target never cooled down');
is($st->{routes}{chat}{client_closed}, scalar @ids,
   'the route counted the clients that went away');

done_testing;
