#!/usr/bin/perl

# README.md's synopsis passes `nginx -t` as written, with the key file it
# shows next to it.  Rewritten only as far as a test prefix needs (as
# t/conf_example.t does for conf.example): the include of the package's
# modules-enabled files becomes a load_module of the built module, the
# key file's path and absolute /var, /run and /tmp paths move under the
# prefix, listen ports become free ports, and provider host names that do
# not resolve here become 127.0.0.1.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use File::Basename qw(dirname);
use File::Path qw(make_path);
use Socket qw(inet_aton);

my $readme = $ENV{TEST_LLM_README} || "$Test::LLM::REPO/README.md";

my $t = Test::LLM->new;
my $dir = $t->testdir;

open my $fh, '<', $readme or die "can't read $readme: $!\n";
my $text = do { local $/; <$fh> };
close $fh;

my ($section) = $text =~ /^## Synopsis\n(.*?)^## /ms;
ok($section, 'README has a synopsis');
$section //= '';

my @blocks = $section =~ /^```nginx\n(.*?)^```$/msg;
my $conf = $blocks[0] // '';
like($conf, qr/^\s*llm_route\s/m, 'the synopsis has an llm route');

# a file the synopsis includes, shown in a block of its own after a line
# that names it

my %files;
for my $inc ($conf =~ /^\s*include\s+(\S+);/mg) {
    next if $inc =~ m{modules-enabled};
    my ($body) = $section =~ /\Q$inc\E\b[^\n]*(?:\n[^\n`]+)*\n\n```nginx\n(.*?)^```$/ms;
    ok(defined $body, "the synopsis shows $inc");
    $files{$inc} = $body // '';
}

# the module: the package's modules-enabled files load it

my $loads = $conf =~ s{^(\s*load_module\s+)\S*ngx_http_llm_module\.so\s*;}
                      {$1$Test::LLM::MODULE;}mg;
$loads += $conf =~ s{^(\s*)include\s+/etc/nginx/modules-enabled/\*\.conf;}
                    {${1}load_module $Test::LLM::MODULE;}mg;
is($loads, 1, 'the synopsis loads the module once');

my %moved;
$conf =~ s{(?<=[\s"'])((?:/var|/run|/tmp)/[^\s;"']+)}{
    my $to = "$dir/root$1";
    make_path(dirname($to));
    $moved{$1} = 1;
    $to;
}ge;
note("moved under the prefix: " . join(' ', sort keys %moved)) if %moved;

for my $inc (sort keys %files) {
    (my $name = $inc) =~ s{.*/}{};
    $t->write_file($name, $files{$inc});
    $conf =~ s{(include\s+)\Q$inc\E;}{$1$dir/$name;}g;
}

$conf =~ s{^(\s*listen\s+(?:\S+:)?)(\d+)}
          {$1 . $t->port("readme$2")}mge;

$conf =~ s{(proxy_pass\s+\w+://)([^\s:/;]+)}{
    my $host = $2;
    if ($host !~ /^[\d.]+$/ && !inet_aton($host)) {
        note("proxy_pass host $host does not resolve here: using 127.0.0.1");
        $host = '127.0.0.1';
    }
    $1 . $host;
}ge;

$t->write_file_expand('nginx.conf', $conf);

my ($ok, $out) = $t->test_config;

ok($ok, 'nginx -t passes on the synopsis') or diag($out);
unlike($out, qr/\[(?:emerg|alert|warn)\]/, 'no complaints');

done_testing;
