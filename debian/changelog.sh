#!/bin/sh
# Writes debian/changelog for the version in src/ngx_http_llm_module.h
# (NGX_HTTP_LLM_VERSION), the one source of truth; CHANGES must open
# with the same version.  Run from the top of the tree:
#     debian/changelog.sh > debian/changelog

set -eu

version=$(sed -n 's/^#define NGX_HTTP_LLM_VERSION *"\(.*\)"$/\1/p' \
          src/ngx_http_llm_module.h)
[ -n "$version" ] || { echo "no NGX_HTTP_LLM_VERSION" >&2; exit 1; }

head=$(grep -m1 '^Changes with ngx_http_llm_module ' CHANGES)
changes=$(echo "$head" | awk '{ print $4 }')
if [ "$changes" != "$version" ]; then
    echo "CHANGES opens with $changes, the module is $version" >&2
    exit 1
fi

day=$(echo "$head" | awk '{ print $5, $6, $7 }')
date=$(LC_ALL=C date -u -R -d "$day 00:00 UTC")
maint=$(sed -n 's/^Maintainer: //p' debian/control)

cat <<END
libnginx-mod-http-llm ($version) unstable; urgency=medium

  * ngx_http_llm_module $version; its changes are listed in CHANGES
    in this directory.

 -- $maint  $date
END
