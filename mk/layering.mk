# The dependency rule (ARCHITECTURE.md, "Crates and the dependency rule"), checked from the real
# dependency graph: the data plane never links kube, the operator never links openraft or redb.
.PHONY: check-layering

check-layering:
	@set -eu; \
	check() { crate=$$1; shift; tree=$$($(CARGO) tree -q -e normal -p $$crate --prefix none); \
	  for banned in "$$@"; do \
	    if grep -q "^$$banned v" <<<"$$tree"; then echo "check-layering: $$crate depends on $$banned" >&2; exit 1; fi; \
	  done; echo "check-layering: $$crate links none of: $$*"; }; \
	check raftd kube kube-client k8s-openapi; \
	check raft-proto openraft redb kube k8s-openapi; \
	check raft-operator openraft redb; \
	check raftctl openraft redb; \
	check raft-local openraft redb kube; \
	check sandbox-node raftd openraft

TEST_TARGETS += check-layering
