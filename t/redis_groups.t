#!/usr/bin/perl

# llm_redis: a second's counts of many routes go in BITFIELDs of at most
# 256 counters each (ngx_http_llm_sync_script.c, docs/design.md section
# 4).  300 routes counted in within one tick (sync=3s): every route's
# request reaches its own counter, each once, in three BITFIELDs or more
# for the tick's busiest second, and no sync error.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;
$t->has_daemon('redis-server');

my $redis = $t->run_redis;
my $N = 300;

my $routes = join '', map { <<"EOF2" } 1 .. $N;
        location = /g$_/v1/chat/completions {
            llm_route g$_;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.2 min=1/s window=10s;
        }
EOF2

$t->write_file_expand('nginx.conf', <<"EOF2");
worker_processes 1;

events {}

http {
    access_log off;

    llm_zone llm:8m;
    llm_redis 127.0.0.1:$redis sync=3s timeout=1s;

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

ok($t->wait_redis(timeout => 8), 'the link is up');

sub bitfields {
    my $s = redis_command($redis, 'INFO', 'commandstats');
    return $s =~ /cmdstat_bitfield:calls=(\d+)/ ? $1 : 0;
}

sub burst {
    my ($raw) = http_keepalive([
        map { "POST /g$_/v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
              . "Content-Length: " . length($BODY) . "\r\n\r\n$BODY" }
            1 .. $N
    ], port => $port);
    return scalar grep { (parse_response($_)->{status} // 0) == 200 } @$raw;
}

# each route's requests over the seconds Redis holds: one read of the
# hash and of each second (fleet_sum per route would be thousands of
# connections)
sub requests {
    my %ix = @{ redis_command($redis, 'HGETALL', '{llm:w}:ix') || [] };
    my $secs = fleet_seconds($redis);
    my %sum;
    for my $key (values %$secs) {
        my $v = redis_command($redis, 'GET', $key) // '';
        for my $r (1 .. $N) {
            my $i = $ix{"g$r"};
            next unless defined $i && length($v) >= 8 * $i + 4;
            $sum{$r} += unpack('l>', substr($v, 8 * $i, 4));
        }
    }
    return \%sum;
}

sub all_counted {
    my ($n) = @_;
    return wait_until(sub {
        my $sum = requests();
        return $N == grep { ($sum->{$_} // 0) == $n } 1 .. $N;
    }, 12);
}

# the routes get their places in a first tick, their counts go in the
# next one
is(burst(), $N, "$N requests answered");
ok(all_counted(1), "every route's request in its own counter, once");
is(redis_command($redis, 'HGET', '{llm:w}:ix', '#n'), $N,
   "$N places given");

# all routes known: a burst right after a tick and a second's start,
# whose counts the next tick (3 s later) sends as one second's
my $syncs = $t->status_json->{redis}{syncs};
ok(wait_until(sub { $t->status_json->{redis}{syncs} > $syncs }, 5),
   'a tick went');
sleep(1 - (time - int(time)) + 0.01);

my $before = bitfields();
my $second = int(time);
is(burst(), $N, "$N requests more answered");
is(int(time), $second, 'all within one second');

ok(all_counted(2), 'each route\'s second request counted, once');

my $calls = bitfields() - $before;
is($calls, 2, "one second's $N counters in 2 BITFIELDs (256 at most)");

my $st = $t->status_json->{redis};
is($st->{sync_errors}, 0, 'no sync error');
is($st->{state}, 'up', 'the link is up');

done_testing;
