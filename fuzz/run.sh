#!/bin/bash
# make fuzz: the scan and classifier, the answer reader, then the JSON
# string decoder, under libFuzzer with ASan + UBSan.
#   FUZZ_SECONDS=60 (per run), FUZZ_CORPUS=fuzz/corpus (seeds, kept),
#   FUZZ_ANSWER_CORPUS=fuzz/corpus-answer (seeds of answer_fuzz),
#   FUZZ_STRING_CORPUS=fuzz/corpus-string (seeds of string_fuzz),
#   BUILD=build (the nginx tree configured by make; output in BUILD/fuzz)

set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
case ${BUILD:-build} in
    /*) BUILD_=$BUILD ;;
    *)  BUILD_=$ROOT/${BUILD:-build} ;;
esac
B=$BUILD_/nginx
SECONDS_=${FUZZ_SECONDS:-60}
CORPUS=${FUZZ_CORPUS:-$ROOT/fuzz/corpus}
ANSWER_CORPUS=${FUZZ_ANSWER_CORPUS:-$ROOT/fuzz/corpus-answer}
STRING_CORPUS=${FUZZ_STRING_CORPUS:-$ROOT/fuzz/corpus-string}
OUT=$BUILD_/fuzz

[ -f "$B/objs/ngx_auto_config.h" ] || { echo "fuzz: run make first" >&2; exit 2; }

mkdir -p "$OUT" "$OUT/corpus" "$OUT/corpus-answer" "$OUT/corpus-string"

clang -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined \
    -I"$B/src/core" -I"$B/src/event" -I"$B/src/event/modules" \
    -I"$B/src/os/unix" -I"$B/objs" -I"$ROOT/src" \
    "$ROOT/fuzz/scan_fuzz.c" "$ROOT/src/ngx_http_llm_scan.c" "$ROOT/src/ngx_http_llm_scan_simd.c" "$ROOT/src/ngx_http_llm_json_string.c" \
    "$ROOT/src/ngx_http_llm_classify.c" "$ROOT/fuzz/stubs.c" -lyajl \
    -o "$OUT/scan_fuzz"

clang -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined \
    -I"$B/src/core" -I"$B/src/event" -I"$B/src/event/modules" \
    -I"$B/src/os/unix" -I"$B/src/http" -I"$B/src/http/modules" \
    -I"$B/src/http/v2" -I"$B/objs" -I"$ROOT/src" \
    "$ROOT/fuzz/answer_fuzz.c" "$ROOT/src/ngx_http_llm_answer.c" \
    "$ROOT/src/ngx_http_llm_answer_json.c" \
    "$ROOT/src/ngx_http_llm_answer_value.c" \
    "$ROOT/src/ngx_http_llm_answer_reuse.c" \
    "$ROOT/src/ngx_http_llm_scan.c" "$ROOT/src/ngx_http_llm_scan_simd.c" "$ROOT/src/ngx_http_llm_json_string.c" "$ROOT/src/ngx_http_llm_classify.c" \
    "$ROOT/fuzz/stubs.c" -lyajl \
    -o "$OUT/answer_fuzz"

clang -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined \
    -I"$B/src/core" -I"$B/src/event" -I"$B/src/event/modules" \
    -I"$B/src/os/unix" -I"$B/src/http" -I"$B/src/http/modules" \
    -I"$B/src/http/v2" -I"$B/objs" -I"$ROOT/src" \
    "$ROOT/fuzz/string_fuzz.c" "$ROOT/src/ngx_http_llm_answer.c" \
    "$ROOT/src/ngx_http_llm_answer_json.c" \
    "$ROOT/src/ngx_http_llm_answer_value.c" \
    "$ROOT/src/ngx_http_llm_answer_reuse.c" \
    "$ROOT/src/ngx_http_llm_scan.c" "$ROOT/src/ngx_http_llm_scan_simd.c" "$ROOT/src/ngx_http_llm_json_string.c" "$ROOT/src/ngx_http_llm_classify.c" \
    "$ROOT/fuzz/stubs.c" -lyajl \
    -o "$OUT/string_fuzz"

cd "$OUT"
./scan_fuzz -max_total_time="$SECONDS_" -max_len=4096 -timeout=5 \
    corpus "$CORPUS"
./answer_fuzz -max_total_time="$SECONDS_" -max_len=4096 -timeout=5 \
    -dict="$ROOT/fuzz/answer.dict" corpus-answer "$ANSWER_CORPUS"
./string_fuzz -max_total_time="$SECONDS_" -max_len=4096 -timeout=5 \
    -dict="$ROOT/fuzz/string.dict" corpus-string "$STRING_CORPUS"
