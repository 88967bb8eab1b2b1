#!/bin/bash

# bench/profile.sh: where an llm route's instructions go, function by
# function, against plain proxy_pass (make bench-profile).
#
# Debian's nginx binary has no symbols, so a profile of it puts nginx's
# own functions under "???" and attributes their cost to the module's
# callers.  This builds nginx 1.22.1 from Debian's source tarball with
# Debian's configure flags (nginx-dev's conf_flags) and symbols, builds
# the module into that tree, runs bench/run.sh against both in a short
# mode (its callgrind runs are what counts here), and prints per-request
# differences by function (bench/cgdiff.pl), self and inclusive.
#
#   bench/profile.sh               1 KB and 64 KB bodies
#   CG_SIZES=1024 bench/profile.sh
#   ROWS=60 bench/profile.sh       more functions
#
# The source tarball comes from `apt-get source --tar-only nginx`, which
# needs a deb-src line in apt's sources; without one this says which to
# add and stops.  The build is kept in build/profile/ (about 1 minute
# the first time).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
WORK=$ROOT/build/profile
NGX_SRC=${NGX_SRC:-/usr/share/nginx/src}
CG_SIZES=${CG_SIZES:-1024 65536}
CG_N1=${CG_N1:-200}
CG_N2=${CG_N2:-1000}
ROWS=${ROWS:-25}

die() { echo "profile: $*" >&2; exit 2; }
log() { echo "profile: $*"; }

for tool in valgrind callgrind_annotate apt-get make cc perl; do
    command -v $tool >/dev/null || die "$tool not found"
done
[ -f "$NGX_SRC/conf_flags" ] || die "$NGX_SRC/conf_flags missing: apt-get install nginx-dev"

version=$(/usr/sbin/nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
[ -n "$version" ] || die "cannot tell the version of /usr/sbin/nginx"

mkdir -p "$WORK"
tarball=$WORK/nginx_$version.orig.tar.gz

if [ ! -f "$tarball" ]; then
    log "fetching the nginx $version source tarball (apt-get source --tar-only)"
    (cd "$WORK" && apt-get source --download-only --tar-only "nginx" \
         > "$WORK/apt-source.log" 2>&1) || true
    if [ ! -f "$tarball" ]; then
        tail -3 "$WORK/apt-source.log" >&2
        die "no $tarball: add a deb-src line to apt's sources (for" \
            "/etc/apt/sources.list.d/debian.sources: a copy with" \
            "'Types: deb-src'), apt-get update, and run this again"
    fi
fi

src=$WORK/nginx-$version
objs=$src/objs

# the module is rebuilt whenever its sources change; nginx once, and
# again when the module's config (its list of sources) changed
if [ ! -x "$objs/nginx" ] || [ "$ROOT/config" -nt "$objs/Makefile" ]; then
    rm -rf "$src"
    tar -xzf "$tarball" -C "$WORK"
    log "configuring nginx $version with Debian's flags, symbols kept"
    (cd "$src" && . "$NGX_SRC/conf_flags" \
        && ./configure "${NGX_CONF_FLAGS[@]}" \
               --with-cc-opt="-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -Wdate-time -D_FORTIFY_SOURCE=2" \
               --with-ld-opt="-Wl,-z,relro -Wl,-z,now -fPIC" \
               --add-dynamic-module="$ROOT" > "$WORK/configure.log" 2>&1) \
        || { tail -20 "$WORK/configure.log" >&2; die "configure failed"; }
fi

log "building nginx and the module in $src"
make -s -C "$src" -f objs/Makefile -j"$(nproc)" > "$WORK/make.log" 2>&1 \
    || { tail -20 "$WORK/make.log" >&2; die "make failed"; }

log "bench/run.sh: callgrind N1=$CG_N1 N2=$CG_N2, sizes: $CG_SIZES"
out=$WORK/run.log
NGINX=$objs/nginx MODULE=$objs/ngx_http_llm_module.so KEEP=1 \
    SIZES=1024 ROUNDS=1 EXTRA_ROUNDS=0 DURATION=1 WARMUP=1 \
    CG_SIZES="$CG_SIZES" CG_N1=$CG_N1 CG_N2=$CG_N2 \
    "$BENCH_DIR/run.sh" > "$out" 2>&1 \
    || { tail -20 "$out" >&2; die "bench/run.sh failed"; }

kept=$(sed -n 's/^bench: kept //p' "$out" | tail -1)
[ -d "$kept" ] || die "no kept directory in $out"

sed -n '/^== callgrind/,/^$/p' "$out"

for size in $CG_SIZES; do
    for mode in self inclusive; do
        echo
        "$BENCH_DIR/cgdiff.pl" "$kept" "$size" "$CG_N1" "$CG_N2" "$mode" "$ROWS"
    done
done

rm -rf "$kept"
