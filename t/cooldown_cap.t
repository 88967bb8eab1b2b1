#!/usr/bin/perl

# Every cooldown is capped (issue 11, item 2): llm_cooldown max= (5m by
# default, with llm_cooldown off too) bounds a cooldown a provider asks
# for with Retry-After in seconds, retry-after-ms or an HTTP-date, however
# far; a target used by several routes takes the smallest max of them; a
# far-future end planted in Redis cools a node at most max from when it
# reads it, and is replaced in Redis by that end; a reload with a smaller
# max cuts the cooldowns already running, in this node and in Redis, and
# they end on time.  Also: nginx -t rejects a max= that is not a time
# and a time= longer than max=.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use Time::HiRes qw(time sleep);

my $t = Test::LLM->new;
my $redis = $t->run_redis;

my $conf = <<'EOF';
worker_processes 2;

events {}

http {
    %%ENGINE%%
    proxy_set_header Connection "";
    proxy_http_version 1.1;

    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%REDIS%% sync=50ms timeout=1s;

    upstream prov {
        server 127.0.0.1:%%PORT_8081%%;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=100ms;

        # llm_cooldown not configured: max=5m
        location = /dflt/v1/chat/completions {
            llm_route dflt;
            llm_target /_llm/dflt;
            llm_fallback /_llm/spare;
        }

        location = /ms/v1/chat/completions {
            llm_route ms;
            llm_target /_llm/ms;
            llm_fallback /_llm/spare;
            llm_cooldown max=30s;
        }

        location = /date/v1/chat/completions {
            llm_route date;
            llm_target /_llm/date;
            llm_fallback /_llm/spare;
            llm_cooldown off max=20s;
        }

        # /_llm/shared is capped by the smaller max of its two routes
        location = /wide/v1/chat/completions {
            llm_route wide;
            llm_target /_llm/shared;
            llm_fallback /_llm/spare;
            llm_cooldown off;
        }

        location = /narrow/v1/chat/completions {
            llm_route narrow;
            llm_target /_llm/shared;
            llm_fallback /_llm/spare;
            llm_cooldown fails=5 max=10s;
        }

        location = /planted/v1/chat/completions {
            llm_route planted;
            llm_target /_llm/planted;
            llm_fallback /_llm/spare;
            llm_cooldown max=2s;
        }

        location = /shrink/v1/chat/completions {
            llm_route shrink;
            llm_target /_llm/shrink;
            llm_fallback /_llm/spare;
            llm_cooldown max=%%SHRINK%%;
        }

        location = /status {
            llm_status;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://prov/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

# nginx.conf with llm_cooldown max=$shrink on /ms (for a reload)
sub config {
    my ($shrink) = @_;
    engine_run($t, $conf, subst => { SHRINK => $shrink }, mocks => [],
               run => 0);
}

my $port = engine_run($t, $conf, subst => { SHRINK => '60s' });

my $REQ = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
    . '"content":"cap me"}]}';

sub post {
    my ($route, $case) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$route",
                                    $REQ, port => $port,
                                    headers => { 'X-Case' => $case }));
}

# ms left of a target's cooldown, as the status page shows it
sub left {
    my ($target) = @_;
    return $t->status_json->{targets}{"/_llm/$target"}{cooldown_remaining_ms}
           // -1;
}

sub now_ms { int(time * 1000) }

sub redis_end {
    my ($target) = @_;
    return redis_command($redis, 'GET', "{llm:cd}:/_llm/$target") // 0;
}

ok(wait_until(sub { ($t->status_json->{redis}{state} // '') eq 'up' }),
   'the Redis link is up');

###############################################################################
# a provider's wait, however far, cools a target at most max

my $r = post('dflt', '1:rl+ra=99999999');
is($r->{status}, 200, 'Retry-After 99999999: the fallback answers');

my $left = left('dflt');
ok($left > 290000 && $left <= 300000,
   "Retry-After 99999999, no llm_cooldown: cooled 5m at most ($left ms)");
like($t->read_file('logs/error.log'),
     qr/llm target "\/_llm\/dflt" cooling down for 300000 ms after rate_limited/,
     'Retry-After 99999999: the capped cooldown is logged');

post('ms', '1:rl+ram=99999999999');
$left = left('ms');
ok($left > 25000 && $left <= 30000,
   "retry-after-ms 99999999999: cooled max=30s at most ($left ms)");

post('date', '1:529+radate=315360000');
$left = left('date');
ok($left > 15000 && $left <= 20000,
   "Retry-After ten years away: cooled max=20s at most ($left ms)");

post('wide', '1:rl+ra=3600');
$left = left('shared');
ok($left > 5000 && $left <= 10000,
   "a target of two routes: the smaller max, 10s ($left ms)");

# what this node sends to Redis is capped too
my $end = redis_end('ms');
ok(wait_until(sub { $end = redis_end('ms') })
   && $end > now_ms() + 20000 && $end <= now_ms() + 30000,
   'Redis holds the capped end');

###############################################################################
# a far-future end planted in Redis: max=2s from when the node reads it

my $far = now_ms() + 10 * 86400 * 1000;
redis_command($redis, 'SET', '{llm:cd}:/_llm/planted', $far,
              'PX', 10 * 86400 * 1000);

ok(wait_until(sub { left('planted') > 0 }), 'planted: the node reads it');
$left = left('planted');
ok($left > 0 && $left <= 2000, "planted: cooled 2s at most ($left ms)");

ok(wait_until(sub { redis_end('planted') < now_ms() + 3000 }),
   'planted: Redis gets the capped end back');

ok(wait_until(sub { left('planted') == 0 }, 4),
   'planted: the cooldown ends after max');

$r = post('planted', '*:ok');
is(log_entry($t, 'planted')->{targets}, '/_llm/planted',
   'planted: the target is tried again');

###############################################################################
# a reload with a smaller max cuts the cooldowns already running

post('shrink', '1:rl+ra=99999999');
$left = left('shrink');
ok($left > 55000 && $left <= 60000, "max=60s: cooled 60s ($left ms)");
ok(wait_until(sub { redis_end('shrink') > now_ms() + 50000 }),
   'max=60s: in Redis too');

config('2s');
ok($t->reload, 'reload with max=2s');

$left = left('shrink');
ok($left > 0 && $left <= 2000, "after the reload: 2s at most ($left ms)");
ok(wait_until(sub { redis_end('shrink') <= now_ms() + 2000 }),
   'after the reload: Redis holds the cut end');
ok(wait_until(sub { left('shrink') == 0 }, 4),
   'after the reload: the cooldown ends on time');

$left = left('dflt');
ok($left > 280000 && $left <= 300000,
   "after the reload: a cooldown within its max is kept ($left ms)");

###############################################################################
# configuration errors, in a prefix of their own: nginx -t logs them

my $e = Test::LLM->new;
$e->allow_alerts(qr/\[emerg\]/);

my $bad = <<'EOF';
events {}

http {
    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route r;
            llm_target /_llm/a;
            llm_cooldown %%ARGS%%;
        }

        location = /_llm/a {
            internal;
            return 200;
        }
    }
}
EOF

sub cooldown_conf {
    my ($args) = @_;
    (my $c = $bad) =~ s/%%ARGS%%/$args/;
    $e->write_file_expand('nginx.conf', $c);
    return $e->test_config;
}

for my $case (['max=never', 'invalid parameter "max=never"'],
              ['max=0', 'invalid parameter "max=0"'],
              ['time=10m', '"time=10m" must not be longer than "max=5m"'],
              ['time=1m max=30s',
               '"time=1m" must not be longer than "max=30s"'],
              ['off fails=3', 'invalid parameter "fails=3"'])
{
    my ($ok, $out) = cooldown_conf($case->[0]);
    ok(!$ok && $out =~ /\Q$case->[1]\E/, "nginx -t: llm_cooldown $case->[0]")
        or diag $out;
}

my ($ok, $out) = cooldown_conf('fails=2 time=10m max=1h');
ok($ok, 'nginx -t: llm_cooldown fails=2 time=10m max=1h') or diag $out;

done_testing;
