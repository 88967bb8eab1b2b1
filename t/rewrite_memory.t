#!/usr/bin/perl

# Memory cost of a per-target model rewrite (docs/design.md section 1: a
# rewrite splices buffers around the model, never copies the body).  One worker; a 5 MB
# body held in memory goes first through a route without a rewrite, then
# through one that rewrites the model, then with the model inserted.  The
# worker's peak RSS (VmHWM) may not grow by anything like the body's size
# on the rewriting requests: the plain request already paid for the body
# buffer, and a rewrite only adds a few small buffers.  A copy of the
# body would raise the peak by about 5 MB.  The provider gets the right
# bytes each time.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Digest::MD5 qw(md5_hex);

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
worker_processes 1;

events {}

http {
    client_max_body_size    20m;
    client_body_buffer_size 8m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /plain/v1/chat/completions {
            llm_route  plain;
            llm_target /_llm/provider;
        }

        location = /rewrite/v1/chat/completions {
            llm_route  rewrite;
            llm_target /_llm/provider model=gpt-4.1-mini;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'provider');
$t->run;

my $port = $t->port(8080);

# dies when /proc cannot tell: never a pass on 0 - 0
sub hwm_kb { $t->worker_hwm_kb }

# a long conversation with an image: most of the body is one big string
my $image = 'A' x 5_000_000;
my $messages = '[{"role":"user","content":[{"type":"text","text":"what is '
    . 'this?"},{"type":"image_url","image_url":{"url":"data:image/png;'
    . "base64,$image\"}}]}]";
my $with_model = qq({"messages":$messages,"model":"gpt-4o-mini"});
my $without_model = qq({"messages":$messages});

sub post {
    my ($path, $body) = @_;
    my $r = parse_response(http_post($path, $body, port => $port,
                                     timeout => 20));
    return ($r, $t->mock_requests('provider')->[-1]);
}

my ($r, $got) = post('/plain/v1/chat/completions', $with_model);
is($r->{status}, 200, 'plain: 200');
is($got->{body_md5}, md5_hex($with_model), 'plain: body unchanged');

my $plain = hwm_kb();
ok($plain > 5000, "plain: peak RSS $plain kB holds the body");

(my $expected = $with_model) =~ s/"gpt-4o-mini"/"gpt-4.1-mini"/;

for my $round (1, 2) {
    ($r, $got) = post('/rewrite/v1/chat/completions', $with_model);
    is($r->{status}, 200, "rewrite: 200 ($round)");
    is($got->{body_md5}, md5_hex($expected),
       "rewrite: only the model changed ($round)");
    is($got->{body_length}, length $expected,
       "rewrite: all of it sent ($round)");
}

# ASan's allocator (redzones, quarantine) makes peak RSS meaningless
my $asan = $ENV{TEST_LLM_ASAN};

my $rewritten = hwm_kb();

SKIP: {
    skip 'peak RSS under AddressSanitizer', 1 if $asan;
    cmp_ok($rewritten - $plain, '<', 1024,
           "rewrite: peak RSS grew by " . ($rewritten - $plain)
           . " kB (a copy would be ~4900)");
}

($r, $got) = post('/rewrite/v1/chat/completions', $without_model);
is($r->{status}, 200, 'insert: 200');
is($got->{body_md5},
   md5_hex(qq({"model":"gpt-4.1-mini","messages":$messages})),
   'insert: model added in front');

my $inserted = hwm_kb();

SKIP: {
    skip 'peak RSS under AddressSanitizer', 1 if $asan;
    cmp_ok($inserted - $plain, '<', 1024,
           "insert: peak RSS grew by " . ($inserted - $plain) . " kB");
}

done_testing;
