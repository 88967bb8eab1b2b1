#!/bin/sh
# Debian's nginx with the gcc sanitizer runtimes preloaded, for a module
# built with -fsanitize=address,undefined (make test-asan).  Reports go to
# stderr, which nginx points at its error log.
#
# detect_leaks=0: nginx itself frees its cycle pools only partly at exit,
# by design; leaks are a valgrind question here.

LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0}"
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
export LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS

exec /usr/sbin/nginx "$@"
