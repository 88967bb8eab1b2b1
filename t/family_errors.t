#!/usr/bin/perl

# The gateway's own answers keep the route's endpoint family contract
# (docs/directives.md, "Errors of the gateway"): a broken body (400),
# every target cooling down (503), no provider answered (502) or in time
# (504) are Anthropic-shaped on a messages route, OpenAI-shaped on chat
# and responses routes, always JSON, never nginx's HTML page.  An
# error_page for the status in the route's location still takes over.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    llm_zone llm:1m;

    proxy_set_header X-Attempt $llm_attempts;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;
        llm_cooldown off;

        location = /refused/v1/chat/completions {
            llm_route chat_refused;
            llm_target /_llm/refused;
        }

        location = /slow/v1/chat/completions {
            llm_route chat_slow;
            llm_target /_llm/slow;
        }

        location = /cool/v1/chat/completions {
            llm_route chat_cool;
            llm_target /_llm/cool;
            llm_cooldown fails=1 window=10s time=60s;
        }

        location = /refused/v1/responses {
            llm_route resp_refused;
            llm_target /_llm/refused;
        }

        location = /slow/v1/responses {
            llm_route resp_slow;
            llm_target /_llm/slow;
        }

        location = /cool/v1/responses {
            llm_route resp_cool;
            llm_target /_llm/cool/2;
            llm_cooldown fails=1 window=10s time=60s;
        }

        location = /refused/v1/messages {
            llm_route msg_refused;
            llm_target /_llm/refused;
        }

        location = /slow/v1/messages {
            llm_route msg_slow;
            llm_target /_llm/slow;
        }

        location = /cool/v1/messages {
            llm_route msg_cool;
            llm_target /_llm/cool/3;
            llm_cooldown fails=1 window=10s time=60s;
        }

        location = /paged/v1/messages {
            llm_route msg_paged;
            llm_target /_llm/refused;
            error_page 502 /err502.json;
        }

        location = /err502.json {
            internal;
            default_type application/json;
            return 502 '{"page":"operator"}';
        }

        location /_llm/refused {
            internal;
            # nothing listens there: the harness only reserved the port
            proxy_pass http://127.0.0.1:%%PORT_8083%%/v1/x;
        }

        location /_llm/cool {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8083%%/v1/x;
        }

        location /_llm/slow {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/slow;
            proxy_read_timeout 300ms;
        }
    }
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'prov',
                      handler => \&scripted);
$t->run;

my $port = $t->port(8080);

my $BODY = '{"model":"m","max_tokens":5,"messages":[{"role":"user",'
    . '"content":"the end"}]}';

sub post {
    my ($uri, $body, %h) = @_;
    return parse_response(http_post($uri, $body // $BODY, port => $port,
                                    headers => { %h }, timeout => 10));
}

# an OpenAI error object (chat, responses); an Anthropic one (messages)
sub openai_error {
    my ($r, $status, $type, $code, $name) = @_;
    is($r->{status}, $status, "$name: status");
    is($r->{headers}{'content-type'}, 'application/json',
       "$name: Content-Type");
    like($r->{body}, qr/^\{"error":\{"message":"[^"]+","type":"\Q$type\E",
                        "param":null,"code":"\Q$code\E"\}\}\n\z/x,
         "$name: OpenAI error object") or diag($r->{body});
    is($r->{headers}{'content-length'}, length $r->{body},
       "$name: Content-Length");
}

sub anthropic_error {
    my ($r, $status, $type, $name) = @_;
    is($r->{status}, $status, "$name: status");
    is($r->{headers}{'content-type'}, 'application/json',
       "$name: Content-Type");
    like($r->{body}, qr/^\{"type":"error","error":\{"type":"\Q$type\E",
                        "message":"[^"]+"\}\}\n\z/x,
         "$name: Anthropic error object") or diag($r->{body});
    unlike($r->{body}, qr/"code"|<html/i, "$name: nothing of OpenAI's");
}

for my $round (1, 2) {

    # 400: a body that is no JSON
    openai_error(post('/refused/v1/chat/completions', '{"model":'),
                 400, 'invalid_request_error', 'invalid_json',
                 "chat broken body ($round)");
    openai_error(post('/refused/v1/responses', '{"model":'),
                 400, 'invalid_request_error', 'invalid_json',
                 "responses broken body ($round)");
    anthropic_error(post('/refused/v1/messages', '{"model":'),
                    400, 'invalid_request_error',
                    "messages broken body ($round)");

    # 504: the provider did not answer in time
    openai_error(post('/slow/v1/chat/completions', undef,
                      'X-Case' => '*:stall+stall=2'),
                 504, 'server_error', 'gateway_timeout',
                 "chat timeout ($round)");
    openai_error(post('/slow/v1/responses', undef,
                      'X-Case' => '*:stall+stall=2'),
                 504, 'server_error', 'gateway_timeout',
                 "responses timeout ($round)");
    anthropic_error(post('/slow/v1/messages', undef,
                         'X-Case' => '*:stall+stall=2'),
                    504, 'api_error', "messages timeout ($round)");
}

# 502, then 503: the first refusal puts the target in cooldown

openai_error(post('/cool/v1/chat/completions'), 502, 'server_error',
             'bad_gateway', 'chat refused');
my $r = post('/cool/v1/chat/completions');
openai_error($r, 503, 'server_error', 'targets_cooling_down',
             'chat cooling');
like($r->{headers}{'retry-after'}, qr/^\d+$/, 'chat cooling: Retry-After');

openai_error(post('/cool/v1/responses'), 502, 'server_error',
             'bad_gateway', 'responses refused');
openai_error(post('/cool/v1/responses'), 503, 'server_error',
             'targets_cooling_down', 'responses cooling');

anthropic_error(post('/cool/v1/messages'), 502, 'api_error',
                'messages refused');
$r = post('/cool/v1/messages');
anthropic_error($r, 503, 'overloaded_error', 'messages cooling');
like($r->{headers}{'retry-after'}, qr/^\d+$/,
     'messages cooling: Retry-After');

# the operator's error_page for the status wins

$r = post('/paged/v1/messages');
is($r->{status}, 502, 'error_page: status');
is($r->{body}, '{"page":"operator"}', 'error_page: the operator\'s page');

done_testing;
