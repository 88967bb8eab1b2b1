#!/usr/bin/perl

# The repository's conf.example passes `nginx -t` with the built module.
# Rewritten only as far as a test prefix needs: the load_module path
# points at the built module, absolute /var, /run and /tmp paths (logs,
# pid) move under the prefix, listen ports become free ports, and
# provider host names that do not resolve here (no DNS in the build
# sandbox) become 127.0.0.1, since nginx resolves upstream names at
# configuration time.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use Socket qw(inet_aton);

my $example = "$Test::LLM::REPO/conf.example";

plan(skip_all => 'conf.example does not exist yet') unless -f $example;

my $t = Test::LLM->new;
my $dir = $t->testdir;

open my $fh, '<', $example or die "can't read $example: $!\n";
my $conf = do { local $/; <$fh> };
close $fh;

like($conf, qr/^\s*llm_route\s/m, 'conf.example has an llm route');

# absolute paths into the prefix (nginx -t opens log files)

my %moved;
$conf =~ s{(?<=[\s"'])((?:/var|/run|/tmp)/[^\s;"']+)}{
    my $to = "$dir/root$1";
    make_path(dirname($to));
    $moved{$1} = 1;
    $to;
}ge;
note("moved under the prefix: " . join(' ', sort keys %moved)) if %moved;

# the module

my $loads = $conf =~ s{^(\s*load_module\s+)\S*ngx_http_llm_module\.so\s*;}
                      {$1$Test::LLM::MODULE;}mg;
is($loads, 1, 'conf.example loads the module once');

# listen ports (nginx -t binds them)

$conf =~ s{^(\s*listen\s+(?:\S+:)?)(\d+)}
          {$1 . $t->port("example$2")}mge;

# upstream and proxy_pass host names

my %upstreams = map { $_ => 1 } $conf =~ /^\s*upstream\s+(\S+)\s*\{/mg;

my $resolve = sub {
    my ($host, $what) = @_;
    return $host if $host =~ /^[\d.]+$/ || $host =~ /^\[/;
    return $host if $upstreams{$host};
    return $host if inet_aton($host);
    note("$what $host does not resolve here: using 127.0.0.1");
    return '127.0.0.1';
};

$conf =~ s/(^\s*upstream\s+\S+\s*\{)([^\}]*)/$1 . servers($2)/mge;

sub servers {
    my ($block) = @_;
    $block =~ s/^(\s*server\s+)([^\s:;]+)/$1 . $resolve->($2, 'server')/mge;
    return $block;
}

$conf =~ s{(proxy_pass\s+\w+://)([^\s:/;]+)}
          {$1 . $resolve->($2, 'proxy_pass host')}ge;

$t->write_file_expand('nginx.conf', $conf);

my ($ok, $out) = $t->test_config;

ok($ok, 'nginx -t passes on conf.example') or diag($out);
like($out, qr/test is successful/, 'test is successful');
unlike($out, qr/\[(?:emerg|alert)\]/, 'no complaints');

done_testing;
