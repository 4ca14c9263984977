//! The status the operator writes: computed, purely, from what was observed and the action
//! planned. Fault tolerance comes from where healthy voters actually run, not from the plan.

use crate::crd::{
    MemberRole, MemberStatus, RaftClusterStatus, RecoveryInFlight, RecoveryRecord, RecoveryStatus,
    RolloutStatus, ZoneVoters,
};
use crate::member::{ordinal_of_raft_id, pod_name, raft_id};
use crate::observed::Observed;
use crate::plan::Action;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::collections::{BTreeMap, BTreeSet};

/// Condition types the operator maintains.
pub mod condition {
    /// A leader exists and a quorum of voters is healthy: clients are served.
    pub const AVAILABLE: &str = "Available";
    /// The operator is changing something (bootstrap, rollout, scaling, recovery).
    pub const PROGRESSING: &str = "Progressing";
    /// At least one member is not healthy.
    pub const DEGRADED: &str = "Degraded";
    /// A majority of voters is unreachable: the cluster cannot commit.
    pub const QUORUM_LOST: &str = "QuorumLost";
    /// The loss of any one zone leaves a quorum.
    pub const ZONE_FAULT_TOLERANT: &str = "ZoneFaultTolerant";
    /// A disruptive step has been refused for longer than `rollout.gateTimeoutSeconds`.
    pub const ROLLOUT_BLOCKED: &str = "RolloutBlocked";

    /// Condition status strings.
    pub const TRUE: &str = "True";
    /// See [`TRUE`].
    pub const FALSE: &str = "False";

    /// Reason of `Progressing=False` while the spec cannot be acted on.
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

    /// Whether a condition in this state is bad news (its Event is a Warning).
    pub fn is_warning(type_: &str, status: &str) -> bool {
        match status {
            TRUE => [QUORUM_LOST, DEGRADED, ROLLOUT_BLOCKED].contains(&type_),
            FALSE => [AVAILABLE, ZONE_FAULT_TOLERANT].contains(&type_),
            _ => false,
        }
    }
}

/// Mark the status of a cluster whose spec cannot be acted on: `Progressing=False` with reason
/// `InvalidSpec` and the cause; everything else stays as last observed.
pub fn set_invalid_spec(status: &mut RaftClusterStatus, generation: Option<i64>, reason: &str) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    status
        .conditions
        .retain(|c| c.type_ != condition::PROGRESSING);
    status.conditions.push(Condition {
        type_: condition::PROGRESSING.to_string(),
        status: condition::FALSE.to_string(),
        reason: condition::REASON_INVALID_SPEC.to_string(),
        message: reason.to_string(),
        observed_generation: generation,
        last_transition_time: now,
    });
}

/// Compute the status to write. `blocked_since` of the previous status carries how long the
/// gate has been closed across operator restarts.
pub fn compute_status(o: &Observed, action: &Action) -> RaftClusterStatus {
    let membership = o.membership();
    let leader = o.leader();
    let voter_ordinals: Vec<u32> = if membership.voters.is_empty() {
        (0..u32::try_from(o.spec.replicas).unwrap_or(0)).collect()
    } else {
        membership
            .voters
            .iter()
            .filter_map(|id| ordinal_of_raft_id(*id))
            .collect()
    };
    let voters = voter_ordinals.len() as u32;
    let healthy_voters: Vec<u32> = voter_ordinals
        .iter()
        .copied()
        .filter(|v| o.is_healthy(*v))
        .collect();
    let reachable_voters = voter_ordinals
        .iter()
        .filter(|v| o.member(**v).is_some_and(|m| m.raft.is_some()))
        .count() as u32;

    let mut per_zone: BTreeMap<String, u32> = o.zones.iter().map(|z| (z.clone(), 0)).collect();
    for v in &healthy_voters {
        let zone = o.zone_of(*v).unwrap_or_else(|| "unknown".to_string());
        *per_zone.entry(zone).or_default() += 1;
    }
    let counts: Vec<u32> = per_zone.values().copied().collect();
    let node_ft = quorum::node_failures_tolerated(healthy_voters.len() as u32, voters);
    let zone_ft = if leader.is_some() {
        quorum::zone_failures_tolerated(&counts, voters)
    } else {
        0
    };

    let members: Vec<MemberStatus> = o
        .members
        .iter()
        .map(|m| {
            let id = raft_id(m.ordinal);
            let role = m.raft.as_ref().map_or(MemberRole::Unknown, |r| {
                if membership.is_learner(id) || r.role == MemberRole::Learner {
                    MemberRole::Learner
                } else {
                    r.role
                }
            });
            let match_index = leader
                .and_then(|l| l.raft.as_ref())
                .and_then(|r| r.matched.get(&id).copied());
            MemberStatus {
                name: pod_name(&o.name, m.ordinal),
                raft_id: id,
                zone: o.zone_of(m.ordinal),
                role,
                match_index,
                lag: o.lag_of(m.ordinal),
                healthy: o.is_healthy(m.ordinal),
                version: m.raft.as_ref().map(|r| r.version.clone()),
                message: o.health_problem(m.ordinal),
            }
        })
        .collect();

    let bootstrapped = o.bootstrapped() || matches!(action, Action::InitializeCluster { .. });
    // A leader whose lease lapsed has had no quorum ack for a lease period: it cannot commit and
    // will step down. Counting it as "no leader" reports the loss one observation earlier, while
    // a leader with a valid lease (a majority still acks it) keeps the cluster available even
    // when the operator itself reaches fewer members.
    let leader_has_quorum = leader
        .and_then(|l| l.raft.as_ref())
        .is_some_and(|r| r.lease_valid);
    let quorum_lost =
        bootstrapped && !leader_has_quorum && reachable_voters < quorum::majority(voters);

    let rollout = rollout_status(o, action, &voter_ordinals);
    let conditions = conditions(
        o,
        action,
        ConditionInputs {
            leader_known: leader.is_some(),
            healthy: healthy_voters.len() as u32,
            reachable: reachable_voters,
            voters,
            zone_ft,
            zones_used: per_zone.values().filter(|n| **n > 0).count(),
            quorum_lost,
            bootstrapped,
        },
    );

    RaftClusterStatus {
        observed_generation: o.generation,
        replicas: voters as i32,
        ready_replicas: healthy_voters.len() as i32,
        selector: Some(format!("raft-operator.dev/cluster={}", o.name)),
        cluster_id: if bootstrapped {
            Some(o.uid.clone())
        } else {
            None
        },
        epoch: o
            .members
            .iter()
            .filter_map(|m| m.raft.as_ref())
            .filter(|r| r.cluster_id.as_deref() == Some(o.uid.as_str()))
            .map(|r| r.epoch)
            .chain([o.previous_status.epoch, u64::from(bootstrapped)])
            .max()
            .unwrap_or(0),
        leader: leader.map(|l| pod_name(&o.name, l.ordinal)),
        term: o
            .members
            .iter()
            .filter_map(|m| m.raft.as_ref().map(|r| r.term))
            .max()
            .unwrap_or(o.previous_status.term),
        commit_index: leader
            .and_then(|l| l.raft.as_ref())
            .map_or(o.previous_status.commit_index, |r| r.commit_index),
        quorum_size: quorum::majority(voters),
        healthy_voters: healthy_voters.len() as u32,
        node_fault_tolerance: node_ft as i32,
        zone_fault_tolerance: zone_ft as i32,
        placement: per_zone
            .into_iter()
            .map(|(zone, voters)| ZoneVoters { zone, voters })
            .collect(),
        members,
        rollout,
        recovery_id: {
            let id = o.current_recovery_id();
            (!id.is_empty()).then_some(id)
        },
        recovery: recovery_status(o, action),
        conditions,
    }
}

/// The recovery part of the status: the proposal while one is needed, the recovery in flight
/// (recorded from the approved plan when ForceRecover is about to be called, kept until a member
/// reports its epoch), and the history. An in-flight recovery seen to have taken effect (the
/// operator restarted, or its call timed out, after raftd carried it out) moves to the history.
fn recovery_status(o: &Observed, action: &Action) -> Option<RecoveryStatus> {
    let previous = o.previous_status.recovery.clone().unwrap_or_default();
    let mut history = previous.history;
    let mut in_flight = previous.in_flight;
    if let Some(flight) = &in_flight
        && o.recovery_took_effect(flight)
    {
        if !history.iter().any(|h| h.id == flight.id) {
            history.push(record_of(flight, flight.survivor_last_index, o.now_unix));
        }
        in_flight = None;
    }
    if in_flight.is_none()
        && let Action::ForceRecover {
            new_epoch, plan_id, ..
        } = action
        && let Some(proposal) = crate::plan::recovery_proposal(o)
    {
        in_flight = Some(RecoveryInFlight {
            id: plan_id.clone(),
            survivor: proposal.survivor,
            from_epoch: o.current_epoch(),
            to_epoch: *new_epoch,
            survivor_last_index: proposal.survivor_last_index,
            highest_commit_index_seen: proposal.highest_commit_index_seen,
            lost_members: proposal.lost_members,
            started_at: rfc3339(o.now_unix),
        });
    }
    // No new proposal while one is in flight: the only plan for that epoch is the one started.
    let proposal = if in_flight.is_some() {
        None
    } else {
        crate::plan::recovery_proposal(o)
    };
    (proposal.is_some() || in_flight.is_some() || !history.is_empty()).then_some(RecoveryStatus {
        proposal,
        in_flight,
        history,
    })
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

fn record_of(flight: &RecoveryInFlight, kept_through_index: u64, now_unix: i64) -> RecoveryRecord {
    RecoveryRecord {
        id: flight.id.clone(),
        survivor: flight.survivor.clone(),
        from_epoch: flight.from_epoch,
        to_epoch: flight.to_epoch,
        kept_through_index,
        highest_commit_index_seen: flight.highest_commit_index_seen,
        possibly_lost_entries: flight
            .highest_commit_index_seen
            .saturating_sub(kept_through_index),
        lost_members: flight.lost_members.clone(),
        at: rfc3339(now_unix),
    }
}

/// Records a recovery raftd has carried out (the audit record), with the index the survivor
/// kept as ForceRecover answered it, and clears the in-flight record. Called only when the
/// ForceRecover call succeeded.
pub fn record_recovery(
    status: &mut RaftClusterStatus,
    o: &Observed,
    result: &crate::admin::RecoveryResult,
    recovery_id: &str,
) {
    let recovery = status.recovery.get_or_insert_with(RecoveryStatus::default);
    let Some(flight) = recovery.in_flight.take() else {
        return;
    };
    recovery.proposal = None;
    if !recovery.history.iter().any(|h| h.id == flight.id) {
        recovery
            .history
            .push(record_of(&flight, result.previous_last_index, o.now_unix));
    }
    status.epoch = status.epoch.max(result.epoch).max(flight.to_epoch);
    status.recovery_id = Some(recovery_id.to_string());
}

fn rollout_status(o: &Observed, action: &Action, voters: &[u32]) -> Option<RolloutStatus> {
    let updated: Vec<String> = voters
        .iter()
        .filter(|v| {
            o.member(**v)
                .and_then(|m| m.pod.as_ref())
                .is_some_and(|p| p.revision == o.target_revision)
        })
        .map(|v| pod_name(&o.name, *v))
        .collect();
    let revisions: BTreeSet<&str> = o
        .members
        .iter()
        .filter_map(|m| m.pod.as_ref())
        .map(|p| p.revision.as_str())
        .filter(|r| *r != o.target_revision)
        .collect();
    let in_flight = match action {
        Action::ReplaceMember { ordinal, .. }
        | Action::AddLearner { ordinal }
        | Action::PromoteVoter { ordinal }
        | Action::RemoveMember { ordinal, .. }
        | Action::DeleteMember { ordinal, .. }
        | Action::RebuildMember { ordinal, .. } => Some(pod_name(&o.name, *ordinal)),
        Action::TransferLeadership { from, .. } => Some(pod_name(&o.name, *from)),
        _ => None,
    };
    let blocked_since = match action {
        Action::Blocked { .. } => Some(
            o.previous_status
                .rollout
                .as_ref()
                .and_then(|r| r.blocked_since)
                .unwrap_or(o.now_unix),
        ),
        _ => None,
    };
    Some(RolloutStatus {
        current_revision: revisions.iter().next().map(|r| r.to_string()),
        target_revision: Some(o.target_revision.clone()),
        updated_members: updated,
        member_in_flight: in_flight,
        blocked_since,
    })
}

struct ConditionInputs {
    leader_known: bool,
    healthy: u32,
    reachable: u32,
    voters: u32,
    zone_ft: u32,
    zones_used: usize,
    quorum_lost: bool,
    bootstrapped: bool,
}

fn conditions(o: &Observed, action: &Action, i: ConditionInputs) -> Vec<Condition> {
    let need = quorum::majority(i.voters);
    let available = i.leader_known && i.healthy >= need;
    let mut out = Vec::new();
    out.push(if available {
        cond(
            o,
            condition::AVAILABLE,
            true,
            "QuorumHealthy",
            format!(
                "leader elected; {} of {} voters healthy, {need} needed",
                i.healthy, i.voters
            ),
        )
    } else if !i.bootstrapped {
        cond(
            o,
            condition::AVAILABLE,
            false,
            "Bootstrapping",
            "the cluster has not formed yet".to_string(),
        )
    } else {
        cond(
            o,
            condition::AVAILABLE,
            false,
            "NoQuorum",
            format!(
                "{} of {} voters healthy, {need} needed{}",
                i.healthy,
                i.voters,
                if i.leader_known { "" } else { "; no leader" }
            ),
        )
    });

    let (progressing, reason, message) = match action {
        Action::Wait { reason } if reason.is_empty() => {
            (false, "Settled", "nothing to do".to_string())
        }
        Action::Wait { reason } => (true, "Waiting", reason.clone()),
        Action::Blocked { reason } => (true, "Blocked", reason.clone()),
        other => (true, other.reason(), describe(o, other)),
    };
    out.push(cond(
        o,
        condition::PROGRESSING,
        progressing,
        reason,
        message,
    ));

    let unhealthy: Vec<String> = o
        .members
        .iter()
        .filter_map(|m| o.health_problem(m.ordinal))
        .collect();
    out.push(if unhealthy.is_empty() {
        cond(
            o,
            condition::DEGRADED,
            false,
            "AllMembersHealthy",
            "every member is healthy and caught up".into(),
        )
    } else {
        cond(
            o,
            condition::DEGRADED,
            true,
            "MembersUnhealthy",
            unhealthy.join("; "),
        )
    });

    out.push(if i.quorum_lost {
        let unreachable: Vec<String> = o
            .members
            .iter()
            .filter(|m| m.raft.is_none())
            .map(|m| pod_name(&o.name, m.ordinal))
            .collect();
        cond(
            o,
            condition::QUORUM_LOST,
            true,
            "MajorityUnreachable",
            format!(
                "{} of {} voters reachable, {need} needed; unreachable: {}",
                i.reachable,
                i.voters,
                unreachable.join(", ")
            ),
        )
    } else {
        cond(
            o,
            condition::QUORUM_LOST,
            false,
            "QuorumPresent",
            if i.bootstrapped {
                "a majority of voters is reachable".to_string()
            } else {
                "not bootstrapped yet".to_string()
            },
        )
    });

    let zones = o.zones.len();
    out.push(if zones < 3 {
        cond(
            o,
            condition::ZONE_FAULT_TOLERANT,
            false,
            "FewerThanThreeZones",
            format!("{zones} zone(s) available; surviving a zone loss needs at least 3"),
        )
    } else if i.zone_ft >= 1 {
        cond(
            o,
            condition::ZONE_FAULT_TOLERANT,
            true,
            "SurvivesZoneLoss",
            format!(
                "the loss of any {} zone(s) leaves a quorum; healthy voters span {} zones",
                i.zone_ft, i.zones_used
            ),
        )
    } else {
        cond(
            o,
            condition::ZONE_FAULT_TOLERANT,
            false,
            "ZoneHoldsQuorum",
            format!("losing the fullest zone would leave fewer than {need} healthy voters"),
        )
    });

    let blocked_for = match action {
        Action::Blocked { .. } => o
            .previous_status
            .rollout
            .as_ref()
            .and_then(|r| r.blocked_since)
            .map(|since| o.now_unix - since),
        _ => None,
    };
    out.push(match (action, blocked_for) {
        (Action::Blocked { reason }, Some(secs))
            if secs >= i64::from(o.spec.rollout.gate_timeout_seconds) =>
        {
            cond(
                o,
                condition::ROLLOUT_BLOCKED,
                true,
                "GateClosed",
                reason.clone(),
            )
        }
        _ => cond(
            o,
            condition::ROLLOUT_BLOCKED,
            false,
            "GateOpen",
            "no step is being held back past the gate timeout".into(),
        ),
    });
    out
}

/// One sentence describing an action, for conditions and Events.
pub fn describe(o: &Observed, action: &Action) -> String {
    let name = |ordinal: &u32| pod_name(&o.name, *ordinal);
    match action {
        Action::Wait { reason } => reason.clone(),
        Action::Blocked { reason } => format!("blocked: {reason}"),
        Action::CreateMembers { ordinals } => format!(
            "creating {}",
            ordinals.iter().map(name).collect::<Vec<_>>().join(", ")
        ),
        Action::InitializeCluster { ordinal, voters } => format!(
            "initializing the cluster on {} with {} voters",
            name(ordinal),
            voters.len()
        ),
        Action::AddLearner { ordinal } => format!("adding {} as a learner", name(ordinal)),
        Action::ForceRecover {
            ordinal,
            new_epoch,
            plan_id,
        } => {
            let loss = crate::plan::recovery_proposal(o)
                .map(|p| {
                    format!(
                        "; entries through index {} (term {}) are kept, up to {} committed entries after it (highest commit index seen {}) may be lost; lost members: {}",
                        p.survivor_last_index,
                        p.survivor_last_term,
                        p.possibly_lost_entries,
                        p.highest_commit_index_seen,
                        p.lost_members.join(", ")
                    )
                })
                .unwrap_or_default();
            let resumed = if o.recovery_in_flight().is_some() {
                " (resumed: it was started before and has not been seen to take effect)"
            } else {
                ""
            };
            let refused = crate::plan::refused_approval(o)
                .map(|r| format!(". {r}"))
                .unwrap_or_default();
            format!(
                "recovery {plan_id} approved: making {} the only voter, epoch {new_epoch}{resumed}{loss}{refused}",
                name(ordinal)
            )
        }
        Action::RebuildMember { reason, .. } => format!("rebuilding: {reason}"),
        Action::PromoteVoter { ordinal } => format!("promoting {} to voter", name(ordinal)),
        Action::TransferLeadership { from, to } => {
            format!("moving leadership from {} to {}", name(from), name(to))
        }
        Action::RemoveMember { ordinal, reason } => {
            format!(
                "removing {} from the configuration: {reason}",
                name(ordinal)
            )
        }
        Action::DeleteMember {
            ordinal,
            delete_volume,
        } => format!(
            "deleting {} ({} its volume)",
            name(ordinal),
            if *delete_volume { "with" } else { "keeping" }
        ),
        Action::ReplaceMember { ordinal, reason } => {
            format!("replacing {}: {reason}", name(ordinal))
        }
    }
}

/// A condition whose lastTransitionTime moves only when its status changes.
fn cond(o: &Observed, type_: &str, status: bool, reason: &str, message: String) -> Condition {
    let status_str = if status {
        condition::TRUE
    } else {
        condition::FALSE
    };
    let previous = o
        .previous_status
        .conditions
        .iter()
        .find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status_str => p.last_transition_time.clone(),
        _ => Time(
            k8s_openapi::jiff::Timestamp::from_second(o.now_unix)
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        ),
    };
    Condition {
        type_: type_.to_string(),
        status: status_str.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: o.generation,
        last_transition_time,
    }
}

/// Condition types whose status differs between two statuses, with the new condition: the
/// transitions that get an Event.
pub fn condition_transitions<'a>(
    before: &RaftClusterStatus,
    after: &'a RaftClusterStatus,
) -> Vec<&'a Condition> {
    after
        .conditions
        .iter()
        .filter(|c| {
            before
                .conditions
                .iter()
                .find(|b| b.type_ == c.type_)
                .is_none_or(|b| b.status != c.status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::observed::fixtures::ObservedBuilder;
    use crate::plan::plan_next_action;

    fn status_of(o: &Observed) -> RaftClusterStatus {
        compute_status(o, &plan_next_action(o))
    }

    fn condition<'a>(s: &'a RaftClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn five_voters_over_three_zones() {
        let s = status_of(&ObservedBuilder::new(5).running(5, "rev-2").build());
        assert_eq!(s.leader.as_deref(), Some("demo-0"));
        assert_eq!(s.quorum_size, 3);
        assert_eq!(s.healthy_voters, 5);
        assert_eq!(s.ready_replicas, 5);
        assert_eq!(s.node_fault_tolerance, 2);
        assert_eq!(s.zone_fault_tolerance, 1);
        let mut placement: Vec<u32> = s.placement.iter().map(|z| z.voters).collect();
        placement.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(placement, vec![2, 2, 1]);
        assert_eq!(condition(&s, "Available").status, "True");
        assert_eq!(condition(&s, "ZoneFaultTolerant").status, "True");
        assert_eq!(condition(&s, "Degraded").status, "False");
        assert_eq!(condition(&s, "QuorumLost").status, "False");
        assert_eq!(condition(&s, "Progressing").status, "False");
        assert_eq!(s.cluster_id.as_deref(), Some("uid-1"));
        assert_eq!(s.members.len(), 5);
        assert_eq!(s.members[0].role, MemberRole::Leader);
        assert_eq!(s.members[1].lag, Some(0));
    }

    #[test]
    fn fault_tolerance_follows_actual_placement_not_the_plan() {
        // All five pods landed in zone-a: no zone loss is survivable.
        let mut b = ObservedBuilder::new(5).running(5, "rev-2");
        for ordinal in 0..5 {
            b = b.member(ordinal, |m| {
                m.pod.as_mut().unwrap().zone = Some("zone-a".into())
            });
        }
        let s = status_of(&b.build());
        assert_eq!(s.zone_fault_tolerance, 0);
        let zft = condition(&s, "ZoneFaultTolerant");
        assert_eq!(zft.status, "False");
        assert_eq!(zft.reason, "ZoneHoldsQuorum");
    }

    #[test]
    fn fewer_than_three_zones_is_not_zone_fault_tolerant() {
        let s = status_of(
            &ObservedBuilder::new(3)
                .zones(&["zone-a", "zone-b"])
                .running(3, "rev-2")
                .build(),
        );
        let zft = condition(&s, "ZoneFaultTolerant");
        assert_eq!(zft.status, "False");
        assert_eq!(zft.reason, "FewerThanThreeZones");
    }

    #[test]
    fn quorum_loss_is_reported_with_names() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .unreachable(0)
            .unreachable(1)
            .unreachable(2)
            .member(3, |m| m.raft.as_mut().unwrap().role = MemberRole::Candidate)
            .member(4, |m| m.raft.as_mut().unwrap().role = MemberRole::Candidate)
            .build();
        let s = status_of(&o);
        let lost = condition(&s, "QuorumLost");
        assert_eq!(lost.status, "True");
        assert_eq!(
            lost.message,
            "2 of 5 voters reachable, 3 needed; unreachable: demo-0, demo-1, demo-2"
        );
        assert_eq!(condition(&s, "Available").status, "False");
        assert_eq!(s.node_fault_tolerance, 0);
        assert_eq!(s.zone_fault_tolerance, 0);
        assert!(s.leader.is_none());
    }

    #[test]
    fn a_leader_without_a_lease_does_not_hide_quorum_loss() {
        // Members 0, 1 and 2 are cut off from the operator; the leader (4) has not stepped down.
        let cut_off = |lease_valid: bool| {
            ObservedBuilder::new(5)
                .running(5, "rev-2")
                .leader(4)
                .unreachable(0)
                .unreachable(1)
                .unreachable(2)
                .member(4, |m| m.raft.as_mut().unwrap().lease_valid = lease_valid)
                .build()
        };
        // Its lease lapsed: no quorum has acknowledged it for a lease period.
        let s = status_of(&cut_off(false));
        assert_eq!(condition(&s, "QuorumLost").status, "True");
        assert_eq!(condition(&s, "Available").status, "False");
        // Its lease is valid: a majority still acknowledges it (the operator is the one cut
        // off), so the cluster is not reported lost.
        assert_eq!(
            condition(&status_of(&cut_off(true)), "QuorumLost").status,
            "False"
        );
    }

    #[test]
    fn one_follower_down_lowers_tolerance_and_degrades() {
        let s = status_of(
            &ObservedBuilder::new(5)
                .running(5, "rev-2")
                .unreachable(4)
                .build(),
        );
        assert_eq!(s.healthy_voters, 4);
        assert_eq!(s.node_fault_tolerance, 1);
        // Healthy 2/1/1 (zone-b lost member 4): losing zone-a leaves 2 < 3.
        assert_eq!(s.zone_fault_tolerance, 0);
        assert_eq!(condition(&s, "Degraded").status, "True");
        assert!(
            condition(&s, "Degraded")
                .message
                .contains("demo-4 is unreachable")
        );
    }

    #[test]
    fn rollout_blocked_only_after_the_gate_timeout() {
        let base = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .member(4, |m| m.pod.as_mut().unwrap().revision = "rev-1".into())
            .lagging(2, 5000);
        let first = status_of(&base.build());
        // First sighting: blocked_since recorded, condition still False.
        assert_eq!(
            first.rollout.as_ref().unwrap().blocked_since,
            Some(1_000_000)
        );
        assert_eq!(condition(&first, "RolloutBlocked").status, "False");
        let later = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .member(4, |m| m.pod.as_mut().unwrap().revision = "rev-1".into())
            .lagging(2, 5000)
            .status(|s| s.rollout = first.rollout.clone())
            .build();
        let mut later = later;
        later.now_unix += 121;
        let s = status_of(&later);
        let blocked = condition(&s, "RolloutBlocked");
        assert_eq!(blocked.status, "True");
        assert_eq!(
            blocked.message,
            "demo-4 must wait: demo-2 is 5000 entries behind (max 1000)"
        );
        assert_eq!(s.rollout.as_ref().unwrap().updated_members.len(), 4);
    }

    #[test]
    fn transitions_are_the_conditions_that_changed() {
        let healthy = status_of(&ObservedBuilder::new(3).running(3, "rev-2").build());
        let degraded = status_of(
            &ObservedBuilder::new(3)
                .running(3, "rev-2")
                .unreachable(2)
                .build(),
        );
        let changed: Vec<&str> = condition_transitions(&healthy, &degraded)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert!(changed.contains(&"Degraded"), "{changed:?}");
        assert!(!changed.contains(&"QuorumLost"), "{changed:?}");
    }

    #[test]
    fn a_follower_cut_off_from_the_leader_counts_as_unhealthy_everywhere() {
        // Idle cluster, follower 2 partitioned: it answers the operator, its pod is Ready and
        // it lags 0 entries, but the leader last heard from it 1.5 s ago.
        let o = ObservedBuilder::new(3)
            .running(3, "rev-2")
            .last_ack(2, 1500)
            .build();
        let s = status_of(&o);
        assert_eq!(s.healthy_voters, 2);
        assert_eq!(s.ready_replicas, 2);
        assert_eq!(s.node_fault_tolerance, 0);
        assert!(!s.members[2].healthy);
        let message = s.members[2].message.clone().unwrap();
        assert!(
            message.starts_with("demo-2 is cut off from the leader: last acknowledged 1500 ms ago"),
            "{message}"
        );
        let degraded = condition(&s, "Degraded");
        assert_eq!(degraded.status, "True");
        assert!(
            degraded.message.contains("demo-2 is cut off"),
            "{}",
            degraded.message
        );
        assert_eq!(condition(&s, "Available").status, "True");
        // The budget the operator applies is computed from the same count.
        assert_eq!(
            crate::manifests::allowed_disruptions(s.healthy_voters, 3, false),
            0
        );
        // Heard from within the election timeout: healthy.
        let s = status_of(
            &ObservedBuilder::new(3)
                .running(3, "rev-2")
                .last_ack(2, 250)
                .build(),
        );
        assert_eq!(s.healthy_voters, 3);
        assert_eq!(condition(&s, "Degraded").status, "False");
    }

    #[test]
    fn five_voters_with_two_cut_off_tolerate_no_further_failure() {
        let s = status_of(
            &ObservedBuilder::new(5)
                .running(5, "rev-2")
                .last_ack(3, 900)
                .last_ack(4, u64::MAX)
                .build(),
        );
        assert_eq!(s.healthy_voters, 3);
        assert_eq!(s.node_fault_tolerance, 0);
        assert_eq!(s.zone_fault_tolerance, 0);
    }

    #[test]
    fn force_recover_is_recorded_in_flight_before_the_call_and_in_history_after() {
        use crate::crd::{MemberRole as R, RecoveryStatus};
        // A majority wiped: 0 and 1 keep logs up to 90 and 100; approved plan demo-1-to-epoch-2.
        let mut b = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .status(|s| s.commit_index = 120);
        for ordinal in 0..5 {
            b = b.member(ordinal, |m| {
                let r = m.raft.as_mut().unwrap();
                r.role = R::Candidate;
                r.leader_id = None;
                r.matched.clear();
                r.acks.clear();
                if ordinal >= 2 {
                    r.initialized = false;
                    r.cluster_id = None;
                    r.voters.clear();
                }
                r.last_log_index = if ordinal == 0 { 90 } else { 100 };
            });
        }
        let mut o = b.build();
        o.recovery_approval = Some("demo-1-to-epoch-2".into());
        let action = plan_next_action(&o);
        assert!(matches!(action, Action::ForceRecover { ordinal: 1, .. }));
        let before_call = compute_status(&o, &action);
        let flight = before_call
            .recovery
            .as_ref()
            .and_then(|r| r.in_flight.clone())
            .expect("in flight before the call");
        assert_eq!(
            (
                flight.id.as_str(),
                flight.survivor.as_str(),
                flight.to_epoch
            ),
            ("demo-1-to-epoch-2", "demo-1", 2)
        );
        assert!(before_call.recovery.as_ref().unwrap().proposal.is_none());

        // The call answers: the record keeps the index ForceRecover returned.
        let mut after = before_call.clone();
        let result = crate::admin::RecoveryResult {
            previous_last_index: 101,
            previous_last_term: 2,
            epoch: 2,
            already: false,
        };
        record_recovery(&mut after, &o, &result, "demo-1-to-epoch-2");
        let recovery = after.recovery.as_ref().unwrap();
        assert!(recovery.in_flight.is_none());
        assert_eq!(recovery.history.len(), 1);
        assert_eq!(recovery.history[0].kept_through_index, 101);
        assert_eq!(recovery.history[0].possibly_lost_entries, 19);
        assert_eq!(after.epoch, 2);
        assert_eq!(after.recovery_id.as_deref(), Some("demo-1-to-epoch-2"));

        // The call's answer was lost (operator killed): the next operator finds the survivor at
        // epoch 2 and moves the in-flight record to the history, once.
        o.previous_status = before_call;
        let r = o.members[1].raft.as_mut().unwrap();
        r.epoch = 2;
        r.role = R::Leader;
        r.leader_id = Some(2);
        r.voters = vec![2];
        let s = compute_status(&o, &plan_next_action(&o));
        let RecoveryStatus {
            in_flight, history, ..
        } = s.recovery.unwrap();
        assert!(in_flight.is_none());
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].id, "demo-1-to-epoch-2");
        assert_eq!(s.epoch, 2);
    }

    #[test]
    fn warning_conditions_are_named_by_their_constants() {
        assert!(condition::is_warning(condition::DEGRADED, condition::TRUE));
        assert!(!condition::is_warning(
            condition::DEGRADED,
            condition::FALSE
        ));
        assert!(condition::is_warning(
            condition::AVAILABLE,
            condition::FALSE
        ));
        assert!(!condition::is_warning(
            condition::PROGRESSING,
            condition::TRUE
        ));
    }
}
