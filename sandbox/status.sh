#!/usr/bin/env bash
# Shows the sandbox's processes, nodes and the pods its agent runs.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
up=0
for name in "${COMPONENTS[@]}"; do
  if alive "$name"; then printf '%-26s running (pid %s)\n' "$name" "$(pid_of "$name")"; up=$((up + 1))
  else printf '%-26s not running\n' "$name"; fi
done
if [[ $up -eq 0 ]]; then echo "sandbox is down"; exit 3; fi
echo "KUBECONFIG=$KUBECONFIG_PATH"
kubectl --kubeconfig "$KUBECONFIG_PATH" get nodes -L topology.kubernetes.io/zone 2>&1
echo "network namespaces: $(ip netns list 2>/dev/null | grep -c '^sbx-')"
[[ -x $TARGET_DIR/debug/sandboxctl ]] && "$TARGET_DIR/debug/sandboxctl" pods
[[ $up -eq ${#COMPONENTS[@]} ]] || exit 1
