#!/usr/bin/perl

# A full llm_zone (issue 11, item 5).  A small zone with more routes and
# targets than it has pages: those left out are logged at the error
# level, once each, and the status page says the zone is
# full (JSON "full", nginx_llm_zone_full) with its bytes used and total.
# A reload that drops most routes and adds new ones frees the nodes of
# the dropped ones that no request used lately, and the new routes get
# nodes in the space: counted, the zone no longer full.  A dropped route
# that served a request a moment ago keeps its node (an old worker may
# still be counting in it), and finds its counters again when a later
# reload brings it back.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP;
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

sub config {
    my (@routes) = @_;

    my $locations = join '', map {
        "        location = /$_/v1/chat/completions {\n"
        . "            llm_route $_;\n"
        . "            llm_target /_llm/$_;\n"
        . "        }\n\n"
    } @routes;

    $t->write_file_expand('nginx.conf', <<"EOF");
worker_processes 2;

events {}

http {
    llm_zone small:64k;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

$locations
        location ~ ^/_llm/ {
            internal;
            return 200 '{"id":"x","object":"chat.completion","choices":[]}';
        }

        location = /status {
            llm_status;
        }
    }
}
EOF
}

my $port;

sub prometheus {
    return parse_response(http_get('/status?format=prometheus',
                                   port => $port))->{body} // '';
}

sub post {
    my ($route) = @_;
    return parse_response(http_post("/$route/v1/chat/completions",
                                    '{"model":"m","messages":[]}',
                                    port => $port));
}

sub counted {
    my ($s) = @_;
    return sort grep { $s->{routes}{$_}{counted} } keys %{$s->{routes}};
}

# errors logged since an offset of error.log, of counters (the metrics
# nodes come last and find no room here: t/metrics.t)
sub full_lines {
    my ($offset) = @_;
    return grep { /llm zone "small" is full: .* is not counted/ }
           split /\n/, $t->read_from('logs/error.log', $offset);
}

###############################################################################
# twelve routes, each with its target: 24 nodes of a page each, in a
# zone of 16 pages

my @old = map { "old$_" } 1 .. 12;

config(@old);
$t->run;
$port = $t->port(8080);

my $s = $t->status_json;
my $z = $s->{zones}[0] || {};

is($z->{name}, 'small', 'the zone');
ok(JSON::PP::is_bool($z->{full}) && $z->{full}, 'full: true');
ok($z->{total_bytes} > 0 && $z->{total_bytes} <= 65536,
   "full: total_bytes $z->{total_bytes}");
is($z->{used_bytes}, $z->{total_bytes}, 'full: every page in use');

my @counted = counted($s);
ok(@counted >= 1 && @counted < 12,
   'full: some routes counted (' . scalar(@counted) . ')');
ok(!$s->{routes}{old12}{counted}, 'full: the last route is not');

my @lines = full_lines(0);
ok(@lines && !grep({ !/\[error\]/ } @lines), 'full: logged at error');
like(join("\n", @lines),
     qr/llm zone "small" is full: route "old12" is not counted, its retries are not limited/,
     'full: the route left out is named');
is(scalar(grep { /route "old12"/ } @lines), 1, 'full: once per route');

my $p = prometheus();
like($p, qr/^nginx_llm_zone_full\{zone="small"\} 1$/m, 'prometheus: full 1');
like($p, qr/^nginx_llm_zone_bytes\{zone="small",kind="used"\} $z->{used_bytes}$/m,
     'prometheus: bytes used');
like($p, qr/^nginx_llm_zone_bytes\{zone="small",kind="total"\} $z->{total_bytes}$/m,
     'prometheus: bytes total');

# a request on a counted route: its nodes are in use
my $busy = $counted[0];
is(post($busy)->{status}, 200, "a request on $busy");
is($t->status_json->{routes}{$busy}{requests}, 1, "$busy counted it");

###############################################################################
# a reload drops every old route and adds four new ones (8 nodes)

my @new = map { "new$_" } 1 .. 4;
my $offset = $t->log_offset('logs/error.log');

config(@new);
ok($t->reload, 'reload with new routes');

$s = $t->status_json;
$z = $s->{zones}[0] || {};

is_deeply([ counted($s) ], [ @new ], 'reclaimed: every new route counted');
ok(JSON::PP::is_bool($z->{full}) && !$z->{full}, 'reclaimed: full: false');
ok($z->{used_bytes} == $z->{total_bytes} && $z->{metrics_full},
   'reclaimed: the pages left went to the metrics');
is(scalar(full_lines($offset)), 0, 'reclaimed: nothing logged full');
like($t->read_from('logs/error.log', $offset),
     qr/\[info\].*llm zone "small": route "$counted[1]" is no longer configured/,
     'reclaimed: the freed node is logged at info');
like(prometheus(), qr/^nginx_llm_zone_full\{zone="small"\} 0$/m,
     'prometheus: full 0');

is(post('new1')->{status}, 200, 'a new route answers');
is($t->status_json->{routes}{new1}{requests}, 1, 'a new route counts');

###############################################################################
# the busy route was kept: back after another reload, with its counters

config(@new, $busy);
ok($t->reload, "reload with $busy back");

$s = $t->status_json;
is($s->{routes}{$busy}{requests}, 1,
   "$busy, dropped while in use, kept its node");
is($s->{routes}{new1}{requests}, 1, 'a kept route keeps its counters');
ok(!$s->{zones}[0]{full}, 'still not full');

done_testing;
