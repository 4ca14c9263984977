# Local Kubernetes sandbox (issue 5): real control plane + process-based node agent.
# See sandbox/README.md.
.PHONY: sandbox-deps sandbox-binaries sandbox-up sandbox-down sandbox-status sandbox-restart test-sandbox-unit test-sandbox-e2e

sandbox-deps:
	sandbox/install-deps.sh

sandbox-binaries:
	sandbox/build-binaries.sh all

sandbox-up:
	sandbox/up.sh

sandbox-down:
	sandbox/down.sh

sandbox-status:
	sandbox/status.sh

sandbox-restart: sandbox-down sandbox-up

test-sandbox-unit:
	$(CARGO) test -p sandbox-node

# End-to-end tests need the sandbox; they bring it up first (a no-op when it is already up).
test-sandbox-e2e: sandbox-up
	KUBECONFIG=/var/lib/raft-sandbox/kubeconfig $(CARGO) test --features sandbox-e2e --test sandbox_e2e -- --test-threads=1

# `make deps` (what .ci/run calls) also installs the sandbox's apt packages and builds its pinned
# binaries, so the build shows up (with progress) before the tests start.
deps: sandbox-deps

TEST_TARGETS += test-sandbox-unit test-sandbox-e2e
