#!/bin/bash
# What any attempt made as a subrequest costs, against what the route
# costs: user-space instructions per request under callgrind, 1 KB chat
# body, three candidates to the same mock provider (a plain nginx that is
# not counted):
#
#   A  proxy_pass, as in bench/run.sh
#   S  a plain subrequest to the same proxy_pass: the echo module's
#      echo_read_request_body and echo_location, no llm directive
#   B  llm_route and llm_target to the same proxy_pass
#
# S/A is the floor of an engine whose attempt is a subrequest (issue 14:
# the 1 KB goal of 1.15x); B - S is what the module itself adds: the body
# scan, the context, the attempt's filters, the decision.
#
#   bench/floor.sh            (N1=200 N2=1000 SIZE=1024)
#
# Needs libnginx-mod-http-echo (exit 2 without it); MODULE, NGINX, KEEP=1
# as in bench/cg.sh.

set -eu

. "$(dirname "$0")/cg.sh"

N1=${N1:-200}
N2=${N2:-1000}
SIZE=${SIZE:-1024}
ECHO=/usr/lib/nginx/modules/ngx_http_echo_module.so

cg_init floor

[ -f "$ECHO" ] || die "no $ECHO: apt-get install libnginx-mod-http-echo"

PORT=$(free_port)
MOCK_PORT=$(free_port)

perl "$BENCH_DIR/mkbody.pl" "$SIZE" "$TMP/body.json"

mkdir -p "$TMP/mock/logs"
cat > "$TMP/mock/nginx.conf" <<EOF
daemon off;
worker_processes 1;
error_log $TMP/mock/logs/error.log error;
pid $TMP/mock/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $TMP/mock/body;
    server {
        listen 127.0.0.1:$MOCK_PORT;
        keepalive_requests 100000;
        location / {
            default_type application/json;
            return 200 '{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}';
        }
    }
}
EOF

"$NGINX_BIN" -p "$TMP/mock/" -c "$TMP/mock/nginx.conf" &
CG_KILL="$CG_KILL $!"

for _ in $(seq 50); do
    (echo > "/dev/tcp/127.0.0.1/$MOCK_PORT") 2>/dev/null && break
    sleep 0.1
done

cat > "$TMP/nginx.conf" <<EOF
load_module $MODULE;
load_module $ECHO;
daemon off;
master_process off;
worker_processes 1;
error_log $TMP/logs/error.log error;
pid $TMP/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $TMP/body;
    client_body_buffer_size 128k;
    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 8;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {
        listen 127.0.0.1:$PORT;
        keepalive_requests 100000;
        location = /a/v1/chat/completions {
            proxy_pass http://mock;
        }
        location = /s/v1/chat/completions {
            echo_read_request_body;
            echo_location /_plain/mock;
        }
        location = /b/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/mock;
        }
        location /_plain/ {
            internal;
            proxy_pass http://mock/v1/chat/completions;
        }
        location /_llm/ {
            internal;
            proxy_pass http://mock/v1/chat/completions;
        }
    }
}
EOF

declare -A PER
for cand in a s b; do
    x=$(cg_requests "cg.$cand.$N1" nginx.conf "$PORT" \
                    "/$cand/v1/chat/completions" "$N1")
    y=$(cg_requests "cg.$cand.$N2" nginx.conf "$PORT" \
                    "/$cand/v1/chat/completions" "$N2")
    [ -n "$x" ] && [ -n "$y" ] || die "$cand: no callgrind totals"
    PER[$cand]=$(( (y - x) / (N2 - N1) ))
done

echo "== instructions per request, $SIZE-byte body (callgrind, N=$N2 - N=$N1)"
printf '%-28s %10s %8s\n' candidate instr/req "x A"
for cand in a s b; do
    case $cand in
        a) name="A proxy_pass" ;;
        s) name="S a plain subrequest" ;;
        b) name="B llm_route" ;;
    esac
    printf '%-28s %10s %8s\n' "$name" "${PER[$cand]}" \
        "$(awk -v x="${PER[$cand]}" -v a="${PER[a]}" \
                'BEGIN { printf "%.3f", x / a }')"
done
echo "the module over a plain subrequest (B - S): $(( PER[b] - PER[s] ))"
