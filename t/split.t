#!/usr/bin/perl

# Sticky traffic shifting (docs/directives.md, llm_split_key).  Covers:
# with llm_split_key the weighted pick follows the key's hash: at 90/10
# over 10,000 keys the shares are within 1 point of the weights; a key
# stays on its target; after a reload to 75/25 no key leaves the canary
# and the shares follow; $llm_split_bucket is 0..9999 and the key itself
# is never logged; an empty key falls back to the random pick (no
# bucket); llm_split_key outside a route fails nginx -t.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my $t = Test::LLM->new;

my $SECRET = 'sk-split-canary-0042';
$t->canary($SECRET);

my $conf = <<'EOF';
events {}

http {
    log_format split '$http_x_n|$llm_target|$llm_split_bucket';
    access_log %%TESTDIR%%/logs/access.log split;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/base model=base weight=%%BASE%%;
            llm_target /_llm/canary model=canary weight=%%CANARY%%;
            llm_split_key $http_x_user$http_authorization;
        }

        location /_llm/ {
            internal;
            return 200 "$uri\n";
        }
    }
}
EOF

sub config {
    my ($base, $canary) = @_;
    (my $c = $conf) =~ s/%%BASE%%/$base/;
    $c =~ s/%%CANARY%%/$canary/;
    $t->write_file_expand('nginx.conf', $c);
}

config(90, 10);
$t->run;

my $port = $t->port(8080);
my $body = '{"model":"m","messages":[]}';

sub request {
    my ($n, %h) = @_;
    my $head = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        . "Content-Type: application/json\r\nX-N: $n\r\n"
        . "Content-Length: " . length($body) . "\r\n";
    $head .= "$_: $h{$_}\r\n" for sort keys %h;
    return "$head\r\n$body";
}

# the target of each key, over keepalive connections
sub pick {
    my (@keys) = @_;
    my %where;
    while (my @batch = splice @keys, 0, 500) {
        my ($res) = http_keepalive(
            [ map { request($_, 'X-User' => "user-$_") } @batch ],
            port => $port);
        for my $i (0 .. $#batch) {
            my $r = parse_response($res->[$i] // '');
            $where{$batch[$i]} = ($r->{body} // '') =~ m{^/_llm/(\w+)}
                                 ? $1 : 'none';
        }
    }
    return \%where;
}

sub share {
    my ($where, $target) = @_;
    my $n = grep { $_ eq $target } values %$where;
    return 100 * $n / scalar keys %$where;
}

my @keys = (1 .. 10000);

my $first = pick(@keys);
is(scalar(grep { $_ eq 'none' } values %$first), 0, 'every key answered');

my $canary = share($first, 'canary');
cmp_ok(abs($canary - 10), '<=', 1, "90/10: canary share $canary%");

my $again = pick(@keys[0 .. 1999]);
is(scalar(grep { $again->{$_} ne $first->{$_} } keys %$again), 0,
   'a key stays on its target');

# the log: buckets, never the key

my @log = split /\n/, $t->read_file('logs/access.log');
my @buckets = map { (split /\|/)[2] } @log;
is(scalar(grep { !/^\d+$/ || $_ > 9999 } @buckets), 0,
   'every bucket is 0..9999');
my %distinct = map { $_ => 1 } @buckets;
cmp_ok(scalar keys %distinct, '>', 5000, 'keys spread over the buckets');

my ($res) = http_keepalive(
    [ request('secret', Authorization => "Bearer $SECRET") ], port => $port);
like($res->[0], qr/^HTTP\/1\.1 200/, 'a key from Authorization');

# no key: the random pick, no bucket

my %none;
($res) = http_keepalive([ map { request("nokey$_") } 1 .. 400 ],
                        port => $port);
for (@$res) {
    my ($t) = parse_response($_)->{body} =~ m{^/_llm/(\w+)};
    $none{$t // 'none'}++;
}
cmp_ok($none{canary} // 0, '>', 10, 'no key: some random picks on canary');
cmp_ok($none{base} // 0, '>', 300, 'no key: most on base');
my @nokey = grep { /^nokey/ } split /\n/, $t->read_file('logs/access.log');
is(scalar(grep { (split /\|/)[2] ne '-' } @nokey), 0, 'no key: no bucket');

# shift to 75/25

config(75, 25);
ok($t->reload, 'reloaded at 75/25');

my $second = pick(@keys);
$canary = share($second, 'canary');
cmp_ok(abs($canary - 25), '<=', 1, "75/25: canary share $canary%");
is(scalar(grep { $first->{$_} eq 'canary' && $second->{$_} ne 'canary' }
          @keys), 0, 'no key left the canary');
is(scalar(grep { $first->{$_} eq $second->{$_} } @keys)
   + scalar(grep { $first->{$_} eq 'base' && $second->{$_} eq 'canary' }
            @keys),
   10000, 'the only keys that moved went from base to canary');

# nginx -t

my $bad = Test::LLM->new;
$bad->allow_alerts(qr/\[emerg\].*"llm_split_key" requires/);
$bad->write_file_expand('nginx.conf', <<'EOF');
events {}
http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /x {
            llm_split_key $http_x_user;
        }
    }
}
EOF

my ($ok, $out) = $bad->test_config;
ok(!$ok, 'llm_split_key without llm_route: nginx -t fails');
like($out, qr/"llm_split_key" requires "llm_route" in the same location/,
     'llm_split_key without llm_route: the message');

done_testing;
