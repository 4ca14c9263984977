# raft-operator: top-level targets. `make test` is what CI runs (.ci/run).
# Each part of the project adds its own targets in mk/*.mk and appends to TEST_TARGETS, so
# `make test` runs everything without this file naming every part.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# Kubernetes version the CRD and manifests are validated against offline.
K8S_SCHEMA_VERSION ?= 1.33.0
KUBERNETES_VALIDATE_VERSION ?= 1.37.0
TEST_TARGETS :=

-include mk/*.mk

.PHONY: build deps lint fmt-check clippy crds crd-drift crd-validate test-unit test demo

build:
	$(CARGO) build --workspace --all-targets

## deps: install the tools the tests need (idempotent; .ci/run calls it on a fresh machine).
deps:
	@python3 -c 'import kubernetes_validate' 2>/dev/null || \
		python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --features sandbox-e2e -- -D warnings

lint: fmt-check clippy

## crds: regenerate crds/ from the Rust types.
crds:
	$(CARGO) run -q --bin crdgen crds/raftcluster.yaml

## crd-drift: fail if the checked-in CRD differs from what the Rust types generate.
crd-drift:
	@tmp=$$(mktemp); trap 'rm -f $$tmp' EXIT; \
	$(CARGO) run -q --bin crdgen "$$tmp"; \
	if ! diff -u crds/raftcluster.yaml "$$tmp"; then \
		echo "crds/raftcluster.yaml is stale: run 'make crds' and commit it" >&2; exit 1; \
	fi; echo "crd-drift: crds/raftcluster.yaml matches the Rust types"

## crd-validate: check the CRD against the Kubernetes API schema, offline.
crd-validate:
	@command -v kubernetes-validate >/dev/null || { echo "kubernetes-validate is missing: run 'make deps'" >&2; exit 1; }
	kubernetes-validate --strict -k $(K8S_SCHEMA_VERSION) crds/raftcluster.yaml

## test-unit: every crate's tests. raftd's lock tests drive real raftctl processes, so raftctl
## is built first (cargo test builds only test harnesses of other crates' binaries).
test-unit:
	$(CARGO) build -q -p raftctl --bin raftctl
	$(CARGO) test --workspace

## test: everything CI checks.
test: deps lint test-unit crd-drift crd-validate $(TEST_TARGETS)
	@echo "make test: all checks passed"

## demo: sandbox, CRD and operator, a 5-voter cluster over 3 zones, its status, writes and reads.
demo: deps
	scripts/demo.sh
