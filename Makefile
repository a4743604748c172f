# Entry points; README.md explains each.
.PHONY: demo demo-watch demo-local test test-rust test-web test-scripts test-docker check lint bench bench-smoke bench-course agencies \
        certs certs-brief docker-prepare docker-image docker-compose-up docker-compose-down \
        docker-compose-logs status

# Compose v2 (`docker compose`) where installed, else the v1 `docker-compose`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# The whole lottery in containers: server + 5 agencies (agencies/), winners table.
demo: docker-image certs-brief
	scripts/docker_demo.sh docker-compose.yaml

# A lottery big enough to watch: 5 agencies of WATCH_BETS generated bets each (in
# WATCH_DIR, with its compose file; Compose project named after it), run as the demo
# with HOLD=1: the status page and `make status` show the upload, and after the draw
# the server stays up until Ctrl-C; then the table, and everything is removed.
WATCH_DIR ?= /tmp/loteria-watch
WATCH_BETS ?= 1000000
demo-watch: docker-image certs-brief $(WATCH_DIR)/.bets-$(WATCH_BETS)
	python3 compose_maker.py 5 --data-dir $(WATCH_DIR) -o $(WATCH_DIR)/docker-compose.yaml
	HOLD=1 scripts/docker_demo.sh $(WATCH_DIR)/docker-compose.yaml

# The generated data, made again only for another WATCH_BETS (it is deterministic).
$(WATCH_DIR)/.bets-%:
	rm -f $(WATCH_DIR)/.bets-*
	python3 scripts/gen_agencies.py --bets $* -o $(WATCH_DIR) >/dev/null
	touch $@

# The same on this host, without Docker (in plaintext: the server logs a WARN).
demo-local:
	scripts/run_local.sh agencies

# Every test: the status page in a headless browser, unit, loopback integration,
# end-to-end with the real binaries, the scripts against a fake `docker`, and the Docker
# tests (real images, compose, engine). The browser test goes first: it takes seconds
# and fails at once if Chromium is missing.
test: test-web test-rust test-scripts test-docker

# --show-output: the fault and crash tests print their figures (kills survived, bets
# lost, duplicates, faults injected); a passing test's output is shown after its binary.
# tests/e2e_tls.rs makes its certificates with scripts/make-certs.sh, hence openssl.
test-rust:
	@scripts/ensure-tools.sh openssl
	cargo test --locked -- --show-output

# The status page of a real server in headless Chromium (CHROMIUM=path, or chromium,
# chromium-browser, google-chrome or google-chrome-stable on PATH; when none is there,
# Debian's chromium is installed with apt-get).
test-web:
	@[ -n "$${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || \
	    command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	    command -v google-chrome-stable >/dev/null 2>&1 || scripts/ensure-tools.sh chromium
	python3 tests/web/test_status_page.py

# scripts/build_image.sh, docker_demo.sh, check_names.sh and `make status` fed canned Docker output by a
# fake `docker` on PATH (no Docker engine needed; seconds); scripts/make-certs.sh
# (openssl, installed with apt-get when missing) and compose_maker.py's mounts;
# scripts/bench.py's parsers and a tiny real run over the debug binaries (test_bench.py).
test-scripts:
	@scripts/ensure-tools.sh openssl
	python3 tests/scripts/test_scripts.py
	python3 tests/scripts/test_bench.py

# nc_test.sh is also checked under dash (installed with apt-get when missing). The
# lotteries run over mutual TLS with certs/.
test-docker: docker-image certs-brief
	@scripts/ensure-tools.sh dash
	python3 tests/docker/test_compose.py

# What CI checks besides the tests.
lint:
	@scripts/ensure-tools.sh shellcheck
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
	shellcheck nc_test.sh scripts/*.sh .ci/run
	shellcheck --shell=sh nc_test.sh

check: lint test

# The end-to-end benchmark (scripts/bench.py; docs/BENCHMARKS.md defines each figure):
# the release `server` and AGENCIES `client`s on loopback, fsync on, AGENCIES x BETS
# generated bets (kept in BENCH_DIR, made once), with TLS off and on (TLS=off|on|both),
# RUNS runs each (the median and every run). BATCH and WINDOW set the clients'
# CLI_BATCH_MAX_AMOUNT and CLI_BATCH_WINDOW (unset: the client's defaults); DATASET=DIR
# uses DIR/agency-<k>.csv instead; JSON=FILE writes every figure. Prints numbers,
# asserts nothing about speed; exit code 1 when a run was INVALID (a failed client,
# wrong winners).
AGENCIES ?= 8
BETS ?= 500000
TLS ?= both
RUNS ?= 3
BENCH_DIR ?= /tmp/loteria-bench
BENCH_ARGS = --tls $(TLS) --runs $(RUNS) --bench-dir $(BENCH_DIR) \
	$(if $(BATCH),--batch $(BATCH)) $(if $(WINDOW),--window $(WINDOW)) \
	$(if $(JSON),--json $(JSON))
bench:
	@scripts/ensure-tools.sh openssl
	python3 scripts/bench.py --agencies $(AGENCIES) --bets $(BETS) \
	    $(if $(DATASET),--dataset $(DATASET)) $(BENCH_ARGS)

# A tiny run (2 agencies x 2000 bets, once, TLS off and on): seconds.
bench-smoke:
	@scripts/ensure-tools.sh openssl
	python3 scripts/bench.py --agencies 2 --bets 2000 --runs 1 --bench-dir $(BENCH_DIR) \
	    $(if $(JSON),--json $(JSON))

# The course's dataset (tests/data/tp0, 5 agencies, 78 697 bets).
bench-course:
	@scripts/ensure-tools.sh openssl
	python3 scripts/bench.py --dataset tests/data/tp0 $(BENCH_ARGS)

# Regenerate the sample data (deterministic: same bytes every time).
agencies:
	python3 scripts/gen_agencies.py -o agencies

# The certificates for mutual TLS (scripts/make-certs.sh): the lottery CA, the server's
# and agencies 1..CERTS_AGENCIES' keys and certificates in CERTS_DIR, one line per file.
# Idempotent: valid files are kept as they are; what is missing, broken, expiring or
# not of this CA is made again. The compose files mount certs/.
CERTS_DIR ?= certs
CERTS_AGENCIES ?= 5
certs:
	@scripts/ensure-tools.sh openssl
	CERTS_DIR="$(CERTS_DIR)" CERTS_AGENCIES=$(CERTS_AGENCIES) scripts/make-certs.sh

# The same for the targets that start a lottery, always in certs/ (what the compose
# files mount): one line when every file is kept, else the files made (a fraction of a
# second when they are there).
certs-brief:
	@scripts/ensure-tools.sh openssl
	@CERTS_DIR=certs CERTS_AGENCIES=$(CERTS_AGENCIES) scripts/make-certs.sh --brief

# The base images the Dockerfiles name, made locally when no registry has them
# (idempotent: does nothing when they are there).
docker-prepare:
	scripts/prepare-offline-images.sh

# Both images; the second build reuses the first one's builder stage from the cache.
# Each is a plain `docker build`; scripts/build_image.sh shows one line for an image
# that is up to date and the output of the steps that ran otherwise (VERBOSE=1: all).
docker-image: docker-prepare
	scripts/build_image.sh Dockerfile.server loteria-server:latest
	scripts/build_image.sh Dockerfile.client loteria-client:latest

# Refuses (creating nothing) while another lottery holds the container names, naming
# its Compose project and the command that removes it (scripts/check_names.sh).
docker-compose-up: docker-image certs-brief
	@CHECK_NAMES_AS="make docker-compose-up" scripts/check_names.sh --allow-own docker-compose.yaml
	$(COMPOSE) -f docker-compose.yaml up --detach --no-build
	@echo "status page: http://127.0.0.1:$${LOTERIA_STATUS_PORT:-8080}/ (make status: the same as a table)"

# Stops (SIGTERM, as `docker compose stop`) and removes containers, network and the
# bets volume: the next `up` is a new lottery.
docker-compose-down:
	$(COMPOSE) -f docker-compose.yaml stop
	$(COMPOSE) -f docker-compose.yaml down --volumes --remove-orphans

docker-compose-logs:
	$(COMPOSE) -f docker-compose.yaml logs --follow

# The lottery's progress as a table: the client image in status mode, in a throw-away
# container (`docker run --rm`) on the running `server` container's network (the one
# whose name ends in _lottery, as nc_test.sh picks it), with this checkout's config/;
# once, or LOOP=N times, one every loop.period (PERIOD=2s sets it). Any lottery whose
# server container is named `server` (the line on stderr says whose). A server with
# SERVER_TLS_CERT in its environment is asked over TLS as agency 1, with this
# checkout's certs/ca.pem, agency-1.pem and agency-1.key mounted read-only.
LOOP ?= 0
status:
	@id=$$(docker inspect --type container -f '{{if .State.Running}}{{.Id}}{{end}}' server 2>/dev/null); \
	if [ -z "$$id" ]; then \
	    echo "make status: no running container named 'server' (start the lottery: make docker-compose-up)" >&2; \
	    exit 1; \
	fi; \
	networks=$$(docker inspect --type container -f '{{range $$name, $$_ := .NetworkSettings.Networks}}{{println $$name}}{{end}}' server); \
	net=$$(printf '%s\n' "$$networks" | grep '_lottery$$' | sed -n 1p); \
	[ -n "$$net" ] || net=$$(printf '%s\n' "$$networks" | sed -n 1p); \
	if [ -z "$$net" ]; then echo "make status: the container 'server' is on no network" >&2; exit 1; fi; \
	owner=$$(docker inspect --type container -f '{{index .Config.Labels "com.docker.compose.project"}}' server); \
	if [ -n "$$owner" ]; then whose="the Compose project '$$owner'"; else whose="a server made outside Compose"; fi; \
	echo "make status: the lottery of $$whose (network $$net)" >&2; \
	set --; \
	if docker inspect --type container -f '{{range .Config.Env}}{{println .}}{{end}}' server 2>/dev/null \
	        | grep -q '^SERVER_TLS_CERT='; then \
	    for file in ca.pem agency-1.pem agency-1.key; do \
	        if [ ! -f "$(CURDIR)/certs/$$file" ]; then \
	            echo "make status: the server uses TLS, and certs/$$file is missing (make certs)" >&2; \
	            exit 1; \
	        fi; \
	        set -- "$$@" --mount "type=bind,source=$(CURDIR)/certs/$$file,target=/app/certs/$$file,readonly"; \
	    done; \
	    set -- "$$@" -e CLI_TLS_CA=/app/certs/ca.pem -e CLI_TLS_CERT=/app/certs/agency-1.pem \
	        -e CLI_TLS_KEY=/app/certs/agency-1.key; \
	fi; \
	exec docker run --rm --pull never --network "$$net" -v "$(CURDIR)/config:/app/config:ro" "$$@" \
	    -e CLI_MODE=status -e CLI_ID=1 -e CLI_SERVER_ADDRESS=server:12345 \
	    -e CLI_LOOP_AMOUNT=$(LOOP) $(if $(PERIOD),-e CLI_LOOP_PERIOD=$(PERIOD)) \
	    -e CLI_RETRY_DEADLINE=10s loteria-client:latest
