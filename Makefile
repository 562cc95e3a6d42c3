# saga-host: the two commands of the README are `make run` and `make test`.
#
# Everything builds in one target directory with the release profile: the host, the tests and
# the benchmark share their compiled dependencies, and the components are wasm32-wasip2 builds
# of the workspace's guest crates.

CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
WASM_DIR := target/$(WASM_TARGET)/release
# The components `make run` serves (the bundled Exam and Attempt services).
BUNDLED := guest_exam guest_attempt
# Components built only for tests and benchmarks.
TEST_GUESTS := -p test-probe -p test-noop -p test-noop-sdk -p test-participant -p test-orchestrator -p test-not-a-service \
	-p test-broken-saga -p test-hijack -p test-old-wit -p test-wrong-compensation
# Second builds of three components (feature variant-b), for the hot-swap and cluster-deploy
# tests.
VARIANTS := guest_exam test_orchestrator test_hijack

# How long `make fuzz` runs each fuzz target, in seconds.
FUZZ_SECONDS ?= 60

.PHONY: run test setup test-tools components test-components examples sdk-test lint fuzz bench bench-restate soak clean-data

## Sets up, builds and runs the host on the embedded defaults (SQLite in ./data, the in-process
## broker, the bundled components in ./components) on http://127.0.0.1:8080.
run: components
	$(CARGO) run --release -p saga-host -- serve

## Sets up, builds everything and runs every test (lints first).
test: test-tools test-components examples sdk-test lint
	$(CARGO) test --release

setup:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

## The programs tests run beside the host, from Debian's packages: Prometheus and promtool
## (tests/observability.rs), Chromium and ChromeDriver (tests/console.rs), strace
## (tests/hot_load.rs), openssl (tests/tls.rs makes its certificates), sqlite3
## (tests/faults.rs checks the database's integrity). Installed when
## missing; a failed install stops `make test` with apt's message: these tests must run, never
## be skipped.
TEST_PACKAGES := prometheus chromium chromium-driver strace openssl sqlite3
TEST_PROGRAMS := prometheus promtool chromium chromedriver strace openssl sqlite3
test-tools:
	@for p in $(TEST_PROGRAMS); do command -v $$p >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			$(TEST_PACKAGES) >/dev/null; \
	fi

## Builds the bundled components and copies them into ./components.
components: setup
	$(CARGO) build --release --target $(WASM_TARGET) -p guest-exam -p guest-attempt
	@mkdir -p components
	@for c in $(BUNDLED); do cp $(WASM_DIR)/$$c.wasm components/; done

## Builds the test components too, and the variant builds (as NAME_variant_b.wasm).
test-components: setup
	$(CARGO) build --release --target $(WASM_TARGET) -p guest-exam -p test-orchestrator \
		-p test-hijack --features guest-exam/variant-b,test-orchestrator/variant-b,test-hijack/variant-b
	@for c in $(VARIANTS); do cp $(WASM_DIR)/$$c.wasm $(WASM_DIR)/$${c}_variant_b.wasm; done
	$(CARGO) build --release --target $(WASM_TARGET) -p guest-exam -p guest-attempt $(TEST_GUESTS)
	@mkdir -p components
	@for c in $(BUNDLED); do cp $(WASM_DIR)/$$c.wasm components/; done

## Builds the services written in other languages (examples/); each build script installs its
## pinned tool into its own folder first.
examples:
	examples/python-grader/build.sh
	examples/python-tutorial/build.sh
	examples/js-notifier/build.sh
	examples/js-tutorial/build.sh

## The unit tests of the SDKs: Rust's natively (its allocator's arena), Python's and
## JavaScript's on the machine's CPython and Node.
sdk-test:
	$(CARGO) test --release -p saga-sdk --lib
	cd sdk/python && python3 -m unittest discover -s tests
	node --test sdk/js/test/

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --target $(WASM_TARGET) -p guest-exam -p guest-attempt $(TEST_GUESTS) \
		-p saga-sdk -- -D warnings

## Runs each fuzz target for FUZZ_SECONDS (see fuzz/run.sh).
fuzz:
	fuzz/run.sh $(FUZZ_SECONDS)

## Runs the benchmarks (see the README's Benchmarks section), then Restate beside saga-host
## (ops/bench-restate.sh, which needs npm's registry).
bench: test-components examples
	$(CARGO) build --release -p saga-host -p saga-bench
	./target/release/saga-bench all
	ops/bench-restate.sh

## Restate (../shared/peers/restate, copied to a scratch folder) and `saga-bench http` one after
## the other, with the ratio of their sagas/s (see ops/bench-restate.sh; needs npm's registry).
bench-restate: components
	$(CARGO) build --release -p saga-host -p saga-bench
	ops/bench-restate.sh

clean-data:
	rm -rf data

## Longer kill campaigns than `make test` (not part of it): the crash test and the two-host kill
## test for seeds 1..SEEDS (default 100), with a summary; needs what `make test` sets up.
SEEDS ?= 100
soak: test-components
	SEEDS=$(SEEDS) ops/soak.sh
