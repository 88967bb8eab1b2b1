#!/usr/bin/perl

# bench/cgdiff.pl: where the instructions per request of B (the llm
# route) go beyond A's (plain proxy_pass), function by function, from the
# four callgrind files of bench/run.sh (KEEP=1): each candidate served N1
# and N2 requests, so (Ir(N2) - Ir(N1)) / (N2 - N1) is its cost per
# request without start-up.  Functions are read with their symbols only
# from a build of nginx that has them (bench/profile.sh).
#
#   bench/cgdiff.pl DIR SIZE N1 N2 [self|inclusive] [ROWS]

use strict;
use warnings;

my ($dir, $size, $n1, $n2, $mode, $rows) = @ARGV;

die "usage: $0 DIR SIZE N1 N2 [self|inclusive] [ROWS]\n"
    unless defined $n2 && $n2 > $n1;

$mode //= 'self';
$rows //= 30;

sub costs {
    my ($file) = @_;
    my $incl = $mode eq 'inclusive' ? 'yes' : 'no';

    open my $fh, '-|', 'callgrind_annotate', '--auto=no', '--threshold=100',
        "--inclusive=$incl", $file
        or die "callgrind_annotate: $!\n";

    my %c;

    while (<$fh>) {
        # "  1,234 ( 0.56%)  file:function [object]"
        next unless /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+)/;
        my ($ir, $where) = ($1, $2);
        next if $where eq 'PROGRAM';
        $ir =~ tr/,//d;
        (my $fn = $where) =~ s/^.*://;
        $c{$fn} += $ir;
    }

    close $fh;
    return \%c;
}

my %f;

for my $cand (qw(a b)) {
    for my $n ($n1, $n2) {
        my $file = "$dir/callgrind.$cand.$size.$n.out";
        die "$file: not found (bench/run.sh KEEP=1)\n" unless -f $file;
        $f{$cand}{$n} = costs($file);
    }
}

my %per;
my %names;

for my $cand (qw(a b)) {
    my ($c1, $c2) = ($f{$cand}{$n1}, $f{$cand}{$n2});
    for my $fn (keys %$c1, keys %$c2) {
        $per{$cand}{$fn} = (($c2->{$fn} // 0) - ($c1->{$fn} // 0))
                           / ($n2 - $n1);
        $names{$fn} = 1;
    }
}

my @by = sort { $b->[0] <=> $a->[0] }
         map { [ ($per{b}{$_} // 0) - ($per{a}{$_} // 0),
                 $per{a}{$_} // 0, $per{b}{$_} // 0, $_ ] }
         keys %names;

printf "%s instructions per request, %s body: B - A, A, B, function\n",
       $mode, $size;

my $shown = 0;

for my $r (@by) {
    last if $shown++ >= $rows;
    printf "%8.0f %8.0f %8.0f  %s\n", @$r;
}
