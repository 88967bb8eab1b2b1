#!/usr/bin/perl

# Memory of a long streamed answer (issue 4 item 6): a 50 MB SSE answer
# through an llm route costs the worker no more memory than through a
# plain proxy_pass.  One worker; the plain location streams first, then
# the route; the worker's peak RSS (VmHWM) after the route may not exceed
# the peak after the plain location by more than a little (a buffered
# answer would add tens of MB).  The client reads it all and gets every
# byte.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Digest::MD5 qw(md5_hex);

plan skip_all => 'peak RSS under AddressSanitizer' if $ENV{TEST_LLM_ASAN};

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
worker_processes 1;

events {}

http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /plain/v1/chat/completions {
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/stream;
            proxy_buffering off;
        }

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/stream;
        }
    }
}
EOF

# 50 MB of chat.completion.chunk events, 2 KB of content each
my $chunk = '{"object":"chat.completion.chunk","choices":[{"index":0,'
    . '"delta":{"content":"' . ('x' x 2000) . '"}}]}';
my $event = "data: $chunk\n\n";
my $count = int(50_000_000 / length($event) / 50) * 50;
my $total = $count * length($event) + length("data: [DONE]\n\n");

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => sub {
    my ($req, $conn) = @_;
    $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                            'Transfer-Encoding' => 'chunked' ]);
    for (1 .. $count / 50) {
        $conn->send_chunk($event x 50) or return;
    }
    $conn->send_chunk("data: [DONE]\n\n");
    $conn->end_chunks;
    $conn->close;
});

$t->run;

my $port = $t->port(8080);

# dies when /proc cannot tell: never a pass on 0 - 0
sub hwm_kb { $t->worker_hwm_kb }

sub stream {
    my ($path) = @_;
    my $s = http_start(http_request('POST', $path,
                       body => '{"model":"m","stream":true}'), port => $port);
    my $r = parse_response(read_all($s, 60));
    return $r;
}

my $base = hwm_kb();

my $r = stream('/plain/v1/chat/completions');
is(length $r->{body}, $total, 'plain: all 50 MB');
my $plain = hwm_kb();

$r = stream('/v1/chat/completions');
is(length $r->{body}, $total, 'route: all 50 MB');
ok($r->{complete}, 'route: a clean end');
my $route = hwm_kb();

diag("peak RSS: start $base kB, after plain $plain kB, after route "
     . "$route kB");

cmp_ok($route - $plain, '<', 2048,
       'route: the worker\'s peak RSS grew by ' . ($route - $plain)
       . ' kB over the plain proxy_pass');

done_testing;
