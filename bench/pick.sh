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
# Environment: N1 N2 (request counts, 500 and 2500); MODULE, NGINX,
# KEEP=1 as in bench/cg.sh (the callgrind harness).

set -eu

. "$(dirname "$0")/cg.sh"

N1=${N1:-500}
N2=${N2:-2500}

cg_init pick
PORT=$(free_port)

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

declare -A PER
for cand in random sticky; do
    a=$(cg_requests "cg.$cand.$N1" nginx.conf "$PORT" \
                    "/$cand/v1/chat/completions" "$N1")
    b=$(cg_requests "cg.$cand.$N2" nginx.conf "$PORT" \
                    "/$cand/v1/chat/completions" "$N2")
    [ -n "$a" ] && [ -n "$b" ] || die "$cand: no callgrind totals"
    PER[$cand]=$(( (b - a) / (N2 - N1) ))
    echo "$cand: $(( b - a )) Ir over $(( N2 - N1 )) requests," \
         "${PER[$cand]} per request"
done

cost=$(( PER[sticky] - PER[random] ))
echo "sticky pick: $cost instructions per request (goal: under 200)"
