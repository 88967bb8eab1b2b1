#!/usr/bin/perl

# Fault-matrix soak (issue 11).  A gateway of 2 workers (llm_zone,
# llm_redis to a real redis-server with sync=100ms, a retry budget,
# llm_cooldown and llm_backoff at their defaults, llm_attempts 3, a
# fallback) under mixed load for SOAK_SECONDS (default 20; `make soak`:
# 60): non-stream and SSE requests over HTTP/1.1 (raw sockets, forked
# clients) and h2c (curl, at most 2 at a time), against mock providers
# that inject, per attempt and at random from a fixed seed (SOAK_SEED),
# 429 with small and huge Retry-After, 529, 503, resets before and after
# the header, stalls past proxy_read_timeout, replies that are not HTTP,
# streams cut between and inside events (Test::LLM::Soak lists them);
# about 10% of the clients go away early; Redis is killed and restarted
# under load; nginx is reloaded twice.  One target, the fallback, never
# fails.
#
# Asserted at the end: no alert or crash (the harness); every client that
# stayed got a whole answer (a status line and a whole body, or a stream
# ending with [DONE] or the documented error event): a 200, the
# provider's error passed on, or the gateway's 502/503/504; no client
# request reached the providers more than llm_attempts times; every retry
# fitted the budget formula; the never-failing target never cooled down;
# no cooldown longer than the 5m cap; aborts are 499, not 000; the
# counts Redis holds equal the requests the node counted; worker RSS and
# descriptors back near their baseline.  The figures are printed as
# notes (prove -v).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Soak;

use JSON::PP;
use POSIX qw(WNOHANG);
use Fcntl qw(:flock);
use Time::HiRes qw(time sleep);

plan(skip_all => 'redis-server not found')
    unless grep { -x "$_/redis-server" } split /:/, $ENV{PATH} || '';

my $SECONDS = $ENV{SOAK_SECONDS} || 20;
$Test::LLM::Soak::SEED = $ENV{SOAK_SEED} // 11;

my $H1_CLIENTS = 8;         # HTTP/1.1 clients in flight
my $H2_CLIENTS = (`curl -V 2>/dev/null` // '') =~ /\bHTTP2\b/ ? 2 : 0;
my $TIMEOUT = 20;           # a client's own limit, s

# the route's policy, as configured below
my ($ATTEMPTS, $RATIO, $MIN, $WINDOW) = (3, 0.1, 1, 10);
my $COOLDOWN_CAP_MS = 300000;   # llm_cooldown max= default (issue 11 item 2)
my $HEALTHY = '/_llm/healthy h1';

my $t = Test::LLM->new;
my $rp = $t->port(8079);

$t->write_file_expand('nginx.conf', <<'EOF');
worker_processes 2;

events {
    worker_connections 1024;
}

http {
    log_format soak '$arg_id|$uri|$status|$msec|$request_time|'
                    '$llm_attempts|$llm_attempt_targets|'
                    '$llm_attempt_statuses|$llm_attempt_errors|'
                    '$llm_retry_decision|$llm_target_model|$llm_stream|'
                    '$server_protocol|$llm_budget_source';
    log_format soak_attempt '$arg_id|$llm_attempts|$msec|$status|'
                            '$llm_target_model|$llm_error_type';

    access_log %%TESTDIR%%/logs/access.log soak;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%PORT_8079%% sync=100ms;

    upstream flaky {
        server 127.0.0.1:%%PORT_8081%%;
    }

    upstream healthy {
        server 127.0.0.1:%%PORT_8082%%;
        keepalive 4;
        keepalive_timeout 1s;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        listen 127.0.0.1:%%PORT_8083%% http2;

        # llm_cooldown and llm_backoff at their defaults

        location = /v1/chat/completions {
            llm_route        chat;
            # each model a target of its own, cooling on its own
            llm_target       /_llm/flaky model=f1 tries=2;
            llm_target       /_llm/flaky model=f2 tries=2;
            llm_target       /_llm/flaky model=f3 tries=2;
            llm_target       /_llm/flaky model=f4 tries=2;
            llm_target       /_llm/flaky model=f5 tries=2;
            llm_target       /_llm/flaky model=f6 tries=2;
            llm_target       /_llm/flaky model=f7 tries=2;
            llm_target       /_llm/flaky model=f8 tries=2;
            llm_target       /_llm/flaky model=f9 tries=2;
            llm_target       /_llm/flaky model=f10 tries=2;
            llm_target       /_llm/flaky model=f11 tries=2;
            llm_target       /_llm/flaky model=f12 tries=2;
            llm_target       /_llm/flaky model=f-huge;
            llm_fallback     /_llm/healthy model=h1;
            llm_attempts     3;
            llm_retry_budget ratio=0.1 min=1/s window=10s;
        }

        location /_llm/flaky {
            internal;
            proxy_pass http://flaky/v1/chat/completions;
            proxy_read_timeout 1s;
            proxy_set_header X-Attempt $llm_attempts;
            log_subrequest on;
            access_log %%TESTDIR%%/logs/attempts.log soak_attempt;
        }

        location /_llm/healthy {
            internal;
            proxy_pass http://healthy/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Attempt $llm_attempts;
            proxy_read_timeout 10s;
            log_subrequest on;
            access_log %%TESTDIR%%/logs/attempts.log soak_attempt;
        }

        location = /status {
            llm_status;
        }
    }
}
EOF

$t->run_redis(port => $rp);
$t->run_mock_provider(port => $t->port(8081), name => 'flaky',
                      handler => \&flaky_handler);
$t->run_mock_provider(port => $t->port(8082), name => 'healthy',
                      handler => \&healthy_handler);
$t->run;

my $port = $t->port(8080);
my $h2port = $t->port(8083);
my $dir = $t->testdir;
my $RESULTS = "$dir/results.jsonl";
my $JSON = JSON::PP->new->canonical->latin1;

sub status_page {
    my $r = parse_response(http_get('/status', port => $port, timeout => 3));
    return undef unless $r->{status} && $r->{status} == 200;
    return eval { decode_json($r->{body}) };
}

sub redis_pid {
    my $info = eval { redis_command($rp, 'INFO', 'server') } // '';
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

# second => count of the route's request keys in Redis
sub redis_counts {
    my $secs = eval { fleet_seconds($rp) } || {};
    my %c;
    for my $sec (keys %$secs) {
        my $n = eval { fleet_count($rp, 'chat', 'r', $sec) };
        $c{$sec} = $n if $n;
    }
    return \%c;
}

sub write_result {
    my ($r) = @_;
    my $line = $JSON->encode($r) . "\n";
    open my $fh, '>>', $RESULTS or return;
    binmode $fh;
    flock($fh, LOCK_EX);
    syswrite($fh, $line);
    close $fh;
}


###############################################################################
# warm-up and baseline

for my $i (1 .. 6) {
    http(http_request('POST', "/v1/chat/completions?id=w$i",
                      body => request_body("w$i", $i % 2),
                      headers => [ 'Content-Type' => 'application/json' ]),
         port => $port, timeout => 10);
}

if ($H2_CLIENTS) {
    system('curl', '-s', '-o', '/dev/null', '--http2-prior-knowledge',
           '--max-time', '10', '-H', 'Content-Type: application/json',
           '--data-binary', request_body('w7', 0),
           "http://127.0.0.1:$h2port/v1/chat/completions?id=w7");
}

my $base = eval { proc_figures($t->worker_pids) };
ok($base, 'worker RSS and descriptors readable from /proc')
    or diag($@);

my $up0 = status_page();
ok($up0 && $up0->{redis} && $up0->{redis}{state} eq 'up',
   'Redis linked before the load');


###############################################################################
# the load

my %kids;           # pid => { kind, plan, start }
my ($next_id, $h1_n, $h2_n) = (0, 0, 0);
my %ev;
my $t0 = time;
my $end = $t0 + $SECONDS;
my %at = (reload1 => $t0 + 0.2 * $SECONDS, kill => $t0 + 0.35 * $SECONDS,
          reload2 => $t0 + 0.75 * $SECONDS);
my ($last_spawn, $gap_start, $resume_at, $S0, $R1, $R1_status) = (0);
my (%redis_seen, $next_redis_poll, $next_status_poll, $redis_old);
my @reloads;

sub spawn_h1 {
    my $p = client_plan(++$next_id, 'h1');
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
        my $r = eval { h1_client($port, $p, $TIMEOUT) }
                || { id => $p->{id}, proto => 'h1', abort => $p->{abort},
                     stream => $p->{stream}, problem => "client died: $@" };
        write_result($r);
        POSIX::_exit(0);
    }

    $kids{$pid} = { kind => 'h1', plan => $p, start => time };
    $h1_n++;
    $last_spawn = time;
}

sub spawn_h2 {
    my $p = client_plan(++$next_id, 'h2');
    my @cmd = h2_command($h2port, $p, $TIMEOUT, $dir);
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$dir/h2-$p->{id}.out";
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }

    $kids{$pid} = { kind => 'h2', plan => $p, start => time };
    $h2_n++;
    $last_spawn = time;
}

# $t->reload in a child, so that the load goes on while old workers
# finish their requests
sub spawn_reload {
    my ($name) = @_;
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
        POSIX::_exit($t->reload(timeout => 25) ? 0 : 1);
    }

    $kids{$pid} = { kind => 'reload', name => $name, start => time };
}

sub reap_kids {
    for my $pid (keys %kids) {
        my $r = waitpid($pid, WNOHANG);
        next unless $r == $pid;

        my $k = delete $kids{$pid};
        my $code = $? >> 8;

        if ($k->{kind} eq 'h1') {
            $h1_n--;
        } elsif ($k->{kind} eq 'h2') {
            $h2_n--;
            my $r = h2_result($k->{plan}, $dir, $code, time - $k->{start},
                              $TIMEOUT);
            $r->{start} = $k->{start};
            write_result($r);
        } else {
            push @reloads, { name => $k->{name}, ok => $code == 0,
                             secs => time - $k->{start} };
        }
    }
}

sub poll_redis {
    my $c = redis_counts();
    for my $sec (keys %$c) {
        next if $sec < $S0;
        $redis_seen{$sec} = $c->{$sec}
            if !defined $redis_seen{$sec} || $c->{$sec} > $redis_seen{$sec};
    }
}

while (1) {
    my $now = time;

    reap_kids();

    my $clients = grep { $_->{kind} ne 'reload' } values %kids;
    last if $now >= $end && !$clients;

    if ($now > $end + $TIMEOUT + 5) {
        # clients end on their own within TIMEOUT: these hung
        for my $pid (keys %kids) {
            next if $kids{$pid}{kind} eq 'reload';
            kill 'KILL', $pid;
            waitpid($pid, 0);
            my $p = $kids{$pid}{plan};
            write_result({ %$p, problem => 'client killed: no end' });
            delete $kids{$pid};
        }
        last;
    }

    if (!$ev{reload1} && $now >= $at{reload1}) {
        $ev{reload1} = $now;
        spawn_reload('reload1');
    }

    if (!$ev{kill} && $now >= $at{kill}) {
        my $pid = redis_pid();
        $ev{kill} = $now;
        if ($pid) {
            kill 'KILL', $pid;
            reap($pid, 3);
        } else {
            $ev{kill_failed} = 1;
        }
    }

    if ($ev{kill} && !$ev{restart} && $now >= $ev{kill} + 2) {
        $t->run_redis(port => $rp);
        $ev{restart} = time;
    }

    # the link is back: Redis answered a whole batch
    if ($ev{restart} && !$ev{up} && $now >= ($next_status_poll // 0)) {
        $next_status_poll = $now + 0.2;
        my $s = status_page();
        $ev{up} = time
            if $s && $s->{redis}{state} eq 'up'
               && $s->{redis}{budget_source} eq 'cluster'
               && $s->{redis}{link_downs} > $up0->{redis}{link_downs};
    }

    # a quiet point: no request is counted for a moment, then the load
    # resumes in the next second; Redis must hold every count after it
    if ($ev{up} && !$gap_start && $now >= $ev{up} + 0.5) {
        $gap_start = $now;
    }

    if ($gap_start && !$S0 && $now >= $last_spawn + 0.7) {
        my $a = status_page();
        sleep 0.2;
        my $b = status_page();
        if ($a && $b && $a->{routes}{chat}{requests}
                        == $b->{routes}{chat}{requests})
        {
            my $t1 = time;
            $R1 = $b->{routes}{chat}{requests};
            $R1_status = $b;
            $S0 = int($t1) + 1;
            $resume_at = $S0 + 0.05;
        }
    }

    if ($S0 && $now >= ($next_redis_poll // 0)) {
        $next_redis_poll = $now + 1;
        poll_redis();
    }

    if (!$ev{reload2} && $now >= $at{reload2}
        && $resume_at && $now >= $resume_at + 0.5)
    {
        $ev{reload2} = $now;
        spawn_reload('reload2');
    }

    my $paused = $gap_start && (!$resume_at || $now < $resume_at);

    if ($now < $end && !$paused) {
        spawn_h1() while $h1_n < $H1_CLIENTS;
        spawn_h2() while $h2_n < $H2_CLIENTS;
    }

    sleep 0.01;
}

my $load_secs = time - $t0;

# the last counts reach Redis: two whole batches after the load
my $before_final = status_page();
my $final;
for (1 .. 100) {
    $final = status_page();
    last if $final && $before_final
            && $final->{redis}{state} eq 'up'
            && $final->{redis}{syncs} >= $before_final->{redis}{syncs} + 2;
    sleep 0.05;
}
poll_redis() if $S0;


###############################################################################
# every client got a whole answer

my @results = map { $JSON->decode($_) }
              split /\n/, $t->read_file($RESULTS);

my $LOG_FIELDS = [ qw(id uri status msec rtime attempts targets statuses
                      errors decision target_model stream proto source) ];

my $log;
for (1 .. 50) {
    $log = read_log($t, 'logs/access.log', @$LOG_FIELDS);
    last if (grep { $_->{uri} eq '/v1/chat/completions' } @$log)
            >= $next_id + 7;
    sleep 0.1;
}

my %entry = map { $_->{id} => $_ }
            grep { $_->{uri} eq '/v1/chat/completions' } @$log;

my (%outcome, @problems, %problem_kinds, %aborts, %abort_status);

for my $r (@results) {
    my $tag = "$r->{proto}" . ($r->{stream} ? ' stream' : '');

    if ($r->{problem}) {
        push @problems, "id $r->{id} ($tag): $r->{problem}";
        $outcome{client_error}++;
        $problem_kinds{client_error}++;
        next;
    }

    if ($r->{abort}) {
        $aborts{"$r->{proto} $r->{abort}"}++;
        my $e = $entry{$r->{id}};
        $abort_status{$e ? $e->{status} : 'not logged'}++;
        next;
    }

    my ($out, $problem) = judge($r);
    $problem .= sprintf ' (at +%.1f s)', $r->{start} - $t0
        if defined $problem && $r->{start};

    # An answer cut short is documented when the provider cut it and it
    # had to be passed on as it came: a 200 at once, an error answer
    # when no attempt could follow it (else it is held back and retried,
    # or dropped for a 502); the client's connection is then closed, so
    # no half answer passes for a whole one.  An h2 client's stream ends
    # with RST_STREAM INTERNAL_ERROR right after the HEADERS frame
    # (nginx's own, as with proxy_pass: t/http2_cut.t); when both come
    # in one read, curl 7.88 drops the headers and reports exit 92 and
    # no status, so the access log says which status was committed.
    my $rst = $out eq 'no_status' && $r->{proto} eq 'h2'
              && ($r->{curl_exit} // -1) == 92
              && ($r->{curl_out} // '') =~ /INTERNAL_ERROR/;

    if ($out eq 'truncated' || $out =~ /^cut_/ || $rst) {
        my $e = $entry{$r->{id}} || {};
        my $f = fault($r->{id}, $e->{attempts}, $e->{target_model},
                      $r->{stream});
        if (($f =~ /^(?:cut200|stall200)$/
             || ($f eq 'cut500' && ($e->{attempts} // 0) >= $ATTEMPTS))
            && (!$rst || ($e->{status} // '') eq ($f eq 'cut500' ? 500
                                                               : 200)))
        {
            ($out, $problem) = ($rst ? 'truncated_by_provider_h2_rst'
                                     : 'truncated_by_provider', undef);
        } else {
            $problem .= " (attempt $e->{attempts} of $ATTEMPTS to "
                . ($e->{target_model} // '?') . ": $f; logged "
                . "$e->{status}, $e->{errors}, $e->{decision})";
        }
    }

    $outcome{$out}++;
    next unless defined $problem;
    push @problems, "id $r->{id} ($tag): $problem";
    $problem_kinds{$out}++;
}

my $stayed = grep { !$_->{abort} } @results;

cmp_ok(scalar @results, '>=', 50, "load: clients ran (" . @results . ")");
is(scalar @problems, 0,
   "every client that stayed got a whole answer ($stayed clients)")
    or diag(join "\n", 'by kind: ' . join(', ', map {
                "$_=$problem_kinds{$_}" } sort keys %problem_kinds),
            @problems[0 .. ($#problems < 24 ? $#problems : 24)]);

is($abort_status{'000'} // 0, 0,
   'no client abort logged with status 000 (499 when the client went away '
   . 'before the answer, issue 11 item 1)');


###############################################################################
# attempts per request

my $att = read_log($t, 'logs/attempts.log',
                   qw(id attempt msec status model error));
my (%att_by_id, %mock_by_id);
push @{$att_by_id{$_->{id}}}, $_ for @$att;

for my $name (qw(flaky healthy)) {
    for my $rec (@{$t->mock_requests($name)}) {
        my ($id) = ($rec->{query} // '') =~ /(?:^|&)id=([^&]*)/;
        $mock_by_id{$id // '-'}++;
    }
}

my @over_log = grep { $_->{attempts} =~ /^\d+$/ && $_->{attempts} > $ATTEMPTS }
               values %entry;
my @over_att = grep { @{$att_by_id{$_}} > $ATTEMPTS } keys %att_by_id;
my @over_mock = grep { $mock_by_id{$_} > $ATTEMPTS } keys %mock_by_id;

is(scalar @over_log, 0, "\$llm_attempts <= $ATTEMPTS for every request")
    or diag(join "\n", map { "id $_->{id}: $_->{attempts} attempts "
                             . "($_->{targets})" } @over_log[0 .. 4]);
is(scalar(@over_att) + scalar(@over_mock), 0,
   "no client request reached the providers more than $ATTEMPTS times")
    or diag(join "\n", map { "id $_: $mock_by_id{$_} at the mocks, "
                             . scalar(@{$att_by_id{$_} || []})
                             . ' attempt lines' }
                       (@over_mock, @over_att)[0 .. 4]);

my %attempts_hist;
$attempts_hist{$_->{attempts}}++ for values %entry;


###############################################################################
# retries within the budget
#
# The budget is judged at each retry decision on the zone's per-second
# counters of the window (s - 9 .. s, s the worker's cached second):
#
#     retries_in_window + 1 <= min * window + ratio * requests_in_window
#
# With llm_redis the counters are the cluster's: per second
# max(what Redis holds, what this node sent) plus what it has not sent
# yet (ngx_http_llm_slot_sum).  This node is the only one, so that is its
# own count exactly, whether Redis lags, is down, or restarted empty:
# there is no cluster lag to forgive.  What is inexact is the log: a
# request is counted when its body was read (at most 0.3 s after its
# start, $msec - $request_time), a retry is decided when the attempt
# before it ended (its log_subrequest line; a retry decided during a
# client's wait and never sent is not seen, which only makes the check
# weaker), and a worker's cached second may lag the clock by a few ms.
# So each retry is checked against the most lenient reading: retries
# counted only when certainly in the window and before it (50 ms
# margins), requests when possibly in it (0.3 s), each candidate second
# when the decision was within 50 ms of a second's edge.

my @req_starts = sort { $a <=> $b }
                 map { $_->{msec} - $_->{rtime} } values %entry;
my @decisions;

for my $id (keys %att_by_id) {
    my %by_n = map { $_->{attempt} => $_ } @{$att_by_id{$id}};
    for my $n (sort { $a <=> $b } keys %by_n) {
        next unless $n >= 2 && $by_n{$n - 1};
        push @decisions, { id => $id, n => $n, d => $by_n{$n - 1}{msec} };
    }
}

@decisions = sort { $a->{d} <=> $b->{d} } @decisions;

my (@over_budget, $max_use);

for my $i (0 .. $#decisions) {
    my $d = $decisions[$i]{d};
    my ($best, $best_detail);

    for my $s (do { my %u = map { int($_) => 1 } $d - 0.05, $d, $d + 0.05;
                    keys %u })
    {
        my $ws = $s - $WINDOW + 1;
        my $x = 1;
        for my $j (0 .. $i - 1) {
            my $dj = $decisions[$j]{d};
            $x++ if $dj <= $d - 0.05 && $dj >= $ws + 0.05;
        }
        # the window slides by the millisecond: the second before it
        # still counts for a part (llm_retry_budget), at most all of it
        my $r = grep { $_ >= $ws - 1.3 && $_ <= $d + 0.05 } @req_starts;
        # in thousandths, as the module counts (ratio=0.1 is 100)
        my $allow = $MIN * $WINDOW * 1000 + int($RATIO * 1000 + 0.5) * $r;
        my $use = $x * 1000 / ($allow || 1);
        if (!defined $best || $use < $best) {
            $best = $use;
            $best_detail = sprintf('retry %d of id %s at %.3f: %d retries '
                . 'in the window > %d + %.1f x %d requests', $decisions[$i]{n},
                $decisions[$i]{id}, $d, $x, $MIN * $WINDOW, $RATIO, $r);
        }
    }

    $max_use = $best if !defined $max_use || $best > $max_use;
    # $use > 1 exactly when $x * 1000 > $allow, integers both
    push @over_budget, $best_detail if $best > 1;
}

is(scalar @over_budget, 0,
   'every retry within the budget formula (' . scalar(@decisions)
   . ' retries seen)')
    or diag(join "\n", @over_budget[0 .. ($#over_budget < 9
                                          ? $#over_budget : 9)]);


###############################################################################
# cooldowns

my $errlog = $t->read_file('logs/error.log');
my (%cooled, $max_cooldown);

while ($errlog =~ /llm target "([^"]+)" cooling down for (\d+) ms/g) {
    $cooled{$1}++;
    $max_cooldown = $2 if !defined $max_cooldown || $2 > $max_cooldown;
}

my $ht = $final && $final->{targets}{$HEALTHY};

ok($ht && !$ht->{cooling} && !$ht->{cooldowns} && !$cooled{$HEALTHY},
   'the target that never failed never cooled down')
    or diag(sprintf '%s: cooling %s, cooldowns %s, %d "cooling down" lines',
            $HEALTHY, $ht ? ($ht->{cooling} ? 'true' : 'false') : '?',
            $ht ? $ht->{cooldowns} : '?', $cooled{$HEALTHY} // 0);

my @long = grep { $_->{cooldown_remaining_ms} > $COOLDOWN_CAP_MS }
           map { { key => $_, %{$final->{targets}{$_}} } }
           keys %{$final ? $final->{targets} : {}};

ok(!@long && ($max_cooldown // 0) <= $COOLDOWN_CAP_MS,
   'no cooldown longer than the 5m cap (issue 11 item 2: huge Retry-After)')
    or diag(sprintf 'longest cooldown logged: %d ms; cooling now: %s',
            $max_cooldown // 0, join ', ', map {
                "$_->{key} $_->{cooldown_remaining_ms} ms" } @long);


###############################################################################
# Redis holds every count after the restart
#
# Redis restarted empty, and a batch in flight when it died is lost (at
# most once, docs/directives.md llm_redis): counts of the seconds before
# the restart are not all there, by design.  After the link came back
# the load paused until no request was counted (the status page's
# requests steady for 0.2 s), and resumed in the next second S0.  From
# then on every count is sent (a reload loses none: the counts wait in
# the zone for the new worker 0), so the request keys of the seconds >=
# S0, read before they expire (window + 2 s), sum to the requests the
# node counted since: the status page's requests at the end minus at the
# pause.  Only a batch lost to a failed link (sync_errors) may take some
# away, and then the sum may only be lower.

my $rend = $final ? $final->{routes}{chat}{requests} : undef;
my $redis_sum = 0;
$redis_sum += $_ for values %redis_seen;
my $lost = ($final && $R1_status)
    ? $final->{redis}{sync_errors} - $R1_status->{redis}{sync_errors} : 0;

if (!$S0) {
    fail('Redis sums == requests counted: no quiet point after Redis came '
         . 'back (' . ($ev{up} ? 'link up' : 'link never up') . ')');
} elsif ($lost) {
    cmp_ok($redis_sum, '<=', $rend - $R1,
           "Redis sums <= requests counted ($lost batches lost)");
} else {
    is($redis_sum, $rend - $R1,
       "Redis sums == requests counted since second $S0")
        or diag(sprintf 'Redis: %d over %d seconds; status page: %d - %d; '
                . 'link_downs %d, sync_errors %d', $redis_sum,
                scalar keys %redis_seen, $rend, $R1,
                $final->{redis}{link_downs}, $final->{redis}{sync_errors});
}


###############################################################################
# worker RSS and descriptors back near the baseline

my ($after, $settle) = (undef, time);
if ($base) {
    # idle keepalive connections to the providers close after 1s
    for (1 .. 40) {
        $after = eval { proc_figures($t->worker_pids) };
        last unless $after;
        my $fd_b = (sort { $b <=> $a } map { $_->{fds} } values %$base)[0];
        my $fd_a = (sort { $b <=> $a } map { $_->{fds} } values %$after)[0];
        last if $fd_a <= $fd_b + 2;
        sleep 0.1;
    }
}

# ASan holds freed memory in its quarantine a while (measured: +6 MB a
# worker in 20 s), so a leak shows there only when larger
my $RSS_SLACK_KB = $ENV{TEST_LLM_ASAN} ? 64 * 1024 : 20 * 1024;

sub worst { my ($f, $k) = @_; (sort { $b <=> $a } map { $_->{$k} } values %$f)[0] }

ok($after && worst($after, 'rss_kb') <= worst($base, 'rss_kb') + $RSS_SLACK_KB
   && worst($after, 'fds') <= worst($base, 'fds') + 10,
   'worker RSS and descriptors back near the baseline')
    or diag($after
            ? sprintf('RSS %d -> %d kB (slack %d), fds %d -> %d (slack 10)',
                      worst($base, 'rss_kb'), worst($after, 'rss_kb'),
                      $RSS_SLACK_KB, worst($base, 'fds'), worst($after, 'fds'))
            : "/proc unreadable: $@");

ok(@reloads == 2 && !grep({ !$_->{ok} } @reloads), 'two reloads done')
    or diag(explain(\@reloads));


###############################################################################
# figures

my $route = $final ? $final->{routes}{chat} : {};
my $retries_log = 0;
$retries_log += ($_->{attempts} > 1 ? $_->{attempts} - 1 : 0)
    for grep { $_->{attempts} =~ /^\d+$/ } values %entry;

my %by_proto;
$by_proto{$_->{proto} . ($_->{stream} ? '-sse' : '')}++ for @results;

my %faults;
for my $rec (@{$t->mock_requests('flaky')}) {
    my ($id) = ($rec->{query} // '') =~ /id=([^&]*)/;
    my ($model) = ($rec->{body} // '') =~ /"model":"([^"]*)"/;
    my $stream = ($rec->{body} // '') =~ /"stream":true/ ? 1 : 0;
    $faults{fault($id, $rec->{headers}{'x-attempt'}, $model, $stream)}++;
}

my $fmt = sub { my ($h) = @_; join ', ', map { "$_=$h->{$_}" } sort keys %$h };

note(sprintf 'soak: %.1f s of load (seed %s), %d clients (%s)', $load_secs,
     $Test::LLM::Soak::SEED, scalar @results, $fmt->(\%by_proto));
note('outcomes of clients that stayed: ' . $fmt->(\%outcome));
note('problems by kind: ' . $fmt->(\%problem_kinds)) if %problem_kinds;
note('aborts: ' . $fmt->(\%aborts) . '; logged as: ' . $fmt->(\%abort_status));
note('attempts per request (log): ' . $fmt->(\%attempts_hist));
note(sprintf 'route: requests %d, attempts %d, retries %d (log: %d), '
     . 'client_closed %s', $route->{requests} // -1, $route->{attempts} // -1,
     $route->{retries} // -1, $retries_log, $route->{client_closed} // '-');
note(sprintf 'budget: %d refusals (budget_exhausted); %d retries checked '
     . 'against the formula, the highest at %.2f of its allowance',
     $route->{decisions}{budget_exhausted} // -1, scalar @decisions,
     $max_use // 0);
note('decisions: ' . $fmt->($route->{decisions} || {}));
note('faults injected by the flaky mock: ' . $fmt->(\%faults));
note('cooldowns logged: ' . $fmt->(\%cooled)
     . sprintf('; longest %d ms', $max_cooldown // 0));
note(sprintf 'Redis: killed at %.1f s, restarted at %.1f s, link up at '
     . '%.1f s, S0 %s; sum %d over %d seconds vs %s counted; syncs %s, '
     . 'sync_errors %s, link_downs %s',
     ($ev{kill} // $t0) - $t0, ($ev{restart} // $t0) - $t0,
     ($ev{up} // $t0) - $t0, $S0 ? $S0 - int($t0) . ' s' : 'none',
     $redis_sum, scalar keys %redis_seen,
     defined $rend && defined $R1 ? $rend - $R1 : '?',
     map { $final ? $final->{redis}{$_} : '?' }
         qw(syncs sync_errors link_downs));
note('reloads: ' . join ', ', map { sprintf '%s at +%.1f s %s in %.1f s',
                                    $_->{name}, $ev{$_->{name}} - $t0,
                                    $_->{ok} ? 'ok' : 'FAILED', $_->{secs} }
                              @reloads);
note(sprintf 'Redis link in error.log: %d "is unavailable", %d "is back"',
     scalar(() = $errlog =~ /llm redis \S+ is unavailable/g),
     scalar(() = $errlog =~ /llm redis \S+ is back/g));
note(sprintf 'workers: RSS %s kB -> %s kB, fds %s -> %s',
     join('/', map { $_->{rss_kb} } values %{$base || {}}),
     join('/', map { $_->{rss_kb} } values %{$after || {}}),
     join('/', map { $_->{fds} } values %{$base || {}}),
     join('/', map { $_->{fds} } values %{$after || {}}));

done_testing;
