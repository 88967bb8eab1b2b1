#!/usr/bin/perl

# Attempt engine (docs/design.md section 2): the attempt plan.  Covers: the weighted pick
# among llm_target (3:1 over 200 requests within a loose statistical
# bound, $llm_target agreeing with what the mock got, weight=0 never
# picked, not even when the picked target fails); tries=2 on a target
# gives two attempts there, then the fallbacks in order (tries= on a
# fallback too); llm_attempts caps the total (and its default of 3);
# only categories listed in llm_retry_on are retried (a listed one after
# the first, llm_retry_on off); quota_exhausted, auth_error,
# context_length, invalid_request and content_filter never retried on the
# same target but moved to the fallback when listed; the default
# llm_retry_on.  Exact attempt counts at the mock, the $llm_* variables
# and $upstream_status for each.  Happy requests run twice.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%ENGINE%%
    proxy_set_header Connection "";
    proxy_http_version 1.1;

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=5ms;

        location = /weights/v1/chat/completions {
            llm_route weights;
            llm_target /_llm/wa weight=3;
            llm_target /_llm/wz weight=0;
            llm_target /_llm/wb weight=1;
        }

        location = /zero/v1/chat/completions {
            llm_route zero;
            llm_target /_llm/wz weight=0;
            llm_target /_llm/wa tries=2;
            llm_attempts 5;
        }

        location = /tries/v1/chat/completions {
            llm_route tries;
            llm_target /_llm/t tries=2;
            llm_fallback /_llm/fb1;
            llm_fallback /_llm/fb2 tries=2;
            llm_fallback /_llm/fb3;
            llm_attempts 10;
        }

        location = /cap/v1/chat/completions {
            llm_route cap;
            llm_target /_llm/t tries=10;
            llm_fallback /_llm/fb1;
            llm_attempts 3;
        }

        location = /capfb/v1/chat/completions {
            llm_route capfb;
            llm_target /_llm/t;
            llm_fallback /_llm/fb1;
            llm_fallback /_llm/fb2;
            llm_fallback /_llm/fb3;
            llm_attempts 2;
        }

        location = /only/v1/chat/completions {
            llm_route only;
            llm_target /_llm/t tries=3;
            llm_fallback /_llm/fb1;
            llm_retry_on rate_limited;
            llm_attempts 5;
        }

        location = /off/v1/chat/completions {
            llm_route off;
            llm_target /_llm/t tries=3;
            llm_fallback /_llm/fb1;
            llm_retry_on off;
        }

        location = /nosame/v1/chat/completions {
            llm_route nosame;
            llm_target /_llm/t tries=3;
            llm_fallback /_llm/fb1 tries=3;
            llm_retry_on quota_exhausted auth_error context_length
                         invalid_request content_filter;
            llm_attempts 10;
        }

        location = /default/v1/chat/completions {
            llm_route default;
            llm_target /_llm/t tries=5;
            llm_fallback /_llm/fb1;
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
    . '"content":"plan me"}]}';

sub post {
    my ($uri, %h) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { %h }));
}

# the targets the mock saw for a request, by name: "t, t, fb1"
sub seen {
    my ($id) = @_;
    return join ', ', map { (split m{/}, $_->{path})[1] }
                      @{mock_for($t, 'prov', $id)};
}

sub list { join ', ', map { "/_llm/$_" } @_ }

###############################################################################
# weighted pick

{
    my @reqs = map {
        http_request('POST', "/weights/v1/chat/completions?id=wt-$_",
                     body => $REQ, keepalive => 1,
                     headers => [ 'Content-Type' => 'application/json' ])
    } 1 .. 200;

    my ($resps, $open) = http_keepalive(\@reqs, port => $port);
    my @ok = grep { ($_->{status} // 0) == 200 }
             map { parse_response($_) } @$resps;
    is(scalar @ok, 200, 'weights: 200 requests answered');

    $t->wait_for_lines('logs/access.log', 200);

    my %count;
    my %seen;
    for my $m (@{$t->mock_requests('prov')}) {
        next unless ($m->{query} // '') =~ /^id=(wt-\d+)$/;
        my $name = (split m{/}, $m->{path})[1];
        $count{$name}++;
        $seen{$1} .= $name;
    }

    my ($a, $b, $z) = map { $count{$_} // 0 } qw(wa wb wz);
    is($a + $b + $z, 200, 'weights: one attempt per request');
    is($z, 0, 'weights: weight=0 never picked');
    ok($a >= 120 && $a <= 180, "weights: 3:1 split, weight=3 got $a of 200");
    ok($b >= 20 && $b <= 80, "weights: 3:1 split, weight=1 got $b of 200");

    my %logged = map { (split /\|/)[0, 4] }
                 grep { /^wt-/ } split /\n/, $t->read_file('logs/access.log');
    my $agree = grep { defined $logged{$_}
                       && $logged{$_} eq "/_llm/$seen{$_}" } keys %seen;
    is($agree, 200, 'weights: $llm_target is the target the mock got');
}

# weight=0 stays out of the plan even when the picked target fails

for my $i (1 .. 10) {
    my $id = "zero-$i";
    my $r = post("/zero/v1/chat/completions?id=$id", 'X-Case' => '*:500');
    is($r->{status}, 500, "zero weight: the last 500 ($i)");
    is(seen($id), 'wa, wa', "zero weight: only the weighted target ($i)");
}

###############################################################################
# tries=2, then the fallbacks in order

for my $round (1, 2) {
    my $id = "tries-ok-$round";
    my $r = post("/tries/v1/chat/completions?id=$id", 'X-Case' => '1:ok');
    is($r->{status}, 200, "first attempt ok: 200 ($round)");
    ok(!defined $r->{headers}{'x-should-retry'},
       "first attempt ok: no x-should-retry ($round)");
    is(seen($id), 't', "first attempt ok: one request ($round)");

    my $e = log_entry($t, $id);
    is($e->{attempts}, 1, "first attempt ok: \$llm_attempts ($round)");
    is($e->{error}, '-', "first attempt ok: \$llm_error_type ($round)");
    is($e->{decision}, '-', "first attempt ok: \$llm_retry_decision ($round)");
    is($e->{fallback}, 0, "first attempt ok: \$llm_fallback ($round)");
    is($e->{targets}, list('t'), "first attempt ok: targets ($round)");
    is($e->{errors}, '-', "first attempt ok: errors ($round)");
    is($e->{statuses}, '200', "first attempt ok: statuses ($round)");
    is($e->{upstream_status}, '200',
       "first attempt ok: \$upstream_status ($round)");
}

for my $round (1, 2) {
    my $id = "tries-2-$round";
    my $r = post("/tries/v1/chat/completions?id=$id",
                 'X-Case' => '1:500;2:ok');
    is($r->{status}, 200, "retry on the same target: 200 ($round)");
    is($r->{headers}{'x-mock-attempt'}, 2,
       "retry on the same target: second attempt answered ($round)");
    is(seen($id), 't, t', "retry on the same target: mock ($round)");

    my $e = log_entry($t, $id);
    is($e->{targets}, list(qw(t t)), "retry: targets ($round)");
    is($e->{decision}, 'retry', "retry: \$llm_retry_decision ($round)");
    is($e->{fallback}, 0, "retry: \$llm_fallback ($round)");
    is($e->{upstream_status}, '500 : 200', "retry: \$upstream_status ($round)");
}

for my $round (1, 2) {
    my $id = "tries-fb-$round";
    my $r = post("/tries/v1/chat/completions?id=$id",
                 'X-Case' => '1:500;2:503;3:ok');
    is($r->{status}, 200, "tries=2 then fallback: 200 ($round)");
    is($r->{headers}{'x-mock-path'}, '/fb1/v1/chat/completions',
       "tries=2 then fallback: fb1 answered ($round)");
    is(seen($id), 't, t, fb1', "tries=2 then fallback: mock ($round)");

    my $e = log_entry($t, $id);
    is($e->{attempts}, 3, "tries=2 then fallback: \$llm_attempts ($round)");
    is($e->{targets}, list(qw(t t fb1)),
       "tries=2 then fallback: targets ($round)");
    is($e->{statuses}, '500, 503, 200',
       "tries=2 then fallback: statuses ($round)");
    is($e->{errors}, 'server_error, overloaded, -',
       "tries=2 then fallback: errors ($round)");
    is($e->{decision}, 'fallback',
       "tries=2 then fallback: \$llm_retry_decision ($round)");
    is($e->{fallback}, 1, "tries=2 then fallback: \$llm_fallback ($round)");
    is($e->{target}, '/_llm/fb1', "tries=2 then fallback: \$llm_target ($round)");
    is($e->{upstream_status}, '500 : 503 : 200',
       "tries=2 then fallback: \$upstream_status ($round)");
}

for my $round (1, 2) {
    my $id = "tries-order-$round";
    my $r = post("/tries/v1/chat/completions?id=$id",
                 'X-Case' => '1:500;2:500;3:rl;4:529;5:ok');
    is($r->{status}, 200, "fallbacks in order: 200 ($round)");
    is(seen($id), 't, t, fb1, fb2, fb2', "fallbacks in order: mock ($round)");

    my $e = log_entry($t, $id);
    is($e->{targets}, list(qw(t t fb1 fb2 fb2)),
       "fallbacks in order: targets ($round)");
    is($e->{errors},
       'server_error, server_error, rate_limited, overloaded, -',
       "fallbacks in order: errors ($round)");
    is($e->{decision}, 'retry',
       "fallbacks in order: retry on the fallback's tries=2 ($round)");
    is($e->{fallback}, 1, "fallbacks in order: \$llm_fallback ($round)");
}

{
    my $id = 'tries-all';
    my $r = post("/tries/v1/chat/completions?id=$id", 'X-Case' => '*:500');
    is($r->{status}, 500, 'whole plan failed: the last 500');
    is($r->{headers}{'x-should-retry'}, 'false',
       'whole plan failed: x-should-retry');
    is($r->{headers}{'x-mock-path'}, '/fb3/v1/chat/completions',
       'whole plan failed: the last target answered');
    is(seen($id), 't, t, fb1, fb2, fb2, fb3', 'whole plan failed: mock');

    my $e = log_entry($t, $id);
    is($e->{attempts}, 6, 'whole plan failed: $llm_attempts');
    is($e->{decision}, 'attempts_exhausted',
       'whole plan failed: $llm_retry_decision');
    is($e->{error}, 'server_error', 'whole plan failed: $llm_error_type');
}

###############################################################################
# llm_attempts

{
    my $id = 'cap';
    my $r = post("/cap/v1/chat/completions?id=$id", 'X-Case' => '*:500');
    is($r->{status}, 500, 'llm_attempts 3: the last 500');
    is($r->{headers}{'x-mock-attempt'}, 3, 'llm_attempts 3: third answer');
    is($r->{headers}{'x-should-retry'}, 'false',
       'llm_attempts 3: x-should-retry');
    is(seen($id), 't, t, t', 'llm_attempts 3: three requests, no fallback');

    my $e = log_entry($t, $id);
    is($e->{statuses}, '500, 500, 500', 'llm_attempts 3: statuses');
    is($e->{decision}, 'attempts_exhausted', 'llm_attempts 3: decision');
}

{
    my $id = 'capfb';
    my $r = post("/capfb/v1/chat/completions?id=$id", 'X-Case' => '*:503');
    is($r->{status}, 503, 'llm_attempts 2 over fallbacks: the last 503');
    is(seen($id), 't, fb1', 'llm_attempts 2 over fallbacks: two requests');
    is(log_entry($t, $id)->{decision}, 'attempts_exhausted',
       'llm_attempts 2 over fallbacks: decision');
}

{
    my $id = 'default-cap';
    my $r = post("/default/v1/chat/completions?id=$id", 'X-Case' => '*:500');
    is($r->{status}, 500, 'default llm_attempts: the last 500');
    is(seen($id), 't, t, t', 'default llm_attempts: 3 requests');
}

###############################################################################
# llm_retry_on

{
    my $id = 'only-500';
    my $r = post("/only/v1/chat/completions?id=$id", 'X-Case' => '1:500');
    is($r->{status}, 500, 'not listed: the 500 passed');
    is($r->{body}, error_body('500'), 'not listed: its body');
    ok(!defined $r->{headers}{'x-should-retry'},
       'not listed: no x-should-retry, nothing retried');
    is(seen($id), 't', 'not listed: one request');

    my $e = log_entry($t, $id);
    is($e->{decision}, 'not_retryable', 'not listed: decision');
    is($e->{error}, 'server_error', 'not listed: $llm_error_type');
}

for my $round (1, 2) {
    my $id = "only-rl-$round";
    my $r = post("/only/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl;2:rl;3:rl;4:ok');
    is($r->{status}, 200, "listed: retried, then fallback ($round)");
    is(seen($id), 't, t, t, fb1', "listed: tries=3 then fallback ($round)");
}

{
    my $id = 'only-rl-500';
    my $r = post("/only/v1/chat/completions?id=$id",
                 'X-Case' => '1:rl;2:500');
    is($r->{status}, 500, 'listed, then not listed: the 500');
    is($r->{headers}{'x-should-retry'}, 'false',
       'listed, then not listed: x-should-retry (a retry was spent)');
    is(seen($id), 't, t', 'listed, then not listed: two requests');

    my $e = log_entry($t, $id);
    is($e->{errors}, 'rate_limited, server_error',
       'listed, then not listed: errors');
    is($e->{decision}, 'not_retryable', 'listed, then not listed: decision');
}

{
    my $id = 'off';
    my $r = post("/off/v1/chat/completions?id=$id", 'X-Case' => '1:rl+ra=0');
    is($r->{status}, 429, 'llm_retry_on off: the 429 passed');
    is($r->{headers}{'retry-after'}, '0', 'llm_retry_on off: Retry-After');
    is(seen($id), 't', 'llm_retry_on off: one request');
    is(log_entry($t, $id)->{decision}, 'not_retryable',
       'llm_retry_on off: decision');
}

# never the same target again, the fallback when listed

for my $kind (qw(quota 401 403 ctx anth_ctx 404 422 filter)) {
    my $id = "nosame-$kind";
    my $r = post("/nosame/v1/chat/completions?id=$id", 'X-Case' => "*:$kind");
    my $want = action_response($kind)->{status};

    is($r->{status}, $want, "$kind: the fallback's answer");
    is($r->{headers}{'x-mock-path'}, '/fb1/v1/chat/completions',
       "$kind: from the fallback");
    is($r->{headers}{'x-should-retry'}, 'false', "$kind: x-should-retry");
    is(seen($id), 't, fb1', "$kind: no retry on the same target");
    is(log_entry($t, $id)->{decision}, 'attempts_exhausted',
       "$kind: decision");
}

for my $round (1, 2) {
    my $id = "nosame-ok-$round";
    my $r = post("/nosame/v1/chat/completions?id=$id",
                 'X-Case' => '1:quota;2:ok');
    is($r->{status}, 200, "quota, then the fallback: 200 ($round)");
    is(seen($id), 't, fb1', "quota, then the fallback: mock ($round)");
}

# the default llm_retry_on: connect_error timeout rate_limited overloaded
# server_error

for my $kind (qw(401 quota ctx 404)) {
    my $id = "default-$kind";
    my $r = post("/default/v1/chat/completions?id=$id", 'X-Case' => "1:$kind");
    is($r->{status}, action_response($kind)->{status},
       "default llm_retry_on, $kind: passed");
    is(seen($id), 't', "default llm_retry_on, $kind: not retried");
    is(log_entry($t, $id)->{decision}, 'not_retryable',
       "default llm_retry_on, $kind: decision");
}

for my $kind (qw(rl 503 529 500 502 504 reset)) {
    my $id = "default-r-$kind";
    my $r = post("/default/v1/chat/completions?id=$id",
                 'X-Case' => "1:$kind;2:ok");
    is($r->{status}, 200, "default llm_retry_on, $kind: retried");
    is(seen($id), 't, t', "default llm_retry_on, $kind: two requests");
}

done_testing;
