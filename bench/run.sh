#!/bin/bash
# Side-by-side benchmark: plain proxy_pass (A) against an llm_route (B) to
# the same mock provider, in one nginx with one worker.  See bench/README.md.
#
#   bench/run.sh                 (or: make bench)
#
# Environment:
#   ROUNDS=5          measured rounds per body size (each runs A and B)
#   EXTRA_ROUNDS=$ROUNDS  rounds that may be added to replace noisy ones
#   DURATION=8        seconds per wrk run (a plain number, or "8s")
#   WARMUP=3          seconds of the warmup run of each candidate
#   CONNECTIONS=32    wrk connections (-t1)
#   SIZES="1024 65536"  request body sizes in bytes
#   SKIP_CALLGRIND=1  skip the instruction counts
#   CG_N1=1000 CG_N2=5000  request counts of the two callgrind runs
#   CG_SIZES="1024 65536" body sizes counted under callgrind
#   QUICK=1           smoke run: 2 short rounds, small callgrind counts
#   KEEP=1            keep the temp dir (configs, logs, callgrind files)
#   NOISE_LIMIT=3     % of cpu 0 busy with other work that marks a run noisy
#   NGINX=/usr/sbin/nginx  MODULE=build/ngx_http_llm_module.so
#   BUDGET=1          B with llm_zone, llm_retry_budget and llm_cooldown
#   REDIS=1           BUDGET=1 plus llm_redis to a local redis-server (on the
#                     load cpu); prints Redis commands/s next to B's req/s
#
# Exits 0 whatever the numbers are (it is a measuring tool, not a test);
# non-zero only if the setup failed (nginx did not start, B does not answer
# like A, a tool is missing, ...).

# shellcheck disable=SC2059,SC2317
# (printf formats kept in variables for aligned tables; functions run by trap)

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

NGINX=${NGINX:-/usr/sbin/nginx}
MODULE=${MODULE:-$ROOT/build/ngx_http_llm_module.so}

# nginx reads NGINX from its environment (sockets inherited in a binary
# upgrade): not for the nginx processes started here
export -n NGINX

if [ "${QUICK:-0}" = 1 ]; then
    ROUNDS=${ROUNDS:-2}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-1}
    CG_N1=${CG_N1:-100}
    CG_N2=${CG_N2:-400}
    CG_SIZES=${CG_SIZES:-1024}
fi
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
DURATION=${DURATION%s}
WARMUP=${WARMUP:-3}
WARMUP=${WARMUP%s}
CONNECTIONS=${CONNECTIONS:-32}
SIZES=${SIZES:-1024 65536}
CG_N1=${CG_N1:-1000}
CG_N2=${CG_N2:-5000}
CG_SIZES=${CG_SIZES:-1024 65536}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
EXTRA_ROUNDS=${EXTRA_ROUNDS:-$ROUNDS}

PROXY_CPU=0         # the proxy under test (master and worker)
LOAD_CPU=1          # wrk and the mock provider

die() { echo "bench: setup failed: $*" >&2; exit 2; }
log() { echo "bench: $*"; }

[[ $EXTRA_ROUNDS =~ ^[0-9]+$ ]] || die "EXTRA_ROUNDS=$EXTRA_ROUNDS: not a number"
for n in ROUNDS DURATION WARMUP CONNECTIONS CG_N1 CG_N2; do
    if ! [[ ${!n} =~ ^[0-9]+$ ]] || [ "${!n}" -eq 0 ]; then
        die "$n=${!n}: not a positive number"
    fi
done
[ "$CG_N2" -gt "$CG_N1" ] || die "CG_N2 must be larger than CG_N1"

for tool in wrk taskset curl perl getconf timeout; do
    command -v $tool >/dev/null || die "$tool not found (make bench installs it)"
done
if [ "$SKIP_CALLGRIND" != 1 ]; then
    command -v valgrind >/dev/null || die "valgrind not found (or SKIP_CALLGRIND=1)"
fi
[ -x "$NGINX" ] || die "$NGINX not found"
[ -f "$MODULE" ] || die "$MODULE not found: run make first"
MODULE=$(cd "$(dirname "$MODULE")" && pwd)/$(basename "$MODULE")

ncpu=$(getconf _NPROCESSORS_ONLN)
[ "$ncpu" -ge 2 ] || die "needs at least 2 CPUs (proxy on one, load on another)"
CLK_TCK=$(getconf CLK_TCK)


# --- temp dir and cleanup ---------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/llm-bench.XXXXXX")
PIDS=()             # processes we started, stopped by cleanup

stop_pid() {
    # stop one process we started (an nginx master, valgrind, wrk):
    # graceful first, then fast, then kill; an nginx master's workers too
    local pid=$1 sig i children
    kill -0 "$pid" 2>/dev/null || return 0
    children=$(pgrep -P "$pid" 2>/dev/null || true)
    for sig in QUIT TERM KILL; do
        kill -s $sig "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break 2
            sleep 0.1
        done
    done
    # reap it if it is our child
    wait "$pid" 2>/dev/null || true
    for i in $children; do kill -s KILL "$i" 2>/dev/null || true; done
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "${KEEP:-0}" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:0",
                                      Listen => 1, ReuseAddr => 1) or die $!;
        print $s->sockport, "\n";'
}

wait_port() {
    # wait until 127.0.0.1:PORT accepts connections while PID lives
    local port=$1 pid=$2 i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

MOCK_PORT=${MOCK_PORT:-$(free_port)}
PROXY_PORT=${PROXY_PORT:-$(free_port)}
while [ "$PROXY_PORT" = "$MOCK_PORT" ]; do PROXY_PORT=$(free_port); done
if [ "${REDIS:-0}" = 1 ]; then
    BUDGET=1
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
        || die "redis-server not found (make bench installs it)"
    REDIS_PORT=$(free_port)
    while [ "$REDIS_PORT" = "$MOCK_PORT" ] || [ "$REDIS_PORT" = "$PROXY_PORT" ]; do
        REDIS_PORT=$(free_port)
    done
fi

user_directive=""
[ "$(id -u)" = 0 ] && user_directive="user root;"


# --- the mock provider --------------------------------------------------------

# ~600 bytes of an OpenAI chat.completion; no "$" (nginx variables) or "'"
MOCK_BODY='{"id":"chatcmpl-9bench0000000000000000000001","object":"chat.completion","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0000bench","choices":[{"index":0,"message":{"role":"assistant","content":"CUBIC backs off on loss and regrows its window along a cubic curve; BBR paces at its estimate of bottleneck bandwidth and round-trip time, so random loss does not slow it down. On shallow buffers BBR gets more throughput but can crowd out loss-based flows. Watch retransmits and RTT."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":231,"completion_tokens":64,"total_tokens":295}}'
printf '%s' "$MOCK_BODY" > "$TMP/mock-body.json"

mkdir -p "$TMP/mock" "$TMP/proxy" "$TMP/proxy-cg"
for d in mock proxy proxy-cg; do mkdir -p "$TMP/$d/tmp" "$TMP/$d/logs"; done

temp_paths() {
    local d=$1
    cat <<EOF
    client_body_temp_path $d/tmp/body;
    proxy_temp_path       $d/tmp/proxy;
    fastcgi_temp_path     $d/tmp/fastcgi;
    uwsgi_temp_path       $d/tmp/uwsgi;
    scgi_temp_path        $d/tmp/scgi;
EOF
}

cat > "$TMP/mock/nginx.conf" <<EOF
$user_directive
worker_processes 1;
error_log $TMP/mock/logs/error.log warn;
pid $TMP/mock/nginx.pid;

events { worker_connections 4096; }

http {
    access_log off;
$(temp_paths "$TMP/mock")
    client_body_buffer_size 128k;
    keepalive_requests 10000000;
    keepalive_timeout 300s;

    server {
        listen 127.0.0.1:$MOCK_PORT backlog=4096;

        location / {
            default_type application/json;
            return 200 '$MOCK_BODY';
        }
    }
}
EOF


# --- the proxy under test ------------------------------------------------------

proxy_conf() {
    # $1: directory; $2: extra main-level directives
    local d=$1 extra=$2
    cat <<EOF
load_module $MODULE;
$user_directive
$extra
worker_processes 1;
error_log $d/logs/error.log warn;
pid $d/nginx.pid;

events { worker_connections 4096; }

http {
    access_log off;
$(temp_paths "$d")
    # both bodies (1 KB, 64 KB) stay in memory in A and in B
    client_body_buffer_size 128k;
    client_max_body_size 1m;
    # wrk's connections stay open for the whole run
    keepalive_requests 10000000;
    keepalive_timeout 300s;

$(budget_zone)

    upstream mock_upstream {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 32;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }

    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;

        # A: plain proxy_pass
        location = /a/v1/chat/completions {
            proxy_pass http://mock_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # B: the same upstream through an llm route
        location = /b/v1/chat/completions {
            llm_route chat;
            llm_target /_llm/mock;
$(budget_conf)
        }

        location /_llm/mock {
            internal;
            proxy_pass http://mock_upstream/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# BUDGET=1: B counts in a shared zone under a retry budget and cooldowns
# (issue 5: the success path with a budget within 5% of A)
budget_conf() {
    [ "${BUDGET:-0}" = 1 ] || return 0
    echo "            llm_retry_budget ratio=0.2 min=10/s window=10s;"
    echo "            llm_cooldown fails=5 window=10s time=10s;"
}

budget_zone() {
    [ "${BUDGET:-0}" = 1 ] && echo "    llm_zone llm:1m;"
    # (not in the callgrind runs: master_process off has no Redis link)
    [ "${REDIS:-0}" = 1 ] && echo "    llm_redis 127.0.0.1:$REDIS_PORT sync=250ms;"
    return 0
}

redis_calls() {
    # commands Redis has run so far, but the INFO commands asking
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' \
        | awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" { n += $3 }
                         END { print n + 0 }'
}

proxy_conf "$TMP/proxy" "" > "$TMP/proxy/nginx.conf"
proxy_conf "$TMP/proxy-cg" "master_process off;" \
    > "$TMP/proxy-cg/nginx.conf"

for d in mock proxy proxy-cg; do
    "$NGINX" -t -q -p "$TMP/$d" -c "$TMP/$d/nginx.conf" -e "$TMP/$d/logs/error.log" \
        > "$TMP/$d/logs/t.log" 2>&1 \
        || { cat "$TMP/$d/logs/t.log" >&2; die "nginx -t failed for $d"; }
done

# bodies
for size in $SIZES; do
    "$BENCH_DIR/mkbody.pl" "$size" "$TMP/body-$size.json" || die "mkbody $size"
done
if [ "$SKIP_CALLGRIND" != 1 ]; then
    for size in $CG_SIZES; do
        [ -f "$TMP/body-$size.json" ] || "$BENCH_DIR/mkbody.pl" "$size" "$TMP/body-$size.json" \
            || die "mkbody $size"
    done
fi

start_nginx() {
    # start_nginx NAME CPU [valgrind args...]: foreground nginx pinned to CPU;
    # sets STARTED_PID
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" "$NGINX" -p "$TMP/$name" -c "$TMP/$name/nginx.conf" \
        -e "$TMP/$name/logs/error.log" -g "daemon off;" \
        > "$TMP/$name/logs/stdout.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

human_size() {
    if [ $(($1 % 1024)) = 0 ]; then echo "$(($1 / 1024))KB"; else echo "${1}B"; fi
}

log "temp dir $TMP, mock 127.0.0.1:$MOCK_PORT (cpu $LOAD_CPU)," \
    "proxy 127.0.0.1:$PROXY_PORT (cpu $PROXY_CPU)"

if [ "${REDIS:-0}" = 1 ]; then
    mkdir -p "$TMP/redis"
    taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --dir "$TMP/redis" \
        --logfile "$TMP/redis/redis.log" &
    PIDS+=("$!")
    wait_port "$REDIS_PORT" "$!" || die "redis-server did not start"
    log "redis 127.0.0.1:$REDIS_PORT (cpu $LOAD_CPU), llm_redis sync=250ms"
fi

# the mock is shared by the wrk runs and the callgrind runs
start_nginx mock "$LOAD_CPU"
MOCK_PID=$STARTED_PID
wait_port "$MOCK_PORT" "$MOCK_PID" \
    || { cat "$TMP/mock/logs/error.log" >&2; die "mock nginx did not start"; }


# --- callgrind: user-space instructions per request -------------------------

declare -A IR          # IR[cand,size,N] total Ir of the whole process

callgrind_one() {
    # callgrind_one CAND SIZE N: Ir of nginx (single process) serving
    # exactly N requests; sets CG_IR
    local cand=$1 size=$2 n=$3 out pid res
    out="$TMP/callgrind.$cand.$size.$n.out"
    : > "$TMP/proxy-cg/logs/error.log"
    start_nginx proxy-cg "$PROXY_CPU" \
        valgrind --tool=callgrind --callgrind-out-file="$out" \
                 --log-file="$TMP/proxy-cg/logs/valgrind.$cand.$size.$n.log"
    pid=$STARTED_PID
    wait_port "$PROXY_PORT" "$pid" \
        || { cat "$TMP/proxy-cg/logs/error.log" >&2; die "nginx under valgrind did not start"; }
    res=$(timeout 600 "$BENCH_DIR/client.pl" "$PROXY_PORT" "/$cand/v1/chat/completions" \
              "$TMP/body-$size.json" "$n") \
        || die "callgrind client for $cand $size N=$n: ${res:-failed}"
    case $res in
        *"failed=0 reconnects=0") ;;
        *) die "callgrind client for $cand $size N=$n: $res" ;;
    esac
    stop_pid "$pid"
    CG_IR=$(sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$out" | head -1)
    [ -n "$CG_IR" ] || die "no Ir total in $out"
}

CG_DONE=0
if [ "$SKIP_CALLGRIND" != 1 ]; then
    log "callgrind: N1=$CG_N1 N2=$CG_N2 requests, sizes: $CG_SIZES"
    for size in $CG_SIZES; do
        for cand in a b; do
            for n in "$CG_N1" "$CG_N2"; do
                t0=$SECONDS
                callgrind_one "$cand" "$size" "$n"
                IR[$cand,$size,$n]=$CG_IR
                log "  callgrind $(human_size "$size") ${cand^^} N=$n: Ir=$CG_IR" \
                    "($((SECONDS - t0))s)"
            done
        done
    done
    CG_DONE=1
fi


# --- the proxy under test, for wrk ---------------------------------------------

start_nginx proxy "$PROXY_CPU"
PROXY_PID=$STARTED_PID
wait_port "$PROXY_PORT" "$PROXY_PID" \
    || { cat "$TMP/proxy/logs/error.log" >&2; die "proxy nginx did not start"; }

WORKER_PID=""
for ((i = 0; i < 50; i++)); do
    WORKER_PID=$(pgrep -P "$PROXY_PID" || true)
    [ -n "$WORKER_PID" ] && break
    sleep 0.1
done
if [ -z "$WORKER_PID" ] || [ "$(wc -w <<< "$WORKER_PID")" != 1 ]; then
    die "expected one proxy worker, found: '${WORKER_PID}'"
fi

# affinity as intended?
aff=$(taskset -cp "$WORKER_PID" | sed 's/.*: *//')
[ "$aff" = "$PROXY_CPU" ] || die "proxy worker affinity is '$aff', not $PROXY_CPU"


# --- does B answer like A? ---------------------------------------------------

check() {
    # check CAND SIZE: a POST answers 200 with exactly the mock's body
    local cand=$1 size=$2 code
    code=$(curl -sS -o "$TMP/check.out" -w '%{http_code}' --max-time 10 \
               -H 'Content-Type: application/json' \
               --data-binary @"$TMP/body-$size.json" \
               "http://127.0.0.1:$PROXY_PORT/$cand/v1/chat/completions") \
        || die "curl to ${cand^^} failed"
    [ "$code" = 200 ] || die "${cand^^} answered $code to a $(human_size "$size") POST, not 200"
    cmp -s "$TMP/check.out" "$TMP/mock-body.json" \
        || die "${cand^^} answered 200 but not with the mock's body"
}

for size in $SIZES; do check a "$size"; check b "$size"; done

# B is really the module's route: a GET is refused there (405), while A
# passes it on to the mock (200)
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
           "http://127.0.0.1:$PROXY_PORT/b/v1/chat/completions") || die "curl GET B failed"
[ "$code" = 405 ] || die "GET to B answered $code, not 405: is llm_route active?"
log "checked: A and B answer 200 with the mock's body; GET on B is 405"


# --- wrk runs --------------------------------------------------------------

cpu_ticks() {
    # utime + stime of a process, in clock ticks
    local s
    s=$(< "/proc/$1/stat")
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $(( ${12} + ${13} ))
}

core_ticks() {
    # busy time of one CPU (user nice system irq softirq), in clock ticks:
    # unlike the worker's utime + stime it includes the network softirq
    # work done on that CPU (loopback delivery), which the kernel does not
    # charge to any process
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

declare -A RPS P99 CPU CORE UTIL ERR   # [cand,size,round]
REDIS_LOG=""        # REDIS=1: "cand size req/s redis-commands/s" per run
ERRORS=0
NOISY_RUNS=0
NOISE_LIMIT=${NOISE_LIMIT:-3}   # % of CPU 0 used by others that marks a run
[[ $NOISE_LIMIT =~ ^[0-9]+$ ]] || die "NOISE_LIMIT=$NOISE_LIMIT: not a number"

wrk_run() {
    # wrk_run CAND SIZE SECONDS: one run; sets R_* results
    local cand=$1 size=$2 secs=$3 t0 t1 c0 c1 r0 r1 out line
    local url="http://127.0.0.1:$PROXY_PORT/$cand/v1/chat/completions"
    [ "${REDIS:-0}" = 1 ] && r0=$(redis_calls)
    t0=$(cpu_ticks "$WORKER_PID")
    c0=$(core_ticks "$PROXY_CPU")
    out=$(BENCH_BODY="$TMP/body-$size.json" timeout $((secs + 60)) \
              taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" \
              --latency -s "$BENCH_DIR/post.lua" "$url" 2>&1) \
        || { echo "$out" >&2; die "wrk failed"; }
    t1=$(cpu_ticks "$WORKER_PID")
    c1=$(core_ticks "$PROXY_CPU")
    [ "${REDIS:-0}" = 1 ] && r1=$(redis_calls)
    echo "$out" >> "$TMP/wrk.log"
    line=$(grep '^BENCH ' <<< "$out") || { echo "$out" >&2; die "no summary from wrk"; }
    # shellcheck disable=SC2034   # all of the BENCH line, some unused
    local requests duration_us bytes p50_us p99_us max_us
    local connect read write status timeout
    eval "$(sed 's/^BENCH //; s/ /;/g' <<< "$line")"
    [ "$requests" -gt 0 ] || die "wrk completed no request: $line"
    R_RPS=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    R_P99=$(awk -v p="$p99_us" 'BEGIN { printf "%.3f", p / 1000 }')
    R_CPU=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v r="$requests" \
                'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
    R_CORE=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v r="$requests" \
                 'BEGIN { printf "%.2f", t / hz * 1e6 / r }')
    R_REDIS=""
    if [ "${REDIS:-0}" = 1 ]; then
        R_REDIS=$(awk -v n=$((r1 - r0)) -v d="$duration_us" \
                      'BEGIN { printf "%.1f", n / (d / 1e6) }')
        REDIS_LOG="$REDIS_LOG$cand $size $R_RPS $R_REDIS
"
    fi
    R_UTIL=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v d="$duration_us" \
                 'BEGIN { printf "%.0f", t / hz * 100 / (d / 1e6) }')
    # CPU 0 busy with something other than the worker: other processes on
    # this machine disturb the run
    R_OTHER=$(awk -v t=$(((c1 - c0) - (t1 - t0))) -v hz="$CLK_TCK" -v d="$duration_us" \
                  'BEGIN { o = t / hz * 100 / (d / 1e6); printf "%.0f", o < 0 ? 0 : o }')
    R_ERR=$((connect + read + write + status + timeout))
    R_ERRTEXT="non-2xx=$status connect=$connect read=$read write=$write timeout=$timeout"
    # wrk's own text line, as a cross-check of the Lua counts
    if grep -q 'Non-2xx or 3xx responses' <<< "$out"; then
        [ "$R_ERR" -gt 0 ] || R_ERR=1
        R_ERRTEXT="$R_ERRTEXT; $(grep 'Non-2xx or 3xx responses' <<< "$out" | sed 's/^ *//')"
    fi
}

median() {
    # median of the arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2];
              else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

minmax() {
    printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 }
        END { printf "%s..%s", lo, hi }'
}

ratio() { awk -v b="$1" -v a="$2" 'BEGIN { printf "%.3f", b / a }'; }

row_fmt='%-5s %-5s %-4s %9s %9s %8s %11s %5s %6s  %s\n'

notes() {
    # the last column of a run's line
    local n=""
    [ "$R_ERR" = 0 ] || n="!!! ERRORS: $R_ERRTEXT"
    [ "$R_OTHER" -le "$NOISE_LIMIT" ] || n="${n:+$n; }noisy (cpu $PROXY_CPU busy elsewhere)"
    [ -z "$R_REDIS" ] || n="${n:+$n; }redis ${R_REDIS} cmd/s"
    echo "${n:--}"
}

log "wrk: $ROUNDS rounds (up to $EXTRA_ROUNDS more to replace noisy ones) x ${DURATION}s" \
    "per candidate and size, -t1 -c$CONNECTIONS, warmup ${WARMUP}s"
echo
echo "us/req: the proxy worker's utime+stime per request; cpu$PROXY_CPU us/req: all busy"
echo "time of cpu $PROXY_CPU per request; wkr%: worker CPU / wall time; oth%: cpu $PROXY_CPU"
echo "busy with anything but the worker / wall time (> $NOISE_LIMIT: run marked noisy)"
printf "$row_fmt" round size cand "req/s" "p99 ms" "us/req" "cpu$PROXY_CPU us/req" "wkr%" \
    "oth%" notes

declare -A NROUNDS USED QUIET_N   # per size: rounds run, rounds summarised, quiet ones

for size in $SIZES; do
    sl=$(human_size "$size")
    for cand in a b; do
        wrk_run "$cand" "$size" "$WARMUP"
        printf "$row_fmt" warm "$sl" "${cand^^}" "$R_RPS" "$R_P99" "$R_CPU" "$R_CORE" \
            "$R_UTIL" "$R_OTHER" "$(notes)"
    done
    quiet=0 quiet_rounds="" round=0
    # a round is A and B back to back; a round with a noisy run is
    # repeated, up to EXTRA_ROUNDS times in all
    while ((quiet < ROUNDS && round < ROUNDS + EXTRA_ROUNDS)); do
        round=$((round + 1))
        # alternate which candidate goes first (AB, BA, ...) against drift
        if ((round % 2)); then order="a b"; else order="b a"; fi
        round_noisy=0
        for cand in $order; do
            wrk_run "$cand" "$size" "$DURATION"
            RPS[$cand,$size,$round]=$R_RPS
            P99[$cand,$size,$round]=$R_P99
            CPU[$cand,$size,$round]=$R_CPU
            CORE[$cand,$size,$round]=$R_CORE
            UTIL[$cand,$size,$round]=$R_UTIL
            ERR[$cand,$size,$round]=$R_ERR
            [ "$R_ERR" = 0 ] || ERRORS=$((ERRORS + 1))
            if [ "$R_OTHER" -gt "$NOISE_LIMIT" ]; then
                NOISY_RUNS=$((NOISY_RUNS + 1))
                round_noisy=1
            fi
            printf "$row_fmt" "$round" "$sl" "${cand^^}" "$R_RPS" "$R_P99" "$R_CPU" \
                "$R_CORE" "$R_UTIL" "$R_OTHER" "$(notes)"
        done
        if [ "$round_noisy" = 0 ]; then
            quiet=$((quiet + 1))
            quiet_rounds="$quiet_rounds $round"
        fi
    done
    NROUNDS[$size]=$round
    QUIET_N[$size]=$quiet
    # summarise the quiet rounds if there are enough of them (3, or ROUNDS
    # if fewer are asked for), else all rounds
    if ((quiet >= (ROUNDS < 3 ? ROUNDS : 3))); then
        USED[$size]=${quiet_rounds# }
    else
        USED[$size]=$(seq -s ' ' 1 "$round")
    fi
done


# --- summary ---------------------------------------------------------------

declare -A M_RPS M_P99 M_CPU M_CORE M_ERR
echo
echo "== medians, wrk -t1 -c$CONNECTIONS ${DURATION}s runs," \
     "proxy worker on cpu $PROXY_CPU, wrk + mock on cpu $LOAD_CPU =="
sum_fmt='%-5s %-4s %9s %9s %8s %11s %5s  %-13s %s\n'
printf "$sum_fmt" size cand "req/s" "p99 ms" "us/req" "cpu$PROXY_CPU us/req" "wkr%" \
    "req/s range" "rounds used"
for size in $SIZES; do
    used=${USED[$size]}
    nused=$(wc -w <<< "$used")
    if [ "${QUIET_N[$size]}" = "$nused" ]; then
        unote="$nused quiet of ${NROUNDS[$size]}"
    else
        unote="all ${NROUNDS[$size]}, only ${QUIET_N[$size]} quiet: NOISY"
    fi
    e=0
    for ((round = 1; round <= NROUNDS[$size]; round++)); do
        for cand in a b; do
            [ "${ERR[$cand,$size,$round]}" = 0 ] || e=$((e + 1))
        done
    done
    M_ERR[$size]=$e
    [ "$e" = 0 ] || unote="$unote; !!! $e runs with errors"
    for cand in a b; do
        r=() p=() c=() k=() u=()
        for round in $used; do
            r+=("${RPS[$cand,$size,$round]}")
            p+=("${P99[$cand,$size,$round]}")
            c+=("${CPU[$cand,$size,$round]}")
            k+=("${CORE[$cand,$size,$round]}")
            u+=("${UTIL[$cand,$size,$round]}")
        done
        M_RPS[$cand,$size]=$(median "${r[@]}")
        M_P99[$cand,$size]=$(median "${p[@]}")
        M_CPU[$cand,$size]=$(median "${c[@]}")
        M_CORE[$cand,$size]=$(median "${k[@]}")
        printf "$sum_fmt" "$(human_size "$size")" "${cand^^}" \
            "$(printf %.0f "${M_RPS[$cand,$size]}")" \
            "$(printf %.3f "${M_P99[$cand,$size]}")" \
            "$(printf %.2f "${M_CPU[$cand,$size]}")" \
            "$(printf %.2f "${M_CORE[$cand,$size]}")" \
            "$(printf %.0f "$(median "${u[@]}")")" \
            "$(minmax "${r[@]}")" "$unote"
    done
done

verdict() {
    # verdict VALUE OP LIMIT SIZE
    local v=$1 op=$2 lim=$3 size=$4 res
    if [ "${M_ERR[$size]}" != 0 ]; then echo "INVALID (runs with errors)"; return; fi
    res=$(awk -v v="$v" -v l="$lim" -v op="$op" \
              'BEGIN { print (op == ">=" ? v >= l : v <= l) ? "PASS" : "FAIL" }')
    [ "${QUIET_N[$size]}" = "$(wc -w <<< "${USED[$size]}")" ] || res="$res (noisy)"
    echo "$res"
}

paired() {
    # paired ARRAY SIZE: "median min..max" of the per-round B/A ratios
    local -n arr=$1
    local size=$2 round x=()
    for round in ${USED[$size]}; do
        x+=("$(ratio "${arr[b,$size,$round]}" "${arr[a,$size,$round]}")")
    done
    echo "$(printf %.3f "$(median "${x[@]}")") $(minmax "${x[@]}")"
}

echo
echo "== B/A ratios against the goals of bench/README.md (over the rounds used above) =="
echo "of medians: ratio of the medians above; paired: median (and range) of the"
echo "B/A ratios of each round, whose A and B ran back to back; the verdict uses"
echo "the paired median, which is less sensitive to drift between rounds"
rat_fmt='%-5s %-13s %10s %8s %-13s %-9s %s\n'
printf "$rat_fmt" size metric "of medians" paired "paired range" goal verdict
for size in $SIZES; do
    sl=$(human_size "$size")
    for metric in rps cpu core p99; do
        case $metric in
            rps)  m="req/s";   aname=RPS;  op=">="; lim=0.95 ;;
            cpu)  m="CPU/req"; aname=CPU;  op="<="; lim=1.05 ;;
            core) m="cpu$PROXY_CPU/req"; aname=CORE; op="" ;;
            p99)  m="p99";     aname=P99;  op="" ;;
        esac
        case $size,$metric in
            1024,rps|1024,cpu) ;;
            65536,cpu) lim=1.50 ;;
            *) op="" ;;
        esac
        declare -n mref=M_$aname
        of=$(ratio "${mref[b,$size]}" "${mref[a,$size]}")
        unset -n mref
        read -r pm pr <<< "$(paired "$aname" "$size")"
        if [ -n "$op" ]; then
            printf "$rat_fmt" "$sl" "$m" "$of" "$pm" "$pr" "$op $lim" \
                "$(verdict "$pm" "$op" "$lim" "$size")"
        else
            printf "$rat_fmt" "$sl" "$m" "$of" "$pm" "$pr" "-" "(no goal)"
        fi
    done
done

if [ "$CG_DONE" = 1 ]; then
    echo
    echo "== callgrind: user-space instructions per request" \
         "((Ir(N2) - Ir(N1)) / (N2 - N1), N1=$CG_N1, N2=$CG_N2) =="
    printf '%-5s %-4s %14s %14s %12s\n' size cand "Ir(N1)" "Ir(N2)" "instr/req"
    for size in $CG_SIZES; do
        for cand in a b; do
            a1=${IR[$cand,$size,$CG_N1]} a2=${IR[$cand,$size,$CG_N2]}
            per=$(awk -v x="$a1" -v y="$a2" -v n1="$CG_N1" -v n2="$CG_N2" \
                      'BEGIN { printf "%.0f", (y - x) / (n2 - n1) }')
            eval "IPR_$cand=$per"
            printf '%-5s %-4s %14s %14s %12s\n' "$(human_size "$size")" "${cand^^}" \
                "$a1" "$a2" "$per"
        done
        # shellcheck disable=SC2154
        printf '%-5s %-4s %14s %14s %12s   (a plain subrequest: bench/floor.sh)\n' \
            "$(human_size "$size")" "B/A" "" "" "$(ratio "$IPR_b" "$IPR_a")"
    done
fi

# REDIS=1: Redis' load follows the nodes and sync=, not the request rate
# (warmup runs included: they ran at other rates)
if [ "${REDIS:-0}" = 1 ]; then
    echo
    echo "== Redis commands/s during the B runs (one node, llm_redis sync=250ms) =="
    printf '%s' "$REDIS_LOG" | awk '$1 == "b" {
            n++; if (!n1 || $3 < rlo) rlo = $3; if ($3 > rhi) rhi = $3;
            if (!n1 || $4 < clo) clo = $4; if ($4 > chi) chi = $4; n1 = 1 }
        END { if (n) printf "%d runs: %d..%d req/s, %.1f..%.1f Redis commands/s\n",
                            n, rlo, rhi, clo, chi }'
    echo "(at most 9 per route and 1 per tick of 250ms, plus 5 a second for the"
    echo " node's heartbeat as Redis counts its script: 45/s for one route)"
fi

# anything the proxy logged at warn or above (e.g. a body buffered to a
# temporary file) is worth knowing
if [ -s "$TMP/proxy/logs/error.log" ]; then
    echo
    echo "== proxy error log ($(wc -l < "$TMP/proxy/logs/error.log") lines), first 10 =="
    head -10 "$TMP/proxy/logs/error.log"
fi

if [ "$NOISY_RUNS" != 0 ]; then
    echo
    echo "note: $NOISY_RUNS runs were noisy: cpu $PROXY_CPU was more than $NOISE_LIMIT% busy with"
    echo "other work than the proxy worker (other processes on this machine);"
    echo "noisy rounds are left out of the summary when enough quiet ones remain."
fi

if [ "$ERRORS" != 0 ]; then
    echo
    echo "!!! $ERRORS wrk runs had errors (non-2xx answers or socket errors):"
    echo "!!! the numbers above are not trustworthy; see the per-run lines."
fi

exit 0
