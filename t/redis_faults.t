#!/usr/bin/perl

# Faults of the Redis link of llm_redis (docs/design.md section 4), with a real nginx, a
# real redis-server and real sockets.  Covers: the config errors of
# llm_redis at nginx -t (a host name, a duplicate, sync= out of range,
# braces in prefix=, an unknown or mistyped parameter whose value is not
# echoed, no llm_zone; a unix: path passes); and, for every fault, that
# every request is answered 200 while $llm_budget_source is "local",
# that the status page says down/local during the outage and up/cluster
# after it, that exactly one "is unavailable" warn line is logged per
# outage however many reconnects fail, and one "is back" line after it,
# that link_downs grows by one per outage and syncs resume with a fresh
# view, that the workers are not respawned and leak no descriptor:
#     1. Redis absent at start, then started on that port;
#     2. Redis killed (SIGKILL) under continuous load, then restarted;
#     3. Redis shut down without saving and restarted empty: the counter
#        keys are created again;
#     4. Redis stalled (CLIENT PAUSE) longer than timeout=: "timed out",
#        requests never wait for Redis;
#     5. a wrong password: refused, logged without the password; no
#        password: NOAUTH; the right one brings the link up, also when
#        reloaded to while the old workers are still reconnecting;
#     6. a reload and a stop while linked: the old worker exits promptly,
#        no socket left open.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

plan(skip_all => 'redis-server not found')
    unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH} || '';

my $BODY = '{"model":"m","messages":[]}';

my $CONF = <<'EOF';
worker_processes 2;

events {}

http {
    log_format src '$arg_id $llm_budget_source $status';
    access_log %%TESTDIR%%/logs/src.log src;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%PORT_8079%% sync=100ms timeout=300ms%%PASSWORD%%;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0;
        llm_cooldown off;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/ok tries=2;
            llm_retry_budget ratio=0.2 min=1/s window=10s;
        }

        location /_llm/ {
            internal;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}';
        }

        location = /status {
            llm_status;
        }
    }
}
EOF

sub conf {
    my ($password) = @_;
    my $c = $CONF;
    my $p = defined $password ? " password=$password" : '';
    $c =~ s/%%PASSWORD%%/$p/;
    return $c;
}


###############################################################################
# helpers

# the "redis" object of the status page, or undef
sub redis_status {
    my ($t) = @_;
    my $r = parse_response(http_get('/status', port => $t->port(8080),
                                    timeout => 3));
    return undef unless $r && $r->{status} && $r->{status} == 200;
    my $j = eval { decode_json($r->{body}) } or return undef;
    return $j->{redis};
}

# polls until $cond->(status) is true; seconds it took, or undef
sub wait_status {
    my ($t, $cond, $timeout) = @_;
    my $start = time;
    while (time - $start < $timeout) {
        my $s = redis_status($t);
        return time - $start if $s && $cond->($s);
        sleep 0.02;
    }
    return undef;
}

sub is_up {
    my ($s) = @_;
    return $s->{state} eq 'up' && $s->{budget_source} eq 'cluster';
}

sub is_down {
    my ($s) = @_;
    return $s->{state} eq 'down' && $s->{budget_source} eq 'local';
}

# one chat request; (status, seconds)
sub chat {
    my ($t, $id) = @_;
    my $start = time;
    my $r = parse_response(http_post("/v1/chat/completions?id=$id", $BODY,
                                     port => $t->port(8080), timeout => 5));
    return (($r && $r->{status}) || 0, time - $start);
}

# id => budget source of the logged requests with ids matching $re
sub sources {
    my ($t, $re, $n) = @_;
    my %src;
    my $deadline = time + 3;
    while (1) {
        %src = ();
        for (split /\n/, $t->read_file('logs/src.log')) {
            my ($id, $s, $status) = split / /;
            $src{$id} = $s if $id =~ $re;
        }
        last if keys %src >= $n || time > $deadline;
        sleep 0.02;
    }
    return \%src;
}

# n requests, all 200?  and their budget sources
sub chats {
    my ($t, $tag, $n) = @_;
    my @bad;
    for my $i (1 .. $n) {
        my ($status) = chat($t, "$tag-$i");
        push @bad, "$tag-$i: $status" unless $status == 200;
    }
    my $src = sources($t, qr/^\Q$tag\E-\d+$/, $n);
    return (\@bad, [ map { $src->{"$tag-$_"} // 'missing' } 1 .. $n ]);
}

sub count_lines {
    my ($text, $re) = @_;
    return scalar grep { $_ =~ $re } split /\n/, $text;
}

sub fd_count {
    my ($pid) = @_;
    opendir my $dh, "/proc/$pid/fd" or return -1;
    return scalar grep { !/^\.\.?$/ } readdir $dh;
}

sub fds {
    my ($t) = @_;
    return { map { $_ => fd_count($_) } $t->worker_pids };
}

sub redis_pid {
    my ($port) = @_;
    my $info = redis_command($port, 'INFO', 'server');
    return $info =~ /^process_id:(\d+)/m ? $1 : undef;
}

sub reap {
    my ($pid, $timeout) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid || ($r == -1 && !-e "/proc/$pid");
        sleep 0.02;
    }
    return 0;
}

sub chat_keys {
    my ($port, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $secs = eval { fleet_seconds($port) } || {};
        my @k = grep { eval { fleet_count($port, 'chat', 'r', $_) } }
                sort keys %$secs;
        return \@k if @k || time > $deadline;
        sleep 0.05;
    }
}


###############################################################################
# llm_redis config errors at nginx -t

{
    my $tc = Test::LLM->new;

    # nginx -t logs its refusals at emerg; nothing runs here
    $tc->allow_alerts(qr/\[emerg\]/);
    $tc->canary('canarySecret9');

    my $check = sub {
        my ($line, %o) = @_;
        my $c = $CONF;
        $c =~ s/^.*llm_redis .*\n/$line\n/m or die "no llm_redis line\n";
        $c =~ s/^\s*llm_zone .*\n//m if $o{no_zone};
        $c =~ s/%%PORT_8079%%/6379/;
        $tc->write_file_expand('nginx.conf', $c);
        return $tc->test_config;
    };

    my ($ok, $out) = $check->('llm_redis localhost:6379;');
    ok(!$ok, 'host name refused');
    like($out, qr/invalid address "localhost:6379" in "llm_redis": an IP address or "unix:" path is required/,
         'host name: IP address required');

    ($ok, $out) = $check->("llm_redis 127.0.0.1:6379;\n"
                           . "    llm_redis 127.0.0.1:6380;");
    ok(!$ok, 'duplicate refused');
    like($out, qr/"llm_redis" directive is duplicate/, 'duplicate message');

    ($ok, $out) = $check->('llm_redis 127.0.0.1:6379 sync=5ms;');
    ok(!$ok, 'sync=5ms refused');
    like($out, qr/invalid sync "sync=5ms"/, 'sync=5ms message');

    ($ok, $out) = $check->('llm_redis 127.0.0.1:6379 "prefix={x}";');
    ok(!$ok, 'prefix with braces refused');
    like($out, qr/invalid parameter "prefix=\{x\}"/, 'prefix message');

    ($ok, $out) = $check->('llm_redis 127.0.0.1:6379 foo=bar;');
    ok(!$ok, 'unknown parameter refused');
    like($out, qr/invalid parameter "foo=/, 'unknown parameter message');

    ($ok, $out) = $check->('llm_redis 127.0.0.1:6379 pasword=canarySecret9;');
    ok(!$ok, 'mistyped password= refused');
    like($out, qr/invalid parameter "pasword=/, 'mistyped password= named');
    unlike($out, qr/canarySecret9/, 'mistyped password= value not echoed');

    ($ok, $out) = $check->('llm_redis 127.0.0.1:6379 password=canarySecret9 db=x;');
    ok(!$ok, 'bad db= after a password refused');
    unlike($out, qr/canarySecret9/, 'password not echoed for another error');

    ($ok, $out) = $check->('llm_redis 127.0.0.1:6379;', no_zone => 1);
    ok(!$ok, 'llm_redis without llm_zone refused');
    like($out, qr/"llm_redis" requires "llm_zone"/, 'llm_zone required');

    ($ok, $out) = $check->('llm_redis unix:/tmp/x.sock;');
    ok($ok, 'unix: path passes -t') or diag($out);
}


###############################################################################
# 1. Redis absent at start

my $t = Test::LLM->new;
my $rp = $t->port(8079);
my $addr = "127.0.0.1:$rp";
my $UNAVAIL = qr/\[warn\].*llm redis \Q$addr\E is unavailable \(([^)]*)\), retry budgets and cooldowns are counted by this node alone until it is back/;
my $BACK = qr/\[warn\].*llm redis \Q$addr\E is back, retry budgets and cooldowns are shared again/;

$t->write_file_expand('nginx.conf', conf());

my ($ok, $out) = $t->test_config;
ok($ok, 'absent: nginx -t ok with nothing at the address') or diag($out);

my $started = time;
$t->run;

my $line = $t->wait_for_log('logs/error.log', $UNAVAIL, 3);
ok($line, 'absent: unavailable logged');
like($line // '', qr/refused/i, 'absent: the reason is the refusal');

my ($bad, $src) = chats($t, 'a', 5);
is_deeply($bad, [], 'absent: requests answered 200');
is_deeply($src, [ ('local') x 5 ], 'absent: budget source local');

my $s = redis_status($t);
ok($s && is_down($s), 'absent: status down, local')
    or diag(explain($s));
is($s && $s->{view_age_ms}, undef, 'absent: no view of Redis');

my @pids = $t->worker_pids;
is(scalar @pids, 2, 'two workers');

# several reconnects fail before Redis comes
sleep 0.1 while time - $started < 2.5;

my $log = $t->read_file('logs/error.log');
is(count_lines($log, $UNAVAIL), 1, 'absent: one unavailable line in 2.5 s');

my $up_start = time;
$t->run_redis(port => $rp);
my $took = wait_status($t, \&is_up, 6);
ok(defined $took, 'absent: up and cluster after Redis started');
note(sprintf 'absent: up %.3f s after redis-server answered', $took // -1);

($bad, $src) = chats($t, 'a2', 5);
is_deeply($bad, [], 'absent: requests after recovery 200');
is_deeply($src, [ ('cluster') x 5 ], 'absent: budget source cluster');

my $keys = chat_keys($rp, 2);
ok(@$keys, 'absent: counter keys in Redis') or diag(explain($keys));

$log = $t->read_file('logs/error.log');
is(count_lines($log, $BACK), 1, 'absent: one is back line');
is(count_lines($log, $UNAVAIL), 1, 'absent: still one unavailable line');

is_deeply([ $t->worker_pids ], \@pids, 'absent: workers not respawned');

$s = redis_status($t);
is($s->{link_downs}, 0, 'absent: never up before, so no link down');

my $fd0 = fds($t);
ok(!grep({ $_ < 0 } values %$fd0), 'worker fds readable')
    or diag(explain($fd0));
note('fds with the link up: ' . join ', ',
     map { "$_=$fd0->{$_}" } sort keys %$fd0);

# after a fault: the link is up again, same workers, same descriptors
sub after_fault {
    my ($name, $off, $before) = @_;

    # one outage is one link down, however many reconnects failed
    my $s = redis_status($t) || {};
    is($s->{link_downs}, $before->{link_downs} + 1,
       "$name: link_downs counted once");
    cmp_ok($s->{syncs} // 0, '>', $before->{syncs}, "$name: syncing again");
    # fresh: younger than max(3 * sync, sync + timeout)
    ok(defined $s->{view_age_ms} && $s->{view_age_ms} <= 400,
       "$name: a fresh view of Redis")
        or diag(explain($s));

    my $log = $t->read_from('logs/error.log', $off);
    is(count_lines($log, $UNAVAIL), 1, "$name: one unavailable line")
        or diag($log);
    is(count_lines($log, $BACK), 1, "$name: one is back line")
        or diag($log);

    my ($bad, $src) = chats($t, "$name-after", 5);
    is_deeply($bad, [], "$name: requests after recovery 200");
    is_deeply($src, [ ('cluster') x 5 ], "$name: budget source cluster");

    is_deeply([ $t->worker_pids ], \@pids, "$name: workers not respawned");

    # the status connection may still be closing in the worker
    my $fd;
    for (1 .. 25) {
        $fd = fds($t);
        last if join(',', %$fd) eq join(',', %$fd0);
        sleep 0.02;
    }
    is_deeply($fd, $fd0, "$name: no descriptor leaked");
}


###############################################################################
# 2. killed under load

{
    my $off = $t->log_offset('logs/error.log');
    my $before = redis_status($t);
    my $rpid = redis_pid($rp);
    ok($rpid, 'killed: redis pid');

    my $results = $t->testdir . '/load.txt';
    my $client = fork;
    die "fork: $!\n" unless defined $client;

    if ($client == 0) {
        open my $fh, '>', $results or POSIX::_exit(1);
        my $start = time;
        for my $i (1 .. 1000) {
            last if time - $start > 5;
            my ($status, $secs) = chat($t, "k-$i");
            printf $fh "%d %d %.4f\n", $i, $status, $secs;
            sleep 0.005;
        }
        close $fh;
        POSIX::_exit(0);
    }

    sleep 0.5;

    my $killed = time;
    kill 'KILL', $rpid;
    ok(reap($rpid, 3), 'killed: redis-server gone');

    my $down = wait_status($t, \&is_down, 3);
    ok(defined $down, 'killed: status down, local');
    note(sprintf 'killed: down seen %.3f s after SIGKILL', $down // -1);

    my $reason;
    for (1 .. 150) {
        ($reason) = $t->read_from('logs/error.log', $off) =~ $UNAVAIL;
        last if defined $reason;
        sleep 0.02;
    }
    ok(defined $reason, 'killed: unavailable logged');
    note('killed: reason ' . ($reason // 'none'));

    # several reconnects
    sleep 0.05 while time - $killed < 2.5;

    my $restart = time;
    $t->run_redis(port => $rp);
    my $up = wait_status($t, \&is_up, 6);
    ok(defined $up, 'killed: up and cluster after restart');
    note(sprintf 'killed: up %.3f s after redis-server answered', $up // -1);

    ok(reap($client, 10), 'killed: load client done');

    my @r = map { [ split ' ' ] } split /\n/, $t->read_file($results);
    my @not200 = grep { $_->[1] != 200 } @r;
    my ($max) = sort { $b <=> $a } map { $_->[2] } @r;
    cmp_ok(scalar @r, '>=', 100, 'killed: load sent requests');
    is(scalar @not200, 0, 'killed: every request under load 200')
        or diag(explain([ @not200[0 .. 4] ]));
    note(sprintf 'killed: %d requests, max %.1f ms', scalar @r,
         ($max // 0) * 1000);

    my $src = sources($t, qr/^k-\d+$/, scalar @r);
    my %n;
    $n{$_}++ for values %$src;
    ok($n{local}, 'killed: some requests under load counted locally');
    ok($n{cluster}, 'killed: some requests under load counted by cluster');
    note('killed: sources ' . join ', ', map { "$_=$n{$_}" } sort keys %n);

    after_fault('killed', $off, $before);
}


###############################################################################
# 3. shut down and restarted empty: counters gone

{
    my $off = $t->log_offset('logs/error.log');
    my $before = redis_status($t);
    my $rpid = redis_pid($rp);

    my ($bad) = chats($t, 'r', 3);
    is_deeply($bad, [], 'restarted: requests before 200');
    ok(@{ chat_keys($rp, 2) }, 'restarted: counter keys before');

    my $stopped = time;
    eval { redis_command($rp, 'SHUTDOWN', 'NOSAVE') };
    ok(reap($rpid, 3), 'restarted: redis-server shut down');

    my $down = wait_status($t, \&is_down, 3);
    ok(defined $down, 'restarted: status down, local');
    note(sprintf 'restarted: down seen %.3f s after SHUTDOWN', $down // -1);

    ($bad, my $src) = chats($t, 'r-down', 5);
    is_deeply($bad, [], 'restarted: requests during the outage 200');
    is_deeply($src, [ ('local') x 5 ], 'restarted: budget source local');

    sleep 0.05 while time - $stopped < 2.2;

    $t->run_redis(port => $rp);
    my $up = wait_status($t, \&is_up, 6);
    ok(defined $up, 'restarted: up and cluster after restart');
    note(sprintf 'restarted: up %.3f s after redis-server answered',
         $up // -1);

    ($bad) = chats($t, 'r-up', 3);
    is_deeply($bad, [], 'restarted: requests after restart 200');
    my $keys = chat_keys($rp, 2);
    ok(@$keys, 'restarted: counter keys created again')
        or diag(explain($keys));

    after_fault('restarted', $off, $before);
}


###############################################################################
# 4. slow: a pause longer than timeout=

{
    my $off = $t->log_offset('logs/error.log');
    my $before = redis_status($t);

    my $paused = time;
    is(redis_command($rp, 'CLIENT', 'PAUSE', '2000'), 'OK',
       'slow: CLIENT PAUSE 2000');

    my ($down, $i, @lat, @bad, @local_ids);

    while (time - $paused < 1.8) {
        my $s = redis_status($t);
        my $seen_down = $s && is_down($s);
        $down //= time - $paused if $seen_down;

        my ($status, $secs) = chat($t, 's-' . ++$i);
        push @lat, $secs;
        push @bad, "s-$i: $status" unless $status == 200;
        push @local_ids, "s-$i" if $seen_down;
        sleep 0.02;
    }

    ok(defined $down, 'slow: status down, local during the pause');
    note(sprintf 'slow: down seen %.3f s after CLIENT PAUSE', $down // -1);
    is_deeply(\@bad, [], 'slow: requests during the pause 200');

    my ($max) = sort { $b <=> $a } @lat;
    cmp_ok($max, '<', 0.25, 'slow: no request waited for Redis');
    note(sprintf 'slow: %d requests, max %.1f ms', scalar @lat, $max * 1000);

    my $src = sources($t, qr/^s-\d+$/, $i);
    is_deeply([ grep { $src->{$_} ne 'local' } @local_ids ], [],
              'slow: budget source local once down');
    ok(@local_ids, 'slow: requests while down');

    my $line = $t->wait_for_log('logs/error.log', $UNAVAIL, 1);
    my ($reason) = $t->read_from('logs/error.log', $off) =~ $UNAVAIL;
    like($reason // '', qr/timed out/, 'slow: reason timed out');

    my $up = wait_status($t, \&is_up, 6);
    ok(defined $up, 'slow: up and cluster after the pause');
    note(sprintf 'slow: up %.3f s after the pause ended',
         time - $paused - 2);

    cmp_ok(redis_status($t)->{sync_errors}, '>', $before->{sync_errors},
           'slow: the stalled batch counted as a sync error');

    after_fault('slow', $off, $before);
}


###############################################################################
# 6. reload and stop while linked

{
    my $off = $t->log_offset('logs/error.log');

    my $start = time;
    ok($t->reload(timeout => 5), 'reload: old workers replaced');
    my $secs = time - $start;
    cmp_ok($secs, '<', 2, 'reload: old workers exit promptly');
    note(sprintf 'reload: %.3f s', $secs);

    my $up = wait_status($t, \&is_up, 6);
    ok(defined $up, 'reload: up and cluster with the new workers');

    my ($bad, $src) = chats($t, 'h', 3);
    is_deeply($bad, [], 'reload: requests 200');

    my $log = $t->read_from('logs/error.log', $off);
    is(count_lines($log, $UNAVAIL), 0, 'reload: no unavailable line');
    like($log, qr/llm redis \Q$addr\E connected/,
         'reload: the new worker connected');

    $start = time;
    $t->stop(timeout => 5);
    $secs = time - $start;
    cmp_ok($secs, '<', 2, 'stop: prompt');
    note(sprintf 'stop: %.3f s', $secs);

    $log = $t->read_from('logs/error.log', $off);
    unlike($log, qr/open socket|exited on signal/, 'stop: no socket left');
}


###############################################################################
# 5. wrong password, then the right one

{
    my $t2 = Test::LLM->new;
    $t2->canary('WRONGcanary123');

    my $rp2 = $t2->port(8079);
    my $addr2 = "127.0.0.1:$rp2";
    my $unavail = qr/\[warn\].*llm redis \Q$addr2\E is unavailable \(([^)]*)\)/;

    # run_redis waits for a PING, which a password refuses: set it after
    $t2->run_redis(port => $rp2);
    is(redis_command($rp2, 'CONFIG', 'SET', 'requirepass', 'RIGHTsecret'),
       'OK', 'password: Redis requires one');

    $t2->write_file_expand('nginx.conf', conf('WRONGcanary123'));
    my $start = time;
    $t2->run;

    my $line = $t2->wait_for_log('logs/error.log', $unavail, 3);
    ok($line, 'password: unavailable logged');
    like($line // '', qr/AUTH refused: WRONGPASS/, 'password: reason WRONGPASS');

    my ($bad, $src) = chats($t2, 'p', 5);
    is_deeply($bad, [], 'password: requests 200');
    is_deeply($src, [ ('local') x 5 ], 'password: budget source local');

    my $s = redis_status($t2);
    ok($s && is_down($s), 'password: status down, local');
    is($s && $s->{link_downs}, 0, 'password: never up, so no link down');
    is($s && $s->{syncs}, 0, 'password: no batch answered');

    sleep 0.1 while time - $start < 2.5;
    is(count_lines($t2->read_file('logs/error.log'), $unavail), 1,
       'password: one unavailable line in 2.5 s');

    # no password at all: the PING is refused
    my $off = $t2->log_offset('logs/error.log');
    $t2->write_file_expand('nginx.conf', conf());
    ok($t2->reload(timeout => 5), 'password: reloaded without one');

    my $noauth = qr/\[warn\].*llm redis \Q$addr2\E is unavailable \(PING refused: NOAUTH/;
    ok($t2->wait_for_log('logs/error.log', $noauth, 3),
       'password: NOAUTH without one');
    ($bad, $src) = chats($t2, 'p1', 3);
    is_deeply($bad, [], 'password: requests 200 without one');
    is_deeply($src, [ ('local') x 3 ], 'password: local without one');

    $off = $t2->log_offset('logs/error.log');
    $t2->write_file_expand('nginx.conf', conf('RIGHTsecret'));
    ok($t2->reload(timeout => 5), 'password: reloaded with the right one');

    my $up = wait_status($t2, \&is_up, 6);
    ok(defined $up, 'password: up and cluster with the right password')
        or diag(explain(redis_status($t2)),
                $t2->read_from('logs/error.log', $off));

    ($bad, $src) = chats($t2, 'p2', 5);
    is_deeply($bad, [], 'password: requests 200 after');
    is_deeply($src, [ ('cluster') x 5 ], 'password: budget source cluster');

    my $log = $t2->read_from('logs/error.log', $off);
    is(count_lines($log, $unavail), 0, 'password: no unavailable line after');

    # reloads from a down link (the old worker 0 still reconnecting for
    # the ~100 ms nginx keeps it running) to an up one: the new worker's
    # link is what the status page shows
    for my $round (1 .. 3) {
        $off = $t2->log_offset('logs/error.log');
        $t2->write_file_expand('nginx.conf', conf());
        $t2->reload(timeout => 5);
        for (1 .. 150) {
            last if $t2->read_from('logs/error.log', $off) =~ $noauth;
            sleep 0.02;
        }

        $off = $t2->log_offset('logs/error.log');
        $t2->write_file_expand('nginx.conf', conf('RIGHTsecret'));
        ok($t2->reload(timeout => 5), "down to up reload $round");

        my $up = wait_status($t2, \&is_up, 4);
        ok(defined $up, "down to up reload $round: state up, cluster")
            or diag(explain(redis_status($t2)),
                    $t2->read_from('logs/error.log', $off));
    }
}

done_testing;
