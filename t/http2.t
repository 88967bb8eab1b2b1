#!/usr/bin/perl

# HTTP/2 clients (README: Compatibility).  Through curl with prior
# knowledge (h2c), as the harness has no HTTP/2 client of its own: a chat
# completion; a 3 MB body spilled to a temp file, rewritten per target,
# arriving whole; a retry then a fallback; a broken body -> 400; an SSE
# stream.

use strict;
use warnings;

use lib 't/lib';
use Test::More;
use Test::LLM;

use Digest::MD5 qw(md5_hex);

plan skip_all => 'curl with HTTP/2 not found'
    unless (`curl -V 2>/dev/null` // '') =~ /\bHTTP2\b/;

my $t = Test::LLM->new;

$t->write_file_expand('nginx.conf', <<'EOF');
events {}

http {
    client_max_body_size 20m;
    client_body_buffer_size 16k;

    server {
        listen 127.0.0.1:%%PORT_8080%% http2;

        location = /v1/chat/completions {
            llm_route chat;
            llm_target /_llm/flaky;
            llm_fallback /_llm/provider model=gpt-4.1-mini;
            llm_backoff base=1ms max=5ms;
        }

        location = /plain/v1/chat/completions {
            llm_route plain;
            llm_target /_llm/provider model=gpt-4.1-mini;
        }

        location /_llm/ {
            internal;
            proxy_pass http://127.0.0.1:%%PORT_8081%%;
        }
    }
}
EOF

$t->run_mock_provider(port => $t->port(8081), name => 'provider',
                      handler => sub {
    my ($req, $conn) = @_;

    if ($req->{path} =~ m{^/_llm/flaky}) {
        return { status => 503, headers => [ 'Content-Type' =>
                                             'application/json' ],
                 body => '{"error":{"type":"server_error"}}' };
    }

    if ($req->{body} =~ /"stream":true/) {
        return $conn->sse(events => [ '{"object":"chat.completion.chunk",'
                                      . '"choices":[]}', '[DONE]' ]);
    }

    return { status => 200, headers => [ 'Content-Type' =>
                                         'application/json' ],
             body => '{"object":"chat.completion","choices":[],"md5":"'
                     . md5_hex($req->{body}) . '","len":'
                     . length($req->{body}) . '}' };
});

$t->run;

my $port = $t->port(8080);

sub curl {
    my ($path, $file) = @_;
    my $out = `curl -s --http2-prior-knowledge -o - -w '\\n%{http_version} %{http_code}' --data-binary \@$file http://127.0.0.1:$port$path`;
    my ($body, $version, $code) = $out =~ /^(.*)\n(\S+) (\d+)$/s;
    return { body => $body // '', version => $version // '',
             status => $code // 0 };
}

my $dir = $t->testdir;

sub body_file {
    my ($name, $content) = @_;
    open my $fh, '>', "$dir/$name" or die $!;
    binmode $fh;
    print $fh $content;
    close $fh;
    return "$dir/$name";
}

my $small = body_file('small.json', '{"model":"gpt-4o","messages":[]}');
my $r = curl('/plain/v1/chat/completions', $small);

is($r->{version}, '2', 'h2: HTTP/2');
is($r->{status}, 200, 'h2: 200');
like($r->{body}, qr/"object":"chat\.completion"/, 'h2: the answer');

my $big_body = '{"messages":[{"role":"user","content":"' . ('z' x 3_000_000)
    . '"}],"model":"gpt-4o"}';
my $big = body_file('big.json', $big_body);
(my $rewritten = $big_body) =~ s/"gpt-4o"/"gpt-4.1-mini"/;

$r = curl('/plain/v1/chat/completions', $big);
is($r->{status}, 200, 'h2, 3 MB spilled body: 200');
like($r->{body}, qr/"md5":"\Q${\ md5_hex($rewritten)}\E","len":\Q${\ length $rewritten}\E/,
     'h2, 3 MB spilled body: arrives whole, model rewritten');

$r = curl('/v1/chat/completions', $small);
is($r->{status}, 200, 'h2, retry then fallback: 200');
is(scalar grep({ $_->{path} =~ m{^/_llm/flaky} }
               @{$t->mock_requests('provider')}), 1,
   'h2, retry then fallback: the failing target once');

my $broken = body_file('broken.json', '{"model":"gpt-4o"');
$r = curl('/v1/chat/completions', $broken);
is($r->{status}, 400, 'h2, broken body: 400');
like($r->{body}, qr/"code":"invalid_json"/, 'h2, broken body: the error');

my $stream = body_file('stream.json', '{"model":"m","stream":true}');
$r = curl('/plain/v1/chat/completions', $stream);
is($r->{status}, 200, 'h2, stream: 200');
is($r->{body}, qq(data: {"object":"chat.completion.chunk","choices":[]}\n\n)
               . "data: [DONE]\n\n", 'h2, stream: the events');

done_testing;
