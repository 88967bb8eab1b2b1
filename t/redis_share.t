#!/usr/bin/perl

# llm_redis: between two syncs a node spends only its share of the room
# the cluster's view left (issue 17).  Every node reads the same view;
# were each to spend all the room it shows, N nodes would spend the
# budget N times over (3 and 6 nodes with a floor budget spent exactly N
# times the allowance at sync=1s).  A node's share is its part of the
# window's requests.  One real node; the other nodes' requests are
# planted in Redis: with 300 requests of others in the window and 10 of
# its own, its share of a floor of 20 is 20 x 10 / 310, less than one
# retry (rounded up or down at random, once per view: the burst may see
# two views), where it took all 10 before.  Alone (no planted requests) it
# takes one retry for each of its 10 requests, as without Redis.

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
    log_format src '$arg_id|$llm_budget_source|$llm_attempts';
    access_log %%TESTDIR%%/logs/src.log src;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%REDIS%% sync=200ms timeout=500ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0;
        llm_cooldown off;

        location = /solo/v1/chat/completions {
            llm_route solo;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=2/s window=10s;
        }

        location = /crowd/v1/chat/completions {
            llm_route crowd;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=2/s window=10s;
        }

        location = /_llm/fail {
            internal;
            return 500 '{"error":{"type":"server_error"}}';
        }

        location = /status {
            access_log off;
            llm_status;
        }
    }
}
EOF2

$t->run;
my $port = $t->port(8080);
my $BODY = '{"model":"m","messages":[]}';

sub burst {
    my ($route) = @_;
    for my $i (1 .. 10) {
        http_post("/$route/v1/chat/completions?id=$route$i", $BODY,
                  port => $port);
    }
    return $t->status_json->{routes}{$route}{retries};
}

ok(wait_until(sub {
    ($t->status_json->{redis}{budget_source} // '') eq 'cluster' }, 5),
   'the link is up');

# a route this node has no traffic on is not read from Redis: one
# request (and its retry) first, so that the bursts are judged on a view
http_post("/$_/v1/chat/completions?id=warm", $BODY, port => $port)
    for qw(solo crowd);
sleep 0.5;

is(burst('solo') - 1, 10, 'alone: a retry for each request, the floor allows');
my @src = map { (split /\|/)[1] } split /\n/, $t->read_file('logs/src.log');
is($src[-1], 'cluster', 'alone: judged on the cluster\'s view');

# others' requests in every second the burst may fall in, then a view
my $now = int(time);
fleet_add($redis, 'crowd', 'r', $_, 300) for $now - 1 .. $now + 5;
sleep 0.5;

my $crowd = burst('crowd') - 1;
cmp_ok($crowd, '<=', 2,
       "among others: $crowd retries, its share of the room, not all of it");

done_testing;
