#!/usr/bin/perl

# make deb: the package builds, lintian finds nothing to say, dpkg -i puts
# the module into Debian's nginx the way Debian's own libnginx-mod-*
# packages do (the .so in /usr/lib/nginx/modules, mod-http-llm.conf
# enabled in /etc/nginx/modules-enabled, the nginx ABI and the shared
# libraries as dependencies, the docs in /usr/share/doc), and an nginx on
# a private config that includes /etc/nginx/modules-enabled/*.conf serves
# a completion through a route.  The package is purged at the end: the
# machine is left as it was.
#
# It changes the system, so it runs as root only, not when the package is
# already installed (it would remove it), and not with TEST_LLM_DEB=0.
# About 30 s, most of it the build; make test-deb runs it alone.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Time::HiRes qw(sleep);

my $pkg = 'libnginx-mod-http-llm';

plan(skip_all => 'TEST_LLM_DEB=0')
    if defined $ENV{TEST_LLM_DEB} && $ENV{TEST_LLM_DEB} eq '0';
plan(skip_all => 'installs a package: run as root') if $> != 0;
plan(skip_all => 'debhelper, dpkg-dev or nginx-dev missing: '
                 . 'tools/deps.sh deb')
    unless -x '/usr/bin/dh_nginx' && -x '/usr/bin/dpkg-buildpackage';
plan(skip_all => "$pkg is installed here; the test would remove it")
    if `dpkg-query -W -f='\${Status}' $pkg 2>/dev/null` =~ /installed$/;

my $t = Test::LLM->new;
my $dir = $t->testdir;
my $repo = $Test::LLM::REPO;

sub run_cmd {
    my ($timeout, @cmd) = @_;
    my ($status, $out) = Test::LLM::_capture($timeout, @cmd);
    return ($status == 0, $out);
}

# dpkg waits for no lock: retry while another dpkg or apt holds it
sub dpkg {
    my @args = @_;
    my ($ok, $out);
    for (1 .. 60) {
        ($ok, $out) = run_cmd(120, 'dpkg', @args);
        last if $ok || $out !~ /lock/i;
        sleep 1;
    }
    return ($ok, $out);
}

my $installed;

END {
    if ($installed) {
        my ($ok, $out) = dpkg('--purge', $pkg);
        print STDERR "# purge failed: $out\n" unless $ok;
    }
}

# the build

my ($ok, $out) = run_cmd(600, 'make', '-s', '-C', $repo, 'deb',
                         "BUILD=$dir/build");
ok($ok, 'make deb') or diag($out);

open my $fh, '<', "$repo/src/ngx_http_llm_module.h" or die "$!\n";
my ($version) = do { local $/; <$fh> }
    =~ /^#define NGX_HTTP_LLM_VERSION\s+"([^"]+)"/m;
close $fh;

chomp(my $arch = `dpkg --print-architecture`);
my $deb = "$dir/build/${pkg}_${version}_$arch.deb";
ok(-f $deb, "${pkg}_${version}_$arch.deb") or BAIL_OUT('no package');

# what it carries

($ok, $out) = run_cmd(30, 'dpkg-deb', '-f', $deb, 'Depends');
like($out, qr/\bnginx-abi-\d[\w.-]*/, 'depends on the nginx ABI');
for my $lib (qw(libyajl2 libhiredis)) {
    like($out, qr/\b\Q$lib\E/, "depends on $lib (shlibs)");
}
unlike($out, qr/-dev\b/, 'no -dev package among the dependencies');

($ok, $out) = run_cmd(30, 'dpkg-deb', '-c', $deb);
like($out, qr{ \./usr/lib/nginx/modules/ngx_http_llm_module\.so$}m,
     'the module in the modules directory');
like($out, qr{ \./usr/share/nginx/modules-available/mod-http-llm\.conf$}m,
     'mod-http-llm.conf');
like($out, qr{ \./usr/share/doc/$pkg/README\.md(?:\.gz)?$}m, 'README');
like($out, qr{ \./usr/share/doc/$pkg/CHANGES(?:\.gz)?$}m, 'CHANGES');
like($out, qr{ \./usr/share/doc/$pkg/directives\.md(?:\.gz)?$}m,
     'docs/*.md');

my $preflight = -x "$dir/build/deb/$pkg-$version/debian/build/llm-preflight"
    || -x "$repo/build/llm-preflight";
if ($preflight) {
    like($out, qr{ \./usr/bin/llm-preflight$}m, 'llm-preflight in /usr/bin');
}

SKIP: {
    skip('lintian missing', 1) unless -x '/usr/bin/lintian';

    my @changes = glob("$dir/build/deb/*.changes");
    ($ok, $out) = run_cmd(300, 'lintian', '--fail-on', 'error,warning',
                          '-I', $deb, @changes);
    my @findings = grep { /^[EWI]: / } split /\n/, $out;
    ok($ok && !@findings, 'lintian -I: nothing to report')
        or diag($out);
}

# installed

($ok, $out) = dpkg('-i', $deb);
$installed = 1;
ok($ok, 'dpkg -i') or diag($out);

ok(-f '/usr/lib/nginx/modules/ngx_http_llm_module.so', 'module installed');
if ($preflight) {
    ($ok, $out) = run_cmd(30, '/usr/bin/llm-preflight', '--version');
    like($out, qr/^llm-preflight \Q$version\E\b/, 'llm-preflight runs')
        or diag($out);
}

my $enabled = '/etc/nginx/modules-enabled/50-mod-http-llm.conf';
ok(-l $enabled, 'enabled in modules-enabled');
is(readlink($enabled), '/usr/share/nginx/modules-available/mod-http-llm.conf',
   'enabled as Debian enables its modules');

# nginx on a private config with the system's enabled modules

my $conf = <<"EOF";
include /etc/nginx/modules-enabled/*.conf;

daemon on;
pid $dir/logs/deb.pid;
error_log $dir/logs/deb-error.log info;

events {}

http {
    client_body_temp_path $dir/temp/client_body;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;

    log_format llm '\$status route=\$llm_route target=\$llm_target '
                   'attempts=\$llm_attempts';
    access_log $dir/logs/deb-access.log llm;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route  chat;
            llm_target /_llm/mock;
        }

        location /_llm/mock {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }

    # the provider, a local mock
    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location = /v1/chat/completions {
            default_type application/json;
            return 200 '{"id":"chatcmpl-deb","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"packaged"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}';
        }
    }
}
EOF

mkdir "$dir/temp";

# Debian's nginx has the prefix /usr/share/nginx, where "modules" links to
# /usr/lib/nginx/modules: the same link under the test prefix, for the
# relative load_module paths of the enabled .conf files
symlink('/usr/lib/nginx/modules', "$dir/modules") or die "symlink: $!\n";
$t->write_file('deb.conf', $t->expand($conf));

my @nginx = ($Test::LLM::NGINX, '-p', "$dir/", '-c', "$dir/deb.conf",
             '-e', "$dir/logs/deb-error.log");

($ok, $out) = run_cmd(30, @nginx, '-t');
ok($ok, 'nginx -t with modules-enabled/*.conf') or diag($out);

($ok, $out) = run_cmd(30, @nginx);
ok($ok, 'nginx starts') or diag($out);
$t->waitforsocket('127.0.0.1:' . $t->port(8080), 10);

my $r = parse_response(http_post('/v1/chat/completions',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
    port => $t->port(8080),
    headers => { 'Content-Type' => 'application/json' }));

is($r->{status}, 200, 'a completion through the route');
like($r->{body}, qr/"content":"packaged"/, 'the provider\'s answer');

# the mock provider's line comes first; the route's once its request
# ends, which may be just after the client has the whole answer
my $log = '';
for (1 .. 50) {
    $log = -f "$dir/logs/deb-access.log" ? $t->read_file('logs/deb-access.log')
                                         : '';
    last if $log =~ /route=chat/;
    sleep 0.1;
}
like($log, qr{^200 route=chat target=/_llm/mock attempts=1$}m,
     'logged by the module');

run_cmd(30, @nginx, '-s', 'quit');
for (1 .. 50) {
    last unless -f "$dir/logs/deb.pid";
    sleep 0.1;
}
ok(!-f "$dir/logs/deb.pid", 'nginx stopped');

# purged

($ok, $out) = dpkg('--purge', $pkg);
$installed = 0 if $ok;
ok($ok, 'dpkg --purge') or diag($out);
ok(!-e '/usr/lib/nginx/modules/ngx_http_llm_module.so', 'module removed');
ok(!-l $enabled && !-l "$enabled.removed", 'no link left');
ok(!-e '/usr/bin/llm-preflight', 'no llm-preflight left') if $preflight;

done_testing;
