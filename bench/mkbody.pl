#!/usr/bin/perl
# Write an OpenAI-style chat completion request body of exactly SIZE bytes.
#
#   bench/mkbody.pl SIZE FILE
#
# Small sizes give a system prompt and one user question; large sizes a long
# conversation (many user/assistant turns).  The output is deterministic and
# plain ASCII JSON with no escapes, so it is the same bytes on every run.

use strict;
use warnings;

my ($size, $file) = @ARGV;
die "usage: $0 SIZE FILE\n" unless defined $file && $size =~ /^\d+$/;

my @user = (
    "Can you explain how TCP congestion control reacts to packet loss on a"
  . " long fat network, and what BBR does differently from CUBIC?",
    "Thanks. How would that change if the path had a shallow buffer at the"
  . " bottleneck router and several competing flows?",
    "Please summarise the trade-offs in a short table with three columns:"
  . " algorithm, strengths, weaknesses.",
    "What metrics should I export from my load balancer to notice these"
  . " problems early in production?",
);
my @assistant = (
    "Loss-based algorithms such as CUBIC treat a dropped packet as a signal"
  . " of congestion and cut the congestion window multiplicatively, then"
  . " grow it again along a cubic curve. BBR instead builds a model of the"
  . " bottleneck bandwidth and the round-trip propagation time and paces"
  . " packets at the estimated rate, so isolated losses do not make it back"
  . " off.",
    "With a shallow buffer, loss happens before the queue grows, so CUBIC"
  . " backs off often and under-uses the link, while BBR keeps sending at"
  . " its estimate and can cause more retransmissions for the other flows."
  . " Fairness between the two families depends strongly on buffer depth.",
    "Algorithm | Strengths | Weaknesses. CUBIC | simple, fair with itself,"
  . " widely deployed | slow on lossy long paths. BBR | high throughput,"
  . " low queueing delay | can be unfair to loss-based flows, more"
  . " retransmissions on shallow buffers.",
    "Export retransmission rate, smoothed RTT and its variance, the number"
  . " of active connections, time to first byte, and per-upstream error"
  . " rates; alert on sudden changes relative to a rolling baseline.",
);

my $head = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":'
         . '"You are a concise, accurate assistant for network engineers.'
         . ' Answer in plain English and keep answers short."}';
my $tail = '],"temperature":0.7,"top_p":1,"max_tokens":512,"stream":false,'
         . '"user":"bench-client-0001"}';

my @msgs;
my $len = length($head) + length($tail);
my $i = 0;

# whole turns while they fit, leaving room for a last padded user message
while (1) {
    my $m = sprintf(',{"role":"%s","content":"%s"}',
                    $i % 2 ? "assistant" : "user",
                    $i % 2 ? $assistant[($i >> 1) % @assistant]
                           : $user[($i >> 1) % @user]);
    last if $len + length($m) + 64 > $size;
    push @msgs, $m;
    $len += length($m);
    $i++;
}

# the last message is from the user; pad its content to the exact size
my $pre = ',{"role":"user","content":"';
my $post = '"}';
my $room = $size - $len - length($pre) - length($post);
die "size $size too small\n" if $room < 1;
my $text = "";
my $filler = "Please also mention anything else that matters here. ";
$text .= $filler while length($text) < $room;
$text = substr($text, 0, $room);
$text =~ s/ $/./;
push @msgs, $pre . $text . $post;

my $body = $head . join("", @msgs) . $tail;
die "internal: size " . length($body) . " != $size\n" if length($body) != $size;

open(my $fh, '>', $file) or die "$file: $!\n";
print $fh $body;
close($fh) or die "$file: $!\n";
