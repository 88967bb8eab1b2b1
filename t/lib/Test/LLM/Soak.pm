package Test::LLM::Soak;

# Pieces of the fault-matrix soak (t/soak.t): the faults the mock
# providers inject, drawn per attempt from a fixed seed; the clients
# (HTTP/1.1 on raw sockets in forked children, h2c through curl); the
# judgement of what a client got; access log parsing; worker figures
# from /proc.
#
# Every draw is a hash of the seed and what identifies the event (the
# client request's ?id=, the attempt number, the target's model), so the
# mock, forked per connection, and the test, reading the logs afterwards,
# agree on what was injected without talking to each other.
#
# Faults of a flaky target (model f1, f2, ...), per attempt:
#
#     ok          200 after 50-250 ms (a stream: 5 events, then [DONE])
#     rl_ra1      429 Retry-After: 1 (waited: within llm_backoff max)
#     rl_ram      429 retry-after-ms: 150
#     rl_ra3      429 Retry-After: 3 (longer than max: the target cools)
#     ovl529      529 Anthropic overloaded_error
#     un503       503 HTML from a load balancer
#     reset       the request read, then a TCP reset before any header
#     cut500      500 headers and part of its body, then a reset
#     stall       nothing for 2.5 s, past the target's proxy_read_timeout
#     garbage     a reply that is not HTTP, then close
#   non-stream requests only:
#     cut200      200 headers and part of the body, then a reset
#     stall200    200 headers and part of the body, then 2.5 s of nothing
#   stream requests only:
#     cut_between 2 whole events, then a reset
#     cut_mid     2 events and half of a third, then close
#     stall_mid   1 event, then 2.5 s of nothing
#
# The target of model f-huge answers 429 with a huge Retry-After (in
# seconds, as retry-after-ms, or as a far HTTP-date) on some attempts,
# ok on the others.  The healthy target answers ok, always.

use strict;
use warnings;

use base qw(Exporter);

our @EXPORT = qw(
    roll fault client_plan flaky_handler healthy_handler request_body
    h1_client h2_command h2_result judge read_log proc_figures
);

use Digest::MD5 qw(md5);
use JSON::PP ();
use POSIX qw(strftime);
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

use Test::LLM;
use Test::LLM::Mock;

our $SEED = 11;

my $JSON = JSON::PP->new->canonical;

# a number in [0, 1) drawn from the seed and the keys
sub roll {
    my (@k) = @_;
    return unpack('N', md5(join ':', $SEED, map { $_ // '' } @k))
           / 4294967296;
}

sub _pick {
    my ($r, @table) = @_;
    my $sum = 0;
    $sum += $_->[1] for @table;
    my $x = $r * $sum;
    for my $e (@table) {
        return $e->[0] if ($x -= $e->[1]) < 0;
    }
    return $table[-1][0];
}

my @COMMON = (
    [ ok => 40 ], [ rl_ra1 => 4 ], [ rl_ram => 4 ], [ rl_ra3 => 3 ],
    [ ovl529 => 5 ], [ un503 => 5 ], [ reset => 5 ], [ cut500 => 4 ],
    [ stall => 4 ], [ garbage => 5 ],
);

my @PLAIN = (@COMMON, [ cut200 => 3 ], [ stall200 => 2 ]);
my @STREAM = (@COMMON, [ cut_between => 3 ], [ cut_mid => 5 ],
              [ stall_mid => 3 ]);
my @HUGE = ([ ok => 55 ], [ ra_huge => 15 ], [ ram_huge => 15 ],
            [ date_far => 15 ]);

# the fault of an attempt; ids that are not numbers (warm-up) get ok
sub fault {
    my ($id, $attempt, $model, $stream) = @_;
    return 'ok' if !defined $id || $id !~ /^\d+$/;
    return 'ok' if !defined $model || $model !~ /^f/;
    my $r = roll('fault', $id, $attempt, $model);
    return _pick($r, @HUGE) if $model eq 'f-huge';
    return _pick($r, $stream ? @STREAM : @PLAIN);
}

# what client $id does: stream or not, abort or not (and how)
sub client_plan {
    my ($id, $proto) = @_;
    my %p = (id => $id, proto => $proto);
    $p{stream} = roll('stream', $id) < 0.4 ? 1 : 0;
    $p{abort} = '';
    if (roll('abort', $id) < 0.10) {
        $p{abort} = $proto eq 'h2' ? 'timeout'
            : (qw(before before_rst first first_rst))
              [int(roll('how', $id) * 4)];
        $p{abort_after} = 0.01 + 0.2 * roll('when', $id);
    }
    return \%p;
}

sub request_body {
    my ($id, $stream) = @_;
    return '{"model":"gpt-4o-mini",' . ($stream ? '"stream":true,' : '')
        . '"messages":[{"role":"user","content":"soak ' . $id . '"}]}';
}


###############################################################################
# mock providers

sub _chunk_event {
    my ($model, $n) = @_;
    return Test::LLM::Mock::sse_event(
        '{"id":"chatcmpl-soak","object":"chat.completion.chunk",'
        . '"created":1700000000,"model":"' . $model . '","choices":'
        . '[{"index":0,"delta":{"content":"w' . $n . '"},'
        . '"finish_reason":null}]}');
}

my $COMPLETION_HEAD = '{"id":"chatcmpl-soak","object":"chat.completion",';

sub _completion {
    my ($model) = @_;
    return Test::LLM::Mock::chat_completion(id => 'chatcmpl-soak',
                                            model => $model);
}

my %ERROR = (
    429 => Test::LLM::Mock::error_json('Rate limit reached for requests',
                                       'requests', 'rate_limit_exceeded'),
    529 => '{"type":"error","error":{"type":"overloaded_error",'
           . '"message":"Overloaded"}}',
    503 => "<html><body><h1>503 Service Unavailable</h1></body></html>\n",
);

sub _sse_head {
    my ($conn) = @_;
    return $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                   'Transfer-Encoding' => 'chunked',
                                   'Connection' => 'close' ]);
}

sub _ok {
    my ($conn, $model, $stream, $delay) = @_;

    if (!$stream) {
        return { status => 200, head_delay => $delay,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => _completion($model) };
    }

    sleep $delay;
    _sse_head($conn) or return;
    for my $n (1 .. 5) {
        sleep 0.04;
        $conn->send_chunk(_chunk_event($model, $n)) or return;
    }
    $conn->send_chunk(Test::LLM::Mock::sse_event('[DONE]')) or return;
    $conn->end_chunks;
    $conn->close;
    return;
}

sub _rl {
    my (@h) = @_;
    return { status => 429, body => $ERROR{429},
             headers => [ 'Content-Type' => 'application/json', @h ] };
}

# the answer of an action, on $conn
sub _act {
    my ($conn, $kind, $model, $stream, $delay) = @_;

    return _ok($conn, $model, $stream, $delay) if $kind eq 'ok';

    return _rl('Retry-After' => 1) if $kind eq 'rl_ra1';
    return _rl('retry-after-ms' => 150) if $kind eq 'rl_ram';
    return _rl('Retry-After' => 3) if $kind eq 'rl_ra3';
    return _rl('Retry-After' => 99999999) if $kind eq 'ra_huge';
    return _rl('retry-after-ms' => 99999999999) if $kind eq 'ram_huge';
    return _rl('Retry-After' => strftime('%a, %d %b %Y %H:%M:%S GMT',
                                         gmtime(time + 10 * 365 * 86400)))
        if $kind eq 'date_far';

    return { status => 529, body => $ERROR{529},
             headers => [ 'Content-Type' => 'application/json' ] }
        if $kind eq 'ovl529';

    return { status => 503, body => $ERROR{503},
             headers => [ 'Content-Type' => 'text/html' ] }
        if $kind eq 'un503';

    if ($kind eq 'reset') {
        $conn->reset;
        return;
    }

    if ($kind eq 'cut500') {
        $conn->partial(status => 500, reset => 1,
                       body => '{"error":{"message":"The server had an');
        return;
    }

    if ($kind eq 'cut200' || $kind eq 'stall200') {
        $conn->partial(status => 200, body => $COMPLETION_HEAD,
                       reset => $kind eq 'cut200',
                       delay => $kind eq 'stall200' ? 2.5 : 0);
        return;
    }

    if ($kind eq 'stall') {
        $conn->stall(2.5);
        $conn->close;
        return;
    }

    if ($kind eq 'garbage') {
        $conn->write("this is not an HTTP answer\r\n\r\nat all\r\n");
        $conn->close;
        return;
    }

    if ($kind eq 'cut_between' || $kind eq 'cut_mid'
        || $kind eq 'stall_mid')
    {
        _sse_head($conn) or return;
        my $n = $kind eq 'stall_mid' ? 1 : 2;
        for my $i (1 .. $n) {
            $conn->send_chunk(_chunk_event($model, $i)) or return;
        }

        if ($kind eq 'cut_between') {
            $conn->reset;

        } elsif ($kind eq 'cut_mid') {
            my $e = _chunk_event($model, 3);
            $conn->send_chunk(substr($e, 0, int(length($e) / 2)));
            $conn->close;

        } else {
            $conn->stall(2.5);
            $conn->close;
        }

        return;
    }

    die "unknown soak action \"$kind\"\n";
}

sub _request_keys {
    my ($req) = @_;
    my ($id) = ($req->{query} // '') =~ /(?:^|&)id=([^&]*)/;
    my $attempt = $req->{headers}{'x-attempt'} // 0;
    my ($model) = $req->{body} =~ /"model":"([^"]*)"/;
    my $stream = $req->{body} =~ /"stream":true/ ? 1 : 0;
    return ($id, $attempt, $model // '', $stream);
}

sub flaky_handler {
    my ($req, $conn) = @_;
    my ($id, $attempt, $model, $stream) = _request_keys($req);
    my $kind = fault($id, $attempt, $model, $stream);
    my $delay = 0.05 + 0.2 * roll('delay', $id, $attempt);
    return _act($conn, $kind, $model, $stream, $delay);
}

sub healthy_handler {
    my ($req, $conn) = @_;
    my ($id, $attempt, $model, $stream) = _request_keys($req);
    my $delay = 0.05 + 0.2 * roll('delay', $id, $attempt);
    return _ok($conn, $model, $stream, $delay);
}


###############################################################################
# clients

# An HTTP/1.1 client on a raw socket (run it in a child): the request,
# then either the whole answer up to the server's close (Connection:
# close), or the planned abort.  Returns a result hash.
sub h1_client {
    my ($port, $p, $timeout) = @_;

    my $body = request_body($p->{id}, $p->{stream});
    my $req = http_request('POST', "/v1/chat/completions?id=$p->{id}",
        body => $body, headers => [ 'Content-Type' => 'application/json' ]);

    my %r = (id => $p->{id}, proto => 'h1', stream => $p->{stream},
             abort => $p->{abort}, start => time);

    my $s = http_start($req, port => $port, timeout => 5);
    unless ($s) {
        $r{problem} = "cannot connect: $!";
        return \%r;
    }

    my $rst = sub {
        setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    };

    if ($p->{abort} =~ /^before/) {
        # gone before the answer, unless it came already
        sleep $p->{abort_after};
        my $got = read_some($s, 0.001);
        $r{abort_got} = length($got // '');
        $rst->() if $p->{abort} eq 'before_rst';
        close $s;
        $r{time} = time - $r{start};
        return \%r;
    }

    if ($p->{abort} =~ /^first/) {
        # "stop generating": gone after the first event or the first bytes
        my ($got) = $p->{stream}
            ? read_until($s, qr/\r\n\r\n.*?\n\n/s, $timeout)
            : read_some($s, $timeout);
        $r{abort_got} = length($got // '');
        $rst->() if $p->{abort} eq 'first_rst';
        close $s;
        $r{time} = time - $r{start};
        return \%r;
    }

    my $raw = read_all($s, $timeout);
    $r{time} = time - $r{start};
    $r{timed_out} = $r{time} >= $timeout - 0.05 ? 1 : 0;
    close $s;

    my $resp = parse_response($raw);
    $r{status_line} = ($raw =~ /^([^\r\n]{0,60})/)[0] // '';
    $r{status} = $resp->{status};
    $r{ctype} = $resp->{headers}{'content-type'} // '';
    $r{body} = $resp->{body};
    $r{complete} = $resp->{head_complete} && $resp->{complete}
                   && !$r{timed_out} ? 1 : 0;
    $r{bytes} = length $raw;

    return \%r;
}

# the curl command of an h2c client, its output files under $dir
sub h2_command {
    my ($port, $p, $timeout, $dir) = @_;
    my $f = "$dir/h2-$p->{id}";

    open my $fh, '>', "$f.req" or die "$f.req: $!\n";
    print $fh request_body($p->{id}, $p->{stream});
    close $fh;

    my $max = $p->{abort} ? sprintf('%.3f', 0.05 + $p->{abort_after})
                          : $timeout;

    return ('curl', '-sS', '--http2-prior-knowledge', '--max-time', $max,
            '-o', "$f.body", '-D', "$f.head",
            '-w', '%{http_code} %{http_version}',
            '-H', 'Content-Type: application/json',
            '--data-binary', "\@$f.req",
            "http://127.0.0.1:$port/v1/chat/completions?id=$p->{id}");
}

# the result of an h2c client from its files and curl's exit code
sub h2_result {
    my ($p, $dir, $exit, $time, $timeout) = @_;
    my $f = "$dir/h2-$p->{id}";

    my %r = (id => $p->{id}, proto => 'h2', stream => $p->{stream},
             abort => $p->{abort}, time => $time, curl_exit => $exit);

    my $read = sub {
        open my $fh, '<', $_[0] or return '';
        binmode $fh;
        local $/;
        my $c = <$fh>;
        return $c // '';
    };

    my $head = $read->("$f.head");
    $r{body} = $read->("$f.body");
    $r{curl_out} = $read->("$f.out");
    $r{bytes} = length($head) + length($r{body});

    return \%r if $p->{abort};

    # the last header block (1xx ones before it)
    my @blocks = grep { /^HTTP\// } split /\r\n\r\n/, $head;
    my $last = $blocks[-1] // '';
    $r{status_line} = ($last =~ /^([^\r\n]{0,60})/)[0] // '';
    ($r{status}) = $last =~ m{^HTTP/\S+\s+(\d{3})};
    ($r{ctype}) = $last =~ /^content-type:\s*([^\r\n]*)/im;
    $r{ctype} //= '';
    $r{timed_out} = $exit == 28 ? 1 : 0;
    $r{complete} = $exit == 0 && defined $r{status} ? 1 : 0;

    unlink "$f.req", "$f.head", "$f.body", "$f.out";
    return \%r;
}


###############################################################################
# judgement

my @ERROR_STATUSES = (429, 500, 502, 503, 504, 529);

# What a client that did not abort got: (outcome, problem).  The outcome
# names a whole answer; problem is set when it is not one.  A 200 cut
# short is "truncated", for the caller to accept only when the provider
# cut it (documented: the client's connection is closed).
sub judge {
    my ($r) = @_;

    return ('hang', "no end within $r->{time} s (client timeout)")
        if $r->{timed_out};

    my $st = $r->{status};

    unless (defined $st) {
        return ('no_status', 'no status line: '
                . _show($r->{status_line} // '')
                . (defined $r->{curl_exit}
                   ? " (curl exit $r->{curl_exit}: "
                     . _show($r->{curl_out} // '') . ')'
                   : ''));
    }

    if ($st eq '000') {
        return ('status_000', 'status line "' . $r->{status_line}
                . '" (a reply that is not HTTP passed on as status 000, '
                . 'issue 11 item 8)');
    }

    if ($st == 200 && $r->{ctype} =~ m{^text/event-stream}) {
        return ('truncated', 'stream not terminated') unless $r->{complete};
        return _judge_stream($r->{body});
    }

    if ($st == 200) {
        return ('truncated', 'body cut short') unless $r->{complete};
        my $j = eval { $JSON->decode($r->{body}) };
        return ('ok', undef)
            if ref $j eq 'HASH' && ($j->{object} // '') eq 'chat.completion';
        return ('bad_200', '200 with a body that is not a chat.completion: '
                . _show($r->{body}));
    }

    if (grep { $st == $_ } @ERROR_STATUSES) {
        return ("status_$st", undef) if $r->{complete};
        return ("cut_$st", "$st answer cut short: " . _show($r->{body}));
    }

    return ("status_$st", "unexpected status $st: " . _show($r->{body}));
}

sub _judge_stream {
    my ($body) = @_;

    # events end with a blank line; what follows the last one is a cut
    my @events = split /\n\n/, $body, -1;
    my $tail = pop @events;

    return ('stream_bad', 'bytes after the last event: ' . _show($tail))
        if length $tail;

    my @data;
    for my $e (@events) {
        my $d = join "\n", map { /^data: ?(.*)$/ ? $1 : () }
                           split /\n/, $e;
        if ($d ne '[DONE]' && !eval { $JSON->decode($d); 1 }) {
            return ('stream_broken_event', 'an event that is not JSON: '
                    . _show($e) . ' (a half event forwarded, '
                    . 'issue 11 item 9)');
        }
        push @data, $d;
    }

    return ('stream_bad', 'an empty stream') unless @data;

    return ('stream_ok', undef) if $data[-1] eq '[DONE]'
        && !grep { $_ eq '[DONE]' } @data[0 .. $#data - 1];

    my $j = $JSON->decode($data[-1]);
    return ('stream_error_event', undef)
        if ref $j eq 'HASH' && ref $j->{error} eq 'HASH'
           && ($j->{error}{code} // '') eq 'stream_interrupted';

    return ('stream_bad', 'a stream ended without [DONE] or the error '
            . 'event: ' . _show($data[-1]));
}

sub _show {
    my ($s) = @_;
    $s = substr($s, 0, 120) . '...' if length $s > 120;
    $s =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    return "\"$s\"";
}


###############################################################################
# logs, /proc

# lines of a "|"-separated log as hashes of @fields
sub read_log {
    my ($t, $name, @fields) = @_;
    my @out;
    for my $line (split /\n/, $t->read_file($name)) {
        my @v = split /\|/, $line, -1;
        my %e;
        @e{@fields} = @v;
        push @out, \%e;
    }
    return \@out;
}

# { pid => { rss_kb, fds } } of the workers; dies when /proc says nothing
sub proc_figures {
    my (@pids) = @_;
    my %f;

    die "no worker processes\n" unless @pids;

    for my $pid (@pids) {
        open my $fh, '<', "/proc/$pid/status"
            or die "cannot read /proc/$pid/status: $!\n";
        my ($rss) = join('', <$fh>) =~ /^VmRSS:\s*(\d+)\s*kB/m;
        die "no VmRSS in /proc/$pid/status\n" unless defined $rss;

        opendir my $dh, "/proc/$pid/fd"
            or die "cannot read /proc/$pid/fd: $!\n";
        my $fds = grep { !/^\.\.?$/ } readdir $dh;

        $f{$pid} = { rss_kb => $rss, fds => $fds };
    }

    return \%f;
}

1;
