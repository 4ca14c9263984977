#!/usr/bin/env bash
# Tears the sandbox down (idempotent): stops every sandbox process and pod process, removes pod
# network namespaces, kube-proxy's and our iptables rules, the bridge, and the sandbox's state.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root

stop_pid() { # name pid
  local name=$1 pid=$2
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || { log "stopped $name"; return 0; }; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
  log "killed $name"
}
# Agent first so it stops restarting pods, then pods, then the rest in reverse start order.
for name in sandbox-node kube-proxy coredns kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pid="$(pid_of "$name" || true)"
  [[ -n ${pid:-} ]] && stop_pid "$name" "$pid"
done
# Pod processes (each in its own process group) and their namespaces.
if [[ -d $RUN_DIR/pods ]]; then
  for rec in "$RUN_DIR"/pods/*/record.json; do
    [[ -f $rec ]] || continue
    python3 - "$rec" <<'PY' | while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null; done
import json, sys
for pid in json.load(open(sys.argv[1])).get("containers", {}).values():
    print(pid)
PY
  done
fi
# Anything still running from the sandbox's binaries (e.g. a pod-exec helper).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^sbx-' || true); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null && log "removed netns $ns"
done
for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^sbx[0-9a-f]' || true); do
  ip link del "$veth" 2>/dev/null
done
# kube-proxy's rules, then ours.
if [[ -x $K8S_BIN/kube-proxy ]] && iptables -w -t nat -L KUBE-SERVICES -n >/dev/null 2>&1; then
  "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 && log "removed kube-proxy rules"
fi
# kube-proxy --cleanup leaves KUBE-FIREWALL (and KUBE-* jumps) behind; remove every KUBE-* rule and
# chain (no other Kubernetes node runs on this machine; the sandbox's kube-proxy made them).
for ipt in iptables ip6tables; do
  command -v "$ipt-save" >/dev/null || continue
  for table in filter nat mangle; do
    "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' | while read -r rule; do
      # shellcheck disable=SC2086
      "$ipt" -w -t "$table" -D ${rule#-A } 2>/dev/null
    done
    for chain in $("$ipt-save" -t "$table" 2>/dev/null | grep -oE '^:KUBE-[^ ]+' | tr -d :); do
      "$ipt" -w -t "$table" -F "$chain" 2>/dev/null
    done
    for chain in $("$ipt-save" -t "$table" 2>/dev/null | grep -oE '^:KUBE-[^ ]+' | tr -d :); do
      "$ipt" -w -t "$table" -X "$chain" 2>/dev/null
    done
  done
done
if iptables -w -L SBX-GUARD -n >/dev/null 2>&1; then
  iptables -w -D FORWARD -j SBX-GUARD 2>/dev/null
  iptables -w -F SBX-GUARD && iptables -w -X SBX-GUARD
  log "removed SBX-GUARD"
fi
if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" && log "removed bridge $BRIDGE"; fi
if [[ -f $RUN_DIR/ip_forward.orig ]]; then cat "$RUN_DIR/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward; fi
# Empty mount points pod-exec had to create on the host.
if [[ -f $RUN_DIR/created-mountpoints ]]; then
  sort -ru "$RUN_DIR/created-mountpoints" | while read -r p; do
    if [[ -d $p ]]; then rmdir "$p" 2>/dev/null; elif [[ -f $p && ! -s $p ]]; then rm -f "$p"; fi
  done
fi
rm -rf "$RUN_DIR" "$HOME_DIR/etcd" "$HOME_DIR/volumes"
# `ip netns add` turns /run/netns into a mount point; drop it once no namespace is left.
if [[ -z $(ip netns list 2>/dev/null) ]] && grep -q ' /run/netns ' /proc/mounts; then
  umount /run/netns 2>/dev/null && log "unmounted /run/netns"
fi
leftover="$(grep -E ' /run/netns| /var/lib/raft-sandbox' /proc/mounts || true)"
[[ -z $leftover ]] || log "WARNING: leftover mounts: $leftover"
log "sandbox down"
