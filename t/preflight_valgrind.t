#!/usr/bin/perl

# llm-preflight under valgrind (memcheck, --leak-check=full): no invalid
# access, no uninitialised value used, no leak, on the paths that
# allocate: check with the access log (promote), a stream (each family's
# parser), a failed happy path, readiness with a broken fallback, the
# paged catalog, an output withheld for the key, a usage error.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Preflight;

plan(skip_all => "no $PREFLIGHT (run make)") unless -x $PREFLIGHT;

my $t = Test::LLM->new;
$t->has_daemon('valgrind');

my $KEY = 'sk-CANARY-valgrind-key-9a1f3e';
$t->canary($KEY);

$t->write_file_expand('nginx.conf', gateway_conf($t));
$t->run_mock_provider(port => $t->port(8081), name => 'p',
                      handler => \&family_handler);
$t->run;

my $GW = 'http://127.0.0.1:' . $t->port(8080);
my $DIR = $t->testdir;
my $n = 0;

sub vg {
    my ($name, $want, @args) = @_;
    my $log = "$DIR/valgrind." . ++$n . '.txt';
    my $r = preflight($t, \@args, timeout => 120,
                      env => { OPENAI_API_KEY => $KEY,
                               ANTHROPIC_API_KEY => $KEY },
                      wrap => [ 'valgrind', '--error-exitcode=9',
                                '--leak-check=full', '--quiet',
                                "--log-file=$log" ]);
    is($r->{rc}, $want, "$name: exit $want under valgrind")
        or diag("rc=$r->{rc} $r->{err}\n" . $t->read_file($log));
    is($t->read_file($log), '', "$name: valgrind found nothing");
}

vg('check', 0, 'check', '--base', "$GW/g", '--family', 'chat',
   '--model', 'gpt-candidate', '--rollback-owner', 'x',
   '--access-log', "$DIR/logs/llm.json.log", '--record',
   "$DIR/logs/records.jsonl", '--format', 'yaml', '--timeout', '60s');

for my $family (qw(chat responses messages)) {
    vg("$family stream", 0, 'check', '--base', "$GW/g", '--family', $family,
       '--model', $family eq 'messages' ? 'claude-3-5-haiku-20241022'
                                        : 'gpt-candidate',
       '--stream', '--rollback-owner', 'x', '--format', 'markdown',
       '--access-log', "$DIR/logs/llm.json.log", '--timeout', '60s');
}

vg('happy path 500', 2, 'check', '--base', "$GW/p", '--family', 'chat',
   '--model', 'gpt-candidate', '--header', 'X-Case: happy:500',
   '--timeout', '60s');

vg('readiness', 1, 'readiness', '--family', 'chat', '--model', 'm',
   '--primary', "$GW/ready/primary", '--fallback', "$GW/ready/broken",
   '--operator', 'Jane Doe', '--timeout', '60s');

vg('catalog pages', 0, 'catalog', '--base',
   'http://127.0.0.1:' . $t->port(8081), '--family', 'messages',
   '--timeout', '60s');

vg('output withheld', 3, 'check', '--base', "$GW/g", '--family', 'chat',
   '--model', 'gpt-candidate', '--operator', $KEY, '--timeout', '60s');

vg('usage error', 3, 'check', '--base', "$GW/g", '--family', 'chat');

done_testing;
