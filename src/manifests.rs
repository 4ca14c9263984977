//! The Kubernetes objects a RaftCluster owns, built purely from its spec: one Pod and one
//! PersistentVolumeClaim per member, a headless peer Service, a client Service and a
//! PodDisruptionBudget driven by Raft health. No client here; `act` applies them.

use crate::crd::{RaftCluster, RaftClusterSpec, ReadMode};
use crate::member::{pod_name, raft_id, volume_name};
use k8s_openapi::api::core::v1::{Affinity, Volume};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSpec, Probe, SecurityContext, Service, ServicePort, ServiceSpec,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use std::collections::BTreeMap;

/// Label carrying the cluster name on every object the operator owns.
pub const CLUSTER_LABEL: &str = "raft-operator.dev/cluster";
/// Label carrying a member's ordinal.
pub const MEMBER_LABEL: &str = "raft-operator.dev/member";
/// Label carrying the pod-template revision a member pod was built from.
pub const REVISION_LABEL: &str = "raft-operator.dev/revision";
/// The node label voters are spread over.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Port for clients, admin and peers (gRPC).
pub const GRPC_PORT: i32 = 7000;
/// Port for /healthz, /readyz, /status and /metrics.
pub const HTTP_PORT: i32 = 8080;
/// Where the member's volume is mounted.
pub const DATA_DIR: &str = "/var/lib/raftd";

/// Name of the headless Service that gives members stable DNS names.
pub fn peer_service_name(cluster: &str) -> String {
    format!("{cluster}-peers")
}

/// Stable DNS name of a member: `<pod>.<cluster>-peers.<ns>.svc.cluster.local`.
pub fn member_host(cluster: &str, namespace: &str, ordinal: u32) -> String {
    format!(
        "{}.{}.{namespace}.svc.cluster.local",
        pod_name(cluster, ordinal),
        peer_service_name(cluster)
    )
}

/// gRPC address of a member, as written into the Raft membership.
pub fn member_grpc_addr(cluster: &str, namespace: &str, ordinal: u32) -> String {
    format!("{}:{GRPC_PORT}", member_host(cluster, namespace, ordinal))
}

/// HTTP address of a member.
pub fn member_http_addr(cluster: &str, namespace: &str, ordinal: u32) -> String {
    format!("{}:{HTTP_PORT}", member_host(cluster, namespace, ordinal))
}

/// Labels every object of the cluster carries.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "raftd".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "raft-operator".to_string(),
        ),
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
    ])
}

fn selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster.to_string())])
}

/// Revision of the member pod template: a stable hash of every spec field that changes what a
/// member runs. A change means a rolling replacement.
pub fn pod_revision(spec: &RaftClusterSpec) -> String {
    let relevant = serde_json::json!({
        "image": spec.image,
        "version": spec.version,
        "raft": spec.raft,
        "readMode": spec.read_mode,
        "maxClockDriftMs": spec.max_clock_drift_ms,
        "resources": spec.resources,
    });
    // FNV-1a: stable across Rust releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in relevant.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// An owner reference making the RaftCluster the controller of an object.
pub fn owner_reference(cluster: &RaftCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

fn meta(cluster: &RaftCluster, name: String, extra_labels: &[(&str, String)]) -> ObjectMeta {
    let cluster_name = cluster.metadata.name.clone().unwrap_or_default();
    let mut labels = cluster_labels(&cluster_name);
    for (key, value) in extra_labels {
        labels.insert((*key).to_string(), value.clone());
    }
    ObjectMeta {
        name: Some(name),
        namespace: cluster.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: owner_reference(cluster).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The pod of member `ordinal`, pinned to `zone` (its place in the zone plan).
pub fn member_pod(cluster: &RaftCluster, ordinal: u32, zone: Option<&str>) -> Pod {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
    let spec = &cluster.spec;
    let pod_name = pod_name(&name, ordinal);
    let revision = pod_revision(spec);
    let read_mode = match spec.read_mode {
        ReadMode::LeaseRead => "lease-read",
        ReadMode::ReadIndex => "read-index",
    };
    let container = Container {
        name: "raftd".to_string(),
        image: Some(format!("{}:{}", spec.image, spec.version)),
        env: Some(vec![
            env_from_field("POD_NAME", "metadata.name"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
            env_from_field("POD_IP", "status.podIP"),
            env("RAFTD_NODE_ID", raft_id(ordinal).to_string()),
            env("RAFTD_GRPC_LISTEN", format!("0.0.0.0:{GRPC_PORT}")),
            env("RAFTD_HTTP_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
            env(
                "RAFTD_GRPC_ADVERTISE",
                member_grpc_addr(&name, &namespace, ordinal),
            ),
            env(
                "RAFTD_HTTP_ADVERTISE",
                member_http_addr(&name, &namespace, ordinal),
            ),
            env("RAFTD_DATA_DIR", DATA_DIR),
            env(
                "RAFTD_ELECTION_TIMEOUT_MIN_MS",
                spec.raft.election_timeout_min_ms.to_string(),
            ),
            env(
                "RAFTD_ELECTION_TIMEOUT_MAX_MS",
                spec.raft.election_timeout_max_ms.to_string(),
            ),
            env(
                "RAFTD_HEARTBEAT_MS",
                spec.raft.heartbeat_interval_ms.to_string(),
            ),
            env("RAFTD_READ_MODE", read_mode),
            env(
                "RAFTD_MAX_CLOCK_DRIFT_MS",
                spec.max_clock_drift_ms.to_string(),
            ),
            env("RAFTD_LOG_FORMAT", "json"),
            // An empty member (new, or its volume was wiped) joins only when the operator
            // admits it, so it can never rejoin as a voter that forgot its votes and log.
            env("RAFTD_JOIN_MODE", "explicit"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".to_string()),
                container_port: GRPC_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http".to_string()),
                container_port: HTTP_PORT,
                ..ContainerPort::default()
            },
        ]),
        // Readiness is what the eviction API trusts: a pod that is not Ready may be evicted
        // while the budget looks healthy. Two failed probes, not one slow answer, take it out.
        readiness_probe: Some(http_probe("/readyz", 2)),
        liveness_probe: Some(http_probe("/healthz", 6)),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..VolumeMount::default()
        }]),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let zone_affinity = zone.map(|zone| NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: ZONE_LABEL.to_string(),
                    operator: "In".to_string(),
                    values: Some(vec![zone.to_string()]),
                }]),
                ..NodeSelectorTerm::default()
            }],
        }),
        ..NodeAffinity::default()
    });
    // Prefer one member per node; 9 voters may share nodes when a zone has fewer nodes.
    let spread_over_nodes = PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                topology_key: "kubernetes.io/hostname".to_string(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector(&name)),
                    ..LabelSelector::default()
                }),
                ..PodAffinityTerm::default()
            },
        }]),
        ..PodAntiAffinity::default()
    };
    Pod {
        metadata: meta(
            cluster,
            pod_name.clone(),
            &[
                (MEMBER_LABEL, ordinal.to_string()),
                (REVISION_LABEL, revision),
            ],
        ),
        spec: Some(PodSpec {
            hostname: Some(pod_name.clone()),
            subdomain: Some(peer_service_name(&name)),
            containers: vec![container],
            restart_policy: Some("Always".to_string()),
            termination_grace_period_seconds: Some(30),
            affinity: Some(Affinity {
                node_affinity: zone_affinity,
                pod_anti_affinity: Some(spread_over_nodes),
                ..Affinity::default()
            }),
            volumes: Some(vec![Volume {
                name: "data".to_string(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: volume_name(&name, ordinal),
                    ..PersistentVolumeClaimVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn http_probe(path: &str, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(HTTP_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(2),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// The volume of member `ordinal`. It carries no owner reference: volumes outlive the
/// RaftCluster unless `storage.retention.whenDeleted` is `Delete`, which the finalizer honours.
pub fn member_volume(cluster: &RaftCluster, ordinal: u32) -> PersistentVolumeClaim {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let mut metadata = meta(
        cluster,
        volume_name(&name, ordinal),
        &[(MEMBER_LABEL, ordinal.to_string())],
    );
    metadata.owner_references = None;
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: cluster.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(cluster.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn service_ports() -> Vec<ServicePort> {
    vec![
        ServicePort {
            name: Some("grpc".to_string()),
            port: GRPC_PORT,
            target_port: Some(IntOrString::Int(GRPC_PORT)),
            ..ServicePort::default()
        },
        ServicePort {
            name: Some("http".to_string()),
            port: HTTP_PORT,
            target_port: Some(IntOrString::Int(HTTP_PORT)),
            ..ServicePort::default()
        },
    ]
}

/// Headless Service giving each member a DNS name, published before members are ready so
/// peers can find each other during bootstrap and elections.
pub fn peer_service(cluster: &RaftCluster) -> Service {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: meta(cluster, peer_service_name(&name), &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(&name)),
            ports: Some(service_ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Client Service: routes to ready members; clients follow leader hints from there.
pub fn client_service(cluster: &RaftCluster) -> Service {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: meta(cluster, name.clone(), &[]),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(service_ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Voluntary disruptions (drains) the cluster can take now: one when every voter is healthy
/// and the cluster survives a failure, none otherwise, and never more than one.
pub fn allowed_disruptions(healthy_voters: u32, voters: u32, step_in_flight: bool) -> u32 {
    let tolerance = quorum::node_failures_tolerated(healthy_voters, voters);
    if step_in_flight || healthy_voters < voters || tolerance == 0 {
        0
    } else {
        1
    }
}

/// The PodDisruptionBudget: `minAvailable` = voters - allowed disruptions, recomputed
/// from Raft health on every reconcile, so drains never take two voters or go below quorum.
pub fn disruption_budget(cluster: &RaftCluster, voters: u32, allowed: u32) -> PodDisruptionBudget {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    PodDisruptionBudget {
        metadata: meta(cluster, name.clone(), &[]),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(
                i32::try_from(voters.saturating_sub(allowed)).unwrap_or(i32::MAX),
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cluster(spec: serde_json::Value) -> RaftCluster {
        let mut c = RaftCluster::new("demo", serde_json::from_value(spec).unwrap());
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("uid-1".into());
        c
    }

    #[test]
    fn member_pod_is_pinned_to_its_zone_with_a_stable_dns_name() {
        let c = cluster(serde_json::json!({"replicas": 5, "version": "1.2.3"}));
        let pod = member_pod(&c, 3, Some("zone-a"));
        assert_eq!(pod.metadata.name.as_deref(), Some("demo-3"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("demo-3"));
        assert_eq!(spec.subdomain.as_deref(), Some("demo-peers"));
        let terms = spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let req = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(req.key, ZONE_LABEL);
        assert_eq!(req.values.as_ref().unwrap(), &vec!["zone-a".to_string()]);
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some("raftd:1.2.3"));
        let env: BTreeMap<String, String> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
            .collect();
        assert_eq!(env["RAFTD_NODE_ID"], "4");
        assert_eq!(
            env["RAFTD_GRPC_ADVERTISE"],
            "demo-3.demo-peers.ns.svc.cluster.local:7000"
        );
        assert_eq!(env["RAFTD_ELECTION_TIMEOUT_MIN_MS"], "150");
        assert_eq!(env["RAFTD_READ_MODE"], "lease-read");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "RaftCluster");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn revision_changes_with_what_members_run_and_only_that() {
        let a = cluster(serde_json::json!({"replicas": 5, "version": "1.0.0"}));
        let b = cluster(serde_json::json!({"replicas": 7, "version": "1.0.0", "paused": true}));
        let c = cluster(serde_json::json!({"replicas": 5, "version": "1.0.1"}));
        let d = cluster(
            serde_json::json!({"replicas": 5, "version": "1.0.0", "readMode": "ReadIndex"}),
        );
        assert_eq!(
            pod_revision(&a.spec),
            pod_revision(&b.spec),
            "scale and pause do not roll"
        );
        assert_ne!(pod_revision(&a.spec), pod_revision(&c.spec));
        assert_ne!(pod_revision(&a.spec), pod_revision(&d.spec));
        assert_eq!(pod_revision(&a.spec).len(), 16);
    }

    #[test]
    fn volumes_outlive_the_cluster_object() {
        let c = cluster(serde_json::json!({"replicas": 3, "storage": {"size": "2Gi"}}));
        let pvc = member_volume(&c, 1);
        assert_eq!(pvc.metadata.name.as_deref(), Some("data-demo-1"));
        assert!(pvc.metadata.owner_references.is_none());
        let size = &pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"];
        assert_eq!(size.0, "2Gi");
    }

    #[test]
    fn disruption_budget_follows_raft_health() {
        // (healthy, voters, in flight) -> allowed
        let table = [
            (5, 5, false, 1),
            (4, 5, false, 0), // one already down: a drain must wait
            (5, 5, true, 0),  // a rollout step is in flight
            (1, 1, false, 0), // a single voter tolerates nothing
            (3, 3, false, 1),
            (9, 9, false, 1), // never two at once, even with 4 to spare
        ];
        for (healthy, voters, in_flight, want) in table {
            assert_eq!(
                allowed_disruptions(healthy, voters, in_flight),
                want,
                "{healthy}/{voters} {in_flight}"
            );
        }
        let c = cluster(serde_json::json!({"replicas": 5}));
        let pdb = disruption_budget(&c, 5, 1);
        assert_eq!(pdb.spec.unwrap().min_available, Some(IntOrString::Int(4)));
    }

    #[test]
    fn readiness_is_raftds_can_serve_now_and_stopping_leaves_time_to_drain() {
        let c = cluster(serde_json::json!({"replicas": 3}));
        let spec = member_pod(&c, 0, Some("zone-a")).spec.unwrap();
        let container = &spec.containers[0];
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
        // raftd drains on SIGTERM (stops taking requests, answers what it holds): the grace
        // period must outlast a drain bounded by the client deadline (5 s) several times over.
        assert!(spec.termination_grace_period_seconds.unwrap() >= 15);
    }

    #[test]
    fn services_select_the_cluster_and_peers_resolve_before_ready() {
        let c = cluster(serde_json::json!({"replicas": 3}));
        let peers = peer_service(&c).spec.unwrap();
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(peers.publish_not_ready_addresses, Some(true));
        let client = client_service(&c);
        assert_eq!(client.metadata.name.as_deref(), Some("demo"));
        assert_eq!(
            client.spec.unwrap().selector.unwrap()[CLUSTER_LABEL],
            "demo"
        );
    }
}
