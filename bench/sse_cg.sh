#!/bin/bash
# Instructions per SSE stream under callgrind: plain proxy_pass (A)
# against an llm route (B) to the same mock provider, as in bench/sse.pl.
# See bench/README.md, "Streams".
#
#   MODULE=build/me/ngx_http_llm_module.so bench/sse_cg.sh
#
# nginx runs alone (master_process off) under valgrind --tool=callgrind
# and serves N1, then (a new run) N2 streams of one candidate, one after
# another; the difference of the two totals over N2 - N1 is the user-space
# instructions of one stream, without startup and shutdown.  Each stream
# is EVENTS OpenAI chat chunks of ~230 bytes, written GAP_MS apart (so
# each one is a read and a write of its own, as in a real stream), a last
# chunk with usage (stream_options.include_usage) and "[DONE]".
#
# Environment: EVENTS=50 GAP_MS=3 N1=2 N2=10; MODULE, NGINX_BIN, KEEP=1
# (keep the temp dir: callgrind_annotate its cg.b.N2.out) as in
# bench/cg.sh (the callgrind harness).  Exits 2 when the setup failed.

set -eu

. "$(dirname "$0")/cg.sh"

EVENTS=${EVENTS:-50}
GAP_MS=${GAP_MS:-3}
N1=${N1:-2}
N2=${N2:-10}

command -v curl >/dev/null || die "curl not found"
cg_init sse_cg
mkdir -p "$TMP/tmp"

MOCK_PORT=$(free_port)
PROXY_PORT=$(free_port)

# the mock provider: a process per stream
perl - "$MOCK_PORT" "$EVENTS" "$GAP_MS" > "$TMP/logs/mock.log" 2>&1 <<'EOF' &
use strict;
use warnings;
use IO::Socket::INET;
use Time::HiRes qw(sleep);

my ($port, $events, $gap) = @ARGV;
$SIG{CHLD} = 'IGNORE';

my $l = IO::Socket::INET->new(Listen => 128, LocalAddr => "127.0.0.1:$port",
                              ReuseAddr => 1) or die "listen: $!";

sub chunk { sprintf("%x\r\n%s\r\n", length $_[0], $_[0]) }

my $head = '{"id":"chatcmpl-bench","object":"chat.completion.chunk",'
    . '"created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    . '"system_fingerprint":"fp_06737a9306","choices":';

while (my $c = $l->accept) {
    next if fork;
    $c->autoflush(1);
    my $req = '';
    while ($req !~ /\r\n\r\n/) {
        $c->sysread($req, 4096, length $req) or exit;
    }
    if ($req =~ /Content-Length: (\d+)/i) {
        my $want = $1 - (length($req) - index($req, "\r\n\r\n") - 4);
        while ($want > 0) {
            my $n = $c->sysread(my $b, $want) or exit;
            $want -= $n;
        }
    }
    print $c "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        . "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
        . "Connection: close\r\n\r\n";
    for my $i (1 .. $events) {
        print $c chunk("data: $head" . '[{"index":0,"delta":{"content":'
            . '" lorem ipsum ' . $i . '"},"logprobs":null,'
            . '"finish_reason":null}]}' . "\n\n");
        sleep($gap / 1000);
    }
    print $c chunk("data: $head" . '[],"usage":{"prompt_tokens":12,'
        . '"completion_tokens":' . $events . ',"total_tokens":'
        . ($events + 12) . "}}\n\n");
    print $c chunk("data: [DONE]\n\n") . "0\r\n\r\n";
    close $c;
    exit;
}
EOF
CG_KILL=$!
wait_port "$MOCK_PORT" || die "the mock did not start"

cat > "$TMP/nginx.conf" <<EOF
load_module $MODULE;
$( [ "$(id -u)" = 0 ] && echo 'user root;' )
master_process off;
daemon off;
worker_processes 1;
error_log $TMP/logs/error.log warn;
pid $TMP/nginx.pid;

events { worker_connections 256; }

http {
    access_log off;
    client_body_temp_path $TMP/tmp/body;
    proxy_temp_path       $TMP/tmp/proxy;
    fastcgi_temp_path     $TMP/tmp/fastcgi;
    uwsgi_temp_path       $TMP/tmp/uwsgi;
    scgi_temp_path        $TMP/tmp/scgi;

    server {
        listen 127.0.0.1:$PROXY_PORT;

        location = /a/v1/chat/completions {
            proxy_pass http://127.0.0.1:$MOCK_PORT/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_buffering off;
        }

        location = /b/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/mock;
        }

        location /_llm/mock {
            internal;
            proxy_pass http://127.0.0.1:$MOCK_PORT/v1/chat/completions;
            proxy_http_version 1.1;
        }
    }
}
EOF

BODY='{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello."}]}'

one() {
    # one CAND N: Ir of nginx serving N streams; prints it
    local cand=$1 n=$2 i got
    cg_start "cg.$cand.$n" nginx.conf "$PROXY_PORT"
    for i in $(seq 1 "$n"); do
        got=$(curl -sN --max-time 60 -H 'Content-Type: application/json' \
                  -d "$BODY" "http://127.0.0.1:$PROXY_PORT/$cand/v1/chat/completions" \
              | grep -c '^data: ') || true
        [ "$got" = $((EVENTS + 2)) ] \
            || die "$cand: stream $i brought $got events, not $((EVENTS + 2))"
    done
    cg_stop QUIT
}

declare -A PER
for cand in a b; do
    i1=$(one "$cand" "$N1")
    i2=$(one "$cand" "$N2")
    [ -n "$i1" ] && [ -n "$i2" ] || die "no callgrind totals"
    PER[$cand]=$(( (i2 - i1) / (N2 - N1) ))
done

echo "== SSE: user-space instructions per stream ($EVENTS events + usage"
echo "   chunk + [DONE], $GAP_MS ms apart; callgrind, N=$N2 - N=$N1 streams)"
printf "%-4s %12s %12s\n" cand "per stream" "per event"
for cand in a b; do
    printf "%-4s %12d %12d\n" "${cand^^}" "${PER[$cand]}" \
        $(( PER[$cand] / (EVENTS + 2) ))
done
awk -v a="${PER[a]}" -v b="${PER[b]}" -v e=$((EVENTS + 2)) 'BEGIN {
    printf "B/A %.2f (goal <= 1.5), B-A per event %+d\n", b / a,
        (b - a) / e }'
