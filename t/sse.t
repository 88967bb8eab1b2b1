#!/usr/bin/perl

# Streaming answers (docs/design.md section 2, issue 4 items 1-3).  Covers: an SSE answer
# reaches the client event by event although the target keeps nginx's
# default proxy_buffering on (the first event arrives long before the
# provider sends the last); the bytes arrive unchanged and the stream ends
# cleanly (last chunk), twice on one keepalive connection; a failure
# before the first byte (503) is retried and the stream of the next
# attempt reaches the client; a stream cut after its first byte is not
# retried and ends with the protocol's own error event (OpenAI-style for
# chat, Anthropic-style for messages, Responses-style for responses),
# after the last whole event when the cut fell inside one (the half event
# is never sent: events pass whole, even when the network splits them, with
# LF or CR LF lines); a stream that
# stalls past proxy_read_timeout ends the same way.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format sse '$arg_id|$status|$llm_attempts|$llm_attempt_errors|'
                   '$llm_error_type|$llm_stream|$request_time';
    access_log %%TESTDIR%%/logs/access.log sse;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider tries=2;
            llm_backoff base=1ms max=10ms;
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
            # proxy_buffering stays on: the module turns it off for streams
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/stream;
            proxy_read_timeout 1s;
            proxy_set_header X-Attempt $llm_attempts;
        }
    }
}
EOF

my @CHUNKS = map { qq({"object":"chat.completion.chunk","n":$_}) } 1 .. 5;

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => \&provider);
$t->run;

my $port = $t->port(8080);

my $REQ = '{"model":"gpt-4o-mini","stream":true,"messages":[]}';

sub provider {
    my ($req, $conn) = @_;
    my $case = $req->{headers}{'x-case'} // 'slow';
    my $attempt = $req->{headers}{'x-attempt'} // 1;

    if ($case eq 'slow') {
        return $conn->sse(events => [ @CHUNKS, '[DONE]' ], delay => 0.3);
    }

    if ($case eq 'fast') {
        return $conn->sse(events => [ @CHUNKS, '[DONE]' ]);
    }

    if ($case eq '503-then-stream') {
        return { status => 503, headers => [ 'Content-Type' =>
                                             'application/json' ],
                 body => '{"error":{"type":"server_error"}}' }
            if $attempt == 1;
        return $conn->sse(events => [ @CHUNKS, '[DONE]' ]);
    }

    if ($case eq 'cut') {
        return $conn->sse(events => [ @CHUNKS ], cut => 2);
    }

    if ($case eq 'cut-inside') {
        $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                'Transfer-Encoding' => 'chunked' ]);
        $conn->send_chunk("data: $CHUNKS[0]\n\ndata: {\"obj");
        return $conn->close;
    }

    if ($case eq 'split') {
        # events cut anywhere by the network: inside a line, between the
        # two LFs of a blank line, inside a CR LF pair
        $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                'Transfer-Encoding' => 'chunked' ]);
        for my $piece ("data: $CHUNKS[0]\n\ndata: {\"ob",
                       "j\":2}\n", "\ndata: $CHUNKS[2]\r\n\r",
                       "\ndata: $CHUNKS[3]\r", "\n\r\n", "data: [DONE]\n\n")
        {
            $conn->send_chunk($piece) or return;
            sleep 0.2;
        }
        $conn->end_chunks;
        return $conn->close;
    }

    if ($case eq 'cut-crlf') {
        $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                'Transfer-Encoding' => 'chunked' ]);
        $conn->send_chunk("data: $CHUNKS[0]\r\n\r\ndata: $CHUNKS[1]\r\n");
        sleep 0.2;
        $conn->send_chunk("\r");
        sleep 0.2;
        $conn->send_chunk("\ndata: {\"obj");
        return $conn->reset;
    }

    if ($case eq 'stall') {
        $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                'Transfer-Encoding' => 'chunked' ]);
        $conn->send_chunk("data: $CHUNKS[0]\n\n");
        $conn->stall(3);
        return $conn->close;
    }

    return { status => 500, body => 'unknown case' };
}

sub request {
    my ($path, $id, $case, %o) = @_;
    return http_request('POST', "$path?id=$id", body => $REQ,
                        keepalive => $o{keepalive},
                        headers => [ 'Content-Type' => 'application/json',
                                     'X-Case' => $case ]);
}

sub log_entry {
    my ($id) = @_;
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/) // '';
    my @f = split /\|/, $line, -1;
    return { status => $f[1], attempts => $f[2], errors => $f[3],
             error => $f[4], stream => $f[5], request_time => $f[6] };
}

my $expected = join '', map { "data: $_\n\n" } @CHUNKS, '[DONE]';

###############################################################################
# event by event, whatever proxy_buffering says

for my $round (1, 2) {
    my $start = time;
    my $s = http_start(request('/v1/chat/completions', "slow-$round", 'slow'),
                       port => $port);

    my $first = read_until($s, qr/data: \{"object":"chat\.completion\.chunk","n":1\}\n\n/, 5);
    my $t1 = time - $start;

    my $rest = read_until($s, qr/\r\n0\r\n\r\n\z/, 5);
    my $t2 = time - $start;

    ok(defined $first && $t1 < 1.0,
       sprintf('stream %d: the first event after %.2f s', $round, $t1));
    ok($t2 > 1.4, sprintf('stream %d: the last after %.2f s', $round, $t2));

    my $r = parse_response(($first // '') . ($rest // ''));
    is($r->{body}, $expected, "stream $round: the events unchanged");
    ok($r->{complete}, "stream $round: a clean end");
    like($r->{headers}{'content-type'}, qr{^text/event-stream},
         "stream $round: its content type");
}

# two streams on one keepalive connection

{
    my ($rs, $open) = http_keepalive([
        request('/v1/chat/completions', 'ka-1', 'fast', keepalive => 1),
        request('/v1/chat/completions', 'ka-2', 'fast', keepalive => 1),
    ], port => $port);

    is(parse_response($rs->[0])->{body}, $expected, 'keepalive: first');
    is(parse_response($rs->[1])->{body}, $expected, 'keepalive: second');
    ok($open, 'keepalive: the connection stays open');
}

###############################################################################
# a failure before the first byte is retried

{
    my $r = parse_response(http(request('/v1/chat/completions', 'retry',
                                        '503-then-stream'), port => $port));
    my $e = log_entry('retry');

    is($r->{status}, 200, 'before the first byte: retried');
    is($r->{body}, $expected, 'before the first byte: the stream');
    is($e->{errors}, 'overloaded, -', 'before the first byte: recorded');
    is($e->{stream}, '1', 'before the first byte: $llm_stream');
}

###############################################################################
# cut after the first byte: the protocol's error event, no retry

my %error_event = (
    '/v1/chat/completions' => qq(data: {"error":{"message":"the provider's )
        . qq(stream was interrupted","type":"server_error","param":null,)
        . qq("code":"stream_interrupted"}}\n\n),
    '/v1/messages' => qq(event: error\ndata: {"type":"error","error":)
        . qq({"type":"api_error","message":"the provider's stream was )
        . qq(interrupted"}}\n\n),
    '/v1/responses' => qq(event: error\ndata: {"type":"error","code":)
        . qq("stream_interrupted","message":"the provider's stream was )
        . qq(interrupted","param":null}\n\n),
);

for my $path (sort keys %error_event) {
    (my $id = "cut$path") =~ s{/}{-}g;
    my $raw = http(request($path, $id, 'cut'), port => $port, timeout => 5);
    my $r = parse_response($raw);
    my $e = log_entry($id);

    is($r->{status}, 200, "$path cut: the stream had begun");
    is($r->{body}, "data: $CHUNKS[0]\n\ndata: $CHUNKS[1]\n\n"
                   . $error_event{$path},
       "$path cut: the events, then the error event") or diag($raw);
    ok($r->{complete}, "$path cut: then the end of the stream");
    is($e->{attempts}, 1, "$path cut: not retried");
    is($e->{error}, 'stream_interrupted', "$path cut: recorded");
}

{
    my $r = parse_response(http(request('/v1/chat/completions', 'inside',
                                        'cut-inside'), port => $port));

    is($r->{body}, "data: $CHUNKS[0]\n\n"
                   . $error_event{'/v1/chat/completions'},
       'cut inside an event: the half event is dropped, then the error '
       . 'event');
    ok($r->{complete}, 'cut inside an event: then the end of the stream');
}

{
    my $r = parse_response(http(request('/v1/chat/completions', 'crlf',
                                        'cut-crlf'), port => $port));

    is($r->{body}, "data: $CHUNKS[0]\r\n\r\ndata: $CHUNKS[1]\r\n\r\n"
                   . $error_event{'/v1/chat/completions'},
       'cut inside an event, CR LF lines: whole events, then the error');
}

# an event split by the network reaches the client whole, each event as
# soon as its blank line came

{
    my $s = http_start(request('/v1/chat/completions', 'split', 'split'),
                       port => $port);
    my ($got, $ok) = read_until($s, qr/"obj":2\}\n\n/, 5);
    ok($ok, 'split: the second event came');
    unlike($got, qr/"n":4/, 'split: not the fourth yet, nor half of it');
    my $rest = read_all($s, 5);

    # nginx may linger before it logs: the client closes its end first
    close $s;
    my $r = parse_response($got . $rest);
    is($r->{body}, "data: $CHUNKS[0]\n\ndata: {\"obj\":2}\n\n"
                   . "data: $CHUNKS[2]\r\n\r\ndata: $CHUNKS[3]\r\n\r\n"
                   . "data: [DONE]\n\n",
       'split: the bytes unchanged');
    my $le = log_entry('split');
    is($le->{error}, '-', 'split: a whole stream') or diag(explain $le);

    my ($head, $raw) = split /\r\n\r\n/, $got . $rest, 2;
    my @sizes;
    while ($raw =~ s/^([0-9a-f]+)\r\n//) {
        my $n = hex $1;
        last if $n == 0;
        push @sizes, substr($raw, 0, $n, '');
        $raw =~ s/^\r\n//;
    }
    # every piece the client got ends where an event ends (a CR of a
    # blank line may come before its LF)
    my $so_far = '';
    my $whole = 0;
    for my $piece (@sizes) {
        $so_far .= $piece;
        $whole++ if $so_far =~ /(?:\n\n|\r\r|\r\n\r\n?|\n\r\n?)$/;
    }
    is($whole, scalar @sizes, 'split: every piece sent ends an event')
        or diag(explain \@sizes);
}

{
    my $r = parse_response(http(request('/v1/chat/completions', 'stall',
                                        'stall'), port => $port,
                                timeout => 6));

    # nginx's own time: the client's is late by its scheduling
    my $e = log_entry('stall');
    is($r->{body}, "data: $CHUNKS[0]\n\n" . $error_event{'/v1/chat/completions'},
       'stalled: the error event after proxy_read_timeout');
    ok(($e->{request_time} // 99) < 2.5,
       'stalled: no longer than the timeout');
    is($e->{error}, 'stream_interrupted', 'stalled: recorded');
}

done_testing;
