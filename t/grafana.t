#!/usr/bin/perl

# The Grafana dashboard docs/grafana/llm.json (issue 16) asks only for
# metrics the module serves.  Every metric name its PromQL expressions
# (panel targets and template variable queries) reference is extracted,
# and each must be the name of a sample in the Prometheus text of a real
# nginx with the module, after some traffic (successes, a retry, a
# fallback, a cooldown), configured with everything the dashboard shows:
# a zone, a retry budget, a fallback, a canary.  Histogram series count
# by their sample names (_bucket, _sum, _count).  The extractor is
# checked on known expressions first, so that a name it would miss fails
# here rather than pass unseen, and the dashboard must cover what
# operators look for: request rate, error categories, retries against
# the budget, fallbacks, cooldowns and holds, latency and time to first
# token quantiles, tokens.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;
use Test::LLM::Engine;

use JSON::PP ();
use Cwd qw(abs_path);
use File::Basename qw(dirname);

my $repo = abs_path(dirname(__FILE__) . '/..');
my $file = "$repo/docs/grafana/llm.json";

open my $fh, '<', $file or BAIL_OUT("$file: $!");
my $dashboard = eval { JSON::PP->new->decode(do { local $/; <$fh> }) };
close $fh;

ok($dashboard, 'the dashboard is JSON') or BAIL_OUT($@);

# PromQL keywords and aggregation modifiers that look like names
my %KEYWORD = map { $_ => 1 } qw(by without on ignoring group_left
    group_right and or unless bool offset inf nan);

# the metric names a PromQL expression selects
sub metric_names {
    my ($expr) = @_;
    my $e = $expr;

    $e =~ s/"(?:[^"\\]|\\.)*"//g;           # strings: label values
    $e =~ s/'(?:[^'\\]|\\.)*'//g;
    $e =~ s/\[[^\]]*\]//g;                  # ranges: [5m], [$__rate_interval]
    $e =~ s/\{[^}]*\}//g;                   # label matchers
    $e =~ s/\b(?:by|without|on|ignoring|group_left|group_right)\s*
            \([^)]*\)//gx;                  # label lists
    $e =~ s/\$\w+//g;                       # dashboard variables

    my %names;
    while ($e =~ /(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*+)(?!\s*\()/g) {
        next if $KEYWORD{lc $1};
        $names{$1} = 1;
    }

    # label_values(metric, label): the metric only
    delete $names{$_} for $expr =~ /label_values\(\s*\w+\s*,\s*(\w+)\s*\)/g;

    return sort keys %names;
}

# the extractor itself
is_deeply([ metric_names('sum by (route, le) (rate(a_bucket{route=~"$route"}'
                         . '[$__rate_interval]))') ],
          [ 'a_bucket' ], 'extractor: by-list, matcher, range left out');
is_deeply([ metric_names('x{kind="used"} / ignoring(kind) y{kind="total"}') ],
          [ 'x', 'y' ], 'extractor: a binary operation, both sides');
is_deeply([ metric_names('histogram_quantile(0.99, sum(rate(h_bucket[5m]))) '
                         . '> 0 and on(route) z') ],
          [ 'h_bucket', 'z' ], 'extractor: numbers and keywords left out');
is_deeply([ metric_names('label_values(m_total, route)') ], [ 'm_total' ],
          'extractor: label_values');

# every expression of the dashboard
my @exprs;

for my $panel (@{$dashboard->{panels} || []},
               map { @{$_->{panels} || []} } @{$dashboard->{panels} || []})
{
    push @exprs, map { $_->{expr} } grep { defined $_->{expr} }
                 @{$panel->{targets} || []};
}

for my $var (@{$dashboard->{templating}{list} || []}) {
    next unless ($var->{type} // '') eq 'query';
    my $q = ref $var->{query} ? $var->{query}{query} : $var->{query};
    push @exprs, $q if defined $q;
}

ok(@exprs >= 20, 'expressions found: ' . scalar @exprs);

my %used;
$used{$_}++ for map { metric_names($_) } @exprs;

# what operators look for, each in some expression
my @wanted = (
    [ 'request rate' => qr/rate\(nginx_llm_route_requests_total\b/ ],
    [ 'error categories' => qr/\bnginx_llm_target_errors_total\b/ ],
    [ 'outcomes' => qr/\bnginx_llm_route_target_attempts_total\b/ ],
    [ 'retries against the budget' =>
      qr/nginx_llm_route_retries_total\b.*nginx_llm_route_requests_total/ ],
    [ 'budget left' => qr/\bnginx_llm_route_budget_remaining\b/ ],
    [ 'fallbacks' => qr/decision="fallback"/ ],
    [ 'cooldowns' => qr/\bnginx_llm_target_cooling\b/ ],
    [ 'holds' => qr/\bnginx_llm_canary_hold\b/ ],
    [ 'p50 latency' => qr/histogram_quantile\(0\.5,.*request_duration_seconds_bucket/ ],
    [ 'p99 latency' => qr/histogram_quantile\(0\.99,.*request_duration_seconds_bucket/ ],
    [ 'p50 TTFT' => qr/histogram_quantile\(0\.5,.*time_to_first_byte_seconds_bucket/ ],
    [ 'p99 TTFT' => qr/histogram_quantile\(0\.99,.*time_to_first_byte_seconds_bucket/ ],
    [ 'input tokens' => qr/\bnginx_llm_route_target_input_tokens_total\b/ ],
    [ 'output tokens' => qr/\bnginx_llm_route_target_output_tokens_total\b/ ],
);

for my $w (@wanted) {
    ok(scalar(grep { $_ =~ $w->[1] } @exprs), "the dashboard shows $w->[0]");
}

###############################################################################
# a real nginx with the module, after some traffic

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    llm_zone llm:1m;

    proxy_set_header X-Attempt $llm_attempts;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        llm_backoff base=1ms max=5ms;

        location = /chat/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/p model=gpt-4o-mini weight=90 tries=2;
            llm_target /_llm/c model=gpt-4.1-mini weight=10;
            llm_fallback /_llm/fb;
            llm_retry_budget ratio=0.2 min=10/s window=10s;
            llm_cooldown fails=1 window=10s time=1s;
            llm_canary errors=0.5 min=20 window=60s;
        }

        location ~ ^/_llm/(\w+)$ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%/$1/v1/chat/completions;
        }

        location = /status {
            llm_status;
        }
    }
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => \&scripted);
$t->run;

my $port = $t->port(8080);

for my $case ('*:ok', '*:ok', '1:500;*:ok', '1:500;2:500;*:ok',
              '*:rl+ra=1', '*:ok')
{
    my $r = parse_response(http_post('/chat/v1/chat/completions',
        '{"model":"m","messages":[{"role":"user","content":"hi"}]}',
        port => $port, headers => { 'X-Case' => $case }));
    ok(defined $r->{status}, "traffic: $case answered $r->{status}");
}

my $text = parse_response(http_get('/status?format=prometheus',
                                   port => $port))->{body} // '';

my %served = map { /^(\w+)[{ ]/ ? ($1 => 1) : () }
             grep { !/^#/ } split /\n/, $text;

ok($served{nginx_llm_route_request_duration_seconds_bucket},
   'the module serves histogram buckets');
ok(!$served{nginx_llm_no_such_metric_total},
   'a name the module does not serve is not found');

for my $name (sort keys %used) {
    ok($served{$name}, "$name: served");
}

$t->stop;

done_testing;
