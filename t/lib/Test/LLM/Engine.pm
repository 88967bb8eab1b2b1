package Test::LLM::Engine;

# Shared pieces of the attempt engine tests (t/engine_*.t): a scripted
# mock provider, the provider answers it knows, an access log format with
# every engine variable and its parser.
#
# Scripting: a target location sets
#
#     proxy_set_header X-Attempt $llm_attempts;
#
# (evaluated in the attempt subrequest: 1 for the first attempt of a
# client request, 2 for the second, ...) and the client sends
#
#     X-Case: 1:500;2:rl+ra=1;*:ok
#
# the mock answers attempt N with the action listed for N, else the one
# for "*", else "ok".  An action is a kind and modifiers joined by "+":
#
#     ok             200 chat.completion (size=: its content that long)
#     rl             429 OpenAI rate_limit_exceeded
#     anth_rl        429 Anthropic rate_limit_error
#     quota          429 OpenAI insufficient_quota
#     402            402 payment required
#     529            529 with a body that names nothing
#     anth_ovl       529 Anthropic overloaded_error
#     anth_ovl500    500 Anthropic overloaded_error (the body decides)
#     503            503 HTML from a load balancer
#     500            500 OpenAI server_error
#     502, 504       502 / 504 HTML from a proxy in front of the provider
#     ctx            400 OpenAI context_length_exceeded
#     anth_ctx       400 Anthropic "prompt is too long"
#     401            401 OpenAI invalid_api_key
#     403            403 Anthropic permission_error
#     404            404 OpenAI model_not_found
#     422            422 unprocessable entity
#     filter         400 Azure content_filter
#     big            500 OpenAI server_error of size= bytes (default 4 MB)
#     reset          the request is read, then the connection reset
#     stall          the request is read, then nothing for stall= seconds
#     garbage        the request is read, then bytes that are no HTTP
#                    status line, and the connection closed
#     cut            500 OpenAI server_error whose body breaks off in the
#                    middle (a larger Content-Length, then a close)
#
# modifiers: ra=SECONDS (Retry-After), radate=SECONDS (Retry-After as an
# HTTP-date that many seconds from now), ram=MS (retry-after-ms),
# delay=SECONDS (before the status line), size=BYTES (big), stall=SECONDS,
# hdr=NAME:VALUE (an extra header), status=NNN (another status, same body),
# chunked=1 (answer chunked).
#
# Every answer carries X-Mock-Attempt (the X-Attempt it saw) and
# X-Mock-Path, so a test sees which attempt and target produced it.
#
# The preamble of a test file: in the http{} block of its nginx.conf
#
#     %%ENGINE%%
#
# stands for the access log format below (logs/access.log, read with
# log_entry), the attempt log format and the X-Attempt header; a target
# location with
#
#     %%ATTEMPT_LOG%%
#
# logs each attempt subrequest to logs/attempts.log (read with attempts:
# when it began and ended by nginx's clock, so timings do not depend on
# how fast the client or the mock were scheduled).  Then
#
#     my $port = engine_run($t, $conf, mocks => [ prov => 8081 ]);
#
# writes nginx.conf, starts a scripted mock per name and port and nginx.

use strict;
use warnings;

use base qw(Exporter);

our @EXPORT = qw(
    scripted action_response error_body completion log_format_conf
    log_entry mock_for completion_body engine_run attempts
);

use JSON::PP ();
use POSIX qw(strftime);
use Time::HiRes qw(time);

my $JSON = JSON::PP->new->canonical;

sub completion_body {
    my (%o) = @_;
    return $JSON->encode({
        id      => 'chatcmpl-engine',
        object  => 'chat.completion',
        created => 1700000000,
        model   => $o{model} || 'gpt-4o-mini',
        choices => [ { index => 0, finish_reason => 'stop',
                       message => { role => 'assistant',
                                    content => $o{content} // 'Hi!' } } ],
        usage   => { prompt_tokens => 9, completion_tokens => 3,
                     total_tokens => 12 },
    });
}

sub _openai {
    my ($message, $type, $code) = @_;
    return $JSON->encode({ error => { message => $message, type => $type,
                                      param => undef, code => $code } });
}

sub _anthropic {
    my ($type, $message) = @_;
    return $JSON->encode({ type => 'error',
                           error => { type => $type, message => $message } });
}

# kind => [ status, content type, body ]
my %KIND = (
    rl => [ 429, 'application/json', _openai(
        'Rate limit reached for gpt-4o-mini in organization org-x on '
        . 'requests per min (RPM): Limit 3, Used 3, Requested 1.',
        'requests', 'rate_limit_exceeded') ],
    anth_rl => [ 429, 'application/json', _anthropic('rate_limit_error',
        'Number of request tokens has exceeded your per-minute rate limit') ],
    quota => [ 429, 'application/json', _openai(
        'You exceeded your current quota, please check your plan and '
        . 'billing details.', 'insufficient_quota', 'insufficient_quota') ],
    402 => [ 402, 'application/json',
        '{"error":{"message":"Payment required"}}' ],
    529 => [ 529, 'application/json', '{"message":"try again later"}' ],
    anth_ovl => [ 529, 'application/json',
        _anthropic('overloaded_error', 'Overloaded') ],
    anth_ovl500 => [ 500, 'application/json',
        _anthropic('overloaded_error', 'Overloaded') ],
    503 => [ 503, 'text/html',
        "<html><body><h1>503 Service Unavailable</h1></body></html>\n" ],
    500 => [ 500, 'application/json', _openai(
        'The server had an error while processing your request.',
        'server_error', undef) ],
    502 => [ 502, 'text/html',
        "<html><head><title>502 Bad Gateway</title></head>"
        . "<body>cloudflare</body></html>\n" ],
    504 => [ 504, 'text/html',
        "<html><head><title>504 Gateway Time-out</title></head>"
        . "<body>upstream proxy</body></html>\n" ],
    ctx => [ 400, 'application/json', _openai(
        "This model's maximum context length is 128000 tokens. However, "
        . 'your messages resulted in 130000 tokens.',
        'invalid_request_error', 'context_length_exceeded') ],
    anth_ctx => [ 400, 'application/json', _anthropic(
        'invalid_request_error',
        'prompt is too long: 215000 tokens > 200000 maximum') ],
    401 => [ 401, 'application/json', _openai(
        'Incorrect API key provided: sk-proj-****abcd.',
        'invalid_request_error', 'invalid_api_key') ],
    403 => [ 403, 'application/json', _anthropic('permission_error',
        'Your API key does not have permission to use the specified '
        . 'resource.') ],
    404 => [ 404, 'application/json', _openai(
        'The model `gpt-9` does not exist or you do not have access to it.',
        'invalid_request_error', 'model_not_found') ],
    422 => [ 422, 'application/json',
        '{"detail":[{"loc":["body","messages"],"msg":"field required"}]}' ],
    filter => [ 400, 'application/json', _openai(
        "The response was filtered due to the prompt triggering Azure "
        . "OpenAI's content management policy.", undef, 'content_filter') ],
);

sub error_body {
    my ($kind, %m) = @_;

    if ($kind eq 'big') {
        my $size = $m{size} || 4 * 1024 * 1024;
        my $head = '{"error":{"type":"server_error","code":null,'
            . '"message":"';
        my $tail = '"}}';
        my $fill = $size - length($head) - length($tail);
        $fill = 0 if $fill < 0;
        my $pad = join '', map { sprintf '%07d ', $_ } 0 .. int($fill / 8);
        return $head . substr($pad, 0, $fill) . $tail;
    }

    return $KIND{$kind}[2];
}

sub completion { completion_body(@_) }

# the response of an action; $conn and $req may be undef (a test asks
# what a kind's answer is)
sub action_response {
    my ($action, $req, $conn) = @_;

    my ($kind, @mods) = split /\+/, $action;
    my %m = map { my ($k, $v) = split /=/, $_, 2; ($k => $v // 1) } @mods;

    my @h = ('X-Mock-Attempt' => ($req ? $req->{headers}{'x-attempt'} // '-'
                                       : '-'),
             'X-Mock-Path' => ($req ? $req->{path} : '-'));

    push @h, 'Retry-After' => $m{ra} if defined $m{ra};
    push @h, 'retry-after-ms' => $m{ram} if defined $m{ram};
    push @h, 'Retry-After' => strftime('%a, %d %b %Y %H:%M:%S GMT',
                                       gmtime(int(time) + $m{radate}))
        if defined $m{radate};

    if (defined $m{hdr}) {
        my ($k, $v) = split /:/, $m{hdr}, 2;
        push @h, $k => $v;
    }

    if ($kind eq 'reset') {
        $conn->reset if $conn;
        return;
    }

    if ($kind eq 'garbage') {
        if ($conn) {
            $conn->write("ICY 200 not http at all\r\n{\"x\":1}\n");
            $conn->close;
        }
        return;
    }

    if ($kind eq 'cut') {
        $conn->partial(status => $m{status} || 500, headers => \@h,
                       body => substr($KIND{500}[2], 0, 20))
            if $conn;
        return;
    }

    if ($kind eq 'stall') {
        $conn->stall($m{stall} // 3) if $conn;
        return { status => 200, headers => \@h, body => completion_body(),
                 close => 1 };
    }

    my %r = (head_delay => $m{delay}, chunked => $m{chunked});

    if ($kind eq 'ok') {
        return { status => $m{status} || 200,
                 headers => [ @h, 'Content-Type' => 'application/json' ],
                 body => completion_body(content => defined $m{size}
                                             ? 'x' x $m{size} : undef),
                 %r };
    }

    if ($kind eq 'big') {
        return { status => $m{status} || 500,
                 headers => [ @h, 'Content-Type' => 'application/json' ],
                 body => error_body('big', %m), %r };
    }

    my $k = $KIND{$kind} or die "unknown mock action \"$action\"\n";

    return { status => $m{status} || $k->[0],
             headers => [ @h, 'Content-Type' => $k->[1] ],
             body => $k->[2], %r };
}

# the mock handler: the action for the attempt, from X-Case
sub scripted {
    my ($req, $conn) = @_;

    my $n = $req->{headers}{'x-attempt'} // '';
    my %plan;

    for my $step (split /;/, $req->{headers}{'x-case'} // '') {
        my ($k, $v) = split /:/, $step, 2;
        $plan{$k} = $v if defined $v;
    }

    my $action = $plan{$n} // $plan{'*'} // 'ok';
    return action_response($action, $req, $conn);
}

# an access log format with every engine variable; an entry starts with
# the request's ?id=
our @LOG_FIELDS = qw(
    id status route attempts target target_model model error decision
    fallback targets statuses errors times upstream_status request_time
    msec
);

sub log_format_conf {
    my ($name) = @_;
    $name ||= 'engine';
    return "log_format $name '\$arg_id|\$status|\$llm_route|\$llm_attempts|"
        . "\$llm_target|\$llm_target_model|\$llm_model|\$llm_error_type|"
        . "\$llm_retry_decision|\$llm_fallback|\$llm_attempt_targets|"
        . "\$llm_attempt_statuses|\$llm_attempt_errors|\$llm_attempt_times|"
        . "\$upstream_status|\$request_time|\$msec';";
}

# what %%ENGINE%% and %%ATTEMPT_LOG%% stand for
sub engine_conf {
    return log_format_conf() . "\n"
        . "    log_format attempt '\$arg_id|\$msec|\$request_time|\$uri';\n"
        . "    access_log %%TESTDIR%%/logs/access.log engine;\n\n"
        . '    proxy_set_header X-Attempt $llm_attempts;';
}

our $ATTEMPT_LOG = 'log_subrequest on; '
    . 'access_log %%TESTDIR%%/logs/attempts.log attempt;';

# writes nginx.conf from $conf (%%ENGINE%%, %%ATTEMPT_LOG%%, %%LOG_FORMAT%%
# (the access log format alone), %%NAME%% for each NAME => text of
# subst => {}, then the harness's own tokens), starts a scripted mock for
# each name => port of mocks => [] (prov => 8081 by default; a port may
# be [ port, handler ]) and nginx (unless run => 0); returns the port of
# %%PORT_8080%%
sub engine_run {
    my ($t, $conf, %o) = @_;

    my %subst = (ENGINE => engine_conf(), ATTEMPT_LOG => $ATTEMPT_LOG,
                 LOG_FORMAT => log_format_conf(), %{$o{subst} || {}});
    $conf =~ s/%%(\w+)%%/exists $subst{$1} ? $subst{$1} : "%%$1%%"/ge;
    $t->write_file_expand('nginx.conf', $conf);

    my @mocks = @{$o{mocks} || [ prov => 8081 ]};
    while (my ($name, $m) = splice @mocks, 0, 2) {
        my ($n, $handler) = ref $m ? @$m : ($m, \&scripted);
        $t->run_mock_provider(port => $t->port($n), name => $name,
                              handler => $handler);
    }

    $t->run unless defined $o{run} && !$o{run};
    return $t->port(8080);
}

# the attempts of the request with ?id=$id as nginx logged them, in order:
# { start, end, uri } (seconds by nginx's clock); waits until $n of them
# are logged (1), for at most $timeout seconds (5)
sub attempts {
    my ($t, $id, $n, $timeout) = @_;
    $n ||= 1;

    my @a;
    my $deadline = time + ($timeout // 5);

    while (1) {
        @a = ();
        my $log = -e $t->testdir . '/logs/attempts.log'
                  ? $t->read_file('logs/attempts.log') : '';
        for (split /\n/, $log) {
            my ($aid, $msec, $rt, $uri) = split /\|/, $_, -1;
            next unless defined $uri && $aid eq $id;
            push @a, { start => $msec - $rt, end => $msec, uri => $uri };
        }
        last if @a >= $n || time > $deadline;
        select undef, undef, undef, 0.05;
    }

    return sort { $a->{start} <=> $b->{start} } @a;
}

# the access log entry of the request with ?id=$id, as a hash (empty when
# none came within the timeout)
sub log_entry {
    my ($t, $id, $timeout) = @_;
    my $line = $t->wait_for_log('logs/access.log', qr/^\Q$id\E\|/,
                                $timeout // 5);
    return {} unless defined $line;
    my @v = split /\|/, $line, -1;
    my %e;
    @e{@LOG_FIELDS} = @v;
    return \%e;
}

# what the mock $name got for the client request with ?id=$id
sub mock_for {
    my ($t, $name, $id) = @_;
    return [ grep { ($_->{query} // '') =~ /(?:^|&)id=\Q$id\E(?:&|$)/ }
             @{$t->mock_requests($name)} ];
}

1;
