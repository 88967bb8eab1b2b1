#!/usr/bin/perl

# Request inspection (docs/design.md section 1) when another module has read the client
# body before the route's content handler: `mirror` (precontent phase,
# mirror_request_body on by default), and lua's ngx.req.read_body() in
# the access phase when libnginx-mod-http-lua is installed.  The module's
# request body filter never sees such a body; the route inspects it from
# r->request_body instead, from memory buffers or, for a body spilled to
# a temp file (over client_body_buffer_size, or client_body_in_file_only),
# reading the file in small chunks.  Checked for each: the route answers
# 200 (not 400 "the request body is empty"), $llm_model is the client's,
# the target gets the body with only the model rewritten (raw bytes and
# Content-Length), and the mirror gets the client's original bytes.
# client_body_in_file_only without another reader is checked too.  Every
# case runs twice.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Digest::MD5 qw(md5_hex);
use Time::HiRes qw(sleep);

my $t = Test::LLM->new;

my $LUA_DIR = '/usr/lib/nginx/modules';
my $LUA = -f "$LUA_DIR/ngx_http_lua_module.so"
          && -f "$LUA_DIR/ndk_http_module.so";

my $lua_conf = '';

if ($LUA) {
    $t->load_module("$LUA_DIR/ndk_http_module.so");
    $t->load_module("$LUA_DIR/ngx_http_lua_module.so");


    $lua_conf = <<'EOF';
        location = /lua/v1/chat/completions {
            client_body_buffer_size 16k;
            access_by_lua_block { ngx.req.read_body() }
            llm_route lua;
            llm_target /_llm/a model=gpt-4.1-mini;
        }
EOF
}

my $conf = <<'EOF';
events {}

http {
    %%LOG_FORMAT%%
    access_log %%TESTDIR%%/logs/access.log engine;

    client_max_body_size 10m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=5ms;

        location = /mirror/v1/chat/completions {
            client_body_buffer_size 16k;
            mirror /shadow;
            llm_route mirror;
            llm_target /_llm/a model=gpt-4.1-mini;
        }

        location = /mirrorfile/v1/chat/completions {
            client_body_in_file_only on;
            mirror /shadow;
            llm_route mirrorfile;
            llm_target /_llm/a model=gpt-4.1-mini;
        }

        location = /file/v1/chat/completions {
            client_body_in_file_only on;
            llm_route file;
            llm_target /_llm/a model=gpt-4.1-mini;
        }

%%LUA%%
        location = /shadow {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/shadow/v1/chat/completions$is_args$args;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

my $port = engine_run($t, $conf, subst => { LUA => $lua_conf });
my $NEW = '"gpt-4.1-mini"';

# bodies: before the model value, the value, after it

my $CONTENT = join '', map { sprintf 'line %05d of a long prompt. ', $_ }
                       1 .. 4000;

my @bodies = (
    [ 'small', '{"model":', '"gpt-4o"',
      ',"messages":[{"role":"user","content":"hi","model":"nested"}],'
      . '"temperature":0.2}' ],
    [ 'spilled, model first', "{\n  \"model\" : ", '"gpt-4o-mini"',
      ",\n  \"messages\":[{\"role\":\"user\",\"content\":\"$CONTENT\"}]}\n" ],
    [ 'spilled, model last',
      "{\"messages\":[{\"role\":\"user\",\"content\":\"$CONTENT\"}],"
      . '"model":', '"o3\u002dmini"', '}' ],
);

my $id = 0;

sub check {
    my ($uri, $what, $chunked, $mirrored) = @_;

    for my $b (@bodies) {
        my ($name, $pre, $model, $post) = @$b;
        my $body = $pre . $model . $post;
        my $want = $pre . $NEW . $post;

        for my $run (1, 2) {
            my $case = "$what, $name" . ($chunked ? ', chunked' : '')
                       . " (run $run)";
            my $rid = 'r' . ++$id;

            my $r = parse_response(http_post("$uri?id=$rid", $body,
                                             port => $port,
                                             chunked => $chunked,
                                             timeout => 20));

            is($r->{status}, 200, "$case: 200") or diag($r->{body});

            my $e = log_entry($t, $rid);
            (my $decoded = $model) =~ s/\\u002d/-/;
            is($e->{model}, substr($decoded, 1, -1), "$case: \$llm_model");
            is($e->{target_model}, 'gpt-4.1-mini',
               "$case: \$llm_target_model");

            # the mirror's subrequest runs in the background: wait for it
            my ($target, $shadow);

            for (1 .. 50) {
                my $got = mock_for($t, 'prov', $rid);
                ($target) = grep { $_->{path} =~ m{^/a/} } @$got;
                ($shadow) = grep { $_->{path} =~ m{^/shadow/} } @$got;
                last if $target && (!$mirrored || $shadow);
                sleep 0.1;
            }

            $target ||= {};
            is($target->{body_length}, length $want, "$case: target length");
            is($target->{headers}{'content-length'}, length $want,
               "$case: target Content-Length");
            is($target->{body_md5}, md5_hex($want),
               "$case: target gets the body with the model rewritten");

            next unless $mirrored;

            $shadow ||= {};
            is($shadow->{body_length}, length $body, "$case: mirror length");
            is($shadow->{body_md5}, md5_hex($body),
               "$case: mirror gets the client's bytes");
        }
    }
}

###############################################################################

check('/mirror/v1/chat/completions', 'mirror', undef, 1);
check('/mirror/v1/chat/completions', 'mirror', 4096, 1);
check('/mirrorfile/v1/chat/completions', 'mirror, in file only', undef, 1);
check('/file/v1/chat/completions', 'in file only', undef, 0);

# a broken body read by mirror is still refused with the reason

my $r = parse_response(http_post('/mirror/v1/chat/completions?id=bad',
                                 '{"model":"gpt-4o",', port => $port));
is($r->{status}, 400, 'mirror, truncated body: 400');
like($r->{body}, qr/"code":"invalid_json"/, 'mirror, truncated body: why');
unlike($r->{body}, qr/empty/, 'mirror, truncated body: not "empty"');

SKIP: {
    skip 'libnginx-mod-http-lua is not installed', 1 unless $LUA;

    check('/lua/v1/chat/completions', 'lua read_body', undef, 0);
    check('/lua/v1/chat/completions', 'lua read_body', 4096, 0);
}

done_testing;
