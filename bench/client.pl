#!/usr/bin/perl
# Send exactly COUNT POST requests, one after another on a keepalive
# connection, and check that each gets a 2xx answer.  Used for the
# callgrind instruction counts, where the number of requests must be exact
# and the server is too slow (under valgrind) for wrk's fixed durations.
#
#   bench/client.pl PORT PATH BODYFILE COUNT
#
# Prints "ok=N failed=M reconnects=K"; exits 1 if any request failed.

use strict;
use warnings;
use IO::Socket::INET;

my ($port, $path, $file, $count) = @ARGV;
die "usage: $0 PORT PATH BODYFILE COUNT\n" unless defined $count;

open(my $fh, '<:raw', $file) or die "$file: $!\n";
my $body = do { local $/; <$fh> };
close($fh);

my $req = "POST $path HTTP/1.1\r\n"
        . "Host: 127.0.0.1:$port\r\n"
        . "Content-Type: application/json\r\n"
        . "Authorization: Bearer sk-bench-not-a-real-key\r\n"
        . "Content-Length: " . length($body) . "\r\n"
        . "\r\n" . $body;

my ($ok, $failed, $reconnects) = (0, 0, -1);
my $sock;

sub connect_server {
    $sock = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port",
                                  Proto => 'tcp', Timeout => 30)
        or die "connect 127.0.0.1:$port: $!\n";
    $sock->autoflush(1);
    $reconnects++;
}

# read one response; returns (status, keepalive) or () on a closed connection
sub read_response {
    my $buf = "";
    while ($buf !~ /\r\n\r\n/) {
        my $n = sysread($sock, $buf, 65536, length($buf));
        return () unless $n;
    }
    my ($head, $rest) = split(/\r\n\r\n/, $buf, 2);
    my ($status) = $head =~ m{^HTTP/1\.[01] (\d{3})} or return ();
    my $keepalive = $head !~ /^Connection:\s*close/mi;
    if ($head =~ /^Content-Length:\s*(\d+)/mi) {
        my $need = $1;
        while (length($rest) < $need) {
            my $n = sysread($sock, $rest, $need - length($rest), length($rest));
            return () unless $n;
        }
    } elsif ($head =~ /^Transfer-Encoding:\s*chunked/mi) {
        # enough for a bench: read until the last chunk
        while ($rest !~ /(^|\r\n)0\r\n\r\n$/) {
            my $n = sysread($sock, $rest, 65536, length($rest));
            return () unless $n;
        }
    } else {
        $keepalive = 0;
        1 while sysread($sock, $rest, 65536, length($rest));
    }
    return ($status, $keepalive);
}

$SIG{ALRM} = sub { die "client: timed out after $ok requests\n" };

connect_server();
for (1 .. $count) {
    alarm(60);
    my ($status, $keepalive);
    for my $try (1, 2) {
        my $w = syswrite($sock, $req);
        ($status, $keepalive) = read_response() if defined $w;
        last if defined $status;
        connect_server();    # keepalive connection closed by the server
    }
    if (defined $status && $status =~ /^2/) {
        $ok++;
    } else {
        $failed++;
        warn "client: request $_: " . ($status // "no answer") . "\n"
            if $failed <= 5;
    }
    connect_server() if defined $status && !$keepalive;
}
alarm(0);

print "ok=$ok failed=$failed reconnects=$reconnects\n";
exit($failed ? 1 : 0);
