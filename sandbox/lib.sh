# Shared settings and helpers for sandbox/{up,down,status}.sh. Sourced, not executed.
# shellcheck shell=bash
SANDBOX_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SANDBOX_SRC/.." && pwd)"
# shellcheck source=sandbox/versions.env
source "$SANDBOX_SRC/versions.env"
CACHE="${RAFT_SANDBOX_CACHE:-${RAFT_CACHE_DIR:-/var/cache/raft-operator}}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
K8S_BIN="$CACHE/k8s-v$K8S_VERSION"
ETCD_BIN="$CACHE/etcd-v$ETCD_VERSION"
COREDNS_BIN="$CACHE/coredns-v$COREDNS_VERSION"
# Machine-wide: one sandbox per machine (it owns a bridge, an address range and ports).
RUN_DIR=/run/raft-sandbox            # runtime state: pids, pod records, control files
HOME_DIR=/var/lib/raft-sandbox       # pki, kubeconfigs, logs, etcd data, volumes
KUBECONFIG_PATH="$HOME_DIR/kubeconfig"
BRIDGE=sbx0
GATEWAY=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
API_PORT=6443
ETCD_CLIENT_PORT=32379
ETCD_PEER_PORT=32380
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler sandbox-node coredns kube-proxy)

log() { printf '[sandbox %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_of() { local f="$RUN_DIR/pids/$1.pid"; [[ -f $f ]] && cat "$f"; }
alive() { local pid; pid="$(pid_of "$1")" && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

require_root() { [[ $(id -u) -eq 0 ]] || die "the sandbox needs root (network namespaces, bridge, mounts); run as root"; }
