//! Node registration and heartbeats: Node objects with zone/region labels, Ready conditions kept
//! current, and node Leases in `kube-node-lease` renewed. A node whose zone is down stops
//! heartbeating, like a dead kubelet; the node lifecycle controller then marks it NotReady.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use super::AgentContext;
use crate::config::NodeConfig;

const FIELD_MANAGER: &str = "sandbox-node";
const STATUS_EVERY: Duration = Duration::from_secs(10);
const LEASE_EVERY: Duration = Duration::from_secs(2);

/// Creates (or updates) every configured Node and reports it Ready.
pub async fn register(ctx: &AgentContext) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    for node in &ctx.config.nodes {
        let object = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                    "topology.kubernetes.io/zone": node.zone,
                    "topology.kubernetes.io/region": ctx.config.region,
                    "node.kubernetes.io/instance-type": "sandbox",
                    "sandbox.raft-operator.io/node": "true",
                },
            },
        });
        nodes
            .patch(
                &node.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("registering node {}", node.name))?;
    }
    let mut transitions = HashMap::new();
    beat_all(ctx, &mut transitions).await;
    Ok(())
}

/// Renews node leases (every 2 s) and node status (every 10 s) until the agent stops. Nodes of a
/// zone that is down get neither, so the node lifecycle controller marks them NotReady (Unknown)
/// after its grace period and marks their pods not ready, exactly as for a dead kubelet.
pub async fn heartbeat_loop(ctx: Arc<AgentContext>) -> Result<()> {
    let mut transitions: HashMap<String, (bool, Timestamp)> = HashMap::new();
    let mut last_status = tokio::time::Instant::now();
    let mut last_lease = tokio::time::Instant::now();
    let mut last_down: Vec<bool> = ctx
        .config
        .nodes
        .iter()
        .map(|n| ctx.node_down(&n.name))
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let down: Vec<bool> = ctx
            .config
            .nodes
            .iter()
            .map(|n| ctx.node_down(&n.name))
            .collect();
        let changed = down != last_down;
        if changed || last_status.elapsed() >= STATUS_EVERY {
            beat_all(&ctx, &mut transitions).await;
            last_status = tokio::time::Instant::now();
            last_lease = last_status;
            last_down = down;
        } else if last_lease.elapsed() >= LEASE_EVERY {
            for node in ctx.config.nodes.iter().filter(|n| !ctx.node_down(&n.name)) {
                if let Err(e) = renew_lease(&ctx, node).await {
                    warn!(node = %node.name, error = %format!("{e:#}"), "node lease renewal failed");
                }
            }
            last_lease = tokio::time::Instant::now();
        }
    }
}

async fn beat_all(ctx: &AgentContext, transitions: &mut HashMap<String, (bool, Timestamp)>) {
    for node in &ctx.config.nodes {
        let ready = !ctx.node_down(&node.name);
        let changed_at = match transitions.get(&node.name) {
            Some((was, at)) if *was == ready => *at,
            _ => {
                let now = Timestamp::now();
                transitions.insert(node.name.clone(), (ready, now));
                if ready {
                    info!(node = %node.name, "node heartbeating");
                } else {
                    info!(node = %node.name, "zone down: node stops heartbeating");
                }
                now
            }
        };
        if !ready {
            continue;
        }
        if let Err(e) = patch_status(ctx, node, changed_at).await {
            warn!(node = %node.name, error = %format!("{e:#}"), "node status heartbeat failed");
        }
        if let Err(e) = renew_lease(ctx, node).await {
            warn!(node = %node.name, error = %format!("{e:#}"), "node lease renewal failed");
        }
    }
}

async fn patch_status(ctx: &AgentContext, node: &NodeConfig, changed_at: Timestamp) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let now = crate::agent::status::rfc3339(Timestamp::now());
    let changed = crate::agent::status::rfc3339(changed_at);
    let pressure = |kind: &str, reason: &str| {
        json!({"type": kind, "status": "False", "reason": reason, "message": "sandbox node",
               "lastHeartbeatTime": now, "lastTransitionTime": changed})
    };
    let ready_condition = json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "sandbox node agent is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": changed});
    let status = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"},
            "conditions": [
                pressure("MemoryPressure", "KubeletHasSufficientMemory"),
                pressure("DiskPressure", "KubeletHasNoDiskPressure"),
                pressure("PIDPressure", "KubeletHasSufficientPID"),
                ready_condition,
            ],
            "addresses": [
                {"type": "InternalIP", "address": ctx.config.gateway},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("sandbox-{}", node.name),
                "systemUUID": format!("sandbox-{}", node.name),
                "bootID": format!("sandbox-{}", node.name),
                "kernelVersion": kernel_version(),
                "osImage": "raft-operator sandbox",
                "containerRuntimeVersion": "sandbox-node://0.1.0",
                "kubeletVersion": ctx.config.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
        },
    });
    nodes
        .patch_status(
            &node.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .with_context(|| format!("patching status of node {}", node.name))?;
    Ok(())
}

async fn renew_lease(ctx: &AgentContext, node: &NodeConfig) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node.name},
        "spec": {
            "holderIdentity": node.name,
            "leaseDurationSeconds": 40,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now()),
        },
    });
    leases
        .patch(
            &node.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .with_context(|| format!("renewing lease of node {}", node.name))?;
    Ok(())
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
