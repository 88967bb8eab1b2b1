#!/usr/bin/perl

# Target cooldowns in the shared zone (docs/design.md sections 2-3, the
# node's own half of section 4; issue 5).
# Covers: a 429 with a Retry-After longer than llm_backoff max cools the
# target for that long in every worker (requests go straight to the
# fallback, recorded as skipped), and it is tried again afterwards;
# repeated failures (llm_cooldown fails= window= time=) cool a target;
# errors of the request itself (400) do not; every target cooling gives
# a 503 from the gateway with a Retry-After and no attempt; a cooldown
# survives a reload; llm_cooldown off.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP;
use Time::HiRes qw(sleep);

my $t = Test::LLM->new;

my $conf = <<'EOF';
worker_processes 2;

events {}

http {
    %%ENGINE%%
    proxy_set_header Connection "";
    proxy_http_version 1.1;

    llm_zone llm:1m;

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=100ms;

        location = /ra/v1/chat/completions {
            llm_route ra;
            llm_target /_llm/ra;
            llm_fallback /_llm/spare;
            llm_cooldown off;
        }

        location = /fails/v1/chat/completions {
            llm_route fails;
            llm_target /_llm/flaky;
            llm_fallback /_llm/spare;
            llm_cooldown fails=3 window=10s time=1s;
        }

        # inherited as a whole: window= takes its default (10s) here
        location /inh/ {
            llm_cooldown fails=2 time=1s;

            location = /inh/v1/chat/completions {
                llm_route inh;
                llm_target /_llm/inherit;
                llm_fallback /_llm/spare;
            }
        }

        location = /req/v1/chat/completions {
            llm_route req;
            llm_target /_llm/picky;
            llm_fallback /_llm/spare;
            llm_retry_on invalid_request;
            llm_cooldown fails=2 window=10s time=10s;
        }

        location = /alone/v1/chat/completions {
            llm_route alone;
            llm_target /_llm/alone;
        }

        location = /off/v1/chat/completions {
            llm_route off;
            llm_target /_llm/off;
            llm_fallback /_llm/spare;
            llm_cooldown off;
        }

        location = /status {
            llm_status;
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
    . '"content":"cool me"}]}';

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

# requests on fresh connections, so both workers take some
sub spread {
    my ($path, $n, $prefix, %h) = @_;
    my @r;

    for my $i (1 .. $n) {
        push @r, parse_response(http_post("$path?id=$prefix-$i", $REQ,
                                          port => $port,
                                          headers => { %h }));
    }

    return @r;
}

###############################################################################
# a Retry-After longer than the backoff max: cooled for that long

my $r = post('/ra/v1/chat/completions?id=ra-1', 'X-Case' => '1:rl+ra=2');
my $e = log_entry($t, 'ra-1');

is($r->{status}, 200, 'Retry-After 2s: the fallback answers');
is($e->{errors}, 'rate_limited, -', 'Retry-After 2s: first attempt');
like($t->read_file('logs/error.log'),
     qr/\[warn\].*llm target "\/_llm\/ra" cooling down for 2000 ms after rate_limited/,
     'Retry-After 2s: cooldown logged');

my @r = spread('/ra/v1/chat/completions', 10, 'ra-cool', 'X-Case' => '*:ok');

is(scalar(grep { $_->{status} == 200 } @r), 10, 'cooling: all answered');
is(at_mock('ra'), 1, 'cooling: no worker sent to the target');
is(at_mock('spare'), 11, 'cooling: straight to the fallback');

$e = log_entry($t, 'ra-cool-10');
is($e->{targets}, '/_llm/ra, /_llm/spare', 'cooling: lists the target');
is($e->{statuses}, '-, 200', 'cooling: no status for it');
is($e->{errors}, 'skipped, -', 'cooling: recorded as skipped');
is($e->{attempts}, 1, 'cooling: one attempt made');

sleep 2.2;

$r = post('/ra/v1/chat/completions?id=ra-again', 'X-Case' => '*:ok');
is(at_mock('ra'), 2, 'after the Retry-After: the target is tried again');
is(log_entry($t, 'ra-again')->{targets}, '/_llm/ra',
   'after the Retry-After: it answers');

###############################################################################
# repeated failures: fails=3 in 10s cool the target for 1s

spread('/fails/v1/chat/completions', 3, 'fl', 'X-Case' => '1:500');
is(at_mock('flaky'), 3, 'failures: three attempts failed');

spread('/fails/v1/chat/completions', 5, 'fl-cool', 'X-Case' => '1:500');
is(at_mock('flaky'), 3, 'failures: then skipped by every worker');

sleep 1.2;

spread('/fails/v1/chat/completions', 1, 'fl-back', 'X-Case' => '*:ok');
is(at_mock('flaky'), 4, 'failures: tried again after time=');

###############################################################################
# an llm_cooldown of the enclosing location, its window= the default

spread('/inh/v1/chat/completions', 2, 'inh', 'X-Case' => '1:500');
spread('/inh/v1/chat/completions', 3, 'inh-cool', 'X-Case' => '1:500');
is(at_mock('inherit'), 2, 'inherited: fails=2 of the enclosing location');

sleep 1.2;

spread('/inh/v1/chat/completions', 1, 'inh-back', 'X-Case' => '*:ok');
is(at_mock('inherit'), 3, 'inherited: its time=1s');

###############################################################################
# the request's own errors say nothing of the target

spread('/req/v1/chat/completions', 4, 'rq', 'X-Case' => '1:404');
is(at_mock('picky'), 4, 'request errors: the target is not cooled');

###############################################################################
# every target cooling: 503 from the gateway, no attempt

post('/alone/v1/chat/completions?id=alone-1', 'X-Case' => '1:529+ra=5');
my $before = at_mock('alone');

$r = post('/alone/v1/chat/completions?id=alone-2', 'X-Case' => '*:ok');
$e = log_entry($t, 'alone-2');

is($r->{status}, 503, 'all cooling: 503');
like($r->{body}, qr/"code":"targets_cooling_down"/, 'all cooling: JSON');
ok(($r->{headers}{'retry-after'} // 0) >= 4
   && ($r->{headers}{'retry-after'} // 0) <= 5,
   'all cooling: Retry-After of the soonest end ('
   . ($r->{headers}{'retry-after'} // '-') . ')');
is(at_mock('alone'), $before, 'all cooling: no attempt');

my $status = decode_json(parse_response(http_get('/status', port => $port))
                         ->{body});
is($status->{routes}{alone}{requests}, 2,
   'all cooling: the refused request is counted as a route request');
is($status->{targets}{'/_llm/alone'}{skipped}, 1,
   'all cooling: the target shows it skipped');
is($e->{attempts}, 0, 'all cooling: $llm_attempts 0');
is($e->{errors}, 'skipped', 'all cooling: skipped');

###############################################################################
# a cooldown survives a reload

ok($t->reload, 'reload');

$r = post('/alone/v1/chat/completions?id=alone-3', 'X-Case' => '*:ok');
is($r->{status}, 503, 'after reload: still cooling');

###############################################################################
# llm_cooldown off: repeated failures cool nothing (Retry-After still does)

spread('/off/v1/chat/completions', 7, 'off', 'X-Case' => '1:500');
is(at_mock('off'), 7, 'cooldown off: every request tries the target');

done_testing;
