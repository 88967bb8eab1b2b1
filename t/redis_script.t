#!/usr/bin/perl

# llm_redis: a tick is one script call (EVALSHA), whatever the number of
# busy routes (issue 17).  Covers:
#
#   - five routes counted in, sync=500ms: one script call a tick, at
#     most two BITFIELDs in it (a second's end), and the seconds' keys
#     hold what the node counted of each route, each key with its
#     PEXPIRE;
#   - Redis forgets the script (SCRIPT FLUSH, as after a restart): the
#     tick's EVALSHA gets NOSCRIPT and goes again as EVAL, which loads
#     it; no count is lost, the link never goes down, nothing is logged
#     above notice;
#   - 140 routes with a 60-s window, given their indexes and read whole
#     at their first view in one tick or two (the requests take far
#     less than a sync): every route's count comes back, and each is
#     judged on the cluster's view next.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);
use JSON::PP ();

my $JSON = JSON::PP->new;

my $t = Test::LLM->new;
$t->has_daemon('redis-server');

my $redis = $t->run_redis;

my $routes = join '', map { <<"EOF2" } 1 .. 5;
        location = /r$_/v1/chat/completions {
            llm_route r$_;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.2 min=1/s window=10s;
        }
EOF2

$routes .= join '', map { <<"EOF2" } 1 .. 140;
        location = /w$_/v1/chat/completions {
            llm_route w$_;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.2 min=1/s window=60s;
        }
EOF2

$t->write_file_expand('nginx.conf', <<"EOF2");
worker_processes 2;

events {}

http {
    log_format src '\$arg_id|\$llm_budget_source';
    access_log %%TESTDIR%%/logs/src.log src;

    llm_zone llm:8m;
    llm_redis 127.0.0.1:$redis sync=500ms timeout=500ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

$routes
        location = /_llm/ok {
            internal;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[]}';
        }

        location = /status {
            llm_status;
        }
    }
}
EOF2

$t->run;
my $port = $t->port(8080);
my $BODY = '{"model":"m","messages":[]}';

sub status {
    my $r = parse_response(http_get('/status', port => $port));
    return eval { $JSON->decode($r->{body}) } || {};
}


sub calls {
    my $s = redis_command($redis, 'INFO', 'commandstats');
    my %c = $s =~ /cmdstat_(\w+):calls=(\d+)/g;
    return { evalsha => $c{evalsha} // 0, eval => $c{eval} // 0,
             mget => $c{mget} // 0, bitfield => $c{bitfield} // 0,
             syncs => status()->{redis}{syncs} // 0 };
}

# the route's requests in Redis, all its seconds; and keys without a TTL
sub in_redis {
    my ($route) = @_;
    my $secs = fleet_seconds($redis);
    my ($sum, $forever) = (0, 0);
    for my $sec (keys %$secs) {
        $sum += fleet_count($redis, $route, 'r', $sec);
        $forever++ if redis_command($redis, 'PTTL', $secs->{$sec}) < 0;
    }
    return ($sum, $forever, scalar keys %$secs);
}

ok(wait_until(sub { (status()->{redis}{state} // '') eq 'up' }, 5),
   'the link is up');

my %sent;

sub load {
    my ($n) = @_;
    for my $i (1 .. $n) {
        for my $r (1 .. 5) {
            http_post("/r$r/v1/chat/completions", $BODY, port => $port);
            $sent{$r}++;
        }
        sleep 0.1;
    }
}

my ($a, $t0) = (calls(), time);
load(20);
my ($b, $t1) = (calls(), time);

# and the heartbeat's EVAL once a second, and the first call's EVAL
my $ticks = $b->{syncs} - $a->{syncs};
my $script = $b->{evalsha} + $b->{eval} - $a->{evalsha} - $a->{eval};
cmp_ok($ticks, '>=', 3, "$ticks ticks under load");
cmp_ok($script, '<=', $ticks + int($t1 - $t0) + 2,
       sprintf('five busy routes: %d script calls in %d ticks, %.1f s',
               $script, $ticks, $t1 - $t0));
my $mget = $b->{mget} - $a->{mget};
cmp_ok($mget, '<=', $ticks + 2, "one MGET a tick for all: $mget");
my $bitfield = $b->{bitfield} - $a->{bitfield};
cmp_ok($bitfield, '>=', 1, "the routes' deltas written: $bitfield BITFIELDs");
cmp_ok($bitfield, '<=', 2 * $ticks + 2,
       'at most two a tick (a second ended) for five routes');

sub counted {
    for my $r (1 .. 5) {
        my ($sum) = in_redis("r$r");
        return 0 unless $sum == $sent{$r};
    }
    return 1;
}

ok(wait_until(\&counted, 3), 'each route\'s keys hold its requests');

my ($forever) = (0);
$forever += (in_redis("r$_"))[1] for 1 .. 5;
is($forever, 0, 'every key has a TTL');

# Redis forgets the script
my $evals = calls()->{eval};
is(redis_command($redis, 'SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH');

load(10);

ok(wait_until(\&counted, 3), 'after SCRIPT FLUSH no count lost');
ok(wait_until(sub { calls()->{eval} > $evals }, 2),
   'the call went again as EVAL');

my $before = calls();
sleep 1.2;
my $after = calls();
cmp_ok($after->{evalsha}, '>', $before->{evalsha},
       'and EVALSHA works again');

# 140 first views in a tick or two
{
    my $syncs = status()->{redis}{syncs};

    http_post("/w$_/v1/chat/completions?id=w", $BODY, port => $port)
        for 1 .. 140;

    # two ticks: the first view is the tick after the requests
    ok(wait_until(sub { status()->{redis}{syncs} >= $syncs + 3 }, 5),
       'the ticks go on');

    my $seen = 0;
    for my $r (1 .. 140) {
        my ($sum) = in_redis("w$r");
        $seen++ if $sum == 1;
    }
    is($seen, 140, 'a hundred and forty routes counted');

    # each route has its view: the next request is judged on it
    http_post("/w$_/v1/chat/completions?id=w2", $BODY, port => $port)
        for 1 .. 140;
    # a line may come just after the answer
    my @src;
    wait_until(sub {
        @src = grep { /^w2\|/ } split /\n/, $t->read_file('logs/src.log');
        return @src >= 140;
    }, 3);
    is(scalar(grep { $_ eq 'w2|cluster' } @src), 140,
       'each judged on the cluster\'s view');
}

my $st = status()->{redis};
is($st->{link_downs}, 0, 'the link never went down');
is($st->{sync_errors}, 0, 'no sync error');

$t->stop;

my $log = $t->read_file('logs/error.log');
unlike($log, qr/\[(warn|error|crit|alert|emerg)\]/,
       'nothing logged above notice');

done_testing;
