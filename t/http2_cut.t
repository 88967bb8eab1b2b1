#!/usr/bin/perl

# HTTP/2 clients of an answer the provider cut (issue 11, the soak's h2
# "no status" reports).  An answer that broke after its headers reached
# the client cannot end cleanly: over HTTP/1.1 nginx closes the
# connection; over HTTP/2 it ends the stream with RST_STREAM
# INTERNAL_ERROR.  That is nginx's own way, the same with a plain
# proxy_pass, and the stream always carries the HEADERS frame first.
# curl 7.88 reads HEADERS and RST_STREAM arriving together as "HTTP/2
# stream 1 was not closed cleanly: INTERNAL_ERROR (err 2)" with
# http_code 000, which t/soak.t then classifies from the access log.
#
# A minimal h2c client on a raw socket, as the harness has none: it
# sends one POST and lists the frames of stream 1 in order.  A stream
# (SSE) cut by the provider ends instead with the error event and
# END_STREAM.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use IO::Select;
use Time::HiRes qw(time);

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format cut '$uri|$status|$llm_attempt_errors';
    access_log %%TESTDIR%%/logs/access.log cut;

    server {
        listen 127.0.0.1:%%PORT_8080%% http2;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider model=m1;
            llm_attempts 1;
        }

        location /plain/ {
            proxy_pass http://127.0.0.1:%%PORT_8081%%/;
        }

        location /_llm/ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF

my $HEAD = '{"id":"chatcmpl-cut","object":"chat.completion",';

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => sub {
    my ($req, $conn) = @_;
    my ($case) = ($req->{query} // '') =~ /case=(\w+)/;
    $case //= '';

    if ($case eq 'cut200') {
        $conn->partial(status => 200, body => $HEAD, reset => 1);
        return;
    }

    if ($case eq 'cut500') {
        $conn->partial(status => 500, reset => 1,
                       body => '{"error":{"message":"The server had an');
        return;
    }

    if ($case eq 'cut_sse') {
        $conn->sse(events => [ '{"object":"chat.completion.chunk",'
                               . '"choices":[]}' ], cut => 1, reset => 1);
        return;
    }

    return { status => 200, body => $HEAD . '"choices":[]}' };
});

$t->run;

my $port = $t->port(8080);


###############################################################################
# a minimal h2c client

sub frame {
    my ($type, $flags, $sid, $payload) = @_;
    my $len = length $payload;
    return pack('CnCCN', $len >> 16, $len & 0xffff, $type, $flags, $sid)
           . $payload;
}

# an HPACK string, never Huffman-coded; short ones only
sub hstr {
    my ($s) = @_;
    die "string too long for this client\n" if length $s > 126;
    return chr(length $s) . $s;
}

# :status of a response header block as nginx encodes it: an indexed
# field of the static table, or a literal with the name :status (8)
my %STATIC = (0x88 => 200, 0x89 => 204, 0x8a => 206, 0x8b => 304,
              0x8c => 400, 0x8d => 404, 0x8e => 500);

sub status_of {
    my ($block) = @_;
    my $b = ord $block;
    return $STATIC{$b} if $STATIC{$b};
    return substr($block, 2, 3)
        if ($b == 0x48 || $b == 0x08 || $b == 0x18)
           && ord(substr($block, 1, 1)) == 3;
    return sprintf 'undecoded 0x%02x', $b;
}

# One POST on stream 1: the frames of the stream in order (HEADERS:200,
# DATA, RST_STREAM:2, END_STREAM), the body, the error code of a
# RST_STREAM; ends with the stream, a GOAWAY, EOF or 5 s.
sub h2_post {
    my ($path, $body) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port")
        or die "connect: $!\n";
    binmode $s;

    my $block = "\x83\x86"                          # POST, http
        . "\x04" . hstr($path)                      # :path
        . "\x01" . hstr("127.0.0.1:$port")          # :authority
        . "\x00" . hstr('content-type') . hstr('application/json')
        . "\x00" . hstr('content-length') . hstr(length $body);

    syswrite($s, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                 . frame(4, 0, 0, '')
                 . frame(1, 0x4, 1, $block)         # END_HEADERS
                 . frame(0, 0x1, 1, $body));        # END_STREAM

    my (@order, $rst);
    my ($data, $buf) = ('', '');
    my $sel = IO::Select->new($s);
    my $deadline = time + 5;

    READ: while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;

        while (length $buf >= 9) {
            my ($l1, $l2, $type, $flags, $sid) =
                unpack('CnCCN', substr($buf, 0, 9));
            my $len = ($l1 << 16) | $l2;
            last if length $buf < 9 + $len;
            my $p = substr($buf, 9, $len);
            substr($buf, 0, 9 + $len) = '';
            $sid &= 0x7fffffff;

            if ($type == 4 && !($flags & 0x1)) {
                syswrite($s, frame(4, 0x1, 0, ''));     # SETTINGS ack
            }

            if ($type == 7) {
                push @order, 'GOAWAY';
                last READ;
            }

            next unless $sid == 1;

            if ($type == 1) {
                push @order, 'HEADERS:' . status_of($p);
            } elsif ($type == 0) {
                push @order, 'DATA' if $len;
                $data .= $p;
            } elsif ($type == 3) {
                $rst = unpack('N', $p);
                push @order, "RST_STREAM:$rst";
                last READ;
            }

            if (($type == 0 || $type == 1) && ($flags & 0x1)) {
                push @order, 'END_STREAM';
                last READ;
            }
        }
    }

    close $s;

    # consecutive DATA frames as one: how many depends on the reads
    my $order = join ' ', @order;
    $order =~ s/DATA(?: DATA)+/DATA/g;

    return { order => $order, data => $data, rst => $rst };
}


###############################################################################

my $JSON = '{"model":"gpt-4o","messages":[]}';

my $r = h2_post('/v1/chat/completions?case=ok', $JSON);
is($r->{order}, 'HEADERS:200 DATA END_STREAM', 'the client works: a whole '
   . 'answer');

# The provider's reset may come with its headers or after them, so each
# case runs a few times; every run must show the HEADERS frame first.

for my $case (qw(cut200 cut500)) {
    my $status = $case eq 'cut200' ? 200 : 500;

    for my $where ('/v1/chat/completions', '/plain/v1/chat/completions') {
        my $what = $where =~ /plain/ ? 'plain proxy_pass' : 'llm route';
        my %seen;

        for (1 .. 5) {
            my $o = h2_post("$where?case=$case", $JSON)->{order};
            $o =~ s/ DATA / /;      # whether a DATA frame got out first
            $seen{$o}++;
        }

        is(join(', ', sort keys %seen), "HEADERS:$status RST_STREAM:2",
           "$case, $what: HEADERS :status $status, then RST_STREAM "
           . "INTERNAL_ERROR, never a reset before the headers");
    }
}

my $log = $t->read_file('logs/access.log');
is(scalar(() = $log =~ m{^/v1/chat/completions\|200\|stream_interrupted$}mg),
   5, 'cut200: logged as the 200 committed, stream_interrupted');

$r = h2_post('/v1/chat/completions?case=cut_sse',
             '{"model":"gpt-4o","stream":true,"messages":[]}');
is($r->{order}, 'HEADERS:200 DATA END_STREAM',
   'a cut stream ends with END_STREAM, no RST_STREAM');
like($r->{data}, qr/"code":"stream_interrupted".*\n\n\z/s,
     'a cut stream ends with the error event');

done_testing;
