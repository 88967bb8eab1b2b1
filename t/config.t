#!/usr/bin/perl

# Configuration errors of llm_route and llm_target, caught by `nginx -t`
# with nginx-style messages and the file:line of the offending directive:
# a route without a target, a target without a route (also one in a
# nested location), duplicates, invalid route names, target URIs not
# starting with "/", another content handler in the route's location,
# wrong context and argument counts.  Valid configs pass, including
# names at the allowed limits and nested locations that do not inherit a
# route.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my $t = Test::LLM->new;

# every failing case puts an [emerg] in the log on purpose
$t->allow_alerts(qr/\[emerg\]/);

my $file = $t->testdir . '/nginx.conf';

# nginx.conf with $loc inside a server, plus an internal target location;
# $extra goes into the server block
sub conf {
    my ($loc, $extra) = @_;
    $extra //= '';
    $t->write_file_expand('nginx.conf', <<"EOF");
events {}

http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;

        $extra

        location = /v1/chat/completions {
            $loc
        }

        location /_llm/a {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF
}

sub line_of { $t->conf_line(@_) }
sub fails { $t->config_fails(@_) }

sub passes {
    my ($name) = @_;
    my ($ok, $out) = $t->test_config;

    ok($ok, "$name: nginx -t passes") or diag($out);
    like($out, qr/test is successful/, "$name: test is successful");
    unlike($out, qr/\[(?:emerg|warn|alert)\]/, "$name: no complaints");
}

###############################################################################
# valid

conf('llm_route chat; llm_target /_llm/a;');
passes('route with a target');

conf('llm_route Chat_v1.2-beta; llm_target /_llm/a;');
passes('name with every allowed kind of character');

conf('llm_route ' . ('r' x 64) . '; llm_target /_llm/a;');
passes('64-character name');

conf('llm_route chat; llm_target /_llm/a;',
     'location = /v1/responses { llm_route responses; llm_target /_llm/a; }
        location /v2/ {
            llm_route v2;
            llm_target /_llm/a;
            location /v2/nested { return 204; }
        }');
passes('two routes, one target, a nested location without a route');

###############################################################################
# a route needs a target, a target needs a route, in one location

conf('llm_route chat;');
fails('route without target',
      'no "llm_target" is defined for llm route "chat"',
      line_of(qr/llm_route chat;/));

conf('llm_target /_llm/a;');
fails('target without route',
      '"llm_target" requires "llm_route" in the same location',
      line_of(qr/llm_target \/_llm\/a;/));

conf('llm_route chat; llm_target /_llm/a;',
     'location /outer/ {
            llm_route outer;
            llm_target /_llm/a;
            location /outer/inner { llm_target /_llm/a; }
        }');
fails('target in a nested location, route in the parent',
      '"llm_target" requires "llm_route" in the same location',
      line_of(qr/location \/outer\/inner/));

###############################################################################
# duplicates

conf('llm_route chat;
            llm_route chat2;
            llm_target /_llm/a;');
fails('duplicate llm_route', '"llm_route" directive is duplicate',
      line_of(qr/llm_route chat2;/));

conf('llm_route chat;
            llm_target /_llm/a;
            llm_target /_llm/b;',
     'location /_llm/b { internal; proxy_pass http://127.0.0.1:1; }');
passes('two llm_target');

###############################################################################
# names and URIs

for my $name ('a b', 'a/b', '', 'r' x 65, 'chat$x', 'chat"', "caf\xc3\xa9",
              'a:b', 'a{b}')
{
    (my $conf_name = $name) =~ s/(["\\])/\\$1/g;
    conf(qq{llm_route "$conf_name"; llm_target /_llm/a;});
    fails("route name \"$name\"", qq{invalid llm route name "$name"},
          line_of(qr/llm_route /));
}

for my $uri ('_llm/a', 'http://127.0.0.1/', '', '@named') {
    conf(qq{llm_route chat; llm_target "$uri";});
    fails("target \"$uri\"",
          qq{llm target "$uri" must be a location URI starting with "/"},
          line_of(qr/llm_target /));
}

###############################################################################
# one content handler per location

conf('proxy_pass http://127.0.0.1:1;
            llm_route chat;
            llm_target /_llm/a;');
fails('proxy_pass, then llm_route',
      '"llm_route" cannot be combined with another content handler in one '
      . 'location', line_of(qr/llm_route chat;/));

conf('llm_route chat;
            llm_target /_llm/a;
            proxy_pass http://127.0.0.1:1;');
fails('llm_route, then proxy_pass',
      '"llm_route" cannot be combined with another content handler in one '
      . 'location', line_of(qr/llm_route chat;/));

conf('llm_route chat;
            llm_target /_llm/a;
            empty_gif;');
fails('llm_route, then empty_gif',
      '"llm_route" cannot be combined with another content handler in one '
      . 'location', line_of(qr/llm_route chat;/));

###############################################################################
# a "return" in the route's location answers in the rewrite phase, before
# the route could run; one inside an "if" runs on its condition only

conf('llm_route chat;
            llm_target /_llm/a;
            return 204;');
fails('llm_route, then return',
      '"llm_route" cannot be combined with "return" in one location',
      line_of(qr/llm_route chat;/));

conf('return 200 "hi";
            set $x 1;
            llm_route chat;
            llm_target /_llm/a;');
fails('return, then llm_route',
      '"llm_route" cannot be combined with "return" in one location',
      line_of(qr/llm_route chat;/));

conf('if ($request_method = OPTIONS) {
                return 204;
            }
            rewrite ^/v1/(.*)$ /v1/$1 break;
            return 403;
            llm_route chat;
            llm_target /_llm/a;');
fails('return after an if block',
      '"llm_route" cannot be combined with "return" in one location',
      line_of(qr/llm_route chat;/));

conf('set $key "x";
            if ($request_method = OPTIONS) {
                return 204;
            }
            if ($http_x_block) {
                set $key "y";
                return 403 "$key";
            }
            rewrite ^/v1/(.*)$ /v1/$1 break;
            llm_route chat;
            llm_target /_llm/a;');
passes('return only inside if blocks, set and rewrite');

conf('llm_route chat; llm_target /_llm/a;',
     'return 404;');
passes('return at server level');

###############################################################################
# context and arguments

conf('return 204;', 'llm_route chat;');
fails('llm_route in server', '"llm_route" directive is not allowed here',
      line_of(qr/^\s*llm_route chat;/));

conf('return 204;', 'llm_target /_llm/a;');
fails('llm_target in server', '"llm_target" directive is not allowed here',
      line_of(qr/^\s*llm_target/));

conf('llm_route; llm_target /_llm/a;');
fails('llm_route without a name',
      'invalid number of arguments in "llm_route" directive',
      line_of(qr/llm_route;/));

conf('llm_route a b; llm_target /_llm/a;');
fails('llm_route with two names', 'invalid parameter "b"',
      line_of(qr/llm_route a b;/));

conf('llm_route a b c; llm_target /_llm/a;');
fails('llm_route with three arguments',
      'invalid number of arguments in "llm_route" directive',
      line_of(qr/llm_route a b c;/));

conf('llm_route chat; llm_target;');
fails('llm_target without a URI',
      'invalid number of arguments in "llm_target" directive',
      line_of(qr/llm_target;/));

###############################################################################
# the attempt engine's directives

conf('llm_route chat family=responses;
            llm_target /_llm/a model=gpt-4o-mini weight=90 tries=2;
            llm_target /_llm/a model=gpt-4.1-mini weight=10;
            llm_fallback /_llm/a model=claude-3-5-haiku tries=1;
            llm_fallback /_llm/a;
            llm_retry_on connect_error timeout rate_limited quota_exhausted
                         overloaded server_error auth_error invalid_request
                         context_length content_filter;
            llm_attempts 5;
            llm_backoff base=50ms max=1s;
            llm_deadline 30s;');
passes('every engine directive');

conf('llm_route chat;
            llm_target /_llm/a;
            llm_retry_on off;
            llm_backoff base=0;
            llm_deadline 0;');
passes('retries off, no backoff, no deadline');

conf('llm_route chat; llm_target /_llm/a;',
     'llm_retry_on timeout; llm_attempts 2; llm_backoff base=1s max=5s;
        llm_deadline 10s;');
passes('policy at server level');

my $RETRY_VALUES = 'connect_error, timeout, rate_limited, quota_exhausted, '
    . 'overloaded, server_error, auth_error, invalid_request, context_length, '
    . 'content_filter, invalid_response and off';

my @engine = (
    [ 'llm_route chat family=chats; llm_target /_llm/a;',
      'invalid family "chats"', qr/llm_route chat family/ ],
    [ 'llm_route chat kind=chat; llm_target /_llm/a;',
      'invalid parameter "kind=chat"', qr/llm_route chat kind/ ],
    [ 'llm_route chat; llm_target /_llm/a model=;',
      'invalid model ""', qr/llm_target/ ],
    [ 'llm_route chat; llm_target /_llm/a weight=x;',
      'invalid parameter "weight=x"', qr/llm_target/ ],
    [ 'llm_route chat; llm_target /_llm/a tries=0;',
      'invalid parameter "tries=0"', qr/llm_target/ ],
    [ 'llm_route chat; llm_target /_llm/a color=red;',
      'invalid parameter "color=red"', qr/llm_target/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_fallback /_llm/a weight=2;',
      'invalid parameter "weight=2"', qr/llm_fallback/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_fallback _llm/b;',
      'llm target "_llm/b" must be a location URI starting with "/"',
      qr/llm_fallback/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_retry_on timeout flaky;',
      'invalid value "flaky" in "llm_retry_on", valid values are '
      . $RETRY_VALUES, qr/llm_retry_on/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_retry_on stream_interrupted;',
      'invalid value "stream_interrupted" in "llm_retry_on", valid values '
      . 'are ' . $RETRY_VALUES, qr/llm_retry_on/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_retry_on off timeout;',
      '"llm_retry_on" directive "off" cannot be combined with other values',
      qr/llm_retry_on/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_retry_on timeout off;',
      '"llm_retry_on" directive "off" cannot be combined with other values',
      qr/llm_retry_on/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_attempts 0;',
      '"llm_attempts" directive must be between 1 and 100',
      qr/llm_attempts/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_attempts many;',
      '"llm_attempts" directive invalid number', qr/llm_attempts/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_backoff max=1s;',
      '"llm_backoff" must have "base" parameter', qr/llm_backoff/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_backoff base=fast;',
      'invalid parameter "base=fast"', qr/llm_backoff/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_backoff base=1s base=2s;',
      'invalid parameter "base=2s"', qr/llm_backoff/ ],
    [ 'llm_route chat; llm_target /_llm/a;
            llm_backoff base=1s; llm_backoff base=2s;',
      '"llm_backoff" directive is duplicate', qr/llm_backoff base=2s/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_backoff 100ms 2s;',
      'invalid parameter "100ms", use "base=100ms"', qr/llm_backoff/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_backoff base=100ms 2s;',
      'invalid parameter "2s", use "max=2s"', qr/llm_backoff/ ],
    [ 'llm_route chat; llm_target /_llm/a; llm_deadline soon;',
      '"llm_deadline" directive invalid value', qr/llm_deadline/ ],
);

for my $case (@engine) {
    my ($loc, $message, $re) = @$case;
    conf($loc);
    fails("engine: $message", $message, line_of($re));
}

# errors found at merge time name the location's first llm_ directive

conf('llm_route chat; llm_target /_llm/a weight=0;');
fails('all weights zero',
      'all targets of llm route "chat" have zero weight',
      line_of(qr/llm_route chat;/));

conf('llm_route chat; llm_target /_llm/a; llm_backoff base=3s max=1s;');
fails('backoff base above max',
      'llm_backoff base is greater than max for llm route "chat"',
      line_of(qr/llm_route chat;/));

conf('llm_fallback /_llm/a;');
fails('llm_fallback without llm_route',
      '"llm_fallback" requires "llm_route" in the same location',
      line_of(qr/llm_fallback/));

conf('llm_route chat; llm_fallback /_llm/a;');
fails('llm_fallback without llm_target',
      'no "llm_target" is defined for llm route "chat"',
      line_of(qr/llm_route chat;/));

conf('llm_route chat; llm_target /_llm/a;', '
        location = /v1/responses {
            llm_route chat;
            llm_target /_llm/a;
        }');
fails('duplicate route name in a server',
      'duplicate llm route "chat" in a server, first defined in '
      . "$file:" . line_of(qr/^\s*llm_route chat;/),
      line_of(qr/^\s*llm_route chat;/, 2));

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location /a { llm_route chat; llm_target /t; }
        location /t { internal; return 204; }
    }

    server {
        listen 127.0.0.1:%%PORT_8082%%;
        location /a { llm_route chat; llm_target /t; }
        location /t { internal; return 204; }
    }
}
EOF
passes('one route name in two servers');

###############################################################################
# zones, budgets, cooldowns

sub http_conf {
    my ($http, $loc) = @_;
    $t->write_file_expand('nginx.conf', <<"EOF");
events {}

http {
    $http

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/a;
            $loc
        }

        location /_llm/a {
            internal;
            return 204;
        }
    }
}
EOF
}

http_conf('llm_zone llm:1m; llm_zone other:64k;',
          'llm_retry_budget ratio=0.25 min=5/s window=30s zone=other;
            llm_cooldown fails=3 window=5s time=30s;');
passes('zone, budget and cooldown');

http_conf('llm_zone llm:1m; llm_retry_budget; llm_cooldown off;', '');
passes('budget and cooldown at http level');

http_conf('llm_zone llm:1m;', 'llm_retry_budget off;');
passes('budget off');

my @budget = (
    [ 'llm_zone llm;', '', 'invalid zone "llm"', qr/llm_zone/ ],
    [ 'llm_zone :1m;', '', 'invalid zone ":1m"', qr/llm_zone/ ],
    [ 'llm_zone llm:big;', '', 'invalid zone size "llm:big"', qr/llm_zone/ ],
    [ 'llm_zone llm:8k;', '',
      'zone "llm:8k" is too small, it must be at least 32k', qr/llm_zone/ ],
    [ 'llm_zone llm:1m; llm_zone llm:1m;', '', 'duplicate llm zone "llm"',
      qr/llm_zone llm:1m; llm_zone/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget ratio=1.5;',
      'invalid ratio "ratio=1.5", it must be between 0 and 1',
      qr/llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget ratio=-0.1;',
      'invalid ratio "ratio=-0.1", it must be between 0 and 1',
      qr/llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget min=10;',
      'invalid parameter "min=10"', qr/llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget window=1500ms;',
      'invalid window "window=1500ms", it must be a whole number of '
      . 'seconds from 1s to 60s', qr/llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget window=2m;',
      'invalid window "window=2m", it must be a whole number of seconds '
      . 'from 1s to 60s', qr/llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget burst=3;',
      'invalid parameter "burst=3"', qr/llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_retry_budget; llm_retry_budget;',
      '"llm_retry_budget" directive is duplicate',
      qr/llm_retry_budget; llm_retry_budget/ ],
    [ 'llm_zone llm:1m;', 'llm_cooldown fails=0;',
      'invalid parameter "fails=0"', qr/llm_cooldown/ ],
    [ 'llm_zone llm:1m;', 'llm_cooldown window=0.5s;',
      'invalid window "window=0.5s", it must be a whole number of seconds '
      . 'from 1s to 60s', qr/llm_cooldown/ ],
    [ 'llm_zone llm:1m;', 'llm_cooldown time=never;',
      'invalid parameter "time=never"', qr/llm_cooldown/ ],
);

for my $case (@budget) {
    my ($http, $loc, $message, $re) = @$case;
    http_conf($http, $loc);
    fails("budget: $message", $message, line_of($re));
}

http_conf('llm_zone llm:1m;', 'llm_retry_budget zone=nope;');
fails('unknown zone', 'unknown llm zone "nope"',
      line_of(qr/llm_route chat;/));

http_conf('', 'llm_retry_budget;');
fails('budget without a zone', '"llm_retry_budget" requires "llm_zone"',
      line_of(qr/llm_route chat;/));

done_testing;
