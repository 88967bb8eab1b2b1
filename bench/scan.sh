#!/bin/bash
# Throughput of the request body scan against a full yajl parse, on the
# 1 KB and 64 KB chat bodies of the main benchmark.  See bench/README.md.
#
#   bench/scan.sh          (also run by make bench)
#
# Then the scan's user-space instructions per byte under callgrind (the
# body scanned 20 times in 8 KB pieces, less a run that scans it 0 times).
#
# Environment: SIZES="1024 65536", CPU=1 (the core to pin to),
# BUILD=build (the nginx tree configured by make), SIMD=0|1 (how nested
# values are skipped: scalar, AVX2; default: the best the CPU has).

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case ${BUILD:-build} in
    /*) B=$BUILD/nginx ;;
    *)  B=$ROOT/${BUILD:-build}/nginx ;;
esac
SIZES=${SIZES:-1024 65536}
CPU=${CPU:-1}
TMP=$(mktemp -d /tmp/llm-scan.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

[ -f "$B/objs/ngx_auto_config.h" ] || { echo "scan: run make first" >&2; exit 2; }

gcc -O2 -I"$B/src/core" -I"$B/src/event" -I"$B/src/event/modules" \
    -I"$B/src/os/unix" -I"$B/objs" -I"$ROOT/src" \
    "$ROOT/bench/scan_bench.c" "$ROOT/src/ngx_http_llm_scan.c" "$ROOT/src/ngx_http_llm_scan_simd.c" "$ROOT/src/ngx_http_llm_json_string.c" -lyajl \
    -o "$TMP/scan_bench"

echo "== request body scan, MB/s (median of 7; goal: >= 3000)"
printf "%-8s  %10s  %10s  %10s  %7s\n" bytes scan "scan 8k" yajl "scan/yajl"

for size in $SIZES; do
    perl "$ROOT/bench/mkbody.pl" "$size" "$TMP/body-$size.json"
    taskset -c "$CPU" "$TMP/scan_bench" "$TMP/body-$size.json" 8192
done

command -v valgrind >/dev/null || { echo "scan: no valgrind, no instruction count"; exit 0; }

ir() {
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" \
        --log-file="$TMP/cg.log" "$TMP/scan_bench" "$1" 8192 "$2"
    sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$TMP/cg.out" | head -1
}

echo "== request body scan, instructions per byte (callgrind; goal at 64 KB: <= 0.5)"
for size in $SIZES; do
    i0=$(ir "$TMP/body-$size.json" 0)
    i1=$(ir "$TMP/body-$size.json" 20)
    awk -v s="$size" -v a="$i0" -v b="$i1" 'BEGIN {
        printf "%-8d  %8.0f instructions a scan  %5.2f a byte\n", s,
            (b - a) / 20, (b - a) / 20 / s }'
done
