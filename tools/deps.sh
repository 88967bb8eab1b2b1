#!/bin/bash
# Install the Debian packages a make target needs; a no-op when they are
# all present.  Usage: tools/deps.sh build|test|demo|bench|asan|fuzz|deb ...

set -eu

pkgs_build="gcc make nginx nginx-dev libyajl-dev libhiredis-dev"
pkgs_build="$pkgs_build libcurl4-openssl-dev"
pkgs_test="perl redis-server curl"
# the echo module (t/harness.t loads it) and lua (t/body_readers.t reads
# the body in lua's access phase); without them those tests are skipped
pkgs_test="$pkgs_test libnginx-mod-http-echo libnginx-mod-http-lua"
# promtool (t/status.t checks the Prometheus text with it)
pkgs_test="$pkgs_test prometheus"
# node and npm (t/sdk.t runs the official SDKs, npm ci in t/sdk); Debian
# 12's nodejs 18 runs the versions pinned there.  A node installed
# otherwise (NodeSource, nvm) brings its own npm, and Debian's would
# conflict with it.
command -v npm >/dev/null 2>&1 || pkgs_test="$pkgs_test nodejs npm"
pkgs_demo="curl redis-server"
pkgs_bench="wrk valgrind curl util-linux redis-server"
pkgs_asan="clang libclang-rt-14-dev"
pkgs_fuzz="clang libclang-rt-14-dev libfuzzer-14-dev"
pkgs_deb="debhelper dpkg-dev fakeroot lintian"

want=""
for target in "$@"; do
    case $target in
        build) want="$want $pkgs_build" ;;
        test)  want="$want $pkgs_build $pkgs_test" ;;
        demo)  want="$want $pkgs_build $pkgs_demo" ;;
        bench) want="$want $pkgs_build $pkgs_bench" ;;
        asan)  want="$want $pkgs_build $pkgs_test $pkgs_asan" ;;
        fuzz)  want="$want $pkgs_build $pkgs_fuzz" ;;
        deb)   want="$want $pkgs_build $pkgs_deb" ;;
        *)     echo "deps: unknown target \"$target\"" >&2; exit 2 ;;
    esac
done

missing=""
for p in $want; do
    case " $missing " in *" $p "*) continue ;; esac
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case $status in
        *" installed") ;;
        *) missing="$missing $p" ;;
    esac
done

[ -n "$missing" ] || exit 0

echo "deps: installing:$missing"

sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "deps: not root and no sudo; install as root:" >&2
        echo "    apt-get install$missing" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps: done"
