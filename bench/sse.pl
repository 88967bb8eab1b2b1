#!/usr/bin/perl
# SSE streams: plain proxy_pass (A) against an llm_route (B) to the same
# mock SSE provider, in one nginx with one worker.  See bench/README.md,
# "Streams".
#
#   bench/sse.pl                 (or: make bench-sse)
#
# Measures, A and B side by side in one run:
#   1. per-event latency of well-formed streams (each event in one write):
#      arrival at the client - the mock's stamp taken before the write;
#   2. the same with every event split by the network (two writes SPLIT_MS
#      apart), from the stamp of the event's last piece;
#   3. the time from the request to the first event;
#   4. worker memory per open stream (N streams held open, anonymous RSS).
#
# Environment:
#   STREAMS=20        streams per candidate for each of 1 and 2
#   EVENTS=50         events per stream
#   GAP_MS=20         between two events of a stream
#   SPLIT_MS=2        between the two pieces of a split event
#   CONCURRENT=4      streams open at a time, A and B alternating, started
#                     GAP_MS/CONCURRENT apart so no two events meet
#   MEM_STREAMS=200   streams held open for the memory measure
#   MEM_BASE=40       streams open before the first RSS reading
#   MEM_ROUNDS=2      memory rounds (each: A B B A, whole and mid-event)
#   SKIP_MEMORY=1     no memory measure
#   HEADERS=real      the mock answers with a provider's header set (19 more
#                     headers, as OpenAI's) and the client sends
#                     Accept-Encoding, as SDKs do
#   A_BUFFERING=on    a control: A with proxy_buffering on, which holds a
#                     split event until more bytes come (milliseconds)
#   QUICK=1           smoke run: 4 streams of 20 events, 1 memory round of 50
#   KEEP=1            keep the temp dir (config, error log)
#   NGINX=/usr/sbin/nginx  MODULE=build/ngx_http_llm_module.so
#
# Exits 0 whatever the numbers are (a measuring tool, not a test); 2 if the
# setup failed (nginx did not start, a stream did not arrive whole, ...).

use strict;
use warnings;

use Cwd qw(abs_path);
use Errno qw(EINTR EAGAIN);
use File::Basename qw(dirname);
use File::Path qw(rmtree);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC sleep);

$| = 1;

my $ROOT = abs_path(dirname(abs_path($0)) . '/..');

my $QUICK = ($ENV{QUICK} // 0) eq '1';

my %O = (
    STREAMS     => $QUICK ? 4 : 20,
    EVENTS      => $QUICK ? 20 : 50,
    GAP_MS      => 20,
    SPLIT_MS    => 2,
    CONCURRENT  => 4,
    MEM_STREAMS => $QUICK ? 50 : 200,
    MEM_BASE    => $QUICK ? 10 : 40,
    MEM_ROUNDS  => $QUICK ? 1 : 2,
);

for my $k (keys %O) {
    $O{$k} = $ENV{$k} if defined $ENV{$k};
    die "sse: $k=$O{$k}: not a positive number\n"
        unless $O{$k} =~ /^[0-9]+$/ && $O{$k} > 0;
}

die "sse: SPLIT_MS must be below GAP_MS / CONCURRENT\n"
    unless $O{SPLIT_MS} * $O{CONCURRENT} < $O{GAP_MS};

my $NGINX = $ENV{NGINX} || '/usr/sbin/nginx';
# nginx itself reads NGINX (sockets inherited in a binary upgrade)
delete $ENV{NGINX};
my $MODULE = $ENV{MODULE} || "$ROOT/build/ngx_http_llm_module.so";

my $PROXY_CPU = 0;
my $NOISE_LIMIT = $ENV{NOISE_LIMIT} // 5;
my $LOAD_CPU = 1;

sub now { clock_gettime(CLOCK_MONOTONIC) }

my $MAIN = $$;
my $TMP;

sub setup_failed {
    print STDERR "sse: setup failed: @_\n";
    if ($TMP && -s "$TMP/logs/error.log") {
        print STDERR "sse: the proxy's error log, first 10 lines:\n";
        system("head -10 $TMP/logs/error.log >&2");
    }
    exit 2;
}

-x $NGINX or setup_failed("$NGINX not found");
-f $MODULE or setup_failed("$MODULE not found: run make first");
$MODULE = abs_path($MODULE);

for my $tool (qw(taskset)) {
    grep { -x "$_/$tool" } split /:/, $ENV{PATH}
        or setup_failed("$tool not found (apt-get install util-linux)");
}

my $ncpu = 0;
if (open my $fh, '<', '/proc/cpuinfo') {
    $ncpu = grep { /^processor\s*:/ } <$fh>;
}
$ncpu >= 2 or setup_failed("needs at least 2 CPUs (proxy on one, load"
                           . " on another)");


###############################################################################
# temp dir, processes, cleanup

$TMP = tempdir('llm-sse-bench.XXXXXX', DIR => $ENV{TMPDIR} || '/tmp');
chmod 0755, $TMP;
mkdir "$TMP/$_" for qw(logs tmp);

my ($MOCK_PID, $NGINX_PID);

sub stop_pid {
    my ($pid) = @_;
    return unless $pid && kill 0, $pid;
    for my $sig (qw(QUIT TERM KILL)) {
        kill $sig, $pid;
        for (1 .. 50) {
            return if waitpid($pid, WNOHANG) == $pid || !kill 0, $pid;
            sleep 0.1;
        }
    }
}

sub cleanup {
    return unless $$ == $MAIN;
    stop_pid($NGINX_PID);
    stop_pid($MOCK_PID);
    return unless $TMP;
    if (($ENV{KEEP} // 0) eq '1') {
        print "sse: kept $TMP\n";
    } else {
        rmtree($TMP);
    }
}

END { my $rc = $?; cleanup(); $? = $rc; }
$SIG{INT} = $SIG{TERM} = sub { exit 130 };
$SIG{PIPE} = 'IGNORE';

sub pin {
    my ($cpu) = @_;
    system("taskset -cp $cpu $$ >/dev/null") == 0
        or setup_failed("taskset -cp $cpu $$ failed");
}

sub listener {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1:0', Listen => 1024,
                                  ReuseAddr => 1)
        or setup_failed("listen: $!");
    return $s;
}

sub free_port {
    my $s = listener();
    return $s->sockport;
}


###############################################################################
# the mock SSE provider: one process, one event loop, every write stamped

# An event is an OpenAI chat.completion.chunk with three fields of the
# bench: its number, and the CLOCK_MONOTONIC times just before the write of
# its first and of its last piece (fixed width, so the chunk size is known
# before the last piece is written).  In one write both are the same.

sub stamp { sprintf('%017.6f', $_[0]) }

sub event_pieces {
    my ($i, $t0) = @_;
    my $head = '{"id":"chatcmpl-bench","object":"chat.completion.chunk",'
        . '"created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
        . '"choices":[{"index":0,"delta":{"content":" lorem ipsum"},'
        . '"finish_reason":null}],'
        . qq("seq":$i,"t0":") . stamp($t0) . '","t1":"';
    my $len = length("data: $head") + 17 + length(qq("}\n\n));
    return (sprintf("%x\r\n", $len) . "data: $head", sub {
        return stamp($_[0]) . qq("}\n\n\r\n);
    });
}

my $REAL = ($ENV{HEADERS} // '') eq 'real';

# HEADERS=real: what a provider sends besides (OpenAI's set, made up values)
my $REAL_HEAD = join '', map { "$_\r\n" } (
    'Date: Wed, 25 Nov 2026 21:00:00 GMT',
    'access-control-expose-headers: X-Request-ID',
    'openai-organization: org-abcdefghijklmnopqrstuvwx',
    'openai-processing-ms: 182',
    'openai-version: 2020-10-01',
    'x-ratelimit-limit-requests: 10000',
    'x-ratelimit-limit-tokens: 30000000',
    'x-ratelimit-remaining-requests: 9999',
    'x-ratelimit-remaining-tokens: 29999975',
    'x-ratelimit-reset-requests: 6ms',
    'x-ratelimit-reset-tokens: 0s',
    'x-request-id: req_0123456789abcdef0123456789abcdef',
    'strict-transport-security: max-age=31536000; includeSubDomains; preload',
    'cf-cache-status: DYNAMIC',
    'set-cookie: __cf_bm=' . ('abcdefghijklmnopqrstuvwxyz0123456789' x 3)
        . '-1700000000-1.0.1.1; path=/; expires=Wed, 25-Nov-26 21:30:00 GMT;'
        . ' domain=.api.openai.com; HttpOnly; Secure; SameSite=None',
    'X-Content-Type-Options: nosniff',
    'Server: cloudflare',
    'CF-RAY: 8e0123456789abcd-FRA',
    'alt-svc: h3=":443"; ma=86400',
);

my $SSE_HEAD = "HTTP/1.1 200 OK\r\n"
    . "Content-Type: text/event-stream\r\n"
    . "Cache-Control: no-cache\r\n"
    . ($REAL ? $REAL_HEAD : '')
    . "Transfer-Encoding: chunked\r\n"
    . "Connection: close\r\n\r\n";

my $DONE = "data: [DONE]\n\n";
$DONE = sprintf("%x\r\n", length $DONE) . "$DONE\r\n0\r\n\r\n";

sub mock {
    my ($listen) = @_;

    pin($LOAD_CPU);
    $SIG{TERM} = sub { POSIX::_exit(0) };
    $SIG{INT} = 'IGNORE';

    my $ppid = getppid();
    my $sel = IO::Select->new($listen);
    my %c;      # fileno -> connection

    while (1) {
        POSIX::_exit(0) if getppid() != $ppid;

        my $next;
        for my $cn (values %c) {
            next unless @{$cn->{steps}};
            my $due = $cn->{steps}[0][0];
            $next = $due if !defined $next || $due < $next;
        }
        my $wait = 0.5;
        if (defined $next) {
            $wait = $next - now();
            $wait = 0 if $wait < 0;
        }

        for my $fh ($sel->can_read($wait)) {
            if ($fh == $listen) {
                my $s = $listen->accept or next;
                setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
                $c{fileno $s} = { fh => $s, rbuf => '', steps => [] };
                $sel->add($s);
                next;
            }
            my $cn = $c{fileno $fh};
            my $n = sysread($fh, my $buf, 65536);
            next if !defined $n && ($! == EINTR || $! == EAGAIN);
            if (!$n) {
                $sel->remove($fh);
                delete $c{fileno $fh};
                close $fh;
                next;
            }
            next if $cn->{started};
            $cn->{rbuf} .= $buf;
            mock_request($cn);
        }

        my $t = now();
        for my $cn (values %c) {
            while (@{$cn->{steps}} && $cn->{steps}[0][0] <= $t) {
                my $step = shift @{$cn->{steps}};
                $step->[1]->();
            }
            if ($cn->{finished} && !@{$cn->{steps}}) {
                $sel->remove($cn->{fh});
                delete $c{fileno $cn->{fh}};
                close $cn->{fh};
            }
        }
    }
}

sub mock_request {
    my ($cn) = @_;

    my $end = index($cn->{rbuf}, "\r\n\r\n");
    return if $end < 0;
    my $head = substr($cn->{rbuf}, 0, $end);
    my ($len) = $head =~ /^content-length:\s*(\d+)/mi;
    return if length($cn->{rbuf}) < $end + 4 + ($len // 0);

    $cn->{started} = 1;
    my $fh = $cn->{fh};
    my $x = $head =~ /^x-bench:\s*(.*?)\r?$/mi ? $1 : '';
    my %p = $x =~ /(\w+)=([\w.]+)/g;
    my $mode = $p{mode} // '';
    my $events = $p{events} // 0;
    my $gap = ($p{gap} // 0) / 1000;
    my $split = ($p{split} // 0) / 1000;

    unless ($mode =~ /^(whole|split|park|parkmid)$/ && $events > 0) {
        syswrite($fh, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                      . "Connection: close\r\n\r\n");
        $cn->{finished} = 1;
        return;
    }

    my $t = now();
    my $steps = $cn->{steps};
    my $head_out = $SSE_HEAD;

    # the first event goes with the response header, at once
    my $last = $mode eq 'parkmid' ? $events + 1 : $events;
    for my $i (1 .. $last) {
        my $due = $t + ($i - 1) * $gap;
        my $h = $i == 1 ? \$head_out : \(my $none = '');
        my $rest;
        if ($mode eq 'split' || $mode eq 'parkmid' && $i > $events) {
            push @$steps, [ $due, sub {
                my $t0 = now();
                (my $first, $rest) = event_pieces($i, $t0);
                syswrite($fh, $$h . $first);
                $$h = '';
            } ];
            next if $mode eq 'parkmid';
            push @$steps, [ $due + $split, sub {
                syswrite($fh, $rest->(now()));
            } ];
            next;
        }
        push @$steps, [ $due, sub {
            my $t0 = now();
            my ($first, $last_piece) = event_pieces($i, $t0);
            syswrite($fh, $$h . $first . $last_piece->($t0));
            $$h = '';
        } ];
    }

    # park: the stream stays open until the client closes it
    return if $mode =~ /^park/;

    push @$steps, [ $t + $events * $gap, sub {
        syswrite($fh, $DONE);
        $cn->{finished} = 1;
    } ];
}


###############################################################################
# nginx

my $MOCK_LISTEN = listener();
my $MOCK_PORT = $MOCK_LISTEN->sockport;
my $PROXY_PORT = free_port();
$PROXY_PORT = free_port() while $PROXY_PORT == $MOCK_PORT;

my $user = $> == 0 ? 'user root;' : '';
my $a_buffering = ($ENV{A_BUFFERING} // 'off') eq 'on' ? 'on' : 'off';

my $conf = <<EOF;
load_module $MODULE;
$user
worker_processes 1;
error_log $TMP/logs/error.log warn;
pid $TMP/nginx.pid;

events { worker_connections 4096; }

http {
    access_log off;
    client_body_temp_path $TMP/tmp/body;
    proxy_temp_path       $TMP/tmp/proxy;
    fastcgi_temp_path     $TMP/tmp/fastcgi;
    uwsgi_temp_path       $TMP/tmp/uwsgi;
    scgi_temp_path        $TMP/tmp/scgi;

    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;

        # A: plain proxy_pass, as one proxies SSE without the module
        location = /a/v1/chat/completions {
            proxy_pass http://127.0.0.1:$MOCK_PORT/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_buffering $a_buffering;
        }

        # B: the same provider through an llm route
        location = /b/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/mock;
        }

        location /_llm/mock {
            internal;
            # proxy_buffering stays on: the module turns it off for streams
            proxy_pass http://127.0.0.1:$MOCK_PORT/v1/chat/completions;
            proxy_http_version 1.1;
        }
    }
}
EOF

open my $cf, '>', "$TMP/nginx.conf" or setup_failed("$TMP/nginx.conf: $!");
print $cf $conf;
close $cf;

my @NGINX_ARGS = ($NGINX, '-p', $TMP, '-c', "$TMP/nginx.conf",
                  '-e', "$TMP/logs/error.log");

if (system("@NGINX_ARGS -t -q >$TMP/logs/t.log 2>&1") != 0) {
    system("cat $TMP/logs/t.log >&2");
    setup_failed('nginx -t failed');
}

$MOCK_PID = fork // setup_failed("fork: $!");
if ($MOCK_PID == 0) {
    mock($MOCK_LISTEN);
    POSIX::_exit(0);
}
close $MOCK_LISTEN;

$NGINX_PID = fork // setup_failed("fork: $!");
if ($NGINX_PID == 0) {
    open STDOUT, '>', "$TMP/logs/stdout.log";
    open STDERR, '>&', \*STDOUT;
    { exec('taskset', '-c', $PROXY_CPU, @NGINX_ARGS, '-g', 'daemon off;') };
    POSIX::_exit(127);
}

pin($LOAD_CPU);

sub children {
    my ($ppid) = @_;
    my @k;
    for my $d (glob '/proc/[0-9]*') {
        open my $fh, '<', "$d/stat" or next;
        my $s = <$fh> // next;
        push @k, $1 if $s =~ /^(\d+) \(.*\) \S+ (\d+) / && $2 == $ppid;
    }
    return @k;
}

sub wait_port {
    my ($port) = @_;
    for (1 .. 100) {
        setup_failed("nginx exited; see $TMP/logs/error.log")
            if waitpid($NGINX_PID, WNOHANG) == $NGINX_PID;
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port");
        return 1 if $s;
        sleep 0.1;
    }
    setup_failed("nothing listens on 127.0.0.1:$port");
}

wait_port($PROXY_PORT);

sub worker_pid {
    # the one worker, once a reload's old worker is gone (not OLD)
    my ($old) = @_;
    for (1 .. 100) {
        my @k = children($NGINX_PID);
        return $k[0] if @k == 1 && (!$old || $k[0] != $old);
        sleep 0.05;
    }
    setup_failed('expected one nginx worker, found: '
                 . join(' ', children($NGINX_PID)));
}

my $WORKER = worker_pid();

sub cpu_ticks {
    # utime + stime of PID
    open my $fh, '<', "/proc/$_[0]/stat" or return 0;
    my $s = <$fh>;
    $s =~ s/^.*\) //;
    my @f = split ' ', $s;
    return $f[11] + $f[12];
}

sub core_busy {
    # busy ticks of cpu N (all but idle and iowait)
    open my $fh, '<', '/proc/stat' or return 0;
    while (<$fh>) {
        next unless /^cpu$_[0] /;
        my @f = split;
        return $f[1] + $f[2] + $f[3] + $f[6] + $f[7] + $f[8];
    }
    return 0;
}

my $HZ = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;

sub loadavg {
    open my $fh, '<', '/proc/loadavg' or return '?';
    return join ' ', (split ' ', <$fh>)[0 .. 2];
}


###############################################################################
# the client

my $BODY = '{"model":"gpt-4o-mini","stream":true,"messages":'
    . '[{"role":"user","content":"Say lorem ipsum, a few times."}]}';

sub request {
    my ($cand, $bench) = @_;
    return "POST /$cand/v1/chat/completions HTTP/1.1\r\n"
        . "Host: 127.0.0.1\r\n"
        . "Content-Type: application/json\r\n"
        . "Authorization: Bearer sk-bench-not-a-real-key\r\n"
        . "Accept: text/event-stream\r\n"
        . ($REAL ? "Accept-Encoding: gzip, deflate\r\n" : '')
        . "X-Bench: $bench\r\n"
        . "Content-Length: " . length($BODY) . "\r\n"
        . "Connection: close\r\n\r\n" . $BODY;
}

sub open_stream {
    my ($cand, $bench) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$PROXY_PORT")
        or setup_failed("connect 127.0.0.1:$PROXY_PORT: $!");
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    return { fh => $s, cand => $cand, req => request($cand, $bench),
             raw => '', body => '', events => [], bad => '' };
}

sub send_request {
    my ($st) = @_;
    $st->{sent} = now();
    my $n = syswrite($st->{fh}, $st->{req});
    $st->{bad} = "request write: $!" unless $n && $n == length $st->{req};
}

# Reads what came on a stream at time $t: the response header, then the
# chunked body, then events; an event arrives when its blank line does.
sub read_stream {
    my ($st, $t) = @_;

    my $n = sysread($st->{fh}, my $buf, 65536);
    return 1 if !defined $n && ($! == EINTR || $! == EAGAIN);
    if (!$n) {
        $st->{eof} = 1;
        return 0;
    }
    $st->{raw} .= $buf;

    unless ($st->{head}) {
        my $end = index($st->{raw}, "\r\n\r\n");
        return 1 if $end < 0;
        my $h = substr($st->{raw}, 0, $end + 4, '');
        $st->{head} = $h;
        unless ($h =~ m{^HTTP/1\.1 200 }
                && $h =~ /^transfer-encoding: chunked/mi
                && $h =~ m{^content-type: text/event-stream}mi)
        {
            $st->{bad} = 'response header: ' . ($h =~ /^(.*?)\r/)[0];
            return 0;
        }
    }

    while (!$st->{last_chunk}) {
        if (!defined $st->{need}) {
            last unless $st->{raw} =~ s/^([0-9a-fA-F]+)\r\n//;
            $st->{need} = hex $1;
            $st->{last_chunk} = 1 if $st->{need} == 0;
            next;
        }
        last if length($st->{raw}) < $st->{need} + 2;
        $st->{body} .= substr($st->{raw}, 0, $st->{need});
        substr($st->{raw}, 0, $st->{need} + 2, '');
        delete $st->{need};
    }

    while ((my $e = index($st->{body}, "\n\n")) >= 0) {
        my $ev = substr($st->{body}, 0, $e + 2, '');
        if ($ev =~ /"seq":(\d+),"t0":"([\d.]+)","t1":"([\d.]+)"/) {
            my $want = @{$st->{events}} + 1;
            if ($1 != $want) {
                $st->{bad} ||= "event $1 where $want was due";
                return 0;
            }
            push @{$st->{events}}, [ $t - $3, $t - $2 ];
            $st->{first} //= $t - $st->{sent};
        } elsif ($ev eq "data: [DONE]\n\n") {
            $st->{done} = 1;
        } else {
            $st->{bad} ||= 'unexpected event: ' . substr($ev, 0, 80);
            return 0;
        }
    }

    return !$st->{last_chunk};
}

# Runs streams to their end: each starts at its own time (start), is read
# as it comes, and must end with all its events, [DONE] and the last chunk.
sub run_streams {
    my ($streams, $timeout) = @_;

    my $sel = IO::Select->new;
    my %by = map { fileno($_->{fh}) => $_ } @$streams;
    my @todo = sort { $a->{start} <=> $b->{start} } @$streams;
    my $deadline = now() + $timeout;

    while (@todo || $sel->count) {
        my $t = now();
        last if $t > $deadline;
        while (@todo && $todo[0]{start} <= $t) {
            my $st = shift @todo;
            send_request($st);
            $sel->add($st->{fh});
        }
        my $wait = @todo ? $todo[0]{start} - now() : $deadline - now();
        $wait = 0 if $wait < 0;
        for my $fh ($sel->can_read($wait)) {
            my $st = $by{fileno $fh};
            next if read_stream($st, now());
            $sel->remove($fh);
        }
    }

    for my $st (@$streams) {
        $st->{bad} ||= sprintf('timed out after %d events%s',
                               scalar @{$st->{events}},
                               $st->{head} ? '' : ', no response header')
            unless $st->{last_chunk} || $st->{eof};
        $st->{bad} ||= 'no last chunk' unless $st->{last_chunk};
        $st->{bad} ||= 'no [DONE]' unless $st->{done};
        $st->{bad} ||= scalar(@{$st->{events}}) . " events of $O{EVENTS}"
            unless @{$st->{events}} == $O{EVENTS};
        close $st->{fh};
    }
}


###############################################################################
# statistics

sub pct {
    # the P-th percentile (nearest rank) of a sorted list
    my ($p, $v) = @_;
    return 0 unless @$v;
    my $i = int($p / 100 * @$v + 0.999999) - 1;
    $i = 0 if $i < 0;
    return $v->[$i];
}

sub median {
    my @v = sort { $a <=> $b } @_;
    return 0 unless @v;
    return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2;
}

sub us { sprintf('%.0f', $_[0] * 1e6) }
sub sus { sprintf('%+.0f', $_[0] * 1e6) }


###############################################################################
# 1, 2, 3: latency

# Streams of one measure run CONCURRENT at a time, as A, B, A, B (then
# B, A, B, A in the next batch, so neither always goes first), started
# GAP_MS/CONCURRENT apart: the events (and the pieces of split events) of
# the streams open together never meet, and noise of the machine during a
# batch hits A and B alike.

my $GAP = $O{GAP_MS} / 1000;
my $SLOT = $GAP / $O{CONCURRENT};

sub latency_measure {
    my ($mode) = @_;

    my %r = (a => { lat => [], lat0 => [], first => [] },
             b => { lat => [], lat0 => [], first => [] });
    my @pairs;
    my $bench = "mode=$mode; events=$O{EVENTS}; gap=$O{GAP_MS}; "
        . "split=$O{SPLIT_MS}";
    my $batches = int((2 * $O{STREAMS} + $O{CONCURRENT} - 1) / $O{CONCURRENT});
    my %left = (a => $O{STREAMS}, b => $O{STREAMS});

    my ($w0, $c0, $t0) = (cpu_ticks($WORKER), core_busy($PROXY_CPU), now());

    for my $batch (0 .. $batches - 1) {
        my @streams;
        for my $slot (0 .. $O{CONCURRENT} - 1) {
            my $cand = ($slot + $batch) % 2 ? 'b' : 'a';
            next unless $left{$cand}-- > 0;
            push @streams, open_stream($cand, $bench);
        }
        my $start = now() + 0.005;
        $streams[$_]{start} = $start + $_ * $SLOT for 0 .. $#streams;

        run_streams(\@streams, $O{EVENTS} * $GAP + 10);

        my %bm;
        for my $st (@streams) {
            setup_failed("$mode stream through " . uc($st->{cand})
                         . ": $st->{bad}") if $st->{bad};
            my $x = $r{$st->{cand}};
            push @{$x->{lat}}, map { $_->[0] } @{$st->{events}};
            push @{$x->{lat0}}, map { $_->[1] } @{$st->{events}};
            push @{$x->{first}}, $st->{first};
            push @{$bm{$st->{cand}}}, map { $_->[0] } @{$st->{events}};
        }
        push @pairs, median(@{$bm{b}}) - median(@{$bm{a}})
            if $bm{a} && $bm{b};
    }

    my $wall = now() - $t0;
    my $w = (cpu_ticks($WORKER) - $w0) / $HZ;
    my $other = (core_busy($PROXY_CPU) - $c0) / $HZ - $w;
    $r{other} = $other > 0 ? 100 * $other / $wall : 0;
    $r{wall} = $wall;

    for my $c (qw(a b)) {
        for my $k (qw(lat lat0 first)) {
            $r{$c}{$k} = [ sort { $a <=> $b } @{$r{$c}{$k}} ];
        }
    }
    $r{pairs} = \@pairs;
    return \%r;
}

my $fmt = "%-13s %-4s %6s %6s %6s %6s %6s %7s %8s %9s %9s\n";

sub latency_rows {
    my ($name, $r) = @_;
    for my $c (qw(a b)) {
        my $x = $r->{$c};
        printf $fmt, $name, uc $c, scalar @{$x->{lat}},
            map({ us(pct($_, $x->{lat})) } 25, 50, 75, 90, 99),
            us($x->{lat}[-1]), us(pct(50, $x->{lat0})),
            us(pct(50, $x->{first}));
    }
    printf $fmt, $name, 'B-A', '',
        map({ sus(pct($_, $r->{b}{lat}) - pct($_, $r->{a}{lat})) }
            25, 50, 75, 90, 99), '',
        sus(pct(50, $r->{b}{lat0}) - pct(50, $r->{a}{lat0})),
        sus(pct(50, $r->{b}{first}) - pct(50, $r->{a}{first}));
}

# The bar: B's median no later than A's by more than A's own spread, the
# width of the middle half of A's latencies (p75 - p25): a difference of
# medians inside it is within what plain proxy_pass varies by itself from
# one event to the next.  Holding an event for more bytes or for a timer
# would add milliseconds (SPLIT_MS, GAP_MS), far beyond it; B's extra CPU
# per event is microseconds.  p75 - p25 rather than p90 or p99: the stalls
# of a shared machine (tens of ms, for A and B alike) leave it alone.
sub verdict {
    my ($name, $b, $a, $other) = @_;
    my $d = pct(50, $b) - pct(50, $a);
    my $tol = pct(75, $a) - pct(25, $a);
    my $noisy = $other > $NOISE_LIMIT
        ? sprintf(' (noisy: cpu %d %.0f%% busy elsewhere)', $PROXY_CPU,
                  $other)
        : '';
    printf "%-30s B-A p50 %5s us, tolerance %4s us (A's p75-p25):"
        . " %s%s\n", $name, sus($d), us($tol),
        $d <= $tol ? 'PASS' : 'FAIL', $noisy;
}


###############################################################################
# 4: memory per open stream

sub rss_kb {
    # anonymous resident memory of the worker (heap, pools, buffers; not
    # the shared code and config pages the worker got from the master)
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status"
        or die "sse.pl: cannot read /proc/$pid/status: $!\n";
    local $/;
    my $s = <$fh>;
    return $1 if $s =~ /^RssAnon:\s+(\d+) kB/m;
    die "sse.pl: no RssAnon in /proc/$pid/status: no memory figure\n";
}

sub reload {
    my $old = $WORKER;
    kill 'HUP', $NGINX_PID;
    $WORKER = worker_pid($old);
}

sub open_parked {
    # N streams of one candidate, each parked after 2 events (and half of
    # a third for parkmid); returns once every one has its 2 events and
    # the rest of the writes have had time to arrive
    my ($cand, $mode, $n, $list) = @_;

    my $bench = "mode=$mode; events=2; gap=$O{GAP_MS}; split=$O{SPLIT_MS}";
    my @new = map { open_stream($cand, $bench) } 1 .. $n;
    my $sel = IO::Select->new;
    for my $st (@new) {
        send_request($st);
        $sel->add($st->{fh});
    }
    my %by = map { fileno($_->{fh}) => $_ } @new;
    my $deadline = now() + 10;
    my $waiting = $n;
    while ($waiting && now() < $deadline) {
        for my $fh ($sel->can_read(0.1)) {
            my $st = $by{fileno $fh};
            my $more = read_stream($st, now());
            if (@{$st->{events}} >= 2 || !$more) {
                $sel->remove($fh);
                $waiting--;
            }
        }
    }
    for my $st (@new) {
        setup_failed("$mode stream through " . uc($cand) . ": "
                     . ($st->{bad} || 'did not get 2 events'))
            if $st->{bad} || @{$st->{events}} < 2;
    }
    push @$list, @new;
    # the half event of parkmid is written a gap after the second event
    sleep(2 * $GAP + 0.2);
}

sub memory_one {
    my ($cand, $mode) = @_;

    reload();
    my @open;
    open_parked($cand, $mode, $O{MEM_BASE}, \@open);
    my $r1 = rss_kb($WORKER);
    open_parked($cand, $mode, $O{MEM_STREAMS}, \@open);
    my $r2 = rss_kb($WORKER);
    close $_->{fh} for @open;
    return ($r2 - $r1) / $O{MEM_STREAMS};
}


###############################################################################
# run

my $t_start = now();

printf "sse: temp dir %s, mock 127.0.0.1:%d (cpu %d), proxy 127.0.0.1:%d"
    . " (cpu %d)\n", $TMP, $MOCK_PORT, $LOAD_CPU, $PROXY_PORT, $PROXY_CPU;
printf "sse: load average at start: %s\n", loadavg();
printf "sse: %d streams a side x %d events %d ms apart, %d streams at a"
    . " time (A, B alternating, %.1f ms apart); split: %d ms between the"
    . " pieces\n", $O{STREAMS}, $O{EVENTS}, $O{GAP_MS}, $O{CONCURRENT},
    $SLOT * 1000, $O{SPLIT_MS};

my %lat;
for my $mode (qw(whole split)) {
    $lat{$mode} = latency_measure($mode);
    printf "sse: %s: %.1f s, cpu %d busy with other work than the worker:"
        . " %.0f%%\n", $mode, $lat{$mode}{wall}, $PROXY_CPU,
        $lat{$mode}{other};
}

print "\n== latency, us: arrival at the client - the mock's stamp of the"
    . " event's last byte\n";
print "(from 1st piece: from the stamp of its first byte; req->1st: from"
    . " the request's\n write to the first event's arrival)\n";
printf $fmt, 'stream', 'cand', 'events', 'p25', 'p50', 'p75', 'p90', 'p99',
    'max', 'from 1st', 'req->1st';
printf $fmt, '', '', '', '', '', '', '', '', '', 'piece p50', 'p50';
latency_rows('whole events', $lat{whole});
latency_rows('split events', $lat{split});

for my $mode (qw(whole split)) {
    my @p = sort { $a <=> $b } @{$lat{$mode}{pairs}};
    printf "%s: per batch, B p50 - A p50: median %s us, range %s..%s us\n",
        $mode, sus(median(@p)), sus($p[0]), sus($p[-1]);
}

print "\n== verdicts: no added latency (bench/README.md, goals)\n";
verdict('whole events, every event:', $lat{whole}{b}{lat},
        $lat{whole}{a}{lat}, $lat{whole}{other});
verdict('split events, from last piece:', $lat{split}{b}{lat},
        $lat{split}{a}{lat}, $lat{split}{other});
verdict('first event, from the request:', $lat{whole}{b}{first},
        $lat{whole}{a}{first}, $lat{whole}{other});

if (($ENV{SKIP_MEMORY} // 0) ne '1') {
    my (%mem, @order);
    for my $round (1 .. $O{MEM_ROUNDS}) {
        # A B B A, then B A A B: neither always on a fresher machine
        my @c = $round % 2 ? qw(a b b a) : qw(b a a b);
        for my $mode (qw(park parkmid)) {
            for my $c (@c) {
                push @{$mem{$mode}{$c}}, memory_one($c, $mode);
            }
        }
    }

    print "\n== memory per open stream, KB: the worker's RssAnon with"
        . " $O{MEM_BASE} + $O{MEM_STREAMS}\n"
        . "   streams open, less with $O{MEM_BASE}, over $O{MEM_STREAMS}"
        . " (a fresh worker each time, by reload)\n";
    my $mfmt = "%-24s %-4s %8s   %s\n";
    printf $mfmt, 'streams parked', 'cand', 'median', 'each run';
    for my $mode (qw(park parkmid)) {
        my $name = $mode eq 'park' ? 'after whole events' : 'inside an event';
        for my $c (qw(a b)) {
            my @v = @{$mem{$mode}{$c}};
            printf $mfmt, $name, uc $c, sprintf('%.1f', median(@v)),
                join(' ', map { sprintf '%.1f', $_ } @v);
        }
        my $ra = median(@{$mem{$mode}{a}});
        my $rb = median(@{$mem{$mode}{b}});
        printf $mfmt, $name, 'B/A',
            $ra > 0 ? sprintf('%.2f', $rb / $ra) : '-', '';
    }
    my $ra = median(@{$mem{park}{a}});
    my $rb = median(@{$mem{park}{b}});
    printf "\n%-30s B/A %s, goal <= 1.15: %s\n",
        'memory per open stream:', $ra > 0 ? sprintf('%.2f', $rb / $ra) : '-',
        $ra > 0 && $rb / $ra <= 1.15 ? 'PASS' : 'FAIL';
}

printf "\nsse: load average at end: %s; %.0f s in all\n", loadavg(),
    now() - $t_start;

if (-s "$TMP/logs/error.log") {
    print "\n== proxy error log, first 10 lines\n";
    system("head -10 $TMP/logs/error.log");
}

exit 0;
