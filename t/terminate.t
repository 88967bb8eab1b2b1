#!/usr/bin/perl

# Requests that nginx itself terminates (docs/logging.md): at a reload,
# worker_shutdown_timeout closes the connections the old worker still
# serves.  Covers: a stream cut that way is recorded as stream_interrupted
# with its attempt's status and time, never as a clean 200 with empty
# attempt lists; an attempt still waiting for its answer is recorded with
# its time; the target is not blamed (no error counted, no cooldown).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Mock;

use JSON::PP qw(decode_json);
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
worker_shutdown_timeout 1s;

events {}

http {
    log_format term '$arg_id|$status|$llm_attempts|$llm_attempt_targets|'
                    '$llm_attempt_statuses|$llm_attempt_errors|'
                    '$llm_attempt_times|$llm_error_type';
    access_log %%TESTDIR%%/logs/access.log term;

    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
            proxy_read_timeout 10s;
        }

        location = /status {
            llm_status;
        }
    }
}
EOF

my $CHUNK = qq({"object":"chat.completion.chunk","choices":[]});

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
    handler => sub {
        my ($req, $conn) = @_;

        if ($req->{body} =~ /"stream":true/) {
            $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                    'Transfer-Encoding' => 'chunked' ])
                or return;
            for (1 .. 20) {
                $conn->send_chunk(Test::LLM::Mock::sse_event($CHUNK))
                    or return;
                sleep 0.3;
            }
            $conn->end_chunks;
            return $conn->close;
        }

        sleep 6;
        return { status => 200,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => Test::LLM::Mock::chat_completion() };
    });

$t->run;

my $port = $t->port(8080);

sub request {
    my ($id, $stream) = @_;
    my $body = '{"model":"m","messages":[]'
        . ($stream ? ',"stream":true' : '') . '}';
    return "POST /v1/chat/completions?id=$id HTTP/1.1\r\n"
        . "Host: localhost\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

my $stream = http_start(request('stream', 1), port => $port);
my ($got, $ok) = read_until($stream, qr/chat\.completion\.chunk/, 5);
ok($ok, 'the stream began');

my $waiting = http_start(request('waiting', 0), port => $port);
sleep 0.3;

ok($t->reload, 'reloaded; the old worker ended within its shutdown timeout');

read_all($stream, 5);
read_all($waiting, 5);

my %e;
for my $id (qw(stream waiting)) {
    my $line = $t->wait_for_log('logs/access.log', qr/^$id\|/, 5) // '';
    my %f;
    @f{qw(id status attempts targets statuses errors times error)}
        = split /\|/, $line, -1;
    $e{$id} = \%f;
}

is($e{stream}{status}, 200, 'stream: the status sent');
is($e{stream}{targets}, '/_llm/provider', 'stream: the attempt listed');
is($e{stream}{statuses}, 200, 'stream: its status');
is($e{stream}{errors}, 'stream_interrupted', 'stream: interrupted');
is($e{stream}{error}, 'stream_interrupted', 'stream: $llm_error_type');
cmp_ok($e{stream}{times} || 0, '>=', 0.9, 'stream: its time');

is($e{waiting}{targets}, '/_llm/provider', 'waiting: the attempt listed');
cmp_ok($e{waiting}{times} || 0, '>=', 0.9, 'waiting: its time');
isnt($e{waiting}{statuses}, 200, 'waiting: no status of an answer');

like($t->read_file('logs/error.log'),
     qr/llm route "chat": attempt to target "\/_llm\/provider" ended by nginx/,
     'the termination is logged');

my $st = decode_json(parse_response(http_get('/status', port => $port))
                     ->{body});
my $errors = 0;
$errors += $_ for values %{$st->{targets}{'/_llm/provider'}{errors}};
is($errors, 0, 'the target is not blamed');

done_testing;
