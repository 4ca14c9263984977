# Operator end-to-end tests (issues 6 and 7): each test runs its own operator process against
# the sandbox, watching only a fresh namespace. raftd must be built: the sandbox maps the image
# `raftd:<tag>` to $(CARGO_TARGET_DIR)/debug/raftd.
.PHONY: test-operator-e2e

test-operator-e2e: sandbox-up
	$(CARGO) build -q -p raftd --bin raftd -p raftctl --bin raftctl
	KUBECONFIG=/var/lib/raft-sandbox/kubeconfig $(CARGO) test --features sandbox-e2e \
		--test operator_e2e --test rollout_e2e --test recovery_e2e -- --test-threads=1 --nocapture

TEST_TARGETS += test-operator-e2e
