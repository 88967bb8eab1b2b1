#!/usr/bin/perl

# Wiring mistakes caught by `nginx -t` (docs/directives.md, llm_target):
# each llm_target and llm_fallback URI is resolved against its server's
# locations as nginx resolves a subrequest's URI (exact, longest prefix,
# nested, "^~", regular expressions in order) and nginx -t fails, naming
# the directive's file:line, when no location matches, when the location
# is not "internal", or when it is an llm_route location itself; a
# target's family= that differs from its route's family fails too.  The
# messages of other common mistakes name the directive and the file:line
# (t/config.t has the others).  Valid wirings pass.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my $t = Test::LLM->new;

# every failing case puts an [emerg] in the log on purpose
$t->allow_alerts(qr/\[emerg\]/);


# nginx.conf with $server inside a server block, $http in http
sub conf {
    my ($server, $http) = @_;
    $http //= '';
    $t->write_file_expand('nginx.conf', <<"EOF");
events {}

http {
    $http

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        $server
    }
}
EOF
}

sub line_of { $t->conf_line(@_) }
sub fails { $t->config_fails(@_) }
sub passes { $t->config_passes(@_) }

my $P = 'proxy_pass http://127.0.0.1:%%PORT_8081%%';

my $route = <<"EOF";
location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/a;
            llm_fallback /_llm/b;
        }
EOF

###############################################################################
# valid wirings

conf($route . <<"EOF");
        location /_llm/a { internal; $P; }
        location = /_llm/b { internal; $P; }
EOF
passes('prefix and exact target locations');

conf($route . <<"EOF");
        location ~ ^/_llm/(a|b)\$ { internal; $P; }
EOF
passes('regex target location');

conf($route . <<"EOF");
        location /_llm/ {
            internal;
            location /_llm/a { internal; $P; }
            location ~ ^/_llm/b\$ { internal; $P; }
        }
EOF
passes('nested target locations');

conf($route . <<"EOF");
        location ^~ /_llm/ { internal; $P; }
        location ~ ^/_llm/ { $P; }
EOF
passes('"^~" keeps regexes away');

conf($route . <<"EOF");
        location = /_llm/a { internal; $P; }
        location = /_llm/b { internal; $P; }
        location / { }
EOF
passes('exact matches before "location /"');

conf(<<"EOF");
        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/a family=messages;
            llm_fallback /_llm/b family=messages;
        }
        location /v1/ {
            llm_route v1 family=chat;
            llm_target /_llm/a family=chat;
        }
        location /_llm/ { internal; $P; }
EOF
passes('family= of the route');

###############################################################################
# no location

conf($route . <<"EOF");
        location /_llm/a { internal; $P; }
EOF
fails('fallback without a location',
      'llm target "/_llm/b" of llm route "chat" matches no location',
      line_of(qr/llm_fallback/));

conf($route . <<"EOF");
        location = /_llm/b { internal; $P; }
        location = /_llm/ab { internal; $P; }
EOF
fails('target without a location',
      'llm target "/_llm/a" of llm route "chat" matches no location',
      line_of(qr/llm_target/));

conf($route, <<"EOF");
    server {
        listen 127.0.0.1:%%PORT_8082%%;
        location /_llm/ { internal; $P; }
    }
EOF
fails('target location in another server',
      'llm target "/_llm/a" of llm route "chat" matches no location',
      line_of(qr/llm_target/));

conf($route . <<"EOF");
        location /_llm/a/ { internal; $P/; }
        location /_llm/b { internal; $P; }
EOF
fails('only an auto redirect',
      'llm target "/_llm/a" of llm route "chat" matches no location',
      line_of(qr/llm_target/));

###############################################################################
# not internal

conf($route . <<"EOF");
        location /_llm/ { $P; }
EOF
fails('target location not internal',
      'llm target "/_llm/a" of llm route "chat" is location "/_llm/", '
      . 'which is not "internal"', line_of(qr/llm_target/));

conf($route . <<"EOF");
        location /_llm/a { internal; $P; }
        location /_llm/ { internal; $P; }
        location ~ ^/_llm/b\$ { $P; }
EOF
fails('regex location not internal',
      'llm target "/_llm/b" of llm route "chat" is location "^/_llm/b$", '
      . 'which is not "internal"', line_of(qr/llm_fallback/));

conf($route . <<"EOF");
        location / { $P; }
EOF
fails('only "location /"',
      'llm target "/_llm/a" of llm route "chat" is location "/", '
      . 'which is not "internal"', line_of(qr/llm_target/));

###############################################################################
# a route as a target

conf(<<"EOF");
        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/a;
            llm_fallback /v1/chat/completions;
        }
        location /_llm/a { internal; $P; }
EOF
fails('the route itself',
      'llm target "/v1/chat/completions" of llm route "chat" is location '
      . '"/v1/chat/completions" of llm route "chat"',
      line_of(qr/llm_fallback/));

conf(<<"EOF");
        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/other;
        }
        location /_llm/other {
            internal;
            llm_route other;
            llm_target /_llm/a;
        }
        location /_llm/a { internal; $P; }
EOF
fails('another route',
      'llm target "/_llm/other" of llm route "chat" is location '
      . '"/_llm/other" of llm route "other"', line_of(qr/llm_target \/_llm\/o/));

###############################################################################
# families

conf(<<"EOF");
        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/a;
            llm_fallback /_llm/b family=chat;
        }
        location /_llm/ { internal; $P; }
EOF
fails('chat fallback of a messages route',
      'family "chat" of llm target "/_llm/b" differs from family "messages" '
      . 'of llm route "messages"', line_of(qr/llm_fallback/));

conf(<<"EOF");
        location /v1/ {
            llm_route v1 family=responses;
            llm_target /_llm/a family=messages;
        }
        location /_llm/ { internal; $P; }
EOF
fails('messages target of a responses route',
      'family "messages" of llm target "/_llm/a" differs from family '
      . '"responses" of llm route "v1"', line_of(qr/llm_target/));

conf(<<"EOF");
        location /v1/ {
            llm_route v1;
            llm_target /_llm/a family=chat;
        }
        location /_llm/ { internal; $P; }
EOF
fails('family= on a route of no known family',
      'llm target "/_llm/a" has "family=chat", but the family of llm route '
      . '"v1" is not known from its location, set it with '
      . '"llm_route v1 family="', line_of(qr/llm_target/));

conf(<<"EOF");
        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/a family=anthropic;
        }
        location /_llm/ { internal; $P; }
EOF
fails('invalid family', 'invalid family "anthropic"', line_of(qr/llm_target/));

###############################################################################
# messages that name the directive's place

conf('', 'llm_redis 127.0.0.1:%%PORT_8083%%;');
fails('llm_redis without llm_zone', '"llm_redis" requires "llm_zone"',
      line_of(qr/llm_redis/));

done_testing;
