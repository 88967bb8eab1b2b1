#!/bin/bash
# The cost of llm_check_answer: user-space instructions per request under
# callgrind, for an llm route whose target proxies to a provider (a
# server of the same nginx, `return 200`) answering a 600-byte chat
# completion, with the check off ("plain") and on ("checked"), in one
# nginx.  The difference is what the check costs: holding the answer in
# a buffer, reading its shape with the answer reader, and replaying it.
# Without an access log the answer reader runs only for the check; with
# usage variables logged ("_usage") it runs in both, and the difference
# is the holding and replaying alone.
#
#   bench/check_answer.sh         (make bench-check)
#
# Environment: N1 N2 (request counts, 500 and 2500); MODULE, NGINX,
# KEEP=1 as in bench/cg.sh (the callgrind harness).

set -eu

. "$(dirname "$0")/cg.sh"

N1=${N1:-500}
N2=${N2:-2500}

cg_init check
PORT=$(free_port)
PORT2=$(free_port)
[ "$PORT" != "$PORT2" ] || PORT2=$(free_port)

# a chat completion of 600 bytes
HEAD='{"id":"chatcmpl-bench","object":"chat.completion","created":1763700000,'
HEAD+='"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":'
HEAD+='{"role":"assistant","content":"'
TAIL='"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
TAIL+='"completion_tokens":60,"total_tokens":72}}'
TEXT=$(printf 'lorem ipsum %.0s' $(seq 1 60))
ANSWER=$HEAD${TEXT:0:$(( 600 - ${#HEAD} - ${#TAIL} ))}$TAIL

# conf FILE LOG: the routes with access_log LOG: "off", or a log of a
# usage variable (then the answer reader runs for every answer)
conf() {
    local usage=
    [ "$2" = off ] || usage="log_format usage '\$llm_usage_input_tokens';"
    cat > "$TMP/$1" <<EOF
load_module $MODULE;
daemon off;
master_process off;
worker_processes 1;
error_log $TMP/logs/error.log error;
pid $TMP/nginx.pid;
events { worker_connections 64; }
http {
    $usage
    access_log $2;
    client_body_temp_path $TMP/body;
    upstream provider {
        server 127.0.0.1:$PORT2;
        keepalive 4;
    }
    server {
        listen 127.0.0.1:$PORT;
        keepalive_requests 100000;
        location = /plain/v1/chat/completions {
            llm_route plain;
            llm_target /_llm/a tries=2;
        }
        location = /checked/v1/chat/completions {
            llm_route checked;
            llm_target /_llm/a tries=2;
            llm_check_answer on;
        }
        location = /_llm/a {
            internal;
            proxy_pass http://provider/answer;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # the provider, in the same nginx: its instructions are part of a
    # request's
    server {
        listen 127.0.0.1:$PORT2;
        keepalive_requests 100000;
        access_log off;
        location = /answer {
            default_type application/json;
            return 200 '$ANSWER';
        }
    }
}
EOF
}

conf nginx.conf off
conf usage.conf "/dev/null usage"

printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \
    > "$TMP/body.json"

echo "answer: ${#ANSWER} bytes"

declare -A PER
for run in plain:nginx.conf checked:nginx.conf plain:usage.conf \
           checked:usage.conf
do
    cand=${run%%:*} cf=${run#*:}
    a=$(cg_requests "cg.$cand.$N1.$cf" "$cf" "$PORT" \
                    "/$cand/v1/chat/completions" "$N1")
    b=$(cg_requests "cg.$cand.$N2.$cf" "$cf" "$PORT" \
                    "/$cand/v1/chat/completions" "$N2")
    [ -n "$a" ] && [ -n "$b" ] || die "$cand: no callgrind totals"
    [ "$cf" = nginx.conf ] || cand=${cand}_usage
    PER[$cand]=$(( (b - a) / (N2 - N1) ))
    echo "$cand: $(( b - a )) Ir over $(( N2 - N1 )) requests," \
         "${PER[$cand]} per request"
done

pct() {
    # pct PART WHOLE: PART / WHOLE in percent, one decimal, signed
    local p=$(( $1 * 1000 / $2 )) s=
    [ "$p" -ge 0 ] || { p=$(( -p )); s=-; }
    echo "$s$(( p / 10 )).$(( p % 10 ))%"
}

cost=$(( PER[checked] - PER[plain] ))
echo "llm_check_answer: $cost instructions per request," \
     "$(pct $cost ${PER[plain]}) of a request (goal: under 10%)"
cost=$(( PER[checked_usage] - PER[plain_usage] ))
echo "with usage logged (the answer is read anyway): $cost instructions," \
     "$(pct $cost ${PER[plain_usage]})"
