#!/usr/bin/perl

# Retry budgets in the shared zone (docs/design.md section 3, issue 5).  Covers: the
# additive rule with min=0 ratio=0.1 and an always-failing target: 200
# requests over 4 connections to 2 workers give exactly 20 retries at
# the provider; a refused retry ends the request with the last provider
# answer, x-should-retry: false and the decision budget_exhausted; the
# floor min=N/s alone allows min*window retries; a route without a
# budget retries freely while still counted; the counters survive
# nginx -s reload with the same zone; a fallback needs budget too.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

my $conf = <<'EOF';
worker_processes 2;

events {}

http {
    %%LOG_FORMAT%%
    access_log %%TESTDIR%%/logs/access.log engine;

    log_format source '$arg_id|$llm_budget_source';
    access_log %%TESTDIR%%/logs/source.log source;

    proxy_set_header X-Attempt $llm_attempts;
    proxy_set_header Connection "";
    proxy_http_version 1.1;

    llm_zone llm:1m;

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0;
        llm_cooldown off;

        location = /ratio/v1/chat/completions {
            llm_route ratio;
            llm_target /_llm/ratio tries=3;
            llm_retry_budget ratio=0.1 min=0/s window=60s;
        }

        location = /floor/v1/chat/completions {
            llm_route floor;
            llm_target /_llm/floor tries=2;
            llm_retry_budget ratio=0 min=1/s window=5s;
        }

        location = /fb/v1/chat/completions {
            llm_route fb;
            llm_target /_llm/fb1;
            llm_fallback /_llm/fb2;
            llm_retry_budget ratio=0 min=0/s;
        }

        location = /keep/v1/chat/completions {
            llm_route keep;
            llm_target /_llm/keep tries=3;
            llm_retry_budget ratio=0.5 min=0/s window=60s;
        }

        location = /free/v1/chat/completions {
            llm_route free;
            llm_target /_llm/free tries=2;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://prov/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

my $port = engine_run($t, $conf);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"budget me"}]}';

sub post {
    my ($uri, %h) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { %h }));
}

sub at_mock {
    my ($target) = @_;
    return scalar grep { $_->{path} =~ m{^/\Q$target\E/} }
                  @{$t->mock_requests('prov')};
}

# N requests on C keepalive connections, in parallel processes
sub flood {
    my ($path, $n, $conns, %h) = @_;
    my @pids;

    for my $c (1 .. $conns) {
        my $pid = fork();
        die "fork: $!" unless defined $pid;

        if ($pid == 0) {
            my @reqs = map {
                http_request('POST', "$path?id=$c-$_", body => $REQ,
                             keepalive => 1,
                             headers => [ %h ])
            } 1 .. $n / $conns;
            http_keepalive(\@reqs, port => $port, timeout => 30);
            exit 0;
        }

        push @pids, $pid;
    }

    waitpid($_, 0) for @pids;
}

###############################################################################
# ratio=0.1, min=0: at most one retry per ten requests, across workers

flood('/ratio/v1/chat/completions', 200, 4, 'X-Case' => '*:500');
$t->wait_for_lines('logs/access.log', 200);

is(at_mock('ratio'), 220,
   'ratio: 200 requests, 20 retries at the provider');

my @lines = grep { /\|ratio\|/ } split /\n/, $t->read_file('logs/access.log');
is(scalar @lines, 200, 'ratio: 200 logged');
# a request may get two retries (tries=3) when budget was there twice;
# each ends when the budget or its tries run out
is(scalar(grep { /\|(budget|attempts)_exhausted\|/ } @lines), 200,
   'ratio: every request ends on the budget or its tries');
cmp_ok(scalar(grep { /\|budget_exhausted\|/ } @lines), '>=', 180,
       'ratio: nearly all on the budget');

my $r = post('/ratio/v1/chat/completions?id=refused', 'X-Case' => '*:500');
my $e = log_entry($t, 'refused');

is($r->{status}, 500, 'refused retry: the provider\'s last answer');
is($r->{body}, error_body('500'), 'refused retry: its body');
is($r->{headers}{'x-should-retry'}, 'false',
   'refused retry: x-should-retry: false');
is($e->{decision}, 'budget_exhausted', 'refused retry: decision');
is($e->{attempts}, 1, 'refused retry: one attempt');
like($t->wait_for_log('logs/source.log', qr/^refused\|/) // '',
     qr/^refused\|local$/, 'refused retry: $llm_budget_source local');

###############################################################################
# the floor alone: min=1/s over 5 s allows 5 retries

for my $i (1 .. 8) {
    post("/floor/v1/chat/completions?id=floor-$i", 'X-Case' => '*:500');
}

is(at_mock('floor'), 8 + 5, 'floor: min=1/s window=5s: 5 retries for 8');

###############################################################################
# a fallback is an attempt after the first: it needs budget too

$r = post('/fb/v1/chat/completions?id=fb', 'X-Case' => '1:503');
$e = log_entry($t, 'fb');

is($r->{status}, 503, 'fallback refused: the first answer');
is(at_mock('fb2'), 0, 'fallback refused: no attempt there');
is($e->{decision}, 'budget_exhausted', 'fallback refused: decision');

###############################################################################
# no budget: retries pass, and are counted

for my $i (1 .. 3) {
    post("/free/v1/chat/completions?id=free-$i", 'X-Case' => '*:500');
}

is(at_mock('free'), 6, 'no budget: every retry made');
like($t->wait_for_log('logs/source.log', qr/^free-3\|/) // '',
     qr/^free-3\|-$/, 'no budget: $llm_budget_source not found');

###############################################################################
# the counters survive a reload with the same zone: deposits made before
# it still pay for retries after it

for my $i (1 .. 20) {
    post("/keep/v1/chat/completions?id=keep-ok-$i", 'X-Case' => '*:ok');
}

ok($t->reload, 'reload');

for my $i (1 .. 4) {
    post("/keep/v1/chat/completions?id=keep-fail-$i", 'X-Case' => '*:500');
}

# 24 requests deposit 12 retries: 4 failing requests get their 2 each;
# a fresh zone would have 2 in all
is(at_mock('keep'), 20 + 4 * 3, 'after reload: earlier deposits fund '
   . 'retries');

###############################################################################
# another zone size on reload: a fresh zone, no crash

my $c = $t->read_file('nginx.conf');
$c =~ s/llm_zone llm:1m;/llm_zone llm:2m;/ or die "no zone line";
$t->write_file('nginx.conf', $c);

ok($t->reload, 'reload with a resized zone');

for my $i (1 .. 4) {
    post("/keep/v1/chat/completions?id=resized-$i", 'X-Case' => '*:500');
}

is(at_mock('keep'), 32 + 4 + 2, 'resized zone: counters start afresh '
   . '(4 deposits of 0.5: 2 retries)');

###############################################################################
# a zone too full for every route: served, not counted, logged once

my $many = join "\n", map {
    "        location = /full$_/v1/chat/completions {\n"
    . "            llm_route full$_;\n"
    . "            llm_target /_llm/full tries=2;\n"
    . "            llm_retry_budget ratio=0 min=0/s zone=small;\n"
    . "        }\n"
} 1 .. 30;

$c =~ s/(    llm_zone llm:2m;)/$1\n    llm_zone small:32k;/;
$c =~ s/(        location ~ \^)/$many\n$1/;
$t->write_file('nginx.conf', $c);

ok($t->reload, 'reload with a small zone');

my $full = $t->wait_for_log('logs/error.log', qr/llm zone "small" is full/)
    || '';
like($full, qr/\[error\].*llm zone "small" is full: route "full\d+" is not counted/,
     'full zone: logged');

# the last routes did not fit: their budget is not enforced
$r = post('/full30/v1/chat/completions?id=full30', 'X-Case' => '*:500');
is($r->{status}, 500, 'full zone: the route still answers');
is(log_entry($t, 'full30')->{attempts}, 2,
   'full zone: an uncounted route retries freely');

$r = post('/full1/v1/chat/completions?id=full1', 'X-Case' => '*:500');
is(log_entry($t, 'full1')->{decision}, 'budget_exhausted',
   'full zone: a counted route keeps its budget');

done_testing;
