#!/usr/bin/perl

# Catalogs and the plan (docs/directives.md, "Model catalogs"): a fallback
# without model= whose catalog does not list the client's model is passed
# over, recorded as skipped, and the plan moves to the next one; when no
# such fallback is left, the first target's failure is the final answer
# with the decision attempts_exhausted, not "fallback".

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

$t->write_file('cat.json', '{"object":"list","data":[{"id":"listed"}]}');

my $conf = <<'EOF';
events {}

http {
    %%LOG_FORMAT%%
    access_log %%TESTDIR%%/logs/access.log engine;

    llm_catalog c cat.json;

    proxy_set_header X-Attempt $llm_attempts;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /two/v1/chat/completions {
            llm_route two;
            llm_target /_llm/a;
            llm_fallback /_llm/b catalog=c;
            llm_fallback /_llm/c;
        }

        location = /one/v1/chat/completions {
            llm_route one;
            llm_target /_llm/a;
            llm_fallback /_llm/b catalog=c;
        }

        location ~ ^/_llm/(a|b|c)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions$is_args$args;
        }
    }
}
EOF

engine_run($t, $conf, mocks => [ provider => 8081 ]);

sub post {
    my ($route, $id, $model, $case) = @_;
    return parse_response(http_post("/$route/v1/chat/completions?id=$id",
        qq({"model":"$model","messages":[]}), port => $t->port(8080),
        headers => { 'X-Case' => $case }));
}

my $r = post('two', 'unlisted', 'other', '1:500;*:ok');
is($r->{status}, 200, 'an unlisted model: the next fallback answers');
my $e = log_entry($t, 'unlisted');
is($e->{targets}, '/_llm/a, /_llm/b, /_llm/c', 'the attempt lists');
is($e->{errors}, 'server_error, skipped, -', 'the catalog fallback skipped');
is(scalar @{mock_for($t, 'provider', 'unlisted')}, 2, 'two upstream calls');
is(scalar(grep { $_->{path} =~ m{^/b/} }
          @{mock_for($t, 'provider', 'unlisted')}), 0,
   'none to the fallback that does not serve the model');

$r = post('two', 'listed', 'listed', '1:500;*:ok');
is($r->{status}, 200, 'a listed model: the catalog fallback answers');
is(log_entry($t, 'listed')->{targets}, '/_llm/a, /_llm/b',
   'a listed model goes to the catalog fallback');

$r = post('one', 'none', 'other', '*:500');
is($r->{status}, 500, 'no fallback serves the model: the first answer');
$e = log_entry($t, 'none');
is($e->{decision}, 'attempts_exhausted', 'decision attempts_exhausted');
is($e->{attempts}, 1, 'one attempt');

done_testing;
