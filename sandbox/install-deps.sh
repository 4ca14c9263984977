#!/usr/bin/env bash
# Installs what the local Kubernetes sandbox needs on a fresh Debian machine (run as root), then
# builds or reuses the pinned binaries (cached by version under ${RAFT_SANDBOX_CACHE:-/var/cache/raft-operator}).
# Needs Go (>= 1.24) and Rust already on PATH. Safe to re-run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $(id -u) -eq 0 ]] || { echo "install-deps.sh: run as root" >&2; exit 1; }
need=()
for pair in ip:iproute2 iptables:iptables conntrack:conntrack openssl:openssl curl:curl python3:python3 unshare:util-linux; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [[ ${#need[@]} -gt 0 ]]; then
  echo "[install-deps] apt-get install ${need[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
command -v kubectl >/dev/null || { echo "install-deps: kubectl is not on PATH" >&2; exit 1; }
command -v go >/dev/null || { echo "install-deps: go is not on PATH" >&2; exit 1; }
"$here/build-binaries.sh" all
