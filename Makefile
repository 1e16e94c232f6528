# The two commands of README.md. Both provision LibTorch first (PyTorch 2.9.0 from PyPI, once,
# into ~/.local/share/grokforge; a no-op afterwards), then build with cargo.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
LIBTORCH_ENV := eval "$$(scripts/libtorch-env.sh)"
BIND ?= 127.0.0.1:8080
DATA_DIR ?= ./data

.PHONY: run test build lint

## Build and start a node on $(BIND) with the embedded defaults (SQLite under ./data, in-process bus).
run:
	@$(LIBTORCH_ENV); cargo run --bin grokforge -- serve --bind $(BIND) --data-dir $(DATA_DIR)

## Run the whole test suite (needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379;
## .ci/run starts them when they are not running): the Rust tests, then the dashboard in a real
## Chromium and the Python client against a real node (tests/browser/run.sh installs Chromium
## and Playwright when missing), then schemathesis against a real node with a token of each role
## (tests/api-fuzz/run.sh, about three minutes; installs schemathesis when missing).
test:
	@$(LIBTORCH_ENV); \
	scripts/torch-python.sh || echo "make: torch is not importable from python; the PyTorch parity test will skip" >&2; \
	export LD_LIBRARY_PATH="$${LIBTORCH_LIB:-$$LIBTORCH}/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}"; \
	status=0; \
	if cargo nextest --version >/dev/null 2>&1; then \
	  cargo nextest run --workspace --all-targets --no-fail-fast || status=$$?; \
	else \
	  cargo test --workspace --all-targets --no-fail-fast || status=$$?; \
	fi; \
	GROKFORGE_BIN="$${CARGO_TARGET_DIR:-target}/debug/grokforge" tests/browser/run.sh || status=$$?; \
	GROKFORGE_BIN="$${CARGO_TARGET_DIR:-target}/debug/grokforge" tests/api-fuzz/run.sh || status=$$?; \
	exit $$status

build:
	@$(LIBTORCH_ENV); cargo build --workspace --all-targets

lint:
	@$(LIBTORCH_ENV); cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings
