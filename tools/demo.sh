#!/bin/bash
# make demo: start nginx with the module, local mock providers and a local
# Redis (no network, no keys), send a few chat requests, show the answers,
# the access log, the status page and the keys the node shares in Redis,
# run llm-preflight against it (promote, rollback, readiness), stop
# everything.
#
#   DEMO_PORT=18080  the gateway's port; the mock provider listens on the
#                    next one, Redis on the one after (18081, 18082)
#   DEMO_KEEP=1      leave nginx, the mock and Redis running at the end,
#                    print their URLs and the command that stops them

set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
module=${TEST_LLM_MODULE:-$top/build/ngx_http_llm_module.so}
nginx=${TEST_LLM_NGINX:-/usr/sbin/nginx}
port=${DEMO_PORT:-18080}
mock_port=$((port + 1))
redis_port=$((port + 2))
prefix=$(mktemp -d /tmp/llm-demo.XXXXXX)

stop() {
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    if [ -f "$prefix/nginx.pid" ]; then
        "$nginx" -p "$prefix" -c nginx.conf -s quit 2>/dev/null || true
        for _ in $(seq 50); do
            [ -f "$prefix/nginx.pid" ] || break
            sleep 0.1
        done
    fi
    rm -rf "$prefix"
}

# DEMO_KEEP=1: a run that went through leaves everything up, with a
# script to stop it; a failed one is cleaned up as always
finish() {
    local rc=$?
    if [ "${DEMO_KEEP:-0}" != 1 ] || [ "$rc" != 0 ]; then
        stop
        return
    fi
    cat > "$prefix/stop.sh" <<END
#!/bin/sh
redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1
"$nginx" -p "$prefix" -c nginx.conf -s quit 2>/dev/null
sleep 1
rm -rf "$prefix"
END
    chmod +x "$prefix/stop.sh"
    echo
    echo "== still running (DEMO_KEEP=1)"
    echo "chat:        http://127.0.0.1:$port/v1/chat/completions"
    echo "messages:    http://127.0.0.1:$port/v1/messages"
    echo "status:      http://127.0.0.1:$port/llm/status" \
         "(?format=prometheus)"
    echo "mock:        http://127.0.0.1:$mock_port, Redis 127.0.0.1:$redis_port"
    echo "logs:        $prefix/logs/"
    echo "stop it:     $prefix/stop.sh"
}
trap finish EXIT

mkdir -p "$prefix/logs"

# llm-preflight, at the end: the command built beside the module, the
# models the demo's catalog lists, conf.example's JSON access log
preflight=${LLM_PREFLIGHT:-$(dirname "$module")/llm-preflight}
cat > "$prefix/models.json" <<'END'
{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"},
 {"id":"gpt-4.1-mini","object":"model"},
 {"id":"claude-3-5-haiku","object":"model"}]}
END
json_log=$(perl -0777 -ne 'print "    $1\n\n" while
    /^\s*(map\s+\$(?:llm_family|http_x_request_id)\s+\$\w+\s*
         \{(?:"[^"]*"|[^"}])*\}
       |log_format\s+llm_json\s+escape=json(?:\s+\x27[^\x27]*\x27)+\s*;)/mgx' \
    "$top/conf.example")

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize yes --dir "$prefix" \
    --logfile "$prefix/logs/redis.log"

cat > "$prefix/nginx.conf" <<EOF
load_module $module;

daemon on;
worker_processes 2;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log info;

events {}

http {
    client_body_temp_path $prefix/body;
    proxy_temp_path       $prefix/proxy;
    fastcgi_temp_path     $prefix/fastcgi;
    uwsgi_temp_path       $prefix/uwsgi;
    scgi_temp_path        $prefix/scgi;

    log_format llm '"\$request_method \$uri" \$status '
                   'route=\$llm_route model=\$llm_model '
                   'target=\$llm_target target_model=\$llm_target_model '
                   'attempts=\$llm_attempts error=\$llm_error_type '
                   'decision=\$llm_retry_decision '
                   'tried="\$llm_attempt_targets" '
                   'statuses="\$llm_attempt_statuses" '
                   'errors="\$llm_attempt_errors" '
                   'upstream_status="\$upstream_status"';

    access_log $prefix/logs/access.log llm;

    log_format shift '\$arg_round \$llm_split_bucket \$llm_canary '
                     '\$llm_attempt_targets \$status';

    llm_zone llm:1m;
    llm_redis 127.0.0.1:$redis_port sync=100ms;

    # for llm-preflight: a catalog and the JSON access log
    llm_catalog demo $prefix/models.json;

$json_log

    upstream mock_openai {
        server 127.0.0.1:$mock_port;
        keepalive 8;
    }

    # the gateway
    server {
        listen 127.0.0.1:$port;

        # the target locations below inherit it: a provider's answer
        # cannot redirect inside this server nor throttle the client
        proxy_ignore_headers X-Accel-Redirect X-Accel-Expires
                             X-Accel-Limit-Rate X-Accel-Buffering
                             X-Accel-Charset;

        # a gradual shift: 90% of API keys on the current model, 10% on
        # a newer one, each key sticking to its model; a canary that
        # fails more than 20% of 5 attempts or more is held (weight 0,
        # its keys back on the current model) on every node
        location = /v1/chat/completions {
            llm_route  chat;
            llm_target /_llm/openai;
        }

        location = /shift/v1/chat/completions {
            llm_route     shift;
            llm_target    /_llm/openai model=gpt-4o-mini  weight=90;
            llm_target    /_llm/canary model=gpt-4.1-mini weight=10;
            llm_fallback  /_llm/openai model=gpt-4o-mini;
            llm_split_key \$http_authorization;
            llm_canary    errors=0.2 min=5 window=60s;
            access_log    $prefix/logs/shift.log shift;
        }

        # an overloaded provider: one retry after a backoff, then a
        # fallback with the model rewritten, within a retry budget that
        # every node sharing the Redis spends together; a messages route
        # falls back to another Anthropic-shaped provider, never to a
        # chat completions one (nginx -t refuses family=chat here)
        location = /v1/messages {
            llm_route        messages;
            llm_target       /_llm/overloaded tries=2;
            llm_fallback     /_llm/anthropic model=claude-3-5-haiku;
            llm_backoff      base=50ms max=500ms;
            llm_retry_budget ratio=0.2 min=10/s window=10s;
        }

        location = /llm/status {
            llm_status;
            access_log off;
        }

        # a quota error is not retried on the same key
        location = /quota/v1/chat/completions {
            llm_route  quota;
            llm_target /_llm/quota;
        }

        # llm-preflight's candidates: a good one, and one whose provider
        # fails (the canary's); targets with the catalog, so the gateway
        # refuses an unknown model itself
        location ~ ^/(good|broken)/v1/models\$ {
            llm_models demo;
        }

        location = /good/v1/chat/completions {
            llm_route  good;
            llm_target /_llm/openai catalog=demo;
            llm_response_headers on;
            access_log $prefix/logs/llm.json.log llm_json;
        }

        location = /broken/v1/chat/completions {
            llm_route  broken;
            llm_target /_llm/canary catalog=demo;
            llm_response_headers on;
            access_log $prefix/logs/llm.json.log llm_json;
        }

        # each path of the messages route, for a readiness check
        location = /ready/primary/v1/messages {
            llm_route  ready-primary;
            llm_target /_llm/overloaded catalog=demo;
            llm_response_headers on;
        }

        location = /ready/fallback/v1/messages {
            llm_route  ready-fallback;
            llm_target /_llm/anthropic catalog=demo;
            llm_response_headers on;
        }

        location /_llm/openai {
            internal;
            proxy_pass http://mock_openai/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer sk-demo-never-logged";
            proxy_set_header x-api-key "";
        }

        location /_llm/anthropic {
            internal;
            proxy_pass http://mock_openai/v1/messages;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-api-key "sk-ant-demo-never-logged";
            proxy_set_header Authorization "";
        }

        location /_llm/canary {
            internal;
            proxy_pass http://mock_openai/canary;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /_llm/overloaded {
            internal;
            proxy_pass http://mock_openai/overloaded;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /_llm/quota {
            internal;
            proxy_pass http://mock_openai/quota;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    # local mock providers
    server {
        listen 127.0.0.1:$mock_port;
        access_log off;
        default_type application/json;

        location = /v1/chat/completions {
            add_header x-request-id req_demo_0001 always;
            return 200 '{"id":"chatcmpl-demo","object":"chat.completion","created":1763700000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock provider."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}\n';
        }

        location = /v1/messages {
            add_header request-id req_demo_0002 always;
            return 200 '{"id":"msg_demo","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hello from the mock Anthropic provider."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":9}}\n';
        }

        # the newer model's deployment is failing
        location = /canary {
            return 503 '{"error":{"message":"The server is overloaded.","type":"server_error","param":null,"code":null}}\n';
        }

        location = /overloaded {
            return 529 '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n';
        }

        location = /quota {
            add_header Retry-After 3600 always;
            return 429 '{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}\n';
        }
    }
}
EOF

"$nginx" -p "$prefix" -c nginx.conf -t -q
"$nginx" -p "$prefix" -c nginx.conf

for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

# worker 0 links to Redis within a sync or two
for _ in $(seq 30); do
    curl -sS "http://127.0.0.1:$port/llm/status" | grep -q '"state":"up"' \
        && break
    sleep 0.1
done

show() {
    echo
    echo "\$ curl $*"
    curl -sS -i "$@" | tr -d '\r'
}

url=http://127.0.0.1:$port

echo "== nginx with ngx_http_llm_module on 127.0.0.1:$port," \
     "mock provider on 127.0.0.1:$mock_port, Redis on 127.0.0.1:$redis_port"

show "$url/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}'

echo
echo "== a 90/10 sticky shift: 60 API keys, twice; the canary fails"
for round in 1 2; do
    for n in $(seq 60); do
        curl -sS -o /dev/null "$url/shift/v1/chat/completions?round=$round" \
            -H 'Content-Type: application/json' \
            -H "Authorization: Bearer sk-user-$n" \
            -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}'
    done
    sleep 0.2
    echo "round $round: first attempt by target:" \
        "$(awk -v r="$round" '$1 == r { sub(/,$/, "", $4); print $4 }' \
               "$prefix/logs/shift.log" | sort | uniq -c | tr -s ' \n' ' ')," \
        "held: $(awk -v r="$round" '$1 == r && $3 == "hold"' \
                     "$prefix/logs/shift.log" | wc -l)"
done
echo "(\$llm_split_bucket, \$llm_canary, \$llm_attempt_targets per request:"
echo " $prefix/logs/shift.log; round 1: the canary's keys fell back to"
echo " gpt-4o-mini until the guard held it; round 2: they go to gpt-4o-mini"
echo " at once, \$llm_canary says hold)"

show "$url/v1/messages" -H 'Content-Type: application/json' \
    -d '{"model":"claude-3-5-haiku","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}'

show "$url/quota/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}'

show "$url/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user"'

show "$url/v1/chat/completions"

echo
echo "== access log"
sleep 0.2
cat "$prefix/logs/access.log"

echo
echo "== status page (JSON; Prometheus text with ?format=prometheus)"
curl -sS "$url/llm/status" | perl -MJSON::PP -0777 -ne \
    'print JSON::PP->new->pretty->canonical->encode(decode_json($_))'

echo
echo "== what this node shares in Redis (127.0.0.1:$redis_port)"
redis-cli -p "$redis_port" --scan | sort | while IFS= read -r key; do
    case $(redis-cli -p "$redis_port" type "$key") in
        string) echo "$key = $(redis-cli -p "$redis_port" get "$key")" ;;
        zset)   echo "$key = (sorted set of" \
                     "$(redis-cli -p "$redis_port" zcard "$key") nodes)" ;;
        *)      echo "$key" ;;
    esac
done

echo
echo "== error log (warnings and above)"
grep -E '\[(warn|error|crit|alert|emerg)\]' "$prefix/logs/error.log" || \
    echo "(none)"

echo
echo "== llm-preflight (docs/llm-preflight.md): the model-change runbook"
if [ ! -x "$preflight" ]; then
    echo "($preflight is not built: make)"
    exit 0
fi

# the keys a client would use: sent, never printed (the gateway holds
# the providers' own)
export OPENAI_API_KEY=sk-demo-client-key-never-printed
export ANTHROPIC_API_KEY=sk-ant-demo-client-key-never-printed

preflight() {
    local what=$1 rc=0
    shift
    printf '\n$ llm-preflight'
    printf ' %q' "$@"
    echo
    "$preflight" "$@" || rc=$?
    echo "(exit $rc: $what)"
}

preflight "promote" check --base "$url/good" --family chat \
    --model gpt-4.1-mini --operator "Demo Operator" \
    --change-ticket CHG-DEMO-1 --rollback-owner demo-oncall \
    --access-log "$prefix/logs/llm.json.log"

preflight "rollback: the candidate's provider fails" check \
    --base "$url/broken" --family chat --model gpt-4.1-mini \
    --operator "Demo Operator" --rollback-owner demo-oncall \
    --access-log "$prefix/logs/llm.json.log"

echo
echo "== llm-preflight readiness: the paths of the messages route (its"
echo "   primary is overloaded on purpose: the route lives on its fallback)"
preflight "the fallback is ready, the primary needs review" readiness \
    --family messages --model claude-3-5-haiku \
    --primary "$url/ready/primary" --fallback "$url/ready/fallback" \
    --environment demo --operator "Demo Operator" \
    --evidence-link "file://$prefix/logs/"
