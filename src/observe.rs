//! The observe step: read the RaftCluster's pods, volumes and nodes from the API server and
//! every member's raftd status in parallel, each call bounded, into an [`Observed`].

use crate::admin;
use crate::crd::{MemberRole, RaftCluster};
use crate::manifests::{
    CLUSTER_LABEL, GRPC_PORT, MEMBER_LABEL, REVISION_LABEL, ZONE_LABEL, pod_revision,
};
use crate::member::pod_name;
use crate::observed::{MemberObserved, Observed, PodObserved, RaftObserved};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};

/// Why observation failed (only API-server failures; an unreachable member is an observation).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Listing objects failed.
    #[error("listing {what} failed: {source}")]
    List {
        /// What was being listed.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn member_ordinal(labels: &BTreeMap<String, String>) -> Option<u32> {
    labels.get(MEMBER_LABEL).and_then(|v| v.parse().ok())
}

/// Whether a pod's container is stuck restarting.
fn is_crash_looping(pod: &Pod) -> bool {
    let Some(statuses) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
    else {
        return false;
    };
    statuses.iter().any(|c| {
        let waiting_in_backoff = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff");
        waiting_in_backoff || (c.restart_count >= 3 && !c.ready)
    })
}

fn pod_observed(pod: &Pod, node_zones: &BTreeMap<String, String>) -> PodObserved {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = pod.status.as_ref();
    PodObserved {
        revision: pod
            .labels()
            .get(REVISION_LABEL)
            .cloned()
            .unwrap_or_default(),
        zone: node.as_ref().and_then(|n| node_zones.get(n).cloned()),
        node,
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        crash_looping: is_crash_looping(pod),
        restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum()),
        ip: status.and_then(|s| s.pod_ip.clone()),
    }
}

/// Pause before asking the leader a second time about members it has not heard from.
pub const CONTACT_CONFIRM_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// A member the leader has not heard from within the election timeout is asked about once more,
/// [`CONTACT_CONFIRM_DELAY`] later, and counts as cut off only if the second answer agrees: on a
/// loaded machine an ack can be late by more than the window without anything being wrong, and
/// every such blip would flap `Degraded` and hold a rollout. A real partition shows in both.
async fn confirm_lost_contact(
    answers: &mut [(Option<RaftObserved>, Option<String>)],
    ordinals: &BTreeSet<u32>,
    pods: &BTreeMap<u32, &Pod>,
    spec: &crate::crd::RaftClusterSpec,
) {
    let window = u64::from(spec.raft.election_timeout_max_ms);
    let leader = answers
        .iter()
        .zip(ordinals.iter())
        .filter_map(|((raft, _), ordinal)| Some((raft.as_ref()?, *ordinal)))
        .filter(|(r, _)| r.role == MemberRole::Leader)
        .max_by_key(|(r, _)| r.term)
        .map(|(r, ordinal)| {
            (
                r.acks.values().any(|a| a.problem(window).is_some()),
                ordinal,
            )
        });
    let Some((true, leader_ordinal)) = leader else {
        return;
    };
    let Some(ip) = pods
        .get(&leader_ordinal)
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.pod_ip.clone())
    else {
        return;
    };
    tokio::time::sleep(CONTACT_CONFIRM_DELAY).await;
    let Ok(second) = admin::member_status(&format!("{ip}:{GRPC_PORT}"), admin::ADMIN_TIMEOUT).await
    else {
        return;
    };
    let Some(index) = ordinals.iter().position(|o| *o == leader_ordinal) else {
        return;
    };
    if let Some((Some(first), _)) = answers.get_mut(index) {
        first.acks = crate::observed::confirm_acks(first, &second, window);
    }
}

/// Observe one RaftCluster.
pub async fn observe(client: &Client, cluster: &RaftCluster) -> Result<Observed, ObserveError> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();
    let selector = ListParams::default().labels(&format!("{CLUSTER_LABEL}={name}"));

    let nodes: Api<Node> = Api::all(client.clone());
    let node_list =
        nodes
            .list(&ListParams::default())
            .await
            .map_err(|source| ObserveError::List {
                what: "nodes",
                source,
            })?;
    let node_zones: BTreeMap<String, String> = node_list
        .items
        .iter()
        .filter_map(|n| Some((n.name_any(), n.labels().get(ZONE_LABEL)?.clone())))
        .collect();
    let zones: Vec<String> = if cluster.spec.zones.is_empty() {
        node_zones
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        let mut zones = cluster.spec.zones.clone();
        zones.sort();
        zones
    };

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod_list = pods
        .list(&selector)
        .await
        .map_err(|source| ObserveError::List {
            what: "pods",
            source,
        })?;
    let volumes: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let volume_list = volumes
        .list(&selector)
        .await
        .map_err(|source| ObserveError::List {
            what: "persistentvolumeclaims",
            source,
        })?;

    let desired = u32::try_from(cluster.spec.replicas).unwrap_or(0);
    let mut ordinals: BTreeSet<u32> = (0..desired).collect();
    let pods_by_ordinal: BTreeMap<u32, &Pod> = pod_list
        .items
        .iter()
        .filter_map(|p| Some((member_ordinal(p.labels())?, p)))
        .collect();
    let volume_ordinals: BTreeSet<u32> = volume_list
        .items
        .iter()
        .filter_map(|v| member_ordinal(v.labels()))
        .collect();
    ordinals.extend(pods_by_ordinal.keys().copied());

    // Members the previous observation could not reach get a shorter timeout (see
    // `UNREACHABLE_STATUS_TIMEOUT`); a member that answered last time keeps the full one.
    let unreachable_before: BTreeSet<String> = cluster
        .status
        .as_ref()
        .map(|s| {
            s.members
                .iter()
                .filter(|m| m.role == MemberRole::Unknown)
                .map(|m| m.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let probes = ordinals.iter().map(|ordinal| {
        let pod = pods_by_ordinal.get(ordinal).copied();
        let timeout = if unreachable_before.contains(&pod_name(&name, *ordinal)) {
            admin::UNREACHABLE_STATUS_TIMEOUT
        } else {
            admin::ADMIN_TIMEOUT
        };
        let ip = pod
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.pod_ip.clone());
        let running = pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none());
        async move {
            match (ip, running) {
                (Some(ip), true) => {
                    match admin::member_status(&format!("{ip}:{GRPC_PORT}"), timeout).await {
                        Ok(raft) => (Some(raft), None),
                        Err(err) => (None, Some(err.reason)),
                    }
                }
                (None, true) => (None, Some("pod has no IP yet".to_string())),
                (_, false) if pod.is_some() => (None, Some("pod is terminating".to_string())),
                _ => (None, Some("no pod".to_string())),
            }
        }
    });
    let mut answers = futures::future::join_all(probes).await;
    confirm_lost_contact(&mut answers, &ordinals, &pods_by_ordinal, &cluster.spec).await;

    let members = ordinals
        .iter()
        .zip(answers)
        .map(|(ordinal, (raft, unreachable_reason))| MemberObserved {
            ordinal: *ordinal,
            pod: pods_by_ordinal
                .get(ordinal)
                .map(|p| pod_observed(p, &node_zones)),
            volume_exists: volume_ordinals.contains(ordinal),
            raft,
            unreachable_reason,
        })
        .collect();

    Ok(Observed {
        name,
        namespace,
        uid: cluster.metadata.uid.clone().unwrap_or_default(),
        generation: cluster.metadata.generation,
        spec: cluster.spec.clone(),
        previous_status: cluster.status.clone().unwrap_or_default(),
        zones,
        target_revision: pod_revision(&cluster.spec),
        members,
        now_unix: k8s_openapi::jiff::Timestamp::now().as_second(),
        recovery_approval: cluster
            .annotations()
            .get(crate::crd::APPROVE_RECOVERY_ANNOTATION)
            .cloned(),
    })
}
