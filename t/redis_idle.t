#!/usr/bin/perl

# llm_redis: a route this node had no traffic on costs no Redis command
# (issue 17).  Twenty routes with a retry budget, one target, sync=50ms:
# idle, a tick is one MGET (the cooldowns), no INCRBY.  Traffic on one
# route makes the tick a script call that writes its counts and reads
# them with the cooldowns in one MGET, until its counts leave the window
# (2 s here); its first request is judged on the node's own
# counters ($llm_budget_source local: the node has no view of the route
# yet), the next ones on the cluster's.  A busy route with a 60-s window
# reads only the seconds that may still grow (a few hundred bytes a
# tick, not 120 keys), and PEXPIREs a key once.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);
use POSIX ();

my $t = Test::LLM->new;
$t->has_daemon('redis-server');

my $redis = $t->run_redis;

my $long = <<'EOF2';
        location = /long/v1/chat/completions {
            llm_route long;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.2 min=1/s window=60s;
        }
EOF2

my $routes = $long . join '', map { <<"EOF2" } 1 .. 20;
        location = /r$_/v1/chat/completions {
            llm_route r$_;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.2 min=1/s window=2s;
        }
EOF2

$t->write_file_expand('nginx.conf', <<"EOF2");
worker_processes 1;

events {}

http {
    log_format src '\$arg_id|\$llm_budget_source';
    access_log %%TESTDIR%%/logs/src.log src;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%REDIS%% sync=50ms timeout=500ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

$routes
        location = /_llm/ok {
            internal;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[]}';
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

# MGETs, INCRBYs and script calls a tick (syncs), over a second
sub per_tick {
    my $calls = sub {
        my $s = redis_command($redis, 'INFO', 'commandstats');
        my %c = $s =~ /cmdstat_(\w+):calls=(\d+)/g;
        return { mget => $c{mget} // 0, incrby => $c{incrby} // 0,
                 calls => ($c{evalsha} // 0) + ($c{eval} // 0),
                 syncs => $t->status_json->{redis}{syncs} };
    };
    my $a = $calls->();
    sleep 1;
    my $b = $calls->();
    my $ticks = ($b->{syncs} - $a->{syncs}) || 1;
    return { map { $_ => ($b->{$_} - $a->{$_}) / $ticks }
             qw(mget incrby calls) };
}

ok(wait_until(sub { ($t->status_json->{redis}{state} // '') eq 'up' }, 5),
   'the link is up');

my $idle = per_tick();
cmp_ok($idle->{mget}, '<=', 1.2,
       sprintf('idle: %.2f MGETs a tick, not 21', $idle->{mget}));
is($idle->{incrby}, 0, 'idle: no INCRBY');

http_post("/r1/v1/chat/completions?id=a$_", $BODY, port => $port)
    for 1 .. 2;
sleep 0.2;
http_post('/r1/v1/chat/completions?id=b', $BODY, port => $port);

my $busy = per_tick();
cmp_ok($busy->{mget}, '<=', 1.2,
       sprintf('one route counted in: %.2f MGETs a tick', $busy->{mget}));
cmp_ok($busy->{calls}, '<=', 1.2 + 0.1,
       sprintf('one route counted in: %.2f script calls a tick (the '
               . 'heartbeat\'s one a second)', $busy->{calls}));

my @src = map { (split /\|/)[1] } split /\n/, $t->read_file('logs/src.log');
is($src[0], 'local', 'the first request on an idle route: local');
is($src[-1], 'cluster', 'once read: cluster');

# its counts leave the 2-s window: idle again
sleep 2;
my $again = per_tick();
cmp_ok($again->{mget}, '<=', 1.2,
       sprintf('idle again: %.2f MGETs a tick', $again->{mget}));
is($again->{incrby}, 0, 'idle again: no INCRBY');

# a busy route with a window of 60 s: once read whole, a tick reads the
# seconds that may still grow (3 here: sync + timeout + 2 s), and a key
# gets its PEXPIRE once
{
    my $pid = fork() // die;
    if ($pid == 0) {
        my $end = time + 3.5;
        while (time < $end) {
            http_post('/long/v1/chat/completions', $BODY, port => $port);
            sleep 0.02;
        }
        POSIX::_exit(0);
    }

    sleep 1.5;

    my $stats = sub {
        my $s = redis_command($redis, 'INFO', 'commandstats') . "\n"
                . redis_command($redis, 'INFO', 'stats');
        my ($px) = $s =~ /cmdstat_pexpire:calls=(\d+)/;
        my ($in) = $s =~ /total_net_input_bytes:(\d+)/;
        return ($px // 0, $in // 0, $t->status_json->{redis}{syncs});
    };

    my @a = $stats->();
    sleep 1;
    my @b = $stats->();
    waitpid($pid, 0);

    my $ticks = ($b[2] - $a[2]) || 1;
    my $px = ($b[0] - $a[0]) / $ticks;
    my $in = ($b[1] - $a[1]) / $ticks;

    # 2 PEXPIREs a second run in the heartbeat script; one a second for
    # the route's request keys: 4 at most in 20 ticks, not 20 more
    cmp_ok($px, '<=', 0.25, sprintf('busy: %.2f PEXPIREs a tick', $px));

    # 6 keys, not 120 (each ~30 bytes with its framing)
    cmp_ok($in, '<', 1000, sprintf('busy: %.0f bytes to Redis a tick', $in));
}

done_testing;
