#!/usr/bin/perl

# The target location recipe of conf.example (docs/directives.md):
#
# - every target location ignores the provider's X-Accel-* control
#   headers.  Shown live: a provider answering "X-Accel-Redirect:
#   /llm/status" makes nginx redirect the attempt to the status page,
#   which the client then gets as the answer; with conf.example's
#   proxy_ignore_headers line the client gets the provider's answer;
# - every https target checks the provider's certificate
#   (proxy_ssl_verify on, a CA file, proxy_ssl_server_name on);
# - every target sends the gateway's own credential and clears the other
#   one a client may have sent: live, an OpenAI-style target gets
#   Authorization with the gateway's key and no x-api-key, an
#   Anthropic-style one gets x-api-key with the gateway's key and no
#   Authorization, whatever the client sent.  No key reaches a log.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

my $example = "$Test::LLM::REPO/conf.example";
open my $fh, '<', $example or die "can't read $example: $!\n";
my $text = do { local $/; <$fh> };
close $fh;

$text =~ s/#[^\n]*//g;

###############################################################################
# conf.example: every target location

my %targets;

while ($text =~ /^\s*location\s+(\/_llm\/\S+)\s*\{(.*?)^\s*\}/msg) {
    $targets{$1} = $2;
}

ok(scalar keys %targets >= 2, 'conf.example has target locations');

my @ACCEL = qw(X-Accel-Redirect X-Accel-Expires X-Accel-Limit-Rate
               X-Accel-Buffering X-Accel-Charset);

my %ignore;

for my $uri (sort keys %targets) {
    my $block = $targets{$uri};

    like($block, qr/^\s*internal;/m, "$uri: internal");

    my ($ign) = $block =~ /^\s*(proxy_ignore_headers\s[^;]*;)/m;
    $ignore{$uri} = $ign;
    ok(defined $ign, "$uri: proxy_ignore_headers");

    for my $h (@ACCEL) {
        like($ign // '', qr/\s\Q$h\E\b/, "$uri: ignores $h");
    }

    if ($block =~ /^\s*proxy_pass\s+https:/m) {
        like($block, qr/^\s*proxy_ssl_verify\s+on;/m,
             "$uri: proxy_ssl_verify on");
        like($block, qr/^\s*proxy_ssl_trusted_certificate\s+\S+;/m,
             "$uri: a CA file");
        like($block, qr/^\s*proxy_ssl_server_name\s+on;/m,
             "$uri: proxy_ssl_server_name on");
    }

    my %set;
    while ($block =~ /^\s*proxy_set_header\s+(Authorization|x-api-key)
                      \s+("[^"]*"|\S+);/mgx)
    {
        $set{lc $1} = $2;
    }

    my ($keyed) = grep { defined $set{$_} && $set{$_} ne '""' }
                  qw(authorization x-api-key);
    ok(defined $keyed, "$uri: sends the gateway's credential");

    my $other = ($keyed // '') eq 'authorization' ? 'x-api-key'
                                                  : 'authorization';
    is($set{$other}, '""', "$uri: clears the client's $other");
}

my $IGNORE = $ignore{'/_llm/openai'} // $ignore{(sort keys %ignore)[0]}
             // '';

###############################################################################
# live

my $GW_OPENAI = 'sk-CANARY-gateway-openai-8d1f';
my $GW_ANTH   = 'sk-ant-CANARY-gateway-anthropic-2c7e';
my $CL_AUTH   = 'sk-CANARY-client-authorization-5b90';
my $CL_XKEY   = 'sk-ant-CANARY-client-x-api-key-e413';
$t->canary($GW_OPENAI, $GW_ANTH, $CL_AUTH, $CL_XKEY);

$t->write_file_expand('nginx.conf', <<"EOF");
events {}

http {
    llm_zone llm:1m;

    map \$host \$openai_key    { default "$GW_OPENAI"; }
    map \$host \$anthropic_key { default "$GW_ANTH"; }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /bare/v1/chat/completions {
            llm_route  bare;
            llm_target /_llm/bare;
        }

        location = /recipe/v1/chat/completions {
            llm_route  recipe;
            llm_target /_llm/openai;
        }

        location = /v1/messages {
            llm_route  messages;
            llm_target /_llm/anthropic;
        }

        # no recipe: what a target did before
        location /_llm/bare {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }

        location /_llm/openai {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
            proxy_set_header Authorization "Bearer \$openai_key";
            proxy_set_header x-api-key "";
            $IGNORE
        }

        location /_llm/anthropic {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/messages;
            proxy_set_header x-api-key \$anthropic_key;
            proxy_set_header Authorization "";
            $IGNORE
        }

        location = /llm/status {
            llm_status;
            allow 127.0.0.1;
            deny all;
        }
    }
}
EOF

my $ANSWER = completion_body(content => 'the provider speaking');

$t->run_mock_provider(port => $t->port(8081), name => 'prov',
                      handler => sub {
    return { status => 200,
             headers => [ 'Content-Type' => 'application/json',
                          'X-Accel-Redirect' => '/llm/status',
                          'X-Accel-Charset' => 'koi8-r' ],
             body => $ANSWER };
});

$t->run;

my $port = $t->port(8080);
my $BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
           . '"content":"hi"}]}';

sub post {
    my ($uri) = @_;
    return parse_response(http_post($uri, $BODY, port => $port,
        headers => { 'Authorization' => "Bearer $CL_AUTH",
                     'x-api-key' => $CL_XKEY }));
}

for my $run (1, 2) {
    my $r = post('/bare/v1/chat/completions');
    is($r->{status}, 200, "without the recipe: 200 (run $run)");
    like($r->{body}, qr/"routes"/,
         "without the recipe: the provider sends the client the status page"
         . " (run $run)");

    $r = post('/recipe/v1/chat/completions');
    is($r->{status}, 200, "with the recipe: 200 (run $run)");
    is($r->{body}, $ANSWER, "with the recipe: the provider's answer (run $run)");
    ok(!grep({ $_->[0] =~ /^X-Accel-/i } @{$r->{header_list}}),
       "with the recipe: no X-Accel-* header to the client (run $run)");
    unlike($r->{headers}{'content-type'} // '', qr/koi8/,
           "with the recipe: no charset from X-Accel-Charset (run $run)");

    $r = post('/v1/messages');
    is($r->{status}, 200, "messages target: 200 (run $run)");
    is($r->{body}, $ANSWER, "messages target: the provider's answer (run $run)");
}

my @got = @{$t->mock_requests('prov')};
my @oa = grep { $_->{path} eq '/v1/chat/completions'
                && ($_->{headers}{authorization} // '') ne "Bearer $CL_AUTH" }
         @got;
my @an = grep { $_->{path} eq '/v1/messages' } @got;

is(scalar @oa, 2, 'OpenAI target: two requests with the gateway\'s key');
is(scalar(grep { ($_->{headers}{authorization} // '') eq "Bearer $GW_OPENAI"
                 && !defined $_->{headers}{'x-api-key'} } @oa), 2,
   'OpenAI target: Authorization is the gateway\'s, no x-api-key');

is(scalar @an, 2, 'Anthropic target: two requests');
is(scalar(grep { ($_->{headers}{'x-api-key'} // '') eq $GW_ANTH
                 && !defined $_->{headers}{authorization} } @an), 2,
   'Anthropic target: x-api-key is the gateway\'s, no Authorization');

done_testing;
