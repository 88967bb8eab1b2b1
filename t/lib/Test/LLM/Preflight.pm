package Test::LLM::Preflight;

# Shared pieces of the llm-preflight tests (t/preflight*.t): the command
# run with its stdout, stderr and exit status apart, bounded in time;
# a mock provider of the three endpoint families (whole answers and
# streams), scripted per request; a gateway config whose JSON access log
# is conf.example's llm_json.
#
# The command is build/<dir of TEST_LLM_MODULE>/llm-preflight, or
# TEST_LLM_PREFLIGHT.
#
# Scripting: the client sends (with --header)
#
#     X-Case: happy:ACTION;error:ACTION
#
# the mock answers the happy request (any model) and the error request
# (a model "preflight-invalid-model-...") with its action; defaults
# happy:ok and error:notfound.  Actions:
#
#     ok         the family's answer, a stream when the request asks
#     notfound   404 in the family's error shape (model_not_found)
#     500        500 in the family's error shape
#     html400    400 with an HTML body: no error object
#     noshape    200 {"ok":true}
#     nousage    the family's answer without usage
#     cut        a stream without its end event
#     json       a whole JSON answer even when a stream was asked for
#     echokey    400 whose message quotes the request's key headers
#     huge       the family's answer with 5 MB of text
#     stall      nothing for 30 s

use strict;
use warnings;

use base qw(Exporter);

our @EXPORT = qw(
    preflight family_handler gateway_conf catalog_json $PREFLIGHT
);

use File::Basename qw(dirname);
use JSON::PP ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

use Test::LLM ();
use Test::LLM::Mock ();

our $PREFLIGHT = $ENV{TEST_LLM_PREFLIGHT}
    || dirname($Test::LLM::MODULE) . '/llm-preflight';

my $JSON = JSON::PP->new->canonical->utf8;
my $RUNS = 0;


###############################################################################
# the command

# preflight($t, [ args ], env => { ... }, timeout => S, wrap => [ ... ])
# returns { rc, out, err, secs, record (stdout as JSON when it parses) };
# stdout and stderr are kept under logs/, so the harness scans them for
# canaries too
sub preflight {
    my ($t, $args, %o) = @_;

    my $n = ++$RUNS;
    my $dir = $t->testdir;
    my $out = "$dir/logs/preflight.$n.out";
    my $err = "$dir/logs/preflight.$n.err";
    my $timeout = $o{timeout} || 60;

    my $start = time;
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out or POSIX::_exit(126);
        open STDERR, '>', $err or POSIX::_exit(126);
        delete $ENV{$_} for qw(OPENAI_API_KEY ANTHROPIC_API_KEY http_proxy
                               https_proxy HTTP_PROXY HTTPS_PROXY all_proxy
                               ALL_PROXY);
        $ENV{$_} = $o{env}{$_} for keys %{$o{env} || {}};
        { exec @{$o{wrap} || []}, $PREFLIGHT, @$args; }
        POSIX::_exit(127);
    }

    my $rc;
    while (1) {
        if (waitpid($pid, WNOHANG) == $pid) {
            $rc = $? >> 8;
            $rc = -1 if $? & 127;
            last;
        }
        if (time - $start > $timeout) {
            kill 'KILL', $pid;
            waitpid($pid, 0);
            $rc = -2;
            last;
        }
        sleep 0.02;
    }

    my %r = (rc => $rc, secs => time - $start,
             out => _slurp($out), err => _slurp($err));
    $r{record} = eval { $JSON->decode($r{out}) };

    return \%r;
}

sub _slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    my $s = <$fh>;
    return $s // '';
}


###############################################################################
# the mock provider

sub catalog_json {
    my (@ids) = @_;
    return $JSON->encode({ object => 'list', data => [
        map { { id => $_, object => 'model', created => 1, owned_by => 'x' } }
        @ids ] });
}

sub _family {
    my ($path) = @_;
    return 'responses' if $path =~ m{/responses$};
    return 'messages' if $path =~ m{/messages$};
    return 'chat';
}

sub _error {
    my ($family, $status, $type, $code, $message) = @_;
    my $body = $family eq 'messages'
        ? { type => 'error', error => { type => $type, message => $message } }
        : { error => { message => $message, type => $type, param => undef,
                       code => $code } };
    return { status => $status,
             headers => [ 'Content-Type' => 'application/json' ],
             body => $JSON->encode($body) };
}

sub _whole {
    my ($family, $model, %o) = @_;
    my $usage = !$o{nousage};
    my $b;

    if ($family eq 'chat') {
        $b = { id => 'chatcmpl-pf', object => 'chat.completion',
               created => 1700000000, model => $model,
               choices => [ { index => 0, finish_reason => 'stop',
                              message => { role => 'assistant',
                                           content => 'ok' } } ],
               ($usage ? (usage => { prompt_tokens => 12,
                                     completion_tokens => 1,
                                     total_tokens => 13 }) : ()) };

    } elsif ($family eq 'responses') {
        $b = { id => 'resp_pf', object => 'response', created_at => 1,
               status => 'completed', model => $model,
               output => [ { type => 'message', id => 'msg_pf',
                             status => 'completed', role => 'assistant',
                             content => [ { type => 'output_text',
                                            text => 'ok',
                                            annotations => [] } ] } ],
               ($usage ? (usage => { input_tokens => 12,
                                     output_tokens => 1,
                                     total_tokens => 13 }) : ()) };

    } else {
        $b = { id => 'msg_pf', type => 'message', role => 'assistant',
               model => $model, stop_reason => 'end_turn',
               content => [ { type => 'text', text => 'ok' } ],
               ($usage ? (usage => { input_tokens => 12,
                                     output_tokens => 1 }) : ()) };
    }

    return { status => 200,
             headers => [ 'Content-Type' => 'application/json' ],
             body => $JSON->encode($b) };
}

# the events of a stream, as [ data, event => name ] pairs
sub _events {
    my ($family, $model, %o) = @_;
    my $usage = !$o{nousage};
    my @e;

    if ($family eq 'chat') {
        my %c = (id => 'chatcmpl-pf', object => 'chat.completion.chunk',
                 created => 1700000000, model => $model);
        push @e, [ $JSON->encode({ %c, choices => [ { index => 0,
            delta => { role => 'assistant', content => '' } } ] }) ];
        push @e, [ $JSON->encode({ %c, choices => [ { index => 0,
            delta => { content => 'ok' } } ] }) ];
        push @e, [ $JSON->encode({ %c, choices => [ { index => 0,
            delta => {}, finish_reason => 'stop' } ] }) ];
        push @e, [ $JSON->encode({ %c, choices => [],
            usage => { prompt_tokens => 12, completion_tokens => 1,
                       total_tokens => 13 } }) ] if $usage;
        push @e, [ '[DONE]' ] unless $o{cut};

    } elsif ($family eq 'responses') {
        my %r = (id => 'resp_pf', object => 'response', model => $model);
        push @e, [ $JSON->encode({ type => 'response.created',
            response => { %r, status => 'in_progress', output => [] } }),
            event => 'response.created' ];
        push @e, [ $JSON->encode({ type => 'response.output_text.delta',
            item_id => 'msg_pf', output_index => 0, content_index => 0,
            delta => 'ok' }), event => 'response.output_text.delta' ];
        push @e, [ $JSON->encode({ type => 'response.completed',
            response => { %r, status => 'completed', output => [],
                ($usage ? (usage => { input_tokens => 12,
                                      output_tokens => 1,
                                      total_tokens => 13 }) : ()) } }),
            event => 'response.completed' ] unless $o{cut};

    } else {
        push @e, [ $JSON->encode({ type => 'message_start',
            message => { id => 'msg_pf', type => 'message',
                         role => 'assistant', model => $model,
                         content => [],
                         usage => { input_tokens => 12,
                                    output_tokens => 0 } } }),
            event => 'message_start' ];
        push @e, [ $JSON->encode({ type => 'content_block_start',
            index => 0, content_block => { type => 'text', text => '' } }),
            event => 'content_block_start' ];
        push @e, [ $JSON->encode({ type => 'content_block_delta',
            index => 0, delta => { type => 'text_delta', text => 'ok' } }),
            event => 'content_block_delta' ];
        push @e, [ $JSON->encode({ type => 'content_block_stop',
            index => 0 }), event => 'content_block_stop' ];
        push @e, [ $JSON->encode({ type => 'message_delta',
            delta => { stop_reason => 'end_turn' },
            ($usage ? (usage => { output_tokens => 1 }) : ()) }),
            event => 'message_delta' ];
        push @e, [ $JSON->encode({ type => 'message_stop' }),
            event => 'message_stop' ] unless $o{cut};
    }

    return @e;
}

sub family_handler {
    my ($req, $conn) = @_;

    # Anthropic's model list, in two pages
    if ($req->{path} =~ m{/v1/models$}) {
        my $after = ($req->{query} // '') =~ /after_id=([^&]+)/ ? $1 : '';
        my @ids = $after eq '' ? ('claude-a', 'claude-b')
                : $after eq 'claude-b' ? ('claude-c') : ();
        return { status => 200,
                 headers => [ 'Content-Type' => 'application/json' ],
                 body => $JSON->encode({
                     data => [ map { { type => 'model', id => $_,
                                       display_name => uc $_ } } @ids ],
                     has_more => $after eq ''
                                 ? JSON::PP::true : JSON::PP::false,
                     first_id => $ids[0], last_id => $ids[-1] }) };
    }

    my $family = _family($req->{path});
    my $body = eval { $JSON->decode($req->{body}) } || {};
    my $model = $body->{model} // '';
    my $which = $model =~ /^preflight-invalid-model-/ ? 'error' : 'happy';

    my %case = (happy => 'ok', error => 'notfound');
    for (split /;/, $req->{headers}{'x-case'} // '') {
        my ($k, $v) = split /:/, $_, 2;
        $case{$k} = $v if defined $v;
    }

    my $action = $case{$which};

    if ($action eq 'notfound') {
        return _error($family, 404,
                      $family eq 'messages' ? 'not_found_error'
                                            : 'invalid_request_error',
                      'model_not_found',
                      "The model `$model` does not exist");
    }

    return _error($family, 500, $family eq 'messages' ? 'api_error'
                                                      : 'server_error',
                  undef, 'The server had an error')
        if $action eq '500';

    return { status => 400, headers => [ 'Content-Type' => 'text/html' ],
             body => "<html><body>bad request</body></html>\n" }
        if $action eq 'html400';

    return { status => 200,
             headers => [ 'Content-Type' => 'application/json' ],
             body => '{"ok":true}' }
        if $action eq 'noshape';

    if ($action eq 'echokey') {
        my $h = $req->{headers};
        return _error($family, 400, 'invalid_request_error',
                      'invalid_api_key',
                      'Incorrect API key provided: '
                      . ($h->{authorization} // $h->{'x-api-key'} // '-'));
    }

    if ($action eq 'stall') {
        $conn->stall(30);
        return;
    }

    if ($action eq 'huge') {
        my $r = _whole($family, $model);
        $r->{body} =~ s/"ok"/'"' . ('x' x (5 * 1024 * 1024)) . '"'/e;
        return $r;
    }

    my %o = (nousage => $action eq 'nousage', cut => $action eq 'cut');

    if ($body->{stream} && $action ne 'json') {
        $conn->sse(events => [ _events($family, $model, %o) ]);
        return;
    }

    return _whole($family, $model, %o);
}


###############################################################################
# the gateway

# conf.example's maps and llm_json, and "lean": llm_json without
# llm.retry_decision
sub _example_format {
    my $file = "$Test::LLM::REPO/conf.example";
    open my $fh, '<', $file or die "can't read $file: $!\n";
    my $text = do { local $/; <$fh> };
    close $fh;

    my @maps = $text =~ /^\s*(map\s+\$(?:llm_family|http_x_request_id)\s+
                              \$\w+\s*\{(?:"[^"]*"|[^"}])*\})/mgx;
    my ($format) = $text
        =~ /^\s*(log_format\s+llm_json\s+escape=json(?:\s+'[^']*')+\s*;)/m;
    die "no llm_json in conf.example\n" unless $format;

    (my $lean = $format) =~ s/llm_json/lean/;
    $lean =~ s/\s*'"llm\.retry_decision":"\$llm_retry_decision",'//;

    return join("\n    ", @maps, $format, $lean);
}

# the gateway: bases /g (targets with a catalog: the gateway refuses an
# unknown model itself), /p (no catalog on the targets: the provider's
# own 404 passes), /lean (a log format without llm.retry_decision),
# /nohdr (no llm_response_headers), /ready/{primary,fallback,broken}
# (readiness paths); the provider on PORT_8081, nothing on PORT_8082
sub gateway_conf {
    my ($t) = @_;

    $t->write_file('cat.json', catalog_json('gpt-4o-mini',
        'claude-3-5-haiku-20241022', 'gpt-candidate'));

    my $conf = <<'EOF';
events {}

http {
    llm_zone llm:1m;
    llm_catalog cat cat.json;

    %%FORMATS%%

    llm_backoff base=1ms max=5ms;
    llm_cooldown off;
    llm_response_headers on;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        access_log %%TESTDIR%%/logs/llm.json.log llm_json;

        location ~ ^/(g|p|lean|nohdr)/v1/models$ {
            llm_models cat;
        }

        location = /g/v1/chat/completions {
            llm_route g-chat;
            llm_target /_llm/chat catalog=cat;
        }

        location = /g/v1/responses {
            llm_route g-responses;
            llm_target /_llm/responses catalog=cat;
        }

        location = /g/v1/messages {
            llm_route g-messages;
            llm_target /_llm/messages catalog=cat;
        }

        location = /p/v1/chat/completions {
            llm_route p-chat;
            llm_target /_llm/chat tries=2;
            llm_fallback /_llm/chat;
        }

        location = /p/v1/messages {
            llm_route p-messages;
            llm_target /_llm/messages tries=2;
        }

        location = /lean/v1/chat/completions {
            llm_route lean;
            llm_target /_llm/chat catalog=cat;
            access_log %%TESTDIR%%/logs/lean.json.log lean;
        }

        location = /nohdr/v1/chat/completions {
            llm_route nohdr;
            llm_target /_llm/chat catalog=cat;
            llm_response_headers off;
        }

        location = /ready/primary/v1/chat/completions {
            llm_route ready-primary;
            llm_target /_llm/chat;
        }

        location = /ready/fallback/v1/chat/completions {
            llm_route ready-fallback;
            llm_target /_llm/chat;
        }

        location = /ready/broken/v1/chat/completions {
            llm_route ready-broken;
            llm_target /_llm/broken;
        }

        location /_llm/chat {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/chat/completions;
        }

        location /_llm/responses {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/responses;
        }

        location /_llm/messages {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/v1/messages;
        }

        location /_llm/broken {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8082%%/v1/chat/completions;
        }
    }
}
EOF

    my $formats = _example_format();
    $conf =~ s/%%FORMATS%%/$formats/;

    return $conf;
}

1;
