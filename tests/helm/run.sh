#!/usr/bin/env bash
# make test-helm: the chart, checked offline. helm lint --strict; helm template with the default
# values and with tests/helm/values-*.yaml, each render validated against the Kubernetes schema
# (kubernetes-validate --strict) and checked for least-privilege RBAC (check_rendered.py); every
# tests/helm/bad-*.yaml must make helm fail with a message naming the field in its
# `# expect-error:` line; and the chart's CRDs must be the generated ones, byte for byte.
# Needs HELM (path to a helm v3 binary) and K8S_SCHEMA_VERSION in the environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
chart=charts/raft-operator
release_ns=raft-system
: "${HELM:?HELM must name a helm v3 binary (make deps-helm)}"
: "${K8S_SCHEMA_VERSION:?}"
command -v kubernetes-validate >/dev/null || { echo "kubernetes-validate is missing: run 'make deps'" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
step() { echo "== test-helm: $*"; }

step "helm is v3"
"$HELM" version --short | tee "$work/version"
grep -q '^v3\.' "$work/version" || { echo "$HELM is not helm v3" >&2; exit 1; }

step "chart crds/ is identical to the generated crds/"
if ! diff -r crds "$chart/crds" > "$work/crd-diff"; then
  head -20 "$work/crd-diff" >&2
  echo "$chart/crds differs from crds/: run 'make chart-crds' and commit it" >&2
  exit 1
fi

render_and_check() { # name, watched namespaces (comma-separated, may be empty), helm args...
  local name=$1 watched=$2; shift 2
  step "helm lint --strict ($name)"
  "$HELM" lint --strict "$chart" --namespace "$release_ns" "$@"
  step "helm template ($name), validated against Kubernetes $K8S_SCHEMA_VERSION"
  "$HELM" template raft-operator "$chart" --namespace "$release_ns" --include-crds \
    --kube-version "$K8S_SCHEMA_VERSION" "$@" > "$work/$name.yaml"
  if ! kubernetes-validate --strict -k "$K8S_SCHEMA_VERSION" "$work/$name.yaml" > "$work/validate" 2>&1; then
    grep -v '^INFO' "$work/validate" >&2; exit 1
  fi
  echo "    $(grep -c '^INFO.* passed for resource' "$work/validate") objects valid"
  # kubernetes-validate only warns on a kind it has no schema for: allow exactly the kinds the
  # chart renders from other projects' CRDs, so nothing else slips through unchecked.
  grep "Couldn't find schema" "$work/validate" \
    | { grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1 ' || true; } > "$work/unvalidated" || true
  if [[ -s "$work/unvalidated" ]]; then cat "$work/unvalidated" >&2; exit 1; fi
  # shellcheck disable=SC2086 # split the comma list into arguments
  python3 tests/helm/check_rendered.py "$work/$name.yaml" "$release_ns" ${watched//,/ }
}

render_and_check default ""
for values in tests/helm/values-*.yaml; do
  watched=$(python3 -c 'import sys, yaml; print(",".join(yaml.safe_load(open(sys.argv[1])).get("watchNamespaces") or []))' "$values")
  render_and_check "$(basename "$values" .yaml)" "$watched" -f "$values"
done

for values in tests/helm/bad-*.yaml; do
  expected=$(sed -n 's/^# expect-error: //p' "$values")
  [[ -n "$expected" ]] || { echo "$values has no '# expect-error:' line" >&2; exit 1; }
  step "helm template with $values must fail naming: $expected"
  if "$HELM" template raft-operator "$chart" --namespace "$release_ns" -f "$values" > /dev/null 2> "$work/err"; then
    echo "helm template accepted $values; it must fail" >&2; exit 1
  fi
  sed 's/^/    /' "$work/err"
  if ! grep -qF -- "$expected" "$work/err"; then
    echo "the error for $values does not name '$expected'" >&2; exit 1
  fi
done
step "all checks passed"
