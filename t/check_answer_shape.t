#!/usr/bin/perl

# llm_check_answer when no variable reads answers ($llm_usage_*,
# $llm_response_model, $llm_response_shape unused): the held answer is
# read for its shape alone (bench/README.md, "The answer check"), its
# usage and model not decoded.  The judgement is the same as with them:
# an error object in a 200, an "error" member after the choices, another
# family's object, a body cut inside its JSON or followed by more bytes,
# not JSON: invalid_response and the fallback's answer; a good answer is
# passed on unchanged.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

my $t = Test::LLM->new;

my $ok = '{"id":"chatcmpl-1","object":"chat.completion","created":1,'
    . '"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":'
    . '"assistant","content":"ok \\"quoted\\" [not a bracket]"},'
    . '"finish_reason":"stop"}],"usage":{"prompt_tokens":7,'
    . '"completion_tokens":1,"total_tokens":8}}';

my %bad = (
    err200 => '{"error":{"message":"upstream model failed","type":'
        . '"server_error","param":null,"code":null}}',
    errafter => substr($ok, 0, -1) . ',"error":{"message":"late"}}',
    cut => substr($ok, 0, -2),
    after => $ok . '{}',
    html => '<html><body>maintenance</body></html>',
);

# a JSON string in nginx's single quotes: its backslashes doubled
sub conf_string {
    my ($s) = @_;
    $s =~ s/\\/\\\\/g;
    $s =~ s/'/\\'/g;
    return $s;
}

(my $conf = <<'EOF') =~ s/%%OK%%/conf_string($ok)/e;
events {}

http {
    %%LOG_FORMAT%%
    access_log %%TESTDIR%%/logs/access.log engine;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=10ms;
        llm_check_answer on;

%%ROUTES%%
        location = /v1/messages {
            llm_route messages;
            llm_target /_llm/ok;
            llm_fallback /_llm/anth;
        }

        location /_llm/ {
            internal;
            default_type application/json;

            location = /_llm/ok {
                internal;
                return 200 '%%OK%%';
            }

            location = /_llm/anth {
                internal;
                return 200 '{"id":"msg_1","type":"message","role":"assistant","model":"claude-3-5-haiku","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":2}}';
            }
%%BAD%%
        }
    }
}
EOF

my $locations = '';
my $routes = '';

for my $name ('ok', sort keys %bad) {
    $routes .= "        location = /$name/v1/chat/completions {\n"
        . "            llm_route $name;\n"
        . "            llm_target /_llm/$name;\n"
        . "            llm_fallback /_llm/ok;\n"
        . "        }\n\n";
}

for my $name (sort keys %bad) {
    my $body = conf_string($bad{$name});
    $locations .= "            location = /_llm/$name {\n"
        . "                internal;\n"
        . "                return 200 '$body';\n"
        . "            }\n";
}

my $lf = log_format_conf();
$conf =~ s/%%LOG_FORMAT%%/$lf/;
$conf =~ s/%%BAD%%/$locations/;
$conf =~ s/%%ROUTES%%/$routes/;
$t->write_file_expand('nginx.conf', $conf);
$t->run;

my $port = $t->port(8080);

my $REQ = '{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user",'
    . '"content":"the end"}]}';

sub post {
    my ($uri) = @_;
    return parse_response(http_post($uri, $REQ, port => $port,
                                    timeout => 20));
}

{
    my $r = post('/ok/v1/chat/completions?id=ok');
    is($r->{status}, 200, 'a good answer: status');
    is($r->{body}, $ok, 'a good answer: passed on unchanged');
    is($r->{headers}{'content-length'}, length $ok,
       'a good answer: Content-Length');
    is(log_entry($t, 'ok')->{errors}, '-', 'a good answer: no error');
}

for my $name (sort keys %bad) {
    my $r = post("/$name/v1/chat/completions?id=$name");
    is($r->{status}, 200, "$name: status");
    is($r->{body}, $ok, "$name: the fallback's answer");
    my $e = log_entry($t, $name);
    is($e->{errors}, 'invalid_response, -', "$name: attempt errors");
    is($e->{decision}, 'fallback', "$name: decision");
}

{
    my $r = post('/v1/messages?id=msg');
    like($r->{body}, qr/^\{"id":"msg_1","type":"message"/,
         'a chat answer on messages: the Anthropic fallback\'s');
    is(log_entry($t, 'msg')->{errors}, 'invalid_response, -',
       'a chat answer on messages: attempt errors');
}

done_testing();
