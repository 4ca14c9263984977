#!/usr/bin/env bash
# make demo: sandbox up -> CRD and operator -> a 5-voter RaftCluster across 3 zones -> Ready ->
# its status, the per-zone view, and a few writes and reads through the client Service.
set -euo pipefail
cd "$(dirname "$0")/.."

export KUBECONFIG="${KUBECONFIG:-/var/lib/raft-sandbox/kubeconfig}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
STATE="${RAFT_DEMO_STATE:-/run/raft-sandbox}"
EXAMPLE="${RAFT_DEMO_EXAMPLE:-examples/raftcluster-5.yaml}"
step() { printf '\n== %s\n' "$*"; }

step "building raftd, raft-operator and raftctl"
cargo build -q -p raftd -p raftctl -p raft-operator --bins

step "bringing up the sandbox (real kube-apiserver, scheduler, controllers; 6 nodes in 3 zones)"
make -s sandbox-up
kubectl get nodes -L topology.kubernetes.io/zone

step "installing the RaftCluster CRD"
kubectl apply --server-side -f crds/raftcluster.yaml
kubectl wait --for=condition=Established crd/raftclusters.raft-operator.dev --timeout=60s

step "starting the operator (log: $STATE/operator.log)"
mkdir -p "$STATE"
if [[ -f $STATE/operator.pid ]] && kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$STATE/operator.pid"))"
else
  RUST_LOG=info,kube=warn nohup "$TARGET/debug/raft-operator" --metrics-addr 127.0.0.1:9464 \
    --log-format json >"$STATE/operator.log" 2>&1 &
  echo $! >"$STATE/operator.pid"
  echo "operator pid $(cat "$STATE/operator.pid"); metrics on http://127.0.0.1:9464/metrics"
fi

step "creating the cluster from $EXAMPLE"
name=$(kubectl apply -f "$EXAMPLE" -o jsonpath='{.metadata.name}')
ns=$(kubectl get -f "$EXAMPLE" -o jsonpath='{.metadata.namespace}')
ns=${ns:-default}
started=$(date +%s)
want=$(kubectl -n "$ns" get raftcluster "$name" -o jsonpath='{.spec.replicas}')
echo "waiting for raftcluster/$name: Available with $want healthy voters..."
ready() {
  [[ $(kubectl -n "$ns" get raftcluster "$name" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}/{.status.readyReplicas}' 2>/dev/null) == "True/$want" ]]
}
until ready; do
  sleep 2
  printf '  %3ss  %s\n' "$(( $(date +%s) - started ))" \
    "$(kubectl -n "$ns" get raftcluster "$name" -o jsonpath='{.status.conditions[?(@.type=="Progressing")].message}' 2>/dev/null)"
  if (( $(date +%s) - started > 300 )); then
    echo "not Available after 300s; operator log: $STATE/operator.log" >&2
    exit 1
  fi
done
echo "Available with $want healthy voters after $(( $(date +%s) - started ))s"

step "kubectl get raftclusters"
kubectl -n "$ns" get raftclusters

step "kubectl raft status $name (members by zone)"
ln -sf raftctl "$TARGET/debug/kubectl-raft"
PATH="$TARGET/debug:$PATH" kubectl raft status "$name" -n "$ns"

step "writes and reads through the client Service"
ip=$(kubectl -n "$ns" get service "$name" -o jsonpath='{.spec.clusterIP}')
raftctl() { "$TARGET/debug/raftctl" "$@" --endpoints "$ip:7000"; }
for i in 1 2 3; do raftctl put "demo/key-$i" "value-$i"; done
raftctl get demo/key-2
raftctl get demo/key-3 --consistency lease -o json
raftctl list demo/

cat <<MSG

The cluster keeps running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl raft status $name            # with $TARGET/debug on PATH
  target/debug/sandboxctl zone-down zone-a   # then watch the status; zone-up to restore
  make sandbox-down                     # stops everything (kill the operator: kill \$(cat $STATE/operator.pid))
MSG
