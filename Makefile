# ngx_http_llm_module
#
#   make          build build/ngx_http_llm_module.so against nginx-dev, and
#                 build/llm-preflight (libcurl, yajl; docs/llm-preflight.md)
#   make test     install what the tests need, build, run prove -r t/
#   make demo     build, start nginx with local mock providers, show it work
#   make bench    proxy_pass vs llm_route side by side (wrk, callgrind)
#   make bench-sse    SSE streams through both: latency per event and
#                 to the first event, memory per open stream (~35 s)
#   make bench-profile  where the route's instructions go, by function,
#                 against proxy_pass (nginx built with symbols, ~5 min)
#   make bench-pick   the instructions llm_split_key's sticky pick costs
#                 (callgrind, ~1 min)
#   make bench-check  the instructions llm_check_answer costs for a
#                 600-byte answer (callgrind, ~3 min)
#   make fleet    N nginx nodes sharing one Redis: the fleet's retries
#                 against its budget, Redis commands and bytes a second
#                 (bench/fleet; NODES=3,12,24 SYNC=100ms,250ms,1s, ~20 min)
#   make lint     formatting checks of the C sources
#   make test-asan    the tests against a module built with ASan + UBSan
#   make soak     the fault-matrix soak for 60 s (t/soak.t; make test runs
#                 it for 20 s), its figures printed
#   make fuzz     the body scan, error classifier, answer reader and JSON
#                 string decoder under libFuzzer
#   make deb      build/libnginx-mod-http-llm_<version>_<arch>.deb, as
#                 Debian builds its libnginx-mod-* (debhelper, dh_nginx)
#   make test-deb build the package, install it into Debian's nginx, get a
#                 completion through it, purge it (root, ~1 min; t/deb.t)

SHELL      := /bin/bash
NGX_SRC    ?= /usr/share/nginx/src
NGINX      ?= /usr/sbin/nginx
BUILD      ?= build
NGX_BUILD  := $(BUILD)/nginx
MODULE     := $(BUILD)/ngx_http_llm_module.so

# Debian's own compiler flags for nginx (nginx -V), so the module is built
# the way the binary that loads it was.
CC_OPT     ?= -g -O2 -fstack-protector-strong -Wformat \
              -Werror=format-security -fPIC -Wdate-time -D_FORTIFY_SOURCE=2
LD_OPT     ?= -Wl,-z,relro -Wl,-z,now -fPIC

SOURCES    := $(wildcard src/*.c src/*.h)

# the llm-preflight command: not part of the module, built beside it
PREFLIGHT  := $(BUILD)/llm-preflight
PF_SOURCES := $(wildcard tools/llm-preflight/*.c)
PF_DEPS    := $(PF_SOURCES) $(wildcard tools/llm-preflight/*.h)
PF_VERSION := $(shell sed -n 's/^\#define NGX_HTTP_LLM_VERSION *"\(.*\)"/\1/p' \
                  src/ngx_http_llm_module.h)
PF_CFLAGS  ?= -g -O2 -std=gnu99 -Wall -Wextra -Wno-unused-parameter -Werror \
              -fstack-protector-strong -Wformat -Werror=format-security \
              -D_FORTIFY_SOURCE=2 -D_GNU_SOURCE
PF_LDFLAGS ?= -Wl,-z,relro -Wl,-z,now

.PHONY: all deps test test-asan soak fuzz demo bench bench-sse bench-pick bench-profile lint \
        fleet clean deb test-deb

all: $(MODULE) $(PREFLIGHT)

$(MODULE): $(NGX_BUILD)/objs/Makefile $(SOURCES)
	$(MAKE) -s -C $(NGX_BUILD) -f objs/Makefile modules
	@# a new inode: a running nginx keeps its mapping of the old file
	cp $(NGX_BUILD)/objs/ngx_http_llm_module.so $@.tmp
	mv -f $@.tmp $@

$(PREFLIGHT): $(PF_DEPS)
	@mkdir -p $(BUILD)
	$(CC) $(PF_CFLAGS) -DLP_VERSION='"$(or $(PF_VERSION),unknown)"' \
	    -o $@.tmp $(PF_SOURCES) $(PF_LDFLAGS) -lcurl -lyajl
	mv -f $@.tmp $@

# configure in a private copy of nginx-dev: out of tree, nothing written
# under /usr/share/nginx/src
$(NGX_BUILD)/objs/Makefile: config
	@test -f $(NGX_SRC)/conf_flags || \
	    { echo "$(NGX_SRC)/conf_flags missing: apt-get install nginx-dev"; \
	      exit 1; }
	rm -rf $(NGX_BUILD)
	mkdir -p $(BUILD)
	cp -a $(NGX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --with-cc-opt="$(CC_OPT)" --with-ld-opt="$(LD_OPT)" \
	        --add-dynamic-module=$(CURDIR) > configure.log 2>&1 || \
	    { tail -20 configure.log; exit 1; }

deps:
	@tools/deps.sh build

test:
	@tools/deps.sh test
	@$(MAKE) -s all
	prove -r t/

# The module built with AddressSanitizer and UBSan, loaded into Debian's
# nginx with the sanitizer runtime preloaded (tools/nginx-asan.sh); the
# harness fails a test file whose logs carry a sanitizer report.
ASAN_OPT   := -g -O1 -fno-omit-frame-pointer -fPIC \
              -fsanitize=address,undefined -fno-sanitize-recover=undefined

test-asan:
	@tools/deps.sh test
	@$(MAKE) -s all BUILD=$(BUILD)/asan CC_OPT="$(ASAN_OPT)" \
	    LD_OPT="-fsanitize=address,undefined -fPIC"
	TEST_LLM_MODULE=$(CURDIR)/$(BUILD)/asan/ngx_http_llm_module.so \
	TEST_LLM_NGINX=$(CURDIR)/tools/nginx-asan.sh TEST_LLM_ASAN=1 \
	    prove -r t/

soak:
	@tools/deps.sh test
	@$(MAKE) -s all
	SOAK_SECONDS=60 prove -v t/soak.t

fuzz:
	@tools/deps.sh fuzz
	@$(MAKE) -s all
	@fuzz/run.sh

demo:
	@tools/deps.sh demo
	@$(MAKE) -s all
	@tools/demo.sh

bench:
	@tools/deps.sh bench
	@$(MAKE) -s all
	@bench/run.sh
	@bench/scan.sh
	@MODULE=$(CURDIR)/$(MODULE) bench/sse.pl
	@MODULE=$(CURDIR)/$(MODULE) bench/pick.sh

bench-check:
	@tools/deps.sh bench
	@$(MAKE) -s all
	@MODULE=$(CURDIR)/$(MODULE) bench/check_answer.sh

bench-sse:
	@tools/deps.sh bench
	@$(MAKE) -s all
	@MODULE=$(CURDIR)/$(MODULE) bench/sse.pl

# nginx 1.22.1 built with symbols from Debian's source tarball, the module
# into it, and the route's instructions against proxy_pass by function
bench-profile:
	@tools/deps.sh bench
	@bench/profile.sh

bench-pick:
	@tools/deps.sh bench
	@$(MAKE) -s all
	@MODULE=$(CURDIR)/$(MODULE) bench/pick.sh

# The package is built in a copy of the tree under $(BUILD)/deb, with
# debian/changelog written for the version in the module's header.
DEB_VERSION = $(shell sed -n \
    's/^\#define NGX_HTTP_LLM_VERSION *"\(.*\)"$$/\1/p' \
    src/ngx_http_llm_module.h)
DEB_TREE    = $(BUILD)/deb/libnginx-mod-http-llm-$(DEB_VERSION)

deb:
	@tools/deps.sh deb
	rm -rf $(BUILD)/deb
	mkdir -p $(DEB_TREE)/build
	cp -a config src debian docs README.md CHANGES LICENSE conf.example \
	    Makefile tools $(DEB_TREE)/
	@# llm-preflight built beforehand, for a tree whose Makefile in the
	@# copy does not build it
	if [ -x $(BUILD)/llm-preflight ]; then \
	    cp -a $(BUILD)/llm-preflight $(DEB_TREE)/build/; fi
	cd $(DEB_TREE) && debian/changelog.sh > debian/changelog
	cd $(DEB_TREE) && dpkg-buildpackage -b -us -uc > ../build.log 2>&1 || \
	    { tail -30 $(BUILD)/deb/build.log; exit 1; }
	cp $(BUILD)/deb/libnginx-mod-http-llm_$(DEB_VERSION)_*.deb $(BUILD)/
	@ls $(BUILD)/libnginx-mod-http-llm_$(DEB_VERSION)_*.deb

test-deb:
	@tools/deps.sh test deb
	TEST_LLM_DEB=1 prove -v t/deb.t

fleet:
	@tools/deps.sh bench
	@$(MAKE) -s all
	@MODULE=$(CURDIR)/$(MODULE) bench/fleet

lint:
	@tools/lint.sh

clean:
	rm -rf $(BUILD)
