# The callgrind harness of bench/pick.sh, bench/check_answer.sh and
# bench/sse_cg.sh, sourced by them (bash):
#
#   . "$(dirname "$0")/cg.sh"
#   cg_init pick                  # checks, $TMP, cleanup on exit
#   PORT=$(free_port)
#   ... write $TMP/nginx.conf (master_process off, listen $PORT) ...
#   cg_start cg.a.500 nginx.conf "$PORT"
#   ... make the requests ...
#   ir=$(cg_stop TERM)            # the run's total instructions (Ir)
#
# nginx runs alone (master_process off) under valgrind --tool=callgrind;
# a script runs N1, then N2 requests or streams of a candidate, each run
# a nginx of its own, and (Ir(N2) - Ir(N1)) / (N2 - N1) is the
# user-space instructions of one, without startup and shutdown.
#
# Environment: MODULE (default build/ngx_http_llm_module.so), NGINX_BIN
# or NGINX (default /usr/sbin/nginx), KEEP=1 (keep $TMP: configs, logs,
# callgrind files).

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
MODULE=${MODULE:-$REPO/build/ngx_http_llm_module.so}
NGINX_BIN=${NGINX_BIN:-${NGINX:-/usr/sbin/nginx}}
unset NGINX    # nginx reads it itself (binary upgrades)

CG_NAME=bench
CG_PID=        # nginx under valgrind, while it runs
CG_OUT=        # its callgrind file
CG_KILL=       # more pids to stop on exit (a mock)

# also inside $(...), where the EXIT trap does not run: nginx stopped
die() {
    [ -z "$CG_PID" ] || kill "$CG_PID" 2>/dev/null || true
    echo "$CG_NAME: $*" >&2
    exit 2
}

# cg_init NAME: the checks, a temp dir $TMP with logs/, the cleanup
cg_init() {
    CG_NAME=$1
    command -v valgrind >/dev/null || die "valgrind missing"
    [ -f "$MODULE" ] || die "$MODULE missing (make)"
    MODULE=$(cd "$(dirname "$MODULE")" && pwd)/$(basename "$MODULE")
    TMP=$(mktemp -d "/tmp/llm-$CG_NAME.XXXXXX")
    mkdir -p "$TMP/logs"
    trap cg_cleanup EXIT
}

cg_cleanup() {
    local p
    for p in $CG_PID $CG_KILL; do
        { kill "$p" && wait "$p"; } 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "$CG_NAME: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    return 0
}

free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, LocalAddr =>
             "127.0.0.1:0")->sockport'
}

# wait_port PORT: until something accepts there (30 s)
wait_port() {
    local i
    for i in $(seq 1 300); do
        if perl -MIO::Socket::INET -e \
            'exit !IO::Socket::INET->new("127.0.0.1:$ARGV[0]")' "$1"
        then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# cg_start NAME CONF PORT: nginx -c $TMP/CONF under callgrind, its file
# $TMP/NAME.out, until it listens on PORT
cg_start() {
    CG_OUT=$TMP/$1.out
    valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" \
        --log-file="$TMP/logs/valgrind.$1.log" \
        "$NGINX_BIN" -p "$TMP" -c "$TMP/$2" -e "$TMP/logs/error.log" \
        > "$TMP/logs/nginx.$1.out" 2>&1 &
    CG_PID=$!
    wait_port "$3" || die "nginx under valgrind did not start"
}

# cg_stop SIGNAL: stops nginx (TERM: at once, QUIT: gracefully), prints
# the run's total Ir.  The signal is sent again every 2 s: without a
# master, nginx may take it between its check of the flag and the
# epoll_wait that then blocks for good (seen under valgrind).
cg_stop() {
    local i
    for i in $(seq 1 150); do
        [ $(( i % 20 )) = 1 ] && { kill -"$1" "$CG_PID" 2>/dev/null || break; }
        # gone, or a zombie waiting for the wait below
        case $(cut -d' ' -f3 "/proc/$CG_PID/stat" 2>/dev/null) in
            ''|Z) break ;;
        esac
        sleep 0.1
    done
    wait "$CG_PID" 2>/dev/null || true
    CG_PID=
    sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$CG_OUT" | head -1
}

# cg_requests NAME CONF PORT URI N: Ir of a nginx serving exactly N
# POSTs of $TMP/body.json to URI on one connection (bench/client.pl)
cg_requests() {
    local res
    cg_start "$1" "$2" "$3"
    if ! res=$("$BENCH_DIR/client.pl" "$3" "$4" "$TMP/body.json" "$5")
    then
        die "$4: ${res:-no answer}"
    fi
    cg_stop TERM
}
