#!/usr/bin/perl

# The fleet harness (bench/fleet, issue 17) on six nodes of one worker,
# one Redis, 100 requests a second round-robin against a failing target
# (tries=2: every request wants a retry), sync=250ms, and the same six
# nodes without Redis:
#   - pure ratio (ratio=0.1 min=0/s): the worst 10-s window within the
#     allowance plus one sync interval's deposits of the fleet (the
#     goal), and with Redis no more retries than without it (give or
#     take the dither's rounding);
#   - Redis shut down under load on a floor budget (ratio=0 min=1/s
#     window=10s): the six nodes keep about one floor of 10, within 20%;
#   - idle: ten more routes with a budget and no traffic cost no
#     command: a node's idle commands a second stay those of one MGET a
#     tick (the cooldowns) and its heartbeat script;
#   - under load a node sends one script call a tick, whatever its busy
#     routes: its calls a second are those of idle;
#   - a cooldown begun on one node shows on every node's status page
#     within about one sync (250ms; 2 x sync allowed for a busy machine).
# About 25 s.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use File::Path qw(rmtree);

my $f = Test::LLM::run_fleet(NODES => 6, SYNC => '250ms', SECS => 6,
                             OUTAGE => 5, IDLE => 2, IDLE_ROUTES => 10,
                             RATE => 100, LOCAL => 1);
my $out = $f->{out};
is($f->{status}, 0, 'bench/fleet ran') or diag $out;

my ($cluster) = grep { defined $_->{redis} && $_->{redis} } @{$f->{runs}};
my ($local) = grep { defined $_->{redis} && !$_->{redis} } @{$f->{runs}};

ok($cluster && $local, 'a run with Redis and one without') or diag $out;

diag(sprintf('fleet: 6 nodes, sync=250ms: %d retries (ideal %d, without '
             . 'Redis %d), worst window %d (allowance %.0f, goal %.1f); '
             . 'outage: %d retries (floor %d); Redis %.0f commands/s '
             . 'under load, %.0f idle',
             @$cluster{qw(retries ideal)}, $local->{retries},
             @$cluster{qw(worst worst_allowance goal outage_retries
                          outage_floor load_cmds idle_cmds)}));

cmp_ok($cluster->{worst}, '<=', $cluster->{goal} + 1,
       'the worst window within the goal');
cmp_ok($cluster->{retries}, '<=', $local->{retries} + 3,
       'with Redis no more retries than without');
cmp_ok($cluster->{requests}, '>=', 0.95 * 600, 'the load was made');

my $floor = $cluster->{outage_floor};
cmp_ok(abs($cluster->{outage_retries} - $floor), '<=', 0.2 * $floor,
       "outage: $cluster->{outage_retries} retries, one floor of $floor "
       . 'within 20%');

# a tick (4 a second): one MGET; a second: the heartbeat script (EVAL
# and the 7 commands it runs)
cmp_ok($cluster->{idle_cmds} / 6, '<=', 4 + 8 + 2,
       sprintf('idle: %.1f commands a second per node with 12 routes',
               $cluster->{idle_cmds} / 6));

# calls, what a node sends: an MGET or the script call a tick, the
# heartbeat a second
cmp_ok($cluster->{idle_calls} / 6, '<=', 4 + 1 + 0.5,
       sprintf('idle: %.1f calls a second per node',
               $cluster->{idle_calls} / 6));
cmp_ok($cluster->{load_calls} / 6, '<=', 4 + 1 + 0.5,
       sprintf('load: %.1f calls a second per node, a busy route',
               $cluster->{load_calls} / 6));

cmp_ok($cluster->{cooldown_max}, '>=', 0, 'every node saw the cooldown');
cmp_ok($cluster->{cooldown_max}, '<=', 500,
       "cooldown news: $cluster->{cooldown_ms} ms");

ok(@{$f->{logs}} >= 12, 'the nodes\' error logs are there');
my %r = Test::LLM::scan_logs(files => $f->{logs}, base => $f->{dir});
is_deeply($r{problems}, [], 'no alert, crash or sanitizer report');

rmtree($f->{dir}) if $f->{dir} && -d $f->{dir};

done_testing;
