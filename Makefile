# ferry's entry points. `make demo` and `make test` work on a fresh machine:
# they build the control plane from Go modules and everything else they need.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# Keep cargo's output outside the clone so a fresh clone (CI) builds warm.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ferry/target
CARGO ?= cargo

.PHONY: help demo test bench crds lint fmt controlplane postgres sidecar

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

controlplane: ## Build etcd, kube-apiserver, kube-controller-manager, kubectl and helm from Go modules (cached).
	@e2e/controlplane/build.sh >/dev/null

postgres: ## Install PostgreSQL's server binaries (apt) if missing; tests start private servers.
	@e2e/postgres/install.sh

demo: controlplane postgres ## Run the local demo on a real control plane (DEMO_ARGS=--keep leaves it running).
	$(CARGO) run --quiet -p ferry-e2e -- demo $(DEMO_ARGS)

test: controlplane postgres ## Run every test: unit tests and end-to-end tests against the real control plane.
	$(CARGO) test --workspace --no-fail-fast

bench: ## Run the benchmarks and print their numbers.
	$(CARGO) bench --workspace

crds: ## Regenerate the committed CRD YAML under crds/.
	$(CARGO) run --quiet -p ferry-operator -- crds --out-dir crds

fmt: ## Format the code.
	$(CARGO) fmt --all

lint: ## Check formatting and clippy (warnings are errors).
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

sidecar: ## Build the static, size-optimised ferry-sidecar binary the image ships.
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile sidecar -p ferry-sidecar --target x86_64-unknown-linux-gnu
	@ls -l $(CARGO_TARGET_DIR)/x86_64-unknown-linux-gnu/sidecar/ferry-sidecar
