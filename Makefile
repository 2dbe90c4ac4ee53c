# ferry's entry points. `make demo` and `make test` work on a fresh machine:
# they build the control plane from Go modules and everything else they need.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Keep cargo's output outside the clone so a fresh clone (CI) builds warm.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ferry/target
CARGO ?= cargo

.PHONY: help demo test fuzz bench bench-scale crds lint fmt controlplane postgres node hydra oidc-provider sidecar images images-check chart-lint

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

controlplane: ## Build etcd, kube-apiserver, kube-controller-manager, kubectl and helm from Go modules (cached).
	@e2e/controlplane/build.sh >/dev/null

postgres: ## Install PostgreSQL's server binaries (apt) if missing; tests start private servers.
	@e2e/postgres/install.sh

hydra: ## Build ory/hydra, the OAuth2 server the oauth2 tests run against, from Go modules (cached).
	@e2e/hydra/build.sh >/dev/null

oidc-provider: ## Install node-oidc-provider, the OAuth2 server the token-exchange tests run against, from npm (cached).
	@e2e/oidc-provider/install.sh >/dev/null

node: ## Install containerd, runc, busybox-static, postgresql-client (apt) and the musl Rust target if missing; tests start a private node.
	@e2e/node/install.sh

demo: controlplane postgres hydra ## Run the local demo on a real control plane (DEMO_ARGS=--keep leaves it running).
	$(CARGO) run --quiet -p ferry-e2e -- demo $(DEMO_ARGS)

test: controlplane postgres node hydra oidc-provider ## Run every test: unit tests and end-to-end tests against the real control plane.
	$(CARGO) test --workspace --no-fail-fast

# Cases per property in `make fuzz`; `make test` runs proptest's 256.
FUZZ_CASES ?= 10000

fuzz: ## Run the property-based fuzz tests (<crate>/tests/fuzz.rs) long: FUZZ_CASES cases each (default 10000).
	FERRY_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --workspace --no-fail-fast --test fuzz

bench: ## Run the benchmarks and print their numbers.
	$(CARGO) bench --workspace

bench-scale: controlplane ## Only the scale benchmark (FERRY_BENCH_NAMESPACES=200 for a quick run of 10,000 Grants).
	$(CARGO) bench -p ferry-e2e --bench scale

crds: ## Regenerate the committed CRD YAML under crds/ (and the chart's copy).
	$(CARGO) run --quiet -p ferry-operator -- crds --out-dir crds
	$(CARGO) run --quiet -p ferry-operator -- crds --out-dir charts/ferry/crds

IMAGE_REPOSITORY ?= ghcr.io/ferry-dev
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

images: ## Build the three images from the static binaries (images/build.sh) and load them into docker or podman.
	@engine="$${CONTAINER_ENGINE:-}"; \
	for e in docker podman; do \
	  if [ -z "$$engine" ] && command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1; then engine=$$e; fi; \
	done; \
	if [ -z "$$engine" ]; then \
	  echo "make images: no working docker or podman here; 'make images-check' verifies the static binaries instead." >&2; exit 1; \
	fi; \
	images/check.sh; \
	out="$(CARGO_TARGET_DIR)/images"; \
	for archive in $$(FERRY_BIN_DIR="$(CARGO_TARGET_DIR)/x86_64-unknown-linux-musl/release" \
	    IMAGE_REPOSITORY=$(IMAGE_REPOSITORY) IMAGE_TAG=$(IMAGE_TAG) \
	    images/build.sh "$$out" ferry-operator ferry-webhook ferry-sidecar); do \
	  $$engine load -i "$$archive"; \
	done

images-check: ## Without a container engine: build the static musl release binaries and run each one's --version.
	images/check.sh

chart-lint: controlplane ## helm lint --strict the chart (the chart tests run it too).
	"$$(e2e/controlplane/build.sh 2>/dev/null | tail -1)/helm" lint --strict charts/ferry

fmt: ## Format the code.
	$(CARGO) fmt --all

lint: ## Check formatting and clippy (warnings are errors).
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

sidecar: ## Build the static, size-optimised ferry-sidecar binary the image ships.
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile sidecar -p ferry-sidecar --target x86_64-unknown-linux-gnu
	@ls -l $(CARGO_TARGET_DIR)/x86_64-unknown-linux-gnu/sidecar/ferry-sidecar
