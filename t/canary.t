#!/usr/bin/perl

# The canary guard on one node (docs/directives.md, "Canary guard").
# Covers: a 90/10 sticky shift whose canary's provider answers 500 and
# 503 is put on hold after llm_canary min= attempts, exactly, and gets no
# request after; its keys go to the heaviest target ($llm_canary "hold");
# one warn line with the figures; the status page (JSON, Prometheus,
# promtool) shows the hold; attempts that blame the request
# (invalid_request, context_length, content_filter), clients that went
# away and attempts nginx itself ended are not counted; errors= is a
# ratio that must be exceeded; the hold survives a reload that does not
# change the canary's weight and a restart of the workers, and a reload
# with a new weight releases it; configuration errors.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;

my $conf = <<'EOF';
worker_processes 2;
worker_shutdown_timeout 1s;

events {}

http {
    log_format canary '$http_x_n|$llm_route|$llm_target|$llm_canary|'
                      '$status|$llm_attempt_errors';
    access_log %%TESTDIR%%/logs/access.log canary;

    llm_zone llm:1m;

    # a failing canary keeps getting its attempts: no cooldown skips it
    llm_cooldown off;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/base model=base weight=%%BASE%%;
            llm_target /_llm/canary model=canary weight=%%CANARY%%;
            llm_split_key $http_x_user;
            llm_canary errors=0.5 min=10 window=60s;
        }

        # the same shift on other targets, to find the ratio's edge
        location = /mixed/v1/chat/completions {
            llm_route mixed;
            llm_target /_llm/base model=base weight=90;
            llm_target /_llm/canary model=other weight=10;
            llm_split_key $http_x_user;
            llm_canary errors=0.5 min=10;
        }

        # the same split without a guard: where each key lands
        location = /probe/v1/chat/completions {
            llm_route probe;
            llm_target /_probe/base weight=%%BASE%%;
            llm_target /_probe/canary weight=%%CANARY%%;
            llm_split_key $http_x_user;
        }

        location /_probe/ {
            internal;
            return 200 "$uri\n";
        }

        location = /_llm/base {
            internal;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_set_header X-Case "";
            proxy_pass http://127.0.0.1:%%PORT_8081%%/base/v1/chat/completions;
        }

        location = /_llm/canary {
            internal;
            proxy_set_header X-Attempt $llm_attempts;
            proxy_set_header X-Case $http_x_canary;
            proxy_pass http://127.0.0.1:%%PORT_8082%%/canary/v1/chat/completions;
            proxy_read_timeout 10s;
        }

        location = /status {
            access_log off;
            llm_status;
        }
    }
}
EOF

sub config {
    my ($base, $canary) = @_;
    (my $c = $conf) =~ s/%%BASE%%/$base/g;
    $c =~ s/%%CANARY%%/$canary/g;
    $t->write_file_expand('nginx.conf', $c);
}

$t->run_mock_provider(port => $t->port(8081), name => 'base',
                      handler => \&scripted);
$t->run_mock_provider(port => $t->port(8082), name => 'canary',
                      handler => \&scripted);

config(90, 10);
$t->run;

my $port = $t->port(8080);
my $BODY = '{"model":"m","messages":[]}';
my $CANARY = '/_llm/canary canary';

sub request {
    my ($uri, $n, $user, $case, $keepalive) = @_;
    return "POST $uri HTTP/1.1\r\nHost: localhost\r\n"
        . ($keepalive ? '' : "Connection: close\r\n")
        . "Content-Type: application/json\r\nX-N: $n\r\nX-User: $user\r\n"
        . ($case ? "X-Canary: $case\r\n" : '')
        . "Content-Length: " . length($BODY) . "\r\n\r\n$BODY";
}

sub post {
    my ($n, $user, $case, $uri) = @_;
    $uri //= '/v1/chat/completions';
    return parse_response(http(request($uri, $n, $user, $case),
                               port => $port) // '');
}

sub canary {
    my ($route, $key) = @_;
    return $t->status_json->{routes}{$route // 'chat'}{canary}{targets}
           {$key // $CANARY} || {};
}

# the access log line of request X-N $n
sub entry {
    my ($n) = @_;
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$n\E\|/, 5) // '';
    my %e;
    @e{qw(n route target canary status errors)} = split /\|/, $line, -1;
    return \%e;
}

###############################################################################
# where the keys land at 90/10

my (@on_canary, @on_base);
{
    my @users = map { "user-$_" } 1 .. 1000;
    my ($res) = http_keepalive(
        [ map { request('/probe/v1/chat/completions', "probe-$_", $_,
                        undef, 1) }
          @users ], port => $port);
    for my $i (0 .. $#users) {
        my $b = parse_response($res->[$i] // '')->{body} // '';
        push @on_canary, $users[$i] if $b =~ m{^/_probe/canary};
        push @on_base, $users[$i] if $b =~ m{^/_probe/base};
    }
}

cmp_ok(scalar @on_canary, '>=', 60, 'probe: keys on the canary');
is(@on_canary + @on_base, 1000, 'probe: every key answered');
is(entry('probe-user-1')->{canary}, '-', '$llm_canary: not found without '
   . 'llm_canary');

my $c = canary();
is($c->{state}, 'ok', 'status: the canary is ok');
is($c->{weight}, 10, 'status: its weight');
is($t->status_json->{routes}{chat}{canary}{heaviest}, '/_llm/base base',
   'status: the heaviest target');
is($t->status_json->{routes}{probe}{canary}, undef, 'status: no guard, null');

###############################################################################
# not counted: errors of the request, clients that went away, attempts
# nginx ended

my $n = 0;
my @uncounted;

for my $case (('*:404') x 12, ('*:ctx') x 4, ('*:filter') x 4) {
    my $u = $on_canary[$n++ % @on_canary];
    my $r = post("bad-$n", $u, $case);
    push @uncounted, $r->{status};
}

is(scalar(grep { $_ == 400 || $_ == 404 } @uncounted), 20,
   'request errors reached the client');
is(entry('bad-1')->{errors}, 'invalid_request', 'a request error: '
   . 'invalid_request');

my @gone;
for my $i (1 .. 12) {
    my $u = $on_canary[$n++ % @on_canary];
    push @gone, http_start(request('/v1/chat/completions', "gone-$i", $u,
                                   '*:ok+delay=2'), port => $port);
}
sleep 0.3;
close $_ for @gone;

for my $i (1 .. 12) {
    is(entry("gone-$i")->{errors}, 'client_closed', "gone $i: client_closed");
}

# an attempt in flight when a reload's worker_shutdown_timeout ends it

my $cut = http_start(request('/v1/chat/completions', 'cut',
                             $on_canary[$n++ % @on_canary],
                             '*:stall+stall=5'), port => $port);
sleep 0.3;
ok($t->reload, 'reloaded with an attempt in flight');
read_all($cut, 5);
like($t->read_file('logs/error.log'), qr/attempt to target "\/_llm\/canary" ended by nginx/,
     'the attempt was ended by nginx');

$c = canary();
is($c->{state}, 'ok', 'not counted: still ok');
is($c->{attempts}, 0, 'not counted: no attempt in the window');
is($c->{failures}, 0, 'not counted: no failure');
cmp_ok($t->mock_count('canary'), '>=', 32, 'the canary got them all');

###############################################################################
# failing: on hold after min= attempts

my $before = $t->mock_count('canary');
my $base_before = $t->mock_count('base');
my $off = $t->log_offset('logs/error.log');

for my $i (1 .. 30) {
    my $u = $on_canary[$n++ % @on_canary];
    post("fail-$i", $u, $i % 2 ? '*:500' : '*:503');
    post("base-$i", $on_base[$i]);
}

is($t->mock_count('canary') - $before, 10,
   'held after exactly min=10 attempts: no request after');
is($t->mock_count('base') - $base_before, 50,
   'the base got its own keys and the 20 held ones');

for my $i (1 .. 10) {
    my $e = entry("fail-$i");
    is("$e->{target}|$e->{canary}", '/_llm/canary|ok', "fail $i: canary");
}
for my $i (11 .. 30) {
    my $e = entry("fail-$i");
    is("$e->{target}|$e->{canary}|$e->{status}", '/_llm/base|hold|200',
       "fail $i: held, sent to the heaviest");
}
is(entry('base-1')->{canary}, 'ok', 'a key of the base: $llm_canary ok');

my $log = $t->read_from('logs/error.log', $off);
my @lines = $log =~ /^.*put on hold.*$/mg;
is(scalar @lines, 1, 'one line tells the hold');
like($lines[0] // '', qr/\[warn\].*llm route "chat": canary "\/_llm\/canary canary" put on hold, 10 of 10 attempts failed in the last 60s, ratio 1\.000 above errors=0\.500; its traffic goes to "\/_llm\/base base"/,
     'the line has the figures');

$c = canary();
is($c->{state}, 'hold', 'status: hold');
is($c->{attempts}, 10, 'status: the attempts that put it on hold');
is($c->{failures}, 10, 'status: the failures');
is($c->{ratio}, 1, 'status: the ratio');
is($c->{from}, 'local', 'status: taken here');
cmp_ok(abs($c->{since_ms} - time * 1000), '<', 60000, 'status: since');
my $since = $c->{since_ms};

my $prom = parse_response(http_get('/status?format=prometheus',
                                   port => $port))->{body};
like($prom, qr/^nginx_llm_canary_hold\{route="chat",target="\/_llm\/canary",model="canary"\} 1$/m,
     'prometheus: on hold');
like($prom, qr/^nginx_llm_canary_hold\{route="mixed",target="\/_llm\/canary",model="other"\} 0$/m,
     'prometheus: another route\'s canary, ok');
unlike($prom, qr/^nginx_llm_canary_hold\{route="probe"/m,
       'prometheus: no guard, no sample');

SKIP: {
    my ($promtool) = grep { -x } map { "$_/promtool" }
                     split(/:/, $ENV{PATH} || ''), '/usr/bin';
    skip 'promtool not found: apt-get install prometheus', 1
        unless $promtool;
    $t->write_file('canary.prom', $prom);
    my $file = $t->testdir . '/canary.prom';
    my $out = `$promtool check metrics < '$file' 2>&1`;
    is($? >> 8 . $out, '0', 'promtool check metrics passes');
}

###############################################################################
# errors= must be exceeded: 5 of 10 failed is 0.5, not on hold; 6 of 11 is

{
    my $m = 0;
    for my $i (1 .. 10) {
        post("mixed-$i", $on_canary[$m++], $i <= 5 ? '*:500' : '*:ok',
             '/mixed/v1/chat/completions');
    }
    my $mc = canary('mixed', '/_llm/canary other');
    is("$mc->{state} $mc->{attempts} $mc->{failures}", 'ok 10 5',
       'mixed: 5 of 10 failed, ratio 0.5: ok');
    is($mc->{ratio}, 0.5, 'mixed: the ratio');

    post('mixed-11', $on_canary[$m++], '*:500', '/mixed/v1/chat/completions');
    $mc = canary('mixed', '/_llm/canary other');
    is("$mc->{state} $mc->{attempts} $mc->{failures}", 'hold 11 6',
       'mixed: 6 of 11: on hold');
    is(canary()->{state}, 'hold', 'the other route\'s hold is its own');
}

###############################################################################
# a reload that leaves the canary's weight: still on hold

config(85, 10);
ok($t->reload, 'reloaded: the base\'s weight changed, not the canary\'s');

$before = $t->mock_count('canary');
for my $i (1 .. 10) {
    post("kept-$i", $on_canary[$n++ % @on_canary], '*:ok');
}
is($t->mock_count('canary') - $before, 0, 'after the reload: still held');
is(entry('kept-1')->{canary}, 'hold', 'after the reload: $llm_canary hold');
is(canary()->{since_ms}, $since, 'after the reload: the same hold');

# the workers restart: the hold is in the zone

my @old = $t->worker_pids;
kill 'TERM', @old;
my %old = map { $_ => 1 } @old;
my $deadline = time + 10;
while (time < $deadline) {
    my @now = $t->worker_pids;
    last if @now == 2 && !grep { $old{$_} } @now;
    sleep 0.05;
}
is(scalar(grep { $old{$_} } $t->worker_pids), 0, 'the workers restarted');

for my $i (1 .. 5) {
    post("restarted-$i", $on_canary[$n++ % @on_canary], '*:ok');
}
is($t->mock_count('canary') - $before, 0, 'after the restart: still held');
is(canary()->{state}, 'hold', 'after the restart: status hold');

unlike($t->read_file('logs/error.log'), qr/released from hold/,
       'no release so far');

###############################################################################
# a new weight releases it

$off = $t->log_offset('logs/error.log');

config(80, 20);
ok($t->reload, 'reloaded at 80/20');

like($t->read_from('logs/error.log', $off),
     qr/\[notice\].*llm route "chat": canary "\/_llm\/canary canary" released from hold, its weight changed from 10 to 20/,
     'the release is logged');

$c = canary();
is($c->{state}, 'ok', 'released: status ok');
is($c->{attempts}, 0, 'released: its window starts afresh');
cmp_ok($c->{since_ms}, '>', $since, 'released: since');

$before = $t->mock_count('canary');
for my $i (1 .. 10) {
    my $r = post("released-$i", $on_canary[$n++ % @on_canary], '*:ok');
    is($r->{status}, 200, "released $i: answered");
}
is($t->mock_count('canary') - $before, 10, 'released: its keys are back');
is(entry('released-1')->{canary}, 'ok', 'released: $llm_canary ok');
is(entry('released-1')->{target}, '/_llm/canary', 'released: the canary');

###############################################################################
# configuration errors

{
    my $bad = Test::LLM->new;
    $bad->allow_alerts(qr/\[emerg\]/);

    my %cases = (
        'no route' => [ "llm_zone llm:1m;",
            "location /x { llm_canary; }",
            qr/"llm_canary" requires "llm_route" in the same location/ ],
        'no zone' => [ "",
            "location /x { llm_route x; llm_target /a weight=9; "
            . "llm_target /b; llm_canary; }",
            qr/"llm_canary" requires "llm_zone" in /],
        'ratio' => [ "llm_zone llm:1m;",
            "location /x { llm_route x; llm_target /a; llm_canary "
            . "errors=1.5; }",
            qr/invalid ratio "errors=1.5", it must be between 0 and 1/ ],
        'min' => [ "llm_zone llm:1m;",
            "location /x { llm_route x; llm_target /a; llm_canary min=0; }",
            qr/invalid parameter "min=0"/ ],
        'window' => [ "llm_zone llm:1m;",
            "location /x { llm_route x; llm_target /a; llm_canary "
            . "window=90s; }",
            qr/invalid window "window=90s", it must be a whole number of seconds from 1s to 60s/ ],
        'duplicate' => [ "llm_zone llm:1m;",
            "location /x { llm_route x; llm_target /a; llm_canary; "
            . "llm_canary; }",
            qr/"llm_canary" directive is duplicate/ ],
        'server' => [ "llm_zone llm:1m;",
            "llm_canary; location /x { llm_route x; llm_target /a; }",
            qr/"llm_canary" directive is not allowed here/ ],
    );

    for my $name (sort keys %cases) {
        my ($http, $server, $re) = @{$cases{$name}};
        $bad->write_file_expand('nginx.conf', <<"EOF");
events {}
http {
    $http
    server {
        listen 127.0.0.1:%%PORT_8080%%;
        $server
    }
}
EOF
        my ($ok, $out) = $bad->test_config;
        ok(!$ok, "$name: nginx -t fails");
        like($out, $re, "$name: the message") or diag($out);
    }
}

done_testing;
