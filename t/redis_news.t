#!/usr/bin/perl

# llm_redis: a cooldown begun on this node goes to Redis within an
# eighth of a sync, not at the next tick (issue 17), so that the other
# nodes, which read at their ticks, learn it within about one sync.
# sync=8s: a 429 with Retry-After 30 cools the target; its key is in
# Redis within 1.5 s (at the next tick it took up to 8 s, 4 on average).

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Time::HiRes qw(time sleep);
use JSON::PP ();

my $t = Test::LLM->new;
$t->has_daemon('redis-server');

my $redis = $t->run_redis;

$t->write_file_expand('nginx.conf', <<'EOF2');
worker_processes 2;

events {}

http {
    llm_zone llm:1m;
    llm_redis 127.0.0.1:%%REDIS%% sync=8s timeout=500ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=0 max=1s;

        location = /cool/v1/chat/completions {
            llm_route cool;
            llm_target /_llm/cool;
            llm_fallback /_llm/ok;
        }

        location = /_llm/ok {
            internal;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[]}';
        }

        location = /_llm/cool {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/;
        }

        location = /status {
            llm_status;
        }
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;

        location / {
            add_header Retry-After 30 always;
            return 429 '{"error":{"type":"requests","code":"rate_limit_exceeded"}}';
        }
    }
}
EOF2

$t->run;
my $port = $t->port(8080);

my $deadline = time + 12;
while (time < $deadline) {
    my $r = parse_response(http_get('/status', port => $port));
    last if $r->{body} =~ /"state":"up"/;
    sleep 0.1;
}
like(parse_response(http_get('/status', port => $port))->{body},
     qr/"state":"up"/, 'the link is up');

my $r = parse_response(http_post('/cool/v1/chat/completions',
                                 '{"model":"m","messages":[]}',
                                 port => $port));
my $t0 = time;
is($r->{status}, 200, 'the target cools down, the fallback answers');

my $seen;
while (time < $t0 + 9) {
    if (defined redis_command($redis, 'GET', '{llm:cd}:/_llm/cool')) {
        $seen = time - $t0;
        last;
    }
    sleep 0.02;
}

ok(defined $seen, 'the cooldown reached Redis');
cmp_ok($seen // 99, '<', 1.5,
       sprintf('within an eighth of sync=8s (%.2f s)', $seen // 99));

done_testing;
