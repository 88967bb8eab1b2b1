#!/usr/bin/perl

# Retry budgets: the window slides by the millisecond (issue 17).  A
# route with ratio=0 min=5/s window=2s (a floor of 10 retries) spends
# its 10 retries within one second against an always-failing target;
# those retries leave the window over the second that follows the two,
# a part at a time (the status page's budget left climbs through values
# between 0 and 10), not all at its start.  A second later the whole
# floor is back.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use JSON::PP ();
use POSIX qw(floor);
use Time::HiRes qw(time sleep);

my $JSON = JSON::PP->new;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
worker_processes 1;

events {}

http {
    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0;
        llm_cooldown off;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=5/s window=2s;
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
EOF

$t->run;
my $port = $t->port(8080);
my $BODY = '{"model":"m","messages":[]}';

sub left {
    my $r = parse_response(http_get('/status', port => $port));
    my $s = eval { $JSON->decode($r->{body}) } || {};
    return $s->{routes}{chat}{budget}{left};
}

is(left(), 10, 'a floor of 10 retries');

# the burst: just after a second begins, 12 requests (10 retries fit)
my $now = time;
sleep(1 - ($now - floor($now))) if $now - floor($now) > 0.05;
my $burst = floor(time);
http_post('/v1/chat/completions', $BODY, port => $port) for 1 .. 12;
my $done = time;

SKIP: {
    skip 'the burst took over a second: a slow machine', 3
        if floor($done) != $burst;

    is(left(), 0, 'the floor spent within one second');

    # the second that follows the window: the burst leaves it
    my @seen;
    sleep($burst + 2.05 - time) if time < $burst + 2.05;
    while (time < $burst + 2.95) {
        push @seen, left();
        sleep 0.05;
    }

    my @between = grep { $_ > 0 && $_ < 10 } @seen;
    cmp_ok(scalar @between, '>=', 3,
           'the retries leave over a second: ' . join(' ', @seen));

    my $up = 1;
    $up &&= $seen[$_] >= $seen[$_ - 1] for 1 .. $#seen;
    ok($up, 'what is left only grows meanwhile');
}

sleep($burst + 3.1 - time) if time < $burst + 3.1;
is(left(), 10, 'the whole floor is back a second later');

done_testing;
