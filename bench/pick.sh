#!/bin/bash
# The cost of the sticky pick (llm_split_key): user-space instructions per
# request under callgrind, for an llm route with two targets at 90/10
# picked at random ("random") and by the hash of the Authorization header
# ("sticky"), in one nginx.  The difference is what llm_split_key costs:
# evaluating the key's complex value and its MurmurHash2.  The targets
# answer with `return 200`, so nothing else varies between the two.
#
#   bench/pick.sh                 (make bench-pick)
#
# Environment: MODULE (default build/ngx_http_llm_module.so), NGINX
# (default /usr/sbin/nginx), N1 N2 (request counts, 500 and 2500), KEEP=1.

set -eu

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
MODULE=${MODULE:-$REPO/build/ngx_http_llm_module.so}
NGINX_BIN=${NGINX:-/usr/sbin/nginx}
unset NGINX    # nginx reads it itself (binary upgrades)
N1=${N1:-500}
N2=${N2:-2500}

command -v valgrind >/dev/null || { echo "pick: valgrind missing" >&2; exit 2; }
[ -f "$MODULE" ] || { echo "pick: $MODULE missing (make)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/llm-pick.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    [ "${KEEP:-0}" = 1 ] && echo "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$(perl -MIO::Socket::INET -e \
    'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0")
           ->sockport')

mkdir -p "$TMP/logs"
cat > "$TMP/nginx.conf" <<EOF
load_module $MODULE;
daemon off;
master_process off;
worker_processes 1;
error_log $TMP/logs/error.log error;
pid $TMP/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $TMP/body;
    server {
        listen 127.0.0.1:$PORT;
        keepalive_requests 100000;
        location = /random/v1/chat/completions {
            llm_route random;
            llm_target /_llm/a weight=90;
            llm_target /_llm/b weight=10;
        }
        location = /sticky/v1/chat/completions {
            llm_route sticky;
            llm_target /_llm/a weight=90;
            llm_target /_llm/b weight=10;
            llm_split_key \$http_authorization;
        }
        location /_llm/ {
            internal;
            default_type application/json;
            return 200 '{"object":"chat.completion","choices":[]}';
        }
    }
}
EOF

printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \
    > "$TMP/body.json"

ir() {
    # ir CAND N: total Ir of nginx serving exactly N requests to CAND
    local cand=$1 n=$2 out="$TMP/cg.$1.$2.out" res
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        --log-file="$TMP/logs/valgrind.$cand.$n.log" \
        "$NGINX_BIN" -p "$TMP" -c "$TMP/nginx.conf" \
        > "$TMP/logs/nginx.$cand.$n.out" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do
        perl -MIO::Socket::INET -e \
            "exit !IO::Socket::INET->new('127.0.0.1:$PORT')" && break
        sleep 0.1
    done
    if ! res=$("$BENCH_DIR/client.pl" "$PORT" "/$cand/v1/chat/completions" \
               "$TMP/body.json" "$n")
    then
        kill "$PID" 2>/dev/null
        echo "pick: $cand: ${res:-no answer}" >&2
        exit 2
    fi
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
    sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$out" | head -1
}

declare -A PER
for cand in random sticky; do
    a=$(ir "$cand" "$N1")
    b=$(ir "$cand" "$N2")
    PER[$cand]=$(( (b - a) / (N2 - N1) ))
    echo "$cand: $(( b - a )) Ir over $(( N2 - N1 )) requests," \
         "${PER[$cand]} per request"
done

cost=$(( PER[sticky] - PER[random] ))
echo "sticky pick: $cost instructions per request (goal: under 200)"
