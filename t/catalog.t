#!/usr/bin/perl

# Model catalogs (docs/directives.md, llm_catalog, llm_models, catalog=
# of llm_target).  Covers: catalogs in OpenAI's and Anthropic's
# /v1/models shapes, a relative file name and a catalog declared after
# the servers; a client's model not in the catalog of the target it would
# reach unrewritten gets 400 in the family's error shape (OpenAI's for
# chat and responses, Anthropic's for messages) with no upstream request,
# also when the request has no model or one too long to quote; a model
# in the catalog passes, ids with JSON escapes compared decoded; a target
# with model= is not checked at run time;
# the refusal's log variables, and the requested model never in the error
# log; llm_models: the union in OpenAI's list shape, deduplicated, in a
# stable order, HEAD, 405 for POST; a reload reads an edited catalog
# file, and a reload with a broken one keeps the running configuration.
# nginx -t errors are in t/catalog_config.t.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use JSON::PP ();
use Time::Local qw(timegm);

my $JSON = JSON::PP->new->utf8->canonical;

my $t = Test::LLM->new;

# the failed reload's message, on purpose
$t->allow_alerts(qr/\[emerg\].*invalid llm catalog file/);

my $SECRET_MODEL = 'sk-catalog-canary-7741';
$t->canary($SECRET_MODEL);

sub openai_catalog {
    my (@extra) = @_;
    return $JSON->encode({ object => 'list', data => [
        { id => 'gpt-4o-mini', object => 'model', created => 1721172741,
          owned_by => 'system' },
        # older lists: permission objects with ids of their own
        { id => 'gpt-4o', object => 'model', created => 1715367049,
          owned_by => 'system',
          permission => [ { id => 'modelperm-x',
                            object => 'model_permission' } ] },
        { id => 'shared-model', object => 'model', created => 1,
          owned_by => 'openai' },
        @extra,
    ] });
}

$t->write_file('openai.json', openai_catalog());

# pretty-printed, as Anthropic's API and curl | jq give it
$t->write_file('anthropic.json', <<'EOF');
{
  "data": [
    {
      "type": "model",
      "id": "claude-3-5-haiku-20241022",
      "display_name": "Claude Haiku 3.5",
      "created_at": "2024-10-22T00:00:00Z"
    },
    {
      "type": "model",
      "id": "shared-model",
      "display_name": "Listed twice",
      "created_at": "2025-02-24T12:30:00.000+02:00"
    },
    {
      "type": "model",
      "id": "claude-3-5-haiku-20241022",
      "display_name": "Listed twice in one file",
      "created_at": "2024-10-22T00:00:00Z"
    }
  ],
  "has_more": false,
  "first_id": "claude-3-5-haiku-20241022",
  "last_id": "shared-model"
}
EOF

# ids with JSON escapes: compared and served decoded
$t->write_file('escaped.json',
               '{"data":[{"id":"caf\\u00e9/\\"q\\""},{"id":"tab\\tid"}]}');

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    llm_catalog oa openai.json;
    llm_catalog esc escaped.json;

    log_format cat '$uri|$status|$llm_attempts|$llm_error_type|'
                   '$llm_retry_decision|$llm_target';
    access_log %%TESTDIR%%/logs/access.log cat;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/p catalog=oa;
        }

        location = /v1/responses {
            llm_route responses;
            llm_target /_llm/p catalog=oa;
        }

        location = /rewrite/v1/chat/completions {
            llm_route rewrite;
            llm_target /_llm/p model=gpt-4o catalog=oa;
        }

        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/p catalog=an;
        }

        location = /esc/v1/chat/completions {
            llm_route escaped;
            llm_target /_llm/p catalog=esc;
        }

        location = /v1/models {
            llm_models oa an;
        }

        location = /esc/v1/models {
            llm_models esc;
        }

        location = /an/v1/models {
            llm_models an oa an;
        }

        location /_llm/p {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }

    llm_catalog an %%TESTDIR%%/anthropic.json;
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'p');
$t->run;

my $port = $t->port(8080);

my $posted = 0;

sub post {
    my ($uri, $body) = @_;
    $posted++;
    return parse_response(http_post($uri, $body, port => $port));
}

sub upstream { $t->mock_count('p') }

# the line of the latest post: nginx may write it a little after the
# answer, so the log is read once it has a line for every post
sub last_log {
    my @lines;
    wait_until(sub {
        @lines = split /\n/, $t->read_file('logs/access.log');
        @lines >= $posted;
    }, 5);
    return $lines[-1] // '';
}

###############################################################################
# runtime: a model in the catalog passes, one that is not gets 400

my $n = upstream();
my $r = post('/v1/chat/completions', '{"model":"gpt-4o-mini","messages":[]}');
is($r->{status}, 200, 'chat: a model in the catalog passes');
is(upstream(), $n + 1, 'chat: ... to the provider');

$r = post('/v1/chat/completions', '{"model":"gpt-9","messages":[]}');
is($r->{status}, 400, 'chat: a model not in the catalog: 400');
is($r->{headers}{'content-type'}, 'application/json', 'chat: JSON');
is_deeply($JSON->decode($r->{body}), { error => {
    message => 'The model `gpt-9` does not exist or you do not have access '
               . 'to it.',
    type => 'invalid_request_error', param => 'model',
    code => 'model_not_found' } }, 'chat: OpenAI error shape');
is(upstream(), $n + 1, 'chat: no upstream request');
is(last_log(), '/v1/chat/completions|400|0|invalid_request|not_retryable|-',
   'chat: log variables of the refusal');

$r = post('/v1/responses', '{"model":"claude-3-5-haiku-20241022",'
                           . '"input":"hi"}');
is($r->{status}, 400, 'responses: a model of another catalog: 400');
is($JSON->decode($r->{body})->{error}{code}, 'model_not_found',
   'responses: OpenAI error shape');

$n = upstream();
$r = post('/v1/messages', '{"model":"claude-3-5-haiku-20241022",'
                          . '"max_tokens":8,"messages":[]}');
is($r->{status}, 200, 'messages: a model in the catalog passes');
is(upstream(), $n + 1, 'messages: ... to the provider');

$r = post('/v1/messages', '{"model":"claude-9","max_tokens":8,'
                          . '"messages":[]}');
is($r->{status}, 400, 'messages: a model not in the catalog: 400');
is_deeply($JSON->decode($r->{body}), { type => 'error', error => {
    type => 'not_found_error', message => 'model: claude-9' } },
    'messages: Anthropic error shape');

$r = post('/v1/messages', '{"max_tokens":8,"messages":[]}');
is($r->{status}, 400, 'messages: no model: 400');
is($JSON->decode($r->{body})->{error}{message}, 'model: Field required',
   'messages: no model: message');
is(upstream(), $n + 1, 'messages: no upstream request');

# no model, one too long to quote, one that needs escaping

$r = post('/v1/chat/completions', '{"messages":[]}');
is($r->{status}, 400, 'no model: 400');
is($JSON->decode($r->{body})->{error}{message},
   'you must provide a model parameter', 'no model: message');

$r = post('/v1/chat/completions',
          '{"model":"' . ('m' x 300) . '","messages":[]}');
is($r->{status}, 400, 'a 300-byte model: 400');
unlike($r->{body}, qr/mmm/, 'a 300-byte model: not quoted');
is($JSON->decode($r->{body})->{error}{code}, 'model_not_found',
   'a 300-byte model: model_not_found');

$r = post('/v1/chat/completions',
          '{"model":"a\"b\\\\c\\n\\u00e9\\u0001","messages":[]}');
is($r->{status}, 400, 'a model to escape: 400');
is($JSON->decode($r->{body})->{error}{message},
   "The model `a\"b\\c\n\x{e9}\x{1}` does not exist or you do not have "
   . 'access to it.', 'a model to escape: quoted, valid JSON');

$r = post('/v1/chat/completions',
          qq({"model":"$SECRET_MODEL","messages":[]}));
is($r->{status}, 400, 'a model the logs must not hold: 400');
is(upstream(), $n + 1, 'refusals: still no upstream request');

# a target with model= is checked by nginx -t only

$r = post('/rewrite/v1/chat/completions', '{"model":"gpt-9",'
                                          . '"messages":[]}');
is($r->{status}, 200, 'model= rewrite: any client model passes');
is(upstream(), $n + 2, 'model= rewrite: to the provider');
like($t->mock_requests('p')->[-1]{body}, qr/"model":"gpt-4o"/,
     'model= rewrite: the catalog\'s model sent');

# twice: nothing left over from a refusal on a keepalive connection

my ($res) = http_keepalive([
    http_request('POST', '/v1/chat/completions', keepalive => 1,
                 body => '{"model":"nope","messages":[]}',
                 headers => [ 'Content-Type' => 'application/json' ]),
    http_request('POST', '/v1/chat/completions', keepalive => 1,
                 body => '{"model":"gpt-4o","messages":[]}',
                 headers => [ 'Content-Type' => 'application/json' ]),
], port => $port);
like($res->[0] // '', qr/^HTTP\/1\.1 400/, 'keepalive: refused');
like($res->[1] // '', qr/^HTTP\/1\.1 200/, 'keepalive: then passed');

# escapes

$r = post('/esc/v1/chat/completions',
          '{"model":"caf\u00e9/\"q\"","messages":[]}');
is($r->{status}, 200, 'an id with escapes: the same model escaped otherwise');
$r = post('/esc/v1/chat/completions',
          qq({"model":"caf\xc3\xa9/\\"q\\"","messages":[]}));
is($r->{status}, 200, 'an id with escapes: the model in raw UTF-8');
$r = post('/esc/v1/chat/completions', '{"model":"caf\u00e9","messages":[]}');
is($r->{status}, 400, 'an id with escapes: a prefix of it is refused');

###############################################################################
# llm_models

my $oa_an = [
    { id => 'gpt-4o-mini', object => 'model', created => 1721172741,
      owned_by => 'system' },
    { id => 'gpt-4o', object => 'model', created => 1715367049,
      owned_by => 'system' },
    { id => 'shared-model', object => 'model', created => 1,
      owned_by => 'openai' },
    { id => 'claude-3-5-haiku-20241022', object => 'model',
      created => timegm(0, 0, 0, 22, 9, 2024), owned_by => 'an' },
];

$r = parse_response(http_get('/v1/models', port => $port));
is($r->{status}, 200, 'llm_models: 200');
is($r->{headers}{'content-type'}, 'application/json', 'llm_models: JSON');
is_deeply($JSON->decode($r->{body}), { object => 'list', data => $oa_an },
          'llm_models oa an: union, each id once, in order');

$r = parse_response(http_get('/an/v1/models', port => $port));
is_deeply($JSON->decode($r->{body}), { object => 'list', data => [
    { id => 'claude-3-5-haiku-20241022', object => 'model',
      created => timegm(0, 0, 0, 22, 9, 2024), owned_by => 'an' },
    { id => 'shared-model', object => 'model',
      created => timegm(0, 30, 10, 24, 1, 2025), owned_by => 'an' },
    { id => 'gpt-4o-mini', object => 'model', created => 1721172741,
      owned_by => 'system' },
    { id => 'gpt-4o', object => 'model', created => 1715367049,
      owned_by => 'system' },
] }, 'llm_models an oa an: the first catalog\'s entry of a shared id');

$r = parse_response(http_get('/esc/v1/models', port => $port));
is_deeply([ map { $_->{id} } @{$JSON->decode($r->{body})->{data}} ],
          [ "caf\x{e9}/\"q\"", "tab\tid" ], 'llm_models: ids escaped');

$r = parse_response(http(http_request('HEAD', '/v1/models'), port => $port));
is($r->{status}, 200, 'llm_models: HEAD');
is($r->{body}, '', 'llm_models: HEAD has no body');

$r = post('/v1/models', '{}');
is($r->{status}, 405, 'llm_models: POST 405');
is($r->{headers}{allow}, 'GET, HEAD', 'llm_models: Allow');

###############################################################################
# a reload reads the files again

$t->write_file('openai.json', openai_catalog(
    { id => 'gpt-5', object => 'model', created => 2, owned_by => 'new' }));
ok($t->reload, 'reload with an edited catalog');

$n = upstream();
$r = post('/v1/chat/completions', '{"model":"gpt-5","messages":[]}');
is($r->{status}, 200, 'after the reload: the new model passes');
is(upstream(), $n + 1, 'after the reload: to the provider');

$r = parse_response(http_get('/v1/models', port => $port));
is_deeply([ map { $_->{id} } @{$JSON->decode($r->{body})->{data}} ],
          [ 'gpt-4o-mini', 'gpt-4o', 'shared-model', 'gpt-5',
            'claude-3-5-haiku-20241022' ],
          'after the reload: llm_models lists it');

# a broken file: the reload fails, the running configuration stays

my $off = $t->log_offset('logs/error.log');
$t->write_file('openai.json', '{"object":"list","data":[{"id":"gpt-4o"},');
ok(!$t->reload(timeout => 3), 'reload with a truncated catalog: refused');
like($t->read_from('logs/error.log', $off),
     qr/invalid llm catalog file ".*openai\.json" at line 1, column 42: parse error: premature EOF in \S+nginx\.conf:\d+$/m,
     'reload with a truncated catalog: the error names file and place');

$r = post('/v1/chat/completions', '{"model":"gpt-5","messages":[]}');
is($r->{status}, 200, 'after the failed reload: the catalog in force stays');

###############################################################################
# the error log: the refusals' lines, never the model

my $log = $t->read_file('logs/error.log');
like($log, qr/\[info\].*llm route "chat": the model asked for is not in catalog "oa" of target "\/_llm\/p", refused/,
     'error log: the refusal at info');
unlike($log, qr/gpt-9|claude-9/, 'error log: no requested model');

done_testing;
