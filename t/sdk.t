#!/usr/bin/perl

# The official SDKs as clients (issue 11): the Node packages openai and
# @anthropic-ai/sdk, pinned in t/sdk/package-lock.json and installed there
# with "npm ci" when missing or when the lock changed, drive chat
# completions, Responses and Anthropic messages routes (t/sdk/run.mjs).
# The SDKs keep their default maxRetries (2) and a dummy API key, a canary
# no log may carry.  Covers, for each family: a completion; a stream read
# to the end, with create({ stream: true }) and with the SDK's streaming
# helper, the text as the mock sent it; a 429 retried on the target and a
# 529 fallen back to the next, one success for the SDK and three attempts
# at the mock; a 429 and a 529 final after spent retries: the SDK raises
# its API error with the status and makes exactly one HTTP call (counted
# in the gateway's access log), because the gateway says
# x-should-retry: false (a route that retries nothing adds no such
# header, and there the same SDK makes three calls: the count can fail);
# a stream cut between events and one cut inside an event (in the middle
# of a data line's JSON), the provider then resetting: the SDK raises its
# API error (Responses: yields the error event), also through the chat and
# messages streaming helpers, never a JSON parse error, never a hang.
# Skipped when node or npm is missing, or when npm ci cannot reach the
# registry.  Node 18 (Debian 12's) runs the pinned versions.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine qw(action_response completion_body);

use Digest::MD5 qw(md5_hex);
use Fcntl qw(:flock);
use JSON::PP ();

our $TODO;

my $SDK = "$Test::LLM::REPO/t/sdk";
my $JSON = JSON::PP->new->canonical;
my $NODE = '';

###############################################################################
# the SDKs, installed from the lock

sub in_path {
    my ($name) = @_;
    return grep { -x "$_/$name" } split /:/, $ENV{PATH} || '';
}

# undef when the SDKs are ready, else [ skip => reason ] or [ fail => text ]
sub sdk_ready {
    for my $cmd (qw(node npm)) {
        return [ skip => "$cmd not found (apt-get install nodejs npm)" ]
            unless in_path($cmd);
    }

    my (undef, $v) = Test::LLM::_capture(10, 'node', '-p',
                                         'process.versions.node');
    ($NODE) = ($v // '') =~ /^(\S+)/;
    my ($major) = ($v // '') =~ /^(\d+)\./;
    return [ skip => "node $v: the pinned SDKs need node 18 or newer" ]
        unless $major && $major >= 18;

    # one npm ci at a time in t/sdk, and none while another test file
    # runs the SDKs (the shared lock below is kept to the end)
    open my $lock, '<', "$SDK/package-lock.json"
        or return [ fail => "t/sdk/package-lock.json: $!" ];
    flock($lock, LOCK_EX) or return [ fail => "flock: $!" ];
    our $LOCK = $lock;

    my $want = md5_hex(slurp("$SDK/package.json"),
                       slurp("$SDK/package-lock.json"));
    my $stamp = "$SDK/node_modules/.llm-sdk-stamp";

    if (slurp($stamp) ne $want
        || !-f "$SDK/node_modules/openai/package.json"
        || !-f "$SDK/node_modules/\@anthropic-ai/sdk/package.json")
    {
        my ($status, $out) = Test::LLM::_capture(300, 'sh', '-c',
            'cd "$1" && exec npm ci --no-audit --no-fund --loglevel=error'
            . ' --fetch-retries=1 --fetch-timeout=30000'
            . ' --fetch-retry-mintimeout=2000', 'sh', $SDK);

        if ($status != 0) {
            my $net = qr/\b(?:ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET
                           |ETIMEDOUT|ENETUNREACH|EHOSTUNREACH
                           |ERR_SOCKET_TIMEOUT)\b/x;
            my @lines = split /\n/, $out;
            my ($why) = (grep({ /failed, reason:/ } @lines),
                         grep({ $_ =~ $net } @lines));

            if ($status == -1 || defined $why
                || $out =~ /^npm (?:ERR!|error) network /m)
            {
                $why //= 'npm ci did not finish in 300 s';
                $why =~ s/^npm (?:ERR!|error) //;
                # a registry URL may carry credentials
                $why =~ s{//[^/\s\@]+\@}{//}g;
                return [ skip => "npm ci could not reach the registry: $why" ];
            }

            return [ fail => "npm ci in t/sdk failed:\n$out" ];
        }

        open my $fh, '>', $stamp or return [ fail => "$stamp: $!" ];
        print $fh $want;
        close $fh;
    }

    flock($lock, LOCK_SH);
    return undef;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    return scalar <$fh>;
}

my $ready = sdk_ready();

plan(skip_all => $ready->[1]) if $ready && $ready->[0] eq 'skip';

if ($ready) {
    fail('the SDKs are installed');
    diag($ready->[1]);
    done_testing;
    exit;
}

###############################################################################
# gateway

my $t = Test::LLM->new;

my $KEY = 'sk-sdk-canary-' . md5_hex(rand . $$);
$t->canary($KEY);

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    log_format sdk '$http_x_test_id|$status|$llm_attempts|'
                   '$llm_attempt_targets|$llm_attempt_statuses|'
                   '$llm_retry_decision|$sent_http_x_should_retry|'
                   '$http_x_stainless_retry_count';
    access_log %%TESTDIR%%/logs/access.log sdk;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=50ms;

        # retries: two tries on a, then b
        location = /main/v1/chat/completions {
            llm_route main_chat;
            llm_target /_llm/a/chat tries=2;
            llm_fallback /_llm/b/chat;
        }

        location = /main/v1/responses {
            llm_route main_responses;
            llm_target /_llm/a/responses tries=2;
            llm_fallback /_llm/b/responses;
        }

        location = /main/v1/messages {
            llm_route main_messages;
            llm_target /_llm/a/messages tries=2;
            llm_fallback /_llm/b/messages;
        }

        # no second attempt: transparent, no x-should-retry
        location = /plain/v1/chat/completions {
            llm_route plain_chat;
            llm_target /_llm/a/chat;
        }

        location = /plain/v1/responses {
            llm_route plain_responses;
            llm_target /_llm/a/responses;
        }

        location = /plain/v1/messages {
            llm_route plain_messages;
            llm_target /_llm/a/messages;
        }

        location ~ ^/_llm/(a|b)/(\w+)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/$2;
            proxy_read_timeout 5s;
            proxy_set_header X-Attempt $llm_attempts;
            # the gateway's credentials, never the client's
            proxy_set_header Authorization "Bearer sk-gateway";
            proxy_set_header x-api-key "sk-gateway";
        }
    }
}
EOF

###############################################################################
# the mock provider: X-Case as in Test::LLM::Engine, plus answers in the
# family's own shape ("ok", streamed when the request asks) and cut streams
# ("cutb": reset between events, "cut": reset in the middle of an event)

my @DELTAS = ('Hel', 'lo, ', 'SDK', '!');
my $TEXT = join '', @DELTAS;

sub ev {
    my ($name, $data) = @_;
    my $json = $JSON->encode($data);
    return defined $name ? "event: $name\ndata: $json\n\n" : "data: $json\n\n";
}

sub chat_chunk {
    my ($delta, $finish) = @_;
    return ev(undef, { id => 'chatcmpl-sdk', object => 'chat.completion.chunk',
                       created => 1700000000, model => 'gpt-4o-mini',
                       choices => [ { index => 0, delta => $delta,
                                      finish_reason => $finish } ] });
}

my %RESPONSE = (
    id => 'resp_sdk', object => 'response', created_at => 1700000000,
    model => 'gpt-4o-mini', output => [], error => undef,
    incomplete_details => undef, instructions => undef, metadata => {},
    parallel_tool_calls => JSON::PP::true, temperature => 1, top_p => 1,
    tool_choice => 'auto', tools => [],
);

my %OUTPUT_TEXT = (type => 'output_text', text => $TEXT, annotations => []);

my %MESSAGE = (id => 'msg_sdk', type => 'message', status => 'completed',
               role => 'assistant', content => [ \%OUTPUT_TEXT ]);

my %ANSWER = (
    chat => completion_body(content => $TEXT),
    responses => $JSON->encode({ %RESPONSE, status => 'completed',
        output => [ \%MESSAGE ],
        usage => { input_tokens => 9, output_tokens => 3,
                   total_tokens => 12 } }),
    messages => $JSON->encode({ id => 'msg_sdk', type => 'message',
        role => 'assistant', model => 'claude-sonnet-4-5',
        content => [ { type => 'text', text => $TEXT } ],
        stop_reason => 'end_turn', stop_sequence => undef,
        usage => { input_tokens => 9, output_tokens => 3 } }),
);

my $seq = 0;
sub rev {
    my ($type, %e) = @_;
    return ev($type, { type => $type, sequence_number => $seq++, %e });
}

my %STREAM = (
    chat => [
        chat_chunk({ role => 'assistant', content => '' }, undef),
        (map { chat_chunk({ content => $_ }, undef) } @DELTAS),
        chat_chunk({}, 'stop'),
        "data: [DONE]\n\n",
    ],
    responses => [
        rev('response.created',
            response => { %RESPONSE, status => 'in_progress' }),
        rev('response.output_item.added', output_index => 0,
            item => { %MESSAGE, status => 'in_progress', content => [] }),
        rev('response.content_part.added', item_id => 'msg_sdk',
            output_index => 0, content_index => 0,
            part => { %OUTPUT_TEXT, text => '' }),
        (map { rev('response.output_text.delta', item_id => 'msg_sdk',
                   output_index => 0, content_index => 0, delta => $_,
                   logprobs => []) } @DELTAS),
        rev('response.output_text.done', item_id => 'msg_sdk',
            output_index => 0, content_index => 0, text => $TEXT,
            logprobs => []),
        rev('response.content_part.done', item_id => 'msg_sdk',
            output_index => 0, content_index => 0, part => \%OUTPUT_TEXT),
        rev('response.output_item.done', output_index => 0,
            item => \%MESSAGE),
        rev('response.completed',
            response => { %RESPONSE, status => 'completed',
                          output => [ \%MESSAGE ],
                          usage => { input_tokens => 9, output_tokens => 3,
                                     total_tokens => 12 } }),
    ],
    messages => [
        ev('message_start', { type => 'message_start', message => {
            id => 'msg_sdk', type => 'message', role => 'assistant',
            model => 'claude-sonnet-4-5', content => [],
            stop_reason => undef, stop_sequence => undef,
            usage => { input_tokens => 9, output_tokens => 1 } } }),
        ev('content_block_start', { type => 'content_block_start',
            index => 0, content_block => { type => 'text', text => '' } }),
        ev('ping', { type => 'ping' }),
        (map { ev('content_block_delta', { type => 'content_block_delta',
                  index => 0, delta => { type => 'text_delta',
                                         text => $_ } }) } @DELTAS),
        ev('content_block_stop', { type => 'content_block_stop',
                                   index => 0 }),
        ev('message_delta', { type => 'message_delta',
            delta => { stop_reason => 'end_turn', stop_sequence => undef },
            usage => { output_tokens => 3 } }),
        ev('message_stop', { type => 'message_stop' }),
    ],
);

# whole events before a cut: the first two deltas ("Hello, ") got through
my %CUT_AT = (chat => 3, responses => 5, messages => 5);

sub provider {
    my ($req, $conn) = @_;

    my ($family) = $req->{path} =~ m{^/[ab]/(\w+)$};
    my $n = $req->{headers}{'x-attempt'} // '';
    my %plan;

    for my $step (split /;/, $req->{headers}{'x-case'} // '') {
        my ($k, $v) = split /:/, $step, 2;
        $plan{$k} = $v if defined $v;
    }

    my $action = $plan{$n} // $plan{'*'} // 'ok';
    my $stream = eval { $JSON->decode($req->{body})->{stream} };

    if ($action eq 'ok' && !$stream) {
        return { status => 200, body => $ANSWER{$family},
                 headers => [ 'Content-Type' => 'application/json' ] };
    }

    if ($action !~ /^(?:ok|cutb?)$/) {
        return action_response($action, $req, $conn);
    }

    my @events = @{$STREAM{$family}};

    $conn->send_head(200, [ 'Content-Type' => 'text/event-stream',
                            'Transfer-Encoding' => 'chunked' ]) or return;

    if ($action eq 'ok') {
        $conn->send_chunk($_) or return for @events;
        $conn->end_chunks;
        return $conn->close;
    }

    my $at = $CUT_AT{$family};
    $conn->send_chunk($_) or return for @events[0 .. $at - 1];

    if ($action eq 'cut') {
        # the next event up to the middle of its data line's JSON
        my $e = $events[$at];
        my $mid = index($e, 'data: ') + 6
                  + int((length($e) - index($e, 'data: ') - 6) / 2);
        $conn->send_chunk(substr($e, 0, $mid));
    }

    # let the gateway see the bytes before the reset
    select(undef, undef, undef, 0.1);
    return $conn->reset;
}

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => \&provider);
$t->run;

###############################################################################
# the calls

my %FAIL = (
    chat      => { 429 => 'rl', 529 => '529' },
    responses => { 429 => 'rl', 529 => '529' },
    messages  => { 429 => 'anth_rl', 529 => 'anth_ovl' },
);

my @calls;

sub add {
    my (%c) = @_;
    $c{prefix} //= '/main';
    $c{case} //= '*:ok';
    $c{timeout_ms} //= 8000;
    push @calls, \%c;
}

for my $api (qw(chat responses messages)) {
    my ($rl, $ovl) = @{$FAIL{$api}}{429, 529};

    add(id => "$api-plain", api => $api, mode => 'plain');
    add(id => "$api-stream", api => $api, mode => 'stream');
    add(id => "$api-helper", api => $api, mode => 'helper');
    for my $mode (qw(plain stream)) {
        add(id => "$api-retry-$mode", api => $api, mode => $mode,
            case => "1:$rl;2:$ovl;*:ok");
    }
    # retry-after-ms: an SDK that retried would not wait long
    for my $status (429, 529) {
        add(id => "$api-final-$status", api => $api, mode => 'plain',
            case => '*:' . $FAIL{$api}{$status} . '+ram=10');
    }
    add(id => "$api-transparent", api => $api, mode => 'plain',
        prefix => '/plain', case => "*:$rl+ram=10");
    add(id => "$api-cut-between", api => $api, mode => 'stream',
        case => '*:cutb');
    add(id => "$api-cut-inside", api => $api, mode => 'stream',
        case => '*:cut');
    # (the Responses helper returns what it gathered, whatever the error)
    add(id => "$api-cut-helper", api => $api, mode => 'helper',
        case => '*:cut') if $api ne 'responses';
}

$t->write_file('sdk-plan.json', $JSON->encode({
    gateway => 'http://127.0.0.1:' . $t->port(8080),
    key => $KEY,
    calls => \@calls,
}));

my ($status, $out) = Test::LLM::_capture(30 + 10 * @calls, 'node',
    "$SDK/run.mjs", $t->testdir . '/sdk-plan.json',
    $t->testdir . '/sdk-results.jsonl');

is($status, 0, 'the SDK runner ran') or diag($out);

note(sprintf 'node %s, openai %s, @anthropic-ai/sdk %s', $NODE,
     map { $JSON->decode(slurp("$SDK/node_modules/$_/package.json"))
               ->{version} } 'openai', '@anthropic-ai/sdk');

my %res = map { my $r = $JSON->decode($_); ($r->{id} => $r) }
          grep { /\S/ } split /\n/, $t->read_file('sdk-results.jsonl');

is(scalar keys %res, scalar @calls, 'a result for every call')
    or diag($out);

# the gateway's access log lines of each call (one per HTTP request of the
# SDK), and what the mock got: "a/1 a/2 b/3" (target/attempt); read once,
# when the last call's line is there
$t->wait_for_log('logs/access.log', qr/^\Q$calls[-1]{id}\E\|/, 5);

my (%gateway, %mock);

for my $line (split /\n/, $t->read_file('logs/access.log')) {
    my @f = split /\|/, $line, -1;
    push @{$gateway{$f[0]}}, {
        status => $f[1], attempts => $f[2], targets => $f[3],
        statuses => $f[4], decision => $f[5], should_retry => $f[6],
        sdk_retry => $f[7] };
}

for my $m (@{$t->mock_requests('provider')}) {
    my $id = $m->{headers}{'x-test-id'} // '';
    push @{$mock{$id}}, ($m->{path} =~ m{^/(\w)/})[0] . '/'
                        . ($m->{headers}{'x-attempt'} // '-');
}

sub gateway_lines { $gateway{$_[0]} // [] }
sub mock_attempts { join ' ', @{$mock{$_[0]} // []} }

sub show {
    my ($r) = @_;
    return $JSON->encode($r // {});
}

for my $api (qw(chat responses messages)) {
    my $r;

    # a completion, a stream, the streaming helper

    for my $mode (qw(plain stream helper)) {
        $r = $res{"$api-$mode"};
        ok($r && $r->{ok}, "$api $mode: success") or diag(show($r));
        is($r->{text}, $TEXT, "$api $mode: the text as the mock sent it");
        is($r->{max_retries}, 2, "$api $mode: the SDK's maxRetries is 2");
        is(scalar @{gateway_lines("$api-$mode")}, 1,
           "$api $mode: one HTTP call");
    }

    my %last = (chat => 'finish:stop', responses => 'response.completed',
                messages => 'message_stop');
    is($res{"$api-stream"}{events}[-1], $last{$api},
       "$api stream: read to its last event");

    # a 429 retried, a 529 fallen back

    for my $mode (qw(plain stream)) {
        my $id = "$api-retry-$mode";
        $r = $res{$id};
        my $g = gateway_lines($id);

        ok($r && $r->{ok}, "$api retry $mode: one success for the SDK")
            or diag(show($r));
        is($r->{text}, $TEXT, "$api retry $mode: the text");
        is(scalar @$g, 1, "$api retry $mode: one HTTP call");
        is($g->[0]{statuses}, '429, 529, 200',
           "$api retry $mode: 429, 529, then 200 at the gateway");
        is(mock_attempts($id), 'a/1 a/2 b/3',
           "$api retry $mode: a retried, then b, at the mock");
    }

    # a final failure after spent retries: one HTTP call

    for my $status (429, 529) {
        my $id = "$api-final-$status";
        $r = $res{$id};
        my $g = gateway_lines($id);
        my $e = $r->{error} // {};

        ok($e->{api_error}, "$api final $status: the SDK's API error")
            or diag(show($r));
        is($e->{status}, $status, "$api final $status: with the status");
        is(scalar @$g, 1, "$api final $status: exactly one HTTP call")
            or diag(show($g));
        is($g->[0]{should_retry}, 'false',
           "$api final $status: x-should-retry: false");
        is(mock_attempts($id), 'a/1 a/2 b/3',
           "$api final $status: the gateway's three attempts");
    }

    # the same SDK retries an answer that does not say otherwise: the count
    # above would see it

    {
        my $id = "$api-transparent";
        $r = $res{$id};
        my $g = gateway_lines($id);

        is($r->{error}{status}, 429, "$api transparent: the 429")
            or diag(show($r));
        is(scalar @$g, 3, "$api transparent: the SDK's own retries counted")
            or diag(show($g));
        is(join(',', map { $_->{should_retry} } @$g), '-,-,-',
           "$api transparent: no x-should-retry");
        is(mock_attempts($id), 'a/1 a/1 a/1',
           "$api transparent: one attempt per call");
    }

    # cut streams: the SDK's API error (Responses: the error event), no
    # JSON parse error, no hang

    for my $where (qw(between inside)) {
        my $id = "$api-cut-$where";
        $r = $res{$id};
        my $e = $r->{error};

        ok(!$r->{timed_out}, "$api cut $where: no hang") or diag(show($r));
        is($r->{text}, 'Hello, ', "$api cut $where: the text before the cut");
        is(scalar @{gateway_lines($id)}, 1, "$api cut $where: one HTTP call");
        is(mock_attempts($id), 'a/1', "$api cut $where: not retried");

        ok(!($e && $e->{syntax}), "$api cut $where: no JSON parse error")
            or diag(show($r));

        if ($api eq 'responses') {
            ok(($e && $e->{api_error})
               || (!$e && ($r->{events}[-1] // '') eq
                   'error:stream_interrupted'),
               "$api cut $where: the error event")
                or diag(show($r));
        } else {
            ok($e && $e->{api_error}, "$api cut $where: the SDK's API error")
                or diag(show($r));
        }
    }

    next if $api eq 'responses';

    {
        my $id = "$api-cut-helper";
        $r = $res{$id};
        my $e = $r->{error};

        ok(!$r->{timed_out}, "$api cut helper: no hang") or diag(show($r));
        is(mock_attempts($id), 'a/1', "$api cut helper: one attempt");

        ok($e && $e->{api_error} && !$e->{syntax},
           "$api cut helper: the SDK's API error, no JSON parse error")
            or diag(show($r));
    }
}

done_testing;
