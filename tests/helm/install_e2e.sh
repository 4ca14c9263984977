#!/usr/bin/env bash
# make test-helm-install: the install path a platform team uses, in the sandbox.
#   1. `helm install` of charts/raft-operator with 2 replicas (leader election): the operator
#      runs as pods with in-cluster config and its service-account token;
#   2. `kubectl apply` of examples/raftcluster-5.yaml reaches Ready, placed 2/2/1;
#   3. the operator's service account is really restricted: an action outside its role is
#      refused by the API server (Forbidden), one inside it is allowed;
#   4. `helm uninstall` removes the operator and leaves the RaftCluster, its members, their
#      volumes and the data alone.
# Needs HELM, KUBECONFIG (the sandbox) and RAFTCTL in the environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${HELM:?HELM must name a helm v3 binary (make deps-helm)}"
: "${KUBECONFIG:?KUBECONFIG must point at the sandbox}"
: "${RAFTCTL:?RAFTCTL must name the raftctl binary}"
KUBECTL=${KUBECTL:-kubectl}
suffix=$$
release_ns=raft-system-e2e-$suffix
apps_ns=raft-apps-e2e-$suffix
sa=system:serviceaccount:$release_ns:raft-operator
step() { echo "== test-helm-install [$(date +%T)]: $*"; }
fail() { echo "test-helm-install: FAILED: $*" >&2; exit 1; }

cleanup() {
  # The operator is gone by now (or the test failed): strip the finalizer so the namespace can go.
  "$KUBECTL" -n "$apps_ns" get raftclusters -o name 2>/dev/null | while read -r rc; do
    "$KUBECTL" -n "$apps_ns" patch "$rc" --type=merge -p '{"metadata":{"finalizers":[]}}' >/dev/null 2>&1 || true
  done
  "$HELM" uninstall raft-operator -n "$release_ns" >/dev/null 2>&1 || true
  "$KUBECTL" delete namespace "$apps_ns" "$release_ns" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

wait_for() { # seconds, description, command...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${deadline}s waiting for $what"
    sleep 1
  done
}

step "helm install (2 replicas, leader election, image raft-operator:e2e)"
started=$SECONDS
"$HELM" install raft-operator charts/raft-operator -n "$release_ns" --create-namespace \
  --set replicaCount=2 --set image.tag=e2e --set logFormat=text --wait --timeout 180s
"$KUBECTL" -n "$release_ns" get pods -o wide
echo "    operator Deployment available after $((SECONDS - started))s"

step "one replica holds the leader Lease"
holder() { "$KUBECTL" -n "$release_ns" get lease raft-operator-leader -o jsonpath='{.spec.holderIdentity}'; }
wait_for 60 "the leader Lease" test -n "$(holder 2>/dev/null || true)"
leader_pod=$(holder)
"$KUBECTL" -n "$release_ns" get pod "$leader_pod" >/dev/null || fail "lease holder $leader_pod is not an operator pod"
echo "    lease held by $leader_pod"

step "kubectl apply examples/raftcluster-5.yaml"
"$KUBECTL" create namespace "$apps_ns" >/dev/null
"$KUBECTL" -n "$apps_ns" apply -f examples/raftcluster-5.yaml
name=$("$KUBECTL" -n "$apps_ns" get raftclusters -o jsonpath='{.items[0].metadata.name}')
ready() {
  [[ $("$KUBECTL" -n "$apps_ns" get raftcluster "$name" \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}/{.status.healthyVoters}') == True/5 ]]
}
started=$SECONDS
wait_for 240 "$name Available with 5 healthy voters" ready
echo "    $name Ready after $((SECONDS - started))s"
"$KUBECTL" -n "$apps_ns" get raftclusters
placement=$("$KUBECTL" -n "$apps_ns" get raftcluster "$name" -o jsonpath='{.status.placement[*].voters}' \
  | tr ' ' '\n' | sort -rn | tr '\n' ' ')
[[ $placement == "2 2 1 " ]] || fail "placement is '$placement', want 2 2 1"

step "the operator's service account is restricted by its RBAC"
if out=$("$KUBECTL" get secrets -n "$apps_ns" --as="$sa" 2>&1); then
  fail "listing secrets as $sa was allowed: $out"
fi
grep -q Forbidden <<<"$out" || fail "expected Forbidden, got: $out"
echo "    refused as expected: $out"
if out=$("$KUBECTL" delete nodes --all --dry-run=server --as="$sa" 2>&1); then
  fail "deleting nodes as $sa was allowed: $out"
fi
grep -q Forbidden <<<"$out" || fail "expected Forbidden, got: $out"
"$KUBECTL" get raftclusters -n "$apps_ns" --as="$sa" >/dev/null || fail "$sa cannot list raftclusters"
"$KUBECTL" get pods -n "$apps_ns" --as="$sa" >/dev/null || fail "$sa cannot list pods"
echo "    allowed: list raftclusters and pods"

step "write through the client Service, then helm uninstall"
ip=$("$KUBECTL" -n "$apps_ns" get service "$name" -o jsonpath='{.spec.clusterIP}')
"$RAFTCTL" put helm-e2e survives-uninstall --endpoints "$ip:7000"
pvcs_before=$("$KUBECTL" -n "$apps_ns" get pvc -o name | sort)
uid_before=$("$KUBECTL" -n "$apps_ns" get raftcluster "$name" -o jsonpath='{.metadata.uid}')
"$HELM" uninstall raft-operator -n "$release_ns" --wait --timeout 120s
gone() { [[ -z $("$KUBECTL" -n "$release_ns" get pods -o name 2>/dev/null) ]]; }
wait_for 60 "operator pods gone" gone
[[ $("$KUBECTL" -n "$apps_ns" get raftcluster "$name" -o jsonpath='{.metadata.uid}') == "$uid_before" ]] \
  || fail "the RaftCluster did not survive helm uninstall"
[[ $("$KUBECTL" -n "$apps_ns" get pvc -o name | sort) == "$pvcs_before" ]] || fail "volumes changed on uninstall"
running=$("$KUBECTL" -n "$apps_ns" get pods -l raft-operator.dev/cluster="$name" \
  --field-selector=status.phase=Running -o name | wc -l)
[[ $running == 5 ]] || fail "$running of 5 members running after uninstall"
"$KUBECTL" get crd raftclusters.raft-operator.dev >/dev/null || fail "the CRD was removed"
value=$("$RAFTCTL" get helm-e2e --endpoints "$ip:7000" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')
[[ $value == survives-uninstall ]] || fail "read '$value' after uninstall"
echo "    after uninstall: RaftCluster, 5 members, $(wc -l <<<"$pvcs_before") volumes and the data are intact"
step "passed"
