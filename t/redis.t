#!/usr/bin/perl

# llm_redis on one node against a real Redis (docs/design.md section 4, issue 6): what the
# syncer writes (key names, values equal to the node's counts, TTLs of
# window + 2 s, prefix=, db=, a unix socket), and that decisions use what
# other nodes wrote: retries another node spent in the current second
# exhaust this node's budget (budget_exhausted, $llm_budget_source
# cluster, the status page's "left"), a cooldown another node wrote makes
# this node skip the target within a sync, and this node's own cooldown
# reaches Redis with its end time; an error reply to a sync (a key of
# another type) drops the link once until the key is fixed; the node's
# heartbeat in {llm:nodes};
# every count reaches Redis once through reloads under load, Redis paused
# across each.  The status page shows the link as JSON and Prometheus
# text (promtool when installed); an IPv6 address works; without
# llm_redis it says null and has no redis family.  Multi-node runs and
# faults are in t/redis_cluster.t and t/redis_faults.t.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);
use IO::Select;
use IO::Socket::IP;
use POSIX ();

my $t = Test::LLM->new;

my $redis = $t->run_redis(args => ['--unixsocket', $t->testdir . '/r.sock',
                                   '--unixsocketperm', '777']);
my $sock = $t->testdir . '/r.sock';

my $conf = <<'EOF';
worker_processes 2;

events {}

http {
    log_format src '$arg_id|$llm_budget_source|$llm_retry_decision|'
                   '$llm_attempts|$status';
    access_log %%TESTDIR%%/logs/src.log src;

    llm_zone llm:1m;
    llm_redis %%REDIS%% sync=100ms timeout=500ms%%EXTRA%%;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0 max=1s;
        llm_cooldown off;

        # every request wants one retry; the budget allows 10 a window
        location = /fail/v1/chat/completions {
            llm_route fail;
            llm_target /_llm/fail tries=2;
            llm_retry_budget ratio=0 min=1/s window=10s;
        }

        location = /ok/v1/chat/completions {
            llm_route ok;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.5 min=0/s window=5s;
        }

        location = /long/v1/chat/completions {
            llm_route long;
            llm_target /_llm/ok;
            llm_retry_budget ratio=0.5 min=0/s window=60s;
        }

        location = /cool/v1/chat/completions {
            llm_route cool;
            llm_target /_llm/cool model=m1;
            llm_fallback /_llm/ok;
            llm_retry_budget ratio=1 min=10/s;
        }

        location = /_llm/fail {
            internal;
            return 500 '{"error":{"type":"server_error"}}';
        }

        location = /_llm/ok {
            internal;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[]}';
        }

        location = /_llm/cool {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/;
        }

        location = /status {
            llm_status;
        }
    }

    # the provider behind /_llm/cool: add_header does not act on the
    # attempt's subrequest, so it answers from a server of its own
    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location / {
            add_header Retry-After 30 always;
            return 429 '{"error":{"type":"requests","code":"rate_limit_exceeded"}}';
        }
    }
}
EOF

sub config {
    my (%o) = @_;
    my $c = $conf;
    $c =~ s/%%REDIS%%/$o{redis} || ''/e;
    $c =~ s/%%EXTRA%%/$o{extra} || ''/e;
    $c =~ s/\n\s*llm_redis [^;]*;// if $o{none};
    $t->write_file_expand('nginx.conf', $c);
}

my $port;
my $BODY = '{"model":"m","messages":[{"role":"user","content":"hi"}]}';

sub post {
    my ($route, $id) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$id",
                                    $BODY, port => $port));
}

# the access log lines of a request: written just after its answer
sub log_lines {
    my ($id) = @_;
    my @l;
    wait_until(sub {
        @l = grep { /^\Q$id\E\|/ } split /\n/, $t->read_file('logs/src.log');
    }, 1);
    return @l;
}

sub redis { return redis_command($redis, @_) }

sub hostname_of {
    chomp(my $h = `hostname`);
    return $h;
}

###############################################################################
# keys and values

config(redis => "127.0.0.1:$redis");
$t->run;
$port = $t->port(8080);

ok($t->wait_redis(cluster => 1),
   'the link comes up: state up, budget source cluster');

my $s = $t->status_json;
is($s->{redis}{address}, "127.0.0.1:$redis", 'status: address as written');
ok($s->{redis}{syncs} > 0, 'status: syncs counted');
is($s->{redis}{sync_errors}, 0, 'status: no sync error');
is($s->{redis}{link_downs}, 0, 'status: the link never went down');
ok(defined $s->{redis}{view_age_ms} && $s->{redis}{view_age_ms} < 1000,
   'status: the view is fresh');

my $start = int(time);
post('ok', "ok$_") for 1 .. 6;
sleep 0.35;
my $end = int(time);

my $requests = 0;
my $secs = fleet_seconds($redis);
for my $sec ($start .. $end) {
    next unless $secs->{$sec};
    $requests += fleet_count($redis, 'ok', 'r', $sec);
    my $ttl = redis('PTTL', $secs->{$sec});
    ok($ttl > 60000 && $ttl <= 63000,
       "second $sec expires in 61 + 2 s ($ttl ms)");
}
is($requests, 6, 'the route\'s requests reached Redis, each once');
is(scalar(grep { fleet_count($redis, 'ok', 'x', $_) } $start .. $end), 0,
   'no retry counted for a route without retries');

my @keys = @{ redis('KEYS', '*') };
ok(!(grep { !/^\{llm:(w|cd|nodes)\}:|^\{llm:nodes\}$/ } @keys),
   'every key carries the {prefix:w}, {prefix:cd} or {prefix:nodes} tag')
    or diag "@keys";

# this node says it is alive: a member per zone, kept across reloads
my $member;
{
    my $members = redis('ZRANGE', '{llm:nodes}', 0, -1, 'WITHSCORES');
    is(scalar @$members, 2, 'nodes: one member');
    like($members->[0], qr/^\Q${\hostname_of()}\E:[0-9a-f]{16}$/,
         'nodes: the member is hostname:random id');
    unlike($members->[0], qr/:${\$t->nginx_pid}$/,
           'nodes: the member is not the master pid');
    $member = $members->[0];
    is_deeply(redis('ZRANGE', '{llm:nodes}:ids', 0, -1), [ $member ],
              'nodes: the id set holds it');
    my $age = time * 1000 - $members->[1];
    ok($age >= -100 && $age < 2000, "nodes: heard of lately ($age ms ago)");
    my $ttl = redis('PTTL', '{llm:nodes}');
    ok($ttl > 60000 && $ttl <= 65000, "nodes: the set expires ($ttl ms)");
    is($t->status_json->{redis}{nodes}, 1, 'status: nodes 1');
}

# a route idle on this node is not read from Redis: its first requests
# are judged locally, until a sync reads its window
is((log_lines('ok1'))[0], 'ok1|local|-|1|200',
   '$llm_budget_source: local on a route idle until then');
post('ok', 'ok7');
is((log_lines('ok7'))[0], 'ok7|cluster|-|1|200',
   '$llm_budget_source: cluster once a sync read the route');

###############################################################################
# retries that other nodes spent count here

{
    # two requests spend two of the ten retries, this node's own
    post('fail', "f$_") for 1 .. 2;
    sleep 0.3;

    my $now = int(time);
    my $x = 0;
    $x += fleet_count($redis, 'fail', 'x', $_) for $now - 2 .. $now;
    is($x, 2, 'this node\'s retries reached Redis');

    # another node spends the rest of the window's budget
    fleet_add($redis, 'fail', 'x', $now, 8);
    sleep 0.3;

    is($t->status_json->{routes}{fail}{budget}{left}, 0,
       'status: the budget left counts the other node\'s retries');

    my $r = post('fail', 'f3');
    is($r->{status}, 500, 'budget spent by another node: the answer');
    is($r->{headers}{'x-should-retry'}, 'false',
       'budget spent by another node: x-should-retry false');
    is((log_lines('f3'))[0], 'f3|cluster|budget_exhausted|1|500',
       'budget spent by another node: budget_exhausted, cluster');
}

###############################################################################
# cooldowns: another node's, and this node's own

{
    my $until = int(time * 1000) + 20000;
    redis('SET', '{llm:cd}:/_llm/cool m1', $until, 'PX', 20000);

    ok(wait_until(sub {
           $t->status_json->{targets}{'/_llm/cool m1'}{cooling} }, 2),
       'a cooldown another node wrote is honoured');

    my $left =
        $t->status_json->{targets}{'/_llm/cool m1'}{cooldown_remaining_ms};
    ok($left > 15000 && $left <= 20000, "it ends when Redis says ($left ms)");

    my $r = post('cool', 'c1');
    is($r->{status}, 200, 'the cooling target is skipped: the fallback');
    is((log_lines('c1'))[0], 'c1|local|-|1|200',
       'one attempt: the fallback (the route\'s first request: local)');

    ok($t->wait_for_log('logs/error.log',
                        qr/llm target "\/_llm\/cool m1" cooling down for \d+ ms, as another node found/, 2),
       'logged at notice');
}

###############################################################################
# an error reply to a sync: a key of another type where the node list goes

{
    my $off = $t->log_offset('logs/error.log');

    redis('DEL', '{llm:nodes}');
    redis('SET', '{llm:nodes}', 'not a sorted set');

    ok(wait_until(sub {
           ($t->status_json->{redis}{state} // '') eq 'down' }, 3),
       'error reply: the link goes down');
    is((post('ok', 'e1'))->{status}, 200, 'error reply: requests served');
    is((log_lines('e1'))[0], 'e1|local|-|1|200', 'error reply: local');

    sleep 1.5;
    redis('DEL', '{llm:nodes}');
    ok($t->wait_redis(cluster => 1),
       'error reply: the link is back once the key is gone');

    my @lines = grep { /llm redis/ }
                split /\n/, $t->read_from('logs/error.log', $off);
    is(scalar(grep { /is unavailable \(sync refused: .*WRONGTYPE/ } @lines),
       1, 'error reply: logged once, with Redis\' reason')
        or diag join "\n", @lines;
    is(scalar(grep { /is back, / } @lines), 1, 'error reply: back, once');
}

$t->stop;

# this node's own cooldown goes to Redis (a new zone: no cooldown yet)
redis('FLUSHALL');
config(redis => "127.0.0.1:$redis");
$t->run;
ok($t->wait_redis(cluster => 1), 'restart: the link comes up');

{
    my $r = post('cool', 'c2');
    is($r->{status}, 200, 'Retry-After 30 above max: the fallback answers');

    my $v;
    wait_until(sub { $v = redis('GET', '{llm:cd}:/_llm/cool m1') }, 2);
    my $now = int(time * 1000);
    ok(defined $v && $v > $now + 28000 && $v <= $now + 30000,
       'the cooldown\'s end is in Redis') or diag $v // 'none';
    my $ttl = redis('PTTL', '{llm:cd}:/_llm/cool m1');
    ok($ttl > 28000 && $ttl <= 30000, "it expires with it ($ttl ms)");
}

###############################################################################
# Prometheus

{
    my $r = parse_response(http_get('/status?format=prometheus',
                                    port => $port));
    my $text = $r->{body};

    like($text, qr/^nginx_llm_redis_up 1$/m, 'prometheus: redis up');
    like($text, qr/^nginx_llm_redis_cluster_view 1$/m,
         'prometheus: cluster view');
    like($text, qr/^nginx_llm_redis_syncs_total [1-9]\d*$/m,
         'prometheus: syncs');
    like($text, qr/^nginx_llm_redis_sync_errors_total 0$/m,
         'prometheus: no sync error');
    like($text, qr/^nginx_llm_redis_link_downs_total 0$/m,
         'prometheus: no link down');

    my ($promtool) = grep { -x } map { "$_/promtool" }
                     split(/:/, $ENV{PATH} || ''), '/usr/bin';
    SKIP: {
        skip 'promtool not found: apt-get install prometheus', 1
            unless $promtool;
        $t->write_file('redis.prom', $text);
        my $file = $t->testdir . '/redis.prom';
        my $out = `$promtool check metrics < '$file' 2>&1`;
        is($out, '', 'prometheus: promtool check metrics has nothing to say');
    }
}

###############################################################################
# reloads under load: every request reaches Redis once, neither lost
# with the old worker 0 (its batch in flight) nor sent again by the new
# one

{
    my $count = $t->testdir . '/count';
    my $pid = fork() // die "fork: $!";

    if ($pid == 0) {
        my ($ok, $other) = (0, 0);
        my $deadline = time + 3;
        while (time < $deadline) {
            my $r = post('long', 'L');
            $r->{status} == 200 ? $ok++ : $other++;
        }
        open my $fh, '>', $count or die;
        print $fh "$ok $other\n";
        close $fh;
        POSIX::_exit(0);
    }

    $member = redis('ZRANGE', '{llm:nodes}', 0, -1)->[-1];

    # Redis pauses first: the old worker 0 quits with a batch in flight,
    # which it waits for (timeout=500ms) rather than lose its counts
    my $start = int(time) - 1;
    my $reloads = 0;
    for (1 .. 3) {
        sleep 0.5;
        redis('CLIENT', 'PAUSE', 400);
        sleep 0.15;
        $reloads++ if $t->reload;
    }
    waitpid($pid, 0);
    is($reloads, 3, 'reloads under load: new workers replaced the old');

    my ($ok, $other) = split ' ', $t->read_file('count');
    ok($ok > 50, "reloads under load: $ok requests answered 200");
    is($other, 0, 'reloads under load: no other answer');

    ok($t->wait_redis(cluster => 1),
       'reloads under load: the new worker 0 is linked');
    sleep 0.3;

    my $sum = 0;
    $sum += fleet_count($redis, 'long', 'r', $_) for $start .. int(time);
    is($sum, $ok, 'reloads under load: Redis counted each request once');
    is($t->status_json->{routes}{long}{requests}, $ok,
       'reloads under load: so did the zone');
    is_deeply(redis('ZRANGE', '{llm:nodes}', 0, -1), [ $member ],
              'reloads under load: the node kept its id');
}

$t->stop;

###############################################################################
# prefix=, db=, a unix socket

redis('FLUSHALL');
config(redis => "unix:$sock", extra => ' prefix=fleet-a db=3');
$t->run;

ok($t->wait_redis(cluster => 1), 'unix socket: the link comes up');
post('ok', 'u0');
sleep 0.3;
post('ok', 'u1');
sleep 0.3;

{
    is_deeply(redis('KEYS', '*'), [], 'db=3: nothing in db 0');

    # the harness opens a connection per command: SELECT and KEYS inline
    my $c = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$redis",
                                  Timeout => 2);
    print $c "SELECT 3\r\nKEYS *\r\n";
    my $sel = IO::Select->new($c);
    my $reply = '';
    my $deadline = time + 2;
    while (time < $deadline && $reply !~ /\{fleet-a:w\}:\w+:\d+\r\n/) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread($c, my $buf, 4096);
        last unless $n;
        $reply .= $buf;
    }
    like($reply, qr/\{fleet-a:w\}:[0-9a-f]{16}:\d+/,
         'prefix= and db= name the keys');
    is((log_lines('u1'))[0], 'u1|cluster|-|1|200',
       'unix socket: $llm_budget_source cluster');
}

$t->stop;

###############################################################################
# an IPv6 address

SKIP: {
    my $v6 = IO::Socket::IP->new(Listen => 1, LocalHost => '::1',
                                 LocalPort => 0, Proto => 'tcp');
    skip 'no IPv6 loopback', 2 unless $v6;

    my $port6 = $v6->sockport;
    close $v6;

    $t->run_daemon('redis-server', '--port', $port6, '--bind', '::1',
                   '--save', '', '--appendonly', 'no', '--dir', $t->testdir,
                   '--logfile', $t->testdir . '/redis6.log');

    config(redis => "[::1]:$port6");
    $t->run;

    ok($t->wait_redis(cluster => 1), 'IPv6: the link comes up');
    is($t->status_json->{redis}{address}, "[::1]:$port6", 'IPv6: the address');

    $t->stop;
}

###############################################################################
# no llm_redis

config(none => 1);
$t->run;
post('ok', 'n1');

is($t->status_json->{redis}, undef, 'without llm_redis: "redis" is null');
unlike(parse_response(http_get('/status?format=prometheus',
                               port => $port))->{body},
       qr/nginx_llm_redis/, 'without llm_redis: no redis family');
is((log_lines('n1'))[0], 'n1|local|-|1|200', '$llm_budget_source: local');

done_testing;
