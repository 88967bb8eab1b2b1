#!/usr/bin/perl

# docs/troubleshooting.md has an entry for every message the module logs
# at warn or above: each ngx_log_error() and ngx_conf_log_error() in
# src/*.c whose level is NGX_LOG_WARN, ERR, CRIT, ALERT or EMERG, or a
# variable (the level is chosen at run time).  A message matches a line of
# the page when every literal piece of its format (the text between the
# conversions %V, %ui, %s, ...) that holds a letter is on that line.
# No nginx runs here.

use strict;
use warnings;

use lib 't/lib';
use Test::More;

use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $repo = abs_path(dirname(__FILE__) . '/..');
my $page = "$repo/docs/troubleshooting.md";

ok(-f $page, 'docs/troubleshooting.md exists') or BAIL_OUT('no page');

open my $fh, '<', $page or die "$page: $!\n";
my @lines = <$fh>;
close $fh;

# the text of file name macros nginx puts in messages
my %macros = (
    ngx_open_file_n  => 'open()',
    ngx_close_file_n => 'close()',
    ngx_read_file_n  => 'read()',
    ngx_fd_info_n    => 'fstat()',
);

my $level_re = qr/NGX_LOG_(?:WARN|ERR|CRIT|ALERT|EMERG)|[a-z_]+/;
my $conv_re = qr/%[-+ 0#]*(?:\d+|\*)?(?:\.\d+)?[a-zA-Z]+/;

my @messages;

for my $file (sort glob("$repo/src/*.c")) {
    open my $src, '<', $file or die "$file: $!\n";
    my $code = do { local $/; <$src> };
    close $src;

    (my $name = $file) =~ s{.*/}{};

    while ($code =~ /\b(ngx_log_error|ngx_conf_log_error)\(\s*($level_re)\s*,
                     [^,]+,[^,]+,\s*
                     ((?:"(?:[^"\\]|\\.)*"|\w+|\s+)+)/gsx)
    {
        my ($call, $level, $format) = ($1, $2, $3);
        my $line = 1 + (substr($code, 0, $-[0]) =~ tr/\n//);

        next if $level =~ /^NGX_LOG_/
                && $level !~ /^NGX_LOG_(?:WARN|ERR|CRIT|ALERT|EMERG)$/;

        my $text = '';
        while ($format =~ /"((?:[^"\\]|\\.)*)"|(\w+)/g) {
            if (defined $1) {
                (my $s = $1) =~ s/\\(.)/$1/g;
                $text .= $s;
            } elsif (exists $macros{$2}) {
                $text .= $macros{$2};
            }
        }

        my @pieces = grep { /[a-zA-Z]/ } split /$conv_re/, $text;
        push @messages, { where => "$name:$line", text => $text,
                          pieces => \@pieces };
    }
}

cmp_ok(scalar @messages, '>', 20, 'messages found in src/*.c');

for my $m (@messages) {
    my $found = grep {
        my $l = $_;
        !grep { index($l, $_) < 0 } @{$m->{pieces}}
    } @lines;

    ok($found, "$m->{where}: $m->{text}");
}

done_testing;
