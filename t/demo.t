#!/usr/bin/perl

# make demo (tools/demo.sh) on DEMO_PORT: it runs through without a Redis
# error in its output (each key read with the command for its type); with
# DEMO_KEEP=1 it leaves nginx, the mock and Redis running, prints their
# URLs and a stop script, and the stop script takes everything down.
# It ends with llm-preflight's records: promote, rollback, readiness.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use IO::Socket::INET;
use Time::HiRes qw(sleep);

for my $p (qw(redis-server redis-cli curl)) {
    plan(skip_all => "$p missing")
        unless grep { -x "$_/$p" } split /:/, $ENV{PATH};
}

my $t = Test::LLM->new;

# three free ports in a row: the gateway, the mock, Redis
sub free_base {
    for (1 .. 50) {
        my $base = 20000 + int(rand(8000));
        my @s = map {
            IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                  LocalPort => $base + $_, Listen => 1,
                                  ReuseAddr => 1)
        } 0 .. 2;
        return $base if 3 == grep { defined } @s;
    }
    die "no three free ports in a row\n";
}

my $base = free_base();

local $ENV{DEMO_PORT} = $base;
local $ENV{DEMO_KEEP} = 1;
local $ENV{TEST_LLM_MODULE} = $Test::LLM::MODULE;

my $out = `$Test::LLM::REPO/tools/demo.sh 2>&1`;
my $rc = $? >> 8;
is($rc, 0, 'the demo runs through') or diag($out);

unlike($out, qr/WRONGTYPE|\(error\)|ERR /, 'no Redis error in its output');
like($out, qr/on 127\.0\.0\.1:$base,/, 'on DEMO_PORT');

# it ends with llm-preflight's records (docs/llm-preflight.md)
SKIP: {
    (my $pf = $Test::LLM::MODULE) =~ s{[^/]+$}{llm-preflight};
    skip "no $pf", 4 unless -x $pf;
    like($out, qr/"fallback_decision": "promote".*\(exit 0: promote\)/s,
         'llm-preflight: promote for the good candidate');
    like($out, qr/"fallback_decision": "rollback".*\(exit 2: rollback/s,
         'llm-preflight: rollback for the broken one');
    like($out, qr/"fallback_decision": "review_required"/,
         'llm-preflight: a readiness record');
    unlike($out, qr/client-key-never-printed/, 'llm-preflight: no key');
}

our $stop;
($stop) = $out =~ /^stop it:\s+(\S+)$/m;
ok($stop && -x $stop, 'DEMO_KEEP=1 prints a stop script')
    or BAIL_OUT('demo left nothing to stop');
(my $prefix = $stop) =~ s{/stop\.sh$}{};

# a test that dies midway leaves nothing running
END { local $?; system($stop) if $stop && -x $stop; }

like($out, qr{^chat:\s+http://127\.0\.0\.1:$base/v1/chat/completions$}m,
     'the chat URL');
like($out, qr{^status:\s+http://127\.0\.0\.1:$base/llm/status}m,
     'the status URL');

my $r = parse_response(http_post('/v1/chat/completions',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}',
    port => $base,
    headers => { 'Content-Type' => 'application/json' }));
is($r->{status}, 200, 'still serving after the demo');

my $pong = `redis-cli -p @{[$base + 2]} ping 2>&1`;
like($pong, qr/PONG/, 'Redis still running');

system($stop);

my $down;
for (1 .. 50) {
    $down = !IO::Socket::INET->new(PeerAddr => "127.0.0.1:$base",
                                   Timeout => 1);
    last if $down && !-d $prefix;
    sleep 0.1;
}
ok($down, 'nginx stopped by the stop script');
ok(!-d $prefix, 'its directory removed');
unlike(`redis-cli -p @{[$base + 2]} ping 2>&1`, qr/PONG/, 'Redis stopped');

done_testing;
