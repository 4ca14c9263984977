#!/usr/bin/env bash
# Brings the local Kubernetes sandbox up (idempotent): pinned binaries, PKI, bridge network,
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the node agent (6 nodes in
# 3 zones), CoreDNS and kube-proxy. Prints the kubeconfig path at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
t0=$SECONDS

for tool in ip iptables openssl kubectl python3 go cargo; do
  command -v "$tool" >/dev/null || die "missing $tool; run sandbox/install-deps.sh"
done

# 1. Binaries (cached by version) and the node agent.
"$SANDBOX_SRC/build-binaries.sh" all
log "building the node agent (cargo build -p sandbox-node)"
(cd "$REPO_ROOT" && cargo build -p sandbox-node --bins)
AGENT="$TARGET_DIR/debug/sandbox-node"
t_built=$SECONDS

start() { # name command...
  local name=$1; shift
  setsid "$@" >>"$HOME_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/pids/$name.pid"
  log "started $name (pid $!, log $HOME_DIR/logs/$name.log)"
}
render_config() { # the agent's config, with this checkout's binaries; prints it
  sed -e "s#@STATE_DIR@#$RUN_DIR#; s#@DATA_DIR@#$HOME_DIR#; s#@AGENT@#$AGENT#; s#@TARGET@#$TARGET_DIR#g; s#@K8S_VERSION@#$K8S_VERSION#" \
    "$SANDBOX_SRC/sandbox.yaml.in"
}
start_agent() {
  start sandbox-node env KUBECONFIG="$KUBECONFIG_PATH" RUST_LOG="${RUST_LOG:-info,kube=warn}" \
    "$AGENT" agent --config "$RUN_DIR/sandbox.yaml"
}

if alive kube-apiserver && alive sandbox-node && alive etcd \
   && kubectl --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz >/dev/null 2>&1; then
  # Restart the agent when its binary was rebuilt or its config changed (another checkout or
  # target directory: images must map to this checkout's raftd), so a sandbox left up runs
  # current code.
  running="$(readlink "/proc/$(pid_of sandbox-node)/exe" || true)"
  if [[ $running != "$AGENT" ]] || ! render_config | cmp -s - "$RUN_DIR/sandbox.yaml"; then
    log "node agent binary or config changed ($running); restarting the agent (pods restart, volumes stay)"
    kill -TERM "$(pid_of sandbox-node)" 2>/dev/null || true
    while alive sandbox-node; do sleep 0.2; done
    render_config >"$RUN_DIR/sandbox.yaml"
    start_agent
  fi
  log "sandbox already up"
  echo "KUBECONFIG=$KUBECONFIG_PATH"
  log "export KUBECONFIG=$KUBECONFIG_PATH"
  exit 0
fi
if [[ -d $RUN_DIR/pids ]]; then
  log "partial sandbox found; tearing it down first"
  "$SANDBOX_SRC/down.sh"
fi


mkdir -p "$RUN_DIR/pids" "$HOME_DIR"/{pki,logs,etcd,volumes}
PKI="$HOME_DIR/pki"

# 2. PKI: a CA, the API server's serving cert, client certs per component, service-account keys.
if [[ ! -f $PKI/ca.crt ]]; then
  log "generating PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 \
    -subj "/CN=raft-sandbox-ca" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  cert() { # name CN O [SANs]
    local name=$1 cn=$2 org=$3 sans=${4:-}
    openssl req -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -out "$PKI/$name.csr" \
      -subj "/CN=$cn${org:+/O=$org}" 2>/dev/null
    local ext="$PKI/$name.ext"
    if [[ -n $sans ]]; then
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans" >"$ext"
    else
      printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -out "$PKI/$name.crt" -days 3650 -extfile "$ext" 2>/dev/null
    rm -f "$PKI/$name.csr" "$ext"
  }
  cert apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$GATEWAY,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1"
  cert admin kubernetes-admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert coredns system:coredns ""
fi
kubeconfig() { # name cert
  local out="$HOME_DIR/$1.kubeconfig"
  cat >"$out" <<KC
apiVersion: v1
kind: Config
clusters:
- name: raft-sandbox
  cluster:
    server: https://$GATEWAY:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: raft-sandbox
  context: {cluster: raft-sandbox, user: $2}
current-context: raft-sandbox
KC
}
for c in admin controller-manager scheduler kube-proxy coredns; do kubeconfig "$c" "$c"; done
cp "$HOME_DIR/admin.kubeconfig" "$KUBECONFIG_PATH"
mkdir -p "$REPO_ROOT/.sandbox" && ln -sfn "$KUBECONFIG_PATH" "$REPO_ROOT/.sandbox/kubeconfig"

# 3. Network: the bridge owns 10.88.0.0/16; pods get no default route, and a FORWARD guard keeps
#    anything from or to that range from leaving the machine.
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  ip addr add "$GATEWAY/16" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
[[ -f $RUN_DIR/ip_forward.orig ]] || cat /proc/sys/net/ipv4/ip_forward >"$RUN_DIR/ip_forward.orig"
echo 1 >/proc/sys/net/ipv4/ip_forward
iptables -w -N SBX-GUARD 2>/dev/null || iptables -w -F SBX-GUARD
iptables -w -A SBX-GUARD -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT
iptables -w -A SBX-GUARD -s "$POD_CIDR" -j DROP
iptables -w -A SBX-GUARD -d "$POD_CIDR" -j DROP
iptables -w -C FORWARD -j SBX-GUARD 2>/dev/null || iptables -w -I FORWARD -j SBX-GUARD

wait_for() { # what timeout-seconds command...
  local what=$1 timeout=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start < timeout )) || die "$what not ready after ${timeout}s (logs: $HOME_DIR/logs)"
    sleep 0.5
  done
  log "$what ready ($((SECONDS - start))s)"
}

# 4. Control plane.
start etcd "$ETCD_BIN/etcd" --name sandbox --data-dir "$HOME_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "sandbox=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_for etcd 60 "$ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_CLIENT_PORT" endpoint health

ISSUER=https://kubernetes.default.svc.cluster.local
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address "$GATEWAY" --advertise-address "$GATEWAY" --secure-port "$API_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --service-account-issuer "$ISSUER" --api-audiences "$ISSUER" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --allow-privileged=true --profiling=false --v=1
wait_for kube-apiserver 180 kubectl --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$HOME_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$HOME_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$HOME_DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10257 \
  --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --cluster-name raft-sandbox \
  --controllers '*' \
  --node-monitor-period 2s --node-monitor-grace-period 10s \
  --profiling=false --v=1
start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$HOME_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$HOME_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$HOME_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false --v=1

# 5. Cluster add-ons: default StorageClass, CoreDNS's RBAC.
kubectl --kubeconfig "$KUBECONFIG_PATH" apply -f "$SANDBOX_SRC/manifests/" >/dev/null
log "applied sandbox manifests (default StorageClass, CoreDNS RBAC)"

# 6. The node agent.
render_config >"$RUN_DIR/sandbox.yaml"
start_agent

# 7. CoreDNS on the gateway address, with the kubernetes plugin.
cat >"$RUN_DIR/Corefile" <<CF
.:53 {
    bind $GATEWAY
    errors
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $HOME_DIR/coredns.kubeconfig raft-sandbox
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
CF
start coredns "$COREDNS_BIN/coredns" -conf "$RUN_DIR/Corefile"

# 8. kube-proxy (iptables mode) for Service ClusterIPs, from the host and from pods.
cat >"$RUN_DIR/kube-proxy.yaml" <<KP
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $HOME_DIR/kube-proxy.kubeconfig
hostnameOverride: sandbox-a1
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$GATEWAY/32"]
iptables:
  masqueradeAll: true
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
KP
start kube-proxy "$K8S_BIN/kube-proxy" --config "$RUN_DIR/kube-proxy.yaml" --v=1

ready_nodes() {
  [[ $(kubectl --kubeconfig "$KUBECONFIG_PATH" get nodes -l sandbox.raft-operator.io/node=true \
        -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True) -ge 6 ]]
}
wait_for "6 Ready nodes" 120 ready_nodes
wait_for coredns 60 curl -fsS http://127.0.0.1:18181/ready
wait_for "default service account" 60 kubectl --kubeconfig "$KUBECONFIG_PATH" -n default get serviceaccount default

elapsed=$((SECONDS - t0))
log "sandbox up in ${elapsed}s (binaries ready after $((t_built - t0))s)"
kubectl --kubeconfig "$KUBECONFIG_PATH" get nodes -L topology.kubernetes.io/zone >&2
echo "KUBECONFIG=$KUBECONFIG_PATH"
log "export KUBECONFIG=$KUBECONFIG_PATH"
