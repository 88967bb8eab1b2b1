#!/usr/bin/perl

# Nothing secret in a line the module writes (docs/design.md section 5, issue 7 item 3).
# Canaries in the query string (?key=), the Authorization, x-api-key and
# api-key headers, the prompt and the completion; requests that make the
# module write at every level it uses: a bad body (info), a retry and a
# fallback (info), a final failure (error), a cooldown (warn), every
# target cooling (warn), a stream cut (error).  nginx core's own lines
# print the request line with its query string (an upstream error at
# "error", every header at "debug"): documented in docs/logging.md, not
# the module's to change.  So at both levels, the module's own lines
# (those that start with "llm") and the access log (the module's
# variables, a format without $request) and the status page (JSON and
# Prometheus) are checked for every canary.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my @CANARY = ('CANARY-qs-4a1f', 'CANARY-bearer-9c2e', 'CANARY-xapikey-77d0',
              'CANARY-apikey-1b3c', 'CANARY-prompt-5e6f',
              'CANARY-completion-8a9b');

for my $level ('info', 'debug') {
    my $t = Test::LLM->new(log_level => $level);

    $t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format safe '$uri $status $llm_route $llm_model $llm_attempts '
                    '$llm_retry_decision $llm_attempt_errors';
    access_log %%TESTDIR%%/logs/access.log safe;

    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/provider tries=2;
            llm_fallback /_llm/provider;
            llm_backoff base=1ms max=5ms;
            llm_cooldown fails=4 window=10s time=10s;
        }

        location = /status {
            llm_status;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/x;
            proxy_set_header X-Attempt $llm_attempts;
        }
    }
}
EOF

    $t->run_mock_provider(port => $t->port(8081), name => 'provider',
                          handler => sub {
        my ($req, $conn) = @_;
        my $case = $req->{headers}{'x-case'} // 'ok';

        if ($case eq 'fail') {
            return { status => 503, headers => [ 'Content-Type' =>
                                                 'application/json' ],
                     body => '{"error":{"message":"' . $CANARY[5]
                             . '","type":"server_error"}}' };
        }

        if ($case eq 'cut') {
            $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                                    'Transfer-Encoding' => 'chunked' ]);
            $conn->send_chunk('data: {"object":"chat.completion.chunk",'
                              . '"choices":[{"delta":{"content":"'
                              . $CANARY[5] . '"}}]}' . "\n\n");
            return $conn->close;
        }

        return { status => 200, headers => [ 'Content-Type' =>
                                             'application/json' ],
                 body => '{"object":"chat.completion","choices":[{"message":'
                         . '{"content":"' . $CANARY[5] . '"}}]}' };
    });

    $t->run;

    my $port = $t->port(8080);

    my %h = ('Authorization' => "Bearer $CANARY[1]",
             'x-api-key' => $CANARY[2], 'api-key' => $CANARY[3]);
    my $body = qq({"model":"gpt-4o","messages":[{"role":"user","content":)
        . qq("$CANARY[4]"}]});

    my $uri = "/v1/chat/completions?key=$CANARY[0]";

    my @r = (
        http_post($uri, $body, port => $port, headers => { %h }),
        http_post($uri, qq({"model":"x","messages":["$CANARY[4]"),
                  port => $port, headers => { %h }),
        http_post($uri, $body, port => $port,
                  headers => { %h, 'X-Case' => 'cut' }),
        map({ http_post($uri, $body, port => $port,
                        headers => { %h, 'X-Case' => 'fail' }) } 1 .. 3),
        http_post($uri, $body, port => $port, headers => { %h }),
    );

    # the last finds the target cooling down after the failures
    my @status = map { parse_response($_)->{status} } @r;
    is("@status", '200 400 200 503 503 503 503',
       "$level: the requests got their answers");

    $t->wait_for_lines('logs/access.log', 7);
    my $errors = $t->read_file('logs/error.log');

    like($errors, qr/\[info\].*llm route "chat": bad request body/,
         "$level: a bad body was logged");
    like($errors, qr/\[warn\].*llm target "\/_llm\/provider" cooling down/,
         "$level: a cooldown was logged");
    like($errors, qr/\[warn\].*every target is cooling down/,
         "$level: all cooling was logged");
    like($errors, qr/\[info\].*llm route "chat": .* failed with overloaded, retry/,
         "$level: a retry was logged");
    like($errors, qr/\[error\].*llm route "chat": answer of target .* ended prematurely/,
         "$level: a cut stream was logged");
    like($errors, qr/, client: 127\.0\.0\.1, server: , uri: "\/v1\/chat\/completions"$/m,
         "$level: module lines name the URI path, not the query string");

    my @ours = grep { /\] \d+#\d+: (?:\*\d+ )?llm / } split /\n/, $errors;
    ok(@ours > 5, "$level: " . scalar(@ours) . ' lines of the module');

    my $access = $t->read_file('logs/access.log');
    my $status = parse_response(http_get('/status', port => $port))->{body}
        . parse_response(http_get('/status?format=prometheus',
                                  port => $port))->{body};

    like($status, qr/"chat"/, "$level: the status page lists the route");

    for my $c (@CANARY) {
        my @bad = grep { index($_, $c) >= 0 } @ours;
        is(scalar @bad, 0, "$level: no $c in the module's lines")
            or diag(join "\n", @bad);
        ok(index($access, $c) < 0, "$level: no $c in the access log");
        ok(index($status, $c) < 0, "$level: no $c on the status page");
    }

    $t->stop;
}

done_testing;
