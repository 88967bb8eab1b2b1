#!/usr/bin/perl

# Outages are logged as they begin and end, not once per request
# (docs/directives.md, llm_cooldown, llm_retry_budget).  Covers: while
# every target of a route is cooling down, the 503s it answers leave one
# warn line as the outage begins and one, with their count, when a target
# is back; a spent retry budget leaves one line as refusals begin and
# one, with the count of refused retries, when a retry fits again.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Time::HiRes qw(sleep);

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%ENGINE%%

    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;

        location = /cool/v1/chat/completions {
            llm_route cool;
            llm_target /_llm/a;
            llm_cooldown fails=1 window=10s time=1500ms;
        }

        location = /budget/v1/chat/completions {
            llm_route budget;
            llm_target /_llm/b tries=2;
            llm_retry_budget ratio=0 min=1/s window=2s;
            llm_cooldown off;
        }

        location ~ ^/_llm/(a|b)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions;
        }
    }
}
EOF

my $port = engine_run($t, $conf, mocks => [ provider => 8081 ]);
my $body = '{"model":"gpt-4o-mini","messages":[]}';

sub post {
    my ($route, $id, $case) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$id",
        $body, port => $port, headers => { 'X-Case' => $case }));
}

sub lines {
    my ($re) = @_;
    return scalar grep { $_ =~ $re }
        split /\n/, $t->read_file('logs/error.log');
}

###############################################################################
# every target cooling down

is(post('cool', 'c0', '*:500')->{status}, 500, 'the failure cools the target');

my $answered = 0;
for my $i (1 .. 15) {
    $answered++ if post('cool', "c$i", '*:ok')->{status} == 503;
}
is($answered, 15, 'while it cools, 503 from the gateway');
is(lines(qr/every target is cooling down/), 1,
   'one line as the outage began');

sleep 1.7;

is(post('cool', 'cback', '*:ok')->{status}, 200, 'the target is back');
is(lines(qr/llm route "cool": a target is back after 15 requests answered 503/),
   1, 'one line as it ended, with the count');

###############################################################################
# the retry budget spent

my ($refused, $retried) = (0, 0);
for my $i (1 .. 12) {
    my $r = post('budget', "b$i", '1:500;*:ok');
    my $e = log_entry($t, "b$i");
    $refused++ if $e->{decision} eq 'budget_exhausted';
    $retried++ if $e->{decision} eq 'retry';
}
cmp_ok($refused, '>=', 8, "retries refused ($refused), some allowed "
       . "($retried)");
is(lines(qr/retry budget exhausted/), 1, 'one line as refusals began');

# the window of 2 s passes, and the second before it that the sliding
# window still counts in part (llm_retry_budget): the floor allows a
# retry again
sleep 3.2;

is(post('budget', 'bback', '1:500;*:ok')->{status}, 200,
   'a retry fits again');
is(log_entry($t, 'bback')->{decision}, 'retry', 'it was retried');
my @end = grep { /retry budget available again after (\d+) retr/ }
          split /\n/, $t->read_file('logs/error.log');
is(scalar @end, 1, 'one line as refusals ended');
my ($n) = ($end[0] // '') =~ /after (\d+) retr/;
is($n, $refused, 'with the count of refused retries');

done_testing;
