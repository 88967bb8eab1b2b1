#!/usr/bin/perl

# llm_status (docs/status.md).  Covers: configuration errors
# (arguments, duplicate, another content handler before or after it,
# wrong context); GET and HEAD only (405 with Allow), ?format=json,
# ?format=prometheus, 400 for another format; the JSON document parsed
# with JSON::PP (fields, types, every route name once though used in two
# servers, every target once though used by two routes, escaping of
# quotes, backslashes and line feeds in config strings); the Prometheus
# text checked by `promtool check metrics` (Debian's prometheus package;
# that part is skipped without it) and by a small parser here (HELP and
# TYPE once per family, families in order, samples of a family together,
# label escaping); routes and targets without a zone ("counted": false,
# no samples); counters that move as traffic does, with two workers:
# successes, failures with retries and fallbacks, a budget that refuses
# retries, a target answering 429 with a long Retry-After going into
# cooldown and then being skipped, the same numbers in both formats.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP ();

my $JSON = JSON::PP->new;

my @DECISIONS = qw(retry fallback not_retryable attempts_exhausted deadline
                   budget_exhausted);

my @ERRORS = qw(connect_error timeout rate_limited quota_exhausted
                overloaded server_error auth_error invalid_request
                context_length content_filter stream_interrupted
                invalid_response);

my @FAMILIES = (
    [ nginx_llm_build_info => 'gauge' ],
    [ nginx_llm_route_requests_total => 'counter' ],
    [ nginx_llm_route_attempts_total => 'counter' ],
    [ nginx_llm_route_retries_total => 'counter' ],
    [ nginx_llm_route_client_closed_total => 'counter' ],
    [ nginx_llm_route_decisions_total => 'counter' ],
    [ nginx_llm_route_budget_remaining => 'gauge' ],
    [ nginx_llm_target_attempts_total => 'counter' ],
    [ nginx_llm_target_skipped_total => 'counter' ],
    [ nginx_llm_target_errors_total => 'counter' ],
    [ nginx_llm_target_cooling => 'gauge' ],
    [ nginx_llm_target_cooldown_remaining_seconds => 'gauge' ],
    [ nginx_llm_target_cooldowns_total => 'counter' ],
    [ nginx_llm_canary_hold => 'gauge' ],
    [ nginx_llm_route_request_duration_seconds => 'histogram' ],
    [ nginx_llm_route_time_to_first_byte_seconds => 'histogram' ],
    [ nginx_llm_route_target_input_tokens_total => 'counter' ],
    [ nginx_llm_route_target_output_tokens_total => 'counter' ],
    [ nginx_llm_route_target_attempts_total => 'counter' ],
    [ nginx_llm_zone_bytes => 'gauge' ],
    [ nginx_llm_zone_full => 'gauge' ],
    [ nginx_llm_zone_metrics_full => 'gauge' ],
);

my $PROM_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

my ($PROMTOOL) = grep { -x } map { "$_/promtool" }
                 split(/:/, $ENV{PATH} || ''), '/usr/bin';

###############################################################################
# configuration errors

{
    my $c = Test::LLM->new;

    # every failing case puts an [emerg] in the log on purpose
    $c->allow_alerts(qr/\[emerg\]/);

    my $file = $c->testdir . '/nginx.conf';

    my $conf = sub {
        my ($loc, $extra) = @_;
        $c->write_file_expand('nginx.conf', <<"EOF");
events {}

http {
    server {
        listen 127.0.0.1:%%PORT_8080%%;

        ${\ ($extra // '')}

        location = /status {
            $loc
        }

        location /_llm/a {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF
    };

    my $line_of = sub {
        my ($re) = @_;
        my @lines = split /\n/, $c->read_file('nginx.conf');
        for my $i (0 .. $#lines) {
            return $i + 1 if $lines[$i] =~ $re;
        }
        return 0;
    };

    my $fails = sub {
        my ($name, $message, $line) = @_;
        my ($ok, $out) = $c->test_config;
        ok(!$ok, "$name: nginx -t fails");
        like($out, qr/^nginx: \[emerg\] \Q$message in $file:$line\E$/m,
             "$name: message") or diag($out);
    };

    my $passes = sub {
        my ($name) = @_;
        my ($ok, $out) = $c->test_config;
        ok($ok, "$name: nginx -t passes") or diag($out);
        unlike($out, qr/\[(?:emerg|warn|alert)\]/, "$name: no complaints");
    };

    $conf->('llm_status;');
    $passes->('llm_status without any zone or route');

    $conf->('llm_status;',
            'location /v1/ {
            llm_route chat;
            llm_target /_llm/a;
            location /v1/status { llm_status; }
        }');
    $passes->('llm_status nested in a route\'s location');

    $conf->('llm_status on;');
    $fails->('an argument',
             'invalid number of arguments in "llm_status" directive',
             $line_of->(qr/llm_status on;/));

    $conf->('llm_status;
            llm_status;');
    $fails->('duplicate', '"llm_status" directive is duplicate',
             $line_of->(qr/^\s+llm_status;$/) + 1);

    $conf->('llm_route chat;
            llm_target /_llm/a;
            llm_status;');
    $fails->('llm_route, then llm_status',
             '"llm_status" cannot be combined with another content handler '
             . 'in one location', $line_of->(qr/^\s+llm_status;/));

    $conf->('llm_status;
            llm_route chat;
            llm_target /_llm/a;');
    $fails->('llm_status, then llm_route',
             '"llm_route" cannot be combined with another content handler '
             . 'in one location', $line_of->(qr/llm_route chat;/));

    $conf->('llm_status;
            proxy_pass http://127.0.0.1:1;');
    $fails->('llm_status, then proxy_pass',
             '"llm_status" cannot be combined with another content handler '
             . 'in one location', $line_of->(qr/^\s+llm_status;/));

    $conf->('proxy_pass http://127.0.0.1:1;
            llm_status;');
    $fails->('proxy_pass, then llm_status',
             '"llm_status" cannot be combined with another content handler '
             . 'in one location', $line_of->(qr/^\s+llm_status;/));

    $conf->('return 204;', 'llm_status;');
    $fails->('in server', '"llm_status" directive is not allowed here',
             $line_of->(qr/^\s+llm_status;/));
}

###############################################################################
# the servers

my $t = Test::LLM->new;

$t->run_mock_provider(port => $t->port(8081), name => 'prov',
                      handler => \&scripted);

# without llm_zone nothing is counted

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    proxy_set_header X-Attempt $llm_attempts;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /plain/v1/chat/completions {
            llm_route plain;
            llm_target /_llm/a;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions;
        }

        location = /status { llm_status; }
    }
}
EOF

$t->run;

my $port = $t->port(8080);

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"count me"}]}';

sub post {
    my ($uri, $case, %o) = @_;
    return parse_response(http_post($uri, $REQ, port => $o{port} || $port,
                                    headers => { 'X-Case' => $case }));
}

sub get {
    my ($uri, %o) = @_;
    return parse_response(http_get($uri, port => $port, %o));
}

sub status {
    my $r = get('/status');
    my $doc = eval { $JSON->decode($r->{body}) };
    return $doc || {};
}

sub prometheus {
    my $r = get('/status?format=prometheus');
    return $r->{body};
}

# samples of an exposition: "name{labels}" => value; labels sorted
sub samples {
    my ($text) = @_;
    my %s;
    for my $line (split /\n/, $text) {
        next if $line =~ /^#/;
        my ($name, $labels, $value) = $line =~ /^(\w+)(?:\{(.*)\})? (\S+)$/
            or next;
        my @l;
        while (defined $labels
               && $labels =~ /\G(\w+)="((?:[^"\\]|\\.)*)",?/gc)
        {
            push @l, "$1=\"$2\"";
        }
        $s{$name . '{' . join(',', sort @l) . '}'} = $value;
    }
    return \%s;
}

# promtool's verdict: (exit code, output); undef without promtool
sub promtool {
    my ($text, $name) = @_;
    return unless $PROMTOOL;
    $t->write_file("$name.prom", $text);
    my $file = $t->testdir . "/$name.prom";
    my $out = `$PROMTOOL check metrics < '$file' 2>&1`;
    return ($? >> 8, $out);
}

{
    post('/plain/v1/chat/completions?id=plain', '*:ok');

    my $s = status();
    is_deeply($s->{zones}, [], 'no zone: zones');

    my $route = $s->{routes}{plain} || {};
    ok(!$route->{counted}, 'no zone: the route is not counted');
    is($route->{zone}, undef, 'no zone: route zone null');
    is($route->{requests}, 0, 'no zone: route requests 0');
    is($route->{budget}, undef, 'no zone: no budget');
    is_deeply($route->{targets}, ['/_llm/a'], 'no zone: route targets');

    my $target = $s->{targets}{'/_llm/a'} || {};
    ok(!$target->{counted}, 'no zone: the target is not counted');
    is($target->{attempts}, 0, 'no zone: target attempts 0');
    is($target->{model}, undef, 'no zone: model null');
    ok(!$target->{cooling}, 'no zone: not cooling');

    my $text = prometheus();
    is(scalar(() = $text =~ /^# TYPE /mg), scalar @FAMILIES,
       'no zone: every family has a TYPE line');
    is_deeply([ grep { !/^#/ } split /\n/, $text ],
              [ 'nginx_llm_build_info{version="0.2.0",nginx="1.22.1"} 1' ],
              'no zone: no sample but the build info');

    SKIP: {
        skip 'promtool not found: apt-get install prometheus', 2
            unless $PROMTOOL;
        my ($rc, $out) = promtool($text, 'nozone');
        is($rc, 0, 'no zone: promtool check metrics passes');
        is($out, '', 'no zone: promtool has nothing to say');
    }
}

$t->stop;

# the zone, two workers, a route name in two servers, a target in two
# routes, config strings that need escaping

$t->write_file_expand('nginx.conf', <<'EOF');
worker_processes 2;

events {}

http {
    llm_zone llm:1m;

    proxy_set_header X-Attempt $llm_attempts;
    proxy_set_header Connection "";
    proxy_http_version 1.1;

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=50ms;

        location = /chat/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/p model=gpt-4o-mini tries=2;
            llm_fallback /_llm/fb;
            llm_retry_budget ratio=0.2 min=10/s window=60s;
            llm_cooldown off;
        }

        location = /tight/v1/chat/completions {
            llm_route tight;
            llm_target /_llm/t tries=3;
            llm_retry_budget ratio=0 min=0/s window=60s;
            llm_cooldown off;
        }

        # max=: the Retry-After of an hour below is not cut to 5m
        location = /cool/v1/chat/completions {
            llm_route cool;
            llm_target /_llm/c;
            llm_fallback /_llm/fb;
            llm_cooldown max=2h;
        }

        location = /esc/v1/chat/completions {
            llm_route esc;
            llm_target "/_llm/q\"uo\\te" "model=we\"ird\\mo\ndel";
            llm_retry_budget ratio=0.05 min=1/s window=2s;
        }

        # the escaped target's location (never requested)
        location /_llm/q {
            internal;
            return 503;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://prov/$1/v1/chat/completions$is_args$args;
        }

        location = /status {
            llm_status;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_8082%%;

        location = /chat/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/p2;
            llm_cooldown off;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://prov/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

$t->run;

###############################################################################
# methods and formats

{
    my $r = get('/status');
    is($r->{status}, 200, 'GET: 200');
    is($r->{headers}{'content-type'}, 'application/json',
       'GET: application/json');
    is($r->{headers}{'content-length'}, length $r->{body},
       'GET: Content-Length');
    like($r->{body}, qr/\}\n\z/, 'GET: one line');

    $r = get('/status?format=json');
    is($r->{status}, 200, 'format=json: 200');
    is($r->{headers}{'content-type'}, 'application/json',
       'format=json: application/json');

    $r = get('/status?id=1&format=prometheus');
    is($r->{status}, 200, 'format=prometheus: 200');
    is($r->{headers}{'content-type'}, $PROM_TYPE,
       'format=prometheus: its content type');

    for my $q ('format=xml', 'format=', 'format=Prometheus',
               'format=prometheusx', 'format=%6Aon')
    {
        $r = get("/status?$q");
        is($r->{status}, 400, "$q: 400");
    }

    $r = parse_response(http(http_request('HEAD', '/status'), port => $port));
    is($r->{status}, 200, 'HEAD: 200');
    is($r->{headers}{'content-type'}, 'application/json',
       'HEAD: application/json');
    ok($r->{headers}{'content-length'} > 0, 'HEAD: Content-Length');
    is($r->{raw_body}, '', 'HEAD: no body');

    for my $m (qw(POST PUT DELETE)) {
        $r = parse_response(http(http_request($m, '/status', body => '{}'),
                                 port => $port));
        is($r->{status}, 405, "$m: 405");
        is($r->{headers}{'allow'}, 'GET, HEAD', "$m: Allow");
    }
}

###############################################################################
# the JSON document before any traffic

my $before = status();

{
    my $s = $before;

    is($s->{version}, 1, 'json: version');
    ok(abs($s->{time_ms} / 1000 - time) < 5, 'json: time_ms is wall time');
    my $z = $s->{zones}[0] || {};
    is_deeply([ map { $_->{name} } @{$s->{zones}} ], [ 'llm' ],
              'json: zones');
    is($z->{size}, 1048576, 'json: zone size');
    ok($z->{used_bytes} > 0 && $z->{used_bytes} < $z->{total_bytes}
       && $z->{total_bytes} <= $z->{size},
       "json: zone used_bytes $z->{used_bytes} of $z->{total_bytes}");
    ok(JSON::PP::is_bool($z->{full}) && !$z->{full}, 'json: zone not full');
    is_deeply([ sort keys %{$s->{routes}} ], [qw(chat cool esc tight)],
              'json: each route once, chat of both servers too');

    my $chat = $s->{routes}{chat};
    is($chat->{zone}, 'llm', 'json: route zone');
    ok($chat->{counted} && JSON::PP::is_bool($chat->{counted}),
       'json: counted is a boolean');
    is($chat->{$_}, 0, "json: route $_ 0") for qw(requests attempts retries);
    is_deeply($chat->{budget}, { ratio => 0.2, min_per_second => 10,
                                 window => 60, left => 600 },
              'json: budget');
    is($s->{routes}{cool}{budget}, undef, 'json: no budget: null');
    is_deeply($s->{routes}{tight}{budget},
              { ratio => 0, min_per_second => 0, window => 60, left => 0 },
              'json: budget ratio=0 min=0');
    is_deeply($s->{routes}{esc}{budget},
              { ratio => 0.05, min_per_second => 1, window => 2, left => 2 },
              'json: budget ratio=0.05');
    like(get('/status')->{body}, qr/"ratio":0\.05,/,
         'json: ratio without trailing zeros');
    is_deeply([ sort keys %{$chat->{decisions}} ], [ sort @DECISIONS ],
              'json: the decisions');
    is_deeply($chat->{targets}, [ '/_llm/p gpt-4o-mini', '/_llm/fb',
                                  '/_llm/p2' ],
              'json: route targets, of both servers, in plan order');
    is_deeply($s->{routes}{cool}{targets}, [ '/_llm/c', '/_llm/fb' ],
              'json: a target shared by two routes');

    is_deeply([ sort keys %{$s->{targets}} ],
              [ sort '/_llm/p gpt-4o-mini', '/_llm/fb', '/_llm/p2',
                '/_llm/t', '/_llm/c', "/_llm/q\"uo\\te we\"ird\\mo\ndel" ],
              'json: each target once');

    my $p = $s->{targets}{'/_llm/p gpt-4o-mini'};
    is($p->{uri}, '/_llm/p', 'json: target uri');
    is($p->{model}, 'gpt-4o-mini', 'json: target model');
    is($s->{targets}{'/_llm/fb'}{model}, undef, 'json: no model: null');
    ok($p->{counted}, 'json: target counted');
    is_deeply([ sort keys %{$p->{errors}} ], [ sort @ERRORS ],
              'json: the error categories');
    ok(!$p->{cooling} && JSON::PP::is_bool($p->{cooling}),
       'json: cooling false');
    is($p->{$_}, 0, "json: target $_ 0")
        for qw(attempts skipped cooldown_remaining_ms cooldowns);

    my $q = $s->{targets}{"/_llm/q\"uo\\te we\"ird\\mo\ndel"} || {};
    is($q->{uri}, "/_llm/q\"uo\\te", 'json: uri escaped');
    is($q->{model}, "we\"ird\\mo\ndel", 'json: model escaped');
}

###############################################################################
# the Prometheus text before any traffic

sub check_exposition {
    my ($text, $name) = @_;

    my (@order, %seen, $current, @problems);

    for my $line (split /\n/, $text, -1) {
        next if $line eq '';

        if ($line =~ /^# HELP (\w+) \S/) {
            push @problems, "second HELP for $1" if $seen{"help $1"}++;
            next;
        }

        if ($line =~ /^# TYPE (\w+) (counter|gauge|histogram)$/) {
            push @problems, "second TYPE for $1" if $seen{"type $1"}++;
            push @problems, "TYPE before HELP for $1" unless $seen{"help $1"};
            push @order, [ $1, $2 ];
            $current = $1;
            next;
        }

        if ($line =~ /^(\w+)\{(?:\w+="(?:[^"\\\n]|\\[\\"n])*",?)+\} [0-9.]+$/)
        {
            my $family = $1;
            $family =~ s/_(?:bucket|sum|count)$//
                unless defined $current && $family eq $current;
            push @problems, "sample of $1 outside its family"
                unless defined $current && $family eq $current;
            next;
        }

        push @problems, "bad line: $line";
    }

    is_deeply(\@order, \@FAMILIES, "$name: families, types, in order");
    is_deeply(\@problems, [], "$name: HELP, TYPE and samples in place");
    like($text, qr/\n\z/, "$name: the last line ends");

    SKIP: {
        skip 'promtool not found: apt-get install prometheus', 2
            unless $PROMTOOL;
        my ($rc, $out) = promtool($text, $name);
        is($rc, 0, "$name: promtool check metrics passes");
        is($out, '', "$name: promtool has nothing to say") or diag($out);
    }
}

{
    my $text = prometheus();
    check_exposition($text, 'prometheus');

    my $s = samples($text);

    is($s->{'nginx_llm_route_requests_total{route="chat"}'}, 0,
       'prometheus: a route counter');
    is(scalar(() = $text =~ /^nginx_llm_route_requests_total\{route="chat"\}/mg),
       1, 'prometheus: a route name in two servers, once');
    is($s->{'nginx_llm_route_decisions_total{decision="budget_exhausted",'
            . 'route="chat"}'}, 0, 'prometheus: decisions');
    is($s->{'nginx_llm_route_budget_remaining{route="chat"}'}, 600,
       'prometheus: budget remaining');
    ok(!exists $s->{'nginx_llm_route_budget_remaining{route="cool"}'},
       'prometheus: no budget, no budget sample');
    is($s->{'nginx_llm_target_errors_total{error="rate_limited",'
            . 'model="gpt-4o-mini",target="/_llm/p"}'}, 0,
       'prometheus: target errors');
    is($s->{'nginx_llm_target_cooling{model="",target="/_llm/fb"}'}, 0,
       'prometheus: not cooling, no model');
    is(scalar(() = $text =~ /^nginx_llm_target_cooling\{target="\/_llm\/fb"/mg),
       1, 'prometheus: a target of two routes, once');
    like($text, qr/^nginx_llm_target_attempts_total\{target="\/_llm\/q\\"uo\\\\te",model="we\\"ird\\\\mo\\ndel"\} 0$/m,
         'prometheus: label values escaped');
    is(scalar(grep { /^nginx_llm_target_errors_total\{target="\/_llm\/p",/ }
              split /\n/, $text), scalar @ERRORS,
       'prometheus: a sample per error category');
}

###############################################################################
# counters move as traffic does

# n requests with the same script to a route; the statuses answered
sub send_n {
    my ($n, $uri, $case, %o) = @_;
    my @st;
    for my $i (1 .. $n) {
        push @st, post("$uri?id=$case-$i", $case, %o)->{status} // 0;
    }
    return join ' ', @st;
}

sub delta {
    my ($after, $before, @path) = @_;
    my ($a, $b) = ($after, $before);
    for my $k (@path) {
        $a = ref $a eq 'HASH' ? $a->{$k} : undef;
        $b = ref $b eq 'HASH' ? $b->{$k} : undef;
    }
    return ($a // 0) - ($b // 0);
}

my $P = '/_llm/p gpt-4o-mini';

is(send_n(5, '/chat/v1/chat/completions', '*:ok'), '200 200 200 200 200',
   'traffic: 5 successes');
is(send_n(3, '/chat/v1/chat/completions', '*:500'), '500 500 500',
   'traffic: 3 failures after a retry and a fallback');
is(send_n(2, '/chat/v1/chat/completions', '1:rl;2:ok'), '200 200',
   'traffic: 2 successes after a retry');
is(send_n(1, '/chat/v1/chat/completions', '*:ok', port => $t->port(8082)),
   '200', 'traffic: the chat route of the other server');
is(send_n(2, '/tight/v1/chat/completions', '*:500'), '500 500',
   'traffic: 2 failures, no budget to retry');

my $after = status();

{
    my %want = (requests => 11, attempts => 5 + 9 + 4 + 1,
                retries => 6 + 2);
    for my $k (sort keys %want) {
        is(delta($after, $before, 'routes', 'chat', $k), $want{$k},
           "traffic: chat $k");
    }

    my %dec = (retry => 3 + 2, fallback => 3, attempts_exhausted => 3,
               not_retryable => 0, deadline => 0, budget_exhausted => 0);
    for my $d (@DECISIONS) {
        is(delta($after, $before, 'routes', 'chat', 'decisions', $d),
           $dec{$d}, "traffic: chat decisions $d");
    }

    is($after->{routes}{chat}{budget}{left}, 600 + 2 - 8,
       'traffic: chat budget left: min*window + ratio*requests - retries');

    is(delta($after, $before, 'targets', $P, 'attempts'), 5 + 6 + 4,
       'traffic: target attempts');
    is(delta($after, $before, 'targets', $P, 'errors', 'server_error'), 6,
       'traffic: target server_error');
    is(delta($after, $before, 'targets', $P, 'errors', 'rate_limited'), 2,
       'traffic: target rate_limited');
    is(delta($after, $before, 'targets', '/_llm/fb', 'attempts'), 3,
       'traffic: fallback attempts');
    is(delta($after, $before, 'targets', '/_llm/fb', 'errors',
             'server_error'), 3, 'traffic: fallback server_error');
    is(delta($after, $before, 'targets', '/_llm/p2', 'attempts'), 1,
       'traffic: target of the other server');

    my %mock;
    for my $m (@{$t->mock_requests('prov')}) {
        $mock{(split m{/}, $m->{path})[1]}++;
    }
    is($mock{p} // 0, 15, 'traffic: attempts the mock got at p');

    is(delta($after, $before, 'routes', 'tight', 'requests'), 2,
       'traffic: tight requests');
    is(delta($after, $before, 'routes', 'tight', 'attempts'), 2,
       'traffic: tight attempts, no retry');
    is(delta($after, $before, 'routes', 'tight', 'retries'), 0,
       'traffic: tight retries');
    is(delta($after, $before, 'routes', 'tight', 'decisions',
             'budget_exhausted'), 2, 'traffic: tight budget_exhausted');
    is($after->{routes}{tight}{budget}{left}, 0, 'traffic: tight budget left');
    is($mock{t} // 0, 2, 'traffic: attempts the mock got at t');

    for my $k (qw(requests attempts retries)) {
        is(delta($after, $before, 'routes', 'cool', $k), 0,
           "traffic: other routes unmoved ($k)");
    }
}

###############################################################################
# cooldown: a 429 with a Retry-After longer than llm_backoff max

{
    is(post('/cool/v1/chat/completions?id=cool-1', '1:rl+ra=3600;*:ok')
           ->{status}, 200, 'cooldown: answered by the fallback');

    my $s = status();
    my $c = $s->{targets}{'/_llm/c'} || {};

    ok($c->{cooling} && JSON::PP::is_bool($c->{cooling}),
       'cooldown: cooling true');
    ok($c->{cooldown_remaining_ms} > 3590000
       && $c->{cooldown_remaining_ms} <= 3600000,
       "cooldown: remaining $c->{cooldown_remaining_ms} ms");
    is($c->{cooldowns}, 1, 'cooldown: cooldowns');
    is($c->{attempts}, 1, 'cooldown: attempts');
    is($c->{errors}{rate_limited}, 1, 'cooldown: rate_limited');
    is(delta($s, $after, 'routes', 'cool', 'decisions', 'fallback'), 1,
       'cooldown: fallback decision');
    is(delta($s, $after, 'routes', 'cool', 'retries'), 1,
       'cooldown: a retry');

    is(post('/cool/v1/chat/completions?id=cool-2', '*:ok')->{status}, 200,
       'cooldown: next request answered');

    my $s2 = status();
    $c = $s2->{targets}{'/_llm/c'} || {};

    is($c->{skipped}, 1, 'cooldown: skipped');
    is($c->{attempts}, 1, 'cooldown: no attempt while cooling');
    is(delta($s2, $s, 'routes', 'cool', 'requests'), 1,
       'cooldown: the request counted');
    is(delta($s2, $s, 'routes', 'cool', 'attempts'), 1,
       'cooldown: one attempt, at the fallback');
    is(delta($s2, $s, 'routes', 'cool', 'retries'), 0,
       'cooldown: a skip is no retry');
    is(delta($s2, $after, 'targets', '/_llm/fb', 'attempts'), 2,
       'cooldown: the fallback got both');
    is(scalar(grep { $_->{path} =~ m{^/c/} } @{$t->mock_requests('prov')}),
       1, 'cooldown: the mock saw one attempt at c');

    # the same in Prometheus text

    my $text = prometheus();
    check_exposition($text, 'prometheus after traffic');

    my $p = samples($text);
    my $cl = 'model="",target="/_llm/c"';

    is($p->{"nginx_llm_target_cooling{$cl}"}, 1, 'prometheus: cooling 1');
    ok($p->{"nginx_llm_target_cooldown_remaining_seconds{$cl}"} > 3590
       && $p->{"nginx_llm_target_cooldown_remaining_seconds{$cl}"} <= 3600,
       'prometheus: cooldown remaining seconds');
    like($text, qr/^nginx_llm_target_cooldown_remaining_seconds\{target="\/_llm\/c",model=""\} \d+(?:\.\d{1,3})?$/m,
         'prometheus: seconds with at most millisecond digits');
    is($p->{"nginx_llm_target_cooldowns_total{$cl}"}, 1,
       'prometheus: cooldowns');
    is($p->{"nginx_llm_target_skipped_total{$cl}"}, 1, 'prometheus: skipped');
    is($p->{'nginx_llm_route_requests_total{route="chat"}'},
       $s2->{routes}{chat}{requests}, 'prometheus: requests as in json');
    is($p->{'nginx_llm_route_retries_total{route="chat"}'},
       $s2->{routes}{chat}{retries}, 'prometheus: retries as in json');
    is($p->{'nginx_llm_route_decisions_total{decision="attempts_exhausted",'
            . 'route="chat"}'}, 3, 'prometheus: decisions as in json');
    is($p->{'nginx_llm_route_budget_remaining{route="tight"}'}, 0,
       'prometheus: budget remaining 0');
    is($p->{'nginx_llm_target_errors_total{error="server_error",'
            . 'model="gpt-4o-mini",target="/_llm/p"}'}, 6,
       'prometheus: target errors as in json');
}

###############################################################################
# the status page counts nothing itself

{
    my $s1 = status();
    get('/status?format=prometheus');
    get('/status?format=nope');
    my $s2 = status();
    for my $r (sort keys %{$s1->{routes}}) {
        is(delta($s2, $s1, 'routes', $r, 'requests'), 0,
           "status requests count nothing ($r)");
    }
}

done_testing;
