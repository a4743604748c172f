# Entry points; README.md explains each.
.PHONY: demo demo-local test test-rust test-docker check lint bench agencies \
        docker-prepare docker-image docker-compose-up docker-compose-down \
        docker-compose-logs

# Compose v2 (`docker compose`) where installed, else the v1 `docker-compose`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# The whole lottery in containers: server + 5 agencies (agencies/), winners table.
demo: docker-image
	scripts/docker_demo.sh docker-compose.yaml

# The same on this host, without Docker.
demo-local:
	scripts/run_local.sh agencies

# Every test: unit, loopback integration, end-to-end with the real binaries, and the
# Docker tests (real images, real compose, real engine).
test: test-rust test-docker

# --show-output: the fault and crash tests print their figures (kills survived, bets
# lost, duplicates, faults injected); a passing test's output is shown after its binary.
test-rust:
	cargo test --locked -- --show-output

test-docker: docker-image
	python3 tests/docker/test_compose.py

# What CI checks besides the tests.
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
	shellcheck nc_test.sh scripts/*.sh .ci/run

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
docker-image: docker-prepare
	docker build --force-rm -f Dockerfile.server -t loteria-server:latest .
	docker build --force-rm -f Dockerfile.client -t loteria-client:latest .

docker-compose-up: docker-image
	$(COMPOSE) -f docker-compose.yaml up --detach --no-build

# Stops (SIGTERM, as `docker compose stop`) and removes containers, network and the
# bets volume: the next `up` is a new lottery.
docker-compose-down:
	$(COMPOSE) -f docker-compose.yaml stop
	$(COMPOSE) -f docker-compose.yaml down --volumes --remove-orphans

docker-compose-logs:
	$(COMPOSE) -f docker-compose.yaml logs --follow
