#!/usr/bin/perl

# The build refuses 32-bit platforms (docs/design.md section 5; README,
# "Install"): the block of `config` that checks nginx's own measure of
# sizeof(void *) ($ngx_ptr_size, auto/unix), run by sh as nginx's
# configure runs it, with 8, 4 and no value; and the configure log of
# the build under test shows the check passed.  A 32-bit nginx cannot be
# built here (no 32-bit libc), hence the block run on its own.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use File::Basename qw(dirname);
use File::Temp qw(tempdir);

my $config = do {
    open my $fh, '<', "$Test::LLM::REPO/config" or die "config: $!\n";
    local $/;
    <$fh>;
};

my ($block) = $config =~ /^(# 64-bit platforms only.*?^fi\n)/ms;
ok($block, 'config has the 64-bit block');

my $dir = tempdir(CLEANUP => 1);
open my $fh, '>', "$dir/block.sh" or die "$dir/block.sh: $!\n";
print $fh $block // "exit 99\n";
close $fh;

# what sh prints and its exit status, the block run with $ngx_ptr_size
sub run_block {
    my ($size) = @_;
    my $set = defined $size ? "ngx_ptr_size=$size" : 'unset ngx_ptr_size';
    my $out = `sh -c '$set; ngx_n=-n; ngx_c=; . "$dir/block.sh"' 2>&1`;
    return ($? >> 8, $out);
}

my ($rc, $out) = run_block(8);
is($rc, 0, '64-bit: configure goes on');
is($out, "checking for a 64-bit platform ... found\n", '64-bit: found');

($rc, $out) = run_block(4);
is($rc, 1, '32-bit: configure stops');
like($out, qr/^checking for a 64-bit platform \.\.\. not found$/m,
     '32-bit: not found');
my $why = "error: the ngx_http_llm_module requires a 64-bit platform\n"
    . '(sizeof(void *) is 4 here)';
like($out, qr/\Q$why\E/,
     '32-bit: the error says why');

($rc, $out) = run_block(undef);
is($rc, 1, 'no measure: configure stops');
like($out, qr/sizeof\(void \*\) is unknown here/, 'no measure: said so');

SKIP: {
    my $log = dirname($Test::LLM::MODULE) . '/nginx/configure.log';
    skip "no $log (a module not built by make)", 1 unless -f $log;
    open my $lf, '<', $log or die "$log: $!\n";
    local $/;
    like(<$lf>, qr/^checking for a 64-bit platform \.\.\. found$/m,
         'the build under test: the check ran and passed');
}

done_testing;
