#!/usr/bin/perl

# llm_redis: retry budgets and cooldowns shared by several nginx nodes
# through one real redis-server (docs/design.md section 4).  Covers:
#
#   - budget: three nodes, one Redis, an always-failing target, requests
#     paced round-robin over the nodes: the cluster spends one budget
#     (min=1/s window=10s: 10 retries) within a stated sync slack, the
#     keys in Redis hold what the nodes counted, $llm_budget_source is
#     "cluster"; the same nodes without llm_redis spend 10 each (30);
#   - cooldown: a 429 with a Retry-After above llm_backoff max on node A
#     (from the scripted mock provider: nginx's add_header acts on main
#     requests only, so a Retry-After it adds to a "return 429" in the
#     target location never reaches the attempt) cools the target on
#     node B within about one sync; B skips it, answers from the
#     fallback and never sends the target a request; the key
#     {llm:cd}:TARGET holds the end in wall-clock ms, with a PTTL;
#   - Redis traffic: commands per second (INFO commandstats) of two
#     nodes of two workers each, under two load phases ~10x apart, stay
#     about the same and within a per-node, per-tick bound;
#   - Redis gone: three nodes that counted each other split the floor of
#     the budget (3 retries each instead of 10) while counting alone.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP;
use POSIX qw(ceil);
use Time::HiRes qw(sleep time);

my @nodes = map { Test::LLM->new } 1 .. 3;
my $t = $nodes[0];

$t->has_daemon('redis-server');

my $redis = $t->run_redis;

my $REQ = '{"model":"m","messages":[]}';

my $SYNC = 50;     # ms, sync= of the budget phase
my $PACE = 0.030;  # s between two requests of the budget phase
my $N = 75;        # requests of the budget phase, 25 per node

# $what: budget | cooldown | rate; $redis: a port or undef
sub node_conf {
    my ($what, %o) = @_;

    my $redis_line = $o{redis}
        ? "llm_redis 127.0.0.1:$o{redis} sync=$o{sync}ms timeout=300ms;"
        : '';
    my $zone = $o{zone} || 'llm';

    my $locations;

    if ($what eq 'budget') {
        $locations = <<'EOF';
        llm_backoff base=0;
        llm_cooldown off;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/a tries=2;
            llm_retry_budget ratio=0 min=1/s window=10s;
        }

        location /_llm/ {
            internal;
            log_subrequest on;
            access_log %%TESTDIR%%/logs/%%LOG%%_target.log target;
            return 500 '{"error":{"type":"server_error"}}';
        }
EOF

    } elsif ($what eq 'cooldown') {
        $locations = <<'EOF';
        llm_backoff base=1ms max=100ms;
        llm_cooldown off;

        location = /v1/chat/completions {
            llm_route cool;
            llm_target /_llm/hot;
            llm_fallback /_llm/spare;
        }

        location = /_llm/hot {
            internal;
            log_subrequest on;
            access_log %%TESTDIR%%/logs/hot.log target;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_pass http://127.0.0.1:%%MOCK%%/hot/v1/chat/completions;
        }

        location = /_llm/spare {
            internal;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_pass http://127.0.0.1:%%MOCK%%/spare/v1/chat/completions;
        }
EOF

    } else {
        $locations = <<'EOF';
        llm_backoff base=0;

        location = /v1/chat/completions {
            llm_route fast;
            llm_target /_llm/ok tries=2;
            llm_retry_budget ratio=0.1 min=1/s window=10s;
        }

        location = /_llm/ok {
            internal;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}';
        }
EOF
    }

    my $conf = <<'EOF';
worker_processes 2;

events {}

http {
    log_format main '$arg_id|$llm_attempts|$llm_budget_source|$llm_retry_decision|$llm_attempt_targets|$llm_attempt_errors|$status';
    log_format target '$request_uri';
    access_log %%TESTDIR%%/logs/%%LOG%%.log main;

    llm_zone %%ZONE%%:1m;
    %%REDIS%%

    server {
        listen 127.0.0.1:%%PORT_8080%%;

%%LOCATIONS%%
        location = /status {
            access_log off;
            llm_status;
        }
    }
}
EOF

    $conf =~ s/%%LOCATIONS%%/$locations/;
    $conf =~ s/%%REDIS%%/$redis_line/;
    $conf =~ s/%%ZONE%%/$zone/;
    $conf =~ s/%%LOG%%/$o{log}/g;
    $conf =~ s/%%MOCK%%/$o{mock}/g if $o{mock};

    return $conf;
}

sub start {
    my ($node, $what, %o) = @_;
    $node->stop;
    $node->write_file_expand('nginx.conf', node_conf($what, %o));
    $node->run;
}

sub status {
    my ($node) = @_;
    my $r = parse_response(http_get('/status', port => $node->port(8080)));
    return eval { decode_json($r->{body}) } || {};
}

# until every node's view of Redis is up and fresh; true when it was
sub wait_cluster {
    my (@n) = @_;
    my $deadline = time + 5;
    while (time < $deadline) {
        my $ok = grep {
            my $s = status($_)->{redis} || {};
            ($s->{state} // '') eq 'up'
                && ($s->{budget_source} // '') eq 'cluster'
        } @n;
        return 1 if $ok == @n;
        sleep 0.05;
    }
    return 0;
}

sub post {
    my ($node, $id, %h) = @_;
    return parse_response(http_post("/v1/chat/completions?id=$id", $REQ,
                                    port => $node->port(8080),
                                    headers => { %h }));
}

# $N requests, paced, round-robin over @nodes; a fresh connection each
sub paced {
    my ($tag) = @_;
    my $start = time;
    for my $i (0 .. $N - 1) {
        post($nodes[$i % @nodes], "$tag-$i");
        my $next = $start + ($i + 1) * $PACE;
        my $now = time;
        sleep($next - $now) if $next > $now;
    }
    return time - $start;
}

# the log lines of the ids "$tag-N" on every node: { id => [fields] }
sub logged {
    my ($tag, $log) = @_;
    my %e;
    for my $node (@nodes) {
        for my $line (split /\n/, $node->read_file("logs/$log.log")) {
            my @f = split /\|/, $line, -1;
            $e{$f[0]} = \@f if $f[0] =~ /^\Q$tag\E-\d+$/;
        }
    }
    return \%e;
}

sub wait_logged {
    my ($tag, $log, $n) = @_;
    my $deadline = time + 5;
    my $e;
    while (1) {
        $e = logged($tag, $log);
        last if keys %$e >= $n || time > $deadline;
        sleep 0.05;
    }
    return $e;
}

sub sum { my $s = 0; $s += $_ for @_; return $s }

###############################################################################
# one budget for the cluster
#
# Overshoot bound: a node judges on the cluster's sums as of its last
# sync plus its own counts not sent yet.  A retry made on another node
# reaches Redis at that node's next tick (<= sync) and this node's view
# at its next tick after that (<= sync more), plus a round trip.  Once
# the cluster has spent its 10, a node may still allow a retry only for
# requests that come within 2 * sync + RTT of that: with one request per
# $PACE, at most ceil((2 * sync + 20 ms) / PACE) of them.

my $slack = ceil((2 * $SYNC + 20) / ($PACE * 1000));

start($_, 'budget', redis => $redis, sync => $SYNC, log => 'cluster')
    for @nodes;

ok(wait_cluster(@nodes), 'cluster: every node up, budget_source cluster');

my $took = paced('c');
my $e = wait_logged('c', 'cluster', $N);

is(scalar keys %$e, $N, "cluster: $N requests logged");

my $retries = sum(map { $_->[1] - 1 } values %$e);
my @st = map { status($_) } @nodes;
my $st_retries = sum(map { $_->{routes}{chat}{retries} } @st);

my $at_target = sum(map {
    scalar(() = $_->read_file('logs/cluster_target.log') =~ /\n/g)
} @nodes);

diag(sprintf('cluster: %d retries for %d requests in %.2f s '
             . '(per node: %s; slack %d)', $retries, $N, $took,
             join(', ', map { $_->{routes}{chat}{retries} } @st), $slack));

# the last retry of the room may stay unspent: a node's share of a room
# under one retry is rounded up at random, once per view (directives.md,
# llm_redis); a slow run (ASan) has fewer views left to round it up in
cmp_ok($retries, '>=', 9, 'cluster: the budget of 10 spent, but its last');
cmp_ok($retries, '<=', 10 + $slack,
       "cluster: at most 10 + $slack retries over three nodes");
is($st_retries, $retries, 'cluster: status retries agree with the logs');
is($at_target, $N + $retries, 'cluster: the target got requests + retries');
cmp_ok($took, '<', 8, 'cluster: all within the window');

# the cluster's budget stops every node long before its own 10
my @per = map { $_->{routes}{chat}{retries} } @st;
cmp_ok((sort { $b <=> $a } @per)[0], '<', 10,
       'cluster: no node spent a budget of its own');
is(scalar(grep { $_->[3] eq 'budget_exhausted' } values %$e), $N - $retries,
   'cluster: every other request refused on the budget');

is(scalar(grep { $_->{redis}{state} eq 'up'
                 && defined $_->{redis}{view_age_ms}
                 && $_->{redis}{view_age_ms}
                    <= (3 * $SYNC > $SYNC + 300 ? 3 * $SYNC : $SYNC + 300)
                 && $_->{redis}{syncs} > 0
                 && $_->{redis}{sync_errors} == 0
                 && $_->{redis}{link_downs} == 0 } @st), 3,
   'cluster: status: links up, views fresh, no sync errors')
    or diag(encode_json([ map { $_->{redis} } @st ]));

# a node reads a route from Redis once it counted in it: the first
# request on each node is judged on its own counters
my @alone = grep { $e->{$_}[2] ne 'cluster' } keys %$e;
is(scalar(grep { !/^c-[012]$/ } @alone), 0,
   'cluster: $llm_budget_source cluster on every request but the first '
   . 'of each node')
    or diag(join "\n", map { join '|', @$_ } values %$e);

# every node's counts reached Redis: after a few more syncs the window's
# keys hold the cluster's requests and retries

sleep 4 * $SYNC / 1000;

is(fleet_sum($redis, 'chat', 'r'), $N, 'cluster: Redis holds every request');
is(fleet_sum($redis, 'chat', 'x'), $retries,
   'cluster: Redis holds every retry');

my $secs = fleet_seconds($redis);
my $pttl = redis_command($redis, 'PTTL',
                         $secs->{(sort keys %$secs)[0] // 0} // 'none');
ok($pttl > 0 && $pttl <= 63000, "cluster: keys expire (PTTL $pttl)");

###############################################################################
# no llm_redis: each node spends its own budget

start($_, 'budget', zone => 'plain', log => 'plain') for @nodes;

$took = paced('p');
$e = wait_logged('p', 'plain', $N);

is(scalar keys %$e, $N, "plain: $N requests logged");

my $plain = sum(map { $_->[1] - 1 } values %$e);
@st = map { status($_) } @nodes;

diag(sprintf('plain: %d retries for %d requests in %.2f s (per node: %s)',
             $plain, $N, $took,
             join(', ', map { $_->{routes}{chat}{retries} } @st)));

is($plain, 30, 'plain: 10 retries per node, 30 in all');
is_deeply([ map { $_->{routes}{chat}{retries} } @st ], [ 10, 10, 10 ],
          'plain: 10 on each node');
is(scalar(grep { $_->[2] ne 'local' } values %$e), 0,
   'plain: $llm_budget_source local on every request');
is($st[0]{redis}, undef, 'plain: no redis in the status');

###############################################################################
# a cooldown found on node A cools the target on node B

my ($na, $nb) = @nodes[0, 1];
$nodes[2]->stop;

$t->run_mock_provider(port => $t->port(8081), name => 'prov',
                      handler => \&scripted);

start($_, 'cooldown', redis => $redis, sync => 100, log => 'cool',
      mock => $t->port(8081)) for $na, $nb;

ok(wait_cluster($na, $nb), 'cooldown: both nodes up');

my $r = post($na, 'cool-a', 'X-Case' => '1:rl+ra=30');
my $t0 = time;

is($r->{status}, 200, 'cooldown: A answered by the fallback');
like($na->wait_for_log('logs/cool.log', qr/^cool-a\|/) // '',
     qr/^cool-a\|2\|[^|]*\|[^|]*\|\/_llm\/hot, \/_llm\/spare\|rate_limited, -\|200$/,
     'cooldown: A: rate_limited, then the fallback');

my ($seen, $bt);
while (time < $t0 + 2) {
    $bt = status($nb)->{targets}{'/_llm/hot'} || {};
    if ($bt->{cooling}) {
        $seen = time - $t0;
        last;
    }
    sleep 0.01;
}

ok(defined $seen, 'cooldown: B sees the target cooling');
diag(sprintf('cooldown: seen on B after %d ms (sync=100ms)',
             ($seen // 99) * 1000));
cmp_ok($seen // 99, '<=', 1, 'cooldown: within about a sync');
cmp_ok($bt->{cooldown_remaining_ms} // 0, '>', 28000,
       'cooldown: B cools it for the Retry-After '
       . '(' . ($bt->{cooldown_remaining_ms} // '-') . ' ms left)');
cmp_ok($bt->{cooldown_remaining_ms} // 99999, '<=', 30000,
       'cooldown: no longer than it');

my $at = status($na)->{targets}{'/_llm/hot'} || {};
cmp_ok(abs(($at->{cooldown_remaining_ms} // 0)
           - ($bt->{cooldown_remaining_ms} // 0)), '<', 1000,
       'cooldown: A and B agree on the end');

# the mock would answer B's first attempt, wherever it went, with ok:
# only the logs tell whether it reached the target
my @rb = map { post($nb, "cool-b-$_", 'X-Case' => '*:ok') } 1 .. 5;

is(scalar(grep { $_->{status} == 200 } @rb), 5,
   'cooldown: B answers from the fallback');
is($nb->read_file('logs/hot.log'), '', 'cooldown: B never sent to the target');

my $bs = status($nb)->{targets}{'/_llm/hot'} || {};
is($bs->{attempts}, 0, 'cooldown: B status: no attempt at the target');
is($bs->{skipped}, 5, 'cooldown: B status: skipped 5 times');

like($nb->wait_for_log('logs/cool.log', qr/^cool-b-5\|/) // '',
     qr/^cool-b-5\|1\|[^|]*\|[^|]*\|\/_llm\/hot, \/_llm\/spare\|skipped, -\|200$/,
     'cooldown: B: skipped, then the fallback');

is(scalar(() = $na->read_file('logs/hot.log') =~ /\n/g), 1,
   'cooldown: the target got the one request from A');

like($nb->read_file('logs/error.log'),
     qr/\[notice\].*llm target "\/_llm\/hot" cooling down for \d+ ms, as another node found/,
     'cooldown: B logs where it learnt it');

my @cd = @{redis_command($redis, 'KEYS', '{llm:cd}:*')};
is_deeply(\@cd, [ '{llm:cd}:/_llm/hot' ], 'cooldown: the key in Redis');

$pttl = redis_command($redis, 'PTTL', '{llm:cd}:/_llm/hot');
ok($pttl > 0 && $pttl <= 30000, "cooldown: key PTTL $pttl");

my $end = redis_command($redis, 'GET', '{llm:cd}:/_llm/hot') // 0;
cmp_ok(abs($end - (time * 1000 + $pttl)), '<', 1000,
       'cooldown: its value is the end in wall-clock ms');

###############################################################################
# Redis commands per second do not follow the request rate
#
# Two nodes of two workers each, sync=100ms, one route with a budget and
# one target, on a Redis of their own.  Per node and tick the pipeline
# is one script call that runs at most 4 writes (INCRBY of r and x, and
# the PEXPIRE of a key it makes) per second of the window with new
# counts, 2 such seconds when a tick spans a second's end, so 8, plus
# one MGET (the window's and the cooldowns' keys): 10 with the call;
# and once a second the EVAL that says the node is alive, 5 calls as
# Redis counts them (the EVAL and the 4 commands its script runs).

my $redis2 = $t->run_redis;
my $RSYNC = 100;
my $D = 2;          # seconds of each load phase

start($_, 'rate', redis => $redis2, sync => $RSYNC, log => 'rate')
    for $na, $nb;

ok(wait_cluster($na, $nb), 'rate: both nodes up');

# Redis' calls so far, INFO itself left out: (all, MGET)
sub calls {
    my $info = redis_command($redis2, 'INFO', 'commandstats');
    my ($all, $mget) = (0, 0);
    while ($info =~ /^cmdstat_(\S+?):calls=(\d+)/mg) {
        next if $1 eq 'info';
        $all += $2;
        $mget += $2 if $1 eq 'mget';
    }
    return ($all, $mget);
}

sub requests {
    return sum(map { status($_)->{routes}{fast}{requests} // 0 } $na, $nb);
}

# $per clients on each node, each sending $rate requests a second on one
# keepalive connection for $D seconds
sub load {
    my ($per, $rate) = @_;
    my @pids;

    for my $node (($na) x $per, ($nb) x $per) {
        my $pid = fork();
        die "fork: $!" unless defined $pid;

        if ($pid == 0) {
            my $req = http_request('POST', '/v1/chat/completions?id=rate',
                                   body => $REQ, keepalive => 1,
                                   headers => [ 'Content-Type'
                                                => 'application/json' ]);
            my $sock = http_start(undef, port => $node->port(8080))
                or POSIX::_exit(1);
            my $start = time;
            for my $i (1 .. $D * $rate) {
                http_send($sock, $req) or last;
                length read_response($sock, 5) or last;
                my $next = $start + $i / $rate;
                my $now = time;
                sleep($next - $now) if $next > $now;
            }
            POSIX::_exit(0);
        }

        push @pids, $pid;
    }

    waitpid($_, 0) for @pids;
}

my @c0 = calls();
my ($q0, $w0) = (requests(), time);

load(1, 10);                        # 2 x 10 = 20 requests a second

my @c1 = calls();
my ($q1, $w1) = (requests(), time);

load(2, 50);                        # 4 x 50 = 200 requests a second

my @c2 = calls();
my ($q2, $w2) = (requests(), time);

my ($low, $high) = ($c1[0] - $c0[0], $c2[0] - $c1[0]);
my ($lowm, $highm) = ($c1[1] - $c0[1], $c2[1] - $c1[1]);
my ($lowq, $highq) = ($q1 - $q0, $q2 - $q1);
my ($lowt, $hight) = ($w1 - $w0, $w2 - $w1);

diag(sprintf('rate: low:  %d requests in %.2f s (%.0f req/s), '
             . '%d Redis commands (%.1f/s, %d MGET)',
             $lowq, $lowt, $lowq / $lowt, $low, $low / $lowt, $lowm));
diag(sprintf('rate: high: %d requests in %.2f s (%.0f req/s), '
             . '%d Redis commands (%.1f/s, %d MGET)',
             $highq, $hight, $highq / $hight, $high, $high / $hight,
             $highm));

cmp_ok($highq, '>=', 5 * $lowq, 'rate: five times the requests or more');
cmp_ok($high / $hight, '<', 2 * $low / $lowt,
       'rate: less than twice the Redis commands per second');

for my $p ([ 'low', $low, $lowm, $lowt ], [ 'high', $high, $highm, $hight ]) {
    my ($name, $n, $m, $secs) = @$p;
    my $ticks = $secs * 1000 / $RSYNC + 2;

    cmp_ok($n, '<=', 2 * ($ticks * 10 + ($secs + 1) * 5),
           "rate: $name: at most 10 commands per tick and node, "
           . "5 more a second");
    # one MGET a tick per node, not per worker
    cmp_ok($m, '<=', 2 * $ticks, "rate: $name: 1 MGET per tick and node");
    cmp_ok($m, '>=', 2 * ($ticks - 4) * 0.75,
           "rate: $name: the nodes kept syncing");
}

###############################################################################
# Redis gone: each node takes its share of the floor
#
# The ratio part of a budget adds up across nodes on their own counters;
# the floor (min * window = 10) would not: three nodes counting alone
# would allow 30.  Each takes its part by its rank among the nodes Redis
# last gave, in whole retries that add up to the floor: 3, 3 and 4.

my $redis3 = $t->run_redis;

start($_, 'budget', redis => $redis3, sync => $SYNC, zone => 'gone',
      log => 'gone') for @nodes;

ok(wait_cluster(@nodes), 'gone: every node up');

my $counted = 0;
my $deadline = time + 3;
while (time < $deadline) {
    $counted = grep { (status($_)->{redis}{nodes} // 0) == 3 } @nodes;
    last if $counted == 3;
    sleep 0.1;
}
is($counted, 3, 'gone: every node counts 3 nodes');
is(redis_command($redis3, 'ZCARD', '{llm:nodes}'), 3,
   'gone: Redis holds 3 members');

# Redis closes the connection instead of answering SHUTDOWN
eval { redis_command($redis3, 'SHUTDOWN', 'NOSAVE') };

$deadline = time + 3;
my $alone = 0;
while (time < $deadline) {
    $alone = grep { (status($_)->{redis}{budget_source} // '') eq 'local' }
             @nodes;
    last if $alone == 3;
    sleep 0.05;
}
is($alone, 3, 'gone: every node counts alone');

$took = paced('g');
$e = wait_logged('g', 'gone', $N);

is(scalar keys %$e, $N, "gone: $N requests logged");

my $gone = sum(map { $_->[1] - 1 } values %$e);
@st = map { status($_) } @nodes;

diag(sprintf('gone: %d retries for %d requests in %.2f s (per node: %s)',
             $gone, $N, $took,
             join(', ', map { $_->{routes}{chat}{retries} } @st)));

is_deeply([ sort map { $_->{routes}{chat}{retries} } @st ], [ 3, 3, 4 ],
          'gone: the floor split in whole retries by rank, 10 in all');
is(scalar(grep { $_->[2] ne 'local' } values %$e), 0,
   'gone: $llm_budget_source local on every request');
is(scalar(grep { $_->{redis}{nodes} == 3 && $_->{redis}{state} eq 'down' }
          @st), 3, 'gone: status: down, 3 nodes last known');

done_testing;
