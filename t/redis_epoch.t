#!/usr/bin/perl

# llm_redis: the fleet's counts are one string of counters a second,
# {prefix:w}:EPOCH:SEC, each route's place in it given by the hash
# {prefix:w}:ix (docs/design.md section 4; issue 17).  Covers:
#
#   - two nodes that name their routes in another order get one index
#     per route name, and add into the same counters: the fleet's sum
#     of a route is both nodes' requests;
#   - the hash lost (FLUSHALL, as a Redis restarted without its data):
#     the nodes make a new epoch and give the routes indexes again; the
#     old epoch's keys are not read (a count planted in one does not
#     spend the budget), the new one's are (the same count there does);
#     no sync error, the link stays up;
#   - no index left (the hash says 4,096 are given): the route is
#     counted on its node alone ($llm_budget_source local), one warning
#     says why, the link stays up and the others still sync.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);

my ($A, $B) = (Test::LLM->new, Test::LLM->new);
$A->has_daemon('redis-server');

my $redis = $A->run_redis;
my $BODY = '{"model":"m","messages":[]}';

sub conf {
    my ($t, @routes) = @_;
    my $locations = join '', map { <<"EOF" } @routes;
        location = /$_/v1/chat/completions {
            llm_route $_;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=1/s window=10s;
        }
EOF

    $t->write_file_expand('nginx.conf', <<"EOF");
worker_processes 1;

events {}

http {
    log_format src '\$arg_id|\$llm_budget_source|\$llm_attempts';
    access_log %%TESTDIR%%/logs/src.log src;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:$redis sync=100ms timeout=500ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0;
        llm_cooldown off;

$locations
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
EOF
}

sub post {
    my ($t, $route, $id) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$id",
                                    $BODY, port => $t->port(8080)));
}

# the access log line of request $id: (budget source, attempts)
sub line_of {
    my ($t, $id) = @_;
    my $line;
    wait_until(sub {
        ($line) = grep { /^\Q$id\E\|/ } split /\n/,
                  $t->read_file('logs/src.log');
        return defined $line;
    }, 3);
    my (undef, $src, $attempts) = split /\|/, $line // '';
    return ($src // '', $attempts // '');
}

###############################################################################
# two nodes, routes named in another order: one index per name

conf($A, qw(one two three));
conf($B, qw(three two one));
$A->run;
$B->run;

ok($A->wait_redis && $B->wait_redis, 'both links up');

post($A, $_, "a-$_") for qw(one two three);
post($B, $_, "b-$_") for qw(three two one);
post($A, 'one', 'a-one2');

ok(wait_until(sub { fleet_sum($redis, 'one', 'r') == 3 }, 3),
   'one: both nodes\' requests in the same counter');
is(fleet_sum($redis, 'two', 'r'), 2, 'two: both nodes\' requests');
is(fleet_sum($redis, 'three', 'r'), 2, 'three: both nodes\' requests');

my %ix = map { $_ => (fleet_index($redis, $_))[1] } qw(one two three);
is(scalar(grep { defined } values %ix), 3, 'each route has an index');
is_deeply([ sort values %ix ], [ 0, 1, 2 ], 'three routes, indexes 0 to 2')
    or diag(explain(\%ix));
is(redis_command($redis, 'HGET', '{llm:w}:ix', '#n'), 3,
   'the hash gave three');

$B->stop;

###############################################################################
# the hash lost: a new epoch, the old keys never read

my ($epoch1) = fleet_index($redis, 'one');
like($epoch1, qr/^[0-9a-f]{16}$/, 'an epoch of 16 hex digits');

is(redis_command($redis, 'FLUSHALL'), 'OK', 'FLUSHALL');

# the node's next tick makes the hash again
post($A, 'two', 'f-0');

my $epoch2;
ok(wait_until(sub {
       ($epoch2) = fleet_index($redis, 'two');
       defined $epoch2 && fleet_sum($redis, 'two', 'r') >= 1;
   }, 3), 'a new hash, the route counted in it');
isnt($epoch2, $epoch1, 'a new epoch');

# a count in the old epoch's key of this second, at route two's index
# there: the node reads the new epoch's keys only
my $i2 = (fleet_index($redis, 'two'))[1];
my $now = int(time);
for my $sec ($now .. $now + 3) {
    redis_command($redis, 'BITFIELD', "{llm:w}:$epoch1:$sec", 'INCRBY',
                  'i32', '#' . (2 * $i2 + 1), 100);
}
sleep 0.3;

post($A, 'two', 'f-1');
my ($src, $attempts) = line_of($A, 'f-1');
is($src, 'cluster', 'after the flush: judged on the cluster\'s view');
is($attempts, 2, 'the old epoch\'s retries are not read: the retry made');

# the same count in the new epoch's keys spends the budget
fleet_add($redis, 'two', 'x', $_, 100) for int(time) .. int(time) + 3;
sleep 0.3;

post($A, 'two', 'f-2');
($src, $attempts) = line_of($A, 'f-2');
is($attempts, 1, 'the new epoch\'s retries are: no retry');

my $st = $A->status_json->{redis};
is($st->{state}, 'up', 'the link stayed up');
is($st->{sync_errors}, 0, 'no sync error');

$A->stop;

###############################################################################
# no index left: the route counts alone

is(redis_command($redis, 'FLUSHALL'), 'OK', 'FLUSHALL');
redis_command($redis, 'HSET', '{llm:w}:ix', '#epoch', '0123456789abcdef',
              '#n', 4096, 'one', 7);

$A->run;
ok($A->wait_redis, 'the link is up');

post($A, 'one', 'n-1');
post($A, 'two', 'n-2');
sleep 0.5;
post($A, 'one', 'n-3');
post($A, 'two', 'n-4');

is(($A->status_json->{redis} || {})->{sync_errors}, 0, 'no sync error');
is((line_of($A, 'n-3'))[0], 'cluster', 'a route with its index: cluster');
is((line_of($A, 'n-4'))[0], 'local', 'a route refused one: local');
ok(wait_until(sub { fleet_sum($redis, 'one', 'r') >= 2 }, 3),
   'the route with an index counted in Redis');
is(redis_command($redis, 'HGET', '{llm:w}:ix', 'two'), undef,
   'none given to the other');

$A->stop;

my @warn = $A->read_file('logs/error.log')
    =~ /\[warn\][^\n]*(route "two" is counted by this node alone[^\n]*)/g;
is(scalar @warn, 1, 'one warning for the route refused')
    or diag(join "\n", @warn);
like($warn[0] // '', qr/the fleet's counters hold 4096 routes already/,
     'it says why');
$A->allow_alerts(qr/route "two" is counted by this node alone/);

done_testing;
