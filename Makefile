# Entry points; README.md explains each. Docker targets arrive with the Docker work.
.PHONY: demo test check lint bench agencies

# The whole lottery on this host: server + one client per agencies/agency-*.csv.
demo:
	scripts/run_local.sh agencies

# Every test: unit, loopback integration, end-to-end with the real binaries.
test:
	cargo test --locked

# What CI checks besides the tests.
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked

check: lint test

# Throughput benchmark (prints numbers; asserts nothing about speed).
bench:
	cargo run --release --locked --example bench

# Regenerate the sample data (deterministic: same bytes every time).
agencies:
	python3 scripts/gen_agencies.py -o agencies
