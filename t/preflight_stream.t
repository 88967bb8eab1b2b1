#!/usr/bin/perl

# llm-preflight check --stream (docs/llm-preflight.md): the happy path as
# SSE, each family against its own contract, through real nginx with the
# module.  Covers: chat completion chunks ending in data: [DONE] (usage
# asked for with stream_options), Responses events ending in
# response.completed, Anthropic events ending in message_stop: promote,
# with the access log's usage; a stream without its end event, a stream
# without usage and a whole JSON answer to a stream request: hold.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Preflight;

plan(skip_all => "no $PREFLIGHT (run make)") unless -x $PREFLIGHT;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', gateway_conf($t));
$t->run_mock_provider(port => $t->port(8081), name => 'p',
                      handler => \&family_handler);
$t->run;

my $GW = 'http://127.0.0.1:' . $t->port(8080);
my $LOG = $t->testdir . '/logs/llm.json.log';

my %MODEL = (chat => 'gpt-candidate', responses => 'gpt-candidate',
             messages => 'claude-3-5-haiku-20241022');
my %END = (chat => qr/\[DONE\]/, responses => qr/response\.completed/,
           messages => qr/message_stop/);

sub stream {
    my ($family, @more) = @_;
    return preflight($t, [ 'check', '--base', "$GW/g", '--family', $family,
                           '--model', $MODEL{$family}, '--stream',
                           '--rollback-owner', 'oncall', '--access-log',
                           $LOG, @more ]);
}

for my $family (qw(chat responses messages)) {
    my $r = stream($family, '--run-id', "s-$family");
    my $rec = $r->{record} || {};

    is($r->{rc}, 0, "$family stream: promote")
        or diag("rc=$r->{rc} $r->{err} $r->{out}");
    is($rec->{stream}, JSON::PP::true, "$family stream: recorded as one");
    is($rec->{response_shape_checked}, 'documented_shape_seen',
       "$family stream: the family's events");
    is($rec->{telemetry_fields_present}, 'yes',
       "$family stream: the log line has usage");

    my ($req) = grep { ($_->{headers}{'x-request-id'} // '')
                       eq "s-$family-happy" } @{$t->mock_requests('p')};
    like($req->{body} // '', qr/"stream":true/, "$family stream: asked for");
    like($req->{headers}{accept} // '', qr{text/event-stream},
         "$family stream: Accept");

    if ($family eq 'chat') {
        like($req->{body} // '', qr/"include_usage":true/,
             'chat stream: usage asked for');
    }

    $r = stream($family, '--header', 'X-Case: happy:cut');
    is($r->{rc}, 1, "$family stream without its end: hold")
        or diag("rc=$r->{rc} $r->{err} $r->{out}");
    is($r->{record}{response_shape_checked}, 'mismatch',
       "$family stream without its end: mismatch");
    like($r->{record}{notes} // '',
         qr/did not end with|carried an error event/,
         "$family stream without its end: notes");

    $r = stream($family, '--header', 'X-Case: happy:nousage');
    is($r->{rc}, 1, "$family stream without usage: hold");
    like($r->{record}{notes} // '', qr/no usage in the stream/,
         "$family stream without usage: notes");

    $r = stream($family, '--header', 'X-Case: happy:json');
    is($r->{rc}, 1, "$family JSON answer to a stream: hold");
    like($r->{record}{notes} // '',
         qr/asked for a stream, the answer is no stream/,
         "$family JSON answer to a stream: notes");
}

done_testing;
