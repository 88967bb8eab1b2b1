#!/usr/bin/perl

# The canary guard across nodes (docs/directives.md, "Canary guard"): two
# nginx nodes share one real redis-server.  Covers: a canary that node A
# puts on hold is on hold on node B within a few sync intervals, though B
# saw no failure: B's keys of the canary go to the heaviest target and
# the canary's provider gets no request from B; the record in Redis
# ({llm:canary}:ROUTE:TARGET, "weight since attempts failures", a TTL of
# a week); node B restarted (shm lost) takes the hold again from Redis
# before it sends the canary anything; a reload to a new weight releases
# the canary on both nodes and the record of the old weight holds
# neither; a record deleted by hand no longer holds a node started with
# the old weight; with Redis down a node still puts a failing canary on
# hold by itself, and shares it once Redis is back.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP qw(decode_json);
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

my ($A, $B) = map { Test::LLM->new } 1 .. 2;

$A->has_daemon('redis-server');

my $redis = $A->run_redis;
my $redis_pid = $A->{daemons}[-1];

my $MOCK_BASE = $A->port(8081);
my $MOCK_CANARY = $A->port(8082);

$A->run_mock_provider(port => $MOCK_BASE, name => 'base',
                      handler => \&scripted);
$A->run_mock_provider(port => $MOCK_CANARY, name => 'canary',
                      handler => \&scripted);

my $KEY = '{llm:canary}:chat:/_llm/canary canary';
my $CANARY = '/_llm/canary canary';

sub config {
    my ($node, $base, $canary) = @_;
    $node->write_file_expand('nginx.conf', <<"EOF");
worker_processes 2;

events {}

http {
    log_format canary '\$http_x_n|\$llm_target|\$llm_canary|\$status';
    access_log %%TESTDIR%%/logs/access.log canary;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:$redis sync=100ms timeout=300ms;
    llm_cooldown off;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/base model=base weight=$base;
            llm_target /_llm/canary model=canary weight=$canary;
            llm_split_key \$http_x_user;
            llm_canary errors=0.5 min=10;
        }

        location = /probe/v1/chat/completions {
            llm_route probe;
            llm_target /_probe/base weight=$base;
            llm_target /_probe/canary weight=$canary;
            llm_split_key \$http_x_user;
        }

        location /_probe/ {
            internal;
            return 200 "\$uri\\n";
        }

        location = /_llm/base {
            internal;
            proxy_set_header X-Attempt \$llm_attempts;
            proxy_set_header X-Case "";
            proxy_pass http://127.0.0.1:$MOCK_BASE/base/v1/chat/completions;
        }

        location = /_llm/canary {
            internal;
            proxy_set_header X-Attempt \$llm_attempts;
            proxy_set_header X-Case \$http_x_canary;
            proxy_pass http://127.0.0.1:$MOCK_CANARY/canary/v1/chat/completions;
        }

        location = /status {
            access_log off;
            llm_status;
        }
    }
}
EOF
}

my $BODY = '{"model":"m","messages":[]}';

sub request {
    my ($uri, $n, $user, $case, $keepalive) = @_;
    return "POST $uri HTTP/1.1\r\nHost: localhost\r\n"
        . ($keepalive ? '' : "Connection: close\r\n")
        . "Content-Type: application/json\r\nX-N: $n\r\nX-User: $user\r\n"
        . ($case ? "X-Canary: $case\r\n" : '')
        . "Content-Length: " . length($BODY) . "\r\n\r\n$BODY";
}

sub post {
    my ($node, $n, $user, $case) = @_;
    return parse_response(http(request('/v1/chat/completions', $n, $user,
                                       $case),
                               port => $node->port(8080)) // '');
}

sub status {
    my ($node) = @_;
    my $r = parse_response(http_get('/status', port => $node->port(8080)));
    return eval { decode_json($r->{body}) } || {};
}

sub canary {
    my ($node) = @_;
    return status($node)->{routes}{chat}{canary}{targets}{$CANARY} || {};
}

# until the canary's state on the node is $state; the seconds it took,
# undef when it did not come within $timeout
sub wait_state {
    my ($node, $state, $timeout) = @_;
    my $start = time;
    while (time - $start < $timeout) {
        return time - $start if (canary($node)->{state} // '') eq $state;
        sleep 0.02;
    }
    return undef;
}

sub wait_up {
    my ($node, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if (status($node)->{redis}{state} // '') eq 'up';
        sleep 0.05;
    }
    return 0;
}

sub entry {
    my ($node, $n) = @_;
    my $line = $node->wait_for_log('logs/access.log', qr/^\Q$n\E\|/, 5)
               // '';
    my %e;
    @e{qw(n target canary status)} = split /\|/, $line, -1;
    return \%e;
}

# the keys of the canary at the node's weights
sub canary_keys {
    my ($node) = @_;
    my @users = map { "user-$_" } 1 .. 600;
    my ($res) = http_keepalive(
        [ map { request('/probe/v1/chat/completions', "probe", $_, undef, 1) }
          @users ], port => $node->port(8080));
    return map { $users[$_] }
           grep { (parse_response($res->[$_] // '')->{body} // '')
                  =~ m{^/_probe/canary} } 0 .. $#users;
}

config($_, 90, 10) for $A, $B;
$A->run;
$B->run;

ok(wait_up($A, 5) && wait_up($B, 5), 'both nodes linked to Redis');

my @keys = canary_keys($A);
cmp_ok(scalar @keys, '>=', 30, 'keys on the canary at 90/10');
my $k = 0;

is(canary($B)->{state}, 'ok', 'B: the canary is ok');

###############################################################################
# A finds the canary failing; B holds it within a few syncs

for my $i (1 .. 10) {
    post($A, "fail-$i", $keys[$k++ % @keys], '*:500');
}

is(canary($A)->{state}, 'hold', 'A: on hold after min=10 failures');
is(canary($A)->{from}, 'local', 'A: taken there');

my $took = wait_state($B, 'hold', 3);
ok(defined $took, 'B: on hold too');
note(sprintf 'B held %.3f s after A (sync=100ms)', $took // -1);

my $cb = canary($B);
is($cb->{from}, 'redis', 'B: from Redis');
is("$cb->{attempts} $cb->{failures}", '10 10', 'B: the figures of A');
is($cb->{since_ms}, canary($A)->{since_ms}, 'B: the time A took it');

like($B->read_file('logs/error.log'),
     qr/\[warn\].*llm route "chat": canary "\/_llm\/canary canary" put on hold, as another node found: 10 of 10 attempts failed/,
     'B: the hold is logged');

my $before = $A->mock_count('canary');
for my $i (1 .. 10) {
    my $r = post($B, "b-held-$i", $keys[$k++ % @keys], '*:ok');
    is($r->{status}, 200, "B held $i: answered");
}
is($A->mock_count('canary') - $before, 0, 'B: no request to the canary');
is(entry($B, 'b-held-1')->{canary}, 'hold', 'B: $llm_canary hold');
is(entry($B, 'b-held-1')->{target}, '/_llm/base', 'B: sent to the heaviest');

my $value = redis_command($redis, 'GET', $KEY) // '';
like($value, qr/^10 \d{13} 10 10$/, "Redis: the record ($value)");
my $pttl = redis_command($redis, 'PTTL', $KEY);
cmp_ok($pttl, '>', 6 * 86400 * 1000, 'Redis: kept for a week');

###############################################################################
# B restarted: its zone is new, the hold comes back from Redis

$B->stop;
$B->run;

$took = wait_state($B, 'hold', 5);
ok(defined $took, 'B restarted: on hold from Redis');
note(sprintf 'B restarted: held %.3f s after it started', $took // -1);
is(canary($B)->{from}, 'redis', 'B restarted: from Redis');

$before = $A->mock_count('canary');
for my $i (1 .. 10) {
    post($B, "b-restarted-$i", $keys[$k++ % @keys], '*:ok');
}
is($A->mock_count('canary') - $before, 0,
   'B restarted: no request to the canary');

###############################################################################
# a new weight on both: released; the record of the old weight is ignored

config($_, 80, 20) for $A, $B;
ok($A->reload && $B->reload, 'both reloaded at 80/20');

is(canary($A)->{state}, 'ok', 'A: released');
is(canary($B)->{state}, 'ok', 'B: released');

sleep 0.5;

is(canary($A)->{state}, 'ok', 'A: the old record holds it no more');
is(canary($B)->{state}, 'ok', 'B: the old record holds it no more');
like(redis_command($redis, 'GET', $KEY) // '', qr/^10 /,
     'Redis: the record of weight 10 is still there');

$before = $A->mock_count('canary');
for my $i (1 .. 5) {
    post($A, "a-released-$i", $keys[$k++ % @keys], '*:ok');
    post($B, "b-released-$i", $keys[$k++ % @keys], '*:ok');
}
is($A->mock_count('canary') - $before, 10, 'released: the canary is back');

# deleted by hand, the record holds no node started with the old weight

is(redis_command($redis, 'DEL', $KEY), 1, 'Redis: the record deleted');

$B->stop;
config($B, 90, 10);
$B->run;
ok(wait_up($B, 5), 'B started at 90/10 again');
sleep 0.5;
is(canary($B)->{state}, 'ok', 'B at the old weight: not held');

$B->stop;
config($B, 80, 20);
$B->run;
ok(wait_up($B, 5), 'B back at 80/20');

###############################################################################
# Redis down: A holds by itself; B learns it once Redis is back

kill 'TERM', $redis_pid;
my $deadline = time + 5;
sleep 0.02 while waitpid($redis_pid, WNOHANG) == 0 && time < $deadline;

ok(defined(wait_down($A, 5)), 'A: Redis down');

for my $i (1 .. 10) {
    post($A, "down-$i", $keys[$k++ % @keys], '*:503');
}

is(canary($A)->{state}, 'hold', 'Redis down: A puts it on hold');
is(canary($A)->{from}, 'local', 'Redis down: A took it');

$before = $A->mock_count('canary');
for my $i (1 .. 5) {
    my $r = post($A, "a-down-held-$i", $keys[$k++ % @keys], '*:ok');
    is($r->{status}, 200, "Redis down, held $i: answered");
}
is($A->mock_count('canary') - $before, 0, 'Redis down: no request to it');
is(canary($B)->{state}, 'ok', 'Redis down: B does not know');

$A->run_redis(port => $redis);

$took = wait_state($B, 'hold', 8);
ok(defined $took, 'Redis back: B holds it');
note(sprintf 'Redis back: B held %.3f s after it answered', $took // -1);
# 5 good attempts of A's since the release, then 6 failures of 11
like(redis_command($redis, 'GET', $KEY) // '', qr/^20 \d{13} 11 6$/,
     'Redis back: the record of weight 20');

done_testing;

sub wait_down {
    my ($node, $timeout) = @_;
    my $start = time;
    while (time - $start < $timeout) {
        return time - $start
            if (status($node)->{redis}{state} // '') eq 'down';
        sleep 0.05;
    }
    return undef;
}
