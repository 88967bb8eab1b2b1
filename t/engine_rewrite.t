#!/usr/bin/perl

# Attempt engine (docs/design.md sections 1-2): the per-target model rewrite.  A
# target's model= replaces the top-level "model" value of the body sent
# to it; every other byte stays as the client sent it (checked on the raw
# bytes and on the JSON::PP-decoded structure) and Content-Length
# matches.  Covers: small and multi-MB bodies kept in memory; bodies
# spilled to a temp file (small client_body_buffer_size) with the model
# near the start (a long tail after it), near the end and in the middle;
# chunked client bodies, in memory and spilled; "model" missing (inserted
# after the opening brace: empty object, whitespace, spilled body); an
# escaped model value replaced whole; a model= that needs JSON escaping;
# nested "model" keys untouched; a retry on the same target and the
# fallbacks each get their own target's body ($llm_target_model follows,
# a target without model= gets the client's bytes); a route without
# model= sends the body unchanged.  Happy requests run twice.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Digest::MD5 qw(md5_hex);
use JSON::PP ();

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%ENGINE%%

    client_max_body_size 20m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;

        location = /v1/chat/completions {
            client_body_buffer_size 16m;
            llm_route mem;
            llm_target /_llm/a model=gpt-4.1-mini tries=2;
        }

        location = /spill/v1/chat/completions {
            client_body_buffer_size 16k;
            llm_route spill;
            llm_target /_llm/a model=gpt-4.1-mini tries=2;
        }

        location = /keep/v1/chat/completions {
            client_body_buffer_size 16k;
            llm_route keep;
            llm_target /_llm/a;
        }

        location = /fb/v1/chat/completions {
            client_body_buffer_size 16k;
            llm_route fb;
            llm_target /_llm/a model=model-a;
            llm_fallback /_llm/b model=model-b;
            llm_fallback /_llm/c;
        }

        location = /quote/v1/chat/completions {
            llm_route quote;
            llm_target /_llm/a "model=we\"ird\\name/x";
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

my $port = engine_run($t, $conf);
my $JSON = JSON::PP->new->canonical;
my $NEW = '"gpt-4.1-mini"';

sub post {
    my ($uri, $body, %o) = @_;
    return parse_response(http_post($uri, $body, port => $port,
                                    headers => $o{headers} || {},
                                    chunked => $o{chunked},
                                    timeout => 20));
}

sub got {
    my ($id) = @_;
    return mock_for($t, 'prov', $id);
}

# body as parts: before the model value, the value, after it
sub body_of { join '', @_ }

# checks what the mock got against the expected bytes (and, for bodies
# the mock kept, against the client's JSON with only the model changed)
sub check_body {
    my ($name, $m, $want, $client, $model) = @_;

    $m ||= {};
    is($m->{body_length}, length $want, "$name: length");
    is($m->{headers}{'content-length'}, length $want, "$name: Content-Length");
    ok(!defined $m->{headers}{'transfer-encoding'},
       "$name: no Transfer-Encoding");
    is($m->{body_md5}, md5_hex($want), "$name: bytes");

    return unless defined $client && defined $m->{body};

    my $sent = eval { $JSON->decode($m->{body}) };
    my $orig = eval { $JSON->decode($client) };
    $orig->{model} = $model if ref $orig eq 'HASH';
    is_deeply($sent, $orig, "$name: JSON as the client's, model changed");
}

###############################################################################
# bodies in memory

my $SMALL_POST = ',"messages":[{"role":"user","content":"hi \"there\"",'
    . '"model":"nested-model"}],"tools":[{"type":"function","function":'
    . '{"name":"f","parameters":{"model":{"type":"string"}}}}],'
    . '"temperature":0.2}';

my @small = (
    [ 'model first', '{"model":', '"gpt-4o"', $SMALL_POST ],
    [ 'model last', '{"messages":[{"role":"user","content":"x"}],'
      . '"temperature":0, "model" :  ', '"gpt-4o-2024-08-06"', ' }' ],
    [ 'model in the middle', "{\n  \"stream\": false,\n  \"model\": ",
      '"o3"', ",\n  \"messages\": [{\"role\": \"user\", \"content\": "
      . "\"\\u00e9\\n\"}]\n}\n" ],
);

for my $case (@small) {
    my ($name, $pre, $val, $post) = @$case;
    my $client = $pre . $val . $post;
    my $want = $pre . $NEW . $post;

    for my $round (1, 2) {
        my $id = "small-$name-$round";
        $id =~ s/ /_/g;
        my $r = post("/v1/chat/completions?id=$id", $client);
        is($r->{status}, 200, "$name: 200 ($round)");
        check_body("$name ($round)", got($id)->[0], $want, $client,
                   'gpt-4.1-mini');

        my $e = log_entry($t, $id);
        is($e->{target_model}, 'gpt-4.1-mini',
           "$name: \$llm_target_model ($round)");
        is($e->{model}, $JSON->decode($val), "$name: \$llm_model ($round)");
    }
}

my $FILL = join '', map { sprintf '%07d,', $_ } 1 .. 400_000;   # 3.2 MB

{
    my $pre = '{"model":';
    my $post = ',"messages":[{"role":"user","content":"' . $FILL . '"}]}';
    my $client = $pre . '"gpt-4o"' . $post;
    my $want = $pre . $NEW . $post;

    for my $round (1, 2) {
        my $id = "mem-big-$round";
        my $r = post("/v1/chat/completions?id=$id", $client);
        is($r->{status}, 200, "3 MB in memory: 200 ($round)");
        check_body("3 MB in memory ($round)", got($id)->[0], $want);
    }

    my $id = 'mem-big-retry';
    my $r = post("/v1/chat/completions?id=$id", $client,
                 headers => { 'X-Case' => '1:500;2:ok' });
    is($r->{status}, 200, '3 MB in memory, retried: 200');
    my $g = got($id);
    is(scalar @$g, 2, '3 MB in memory, retried: two attempts');
    check_body("3 MB in memory, attempt $_", $g->[$_ - 1], $want) for 1, 2;
}

###############################################################################
# bodies in a temp file

my @spill = (
    [ 'model at the start', '{"model":', '"gpt-4o"',
      ',"messages":[{"role":"user","content":"' . $FILL . '"}]}' ],
    [ 'model at the end', '{"messages":[{"role":"user","content":"'
      . $FILL . '"}],"model":', '"gpt-4o"', '}' ],
    [ 'model in the middle', '{"messages":[{"role":"user","content":"'
      . $FILL . '"}],"model":', '"gpt-4o"',
      ',"metadata":{"note":"' . ('m' x 500_000) . '"}}' ],
    [ 'model past 16k, small body', '{"messages":[{"role":"user",'
      . '"content":"' . ('s' x 40_000) . '"}],"model":', '"gpt-4o"',
      ',"temperature":1}' ],
);

for my $case (@spill) {
    my ($name, $pre, $val, $post) = @$case;
    my $client = $pre . $val . $post;
    my $want = $pre . $NEW . $post;

    for my $round (1, 2) {
        my $id = "spill-$name-$round";
        $id =~ s/[ ,]/_/g;
        my $from = $t->log_offset('logs/error.log');
        my $r = post("/spill/v1/chat/completions?id=$id", $client);
        is($r->{status}, 200, "temp file, $name: 200 ($round)");
        check_body("temp file, $name ($round)", got($id)->[0], $want,
                   $client, 'gpt-4.1-mini');

        SKIP: {
            skip 'the log level hides where the body was kept', 1
                if $t->log_level =~ /^(?:error|crit|alert|emerg)$/;
            like($t->read_from('logs/error.log', $from),
                 qr/buffered to a temporary file/,
                 "temp file, $name: the body was spilled ($round)");
        }
    }

    my $id = "spill-retry-$name";
    $id =~ s/[ ,]/_/g;
    my $r = post("/spill/v1/chat/completions?id=$id", $client,
                 headers => { 'X-Case' => '1:503;2:ok' });
    is($r->{status}, 200, "temp file, $name, retried: 200");
    my $g = got($id);
    is(scalar @$g, 2, "temp file, $name, retried: two attempts");
    check_body("temp file, $name, attempt $_", $g->[$_ - 1], $want)
        for 1, 2;
}

###############################################################################
# chunked client bodies

for my $case ([ 'memory', '/v1/chat/completions', 3000, 1000 ],
              [ 'temp file', '/spill/v1/chat/completions', 3_000_000,
                65536 ])
{
    my ($name, $uri, $size, $chunk) = @$case;
    my $pre = '{"messages":[{"role":"user","content":"' . ('c' x $size)
        . '"}],"model":';
    my $post = ',"n":1}';
    my $client = $pre . '"gpt-4o"' . $post;
    my $want = $pre . $NEW . $post;

    for my $round (1, 2) {
        my $id = "chunked-$name-$round";
        $id =~ s/ /_/g;
        my $r = post("$uri?id=$id", $client, chunked => $chunk);
        is($r->{status}, 200, "chunked, $name: 200 ($round)");
        check_body("chunked, $name ($round)", got($id)->[0], $want,
                   $client, 'gpt-4.1-mini');
        ok(!got($id)->[0]{chunked}, "chunked, $name: sent de-chunked ($round)");
    }
}

###############################################################################
# "model" missing: inserted after the opening brace

my @insert = (
    [ 'members', '{"messages":[{"role":"user","content":"hi"}]}',
      '{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"hi"}]}' ],
    [ 'empty object', '{}', '{"model":"gpt-4.1-mini"}' ],
    [ 'whitespace', " \n{ \"messages\" : [] } \n",
      " \n{\"model\":\"gpt-4.1-mini\", \"messages\" : [] } \n" ],
    [ 'nested model only', '{"messages":[{"model":"x"}]}',
      '{"model":"gpt-4.1-mini","messages":[{"model":"x"}]}' ],
);

for my $case (@insert) {
    my ($name, $client, $want) = @$case;

    for my $round (1, 2) {
        my $id = "insert-$name-$round";
        $id =~ s/ /_/g;
        my $r = post("/v1/chat/completions?id=$id", $client);
        is($r->{status}, 200, "no model, $name: 200 ($round)");
        check_body("no model, $name ($round)", got($id)->[0], $want,
                   $client, 'gpt-4.1-mini');

        my $e = log_entry($t, $id);
        is($e->{model}, '-', "no model, $name: \$llm_model ($round)");
        is($e->{target_model}, 'gpt-4.1-mini',
           "no model, $name: \$llm_target_model ($round)");
    }
}

{
    my $client = '{"messages":[{"role":"user","content":"' . $FILL . '"}]}';
    my $want = '{"model":"gpt-4.1-mini",' . substr($client, 1);
    my $id = 'insert-spill';
    my $r = post("/spill/v1/chat/completions?id=$id", $client);
    is($r->{status}, 200, 'no model, temp file: 200');
    check_body('no model, temp file', got($id)->[0], $want);
}

###############################################################################
# escapes

for my $round (1, 2) {
    my $val = '"gpt\u002d4o \"q\" \\\\ \/x"';
    my $client = '{"model":' . $val . ',"messages":[]}';
    my $want = '{"model":' . $NEW . ',"messages":[]}';
    my $id = "escaped-$round";
    my $r = post("/v1/chat/completions?id=$id", $client);
    is($r->{status}, 200, "escaped model value: 200 ($round)");
    check_body("escaped model value ($round)", got($id)->[0], $want,
               $client, 'gpt-4.1-mini');
    is(log_entry($t, $id)->{model}, 'gpt-4o \x22q\x22 \x5C /x',
       "escaped model value: \$llm_model decoded, escaped in the log "
       . "($round)");
}

for my $round (1, 2) {
    my $client = '{"model":"gpt-4o","messages":[]}';
    my $want = '{"model":"we\"ird\\\\name/x","messages":[]}';
    my $id = "quote-$round";
    my $r = post("/quote/v1/chat/completions?id=$id", $client);
    is($r->{status}, 200, "model= needing escapes: 200 ($round)");
    check_body("model= needing escapes ($round)", got($id)->[0], $want,
               $client, 'we"ird\\name/x');
}

###############################################################################
# each target its own model; no model= keeps the client's bytes

my $FB_CLIENT = '{"model":"client-model","messages":[{"role":"user",'
    . '"content":"' . ('f' x 30_000) . '"}],"max_tokens":5}';

sub with_model {
    my ($body, $model) = @_;
    (my $b = $body) =~ s/^\{"model":"client-model"/{"model":"$model"/;
    return $b;
}

for my $round (1, 2) {
    my $id = "fb-$round";
    my $r = post("/fb/v1/chat/completions?id=$id", $FB_CLIENT,
                 headers => { 'X-Case' => '1:500;2:500;3:ok' });
    is($r->{status}, 200, "fallbacks: 200 ($round)");

    my $g = got($id);
    is(join(', ', map { (split m{/}, $_->{path})[1] } @$g), 'a, b, c',
       "fallbacks: a, b, c ($round)");
    check_body("fallbacks, a ($round)", $g->[0],
               with_model($FB_CLIENT, 'model-a'), $FB_CLIENT, 'model-a');
    check_body("fallbacks, b ($round)", $g->[1],
               with_model($FB_CLIENT, 'model-b'), $FB_CLIENT, 'model-b');
    check_body("fallbacks, c: the client's body ($round)", $g->[2],
               $FB_CLIENT, $FB_CLIENT, 'client-model');

    my $e = log_entry($t, $id);
    is($e->{target_model}, 'client-model',
       "fallbacks: \$llm_target_model of c ($round)");
    is($e->{model}, 'client-model', "fallbacks: \$llm_model ($round)");
}

{
    my $id = 'fb-b';
    my $r = post("/fb/v1/chat/completions?id=$id", $FB_CLIENT,
                 headers => { 'X-Case' => '1:rl;2:ok' });
    is($r->{status}, 200, 'first fallback answers: 200');
    is(log_entry($t, $id)->{target_model}, 'model-b',
       'first fallback answers: $llm_target_model');
}

for my $round (1, 2) {
    my $id = "keep-$round";
    my $client = '{"messages":[],"model":"as-is","x":"' . $FILL . '"}';
    my $r = post("/keep/v1/chat/completions?id=$id", $client);
    is($r->{status}, 200, "no model=: 200 ($round)");
    check_body("no model= ($round)", got($id)->[0], $client);
    is(log_entry($t, $id)->{target_model}, 'as-is',
       "no model=: \$llm_target_model is the client's ($round)");
}

{
    my $id = 'keep-none';
    my $r = post("/keep/v1/chat/completions?id=$id", '{"messages":[]}');
    is($r->{status}, 200, 'no model= and no model: 200');
    check_body('no model= and no model', got($id)->[0], '{"messages":[]}');
    is(log_entry($t, $id)->{target_model}, '-',
       'no model= and no model: $llm_target_model not found');
}

done_testing;
