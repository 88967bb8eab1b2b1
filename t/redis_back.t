#!/usr/bin/perl

# llm_redis: after an outage, Redis misses for a while what the other
# nodes counted alone meanwhile (they send it as they come back), so for
# a window a retry must fit the node's own part of the budget as well as
# the cluster's view (issue 17).  One node among three (two planted in
# Redis): alone it spends its part of the floor, 4 of 10; Redis comes
# back holding only this node's 4, and showed a room of 6 that the
# others may have spent already: the node takes none of it until the
# window is over.  Before, it took all 6.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;
$t->has_daemon('redis-server');

my $redis = $t->run_redis;

$t->write_file_expand('nginx.conf', <<'EOF2');
worker_processes 1;

events {}

http {
    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%REDIS%% sync=100ms timeout=300ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0;
        llm_cooldown off;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=1/s window=10s;
        }

        location = /_llm/fail {
            internal;
            return 500 '{"error":{"type":"server_error"}}';
        }

        location = /status {
            llm_status;
        }
    }
}
EOF2

$t->run;
my $port = $t->port(8080);

# two more nodes, their ids before this node's: it ranks 2 of 3, its
# part of the floor is 10 - floor(10 * 2 / 3) = 4
sub plant { fake_nodes($redis, '!fake:1', '!fake:2') }

sub burst {
    http_post('/v1/chat/completions', '{"model":"m","messages":[]}',
              port => $port) for 1 .. 6;
    return $t->status_json->{routes}{chat}{retries};
}

plant();
ok(wait_until(sub { ($t->status_json->{redis}{nodes} // 0) == 3 }, 4),
   'the node counts 3 nodes');

eval { redis_command($redis, 'SHUTDOWN', 'NOSAVE') };
ok(wait_until(sub {
       ($t->status_json->{redis}{budget_source} // '') eq 'local' }),
   'Redis away: local');

is(burst(), 4, 'alone: its part of the floor, 4');

$t->run_redis(port => $redis);
plant();

ok(wait_until(sub {
    my $r = $t->status_json->{redis};
    ($r->{budget_source} // '') eq 'cluster' && ($r->{nodes} // 0) == 3
}, 5), 'Redis back: cluster, 3 nodes');
sleep 0.3;

my $sent = 0;
$sent += fleet_count($redis, 'chat', 'x', $_) for int(time) - 9 .. int(time);
is($sent, 4, 'Redis got the 4 retries counted alone');

is(burst(), 4, 'back, within the window: no retry beyond its part');

done_testing;
