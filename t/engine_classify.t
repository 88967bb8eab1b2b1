#!/usr/bin/perl

# Attempt engine (docs/design.md section 2): the error category of a failed attempt, seen
# through real nginx.  The route lists every category in llm_retry_on and
# has an llm_fallback that answers 200, so the first attempt's category
# shows in $llm_attempt_errors while the client gets the fallback's 200.
# Covers: 429 rate_limit_exceeded vs 429 insufficient_quota (and the
# Anthropic rate_limit_error, 402); 529, Anthropic overloaded_error (on a
# 529 and on a 500, where the body decides); 503; 500; 502 from the
# provider vs nginx's 502 for a refused connection; 504 from the provider
# vs a proxy read timeout; 400 context_length_exceeded and Anthropic's
# "prompt is too long"; 401, 403; 404 model not found; 422; content
# filter; a reset after connect before the response header.  Then the
# category of a final answer with llm_retry_on off ($llm_error_type,
# $llm_retry_decision not_retryable, the answer passed to the client).
# Every case runs twice.

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

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_retry_on connect_error timeout rate_limited quota_exhausted
                     overloaded server_error auth_error invalid_request
                     context_length content_filter;
        llm_backoff base=1ms max=10ms;

        location = /v1/chat/completions {
            llm_route classify;
            llm_target /_llm/primary;
            llm_fallback /_llm/backup;
        }

        location = /refused/v1/chat/completions {
            llm_route refused;
            llm_target /_llm/refused;
            llm_fallback /_llm/backup;
        }

        location = /slow/v1/chat/completions {
            llm_route slow;
            llm_target /_llm/slow;
            llm_fallback /_llm/backup;
        }

        location = /final/v1/chat/completions {
            llm_route final;
            llm_target /_llm/primary tries=3;
            llm_fallback /_llm/backup;
            llm_retry_on off;
        }

        location /_llm/primary {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }

        location /_llm/slow {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
            proxy_read_timeout 500ms;
        }

        location /_llm/refused {
            internal;
            # nothing listens there: the harness only reserved the port
            proxy_pass http://127.0.0.1:%%PORT_8083%%/v1/chat/completions;
        }

        location /_llm/backup {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8082%%/backup/v1/chat/completions;
        }
    }
}
EOF

my $port = engine_run($t, $conf,
           mocks => [ primary => 8081, backup => 8082 ]);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"classify me"}]}';

sub post {
    my ($uri, %h) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    headers => { %h }));
}

###############################################################################
# first attempt fails with the category, the fallback answers

# [ action at the primary, route prefix, category, attempt status ]
my @cases = (
    [ 'rl',          '',        'rate_limited',    429 ],
    [ 'anth_rl',     '',        'rate_limited',    429 ],
    [ 'quota',       '',        'quota_exhausted', 429 ],
    [ '402',         '',        'quota_exhausted', 402 ],
    [ '529',         '',        'overloaded',      529 ],
    [ 'anth_ovl',    '',        'overloaded',      529 ],
    [ 'anth_ovl500', '',        'overloaded',      500 ],
    [ '503',         '',        'overloaded',      503 ],
    [ '500',         '',        'server_error',    500 ],
    [ '502',         '',        'server_error',    502 ],
    [ 'refused',     '/refused', 'connect_error',  502 ],
    [ '504',         '',        'server_error',    504 ],
    [ 'stall+stall=2', '/slow', 'timeout',         504 ],
    [ 'ctx',         '',        'context_length',  400 ],
    [ 'anth_ctx',    '',        'context_length',  400 ],
    [ '401',         '',        'auth_error',      401 ],
    [ '403',         '',        'auth_error',      403 ],
    [ '404',         '',        'invalid_request', 404 ],
    [ '422',         '',        'invalid_request', 422 ],
    [ 'filter',      '',        'content_filter',  400 ],
    [ 'reset',       '',        'server_error',    502 ],
);

my $ok_body = completion_body();

for my $case (@cases) {
    my ($action, $prefix, $category, $status) = @$case;
    (my $name = $action) =~ s/\+.*//;
    my $route = $prefix ? substr($prefix, 1) : 'classify';
    my $first = $prefix eq '/refused' ? '/_llm/refused'
        : $prefix eq '/slow' ? '/_llm/slow' : '/_llm/primary';

    for my $round (1, 2) {
        my $id = "c-$name-$round";
        my $r = post("$prefix/v1/chat/completions?id=$id",
                     'X-Case' => "1:$action");

        is($r->{status}, 200, "$name: the fallback's 200 ($round)");
        is($r->{body}, $ok_body, "$name: the fallback's body ($round)");
        is($r->{headers}{'x-mock-path'}, '/backup/v1/chat/completions',
           "$name: answered by the fallback ($round)");
        ok(!defined $r->{headers}{'x-should-retry'},
           "$name: no x-should-retry on a success ($round)");

        my $e = log_entry($t, $id);
        is($e->{errors}, "$category, -",
           "$name: \$llm_attempt_errors ($round)");
        is($e->{statuses}, "$status, 200",
           "$name: \$llm_attempt_statuses ($round)");
        is($e->{targets}, "$first, /_llm/backup",
           "$name: \$llm_attempt_targets ($round)");
        is($e->{attempts}, 2, "$name: \$llm_attempts ($round)");
        is($e->{error}, '-', "$name: \$llm_error_type of the last ($round)");
        is($e->{decision}, 'fallback',
           "$name: \$llm_retry_decision ($round)");
        is($e->{fallback}, 1, "$name: \$llm_fallback ($round)");
        is($e->{target}, '/_llm/backup', "$name: \$llm_target ($round)");
        is($e->{route}, $route, "$name: \$llm_route ($round)");
        is($e->{status}, 200, "$name: logged status ($round)");

        my $want = $name eq 'refused' ? 0 : 1;
        is(scalar @{mock_for($t, 'primary', $id)}, $want,
           "$name: requests at the first target ($round)");
        is(scalar @{mock_for($t, 'backup', $id)}, 1,
           "$name: requests at the fallback ($round)");
    }
}

# the proxy read timeout took its time, the refused connection did not

{
    my $e = log_entry($t, 'c-stall-1');
    my ($first) = split /, /, $e->{times} // '';
    ok(defined $first && $first >= 0.45 && $first < 1.5,
       "timeout: first attempt took proxy_read_timeout ($first)");

    $e = log_entry($t, 'c-refused-1');
    ($first) = split /, /, $e->{times} // '';
    ok(defined $first && $first < 0.3,
       "connect_error: first attempt took no time ($first)");
}

###############################################################################
# the category of a final answer: llm_retry_on off

my @final = (
    [ 'quota', 'quota_exhausted', 429 ],
    [ 'rl',    'rate_limited',    429 ],
    [ '500',   'server_error',    500 ],
    [ 'ctx',   'context_length',  400 ],
    [ '401',   'auth_error',      401 ],
);

for my $case (@final) {
    my ($action, $category, $status) = @$case;

    for my $round (1, 2) {
        my $id = "f-$action-$round";
        my $r = post("/final/v1/chat/completions?id=$id",
                     'X-Case' => "*:$action");

        is($r->{status}, $status, "final $action: status ($round)");
        is($r->{body}, error_body($action),
           "final $action: provider's body ($round)");
        ok(!defined $r->{headers}{'x-should-retry'},
           "final $action: no x-should-retry, nothing retried ($round)");

        my $e = log_entry($t, $id);
        is($e->{error}, $category, "final $action: \$llm_error_type ($round)");
        is($e->{errors}, $category,
           "final $action: \$llm_attempt_errors ($round)");
        is($e->{decision}, 'not_retryable',
           "final $action: \$llm_retry_decision ($round)");
        is($e->{attempts}, 1, "final $action: one attempt ($round)");
        is(scalar @{mock_for($t, 'primary', $id)}, 1,
           "final $action: one request at the target ($round)");
        is(scalar @{mock_for($t, 'backup', $id)}, 0,
           "final $action: none at the fallback ($round)");
    }
}

done_testing;
