# Fault campaigns (issue 16): `raftctl chaos` runs seeded random schedules over a local raftd
# cluster and checks each history with Porcupine (tools/chaos-check, built here from its Go
# module). `make test` runs a short campaign; `make chaos-long` the long one.
CHAOS_CHECKER = $${RAFT_CACHE_DIR:-/var/cache/raft-operator}/bin/chaos-check
CHAOS_SEED ?= 1

.PHONY: chaos-check test-chaos-check chaos test-chaos chaos-long

## chaos-check: build the Porcupine checker (cached outside the clone).
chaos-check:
	@mkdir -p $$(dirname $(CHAOS_CHECKER))
	cd tools/chaos-check && go build -o $(CHAOS_CHECKER) .

## test-chaos-check: the checker's own tests (it rejects a stale read, a wrong swap ...).
test-chaos-check:
	cd tools/chaos-check && go vet ./... && go test ./...

## chaos: a few schedules, report in CHAOS_REPORT (default: a new temp dir).
chaos: chaos-check
	$(CARGO) build -q -p raftd -p raftctl
	@set -eu; report=$${CHAOS_REPORT:-$$(mktemp -d)}; bin=$(RAFT_BIN_DIR)/debug; \
	RAFTD_BIN=$$bin/raftd $$bin/raftctl chaos --seed $(CHAOS_SEED) --schedules $${CHAOS_SCHEDULES:-3} \
	  --seconds $${CHAOS_SECONDS:-20} --report $$report --checker $(CHAOS_CHECKER)

## test-chaos: the short campaign `make test` runs (2 schedules of 15 s).
test-chaos:
	$(MAKE) chaos CHAOS_SCHEDULES=2 CHAOS_SECONDS=15

## chaos-long: 50 schedules of 20 s in a release build; the summary goes to docs/chaos.md.
chaos-long: chaos-check
	$(CARGO) build -q --release -p raftd -p raftctl
	@set -eu; report=$${CHAOS_REPORT:-$$(mktemp -d)}; bin=$(RAFT_BIN_DIR)/release; \
	RAFTD_BIN=$$bin/raftd $$bin/raftctl chaos --seed $(CHAOS_SEED) --schedules $${CHAOS_SCHEDULES:-50} \
	  --seconds $${CHAOS_SECONDS:-20} --report $$report --checker $(CHAOS_CHECKER) | tee $$report/table.txt; \
	python3 tools/chaos-summary.py $$report > docs/chaos.md; echo "wrote docs/chaos.md"

TEST_TARGETS += test-chaos-check test-chaos
