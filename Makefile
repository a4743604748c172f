# Entry points; README.md explains each.
.PHONY: demo demo-local test test-rust test-web test-scripts test-docker check lint bench agencies \
        docker-prepare docker-image docker-compose-up docker-compose-down \
        docker-compose-logs status

# Compose v2 (`docker compose`) where installed, else the v1 `docker-compose`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# The whole lottery in containers: server + 5 agencies (agencies/), winners table.
demo: docker-image
	scripts/docker_demo.sh docker-compose.yaml

# The same on this host, without Docker.
demo-local:
	scripts/run_local.sh agencies

# Every test: the status page in a headless browser, unit, loopback integration,
# end-to-end with the real binaries, the scripts against a fake `docker`, and the Docker
# tests (real images, compose, engine). The browser test goes first: it takes seconds
# and fails at once if Chromium is missing.
test: test-web test-rust test-scripts test-docker

# --show-output: the fault and crash tests print their figures (kills survived, bets
# lost, duplicates, faults injected); a passing test's output is shown after its binary.
test-rust:
	cargo test --locked -- --show-output

# The status page of a real server in headless Chromium (CHROMIUM=path, or chromium,
# chromium-browser, google-chrome or google-chrome-stable on PATH; when none is there,
# Debian's chromium is installed with apt-get).
test-web:
	@[ -n "$${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || \
	    command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 || \
	    command -v google-chrome-stable >/dev/null 2>&1 || scripts/ensure-tools.sh chromium
	python3 tests/web/test_status_page.py

# scripts/build_image.sh, docker_demo.sh and `make status` fed canned Docker output by a
# fake `docker` on PATH (no Docker engine needed; seconds).
test-scripts:
	python3 tests/scripts/test_scripts.py

# nc_test.sh is also checked under dash (installed with apt-get when missing).
test-docker: docker-image
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

# Throughput benchmark (prints numbers; asserts nothing about speed).
bench:
	cargo run --release --locked --example bench

# Regenerate the sample data (deterministic: same bytes every time).
agencies:
	python3 scripts/gen_agencies.py -o agencies

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

docker-compose-up: docker-image
	$(COMPOSE) -f docker-compose.yaml up --detach --no-build
	@echo "status page: http://127.0.0.1:$${LOTERIA_STATUS_PORT:-8080}/ (make status: the same as a table)"

# Stops (SIGTERM, as `docker compose stop`) and removes containers, network and the
# bets volume: the next `up` is a new lottery.
docker-compose-down:
	$(COMPOSE) -f docker-compose.yaml stop
	$(COMPOSE) -f docker-compose.yaml down --volumes --remove-orphans

docker-compose-logs:
	$(COMPOSE) -f docker-compose.yaml logs --follow

# The lottery's progress as a table (the client in status mode, a throw-away container
# of client1's service on the lottery's network): once, or LOOP=N times, one every
# loop.period (PERIOD=2s sets it). Only for this checkout's lottery: the running
# `server` must be the one Compose lists for docker-compose.yaml here (another
# project's is named, with the command that asks it instead).
LOOP ?= 0
status:
	@id=$$(docker inspect --type container -f '{{if .State.Running}}{{.Id}}{{end}}' server 2>/dev/null); \
	if [ -z "$$id" ]; then \
	    echo "make status: no running container named 'server' (start the lottery: make docker-compose-up)" >&2; \
	    exit 1; \
	fi; \
	if ! $(COMPOSE) -f docker-compose.yaml ps -q server 2>/dev/null | \
	        awk -v id="$$id" 'length($$0) >= 12 && index(id, $$0) == 1 { found = 1 } END { exit !found }'; then \
	    owner=$$(docker inspect -f '{{index .Config.Labels "com.docker.compose.project"}}' server); \
	    files=$$(docker inspect -f '{{index .Config.Labels "com.docker.compose.project.config_files"}}' server); \
	    flags=$$(printf '%s' "$$files" | sed 's/^/ -f /; s/,/ -f /g'); \
	    here=$${COMPOSE_PROJECT_NAME:-$$(basename "$(CURDIR)" | LC_ALL=C tr '[:upper:]' '[:lower:]' | LC_ALL=C tr -cd 'a-z0-9_-')}; \
	    if [ -z "$$owner" ]; then \
	        echo "make status: the running container 'server' was made outside Compose, not by this checkout's lottery (Compose project '$$here')" >&2; \
	    else \
	        echo "make status: the running container 'server' belongs to the Compose project '$$owner'$${files:+ (started from $$files)}, not to this checkout's ('$$here'); ask it with: $(COMPOSE) -p $$owner$$flags run --rm --no-deps -T -e CLI_MODE=status client1" >&2; \
	    fi; \
	    exit 1; \
	fi
	@$(COMPOSE) -f docker-compose.yaml run --rm --no-deps -T -e CLI_MODE=status \
	    -e CLI_LOOP_AMOUNT=$(LOOP) $(if $(PERIOD),-e CLI_LOOP_PERIOD=$(PERIOD)) \
	    -e CLI_RETRY_DEADLINE=10s client1
