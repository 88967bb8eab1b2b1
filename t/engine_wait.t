#!/usr/bin/perl

# Attempt engine (docs/design.md section 2): waits between attempts.  Covers: Retry-After
# in seconds, as an HTTP-date and retry-after-ms (which wins over
# Retry-After) honoured before the retry on the same target (the gap
# between the two requests the mock got is at least the wait, and not
# much more); a Retry-After longer than llm_backoff max moves to the next
# target at once, or ends the request at once when there is none; moving
# to a fallback never waits (even with a long llm_backoff); the jittered
# backoff stays under max and grows with the retries; a wait
# never blocks the worker; llm_deadline stops further attempts (at an
# attempt boundary, and before a wait that would pass it, which moves to
# a fallback at once when there is one); a client that disconnects
# during a wait ends the work: no further attempt, 499 in the access log,
# no alert.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%ENGINE%%

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /ra/v1/chat/completions {
            llm_route ra;
            llm_target /_llm/t tries=2;
            llm_fallback /_llm/fb1;
            llm_backoff base=10ms max=3s;
        }

        location = /ramax/v1/chat/completions {
            llm_route ramax;
            llm_target /_llm/t tries=3;
            llm_fallback /_llm/fb1;
            llm_backoff base=10ms max=1s;
        }

        location = /ramax1/v1/chat/completions {
            llm_route ramax1;
            llm_target /_llm/t tries=3;
            llm_backoff base=10ms max=1s;
        }

        location = /fbnowait/v1/chat/completions {
            llm_route fbnowait;
            llm_target /_llm/t;
            llm_fallback /_llm/fb1;
            llm_backoff base=1s max=1s;
        }

        location = /backoff/v1/chat/completions {
            llm_route backoff;
            llm_target /_llm/t tries=5;
            llm_backoff base=100ms max=120ms;
            llm_attempts 5;
        }

        location = /grow/v1/chat/completions {
            llm_route grow;
            llm_target /_llm/t tries=6;
            llm_backoff base=20ms max=1s;
            llm_attempts 6;
        }

        location = /deadline/v1/chat/completions {
            llm_route deadline;
            llm_target /_llm/t tries=5;
            llm_backoff base=10ms max=3s;
            llm_deadline 1s;
            llm_attempts 10;
        }

        location = /deadlinefb/v1/chat/completions {
            llm_route deadlinefb;
            llm_target /_llm/t tries=5;
            llm_fallback /_llm/fb1;
            llm_backoff base=10ms max=3s;
            llm_deadline 1s;
            llm_attempts 10;
        }

        location = /disc/v1/chat/completions {
            llm_route disc;
            llm_target /_llm/t tries=2;
            llm_backoff base=10ms max=5s;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            %%ATTEMPT_LOG%%
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

my $port = engine_run($t, $conf);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"wait for me"}]}';

# Times are nginx's own (the access log, the attempt log), not the
# client's or the mock's: under load those are late by however long
# they waited for a CPU.

sub post {
    my ($uri, %h) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { %h }));
}

# seconds the request with ?id=$id spent outside its attempts (waiting),
# by its access log entry
sub waited {
    my ($id) = @_;
    my $e = log_entry($t, $id);
    my $in = 0;
    $in += $_ for grep { /^[\d.]+$/ } split /, /, $e->{times} // '';
    return defined $e->{request_time} ? $e->{request_time} - $in : 99;
}

sub seen {
    my ($id) = @_;
    return join ', ', map { (split m{/}, $_->{path})[1] }
                      @{mock_for($t, 'prov', $id)};
}

# seconds from the end of each attempt to the start of the next, as
# nginx logged them
sub gaps {
    my ($id) = @_;
    my @a = attempts($t, $id, scalar @{mock_for($t, 'prov', $id)});
    return map { $a[$_]{start} - $a[$_ - 1]{end} } 1 .. $#a;
}

sub fmt { join ', ', map { sprintf '%.3f', $_ } @_ }

###############################################################################
# Retry-After, seconds

for my $round (1, 2) {
    my $id = "ra-$round";
    my $r = post("/ra/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl+ra=1;2:ok');
    is($r->{status}, 200, "Retry-After 1: retried, 200 ($round)");
    is(seen($id), 't, t', "Retry-After 1: on the same target ($round)");

    my ($gap) = gaps($id);
    ok(defined $gap && $gap >= 0.98 && $gap < 1.5,
       "Retry-After 1: waited 1s (" . fmt($gap // -1) . ") ($round)");
    my $e = log_entry($t, $id);
    ok(($e->{request_time} // 0) >= 0.98,
       "Retry-After 1: client waited ($round)");

    is($e->{decision}, 'retry', "Retry-After 1: decision ($round)");
    my @times = split /, /, $e->{times} // '';
    ok(@times == 2 && $times[0] < 0.5,
       "Retry-After 1: the wait is not in \$llm_attempt_times ($round)");
}

# Retry-After, HTTP-date: the retry comes no earlier than the date, and
# at most a second later (nginx's clock has a one second resolution)

for my $round (1, 2) {
    my $id = "radate-$round";
    my $r = post("/ra/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl+radate=2;2:ok');
    is($r->{status}, 200, "Retry-After date: retried, 200 ($round)");
    is(seen($id), 't, t', "Retry-After date: on the same target ($round)");

    # the date the mock wrote, and when nginx began the retry
    my @m = @{mock_for($t, 'prov', $id)};
    my $date = int($m[0]{time}) + 2;
    my (undef, $retry) = attempts($t, $id, 2);
    my $at = $retry ? $retry->{start} - $date : -99;

    ok($at >= -0.02 && $at < 1.05,
       "Retry-After date: waited until the date (" . fmt($at)
       . " s from it) ($round)");
}

# retry-after-ms, alone and with Retry-After (the finer one wins)

for my $round (1, 2) {
    my $id = "ram-$round";
    my $r = post("/ra/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl+ram=700;2:ok');
    is($r->{status}, 200, "retry-after-ms 700: retried, 200 ($round)");
    is(seen($id), 't, t', "retry-after-ms 700: same target ($round)");

    my ($gap) = gaps($id);
    ok(defined $gap && $gap >= 0.69 && $gap < 1.1,
       "retry-after-ms 700: waited (" . fmt($gap // -1) . ") ($round)");
}

{
    my $id = 'ram-both';
    my $r = post("/ra/v1/chat/completions?id=$id",
                 'X-Case' => '1:503+ra=2+ram=300;2:ok');
    is($r->{status}, 200, 'retry-after-ms with Retry-After: 200');

    my ($gap) = gaps($id);
    ok(defined $gap && $gap >= 0.29 && $gap < 0.8,
       'retry-after-ms with Retry-After: retry-after-ms wins ('
       . fmt($gap // -1) . ')');
}

###############################################################################
# Retry-After longer than llm_backoff max

for my $round (1, 2) {
    my $id = "ramax-$round";
    my $r = post("/ramax/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl+ra=5;2:ok');
    is($r->{status}, 200, "Retry-After > max: 200 ($round)");
    is(seen($id), 't, fb1',
       "Retry-After > max: next target, not the same ($round)");

    my ($gap) = gaps($id);
    ok(defined $gap && $gap < 0.3,
       "Retry-After > max: at once (" . fmt($gap // -1) . ") ($round)");
    is(log_entry($t, $id)->{decision}, 'fallback',
       "Retry-After > max: decision ($round)");
}

{
    my $id = 'ramax-ms';
    my $r = post("/ramax/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl+ram=1500;2:ok');
    is(seen($id), 't, fb1', 'retry-after-ms > max: next target');
    my ($gap) = gaps($id);
    ok(defined $gap && $gap < 0.3,
       'retry-after-ms > max: at once (' . fmt($gap // -1) . ')');
}

{
    my $id = 'ramax1';
    my $r = post("/ramax1/v1/chat/completions?id=$id",
                 'X-Case' => '*:rl+ra=5');
    is($r->{status}, 429, 'Retry-After > max, no next target: the 429');
    is($r->{headers}{'retry-after'}, '5',
       'Retry-After > max, no next target: Retry-After passed');
    is($r->{headers}{'x-should-retry'}, 'false',
       'Retry-After > max, no next target: x-should-retry');
    my $w = waited($id);
    ok($w < 0.5,
       'Retry-After > max, no next target: at once (' . fmt($w) . ')');
    is(seen($id), 't', 'Retry-After > max, no next target: one request');
    is(log_entry($t, $id)->{decision}, 'attempts_exhausted',
       'Retry-After > max, no next target: decision');
}

###############################################################################
# moving to a fallback never waits

for my $round (1, 2) {
    my $id = "fbnowait-$round";
    my $r = post("/fbnowait/v1/chat/completions?id=$id",
                 'X-Case' => '1:500;2:ok');
    is($r->{status}, 200, "fallback: 200 ($round)");
    is(seen($id), 't, fb1', "fallback: moved on ($round)");
    my ($gap) = gaps($id);
    ok(defined $gap && $gap < 0.3,
       "fallback: no backoff before it (" . fmt($gap // -1) . ") ($round)");
}

###############################################################################
# backoff: full jitter, bounded by max, growing with the retries

{
    my @all;
    for my $i (1 .. 3) {
        my $id = "backoff-$i";
        my $r = post("/backoff/v1/chat/completions?id=$id",
                     'X-Case' => '*:500');
        is($r->{status}, 500, "backoff: the last 500 ($i)");
        is(seen($id), 't, t, t, t, t', "backoff: five attempts ($i)");
        my @g = gaps($id);
        push @all, @g;
        ok(!grep({ $_ > 0.12 + 0.1 } @g),
           "backoff: every wait within max 120ms (" . fmt(@g) . ") ($i)");
    }

    my $sum = 0;
    $sum += $_ for @all;
    ok($sum > 0.1, 'backoff: waits happen (' . fmt($sum) . ' in all)');
}

{
    my (@late, $bounded);
    my @cap = (0.02, 0.04, 0.08, 0.16, 0.32);
    $bounded = 1;

    for my $i (1 .. 3) {
        my $id = "grow-$i";
        my $r = post("/grow/v1/chat/completions?id=$id", 'X-Case' => '*:500');
        is(seen($id), 't, t, t, t, t, t', "backoff growth: six attempts ($i)");
        my @g = gaps($id);
        for my $n (0 .. $#g) {
            $bounded = 0 if $g[$n] > $cap[$n] + 0.05;
        }
        diag('gaps ' . fmt(@g)) unless $bounded;
        push @late, @g[3, 4];
    }

    ok($bounded, 'backoff growth: n-th wait within base * 2^(n-1)');
    my ($max) = sort { $b <=> $a } grep { defined } @late;
    ok(defined $max && $max > 0.06,
       'backoff growth: later waits longer than base (' . fmt($max // -1)
       . ')');
}

###############################################################################
# a wait is a timer: the worker serves others meanwhile

{
    my $sock = http_start(http_request('POST',
        '/ra/v1/chat/completions?id=busy-wait', body => $REQ,
        headers => [ 'Content-Type' => 'application/json',
                     'X-Case' => '1:rl+ra=1;2:ok' ]), port => $port);

    # the first attempt is done and the wait has begun
    my $deadline = time + 3;
    sleep 0.02 while !@{mock_for($t, 'prov', 'busy-wait')} && time < $deadline;
    sleep 0.1;

    my $r = post('/ra/v1/chat/completions?id=busy-other');
    is($r->{status}, 200, 'during a wait: another request served');

    my $w = parse_response(read_response($sock, 5));
    is($w->{status}, 200, 'during a wait: the waiting request ends well');
    close $sock;

    # one worker: a blocked one would have read the other request only
    # after the wait, when the retry began
    my $other = log_entry($t, 'busy-other');
    my (undef, $retry) = attempts($t, 'busy-wait', 2);
    my $ahead = $retry && defined $other->{msec}
        ? $retry->{start} - $other->{msec} : -99;
    ok($ahead > 0,
       'during a wait: at once (done ' . fmt($ahead) . ' s before the retry)');
}

###############################################################################
# llm_deadline

for my $round (1, 2) {
    my $id = "deadline-wait-$round";
    my $r = post("/deadline/v1/chat/completions?id=$id",
                 'X-Case' => '*:rl+ra=1');
    is($r->{status}, 429, "deadline before a wait: the 429 ($round)");
    is($r->{headers}{'x-should-retry'}, 'false',
       "deadline before a wait: x-should-retry ($round)");
    my $w = waited($id);
    ok($w < 0.5, "deadline before a wait: no wait (" . fmt($w) . ") ($round)");
    is(seen($id), 't', "deadline before a wait: one request ($round)");
    is(log_entry($t, $id)->{decision}, 'deadline',
       "deadline before a wait: decision ($round)");
}

{
    my $id = 'deadline-boundary';
    my $r = post("/deadline/v1/chat/completions?id=$id",
                 'X-Case' => '*:500+delay=0.6');
    is($r->{status}, 500, 'deadline at an attempt boundary: the 500');
    is($r->{headers}{'x-should-retry'}, 'false',
       'deadline at an attempt boundary: x-should-retry');
    is(seen($id), 't, t', 'deadline at an attempt boundary: two requests');
    my $e = log_entry($t, $id);
    my $took = $e->{request_time} // -1;
    ok($took >= 1.1 && $took < 1.8,
       'deadline at an attempt boundary: took two attempts ('
       . fmt($took) . ')');

    is($e->{decision}, 'deadline', 'deadline at an attempt boundary: decision');
    is($e->{attempts}, 2, 'deadline at an attempt boundary: $llm_attempts');
}

{
    my $id = 'deadline-fb-late';
    my $r = post("/deadlinefb/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl+ra=1;2:ok');
    is($r->{status}, 200, 'wait past the deadline, a fallback: 200');
    is(seen($id), 't, fb1', 'wait past the deadline, a fallback: moved on');
    my ($gap) = gaps($id);
    ok(defined $gap && $gap < 0.3,
       'wait past the deadline, a fallback: at once (' . fmt($gap // -1)
       . ')');
}

{
    my $id = 'deadline-fb-passed';
    my $r = post("/deadlinefb/v1/chat/completions?id=$id",
                 'X-Case' => '1:500+delay=1.1;2:ok');
    is($r->{status}, 500, 'deadline passed, a fallback: the 500');
    is(seen($id), 't', 'deadline passed, a fallback: not tried');
    is(log_entry($t, $id)->{decision}, 'deadline',
       'deadline passed, a fallback: decision');

    is($r->{headers}{'x-should-retry'}, 'false',
       'deadline passed, a fallback: x-should-retry');
}

###############################################################################
# a client gone during a wait

{
    my $id = 'disc';
    my $sock = http_start(http_request('POST',
        "/disc/v1/chat/completions?id=$id", body => $REQ,
        headers => [ 'Content-Type' => 'application/json',
                     'X-Case' => '1:rl+ra=2;2:ok' ]), port => $port);

    my $deadline = time + 3;
    sleep 0.02 while !@{mock_for($t, 'prov', $id)} && time < $deadline;
    is(scalar @{mock_for($t, 'prov', $id)}, 1, 'disconnect: first attempt');

    sleep 0.2;
    my $closed = time;
    close $sock;

    # the wait was 2 s from the end of the first attempt: the request
    # ended well before
    my $e = log_entry($t, $id, 3);
    my ($first) = attempts($t, $id);
    my $logged = $first && defined $e->{msec}
        ? $e->{msec} - $first->{end} : 99;
    is($e->{status}, 499, 'disconnect: 499 in the access log');
    ok($logged < 1.5, 'disconnect: the request ended at once ('
       . fmt($logged) . ' s into the wait)');
    is($e->{attempts}, 1, 'disconnect: $llm_attempts');

    # past the end of the wait
    sleep 2.3 - (time - $closed);
    is(scalar @{mock_for($t, 'prov', $id)}, 1,
       'disconnect: no further attempt');

    my $r = post('/disc/v1/chat/completions?id=disc-after');
    is($r->{status}, 200, 'disconnect: the worker serves on');
}

done_testing;
