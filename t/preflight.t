#!/usr/bin/perl

# llm-preflight check (docs/llm-preflight.md): the model-change runbook
# against real nginx with the module and a mock provider.  Covers:
# promote (the gateway's own 400 model_not_found for the bad model, and
# a provider's 404 passed on; chat, responses and messages; the record
# appended to --record, one JSON line a run; YAML and markdown); rollback
# when the happy path fails (500 after the gateway's retries, with one
# request of the command's; an answer over the 4 MB cap; a gateway not
# listening); hold when the catalog does not list the candidate, the
# error path answers 500, 200 or a 4xx without an error object, the
# answer's shape is not the family's, a telemetry field is missing from
# the access log, the log has no line, or no rollback owner is named;
# the key sent as Bearer or x-api-key with anthropic-version, and never
# in stdout, stderr or a record, even when the provider echoes it; the
# command's own check withholding an output that would hold the key;
# a gateway that stalls fails within --timeout; bad flags and
# environment errors exit 3 with one line on stderr.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Preflight;

use IO::Socket::INET;
use JSON::PP ();

plan(skip_all => "no $PREFLIGHT (run make)") unless -x $PREFLIGHT;

my $t = Test::LLM->new;

my $KEY = 'sk-CANARY-preflight-key-5f0e9a';
my $ANT = 'sk-ant-CANARY-preflight-key-77b1';
$t->canary($KEY, $ANT);

$t->write_file_expand('nginx.conf', gateway_conf($t));
$t->run_mock_provider(port => $t->port(8081), name => 'p',
                      handler => \&family_handler);
$t->run;

my $GW = 'http://127.0.0.1:' . $t->port(8080);
my $DIR = $t->testdir;
my $LOG = "$DIR/logs/llm.json.log";
my $RECORD = "$DIR/logs/records.jsonl";
my %ENV_KEYS = (OPENAI_API_KEY => $KEY, ANTHROPIC_API_KEY => $ANT);

sub check {
    my ($base, $family, $model, @more) = @_;
    my %o = (ref $more[-1] eq 'HASH') ? %{pop @more} : ();
    return preflight($t, [ 'check', '--base', "$GW$base",
                           '--family', $family, '--model', $model,
                           '--operator', 'Jane Doe', @more ],
                     env => { %ENV_KEYS, %{$o{env} || {}} });
}

sub owned { ('--rollback-owner', 'oncall-llm', '--access-log', $LOG, @_) }

# what a record says, in a line for diagnostics
sub what {
    my ($r) = @_;
    return "rc=$r->{rc} err=$r->{err} out=$r->{out}";
}

###############################################################################
# promote

my $r = check('/g', 'chat', 'gpt-candidate', owned('--run-id', 'run-1',
              '--change-ticket', 'CHG-1234', '--record', $RECORD));
is($r->{rc}, 0, 'promote: exit 0') or diag(what($r));
is($r->{err}, '', 'promote: nothing on stderr');

my $rec = $r->{record} || {};
is($rec->{fallback_decision}, 'promote', 'promote: decision');
is($rec->{run_id}, 'run-1', 'promote: run_id');
is($rec->{operator}, 'Jane Doe', 'promote: operator');
is($rec->{model_candidate}, 'gpt-candidate', 'promote: model_candidate');
is($rec->{endpoint_family}, 'chat', 'promote: endpoint_family');
is($rec->{catalog}, 'listed', 'promote: catalog');
is($rec->{happy_path_status}, 'pass', 'promote: happy path');
is($rec->{error_path_status}, 'pass', 'promote: error path');
is_deeply($rec->{http_status_observed},
          { catalog => 200, happy_path => 200, error_path => 400 },
          'promote: statuses (the gateway refused the bad model itself)');
is($rec->{response_shape_checked}, 'documented_shape_seen',
   'promote: shape');
is($rec->{telemetry_fields_present}, 'yes', 'promote: telemetry');
is($rec->{change_ticket}, 'CHG-1234', 'promote: change_ticket');
is($rec->{rollback_owner}, 'oncall-llm', 'promote: rollback_owner');
like($rec->{client} // '', qr{^llm-preflight/\S+ libcurl/\d+\.\d+},
     'promote: client versions');
like($rec->{notes} // '', qr/model_not_found.*0 attempts/,
     'promote: notes name the error and the attempts');
like($rec->{time} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
     'promote: time');

# the requests as the provider saw them: the key as Bearer, the run id

my @seen = grep { ($_->{headers}{'x-request-id'} // '') =~ /^run-1-/ }
           @{$t->mock_requests('p')};
is(scalar @seen, 1, 'promote: one request reached the provider');
is($seen[0]{headers}{authorization}, "Bearer $KEY", 'chat: Bearer key');
is($seen[0]{headers}{'x-request-id'}, 'run-1-happy', 'X-Request-Id');
like($seen[0]{body}, qr/"Return the word ok"/, 'the runbook\'s prompt');

# the access log lines found by X-Request-Id

my ($line) = grep { /"run-1-error"/ } split /\n/, $t->read_file(
    'logs/llm.json.log');
like($line // '', qr/"llm.attempts":"0"/,
     'the error path\'s log line: no attempt');

$r = check('/p', 'chat', 'gpt-candidate', owned('--record', $RECORD));
is($r->{rc}, 0, 'promote, the provider\'s 404 passed on: exit 0')
    or diag(what($r));
is($r->{record}{http_status_observed}{error_path}, 404,
   'promote, the provider\'s 404: error path status');
like($r->{record}{notes} // '', qr/404 invalid_request_error\/model_not_found.*1 attempt\b/,
     'promote, the provider\'s 404: one attempt');
like($r->{record}{run_id} // '', qr/^pf-\d{8}T\d{6}Z-[0-9a-f]{6}$/,
     'a run id is made when none is given');

my @records = map { JSON::PP->new->decode($_) }
              split /\n/, $t->read_file('logs/records.jsonl');
is(scalar @records, 2, '--record: one line a run');
is($records[0]{run_id}, 'run-1', '--record: the first run');
is_deeply($records[1], $r->{record}, '--record: the line is the record');

# a base with a trailing slash is the same base
for my $family (qw(responses messages)) {
    $r = check('/g/', $family, $family eq 'messages'
                              ? 'claude-3-5-haiku-20241022' : 'gpt-candidate',
               owned('--run-id', "run-$family"));
    is($r->{rc}, 0, "$family: promote") or diag(what($r));
    is($r->{record}{gateway}, "$GW/g", "$family: the base without its /");
}

@seen = grep { ($_->{headers}{'x-request-id'} // '') eq 'run-messages-happy' }
        @{$t->mock_requests('p')};
is($seen[0]{headers}{'x-api-key'}, $ANT, 'messages: x-api-key');
is($seen[0]{headers}{'anthropic-version'}, '2023-06-01',
   'messages: anthropic-version');
ok(!exists $seen[0]{headers}{authorization}, 'messages: no Authorization');

# formats

$r = check('/g', 'chat', 'gpt-candidate', owned('--format', 'yaml'));
is($r->{rc}, 0, 'yaml: exit 0');
like($r->{out}, qr/^---\nrun_id: "pf-.*\nhttp_status_observed:\n  catalog: 200\n/ms,
     'yaml: the record');
like($r->{out}, qr/^fallback_decision: "promote"$/m, 'yaml: decision');

$r = check('/g', 'chat', 'gpt-candidate', owned('--format', 'markdown'));
like($r->{out}, qr/^\| field \| value \|\n\|---\|---\|\n\| run_id \| pf-/,
     'markdown: a table');
like($r->{out}, qr/^\| http_status_observed\.error_path \| 400 \|$/m,
     'markdown: nested fields');

###############################################################################
# rollback: the happy path failed

$r = check('/p', 'chat', 'gpt-candidate',
           owned('--header', 'X-Case: happy:500'));
is($r->{rc}, 2, 'happy path 500: rollback') or diag(what($r));
is($r->{record}{fallback_decision}, 'rollback', 'happy path 500: decision');
is($r->{record}{happy_path_status}, 'fail', 'happy path 500: fail');
is($r->{record}{http_status_observed}{happy_path}, 500,
   'happy path 500: status');
like($r->{record}{notes}, qr/happy path answered 500 server_error in \d+ ms after 3 attempts/,
     'happy path 500: notes, with the gateway\'s attempts');
my $id = $r->{record}{run_id};
is(scalar(grep { /"\Q$id\E-happy"/ } split /\n/,
            $t->read_file('logs/llm.json.log')), 1,
   'happy path 500: the command made one request, no retry of its own');

$r = check('/p', 'chat', 'gpt-candidate',
           owned('--header', 'X-Case: happy:huge'));
is($r->{rc}, 2, 'an answer over 4 MB: rollback') or diag(what($r));
like($r->{record}{notes}, qr/happy path 200 cut off after \d+ ms: answer larger than 4194304 bytes/,
     'an answer over 4 MB: cut off');

$r = preflight($t, [ 'check', '--base', 'http://127.0.0.1:'
                     . $t->port(8082), '--family', 'chat',
                     '--model', 'm', '--rollback-owner', 'x' ]);
is($r->{rc}, 2, 'nothing listening: rollback') or diag(what($r));
is($r->{record}{catalog}, 'unavailable', 'nothing listening: catalog');
is($r->{record}{http_status_observed}{happy_path}, undef,
   'nothing listening: no status');

###############################################################################
# hold

sub hold {
    my ($name, $args, $field, $want, $notes) = @_;
    my $r = check(@$args);
    is($r->{rc}, 1, "$name: hold") or diag(what($r));
    is($r->{record}{fallback_decision}, 'hold', "$name: decision");
    is($r->{record}{$field}, $want, "$name: $field") if $field;
    like($r->{record}{notes} // '', $notes, "$name: notes") if $notes;
    return $r;
}

hold('catalog miss', [ '/p', 'chat', 'gpt-unlisted', owned() ],
     catalog => 'not_listed', qr/catalog does not list the candidate/);
hold('error path 500',
     [ '/p', 'chat', 'gpt-candidate', owned('--header', 'X-Case: error:500') ],
     error_path_status => 'fail', qr/error path answered 500, not a 4xx/);
hold('error path 200',
     [ '/p', 'chat', 'gpt-candidate', owned('--header', 'X-Case: error:ok') ],
     error_path_status => 'fail', qr/error path answered 200/);
hold('error path without an error object',
     [ '/p', 'chat', 'gpt-candidate',
       owned('--header', 'X-Case: error:html400') ],
     error_path_status => 'fail', qr/without an error object/);
hold('no chat.completion',
     [ '/p', 'chat', 'gpt-candidate',
       owned('--header', 'X-Case: happy:noshape') ],
     response_shape_checked => 'mismatch', qr/no chat.completion/);
hold('no usage',
     [ '/p', 'chat', 'gpt-candidate',
       owned('--header', 'X-Case: happy:nousage') ],
     response_shape_checked => 'mismatch', qr/no usage in the answer/);
hold('a telemetry field missing',
     [ '/lean', 'chat', 'gpt-candidate', '--rollback-owner', 'x',
       '--access-log', "$DIR/logs/lean.json.log" ],
     telemetry_fields_present => 'no',
     qr/happy path's log line lacks llm\.retry_decision.*error path's log line lacks llm\.retry_decision/);
hold('no log line', [ '/g', 'chat', 'gpt-candidate', '--rollback-owner',
                      'x', '--access-log', "$DIR/logs/lean.json.log" ],
     telemetry_fields_present => 'no',
     qr/no access log line with X-Request-Id pf-\S+-happy/);
$r = hold('no rollback owner', [ '/g', 'chat', 'gpt-candidate',
                                 '--access-log', $LOG ],
          undef, undef, qr/no rollback owner named/);
ok(!exists $r->{record}{rollback_owner}, 'no rollback owner: no field');
hold('no access log', [ '/g', 'chat', 'gpt-candidate',
                        '--rollback-owner', 'x' ],
     telemetry_fields_present => 'not_checked',
     qr/telemetry not checked \(no --access-log\)/);

###############################################################################
# the key

$r = check('/p', 'chat', 'gpt-candidate',
           owned('--header', 'X-Case: error:echokey', '--record', $RECORD));
is($r->{rc}, 0, 'a provider echoing the key: the run goes on')
    or diag(what($r));

$r = check('/p', 'messages', 'claude-3-5-haiku-20241022',
           owned('--header', 'X-Case: error:echokey', '--record', $RECORD));
is($r->{rc}, 0, 'messages, a provider echoing the key: the run goes on')
    or diag(what($r));

$r = check('/g', 'chat', 'gpt-candidate',
           owned('--record', $RECORD, '--change-ticket', "CHG $KEY"));
is($r->{rc}, 3, 'an output that would hold the key: exit 3');
is($r->{out}, '', '... nothing on stdout');
is($r->{err}, "llm-preflight: output withheld: it would contain the API "
              . "key\n", '... one line on stderr');

$r = preflight($t, [ 'check', '--base', "$GW/g", '--family', 'chat',
                     '--model', 'gpt-candidate', '--key-env', 'MY_KEY',
                     '--bad-option-' . $KEY ],
               env => { MY_KEY => $KEY });
is($r->{rc}, 3, 'an error message that would hold the key: exit 3');
unlike($r->{err}, qr/\Q$KEY\E/, '... withheld');

my $all = join '', map { $t->read_file("logs/$_") }
          grep { /^(preflight\.|records)/ }
          do { opendir my $d, "$DIR/logs"; readdir $d };
unlike($all, qr/\Q$KEY\E|\Q$ANT\E/,
       'no key in any stdout, stderr or record of the command');
my $n = () = $t->read_file('logs/records.jsonl') =~ /\n/g;
is($n, 4, 'the withheld record was not appended');

###############################################################################
# a gateway that stalls

my $listen = IO::Socket::INET->new(Proto => 'tcp', Listen => 16,
                                   LocalAddr => '127.0.0.1:0', ReuseAddr => 1)
    or die "listen: $!\n";
my $stall_port = $listen->sockport;

$t->run_daemon(sub {
    my @held;
    while (my $c = $listen->accept) { push @held, $c }
});
close $listen;

$r = preflight($t, [ 'check', '--base', "http://127.0.0.1:$stall_port",
                     '--family', 'chat', '--model', 'm',
                     '--rollback-owner', 'x', '--timeout', '1500ms' ],
               timeout => 30);
ok($r->{rc} == 1 || $r->{rc} == 2, 'stalling gateway: hold or rollback')
    or diag(what($r));
ok($r->{secs} < 1.5 + 5, 'stalling gateway: ends with --timeout')
    or diag("took $r->{secs} s");
like($r->{record}{notes} // '', qr/timed out|--timeout spent/i,
     'stalling gateway: notes say so');

###############################################################################
# bad flags and environment

my @bad = (
    [ [], qr/no command/ ],
    [ [ 'promote' ], qr/unknown command "promote"/ ],
    [ [ 'check' ], qr/check needs --base URL/ ],
    [ [ 'check', '--base', $GW ], qr/needs --family/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat' ], qr/needs --model/ ],
    [ [ 'check', '--base', $GW, '--family', 'embeddings', '--model', 'm' ],
      qr/--family: "embeddings" is not chat, responses or messages/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--bogus', 'x' ], qr/unknown option "--bogus"/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--environment', 'prod' ],
      qr/--environment does not apply to check/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model' ],
      qr/--model needs a value/ ],
    [ [ 'check', '--base', 'ftp://x', '--family', 'chat', '--model', 'm' ],
      qr/--base: an http:\/\/ or https:\/\/ URL/ ],
    [ [ 'check', '--base', 'http://u:p@h', '--family', 'chat',
        '--model', 'm' ], qr/no credentials in the URL/ ],
    [ [ 'check', '--base', "$GW?key=1", '--family', 'chat',
        '--model', 'm' ], qr/no query or fragment/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--header', 'Authorization: Bearer x' ],
      qr/no Authorization on the command line/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--header', 'x-api-key: x' ], qr/no x-api-key on the command line/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--header', 'no colon' ], qr/--header: "Name: value"/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--timeout', '0' ], qr/--timeout: "0" is no time/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--timeout', '10x' ], qr/--timeout: "10x" is no time/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--format', 'xml' ], qr/--format: "xml"/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--run-id', 'a b' ], qr/--run-id: 1 to 64/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--stream=yes' ], qr/--stream takes no value/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--key-env', 'UNSET_PREFLIGHT_KEY' ],
      qr/environment variable UNSET_PREFLIGHT_KEY is not set/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--access-log', "$DIR/no/such.log" ],
      qr/--access-log .*: cannot be read/ ],
    [ [ 'check', '--base', $GW, '--family', 'chat', '--model', 'm',
        '--record', "$DIR/no/such/dir/r.jsonl" ],
      qr/--record .*: No such file or directory/ ],
    [ [ 'readiness', '--family', 'chat', '--model', 'm' ],
      qr/readiness needs --primary URL/ ],
    [ [ 'catalog' ], qr/catalog needs --base URL/ ],
);

for my $b (@bad) {
    my ($args, $re) = @$b;
    my $r = preflight($t, $args);
    my $name = join(' ', @$args) || 'no arguments';
    is($r->{rc}, 3, "bad: $name: exit 3");
    like($r->{err}, qr/^llm-preflight: [^\n]*\n\z/,
         "bad: $name: one line on stderr");
    like($r->{err}, $re, "bad: $name: says what");
    is($r->{out}, '', "bad: $name: nothing on stdout");
}

$r = preflight($t, [ 'check', '--base', $GW, '--family', 'chat',
                     '--model', 'm' ], env => { OPENAI_API_KEY => 'short' });
is($r->{rc}, 3, 'a short key: exit 3');
like($r->{err}, qr/the key in OPENAI_API_KEY is not usable/,
     'a short key: says what');

$r = preflight($t, [ '--help' ]);
is($r->{rc}, 0, '--help: exit 0');
like($r->{out}, qr/^usage: llm-preflight check --base URL/, '--help: usage');

$r = preflight($t, [ '--version' ]);
like($r->{out}, qr/^llm-preflight \S+ \(libcurl \d/, '--version');

done_testing;
