#!/usr/bin/perl

# Self-tests of the test harness (t/lib/Test/LLM.pm, Test/LLM/Mock.pm):
# port and prefix expansion, the globals added to nginx.conf, nginx
# start/reload/stop, the mock provider (responses, chunked bodies both
# ways, keepalive, recording, wire faults, SSE pacing), the raw-socket
# client helpers, redis-server, and the log scan behind the end-of-file
# checks (run on planted files, not on this file's own logs).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Digest::MD5 qw(md5_hex);
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

###############################################################################
# expansion and globals

$t->write_file_expand('expand.txt', <<'EOF');
a %%PORT_8080%% b %%PORT_8081%% c %%PORT_8080%% d %%TESTDIR%%
EOF

my $x = $t->read_file('expand.txt');
my ($p1, $p2, $p3, $dir) = $x =~ /^a (\d+) b (\d+) c (\d+) d (\S+)$/;

ok($p1, 'port token expanded');
is($p1, $p3, 'same token, same port');
isnt($p1, $p2, 'different tokens, different ports');
is($t->port(8080), $p1, 'port() returns the expanded port');
is($dir, $t->testdir, 'testdir expanded');
ok(-d "$dir/logs", 'logs dir in the prefix');

$t->write_file_expand('nginx.conf', <<'EOF');
events {}
http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location / { return 200 "hello\n"; }
    }
}
EOF

my $conf = $t->read_file('nginx.conf');
like($conf, qr{^load_module \S+/ngx_http_llm_module\.so;}m,
     'module loaded');
like($conf, qr/^daemon off;/m, 'daemon off added');
like($conf, qr{^error_log \Q$dir\E/logs/error\.log ${\ $t->log_level};}m,
     'error_log in the prefix');
like($conf, qr{client_body_temp_path \Q$dir\E/temp/}, 'temp path added');

{
    my $t2 = Test::LLM->new;
    $t2->write_file_expand('nginx.conf', <<'EOF');
error_log logs/mine.log debug;
events {}
http {
    access_log off;
    server { listen 127.0.0.1:%%PORT_8080%%; }
}
EOF
    my $c = $t2->read_file('nginx.conf');
    is(() = $c =~ /^\s*error_log /mg, 1, 'own error_log kept, none added');
    is(() = $c =~ /access_log /g, 1, 'own access_log kept, none added');
    ok(scalar $t2->test_config, 'nginx -t of a valid config');
}

SKIP: {
    skip 'no echo module (libnginx-mod-http-echo)', 1
        unless -f $Test::LLM::ECHO_MODULE;

    my $t3 = Test::LLM->new->load_module('echo');
    $t3->write_file_expand('nginx.conf', <<'EOF');
events {}
http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        location / { echo hello; }
    }
}
EOF
    ok(scalar $t3->test_config, 'echo module loaded on request');
}

# a module that is not there: the file is skipped when no test has run
# yet (see load_module), and past that a clear error, not an nginx -t
# failure later
ok(!eval { Test::LLM->new->load_module($t->testdir . '/none.so'); 1 }
   && $@ =~ /none\.so not found \(install /,
   'load_module: a missing module named');

###############################################################################
# nginx run, reload, stop

$t->run;

my $r = parse_response(http_get('/', port => $t->port(8080)));
is($r->{status}, 200, 'nginx answers');
is($r->{body}, "hello\n", 'nginx body');

my $master = $t->nginx_pid;
my @w1 = $t->worker_pids;
ok(@w1, 'workers found');
ok($t->reload, 'reload done');
my @w2 = $t->worker_pids;
ok(@w2 && !grep({ my $o = $_; grep { $_ == $o } @w2 } @w1),
   'new workers after reload');
is(parse_response(http_get('/', port => $t->port(8080)))->{status}, 200,
   'answers after reload');
cmp_ok($t->worker_hwm_kb, '>', 0, 'worker peak RSS read from /proc');

$t->stop;
ok(!kill(0, $master), 'master gone after stop');
ok(!grep({ kill 0, $_ } @w2), 'workers gone after stop');
ok(!eval { $t->worker_hwm_kb; 1 } && $@ =~ /no nginx worker/,
   'worker peak RSS: dies when /proc has no worker, never 0');

###############################################################################
# mock provider

my $mport = $t->port(8090);

$t->run_mock_provider(port => $mport, name => 'm', handler => sub {
    my ($req, $conn) = @_;
    my $case = $req->{headers}{'x-case'} || '';

    return [ 200, [ 'X-Seen' => length $req->{body} ], 'plain' ]
        if $case eq 'array';
    return { body => 'a' x 3000, chunked => 1000 } if $case eq 'chunked';
    return $conn->partial(content_length => 100, body => 'short')
        if $case eq 'partial';
    return $conn->reset if $case eq 'reset';
    return $conn->sse(events => [ '{"n":1}', '{"n":2}', '[DONE]' ],
                      delay => 0.3) if $case eq 'sse';
    return;
});

ok($t->waitforsocket("127.0.0.1:$mport"), 'mock listens');

$r = parse_response(http_post('/v1/chat/completions', '{"model":"m"}',
                              port => $mport,
                              headers => { 'X-Case' => 'array' }));
is($r->{status}, 200, 'mock array response');
is($r->{headers}{'x-seen'}, 13, 'mock saw the body');
is($r->{body}, 'plain', 'mock array body');

$r = parse_response(http_post('/', 'x', port => $mport,
                              headers => { 'X-Case' => 'chunked' }));
ok($r->{chunked}, 'chunked response');
ok($r->{complete}, 'chunked response terminated');
is($r->{body}, 'a' x 3000, 'chunked response de-chunked');

my $body = join '', map { sprintf "%07d,", $_ } 1 .. 5000;
http_post('/chunked-in', $body, port => $mport, chunked => 777,
          headers => { 'X-Case' => 'array' });

$r = parse_response(http_post('/', 'x', port => $mport,
                              headers => { 'X-Case' => 'partial' }));
is($r->{status}, 200, 'partial status');
ok(!$r->{complete}, 'partial body detected');
is($r->{body}, 'short', 'partial body');

is(http_post('/', 'x', port => $mport, headers => { 'X-Case' => 'reset' }),
   '', 'reset: nothing read');

my ($resps, $open) = http_keepalive([
    map { http_request('POST', "/ka/$_", body => "b$_", keepalive => 1,
                       headers => { 'X-Case' => $_ == 2 ? 'chunked'
                                                        : 'array' }) }
    1 .. 3 ], port => $mport);

is(scalar @$resps, 3, 'keepalive: 3 responses');
is(parse_response($resps->[1])->{body}, 'a' x 3000,
   'keepalive: chunked response in the middle');
is(parse_response($resps->[2])->{headers}{'x-seen'}, 2,
   'keepalive: third response');
ok($open, 'keepalive: connection open');

my $reqs = $t->mock_requests('m');
my ($ci) = grep { $_->{path} eq '/chunked-in' } @$reqs;
ok($ci && $ci->{chunked}, 'chunked request recorded as chunked');
is($ci && $ci->{body_length}, length $body, 'chunked request length');
is($ci && $ci->{body_md5}, md5_hex($body), 'chunked request md5');

my @ka = grep { $_->{path} =~ m{^/ka/} } @$reqs;
is(scalar @ka, 3, 'keepalive requests recorded');
is(scalar(keys %{{ map { $_->{conn} => 1 } @ka }}), 1,
   'keepalive requests on one connection');
is(join(',', map { $_->{n} } @ka), '1,2,3', 'request numbers');
is($t->mock_count('m'), scalar @$reqs, 'mock_count');

# streaming: the first event comes before the stream ends

my $s = http_start(http_request('POST', '/sse', body => '{}',
                                headers => { 'X-Case' => 'sse' }),
                   port => $mport);
my $start = time;
my ($part, $matched) = read_until($s, qr/"n":1/, 3);
ok($matched, 'sse: first event read');
unlike($part, qr/DONE/, 'sse: before the last one was sent');
my $rest = read_all($s, 5);
like($rest, qr/\[DONE\]/, 'sse: rest read');
my @ev = sse_events((dechunk(($part . $rest) =~ s/^.*?\r\n\r\n//sr))[0]);
is(join('|', map { $_->{data} } @ev), '{"n":1}|{"n":2}|[DONE]',
   'sse events parsed');

###############################################################################
# client helpers on literal responses

$r = parse_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    . "X-A: 1\r\nX-A: 2\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n");
is($r->{body}, 'hello', 'chunk extension');
ok($r->{complete}, 'terminated');
is($r->{headers}{'x-a'}, '1, 2', 'repeated headers joined');

$r = parse_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    . "5\r\nhello\r\n3\r\nab");
ok(!$r->{complete}, 'unterminated chunked body');
is($r->{body}, 'helloab', 'unterminated chunked body so far');

$r = parse_response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
ok(!$r->{complete}, 'short Content-Length body');

$r = parse_response("HTTP/1.1 100 Continue\r\n\r\n"
                    . "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
is($r->{status}, 201, '1xx skipped');

is(parse_response(undef)->{status}, undef, 'no response, no status');

###############################################################################
# daemons

my $flag = $t->testdir . '/daemon.flag';
my $dpid = $t->run_daemon(sub {
    open my $fh, '>', $flag; close $fh;
    sleep 60;
});
my $deadline = time + 5;
sleep 0.05 until -e $flag || time > $deadline;
ok(-e $flag, 'daemon ran');
$t->stop_daemons;
ok(!kill(0, $dpid), 'daemon stopped');

SKIP: {
    skip 'no redis-server', 4 unless grep { -x "$_/redis-server" }
                                     split /:/, $ENV{PATH};
    my $rport = $t->run_redis;
    is(redis_command($rport, 'SET', 'k', 'v'), 'OK', 'redis SET');
    is(redis_command($rport, 'GET', 'k'), 'v', 'redis GET');
    is($t->expand('a %%REDIS%% b'), "a $rport b",
       '%%REDIS%%: the last redis-server started');
    fake_nodes($rport, 'n1', 'n2');
    is_deeply([ map { scalar @{redis_command($rport, 'ZRANGE', $_, 0, -1)} }
                '{llm:nodes}', '{llm:nodes}:ids' ], [ 2, 2 ],
              'fake_nodes: listed in both node keys');
}

{
    my $n = 0;
    ok(wait_until(sub { ++$n == 3 }, 2), 'wait_until: true once it holds');
    my $start = time;
    ok(!wait_until(sub { 0 }, 0.3) && time - $start >= 0.3,
       'wait_until: false after its timeout');
}

###############################################################################
# log scan (planted files; the real end checks run on this file's logs)

my $tmp = tempdir(CLEANUP => 1);
open my $fh, '>', "$tmp/error.log";
print $fh "2024/01/01 00:00:00 [info] 1#1: fine\n",
    "2024/01/01 00:00:00 [alert] 1#1: worker process 7 exited on signal 11\n",
    "2024/01/01 00:00:00 [error] 1#1: key sk-CANARY-42abc leaked\n",
    "==1==ERROR: AddressSanitizer: heap-use-after-free\n",
    "x.c:1:2: runtime error: signed integer overflow\n";
close $fh;

my %scan = Test::LLM::scan_logs(files => [ "$tmp/error.log" ],
                                canaries => [ 'sk-CANARY-42abc',
                                              'sk-CANARY-absent' ]);
is(scalar @{$scan{problems}}, 3, 'alert, crash, sanitizer lines found');
is(scalar @{$scan{canaries}}, 1, 'planted canary found, absent one not');
unlike(join('', @{$scan{canaries}}), qr/42abc/, 'canary not printed');

%scan = Test::LLM::scan_logs(files => [ "$tmp/error.log" ],
                             allow => [ qr/exited on signal/,
                                        qr/Sanitizer|runtime error/ ]);
is(scalar @{$scan{problems}}, 0, 'allowed lines not reported');

$t->canary('sk-CANARY-harness-never-logged');

done_testing;
