#!/usr/bin/perl

# Configuration errors of model catalogs (docs/directives.md,
# llm_catalog, llm_models, catalog= of llm_target), caught by `nginx -t`
# with nginx-style messages: a missing catalog file; malformed JSON with
# the line and column of the error (syntax, invalid UTF-8, trailing
# garbage, a truncated or empty file); files that are JSON but no
# /v1/models list; an unknown catalog name; a target's or fallback's
# model= not in its catalog, at the directive's file:line; a duplicate
# catalog; llm_models with an unknown catalog, another content handler,
# twice.  Valid configurations pass, with a catalog declared after the
# servers that use it.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

my $t = Test::LLM->new;

# every failing case puts an [emerg] in the log on purpose
$t->allow_alerts(qr/\[emerg\]/);

my $dir = $t->testdir;
my $file = "$dir/nginx.conf";

$t->write_file('openai.json', <<'EOF');
{"object": "list", "data": [
  {"id": "gpt-4o-mini", "object": "model", "owned_by": "system"},
  {"id": "gpt-4o", "object": "model", "owned_by": "system"}
]}
EOF

# $http at the top of the http block, $loc in the route's location,
# $extra in the server block
sub conf {
    my ($http, $loc, $extra) = @_;
    $extra //= '';
    $t->write_file_expand('nginx.conf', <<"EOF");
events {}

http {
    $http

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        $extra

        location = /v1/chat/completions {
            llm_route chat;
            $loc
        }

        location /_llm/a {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }
    }
}
EOF
}

sub line_of { $t->conf_line(@_) }
sub fails { $t->config_fails(@_) }
sub passes { $t->config_passes(@_) }

# a catalog file with the given text, used by a target
sub catalog_file {
    my ($text) = @_;
    $t->write_file('bad.json', $text);
    conf('llm_catalog bad bad.json;', 'llm_target /_llm/a catalog=bad;');
}

sub bad_json {
    my ($name, $text, $line, $column, $reason) = @_;
    catalog_file($text);
    fails($name, "invalid llm catalog file \"$dir/bad.json\" at line "
                 . "$line, column $column: $reason",
          line_of(qr/llm_catalog bad/));
}

###############################################################################
# valid

conf('llm_catalog oa openai.json;',
     'llm_target /_llm/a model=gpt-4o catalog=oa weight=9 tries=2;
            llm_target /_llm/a catalog=oa;
            llm_fallback /_llm/a model=gpt-4o-mini tries=2 catalog=oa;');
passes('targets with models of their catalog');

conf('', 'llm_target /_llm/a model=gpt-4o catalog=oa;');
$t->write_file_expand('nginx.conf',
    $t->read_file('nginx.conf') =~ s/}\s*$/    llm_catalog oa openai.json;\n}\n/r);
passes('a catalog declared after the server');

conf('llm_catalog oa ' . "$dir/openai.json;" . ' llm_catalog b openai.json;',
     'llm_target /_llm/a catalog=b;',
     'location = /v1/models { llm_models oa b; }');
passes('an absolute file, two catalogs, llm_models');

###############################################################################
# the file

conf('llm_catalog oa nope.json;', 'llm_target /_llm/a;');
fails('missing file',
      "open() \"$dir/nope.json\" failed (2: No such file or directory)",
      line_of(qr/llm_catalog oa/));

bad_json('syntax error', <<'EOF', 3, 20,
{"object": "list", "data": [
  {"id": "gpt-4o-mini"},
  {"id": "gpt-4o" "owned_by": "x"}
]}
EOF
    'parse error: after key and value, inside map, I expect \',\' or \'}\'');

bad_json('invalid UTF-8', qq({"data": [\n  {"id": "gpt-\xff"}\n]}\n), 2, 15,
         'lexical error: invalid bytes in UTF8 string');

bad_json('trailing garbage', qq({"data": [{"id": "a"}]}\n}\n), 2, 1,
         'parse error: trailing garbage');

bad_json('truncated', qq({"data": [{"id": "a"},\n), 2, 1,
         'parse error: premature EOF');

bad_json('empty file', '', 1, 1, 'parse error: premature EOF');

bad_json('top-level array', qq([{"id": "a"}]\n), 1, 1, 'not a JSON object');

bad_json('"data" not an array', qq({"data": {"id": "a"}}\n), 1, 10,
         '"data" is not an array');

bad_json('a model not an object', qq({"data": ["gpt-4o"]}\n), 1, 18,
         'a model is not an object');

bad_json('a model without an id', qq({"data": [\n  {"id": "a"},\n  {"name": "b"}\n]}\n),
         3, 15, 'a model has no "id"');

bad_json('an id not a string', qq({"data": [{"id": 42}]}\n), 1, 19,
         '"id" is not a string');

bad_json('an id too long', '{"data": [{"id": "' . ('x' x 257) . '"}]}', 1,
         276, '"id" is empty or longer than 256 bytes');

catalog_file(qq({"error": {"message": "Incorrect API key provided",
                            "type": "invalid_request_error"}}\n));
fails('an error answer saved as a catalog',
      "invalid llm catalog file \"$dir/bad.json\": no \"data\" array of "
      . 'models', line_of(qr/llm_catalog bad/));

catalog_file(qq({"object": "list", "data": []}\n));
fails('no models', "invalid llm catalog file \"$dir/bad.json\": no models",
      line_of(qr/llm_catalog bad/));

###############################################################################
# names and models

conf('llm_catalog oa openai.json;', 'llm_target /_llm/a catalog=nope;');
fails('unknown catalog', 'unknown llm_catalog "nope"',
      line_of(qr/catalog=nope/));

conf('llm_catalog oa openai.json;',
     'llm_target /_llm/a model=gpt-4o catalog=oa;
            llm_target /_llm/a model=gpt-9 weight=2 catalog=oa;');
fails('a target\'s model not in its catalog',
      "model \"gpt-9\" of llm_target is not in catalog \"oa\" "
      . "($dir/openai.json)", line_of(qr/model=gpt-9/));

conf('llm_catalog oa openai.json;',
     'llm_target /_llm/a;
            llm_fallback /_llm/a model=claude-3-5-haiku catalog=oa;');
fails('a fallback\'s model not in its catalog',
      "model \"claude-3-5-haiku\" of llm_fallback is not in catalog \"oa\" "
      . "($dir/openai.json)", line_of(qr/model=claude/));

conf('llm_catalog oa openai.json;
    llm_catalog oa openai.json;', 'llm_target /_llm/a;');
fails('duplicate catalog',
      "duplicate llm_catalog \"oa\", first defined in $file:"
      . line_of(qr/llm_catalog oa/), line_of(qr/^\s+llm_catalog oa openai.json;$/) + 1);

conf('llm_catalog o/a openai.json;', 'llm_target /_llm/a;');
fails('invalid name', 'invalid llm_catalog name "o/a"',
      line_of(qr/llm_catalog o\/a/));

conf('llm_catalog oa openai.json;', 'llm_target /_llm/a catalog=;');
fails('empty catalog=', 'invalid parameter "catalog="',
      line_of(qr/catalog=;/));

conf('', 'llm_target /_llm/a;', 'llm_catalog oa openai.json;');
fails('llm_catalog in server', '"llm_catalog" directive is not allowed here',
      line_of(qr/llm_catalog oa/));

###############################################################################
# llm_models

conf('llm_catalog oa openai.json;', 'llm_target /_llm/a;',
     'location = /v1/models { llm_models oa nope; }');
fails('llm_models: unknown catalog', 'unknown llm_catalog "nope"',
      line_of(qr/llm_models/));

conf('llm_catalog oa openai.json;', 'llm_target /_llm/a;',
     'location = /v1/models { llm_models oa; proxy_pass http://127.0.0.1:1; }');
fails('llm_models and proxy_pass',
      '"llm_models" cannot be combined with another content handler in '
      . 'one location', line_of(qr/llm_models/));

conf('llm_catalog oa openai.json;', 'llm_target /_llm/a; llm_models oa;');
fails('llm_models in a route',
      '"llm_models" cannot be combined with another content handler in '
      . 'one location', line_of(qr/llm_models/));

conf('llm_catalog oa openai.json;', 'llm_target /_llm/a;',
     'location = /v1/models { llm_models oa; llm_models oa; }');
fails('llm_models twice', '"llm_models" directive is duplicate',
      line_of(qr/llm_models/));

done_testing;
