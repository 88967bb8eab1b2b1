#!/usr/bin/perl

# Attempt engine and nginx's own proxy_next_upstream (docs/directives.md,
# "proxy_next_upstream inside a target"): nginx still moves between the
# servers of a target's upstream block within one llm attempt, but only
# while the request has not reached a server, since attempts are POSTs.
# Covers: a first server that refuses the connection, then one that
# answers: one llm attempt, $upstream_status lists both; a server that
# resets the connection after reading the request: nginx does not re-send
# it (one request there, none at the next server), the llm attempt fails
# as server_error and only the module's own retry (tries=2) sends it
# again, counted in $llm_attempts; with proxy_next_upstream
# non_idempotent nginx re-sends it itself, uncounted (why the docs say to
# keep it out of targets).  Happy requests run twice.

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

    upstream two {
        # nothing listens there; never marked down
        server 127.0.0.1:%%PORT_8083%% max_fails=0;
        server 127.0.0.1:%%PORT_8081%% backup;
    }

    upstream rst {
        server 127.0.0.1:%%PORT_8082%% max_fails=0;
        server 127.0.0.1:%%PORT_8081%% backup;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=5ms;

        location = /two/v1/chat/completions {
            llm_route two;
            llm_target /_llm/two;
        }

        location = /rst/v1/chat/completions {
            llm_route rst;
            llm_target /_llm/rst;
        }

        location = /rstretry/v1/chat/completions {
            llm_route rstretry;
            llm_target /_llm/rst tries=2;
        }

        location = /rstni/v1/chat/completions {
            llm_route rstni;
            llm_target /_llm/rstni;
        }

        location /_llm/two {
            internal;
            proxy_pass http://two/v1/chat/completions;
        }

        location /_llm/rst {
            internal;
            proxy_pass http://rst/v1/chat/completions;
        }

        location /_llm/rstni {
            internal;
            proxy_pass http://rst/v1/chat/completions;
            proxy_next_upstream error timeout non_idempotent;
        }
    }
}
EOF

my $port = engine_run($t, $conf, mocks => [
    ok  => 8081,
    rst => [ 8082, sub { $_[1]->reset; return } ],
]);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"next upstream"}]}';

sub post {
    my ($uri) = @_;
    return parse_response(http_post($uri, $REQ, port => $port));
}

sub count { scalar @{mock_for($t, $_[0], $_[1])} }

###############################################################################
# refused, then the next server: one llm attempt

for my $round (1, 2) {
    my $id = "two-$round";
    my $r = post("/two/v1/chat/completions?id=$id");
    is($r->{status}, 200, "refused, next server: 200 ($round)");
    is($r->{body}, completion_body(), "refused, next server: body ($round)");
    is(count('ok', $id), 1, "refused, next server: one request ($round)");

    my $e = log_entry($t, $id);
    is($e->{upstream_status}, '502, 200',
       "refused, next server: \$upstream_status lists both ($round)");
    is($e->{attempts}, 1,
       "refused, next server: one llm attempt ($round)");
    is($e->{statuses}, '200', "refused, next server: its status ($round)");
    is($e->{errors}, '-', "refused, next server: no error ($round)");
    is($e->{decision}, '-', "refused, next server: no decision ($round)");
}

###############################################################################
# reset after the request was sent: no re-send by nginx

{
    my $id = 'rst';
    my $r = post("/rst/v1/chat/completions?id=$id");
    is($r->{status}, 502, "reset after the request: nginx's 502");
    is(count('rst', $id), 1, 'reset after the request: one request there');
    is(count('ok', $id), 0, 'reset after the request: not re-sent');

    my $e = log_entry($t, $id);
    is($e->{upstream_status}, '502', 'reset after the request: $upstream_status');
    is($e->{attempts}, 1, 'reset after the request: one llm attempt');
    is($e->{errors}, 'server_error', 'reset after the request: server_error');
}

{
    my $id = 'rstretry';
    my $r = post("/rstretry/v1/chat/completions?id=$id");
    is($r->{status}, 502, 'reset, module retry: 502');
    is($r->{headers}{'x-should-retry'}, 'false',
       'reset, module retry: x-should-retry');
    is(count('rst', $id), 2, 'reset, module retry: sent once per attempt');
    is(count('ok', $id), 0, 'reset, module retry: never to the next server');

    my $e = log_entry($t, $id);
    is($e->{attempts}, 2, 'reset, module retry: two llm attempts');
    is($e->{upstream_status}, '502 : 502',
       'reset, module retry: $upstream_status, attempts apart');
    is($e->{errors}, 'server_error, server_error',
       'reset, module retry: errors');
}

{
    my $id = 'rstni';
    my $r = post("/rstni/v1/chat/completions?id=$id");
    is($r->{status}, 200, 'non_idempotent: nginx re-sent it, 200');
    is(count('rst', $id), 1, 'non_idempotent: one request at the first');
    is(count('ok', $id), 1, 'non_idempotent: re-sent to the next server');

    my $e = log_entry($t, $id);
    is($e->{attempts}, 1, 'non_idempotent: not counted as an llm attempt');
    is($e->{upstream_status}, '502, 200', 'non_idempotent: $upstream_status');
}

done_testing;
