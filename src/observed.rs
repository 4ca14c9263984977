//! What the operator saw in one reconcile: the cluster spec, each member's pod and volume, and
//! each member's own Raft status. Plain data, no I/O: `observe` fills it, `plan` and `status` read it.

use crate::crd::{MemberRole, RaftCluster, RaftClusterSpec, RaftClusterStatus};
use crate::member::{pod_name, raft_id};
use std::collections::BTreeMap;

/// Everything one reconcile knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Cluster name.
    pub name: String,
    /// Cluster namespace.
    pub namespace: String,
    /// Cluster UID; the Raft cluster id is derived from it, so it never changes for this object.
    pub uid: String,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Desired state.
    pub spec: RaftClusterSpec,
    /// The status as last written (carries rollout progress across operator restarts).
    pub previous_status: RaftClusterStatus,
    /// Zones voters are placed in, sorted: `spec.zones`, or the zones of schedulable nodes.
    pub zones: Vec<String>,
    /// Revision (hash) of the member pod template the spec asks for.
    pub target_revision: String,
    /// One entry per ordinal that is desired or still exists, sorted by ordinal.
    pub members: Vec<MemberObserved>,
    /// Wall-clock seconds since the epoch at observation (for gate timeouts).
    pub now_unix: i64,
    /// Value of the `raft-operator.dev/approve-recovery` annotation, if set.
    pub recovery_approval: Option<String>,
}

/// One member: its pod, its volume, and what its raftd said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberObserved {
    /// Ordinal (0-based); the pod is `<cluster>-<ordinal>` and the Raft id is ordinal + 1.
    pub ordinal: u32,
    /// The member's pod, if it exists.
    pub pod: Option<PodObserved>,
    /// Whether the member's PersistentVolumeClaim exists.
    pub volume_exists: bool,
    /// The member's raftd admin status; `None` when it could not be reached.
    pub raft: Option<RaftObserved>,
    /// Why the admin call failed, when it did.
    pub unreachable_reason: Option<String>,
}

/// A member pod as the API server reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodObserved {
    /// Revision label of the template it was created from.
    pub revision: String,
    /// Node it is bound to.
    pub node: Option<String>,
    /// Zone label of that node.
    pub zone: Option<String>,
    /// Ready condition.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The container keeps restarting (waiting in CrashLoopBackOff, or exited repeatedly).
    pub crash_looping: bool,
    /// Container restart count.
    pub restarts: i32,
    /// Pod IP.
    pub ip: Option<String>,
}

/// A member's view of Raft, from its admin API.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RaftObserved {
    /// Whether the member holds Raft state (has joined or bootstrapped a cluster).
    pub initialized: bool,
    /// Cluster id in its durable state.
    pub cluster_id: Option<String>,
    /// Cluster epoch in its durable state.
    pub epoch: u64,
    /// Its role.
    pub role: MemberRole,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// Its commit index.
    pub commit_index: u64,
    /// Index of its last log entry.
    pub last_log_index: u64,
    /// Term of its last log entry.
    pub last_log_term: u64,
    /// Voter ids of the membership it has applied (the leader's is authoritative).
    pub voters: Vec<u64>,
    /// Learner ids of that membership.
    pub learners: Vec<u64>,
    /// Whether that membership is a joint configuration (a change is in flight).
    pub joint: bool,
    /// On the leader: matched log index per member id.
    pub matched: BTreeMap<u64, u64>,
    /// raftd version string.
    pub version: String,
    /// Whether the member's leader lease is valid now (leader only).
    pub lease_valid: bool,
    /// The member has no data and no identity and waits to be admitted (join mode explicit).
    pub awaiting_join: bool,
    /// The last peer RPC the member refused recently, e.g. because its data was wiped.
    pub recent_refusal: Option<String>,
    /// On the leader: when it last heard from each member, by Raft id.
    pub acks: BTreeMap<u64, LeaderAck>,
    /// The recovery that created the member's epoch (`None` for epoch 1, or an older raftd).
    pub recovery_id: Option<String>,
    /// Why the member says it cannot serve now (its /readyz), when it says so.
    pub not_ready_reason: Option<String>,
    /// The member drains for a planned stop: it takes no new client requests.
    pub draining: bool,
}

/// What the leader knows of its contact with one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderAck {
    /// raftd's own verdict: acknowledged within its election timeout.
    pub healthy: bool,
    /// Milliseconds since the member last acknowledged the leader; `None` when raftd does not
    /// report it (older raftd), `Some(u64::MAX)` when it never has in this term.
    pub millis_since_ack: Option<u64>,
}

impl LeaderAck {
    /// Heard from `millis` ago, within any sensible window.
    pub fn heard(millis: u64) -> Self {
        Self {
            healthy: true,
            millis_since_ack: Some(millis),
        }
    }
}

/// The leader's contact per member after a second look: a member counts as not heard from only
/// if both answers say so, and the second answer comes from the same leader in the same term
/// (otherwise the first stands). Pure.
pub fn confirm_acks(
    first: &RaftObserved,
    second: &RaftObserved,
    window_ms: u64,
) -> BTreeMap<u64, LeaderAck> {
    if second.role != MemberRole::Leader || second.term != first.term {
        return first.acks.clone();
    }
    first
        .acks
        .iter()
        .map(|(id, ack)| {
            let confirmed = match (ack.problem(window_ms), second.acks.get(id)) {
                (Some(_), Some(again)) => *again,
                _ => *ack,
            };
            (*id, confirmed)
        })
        .collect()
}

/// Why the leader does not count a member as in contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactProblem {
    /// The leader tracks no contact with it at all.
    Untracked,
    /// It has not acknowledged the leader in this term.
    Never,
    /// Its last acknowledgement is older than the window.
    Stale {
        /// Age of the last acknowledgement.
        millis: u64,
        /// The window.
        window_ms: u64,
    },
    /// raftd reports it outside its election timeout (no age reported).
    Outside {
        /// The window raftd applies.
        window_ms: u64,
    },
}

impl LeaderAck {
    /// Whether the leader heard from the member within `window_ms`. The age, when raftd reports
    /// it, decides; otherwise raftd's own `healthy` flag (acked within its election timeout,
    /// which the operator sets to the same `electionTimeoutMaxMs`).
    pub fn problem(&self, window_ms: u64) -> Option<ContactProblem> {
        match self.millis_since_ack {
            Some(u64::MAX) => Some(ContactProblem::Never),
            Some(millis) if millis > window_ms => Some(ContactProblem::Stale { millis, window_ms }),
            Some(_) => None,
            None if self.healthy => None,
            None => Some(ContactProblem::Outside { window_ms }),
        }
    }
}

impl Observed {
    /// The member with this ordinal, if observed.
    pub fn member(&self, ordinal: u32) -> Option<&MemberObserved> {
        self.members.iter().find(|m| m.ordinal == ordinal)
    }

    /// The member that is leader in the highest term any member reports, if any.
    pub fn leader(&self) -> Option<&MemberObserved> {
        self.members
            .iter()
            .filter(|m| {
                m.raft
                    .as_ref()
                    .is_some_and(|r| r.role == MemberRole::Leader && self.is_this_cluster(r))
            })
            .max_by_key(|m| m.raft.as_ref().map(|r| r.term))
    }

    /// The cluster epoch in force: the leader's, else the last recorded one (1 at bootstrap).
    pub fn current_epoch(&self) -> u64 {
        self.leader()
            .and_then(|m| m.raft.as_ref())
            .map(|r| r.epoch)
            .unwrap_or(0)
            .max(self.previous_status.epoch)
            .max(1)
    }

    /// The recovery recorded as started in `.status` and not yet seen to take effect: no member
    /// of this cluster reports its epoch yet.
    pub fn recovery_in_flight(&self) -> Option<&crate::crd::RecoveryInFlight> {
        let flight = self.previous_status.recovery.as_ref()?.in_flight.as_ref()?;
        (!self.recovery_took_effect(flight)).then_some(flight)
    }

    /// Whether some member of this cluster reports the epoch the recovery moves to.
    pub fn recovery_took_effect(&self, flight: &crate::crd::RecoveryInFlight) -> bool {
        self.members
            .iter()
            .filter_map(|m| m.raft.as_ref())
            .any(|r| {
                r.initialized
                    && r.cluster_id.as_deref() == Some(self.uid.as_str())
                    && r.epoch >= flight.to_epoch
            })
    }

    /// The recovery id of the epoch in force: what the leader reports, else what the status
    /// recorded; empty for epoch 1. Joining members must present it.
    pub fn current_recovery_id(&self) -> String {
        self.leader()
            .and_then(|m| m.raft.as_ref())
            .and_then(|r| r.recovery_id.clone())
            .or_else(|| self.previous_status.recovery_id.clone())
            .unwrap_or_default()
    }

    /// Whether a member holds this cluster's state from an epoch a recovery left behind.
    pub fn is_before_recovery(&self, raft: &RaftObserved) -> bool {
        raft.initialized
            && raft.cluster_id.as_deref() == Some(self.uid.as_str())
            && raft.epoch < self.current_epoch()
    }

    /// Whether a member's durable state belongs to this cluster (same id, current epoch).
    pub fn is_this_cluster(&self, raft: &RaftObserved) -> bool {
        raft.cluster_id.as_deref() == Some(self.uid.as_str())
            && raft.epoch >= self.previous_status.epoch.max(1)
    }

    /// Whether any member holds state of this cluster: bootstrap has happened.
    pub fn bootstrapped(&self) -> bool {
        self.previous_status.cluster_id.is_some()
            || self.members.iter().any(|m| {
                m.raft
                    .as_ref()
                    .is_some_and(|r| r.initialized && self.is_this_cluster(r))
            })
    }

    /// The Raft membership as the leader sees it, or the most advanced member's view without one.
    pub fn membership(&self) -> Membership {
        let source = self.leader().and_then(|m| m.raft.as_ref()).or_else(|| {
            self.members
                .iter()
                .filter_map(|m| m.raft.as_ref())
                .filter(|r| r.initialized && self.is_this_cluster(r))
                .max_by_key(|r| (r.last_log_term, r.last_log_index))
        });
        match source {
            Some(r) => Membership {
                voters: r.voters.clone(),
                learners: r.learners.clone(),
                joint: r.joint,
            },
            None => Membership::default(),
        }
    }

    /// The leader's last log index, the reference for lag.
    pub fn leader_last_index(&self) -> Option<u64> {
        self.leader()
            .and_then(|m| m.raft.as_ref())
            .map(|r| r.last_log_index)
    }

    /// Entries a member is behind the leader, as the leader's replication progress says.
    pub fn lag_of(&self, ordinal: u32) -> Option<u64> {
        let leader = self.leader()?.raft.as_ref()?;
        let id = raft_id(ordinal);
        if leader.leader_id == Some(id) || self.leader()?.ordinal == ordinal {
            return Some(0);
        }
        let matched = leader.matched.get(&id)?;
        Some(leader.last_log_index.saturating_sub(*matched))
    }

    /// The one definition of a healthy member, used by status, `Degraded`, fault tolerance, the
    /// PodDisruptionBudget and every gate: its pod is up and Ready, its raftd answers with this
    /// cluster's state, the current leader heard from it within the election timeout, and it is
    /// within `maxLagEntries` of the leader's log.
    pub fn is_healthy(&self, ordinal: u32) -> bool {
        self.health_problem(ordinal).is_none()
    }

    /// Down: no pod, terminating, crash-looping, or its raftd does not answer. Narrower than
    /// unhealthy: a member that answers but is not ready or lags is up, and replacing it is a
    /// disruption like any other.
    pub fn is_down(&self, ordinal: u32) -> bool {
        let Some(member) = self.member(ordinal) else {
            return true;
        };
        match &member.pod {
            None => true,
            Some(pod) => pod.terminating || pod.crash_looping || member.raft.is_none(),
        }
    }

    /// Why a member is not healthy, or `None` if it is.
    pub fn health_problem(&self, ordinal: u32) -> Option<String> {
        let name = pod_name(&self.name, ordinal);
        let Some(member) = self.member(ordinal) else {
            return Some(format!("{name} does not exist"));
        };
        let Some(pod) = &member.pod else {
            return Some(format!("{name} has no pod"));
        };
        if pod.terminating {
            return Some(format!("{name} is terminating"));
        }
        if pod.crash_looping {
            return Some(format!(
                "{name} is crash-looping ({} restarts)",
                pod.restarts
            ));
        }
        let Some(raft) = &member.raft else {
            let why = member
                .unreachable_reason
                .clone()
                .unwrap_or_else(|| "no answer".to_string());
            return Some(format!("{name} is unreachable: {why}"));
        };
        if !raft.initialized {
            let refused = raft
                .recent_refusal
                .as_deref()
                .map(|r| format!("; it refuses the cluster: {r}"))
                .unwrap_or_default();
            return Some(format!(
                "{name} holds no Raft state (empty data directory){refused}"
            ));
        }
        if self.is_before_recovery(raft) {
            return Some(format!(
                "{name} holds data of epoch {}, from before the recovery to epoch {}: the cluster refuses it and it is rebuilt",
                raft.epoch,
                self.current_epoch()
            ));
        }
        if !self.is_this_cluster(raft) {
            return Some(format!(
                "{name} belongs to cluster {} epoch {}, not this one",
                raft.cluster_id.as_deref().unwrap_or("?"),
                raft.epoch
            ));
        }
        if let Some(problem) = self.contact_problem(ordinal) {
            return Some(format!("{name} {}", describe_contact(problem)));
        }
        if !pod.ready {
            let why = raft
                .not_ready_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            return Some(format!("{name} is not ready{why}"));
        }
        match self.lag_of(ordinal) {
            Some(lag) if lag > self.spec.rollout.max_lag_entries => Some(format!(
                "{name} is {lag} entries behind (max {})",
                self.spec.rollout.max_lag_entries
            )),
            Some(_) => None,
            None if self.leader().is_none() => Some(format!("{name} sees no leader")),
            None => Some(format!("{name} has no replication progress at the leader")),
        }
    }

    /// The window within which the leader must have heard from a member for it to count as
    /// healthy: the cluster's maximum election timeout, the time after which a follower that
    /// hears nothing would start an election itself.
    pub fn contact_window_ms(&self) -> u64 {
        u64::from(self.spec.raft.election_timeout_max_ms)
    }

    /// Why the current leader does not count `ordinal` as in contact, or `None` when it does
    /// (or when there is no leader to ask, or `ordinal` leads).
    pub fn contact_problem(&self, ordinal: u32) -> Option<ContactProblem> {
        let leader = self.leader()?;
        if leader.ordinal == ordinal {
            return None;
        }
        let acks = &leader.raft.as_ref()?.acks;
        match acks.get(&raft_id(ordinal)) {
            Some(ack) => ack.problem(self.contact_window_ms()),
            None => Some(ContactProblem::Untracked),
        }
    }

    /// Zone a member runs in: the zone label of the node its pod is bound to; `None` before it
    /// is scheduled (see [`Observed::planned_zone`] for the zone it is meant for).
    pub fn zone_of(&self, ordinal: u32) -> Option<String> {
        self.member(ordinal)
            .and_then(|m| m.pod.as_ref())
            .and_then(|p| p.zone.clone())
    }

    /// Planned zone for an ordinal: round-robin over the sorted zones, which for the first N
    /// ordinals gives exactly `quorum::plan_placement(N, zones)`, and keeps doing so as the
    /// highest ordinals are removed on scale-down.
    pub fn planned_zone(&self, ordinal: u32) -> Option<&str> {
        planned_zone(&self.zones, ordinal)
    }
}

/// The reason text for a member the leader has not heard from, after the member's name.
pub fn describe_contact(problem: ContactProblem) -> String {
    match problem {
        ContactProblem::Untracked => "is not tracked by the leader".to_string(),
        ContactProblem::Never => {
            "is cut off from the leader: it has not acknowledged the leader in this term"
                .to_string()
        }
        ContactProblem::Stale { millis, window_ms } => format!(
            "is cut off from the leader: last acknowledged {millis} ms ago (more than the {window_ms} ms election timeout)"
        ),
        ContactProblem::Outside { window_ms } => format!(
            "is cut off from the leader: no acknowledgement within the {window_ms} ms election timeout"
        ),
    }
}

/// Round-robin zone for an ordinal; see [`Observed::planned_zone`].
pub fn planned_zone(zones: &[String], ordinal: u32) -> Option<&str> {
    if zones.is_empty() {
        return None;
    }
    zones
        .get(ordinal as usize % zones.len())
        .map(String::as_str)
}

/// A Raft configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// Voter ids.
    pub voters: Vec<u64>,
    /// Learner ids.
    pub learners: Vec<u64>,
    /// A joint configuration: a change is in flight.
    pub joint: bool,
}

impl Membership {
    /// Whether `id` votes.
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id)
    }
    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: u64) -> bool {
        self.learners.contains(&id)
    }
}

/// The Raft cluster id for a RaftCluster: its UID, stable for the object's life.
pub fn cluster_id_of(cluster: &RaftCluster) -> Option<String> {
    cluster.metadata.uid.clone()
}

/// Test fixtures: `ObservedBuilder::new(5).running(5, "rev-2").lagging(2, 50).build()` and friends.
#[cfg(test)]
pub mod fixtures {
    use super::*;
    use crate::crd::RaftClusterSpec;

    /// Builds an [`Observed`] for table tests.
    #[derive(Clone)]
    pub struct ObservedBuilder {
        observed: Observed,
    }

    impl ObservedBuilder {
        /// A cluster named `demo` wanting `replicas` voters in zones a/b/c, nothing observed yet.
        pub fn new(replicas: i32) -> Self {
            let spec: RaftClusterSpec =
                serde_json::from_value(serde_json::json!({ "replicas": replicas }))
                    .expect("valid spec");
            Self {
                observed: Observed {
                    name: "demo".into(),
                    namespace: "ns".into(),
                    uid: "uid-1".into(),
                    generation: Some(1),
                    spec,
                    previous_status: RaftClusterStatus::default(),
                    zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
                    target_revision: "rev-2".into(),
                    members: Vec::new(),
                    now_unix: 1_000_000,
                    recovery_approval: None,
                },
            }
        }

        /// Use these zones.
        pub fn zones(mut self, zones: &[&str]) -> Self {
            self.observed.zones = zones.iter().map(|z| z.to_string()).collect();
            self
        }

        /// Members 0..n exist, all on `revision`, healthy, voters, member 0 leading in term 2.
        pub fn running(mut self, n: u32, revision: &str) -> Self {
            let voters: Vec<u64> = (0..n).map(raft_id).collect();
            let last = 100_000;
            self.observed.previous_status.cluster_id = Some("uid-1".into());
            self.observed.previous_status.epoch = 1;
            self.observed.members = (0..n)
                .map(|ordinal| MemberObserved {
                    ordinal,
                    pod: Some(PodObserved {
                        revision: revision.into(),
                        node: Some(format!("node-{ordinal}")),
                        zone: planned_zone(&self.observed.zones, ordinal).map(str::to_string),
                        ready: true,
                        ip: Some(format!("10.88.0.{}", ordinal + 10)),
                        ..PodObserved::default()
                    }),
                    volume_exists: true,
                    raft: Some(RaftObserved {
                        initialized: true,
                        cluster_id: Some("uid-1".into()),
                        epoch: 1,
                        role: if ordinal == 0 {
                            MemberRole::Leader
                        } else {
                            MemberRole::Follower
                        },
                        term: 2,
                        leader_id: Some(1),
                        commit_index: last,
                        last_log_index: last,
                        last_log_term: 2,
                        voters: voters.clone(),
                        learners: Vec::new(),
                        awaiting_join: false,
                        recent_refusal: None,
                        joint: false,
                        matched: if ordinal == 0 {
                            voters.iter().map(|id| (*id, last)).collect()
                        } else {
                            BTreeMap::new()
                        },
                        version: "0.1.0".into(),
                        lease_valid: ordinal == 0,
                        acks: if ordinal == 0 {
                            voters.iter().map(|id| (*id, LeaderAck::heard(5))).collect()
                        } else {
                            BTreeMap::new()
                        },
                        ..RaftObserved::default()
                    }),
                    unreachable_reason: None,
                })
                .collect();
            self
        }

        /// Change one member.
        pub fn member(mut self, ordinal: u32, edit: impl FnOnce(&mut MemberObserved)) -> Self {
            if let Some(m) = self
                .observed
                .members
                .iter_mut()
                .find(|m| m.ordinal == ordinal)
            {
                edit(m);
            }
            self
        }

        /// Make `ordinal` the leader (and the others followers pointing at it).
        pub fn leader(mut self, ordinal: u32) -> Self {
            let matched: BTreeMap<u64, u64> = self
                .observed
                .members
                .iter()
                .filter_map(|m| {
                    m.raft
                        .as_ref()
                        .map(|r| (raft_id(m.ordinal), r.last_log_index))
                })
                .collect();
            let acks: BTreeMap<u64, LeaderAck> = matched
                .keys()
                .map(|id| (*id, LeaderAck::heard(5)))
                .collect();
            for m in &mut self.observed.members {
                if let Some(r) = &mut m.raft {
                    r.leader_id = Some(raft_id(ordinal));
                    if m.ordinal == ordinal {
                        r.role = MemberRole::Leader;
                        r.matched = matched.clone();
                        r.acks = acks.clone();
                        r.lease_valid = true;
                    } else if r.role == MemberRole::Leader {
                        r.role = MemberRole::Follower;
                        r.matched.clear();
                        r.acks.clear();
                        r.lease_valid = false;
                    }
                }
            }
            self
        }

        /// Edit the leader's replication progress for member `ordinal`.
        pub fn lagging(mut self, ordinal: u32, behind: u64) -> Self {
            for m in &mut self.observed.members {
                if let Some(r) = &mut m.raft
                    && r.role == MemberRole::Leader
                {
                    let last = r.last_log_index;
                    r.matched
                        .insert(raft_id(ordinal), last.saturating_sub(behind));
                }
            }
            self
        }

        /// The leader last heard from `ordinal` this long ago (`u64::MAX`: never in this term).
        pub fn last_ack(mut self, ordinal: u32, millis: u64) -> Self {
            for m in &mut self.observed.members {
                if let Some(r) = &mut m.raft
                    && r.role == MemberRole::Leader
                {
                    r.acks.insert(
                        raft_id(ordinal),
                        LeaderAck {
                            healthy: millis <= 300,
                            millis_since_ack: Some(millis),
                        },
                    );
                }
            }
            self
        }

        /// Make `ordinal` unreachable.
        pub fn unreachable(self, ordinal: u32) -> Self {
            self.member(ordinal, |m| {
                m.raft = None;
                m.unreachable_reason = Some("connection refused".into());
                if let Some(p) = &mut m.pod {
                    p.ready = false;
                }
            })
        }

        /// Edit the spec.
        pub fn spec(mut self, edit: impl FnOnce(&mut RaftClusterSpec)) -> Self {
            edit(&mut self.observed.spec);
            self
        }

        /// Edit the previous status.
        pub fn status(mut self, edit: impl FnOnce(&mut RaftClusterStatus)) -> Self {
            edit(&mut self.observed.previous_status);
            self
        }

        /// Finish.
        pub fn build(self) -> Observed {
            self.observed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(term: u64, acks: &[(u64, u64)]) -> RaftObserved {
        RaftObserved {
            role: MemberRole::Leader,
            term,
            acks: acks
                .iter()
                .map(|(id, millis)| {
                    (
                        *id,
                        LeaderAck {
                            healthy: *millis <= 300,
                            millis_since_ack: Some(*millis),
                        },
                    )
                })
                .collect(),
            ..RaftObserved::default()
        }
    }

    #[test]
    fn a_member_counts_as_cut_off_only_when_the_second_look_agrees() {
        let first = leader(3, &[(1, 0), (2, 450), (3, 900)]);
        // Member 2's ack was late once (a loaded machine); member 3 is really gone.
        let second = leader(3, &[(1, 0), (2, 20), (3, 1200)]);
        let acks = confirm_acks(&first, &second, 300);
        assert_eq!(acks[&1].problem(300), None);
        assert_eq!(acks[&2].problem(300), None);
        assert_eq!(
            acks[&3].problem(300),
            Some(ContactProblem::Stale {
                millis: 1200,
                window_ms: 300
            })
        );
        // Another term (a new election meanwhile): the first answer stands.
        let other_term = leader(4, &[(1, 0), (2, 20), (3, 20)]);
        assert_eq!(confirm_acks(&first, &other_term, 300), first.acks);
        // A member the second answer does not mention keeps the first verdict.
        let forgot = leader(3, &[(1, 0)]);
        assert!(
            confirm_acks(&first, &forgot, 300)[&2]
                .problem(300)
                .is_some()
        );
    }
}
