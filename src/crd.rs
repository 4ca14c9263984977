//! The `RaftCluster` custom resource (`raft-operator.dev/v1alpha1`): spec, status, defaults and
//! the API-server-side validation rules. `crdgen` writes `crds/raftcluster.yaml` from these types.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource the operator defines.
pub const API_GROUP: &str = "raft-operator.dev";

/// CEL rule refusing one even voter count with the arithmetic that makes it pointless, e.g.
/// "6 voters need 4 for quorum and survive only 2 failures, the same as 5; use 5 or 7".
///
/// One static message per even count: the API server refuses a `messageExpression` that
/// concatenates `string(self)`, because it cannot bound the cost of the result.
fn even_replicas_rule(voters: u32) -> kube::core::Rule {
    let message = quorum::compare_with_odd_below(voters)
        .map(|cmp| cmp.explanation())
        .unwrap_or_else(|| format!("{voters} voters is not an odd count"));
    kube::core::Rule::new(format!("self != {voters}"))
        .message(kube::core::Message::Message(message))
        .reason(kube::core::Reason::FieldValueInvalid)
}

/// A Raft cluster of 1, 3, 5, 7 or 9 voters running raftd, spread over availability zones.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "raft-operator.dev",
    version = "v1alpha1",
    kind = "RaftCluster",
    plural = "raftclusters",
    shortname = "raft",
    namespaced,
    status = "RaftClusterStatus",
    derive = "PartialEq",
    doc = "A Raft cluster of 1, 3, 5, 7 or 9 raftd voters, placed across zones and rolled quorum-safely.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Voters","type":"integer","jsonPath":".spec.replicas","description":"Desired voters"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas","description":"Healthy, caught-up voters"}"#,
    printcolumn = r#"{"name":"Leader","type":"string","jsonPath":".status.leader","description":"Current Raft leader"}"#,
    printcolumn = r#"{"name":"Term","type":"integer","jsonPath":".status.term","description":"Current Raft term"}"#,
    printcolumn = r#"{"name":"Node-FT","type":"integer","jsonPath":".status.nodeFaultTolerance","description":"Further voter failures the cluster survives"}"#,
    printcolumn = r#"{"name":"Zone-FT","type":"integer","jsonPath":".status.zoneFaultTolerance","description":"Zones that may fail at once, worst case"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since creation"}"#
)]
#[x_kube(validation = Rule::new("self.maxClockDriftMs < self.raft.electionTimeoutMinMs")
    .message("maxClockDriftMs must be below raft.electionTimeoutMinMs: a leader lease shortened by the drift bound would otherwise never be valid")
    .reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterSpec {
    /// Voters in the cluster: 1, 3, 5, 7 or 9. Even counts buy no failure tolerance.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 9")
        .message("replicas must be 1, 3, 5, 7 or 9 voters")
        .reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = even_replicas_rule(2))]
    #[x_kube(validation = even_replicas_rule(4))]
    #[x_kube(validation = even_replicas_rule(6))]
    #[x_kube(validation = even_replicas_rule(8))]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// raftd image repository; the sandbox maps it to a local executable.
    #[serde(default = "default_image")]
    pub image: String,

    /// raftd version: the image tag. Changing it rolls the cluster, one member at a time.
    #[serde(default = "default_version")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("version must not be empty"))]
    pub version: String,

    /// Zones to place voters in. Empty: discovered from node labels `topology.kubernetes.io/zone`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"), length(max = 16))]
    pub zones: Vec<String>,

    /// Raft timings.
    #[serde(default)]
    pub raft: RaftTimings,

    /// How `linearizable` reads are served.
    #[serde(default)]
    pub read_mode: ReadMode,

    /// Bound on clock drift between members over one lease period, in ms. A leader serves lease
    /// reads only while `now < last quorum ack + lease - maxClockDriftMs`.
    #[serde(default = "default_max_clock_drift_ms")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_clock_drift_ms: u32,

    /// Persistent storage for each member's Raft log and state machine.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Compute resources for each raftd container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// How member replacements are gated and paced.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// What the operator may do when a majority of voters is lost.
    #[serde(default)]
    pub recovery: RecoverySpec,

    /// Stop every disruptive action (rollouts, scaling, recovery). Status keeps being reported.
    #[serde(default)]
    pub paused: bool,
}

fn default_image() -> String {
    "raftd".to_string()
}

fn default_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn default_max_clock_drift_ms() -> u32 {
    10
}

/// Election and heartbeat timings, in milliseconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.electionTimeoutMinMs < self.electionTimeoutMaxMs")
    .message("electionTimeoutMinMs must be below electionTimeoutMaxMs: the randomized range keeps candidates from splitting votes")
    .reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("self.heartbeatIntervalMs * 2 <= self.electionTimeoutMinMs")
    .message("heartbeatIntervalMs must be at most half of electionTimeoutMinMs, or followers start elections against a healthy leader")
    .reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct RaftTimings {
    /// Lower bound of the randomized election timeout.
    #[serde(default = "default_election_timeout_min_ms")]
    #[schemars(range(min = 10, max = 60000))]
    pub election_timeout_min_ms: u32,
    /// Upper bound of the randomized election timeout.
    #[serde(default = "default_election_timeout_max_ms")]
    #[schemars(range(min = 20, max = 120000))]
    pub election_timeout_max_ms: u32,
    /// Interval at which the leader sends heartbeats.
    #[serde(default = "default_heartbeat_interval_ms")]
    #[schemars(range(min = 5, max = 30000))]
    pub heartbeat_interval_ms: u32,
}

fn default_election_timeout_min_ms() -> u32 {
    150
}
fn default_election_timeout_max_ms() -> u32 {
    300
}
fn default_heartbeat_interval_ms() -> u32 {
    50
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            election_timeout_min_ms: default_election_timeout_min_ms(),
            election_timeout_max_ms: default_election_timeout_max_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
        }
    }
}

/// How the cluster serves `linearizable` reads.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// The leader answers from local state while its lease, shortened by the drift bound, holds;
    /// otherwise it falls back to ReadIndex. No round trip on the common path.
    #[default]
    LeaseRead,
    /// Every read confirms leadership with a quorum round trip first.
    ReadIndex,
}

/// Per-member persistent volumes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, a Kubernetes quantity such as `1Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to a member's volume when the cluster is deleted or the member is removed.
    #[serde(default)]
    pub retention: VolumeRetention,
}

fn default_storage_size() -> String {
    "1Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            retention: VolumeRetention::default(),
        }
    }
}

/// Volume retention, as StatefulSet's `persistentVolumeClaimRetentionPolicy`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRetention {
    /// On deletion of the RaftCluster. `Retain` (default) keeps the data for a later restore.
    #[serde(default)]
    pub when_deleted: RetentionPolicy,
    /// On removal of a member by scale-down. `Delete` (default): a removed member's log must
    /// never come back as if it were still a member.
    #[serde(default = "delete_policy")]
    pub when_scaled: RetentionPolicy,
}

fn delete_policy() -> RetentionPolicy {
    RetentionPolicy::Delete
}

impl Default for VolumeRetention {
    fn default() -> Self {
        Self {
            when_deleted: RetentionPolicy::Retain,
            when_scaled: delete_policy(),
        }
    }
}

/// Keep or delete a volume.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RetentionPolicy {
    /// Keep the PersistentVolumeClaim.
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaim.
    Delete,
}

/// Rollout gating and pacing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// A member more than this many log entries behind the leader counts as not caught up, and
    /// blocks the next step.
    #[serde(default = "default_max_lag_entries")]
    #[schemars(range(min = 0))]
    pub max_lag_entries: u64,
    /// How long the gate may stay closed before the cluster reports `RolloutBlocked`.
    #[serde(default = "default_gate_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub gate_timeout_seconds: u32,
}

fn default_max_lag_entries() -> u64 {
    1000
}
fn default_gate_timeout_seconds() -> u32 {
    120
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_lag_entries: default_max_lag_entries(),
            gate_timeout_seconds: default_gate_timeout_seconds(),
        }
    }
}

/// Quorum-loss handling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoverySpec {
    /// What the operator may do when a majority is lost for good.
    #[serde(default)]
    pub policy: RecoveryPolicy,
}

/// Members whose volumes survive always rejoin by themselves; this governs permanent loss only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecoveryPolicy {
    /// Prepare a recovery plan and wait for a person to approve it (default).
    #[default]
    Manual,
    /// Report the loss and never act on it.
    Disabled,
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Voters currently in the Raft configuration (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Voters that are healthy and caught up.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Cluster identity chosen at bootstrap; members of another cluster are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Cluster epoch: 1 at bootstrap, bumped by every forced recovery; part of fencing tokens.
    #[serde(default)]
    pub epoch: u64,
    /// The recovery that created `epoch` (absent for epoch 1). Members joining the cluster
    /// pass it, so a member of another recovery to the same epoch is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_id: Option<String>,
    /// Name of the leader member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Current Raft term.
    #[serde(default)]
    pub term: u64,
    /// Leader's commit index.
    #[serde(default)]
    pub commit_index: u64,
    /// Votes needed for a majority.
    #[serde(default)]
    pub quorum_size: u32,
    /// Voters that are reachable and healthy.
    #[serde(default)]
    pub healthy_voters: u32,
    /// Further voter failures the cluster survives now (0 with no quorum).
    #[serde(default)]
    pub node_fault_tolerance: i32,
    /// Zones that may fail at once, worst case, computed from the actual placement.
    #[serde(default)]
    pub zone_fault_tolerance: i32,
    /// Healthy voters per zone, from where the pods actually run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<ZoneVoters>,
    /// One entry per member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Progress of a rollout or scale change, so a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Quorum-loss recovery: the plan awaiting approval, and every recovery carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
    /// Available, Progressing, Degraded, QuorumLost, ZoneFaultTolerant, RolloutBlocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Annotation a person sets on a RaftCluster to approve the recovery plan in
/// `status.recovery.proposal`; its value must be the plan's `id`.
pub const APPROVE_RECOVERY_ANNOTATION: &str = "raft-operator.dev/approve-recovery";

/// Quorum-loss recovery state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// The plan the operator proposes while a majority is lost for good; nothing is done
    /// until a person approves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<RecoveryProposal>,
    /// The approved recovery the operator has started and not yet seen take effect. Written
    /// before the ForceRecover call, so an operator that restarts, or whose call timed out,
    /// finishes this same recovery and never starts another one for the same epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<RecoveryInFlight>,
    /// Recoveries carried out, oldest first: the audit record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RecoveryRecord>,
}

/// A recovery started but not yet seen complete.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryInFlight {
    /// The approved plan id; also the recovery id raftd persists with the new epoch.
    pub id: String,
    /// The member made the only voter.
    pub survivor: String,
    /// Epoch before the recovery.
    pub from_epoch: u64,
    /// Epoch the recovery moves to.
    pub to_epoch: u64,
    /// The survivor's last log index when the plan was made.
    pub survivor_last_index: u64,
    /// Highest commit index seen before the loss.
    pub highest_commit_index_seen: u64,
    /// Voters whose data was gone.
    pub lost_members: Vec<String>,
    /// When the operator first called ForceRecover (RFC 3339).
    pub started_at: String,
}

/// A forced recovery the operator proposes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryProposal {
    /// Plan id; approve with `kubectl annotate raftcluster NAME raft-operator.dev/approve-recovery=ID`.
    pub id: String,
    /// The member that becomes the only voter: the most up-to-date survivor.
    pub survivor: String,
    /// Its last log index.
    pub survivor_last_index: u64,
    /// Its last log term.
    pub survivor_last_term: u64,
    /// The epoch the cluster moves to.
    pub new_epoch: u64,
    /// Every voter that still holds data and answered, with its last log position.
    pub candidates: Vec<RecoveryCandidate>,
    /// Voters whose data is gone.
    pub lost_members: Vec<String>,
    /// Highest commit index the operator saw before the loss.
    pub highest_commit_index_seen: u64,
    /// Committed entries that may be lost: `highestCommitIndexSeen - survivorLastIndex`.
    pub possibly_lost_entries: u64,
    /// The exact command that approves this plan.
    pub approve_with: String,
}

/// One survivor considered for recovery.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryCandidate {
    /// Member name.
    pub name: String,
    /// Last log index.
    pub last_log_index: u64,
    /// Last log term.
    pub last_log_term: u64,
}

/// A recovery that was carried out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRecord {
    /// The approved plan id.
    pub id: String,
    /// The member that became the only voter.
    pub survivor: String,
    /// Epoch before and after.
    pub from_epoch: u64,
    /// Epoch after.
    pub to_epoch: u64,
    /// Entries up to this index were kept.
    pub kept_through_index: u64,
    /// Highest commit index seen before the loss.
    pub highest_commit_index_seen: u64,
    /// Committed entries that may have been lost.
    pub possibly_lost_entries: u64,
    /// Voters whose data was gone.
    pub lost_members: Vec<String>,
    /// When it ran (RFC 3339).
    pub at: String,
}

/// Voters in one zone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ZoneVoters {
    /// Zone name.
    pub zone: String,
    /// Healthy voters running there.
    pub voters: u32,
}

/// One member as the operator last observed it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name.
    pub name: String,
    /// Raft node id.
    pub raft_id: u64,
    /// Zone of the node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Raft role.
    #[serde(default)]
    pub role: MemberRole,
    /// Highest log index known replicated to this member (from the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
    /// Entries behind the leader's last log index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Reachable, initialized, in this cluster, and caught up.
    #[serde(default)]
    pub healthy: bool,
    /// raftd version the member runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why the member is not healthy, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A member's role in the Raft group.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemberRole {
    /// Leads the current term.
    Leader,
    /// Voter following the leader.
    Follower,
    /// Voter campaigning for leadership.
    Candidate,
    /// Non-voting member catching up.
    Learner,
    /// Not reachable, or not yet part of the cluster.
    #[default]
    Unknown,
}

/// Rollout and scaling progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Revision (hash of the pod template) every member ran before the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// Revision the rollout moves members to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// Members already on the target revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated_members: Vec<String>,
    /// The one member being replaced, added or removed right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_in_flight: Option<String>,
    /// Since when (Unix seconds) the gate has refused the next step; cleared when it opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_since: Option<i64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn defaults_fill_an_minimal_spec() {
        let spec: RaftClusterSpec =
            serde_json::from_value(serde_json::json!({"replicas": 5})).unwrap();
        assert_eq!(spec.raft, RaftTimings::default());
        assert_eq!(spec.raft.election_timeout_min_ms, 150);
        assert_eq!(spec.raft.election_timeout_max_ms, 300);
        assert_eq!(spec.raft.heartbeat_interval_ms, 50);
        assert_eq!(spec.read_mode, ReadMode::LeaseRead);
        assert_eq!(spec.storage.retention.when_deleted, RetentionPolicy::Retain);
        assert_eq!(spec.storage.retention.when_scaled, RetentionPolicy::Delete);
        assert_eq!(spec.recovery.policy, RecoveryPolicy::Manual);
        assert!(!spec.paused);
    }

    #[test]
    fn unknown_enum_values_are_refused_with_the_field_named() {
        let err = serde_json::from_value::<RaftClusterSpec>(
            serde_json::json!({"replicas": 5, "readMode": "Eventually"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("Eventually"), "{err}");
    }

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(RaftCluster::crd()).unwrap()
    }

    #[test]
    fn crd_names_subresources_and_columns() {
        let crd = crd_json();
        assert_eq!(crd["spec"]["group"], "raft-operator.dev");
        assert_eq!(crd["spec"]["names"]["plural"], "raftclusters");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "raft");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(
            version["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "Voters", "Ready", "Leader", "Term", "Node-FT", "Zone-FT", "Age"
            ]
        );
    }

    #[test]
    fn replicas_carries_range_and_even_rules() {
        let crd = crd_json();
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0));
        assert_eq!(replicas["maximum"].as_f64(), Some(9.0));
        let rules = replicas["x-kubernetes-validations"].as_array().unwrap();
        assert!(rules.iter().any(|r| r["rule"] == "self >= 1 && self <= 9"));
    }

    /// Every even count in range is refused by its own rule, with the quorum crate's words.
    #[test]
    fn each_even_count_has_a_rule_with_the_arithmetic() {
        let crd = crd_json();
        let rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["replicas"]["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .clone();
        for n in [2u32, 4, 6, 8] {
            let rule = rules
                .iter()
                .find(|r| r["rule"] == format!("self != {n}"))
                .unwrap_or_else(|| panic!("no rule for {n}"));
            assert_eq!(
                rule["message"],
                quorum::compare_with_odd_below(n).unwrap().explanation()
            );
            // Static messages only: the API server refuses messageExpressions it cannot bound.
            assert!(rule.get("messageExpression").is_none());
        }
        let six = rules.iter().find(|r| r["rule"] == "self != 6").unwrap();
        assert_eq!(
            six["message"],
            "6 voters need 4 for quorum and survive only 2 failures, the same as 5; use 5 or 7"
        );
    }
}
