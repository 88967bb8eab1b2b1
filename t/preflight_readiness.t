#!/usr/bin/perl

# llm-preflight readiness and catalog (docs/llm-preflight.md), through
# real nginx with the module.  Covers: readiness with a healthy primary
# and fallback (primary_ok, exit 0), a broken fallback (nothing behind
# it: review_required, exit 1, follow-up), a primary only
# (fallback_not_needed), a path whose bad request is not refused cleanly,
# retry_count from x-llm-attempts and null without llm_response_headers,
# a streamed path, base URLs and endpoint URLs, a path of another family
# refused; the record's fields (credential a placeholder, operator
# initials, evidence link) and the key in none of them.  catalog: the
# gateway's llm_models list and Anthropic's paged list written in the
# shape llm_catalog reads, loaded by nginx -t; a gateway without a list.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Preflight;

use JSON::PP ();

plan(skip_all => "no $PREFLIGHT (run make)") unless -x $PREFLIGHT;

my $t = Test::LLM->new;

my $KEY = 'sk-CANARY-readiness-key-0c44d1';
$t->canary($KEY);

$t->write_file_expand('nginx.conf', gateway_conf($t));
$t->run_mock_provider(port => $t->port(8081), name => 'p',
                      handler => \&family_handler);
$t->run;

my $GW = 'http://127.0.0.1:' . $t->port(8080);

sub ready {
    my (@args) = @_;
    return preflight($t, [ 'readiness', '--family', 'chat', '--model',
                           'gpt-candidate', '--environment', 'staging',
                           '--operator', 'Jane Q. Doe', '--evidence-link',
                           'https://tickets.example/CHG-1', @args ],
                     env => { OPENAI_API_KEY => $KEY });
}

sub what { my ($r) = @_; "rc=$r->{rc} err=$r->{err} out=$r->{out}" }

###############################################################################
# healthy

my $r = ready('--primary', "$GW/ready/primary/v1/chat/completions",
              '--fallback', "$GW/ready/fallback", '--run-id', 'ready-1');
my $rec = $r->{record} || {};

is($r->{rc}, 0, 'healthy: exit 0') or diag(what($r));
is($rec->{fallback_decision}, 'primary_ok', 'healthy: primary_ok');
is($rec->{follow_up_needed}, JSON::PP::false, 'healthy: no follow-up');
is($rec->{run_id}, 'ready-1', 'run_id');
is($rec->{environment}, 'staging', 'environment');
is($rec->{api_surface}, 'chat', 'api_surface');
is($rec->{credential}, '[redacted: $OPENAI_API_KEY]',
   'credential: a placeholder');
is($rec->{operator_initials}, 'JQD', 'operator_initials');
is($rec->{evidence_link}, 'https://tickets.example/CHG-1', 'evidence_link');
is_deeply($rec->{status_family}, { primary => '2xx', fallback => '2xx' },
          'healthy: status_family');
is_deeply($rec->{retry_count}, { primary => 0, fallback => 0 },
          'healthy: retry_count from x-llm-attempts');
is_deeply($rec->{response_shape_observed},
          { primary => 'documented_shape_seen',
            fallback => 'documented_shape_seen' },
          'healthy: response_shape_observed');
is_deeply($rec->{paths},
          { primary => "$GW/ready/primary/v1/chat/completions",
            fallback => "$GW/ready/fallback/v1/chat/completions" },
          'an endpoint URL as given, a base URL with the family\'s path');

my @ids = map { $_->{headers}{'x-request-id'} }
          grep { ($_->{headers}{'x-request-id'} // '') =~ /^ready-1-/ }
          @{$t->mock_requests('p')};
is_deeply(\@ids, [ 'ready-1-primary-happy', 'ready-1-primary-error',
                   'ready-1-fallback-happy', 'ready-1-fallback-error' ],
          'both requests on each path');

###############################################################################
# a broken fallback

$r = ready('--primary', "$GW/ready/primary",
           '--fallback', "$GW/ready/broken");
$rec = $r->{record} || {};

is($r->{rc}, 1, 'broken fallback: exit 1') or diag(what($r));
is($rec->{fallback_decision}, 'review_required',
   'broken fallback: review_required');
is($rec->{follow_up_needed}, JSON::PP::true, 'broken fallback: follow-up');
is_deeply($rec->{status_family}, { primary => '2xx', fallback => 'other' },
          'broken fallback: status_family');
is($rec->{response_shape_observed}{fallback}, 'mismatch',
   'broken fallback: no documented shape');
is($rec->{retry_count}{fallback}, 0,
   'broken fallback: one attempt, no retry');
like($rec->{notes} // '', qr/fallback: answered 502/,
     'broken fallback: notes');

# a fallback that answers the bad request with a 200

$r = ready('--primary', "$GW/ready/primary", '--fallback',
           "$GW/ready/fallback", '--header', 'X-Case: error:ok');
is($r->{rc}, 1, 'bad request served: exit 1');
like($r->{record}{notes} // '', qr/error path answered 200/,
     'bad request served: notes');

###############################################################################
# one path, streams, headers

$r = ready('--primary', "$GW/ready/primary", '--stream');
is($r->{rc}, 0, 'primary only, streamed: exit 0') or diag(what($r));
is($r->{record}{fallback_decision}, 'fallback_not_needed',
   'primary only: fallback_not_needed');
is($r->{record}{response_shape_observed}{primary}, 'documented_shape_seen',
   'streamed: the shape');

$r = ready('--primary', "$GW/nohdr");
is($r->{rc}, 0, 'no llm_response_headers: exit 0') or diag(what($r));
is_deeply($r->{record}{retry_count}, { primary => undef },
          'no llm_response_headers: retry_count null');

$r = ready('--primary', "$GW/g/v1/messages");
is($r->{rc}, 3, 'a messages endpoint for chat: exit 3');
like($r->{err}, qr/--primary is a messages endpoint, not chat/,
     'a messages endpoint for chat: says so');

$r = preflight($t, [ 'readiness', '--family', 'chat', '--model', 'm',
                     '--primary', "$GW/ready/primary" ]);
is($r->{record}{credential}, '[none sent]', 'no key: a placeholder too');

my $all = join '', map { $t->read_file("logs/$_") }
          grep { /^preflight\./ }
          do { opendir my $d, $t->testdir . '/logs'; readdir $d };
unlike($all, qr/\Q$KEY\E/, 'no key in any output');

###############################################################################
# catalog

$r = preflight($t, [ 'catalog', '--base', "$GW/g" ]);
is($r->{rc}, 0, 'catalog: exit 0') or diag(what($r));
is_deeply([ map { $_->{id} } @{($r->{record} || {})->{data} || []} ],
          [ 'gpt-4o-mini', 'claude-3-5-haiku-20241022', 'gpt-candidate' ],
          'catalog: the gateway\'s models');

$r = preflight($t, [ 'catalog', '--base',
                     'http://127.0.0.1:' . $t->port(8081),
                     '--family', 'messages' ]);
is($r->{rc}, 0, 'catalog, Anthropic pages: exit 0') or diag(what($r));
is_deeply($r->{record}, { object => 'list', data => [
              map { { id => $_, object => 'model' } }
              qw(claude-a claude-b claude-c) ] },
          'catalog, Anthropic pages: every page, in llm_catalog\'s shape');

my @pages = grep { $_->{path} eq '/v1/models' } @{$t->mock_requests('p')};
is(scalar @pages, 2, 'catalog, Anthropic pages: two requests');
is($pages[1]{query}, 'limit=1000&after_id=claude-b',
   'catalog, Anthropic pages: after the last id');
is($pages[0]{headers}{'anthropic-version'}, '2023-06-01',
   'catalog, messages: anthropic-version');

# what it wrote is what llm_catalog reads

$t->write_file('written.json', $r->{out});
$t->write_file('catalog-test.conf', <<"EOF");
load_module $Test::LLM::MODULE;
events {}
http {
    llm_catalog written @{[ $t->testdir ]}/written.json;
    server {
        listen 127.0.0.1:@{[ $t->port(8084) ]};
        location = /v1/messages {
            llm_route m;
            llm_target /_llm/m model=claude-c catalog=written;
        }
        location /_llm/m { internal; proxy_pass http://127.0.0.1:1; }
    }
}
EOF
{
    local $t->{conf} = 'catalog-test.conf';
    my ($ok, $out) = $t->test_config;
    ok($ok, 'catalog: nginx -t takes the written list') or diag($out);
}

$r = preflight($t, [ 'catalog', '--base', "$GW/ready" ]);
is($r->{rc}, 1, 'catalog, no list: exit 1');
like($r->{err}, qr{^llm-preflight: GET /v1/models answered 404\n\z},
     'catalog, no list: one line');
is($r->{out}, '', 'catalog, no list: nothing on stdout');

done_testing;
