#!/usr/bin/perl

# llm_redis: the floor of a retry budget while Redis is away (issue 17).
# A node counting alone takes its part of the floor (min * window) by
# its rank among the nodes Redis last counted, in whole retries, so that
# the parts add up to one floor at any fleet size: with min=1/s and a
# 10-s window split over 12 nodes, ten nodes get one retry and two get
# none (a thousandth-share of 833 allowed none on any node, so the fleet
# made no retry at all).  The other 11 nodes are members planted in
# Redis, their ids sorted before or after this node's to pick its rank.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);


my $t = Test::LLM->new;
$t->has_daemon('redis-server');

my $conf = <<'EOF2';
worker_processes 1;

events {}

http {
    log_format src '$arg_id|$llm_budget_source|$llm_attempts';
    access_log %%TESTDIR%%/logs/src.log src;

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
            access_log off;
            llm_status;
        }
    }
}
EOF2

my $port;
my $BODY = '{"model":"m","messages":[]}';

# 11 more nodes in Redis, ids before ('!') or after ('~') this node's;
# then Redis goes away and $n requests that each want one retry are made
sub outage {
    my ($mark, $n) = @_;

    my $redis = $t->run_redis;
    $t->stop;
    $t->write_file_expand('nginx.conf', $conf);
    $t->run;
    $port = $t->port(8080);

    fake_nodes($redis, map { sprintf '%sfake:%02d', $mark, $_ } 1 .. 11);

    ok(wait_until(sub { ($t->status_json->{redis}{nodes} // 0) == 12 }, 4),
       "$mark: this node counts 12 nodes");

    eval { redis_command($redis, 'SHUTDOWN', 'NOSAVE') };

    ok(wait_until(sub {
        ($t->status_json->{redis}{budget_source} // '') eq 'local' }, 3),
       "$mark: Redis away, the node counts alone");

    my $retries = 0;
    for my $i (1 .. $n) {
        my $r = parse_response(http_post("/v1/chat/completions?id=$mark$i",
                                         $BODY, port => $port));
        is($r->{status}, 500, "$mark: request $i answered") if $i == 1;
    }

    return $t->status_json->{routes}{chat}{retries};
}

# rank 11 of 12: floor(10 * 12 / 12) - floor(10 * 11 / 12) = 1 retry
is(outage('!', 4), 1, 'the last of 12 nodes takes one retry of the floor');

# rank 0 of 12: floor(10 / 12) = 0: its part went to the others
is(outage('~', 4), 0, 'the first of 12 nodes takes none');

done_testing;
