#!/usr/bin/perl

# The module's version (CHANGES): logged at the notice level when nginx
# starts and at each reload, never by nginx -t; on the status page and as
# nginx_llm_build_info in Prometheus.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP qw(decode_json);

my $t = Test::LLM->new(log_level => 'notice');

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /status {
            llm_status;
        }
    }
}
EOF

open my $fh, '<', "$Test::LLM::REPO/CHANGES" or die "CHANGES: $!\n";
my ($version) = do { local $/; <$fh> } =~ /ngx_http_llm_module (\d+\.\d+\.\d+)/;
close $fh;
ok($version, "CHANGES names the version ($version)");

my (undef, $out) = $t->test_config;
unlike($out, qr/llm module/, 'nginx -t does not log it');

$t->run;

my $nginx = `$Test::LLM::NGINX -v 2>&1` =~ m{nginx/(\S+)} ? $1 : '?';

like($t->read_file('logs/error.log'),
     qr/\[notice\] .*llm module \Q$version\E \(nginx \Q$nginx\E\)/,
     'logged at start');

ok($t->reload, 'reloaded');
my @lines = grep { /llm module \Q$version\E/ }
            split /\n/, $t->read_file('logs/error.log');
is(scalar @lines, 2, 'logged again at the reload');

my $s = decode_json(parse_response(http_get('/status',
                                            port => $t->port(8080)))->{body});
is($s->{module}{version}, $version, 'status: module version');
is($s->{module}{nginx}, $nginx, 'status: nginx version');

my $p = parse_response(http_get('/status?format=prometheus',
                                port => $t->port(8080)))->{body};
like($p, qr/^nginx_llm_build_info\{version="\Q$version\E",nginx="\Q$nginx\E"\} 1$/m,
     'prometheus: nginx_llm_build_info');

done_testing;
