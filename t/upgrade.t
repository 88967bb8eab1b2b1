#!/usr/bin/perl

# The binary upgrade of docs/operations.md: USR2 to the master starts a
# new master from the binary and the modules on disk now (a reload, HUP,
# keeps the module code already loaded), QUIT to the old master leaves
# the new one serving.  The new master logs the module's notice
# "llm module VERSION" and serves through the route; the counters start
# again from zero in the new master's shared memory.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP qw(decode_json);
use Time::HiRes qw(sleep);

my $t = Test::LLM->new(log_level => 'notice');
my $dir = $t->testdir;

# nginx passes the new binary only the environment "env" names: the
# sanitizer runtime of make test-asan (tools/nginx-asan.sh) goes with it
$t->write_file_expand('nginx.conf', <<'EOF');
daemon on;
env LD_PRELOAD;
env ASAN_OPTIONS;
env UBSAN_OPTIONS;

events {}

http {
    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route  chat;
            llm_target /_llm/mock;
            llm_retry_budget ratio=0.2 zone=llm;
        }

        location /_llm/mock {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }

        location = /status {
            llm_status;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location = /v1/chat/completions {
            default_type application/json;
            return 200 '{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"served by $pid"},"finish_reason":"stop"}]}';
        }
    }
}
EOF

open my $fh, '<', "$Test::LLM::REPO/CHANGES" or die "CHANGES: $!\n";
my ($version) = do { local $/; <$fh> } =~ /ngx_http_llm_module (\d+\.\d+\.\d+)/;
close $fh;

sub completion {
    return parse_response(http_post('/v1/chat/completions',
        '{"model":"m","messages":[{"role":"user","content":"hi"}]}',
        port => $t->port(8080),
        headers => { 'Content-Type' => 'application/json' }));
}

sub requests {
    my $s = decode_json(parse_response(http_get('/status',
                                               port => $t->port(8080)))
                        ->{body});
    return $s->{routes}{chat}{requests};
}

sub notices {
    return scalar grep { /\[notice\] .*llm module \Q$version\E / }
                  split /\n/, $t->read_file('logs/error.log');
}

$t->run;

my $old = $t->nginx_pid;
ok($old, "master $old");

is(completion()->{status}, 200, 'served by the old master');
completion();
is(requests(), 2, 'the old master counted 2 requests');
is(notices(), 1, 'notice logged at start');

# USR2: the old master renames its pid file and starts the new master

kill 'USR2', $old;

my $new;
for (1 .. 100) {
    if (-f "$dir/logs/nginx.pid.oldbin"
        && $t->read_file('logs/nginx.pid') =~ /^(\d+)/ && $1 != $old)
    {
        $new = $1;
        last;
    }
    sleep 0.1;
}
ok($new, "a new master ($new) after USR2") or BAIL_OUT('no new master');

# its listening sockets are inherited: it starts as soon as its workers do
for (1 .. 100) {
    last if notices() == 2;
    sleep 0.1;
}
is(notices(), 2, "the new master logs llm module $version");

# QUIT: the old master and its workers finish and exit

kill 'QUIT', $old;
for (1 .. 100) {
    last unless kill 0, $old;
    sleep 0.1;
}
ok(!kill(0, $old), 'the old master is gone');
ok(!-f "$dir/logs/nginx.pid.oldbin", 'nginx.pid.oldbin removed');

# the harness stops the master that runs now
$t->{nginx} = $new;

my $r = completion();
is($r->{status}, 200, 'served by the new master through the route');
is(requests(), 1, 'counters start from zero in the new master');

done_testing;
