#!/usr/bin/perl

# llm_redis ... cluster: a tick's calls grouped by hash slot, for Redis
# Cluster or a cluster-aware proxy (docs/directives.md, llm_redis;
# docs/design.md section 4).  One real redis-server runs with
# cluster-enabled yes and owns all 16384 slots: it refuses, as a Redis
# Cluster does, a command or script whose declared keys are in several
# slots (CROSSSLOT).  MONITOR shows, after each script call, the commands
# the script ran.  Covers:
#
#   - two nodes with "cluster": links up, no sync error; one budget for
#     both (min=1/s window=10s: 10 retries, not 10 each); a cooldown
#     begun on one node skips the target on the other;
#   - every script call names keys of one slot, the first one of them in
#     it (a proxy routes by it), and every key the script touches is
#     among them; every MGET is of one slot; the counts of all routes
#     go in one call a tick, in {prefix:w}'s slot, the cooldowns and the
#     canaries' holds one MGET each;
#   - Redis forgets the script (SCRIPT FLUSH): a call refused with
#     NOSCRIPT goes again as EVAL, no count is lost;
#   - the same nodes without "cluster" (the one call also names the
#     cooldown and canary keys): Redis refuses it, CROSSSLOT, the status
#     page counts sync errors and the error log says why;
#   - nginx -t: "cluster=on" and "db=1" with "cluster" refused.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP qw(encode_json);
use Time::HiRes qw(time sleep);

my ($A, $B) = map { Test::LLM->new } 1 .. 2;
my @nodes = ($A, $B);

$A->has_daemon('redis-server');
$A->has_daemon('redis-cli');

my $redis = $A->run_redis(args => [ '--cluster-enabled', 'yes',
                                    '--cluster-config-file', 'nodes.conf' ]);

# ADDSLOTS, not 7.0's ADDSLOTSRANGE: Redis 3.0 and later
is(redis_command($redis, 'CLUSTER', 'ADDSLOTS', 0 .. 16383), 'OK',
   'one node owns every slot');
ok(wait_until(sub {
       redis_command($redis, 'CLUSTER', 'INFO') =~ /cluster_state:ok/
   }, 10), 'the cluster is up');

# Redis itself: the check this file relies on
ok(!eval { redis_command($redis, 'MGET', '{llm:cd}:a', '{llm:bud}:r:1') },
   'the cluster refuses an MGET over two slots');
like($@, qr/CROSSSLOT/, 'with CROSSSLOT');

my $MONITOR = $A->testdir . '/monitor.log';

$A->run_daemon(sub {
    open STDOUT, '>', $MONITOR or die "$MONITOR: $!\n";
    exec 'redis-cli', '-p', $redis, 'monitor' or die "redis-cli: $!\n";
});

ok(wait_until(sub { -s $MONITOR || do { redis_command($redis, 'PING'); 0 } },
              5), 'MONITOR runs');

my $BODY = '{"model":"m","messages":[]}';
my $OK = '{"id":"x","object":"chat.completion","model":"m","choices":[]}';
my $SYNC = 100;

sub conf {
    my ($node, %o) = @_;

    my $cluster = $o{cluster} ? ' cluster' : '';
    my $canary = $o{canary} ? <<'EOF' : '';
        location = /can/v1/chat/completions {
            llm_route can;
            llm_target /_llm/spare weight=9;
            llm_target /_llm/ok weight=1;
            llm_canary errors=0.5 min=10;
        }
EOF

    $node->write_file_expand('nginx.conf', <<"EOF");
worker_processes 2;

events {}

http {
    log_format main '\$arg_id|\$llm_attempts|\$llm_budget_source|\$llm_attempt_targets|\$status';
    log_format target '\$request_uri';
    access_log %%TESTDIR%%/logs/access.log main;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:$redis sync=${SYNC}ms timeout=300ms$cluster;
    llm_backoff base=0;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /bud/v1/chat/completions {
            llm_route bud;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=1/s window=10s;
            llm_cooldown off;
        }

        location = /bud2/v1/chat/completions {
            llm_route bud2;
            llm_target /_llm/fail2 tries=2;
            llm_retry_budget ratio=0 min=1/s window=10s;
            llm_cooldown off;
        }

        location = /cool/v1/chat/completions {
            llm_route cool;
            llm_target /_llm/hot;
            llm_fallback /_llm/spare;
            llm_cooldown fails=1 time=30s;
        }

$canary
        location = /_llm/fail {
            internal;
            return 500 '{"error":{"type":"server_error"}}';
        }

        location = /_llm/fail2 {
            internal;
            return 500 '{"error":{"type":"server_error"}}';
        }

        location = /_llm/hot {
            internal;
            log_subrequest on;
            access_log %%TESTDIR%%/logs/hot.log target;
            return 500 '{"error":{"type":"server_error"}}';
        }

        location = /_llm/spare {
            internal;
            return 200 '$OK';
        }

        location = /_llm/ok {
            internal;
            return 200 '$OK';
        }

        location = /status {
            access_log off;
            llm_status;
        }
    }
}
EOF
}

sub start {
    my (%o) = @_;
    for my $node (@nodes) {
        $node->stop;
        conf($node, %o);
        $node->run;
    }
}

sub post {
    my ($node, $route, $id) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$id",
                                    $BODY, port => $node->port(8080)));
}

sub rstatus { $_[0]->status_json->{redis} || {} }

# the retries of the $n requests "$tag-N" on both nodes, once all are
# logged (a line may come just after the answer)
sub retries {
    my ($tag, $n) = @_;
    my ($logged, $retries);
    wait_until(sub {
        ($logged, $retries) = (0, 0);
        for my $node (@nodes) {
            for (split /\n/, $node->read_file('logs/access.log')) {
                my @f = split /\|/;
                next unless $f[0] =~ /^\Q$tag\E-\d+$/ && $f[1] =~ /^\d+$/;
                $logged++;
                $retries += $f[1] - 1;
            }
        }
        return $logged >= $n;
    }, 3);
    is($logged, $n, "$tag: $n requests logged");
    return $retries;
}

# the slot of a key, as Redis has it
my %slot;
sub slot {
    my ($key) = @_;
    return $slot{$key} //= redis_command($redis, 'CLUSTER', 'KEYSLOT', $key);
}

# the calls MONITOR saw since byte $from: [ [ command, [ declared keys ],
# [ keys the script touched ] ], ... ]
sub calls {
    my ($from) = @_;
    my $log = $A->read_file('monitor.log');
    my @calls;

    for my $line (split /\n/, substr($log, $from)) {
        my ($who, $args) = $line =~ /^[\d.]+ \[\d+ ([^\]]+)\] (.*)$/
            or next;
        my @a;
        push @a, $1 =~ s/\\(.)/$1/gr while $args =~ /"((?:[^"\\]|\\.)*)"/g;
        my $cmd = lc shift @a;

        if ($who ne 'lua') {
            my $keys = $cmd =~ /^eval/ ? [ @a[2 .. $a[1] + 1] ]
                     : $cmd eq 'mget' ? [ @a ] : undef;
            push @calls, [ $cmd, $keys, [] ] if $keys;
            next;
        }

        next unless @calls && $calls[-1][0] =~ /^eval/;
        my $touched = $cmd eq 'mget' ? [ @a ] : [ $a[0] ];
        push @{$calls[-1][2]}, @$touched;
    }

    return \@calls;
}

###############################################################################
# nginx -t

for my $bad ([ 'cluster=on', qr/invalid parameter "cluster=on"/ ],
             [ 'clusters', qr/invalid parameter "clusters"/ ],
             [ 'cluster db=1',
               qr/"db" parameter is incompatible with "cluster"/ ])
{
    $A->write_file_expand("nginx.conf", <<"EOF");
events {}
http {
    llm_zone llm:1m;
    llm_redis 127.0.0.1:$redis $bad->[0];
}
EOF
    $A->allow_alerts($bad->[1]);
    my ($ok, $out) = $A->test_config;
    ok(!$ok, "nginx -t refuses \"$bad->[0]\"");
    like($out, $bad->[1], "with nginx's words: $bad->[0]");
}

$A->write_file_expand("nginx.conf", <<"EOF");
events {}
http {
    llm_zone llm:1m;
    llm_redis 127.0.0.1:$redis sync=100ms cluster db=0;
}
EOF
ok(scalar $A->test_config, 'nginx -t takes "cluster" (and db=0)');

###############################################################################
# cluster: the work of a tick grouped by slot

start(cluster => 1, canary => 1);

sub up { (grep { (rstatus($_)->{state} // '') eq 'up' } @nodes) == 2 }

ok(wait_until(\&up, 5), 'cluster: both links up');

my $mark = -s $MONITOR;

# 80 requests in 1.6 s over the nodes: ten retries for both, not ten each
my $start = time;
for my $i (0 .. 79) {
    post($nodes[$i % 2], 'bud', "b-$i");
    post($nodes[$i % 2], 'bud2', "c-$i") if $i % 8 == 0;
    my $next = $start + ($i + 1) * 0.02;
    sleep($next - time) if $next > time;
}

# a retry may pass on each node within two syncs of the budget's end
my $bud = retries('b', 80);
cmp_ok($bud, '>=', 10, "cluster: the budget spent ($bud retries)");
cmp_ok($bud, '<=', 14, 'cluster: one budget for both nodes, not one each');

# a cooldown begun on A reaches B
post($A, 'cool', 'h-0');
is($A->read_file('logs/hot.log') =~ tr/\n//, 1, 'cluster: A tried the target');

ok(wait_until(sub {
       ($B->status_json->{targets}{'/_llm/hot'}{cooldown_remaining_ms} // 0)
           > 20000
   }, 2), 'cluster: the cooldown begun on A is on B');

my $r = post($B, 'cool', 'h-1');
is($r->{status}, 200, 'cluster: B answers from the fallback');
is($B->read_file('logs/hot.log'), '', 'cluster: B never tried the target');

# the canary's holds are read too
post($_, 'can', 'k-0') for @nodes;

sleep 3 * $SYNC / 1000;

for my $n (0, 1) {
    my $node = $nodes[$n];
    my $s = rstatus($node);
    ok($s->{state} eq 'up' && $s->{syncs} > 10 && $s->{sync_errors} == 0
       && $s->{link_downs} == 0,
       "cluster: node $n: up, $s->{syncs} syncs, no sync error")
        or diag(encode_json($s));
    is(scalar(() = $node->read_file('logs/error.log')
                       =~ /\[(?:warn|error|crit|alert|emerg)\][^\n]*redis/g),
       0, "cluster: node $n: Redis never unavailable");
}

my $calls = calls($mark);
my (%routes, %mgets, @bad);

for my $c (@$calls) {
    my ($cmd, $keys, $touched) = @$c;
    my %slots = map { slot($_) => 1 } @$keys;
    my %declared = map { $_ => 1 } @$keys;
    my @undeclared = grep { !$declared{$_} } @$touched;

    push @bad, "$cmd: no key" unless @$keys;
    push @bad, "$cmd: keys of " . keys(%slots) . " slots: @$keys"
        if keys %slots > 1;
    push @bad, "$cmd: undeclared keys: @undeclared" if @undeclared;

    my ($tag) = ($keys->[0] // '') =~ /^(\{[^}]*\})/;
    $tag //= '';
    $routes{$tag}++ if $cmd eq 'evalsha' || $cmd eq 'eval';
    $mgets{$tag}++ if $cmd eq 'mget';
}

cmp_ok(scalar @$calls, '>', 20, 'cluster: MONITOR saw ' . @$calls . ' calls');
is(scalar @bad, 0, 'cluster: every call keeps to one slot, and every key '
                   . 'a script touched was declared')
    or diag(join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)]);
cmp_ok($routes{'{llm:w}'} // 0, '>', 10, 'cluster: the counts\' calls');
# and each node's first call goes again, once it knows the epoch
cmp_ok($routes{'{llm:w}'} // 0, '<=', $mgets{'{llm:cd}'} + 4,
       'cluster: one a tick for both routes, not one a route');
ok(!exists $routes{'{llm:bud}'} && !exists $routes{'{llm:bud2}'},
   'cluster: no call of a route\'s own');
cmp_ok($mgets{'{llm:cd}'} // 0, '>', 5, 'cluster: an MGET of the cooldowns');
cmp_ok($mgets{'{llm:canary}'} // 0, '>', 5,
       'cluster: an MGET of the canaries\' holds');
ok(!exists $mgets{''} && !exists $routes{''}, 'cluster: no call without a tag');

# Redis forgets the script: the call goes again as EVAL, and no count is
# lost

sub in_redis { fleet_sum($redis, $_[0], 'r') }

is(in_redis('bud'), 80, 'cluster: Redis holds route bud\'s 80 requests');
is(in_redis('bud2'), 10, 'cluster: and bud2\'s 10');

is(redis_command($redis, 'SCRIPT', 'FLUSH'), 'OK', 'SCRIPT FLUSH');
$mark = -s $MONITOR;

for my $node (@nodes) {
    post($node, 'bud', 'f-0');
    post($node, 'bud2', 'f-1');
}

ok(wait_until(sub { in_redis('bud') == 82 && in_redis('bud2') == 12 }, 3),
   'cluster: after SCRIPT FLUSH no count lost');

# an EVALSHA refused with NOSCRIPT ran nothing; its route's call came
# again as EVAL
my (%refused, %evals);
for my $c (@{calls($mark)}) {
    my ($tag) = ($c->[1][0] // '') =~ /^(\{[^}]*\})/;
    next unless defined $tag && $tag eq '{llm:w}';
    $refused{$tag}++ if $c->[0] eq 'evalsha' && !@{$c->[2]} && !$evals{$tag};
    $evals{$tag}++ if $c->[0] eq 'eval' && @{$c->[2]};
}
cmp_ok(scalar keys %refused, '>', 0, 'cluster: EVALSHA refused after the '
                                     . 'flush: ' . join(' ', sort keys %refused));
is(scalar(grep { !$evals{$_} } keys %refused), 0,
   'cluster: each refused call went again as EVAL')
    or diag(encode_json([ \%refused, \%evals ]));
is(scalar(grep { (rstatus($_)->{sync_errors} // 1) == 0 } @nodes), 2,
   'cluster: still no sync error');

###############################################################################
# without "cluster": the one call names keys of several slots

start(cluster => 0, canary => 1);

sleep 0.3;
post($_, 'bud', 'n-0') for @nodes;

ok(wait_until(sub {
       (grep { (rstatus($_)->{sync_errors} // 0) > 0 } @nodes) == 2
   }, 5), 'one call: both nodes count sync errors');

ok(wait_until(sub {
       (grep { $_->read_file('logs/error.log')
                   =~ /\[warn\].*llm redis .* is unavailable \(sync refused: CROSSSLOT/
             } @nodes) == 2
   }, 5), 'one call: the error log says CROSSSLOT');

$A->allow_alerts(qr/is unavailable \(sync refused: CROSSSLOT/);
$B->allow_alerts(qr/is unavailable \(sync refused: CROSSSLOT/);

$_->stop for @nodes;

done_testing;
