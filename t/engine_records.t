#!/usr/bin/perl

# Attempt engine: honest records and answers (docs/directives.md,
# "Retries and fallbacks"; docs/logging.md).  Covers: a reply that is no
# HTTP at all (HTTP/0.9-looking bytes) is invalid_response, retried like
# other provider failures and a 502 from the gateway when final, never
# "HTTP/1.1 000"; a retry decided on a target that its own failure put in
# cooldown moves to the fallback and reads "fallback", or, with no
# fallback, reads attempts_exhausted, never "retry" followed by a skip;
# the last error answer cut in the middle of its body reads
# attempts_exhausted with its own category, never not_retryable.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

my $conf = <<'EOF';
events {}

http {
    %%ENGINE%%

    llm_zone llm:1m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;

        location = /garbage/v1/chat/completions {
            llm_route garbage;
            llm_target /_llm/a tries=2;
        }

        location = /cdfb/v1/chat/completions {
            llm_route cdfb;
            llm_target /_llm/b tries=3;
            llm_fallback /_llm/c;
            llm_cooldown fails=1 window=10s time=10s;
        }

        location = /cdonly/v1/chat/completions {
            llm_route cdonly;
            llm_target /_llm/d tries=3;
            llm_cooldown fails=1 window=10s time=10s;
        }

        location = /cut/v1/chat/completions {
            llm_route cut;
            llm_target /_llm/a tries=3;
            llm_attempts 2;
        }

        location ~ ^/_llm/(a|b|c|d)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions;
        }
    }
}
EOF

my $port = engine_run($t, $conf, mocks => [ provider => 8081 ]);
my $body = '{"model":"gpt-4o-mini","messages":[]}';

sub post {
    my ($route, $id, $case) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$id",
        $body, port => $port, headers => { 'X-Case' => $case }));
}

###############################################################################
# a reply that is no HTTP

my $r = post('garbage', 'g1', '1:garbage;2:ok');
is($r->{status}, 200, 'garbage, then ok: the retry answers');
my $e = log_entry($t, 'g1');
is($e->{errors}, 'invalid_response, -', 'garbage is invalid_response');
is($e->{decision}, 'retry', 'garbage is retried');

my $raw = http_post('/garbage/v1/chat/completions?id=g2', $body,
                    port => $port, headers => { 'X-Case' => '*:garbage' });
$r = parse_response($raw);
is($r->{status}, 502, 'garbage twice: 502 from the gateway');
unlike($raw, qr{^HTTP/1\.1 000}, 'never HTTP/1.1 000');
unlike($r->{body}, qr/ICY|not http/, 'none of the garbage reaches the client');
$e = log_entry($t, 'g2');
is($e->{status}, 502, 'garbage twice: logged 502');
is($e->{errors}, 'invalid_response, invalid_response',
   'garbage twice: both attempts invalid_response');
is($e->{error}, 'invalid_response', 'garbage twice: $llm_error_type');
is($e->{decision}, 'attempts_exhausted', 'garbage twice: decision');

###############################################################################
# a target cooled down by its own failure

$r = post('cdfb', 'cd1', '1:500;*:ok');
is($r->{status}, 200, 'cooled target: the fallback answers');
$e = log_entry($t, 'cd1');
is($e->{decision}, 'fallback', 'cooled target: decision fallback');
is($e->{targets}, '/_llm/b, /_llm/c', 'cooled target: no retry on it');

$r = post('cdonly', 'cd2', '1:500;*:ok');
is($r->{status}, 500, 'cooled target, no fallback: the provider answer');
$e = log_entry($t, 'cd2');
is($e->{decision}, 'attempts_exhausted',
   'cooled target, no fallback: attempts_exhausted');
is($e->{targets}, '/_llm/d', 'cooled target, no fallback: one attempt');
is($e->{attempts}, 1, 'cooled target, no fallback: one attempt made');

###############################################################################
# the last error answer cut in the middle of its body

$raw = http_post('/cut/v1/chat/completions?id=cut1', $body, port => $port,
                    headers => { 'X-Case' => '1:500;2:cut' });
like($raw, qr{^HTTP/1\.1 500}, 'cut: the last answer began');
$e = log_entry($t, 'cut1');
is($e->{decision}, 'attempts_exhausted', 'cut: decision attempts_exhausted');
is($e->{errors}, 'server_error, server_error',
   'cut: the answer keeps its own category');

done_testing;
