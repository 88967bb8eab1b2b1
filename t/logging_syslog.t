#!/usr/bin/perl

# The shipped access log format through syslog (issue 7 item 2): the
# `log_format llm_json escape=json` of conf.example, read out of that
# file, sent with `access_log syslog:server=127.0.0.1:PORT llm_json;` to
# a local UDP listener (a forked reader that writes every datagram it
# gets).  Each datagram is one syslog message: the header
# (`<190>Nov 21 07:00:00 host nginx: `, facility local7, severity info)
# is stripped and the rest parsed as JSON, under a mix of successes,
# retries, fallbacks, failures, a 405, a stream and a client model name
# full of characters that need escaping.  Canary secrets in the prompt
# and the credential headers never reach a datagram or a log.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use IO::Socket::INET;
use IO::Handle;
use JSON::PP ();

my $t = Test::LLM->new;

my $example = "$Test::LLM::REPO/conf.example";
open my $fh, '<', $example or die "can't read $example: $!\n";
my $example_text = do { local $/; <$fh> };
close $fh;

my ($MAP) = $example_text =~ /^\s*(map\s+\$llm_family\s+\$\w+\s*\{[^}]*\})/m;
# the request id map: its regex holds braces, inside quotes
my ($RID_MAP) = $example_text
    =~ /^\s*(map\s+\$http_x_request_id\s+\$\w+\s*\{(?:"[^"]*"|[^"}])*\})/m;
my ($FORMAT) = $example_text
    =~ /^\s*(log_format\s+llm_json\s+escape=json(?:\s+'[^']*')+\s*;)/m;

ok(defined $FORMAT, 'conf.example has log_format llm_json escape=json')
    or BAIL_OUT('no llm_json format in conf.example');
$MAP //= '';
$MAP .= "\n    $RID_MAP" if defined $RID_MAP;

# the UDP listener: every datagram raw to logs/syslog.log (scanned for
# canaries by the harness) and hex-encoded, one a line, to
# mock/syslog.hex (parsed here: a datagram may hold any byte)

my $udp = IO::Socket::INET->new(Proto => 'udp', LocalAddr => '127.0.0.1',
                                LocalPort => 0)
    or die "udp listener: $!\n";
my $UDP_PORT = $udp->sockport;
my $dir = $t->testdir;

$t->run_daemon(sub {
    open my $raw, '>>', "$dir/logs/syslog.log" or die "$!\n";
    open my $hex, '>>', "$dir/mock/syslog.hex" or die "$!\n";
    binmode $raw;
    $raw->autoflush(1);
    $hex->autoflush(1);
    while (1) {
        my $from = $udp->recv(my $dgram, 65536);
        next unless defined $from && length $dgram;
        # one write each: a reader never sees half a line
        syswrite $raw, $dgram . "\n";
        syswrite $hex, unpack('H*', $dgram) . "\n";
    }
});
close $udp;

my $conf = <<'EOF';
events {}

http {
    %%MAP%%

    %%FORMAT%%

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        access_log syslog:server=127.0.0.1:%%UDP%% llm_json;

        llm_backoff base=1ms max=5ms;

        location = /v1/chat/completions {
            llm_route    chat;
            llm_target   /_llm/primary model=gpt-4o-mini tries=2;
            llm_fallback /_llm/backup model=claude-3-5-haiku;
            llm_attempts 3;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://prov/$1/v1/chat/completions;
        }
    }
}
EOF

$conf =~ s/%%MAP%%/$MAP/;
$conf =~ s/%%FORMAT%%/$FORMAT/;
$conf =~ s/%%UDP%%/$UDP_PORT/;
$t->write_file_expand('nginx.conf', $conf);

my $PROMPT = 'CANARY-prompt-syslog-81d0';
my $AUTH   = 'sk-CANARY-syslog-auth-2f9c';
my $XKEY   = 'sk-ant-CANARY-syslog-xkey-c4e7';
my $AZKEY  = 'CANARY-syslog-api-key-77b1';
my $QKEY   = 'CANARY-syslog-query-5a0e';

$t->canary($PROMPT, $AUTH, $XKEY, $AZKEY, $QKEY);

my $STREAM = join '', map { "data: $_\n\n" }
    '{"object":"chat.completion.chunk","model":"gpt-4o-mini","choices":'
    . '[{"index":0,"delta":{"content":"hi"}}],"usage":null}',
    '{"object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    . '"usage":{"prompt_tokens":7,"completion_tokens":3}}',
    '[DONE]';

$t->run_mock_provider(port => $t->port(8081), name => 'prov',
                      handler => sub {
    my ($req, $conn) = @_;
    if (($req->{headers}{'x-case'} // '') eq 'stream') {
        return { status => 200,
                 headers => [ 'Content-Type' => 'text/event-stream' ],
                 chunked => 100, body => $STREAM };
    }
    return scripted($req, $conn);
});

$t->run;

my $port = $t->port(8080);
my $JSON = JSON::PP->new->utf8;
my $n = 0;

sub datagrams {
    my ($want) = @_;
    my $deadline = time + 5;
    my @d;
    while (1) {
        # complete lines only: a long datagram's line may still be
        # half written when read on a slow machine
        my $text = $t->read_file('mock/syslog.hex');
        $text =~ s/[^\n]*\z//;
        @d = map { pack 'H*', $_ } split /\n/, $text;
        last if @d >= $want || time > $deadline;
        select undef, undef, undef, 0.02;
    }
    return @d;
}

sub send_req {
    my (%o) = @_;
    my $model = $o{model} // '"gpt-4o"';
    my $body = qq({"model":$model,)
        . ($o{stream} ? '"stream":true,"stream_options":'
                        . '{"include_usage":true},' : '')
        . qq("messages":[{"role":"user","content":"$PROMPT"}]});

    my $r = parse_response(http(http_request($o{method} // 'POST',
        "/v1/chat/completions?key=$QKEY",
        body => ($o{method} ? undef : $body),
        headers => [ 'Content-Type' => 'application/json',
                     'Authorization' => "Bearer $AUTH",
                     'x-api-key' => $XKEY, 'api-key' => $AZKEY,
                     'X-Case' => $o{case} // '*:ok' ]),
        port => $port));
    $n++;

    my @d = datagrams($n);
    return ($r, $d[$n - 1], scalar @d);
}

my @cases = (
    [ 'success', { case => '*:ok' }, 200,
      { 'llm.attempts' => '1', 'llm.retry_decision' => '',
        'llm.fallback' => '0', 'error.type' => '',
        'gen_ai.usage.input_tokens' => '9',
        'gen_ai.usage.output_tokens' => '3',
        'gen_ai.response.model' => 'gpt-4o-mini',
        'llm.attempt_statuses' => '200' } ],
    [ 'retry', { case => '1:rl;*:ok' }, 200,
      { 'llm.attempts' => '2', 'llm.retry_decision' => 'retry',
        'llm.attempt_errors' => 'rate_limited, -',
        'llm.attempt_statuses' => '429, 200' } ],
    [ 'fallback', { case => '1:500;2:500;*:ok' }, 200,
      { 'llm.attempts' => '3', 'llm.retry_decision' => 'fallback',
        'llm.fallback' => '1', 'llm.target' => '/_llm/backup',
        'llm.target_model' => 'claude-3-5-haiku',
        'llm.attempt_targets' =>
            '/_llm/primary, /_llm/primary, /_llm/backup' } ],
    [ 'final failure', { case => '*:503' }, 503,
      { 'llm.attempts' => '3', 'error.type' => 'overloaded',
        'llm.retry_decision' => 'attempts_exhausted',
        'http.response.status_code' => '503',
        'llm.attempt_statuses' => '503, 503, 503' } ],
    [ 'GET', { method => 'GET' }, 405,
      { 'llm.attempts' => '0', 'http.request.method' => 'GET',
        'http.response.status_code' => '405' } ],
    [ 'stream', { case => 'stream', stream => 1 }, 200,
      { 'llm.stream' => '1', 'gen_ai.usage.input_tokens' => '7',
        'gen_ai.usage.output_tokens' => '3' } ],
    [ 'model to escape', { model => '"a\"b\\\\c\nd\u0001\u00e8"' }, 200,
      { 'gen_ai.request.model' => "a\"b\\c\nd\x01\x{e8}",
        'llm.attempts' => '1' } ],
    [ 'long model', { model => '"' . ('m' x 256) . '"' }, 200,
      { 'gen_ai.request.model' => 'm' x 256 } ],
);

for my $c (@cases) {
    my ($name, $o, $status, $want) = @$c;

    my ($r, $dgram, $count) = send_req(%$o);

    is($r->{status}, $status, "$name: status");
    is($count, $n, "$name: one datagram per request");
    $dgram //= '';

    my ($head, $json) = $dgram
        =~ /^(<\d+>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ nginx: )(.*)\z/s
        ? ($1, $2) : ('', undef);
    like($head, qr/^<190>/, "$name: syslog header, local7.info");
    unlike($dgram, qr/\n/, "$name: one line");
    unlike($dgram, qr/\Q$QKEY\E|key=/, "$name: no query string");

    my $rec = defined $json ? eval { $JSON->decode($json) } : undef;
    ok(ref $rec eq 'HASH', "$name: the message parses as JSON")
        or diag("datagram: $dgram");
    $rec //= {};

    is($rec->{'llm.route'}, 'chat', "$name: llm.route");
    is($rec->{'url.path'}, '/v1/chat/completions', "$name: url.path");
    is($rec->{'gen_ai.operation.name'}, 'chat',
       "$name: gen_ai.operation.name");
    is($rec->{'http.response.status_code'}, $status,
       "$name: http.response.status_code");

    for my $k (sort keys %$want) {
        is($rec->{$k}, $want->{$k}, "$name: $k");
    }
}

done_testing;
