#!/usr/bin/perl

# Response headers of an attempt copied to the client (docs/directives.md,
# "How an attempt is made").  Covers: the provider's Cache-Control and
# Link headers stay the ones nginx's own filters of the route location
# see: `expires` rewrites the provider's Cache-Control instead of adding
# a second one, and a header with several Cache-Control or Link lines
# keeps them all, once each.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /expires/v1/chat/completions {
            llm_route expires;
            llm_target /_llm/provider;
            expires 1h;
        }

        location = /plain/v1/chat/completions {
            llm_route plain;
            llm_target /_llm/provider;
        }

        location /_llm/provider {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
    handler => sub {
        return { status => 200,
                 headers => [ 'Content-Type' => 'application/json',
                              'Cache-Control' => 'no-store',
                              'Cache-Control' => 'private',
                              'Link' => '</a>; rel=preload',
                              'Link' => '</b>; rel=preload' ],
                 body => Test::LLM::Mock::chat_completion() };
    });

$t->run;

my $body = '{"model":"m","messages":[]}';

sub headers {
    my ($r, $name) = @_;
    return [ map { $_->[1] } grep { lc $_->[0] eq lc $name }
             @{$r->{header_list}} ];
}

my $r = parse_response(http_post('/expires/v1/chat/completions', $body,
                                  port => $t->port(8080)));
is($r->{status}, 200, 'expires: answered');
is_deeply(headers($r, 'Cache-Control'), [ 'max-age=3600' ],
          'expires: the provider\'s Cache-Control rewritten, not added to');
ok(defined $r->{headers}{expires}, 'expires: Expires set');

$r = parse_response(http_post('/plain/v1/chat/completions', $body,
                              port => $t->port(8080)));
is_deeply(headers($r, 'Cache-Control'), [ 'no-store', 'private' ],
          'plain: both Cache-Control lines, once each');
is_deeply(headers($r, 'Link'), [ '</a>; rel=preload', '</b>; rel=preload' ],
          'plain: both Link lines, once each');

done_testing;
