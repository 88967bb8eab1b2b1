#!/usr/bin/perl

# llm_response_headers (docs/directives.md): x-llm-attempts and
# x-llm-fallback on every answer of a route, so that a caller sees the
# gateway's retries without access to its logs.  Covers: off by default;
# inherited from the server level and turned off in a location; a good
# answer at the first attempt, after a retry, from the fallback; a
# stream (the attempts made when its headers went out); final failures
# (a provider answer replayed after retries and a fallback, a provider
# 4xx not retried, nginx's own 502 when no provider answered); the
# gateway's own answers (400 for a broken body, 405, the catalog's 400
# model_not_found, the 503 of a route whose targets are cooling down,
# 413 for a body too large), with 0 attempts; a provider's own
# x-llm-attempts or x-llm-fallback never reaching the client beside the
# gateway's; the values agree with $llm_attempts and $llm_fallback.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP ();

my $t = Test::LLM->new;

$t->write_file('cat.json', '{"object":"list","data":[{"id":"gpt-4o-mini",'
                           . '"object":"model"}]}');

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    llm_zone llm:1m;
    llm_catalog oa cat.json;

    log_format hdr '$arg_id|$status|$llm_attempts|$llm_fallback';
    access_log %%TESTDIR%%/logs/access.log hdr;

    proxy_set_header X-Attempt $llm_attempts;
    client_max_body_size 1k;
    llm_cooldown off;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=5ms;
        llm_response_headers on;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/t tries=2;
            llm_fallback /_llm/t;
        }

        location = /off/v1/chat/completions {
            llm_route off;
            llm_target /_llm/t tries=2;
            llm_response_headers off;
        }

        location = /cat/v1/chat/completions {
            llm_route cat;
            llm_target /_llm/t catalog=oa;
        }

        location = /refused/v1/chat/completions {
            llm_route refused;
            llm_target /_llm/refused tries=2;
        }

        location = /cooling/v1/chat/completions {
            llm_route cooling;
            llm_target /_llm/refused;
            llm_cooldown fails=1 window=10s time=30s;
        }

        location = /plain {
            return 200 "not a route\n";
        }

        location /_llm/t {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions$is_args$args;
            proxy_buffering off;
        }

        location /_llm/refused {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8082%%/v1/chat/completions;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_8083%%;

        location = /v1/chat/completions {
            llm_route default;
            llm_target /_llm/t tries=2;
        }

        location /_llm/t {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF

# a stream after the attempts the client's X-Case fails
sub handler {
    my ($req, $conn) = @_;

    if (($req->{headers}{'x-case'} // '') =~ /^sse:(\d+)$/) {
        return action_response('500', $req, $conn)
            if ($req->{headers}{'x-attempt'} // 0) <= $1;
        $conn->sse(events => [
            '{"id":"c1","object":"chat.completion.chunk","choices":'
            . '[{"index":0,"delta":{"content":"ok"}}]}',
            '[DONE]' ]);
        return;
    }

    return scripted($req, $conn);
}

$t->run_mock_provider(port => $t->port(8081), name => 'p',
                      handler => \&handler);
$t->run;

my $BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
           . '"content":"hi"}]}';

sub post {
    my ($uri, %o) = @_;
    my $h = $o{case} ? { 'X-Case' => $o{case} } : {};
    return parse_response(http_post($uri, $o{body} // $BODY,
                                    port => $o{port} || $t->port(8080),
                                    headers => $h));
}

# every x-llm-* header of an answer, as "name=value" in order
sub llm_headers {
    my ($r) = @_;
    return join ' ', map { lc($_->[0]) . "=$_->[1]" }
                     grep { $_->[0] =~ /^x-llm-/i } @{$r->{header_list}};
}

sub logged {
    my ($id) = @_;
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/, 5);
    return $line // '';
}

my $n = 0;

sub check {
    my ($name, $uri, $status, $want, %o) = @_;
    my $id = 'r' . ++$n;
    my $r = post("$uri?id=$id", %o);
    is($r->{status}, $status, "$name: status");
    is(llm_headers($r), $want, "$name: headers");
    if ($want =~ /^x-llm-attempts=(\d+) x-llm-fallback=(\d)$/) {
        my ($a, $f) = ($1, $2);
        # nginx's own 413 comes before the route's handler: no record
        $a = "(?:$a|-)" if $status == 413;
        like(logged($id), qr/^\Q$id\E\|$status\|$a\|(?:$f|-)$/,
             "$name: as \$llm_attempts and \$llm_fallback");
    }
    return $r;
}

###############################################################################
# good answers

check('first attempt', '/v1/chat/completions', 200,
      'x-llm-attempts=1 x-llm-fallback=0');
check('after a retry', '/v1/chat/completions', 200,
      'x-llm-attempts=2 x-llm-fallback=0', case => '1:500');
check('from the fallback', '/v1/chat/completions', 200,
      'x-llm-attempts=3 x-llm-fallback=1', case => '1:500;2:rl');

my $r = check('stream after a retry', '/v1/chat/completions', 200,
              'x-llm-attempts=2 x-llm-fallback=0', case => 'sse:1');
is($r->{headers}{'content-type'}, 'text/event-stream', 'stream: SSE');
like($r->{body}, qr/\[DONE\]/, 'stream: whole');

check('stream from the fallback', '/v1/chat/completions', 200,
      'x-llm-attempts=3 x-llm-fallback=1', case => 'sse:2');

###############################################################################
# final failures

$r = check('replayed after a fallback', '/v1/chat/completions', 500,
           'x-llm-attempts=3 x-llm-fallback=1', case => '*:500');
is($r->{headers}{'x-should-retry'}, 'false',
   'replayed: x-should-retry beside them');

check('provider 4xx not retried', '/v1/chat/completions', 400,
      'x-llm-attempts=1 x-llm-fallback=0', case => '1:ctx');

check('a provider answer with its own x-llm-* headers',
      '/v1/chat/completions', 200, 'x-llm-attempts=1 x-llm-fallback=0',
      case => '1:ok+hdr=X-LLM-Attempts:7');
check('an error answer with its own x-llm-* headers',
      '/v1/chat/completions', 400, 'x-llm-attempts=1 x-llm-fallback=0',
      case => '1:ctx+hdr=x-llm-fallback:1');

check('nginx 502, no provider answered', '/refused/v1/chat/completions',
      502, 'x-llm-attempts=2 x-llm-fallback=0');

###############################################################################
# the gateway's own answers

check('target cools down', '/cooling/v1/chat/completions', 502,
      'x-llm-attempts=1 x-llm-fallback=0');
check('cooling down', '/cooling/v1/chat/completions', 503,
      'x-llm-attempts=0 x-llm-fallback=0');
check('broken body', '/v1/chat/completions', 400,
      'x-llm-attempts=0 x-llm-fallback=0', body => '{"model":');
check('catalog refusal', '/cat/v1/chat/completions', 400,
      'x-llm-attempts=0 x-llm-fallback=0',
      body => '{"model":"gpt-9","messages":[]}');
check('body too large', '/v1/chat/completions', 413,
      'x-llm-attempts=0 x-llm-fallback=0', body => 'x' x 2048);

$r = parse_response(http_get('/v1/chat/completions',
                             port => $t->port(8080)));
is($r->{status}, 405, '405: status');
is(llm_headers($r), 'x-llm-attempts=0 x-llm-fallback=0', '405: headers');

###############################################################################
# off

check('off in a location', '/off/v1/chat/completions', 200, '',
      case => '1:500');
check('off by default', '/v1/chat/completions', 200, '',
      port => $t->port(8083), case => '1:500');
check('off by default, a provider header passes',
      '/v1/chat/completions', 200, 'x-llm-attempts=7',
      port => $t->port(8083), case => '1:ok+hdr=X-LLM-Attempts:7');

$r = parse_response(http_get('/plain', port => $t->port(8080)));
is(llm_headers($r), '', 'not a route: no headers');

done_testing;
