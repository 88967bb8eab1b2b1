#!/bin/bash
# Throughput of the request body scan against a full yajl parse, on the
# 1 KB and 64 KB chat bodies of the main benchmark.  See bench/README.md.
#
#   bench/scan.sh          (also run by make bench)
#
# Environment: SIZES="1024 65536", CPU=1 (the core to pin to).

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/build/nginx
SIZES=${SIZES:-1024 65536}
CPU=${CPU:-1}
TMP=$(mktemp -d /tmp/llm-scan.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

[ -f "$B/objs/ngx_auto_config.h" ] || { echo "scan: run make first" >&2; exit 2; }

gcc -O2 -I"$B/src/core" -I"$B/src/event" -I"$B/src/event/modules" \
    -I"$B/src/os/unix" -I"$B/objs" -I"$ROOT/src" \
    "$ROOT/bench/scan_bench.c" "$ROOT/src/ngx_http_llm_scan.c" -lyajl \
    -o "$TMP/scan_bench"

echo "== request body scan, MB/s (median of 7; goal: >= 3000)"
printf "%-8s  %10s  %10s  %10s  %7s\n" bytes scan "scan 8k" yajl "scan/yajl"

for size in $SIZES; do
    perl "$ROOT/bench/mkbody.pl" "$size" "$TMP/body-$size.json"
    taskset -c "$CPU" "$TMP/scan_bench" "$TMP/body-$size.json" 8192
done
