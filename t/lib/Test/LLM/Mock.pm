package Test::LLM::Mock;

# A mock LLM provider: a small HTTP/1.1 server run as a harness daemon
# (Test::LLM::run_mock_provider).  One process per connection, keepalive
# when the client asks for it, request bodies with Content-Length or
# chunked.  Every request is recorded before the handler runs, as one JSON
# line appended under flock to the daemon's record file, so tests count
# attempts and check body bytes whatever the handler then does.
#
# The handler gets ($req, $conn):
#
#     $req:  method, uri, path, query, version, headers (lowercase names;
#            repeated ones joined with ", "), header_list ([name, value]
#            pairs as sent), body, chunked (request body came chunked),
#            conn (connection number), n (request number on it)
#
# and either returns a response:
#
#     { status => 200, headers => [ name => value, ... ] or { ... },
#       body => '...',
#       chunked => 1 | chunk size,        # send body chunked
#       chunks => [ 'a', 'b' ], delay => 0.1,  # chunked, paced
#       head_delay => 0.5,                # wait before the status line
#       close => 1 }                      # close after it
#     [ status, headers, body ]
#
# or drives the connection itself through $conn (reset, stall, partial,
# sse, send_head, send_chunk, write, close) and returns nothing: the
# connection is then closed unless $conn->keep_alive(1) was called.

use strict;
use warnings;

use Digest::MD5 qw(md5_hex);
use Errno qw(EINTR EAGAIN);
use Fcntl qw(:flock);
use IO::Select;
use JSON::PP ();
use POSIX qw(WNOHANG);
use Socket qw(SOL_SOCKET SO_LINGER IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time sleep);

# bodies up to this size are kept in the record itself
our $RECORD_BODY_MAX = 65536;

# a connection process never lives longer than this (seconds)
our $CONN_LIFETIME = 120;

my $JSON = JSON::PP->new->canonical->latin1;


sub serve {
    my (%o) = @_;

    my $listen = $o{listen};
    my $ppid = getppid();
    my (%kids, $seq);

    $SIG{PIPE} = 'IGNORE';
    $SIG{CHLD} = 'DEFAULT';
    $SIG{TERM} = sub {
        kill 'TERM', keys %kids;
        POSIX::_exit(0);
    };

    my $sel = IO::Select->new($listen);

    while (1) {
        # the test process is gone: so is the mock
        if (getppid() != $ppid) {
            kill 'TERM', keys %kids;
            POSIX::_exit(0);
        }

        while ((my $k = waitpid(-1, WNOHANG)) > 0) {
            delete $kids{$k};
        }

        next unless $sel->can_read(0.5);

        my $c = $listen->accept or next;
        $seq++;

        my $pid = fork;

        if (!defined $pid) {
            close $c;
            next;
        }

        if ($pid == 0) {
            close $listen;
            $SIG{TERM} = 'DEFAULT';
            alarm $CONN_LIFETIME;
            eval { connection($c, $seq, %o); 1 }
                or print STDERR "# mock $o{name}: $@";
            POSIX::_exit(0);
        }

        $kids{$pid} = 1;
        close $c;
    }
}

sub connection {
    my ($sock, $seq, %o) = @_;

    setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1);

    my $conn = bless { sock => $sock, buf => '', name => $o{name} },
        'Test::LLM::Mock::Conn';
    my $n = 0;

    while (1) {
        my $req = $conn->read_request($o{idle} || 15) or return;

        $req->{conn} = $seq;
        $req->{n} = ++$n;

        record($o{record}, $o{name}, $req) if $o{record};

        $conn->{req} = $req;
        $conn->{keep} = undef;
        $conn->{sent} = 0;

        my $handler = $o{handler} || \&default_handler;
        my @resp = eval { $handler->($req, $conn) };

        if ($@) {
            print STDERR "# mock $o{name}: handler died: $@";
            $conn->respond({ status => 500, body => "mock handler died\n",
                             close => 1 }) unless $conn->{sent};
            $conn->close;
            return;
        }

        return if $conn->{closed};

        my $resp = $resp[0];

        if (ref $resp eq 'ARRAY') {
            $resp = { status => $resp->[0], headers => $resp->[1],
                      body => $resp->[2] };
        }

        if (ref $resp eq 'HASH') {
            $conn->respond($resp);

        } elsif (!$conn->{keep}) {
            $conn->close;
            return;
        }

        return if $conn->{closed};

        if (!$conn->wants_keepalive
            || (ref $resp eq 'HASH' && $resp->{close}))
        {
            $conn->close;
            return;
        }
    }
}

sub default_handler {
    my ($req) = @_;
    return {
        status  => 200,
        headers => [ 'Content-Type' => 'application/json',
                     'x-request-id' => "req-mock-$req->{conn}-$req->{n}" ],
        body    => chat_completion(),
    };
}

# an OpenAI chat.completion answer
sub chat_completion {
    my (%o) = @_;
    my $content = defined $o{content} ? $o{content} : 'Hello!';
    return $JSON->encode({
        id      => $o{id} || 'chatcmpl-mock1',
        object  => 'chat.completion',
        created => 1700000000,
        model   => $o{model} || 'gpt-4o-mini',
        choices => [ {
            index         => 0,
            message       => { role => 'assistant', content => $content },
            finish_reason => 'stop',
        } ],
        usage   => { prompt_tokens => 9, completion_tokens => 3,
                     total_tokens => 12 },
    });
}

# an OpenAI-style error body
sub error_json {
    my ($message, $type, $code) = @_;
    return $JSON->encode({ error => {
        message => $message, type => $type, param => undef,
        code => $code } });
}

# one SSE event as bytes
sub sse_event {
    my ($data, %o) = @_;
    my $e = '';
    $e .= "event: $o{event}\n" if defined $o{event};
    $e .= "data: $_\n" for split /\n/, $data, -1;
    return "$e\n";
}

sub record {
    my ($file, $name, $req) = @_;

    my %r = map { $_ => $req->{$_} }
            qw(method uri path query version headers header_list chunked
               conn n);
    $r{name} = $name;
    $r{pid} = $$;
    $r{time} = time;
    $r{body_length} = length $req->{body};
    $r{body_md5} = md5_hex($req->{body});
    $r{body} = $req->{body} if length $req->{body} <= $RECORD_BODY_MAX;

    my $line = $JSON->encode(\%r) . "\n";

    open my $fh, '>>', $file or die "record $file: $!\n";
    binmode $fh;
    flock($fh, LOCK_EX) or die "flock $file: $!\n";
    syswrite($fh, $line) == length $line or die "record $file: $!\n";
    close $fh;
}

sub read_records {
    my ($file) = @_;
    my @r;

    open my $fh, '<', $file or return [];
    binmode $fh;
    flock($fh, LOCK_SH);

    while (my $line = <$fh>) {
        next unless $line =~ /\n$/;
        push @r, $JSON->decode($line);
    }

    return \@r;
}


package Test::LLM::Mock::Conn;

use Errno qw(EINTR EAGAIN);
use IO::Select;
use Socket qw(SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time sleep);

sub sock { $_[0]->{sock} }
sub req { $_[0]->{req} }

sub keep_alive {
    my ($self, $on) = @_;
    $self->{keep} = $on;
    return $self;
}

sub wants_keepalive {
    my ($self) = @_;
    my $req = $self->{req} or return 0;
    my $c = lc($req->{headers}{connection} || '');
    return 0 if $c =~ /close/;
    return 1 if $req->{version} eq '1.1';
    return $c =~ /keep-alive/ ? 1 : 0;
}

# fill the buffer: 1 data, 0 EOF, undef timeout
sub _fill {
    my ($self, $deadline) = @_;
    while (1) {
        my $left = $deadline - time;
        return undef if $left <= 0;
        next unless IO::Select->new($self->{sock})->can_read($left);
        my $n = sysread($self->{sock}, $self->{buf}, 65536,
                        length $self->{buf});
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            return 0;
        }
        return $n ? 1 : 0;
    }
}

sub _need {
    my ($self, $len, $deadline) = @_;
    while (length $self->{buf} < $len) {
        return 0 unless $self->_fill($deadline);
    }
    return 1;
}

sub _line {
    my ($self, $deadline) = @_;
    while ((my $i = index($self->{buf}, "\r\n")) < 0) {
        return undef unless $self->_fill($deadline);
    }
    my $i = index($self->{buf}, "\r\n");
    my $line = substr($self->{buf}, 0, $i);
    substr($self->{buf}, 0, $i + 2) = '';
    return $line;
}

# the next request, or undef when the client is gone or idle too long
sub read_request {
    my ($self, $idle) = @_;

    my $deadline = time + $idle;

    while (index($self->{buf}, "\r\n\r\n") < 0) {
        return undef unless $self->_fill($deadline);
    }

    my $end = index($self->{buf}, "\r\n\r\n");
    my $head = substr($self->{buf}, 0, $end);
    substr($self->{buf}, 0, $end + 4) = '';

    my ($line, @lines) = split /\r\n/, $head;
    my ($method, $uri, $version) =
        $line =~ m{^(\S+)\s+(\S+)\s+HTTP/(\d\.\d)$} or return undef;

    my %req = (method => $method, uri => $uri, version => $version,
               headers => {}, header_list => [], body => '', chunked => 0);
    ($req{path}, $req{query}) = split /\?/, $uri, 2;
    $req{query} //= '';

    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
        push @{$req{header_list}}, [$k, $v];
        my $lk = lc $k;
        $req{headers}{$lk} = exists $req{headers}{$lk}
            ? "$req{headers}{$lk}, $v" : $v;
    }

    # a body of any size takes at most this long
    $deadline = time + 30;

    if (($req{headers}{'transfer-encoding'} || '') =~ /chunked/i) {
        $req{chunked} = 1;
        while (1) {
            my $size = $self->_line($deadline);
            return undef unless defined $size;
            $size = hex(($size =~ /^([0-9a-fA-F]+)/)[0] // return undef);
            if ($size == 0) {
                while (1) {
                    my $t = $self->_line($deadline);
                    return undef unless defined $t;
                    last if $t eq '';
                }
                last;
            }
            $self->_need($size + 2, $deadline) or return undef;
            $req{body} .= substr($self->{buf}, 0, $size);
            substr($self->{buf}, 0, $size + 2) = '';
        }

    } elsif (my $len = $req{headers}{'content-length'}) {
        $self->_need($len, $deadline) or return undef;
        $req{body} = substr($self->{buf}, 0, $len);
        substr($self->{buf}, 0, $len) = '';
    }

    return \%req;
}

# write all bytes, bounded; false when the peer is gone
sub write {
    my ($self, $data) = @_;
    return 0 if $self->{closed};

    local $SIG{PIPE} = 'IGNORE';
    my $deadline = time + 30;
    my $off = 0;

    while ($off < length $data) {
        return 0 if time > $deadline;
        next unless IO::Select->new($self->{sock})
                    ->can_write($deadline - time);
        my $n = syswrite($self->{sock}, $data, 65536, $off);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            return 0;
        }
        $off += $n;
    }

    $self->{sent} += length $data;
    return 1;
}

my %REASON = (
    200 => 'OK', 201 => 'Created', 204 => 'No Content',
    400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden',
    404 => 'Not Found', 408 => 'Request Timeout',
    413 => 'Payload Too Large', 422 => 'Unprocessable Entity',
    429 => 'Too Many Requests', 500 => 'Internal Server Error',
    502 => 'Bad Gateway', 503 => 'Service Unavailable',
    504 => 'Gateway Timeout', 529 => 'Overloaded',
);

sub _pairs {
    my ($h) = @_;
    return () unless $h;
    return @$h if ref $h eq 'ARRAY';
    return map { ($_, $h->{$_}) } sort keys %$h;
}

# status line and headers as given (nothing added)
sub send_head {
    my ($self, $status, $headers) = @_;
    my @h = _pairs($headers);
    my $head = "HTTP/1.1 $status " . ($REASON{$status} || 'Status') . "\r\n";
    for (my $i = 0; $i < @h; $i += 2) {
        $head .= "$h[$i]: $h[$i + 1]\r\n";
    }
    return $self->write("$head\r\n");
}

sub send_chunk {
    my ($self, $data) = @_;
    return 1 unless length $data;
    return $self->write(sprintf("%x\r\n", length $data) . $data . "\r\n");
}

sub end_chunks {
    my ($self) = @_;
    return $self->write("0\r\n\r\n");
}

sub respond {
    my ($self, $r) = @_;

    my $status = $r->{status} || 200;
    my @h = _pairs($r->{headers});
    my %have = map { lc($h[$_]) => 1 } grep { !($_ % 2) } 0 .. $#h;
    my $body = defined $r->{body} ? $r->{body} : '';
    my $chunked = $r->{chunked} || $r->{chunks};
    my $close = $r->{close} || !$self->wants_keepalive;

    push @h, 'Content-Type' => 'application/json'
        unless $have{'content-type'} || $status == 204;

    if ($chunked) {
        push @h, 'Transfer-Encoding' => 'chunked';
    } elsif (!$have{'content-length'}) {
        push @h, 'Content-Length' => length $body;
    }

    push @h, 'Connection' => $close ? 'close' : 'keep-alive'
        unless $have{connection};

    sleep $r->{head_delay} if $r->{head_delay};

    $self->send_head($status, \@h) or return 0;

    if ($r->{chunks}) {
        for my $c (@{$r->{chunks}}) {
            sleep $r->{delay} if $r->{delay};
            $self->send_chunk($c) or return 0;
        }
        return $self->end_chunks;
    }

    if ($chunked) {
        my $size = $chunked > 1 ? $chunked : 1024;
        for (my $i = 0; $i < length $body; $i += $size) {
            $self->send_chunk(substr($body, $i, $size)) or return 0;
        }
        return $self->end_chunks;
    }

    return $self->write($body);
}

# close with a TCP RST (SO_LINGER 0)
sub reset {
    my ($self) = @_;
    return if $self->{closed};
    setsockopt($self->{sock}, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    CORE::close($self->{sock});
    $self->{closed} = 1;
}

sub close {
    my ($self) = @_;
    return if $self->{closed};
    shutdown($self->{sock}, 1);
    CORE::close($self->{sock});
    $self->{closed} = 1;
}

# sleep, bounded: the connection process must end on its own
sub stall {
    my ($self, $seconds) = @_;
    $seconds = 60 if !defined $seconds || $seconds > 60;
    sleep $seconds;
}

# headers with a Content-Length larger than the body sent, then close
sub partial {
    my ($self, %o) = @_;
    my $body = defined $o{body} ? $o{body} : '{"id":"chatcmpl-';
    my @h = (_pairs($o{headers}));
    push @h, 'Content-Type' => 'application/json'
        unless grep { lc eq 'content-type' } @h;
    push @h, 'Content-Length' => $o{content_length} || 4 * length($body) + 100;
    $self->send_head($o{status} || 200, \@h);
    $self->write($body);
    sleep $o{delay} if $o{delay};
    $o{reset} ? $self->reset : $self->close;
}

# a streamed answer: each event in a chunk, paced by delay; with cut => N
# the connection closes after N events without the end of the stream
sub sse {
    my ($self, %o) = @_;
    my @h = (_pairs($o{headers}));
    push @h, 'Content-Type' => 'text/event-stream'
        unless grep { lc eq 'content-type' } @h;
    push @h, 'Transfer-Encoding' => 'chunked', 'Connection' => 'close';

    $self->send_head($o{status} || 200, \@h) or return;

    my $i = 0;
    for my $e (@{$o{events} || []}) {
        if (defined $o{cut} && $i++ >= $o{cut}) {
            $o{reset} ? $self->reset : $self->close;
            return;
        }
        sleep $o{delay} if $o{delay};
        $self->send_chunk(ref $e ? Test::LLM::Mock::sse_event(@$e)
                                 : Test::LLM::Mock::sse_event($e))
            or return;
    }

    if (defined $o{cut}) {
        $o{reset} ? $self->reset : $self->close;
        return;
    }

    $self->end_chunks;
    $self->close;
}


1;
