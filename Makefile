# Top-level targets. Each part of the project adds its own targets in mk/*.mk and appends to
# TEST_TARGETS so `make test` runs everything.
SHELL := /bin/bash
CARGO ?= cargo
TEST_TARGETS :=

-include mk/*.mk

.PHONY: build test
build:
	$(CARGO) build --workspace --all-targets

test: $(TEST_TARGETS)
