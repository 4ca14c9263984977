//! The planner: a pure function from what was observed to the one next action.
//!
//! Safety lives here, so it is tested table-driven without a cluster. Every disruptive step
//! (replacing a pod, removing a voter, moving leadership) passes [`disruption_gate`]: no
//! membership change in flight, every other voter healthy and caught up, and a quorum plus
//! voters in two zones left while the member is away. Order of a rollout: members already
//! down first (replacing them costs nothing), then followers, then the leader after its
//! leadership has moved to a caught-up follower, preferably in another zone.

use crate::crd::MemberRole;
use crate::member::{ordinal_of_pod_name, ordinal_of_raft_id, pod_name};
use crate::observed::Observed;
use std::collections::BTreeSet;

/// The one thing the operator does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do; `reason` says what the cluster waits for (empty when it is settled).
    Wait {
        /// What the cluster is waiting for.
        reason: String,
    },
    /// Create these members' volumes and pods. Several only at bootstrap, when no member holds
    /// data yet; otherwise one.
    CreateMembers {
        /// Ordinals to create.
        ordinals: Vec<u32>,
    },
    /// Form the cluster: initialize member `ordinal` with these voters, exactly once.
    InitializeCluster {
        /// The member that initializes.
        ordinal: u32,
        /// Initial voters.
        voters: Vec<u32>,
    },
    /// Add a started member as a non-voting learner.
    AddLearner {
        /// Member to add.
        ordinal: u32,
    },
    /// Promote a caught-up learner to voter.
    PromoteVoter {
        /// Member to promote.
        ordinal: u32,
    },
    /// Ask the leader to hand leadership to a caught-up follower.
    TransferLeadership {
        /// Current leader.
        from: u32,
        /// Chosen successor.
        to: u32,
    },
    /// Remove a member from the Raft configuration.
    RemoveMember {
        /// Member to remove.
        ordinal: u32,
        /// Why.
        reason: String,
    },
    /// Delete a member's pod that is no longer in the configuration (and its volume, by policy).
    DeleteMember {
        /// Member to delete.
        ordinal: u32,
        /// Delete the volume too.
        delete_volume: bool,
    },
    /// Delete a member's pod so it comes back on the target revision.
    ReplaceMember {
        /// Member to replace.
        ordinal: u32,
        /// Why now, for the Event.
        reason: String,
    },
    /// Approved disaster recovery: make `ordinal` the only voter and move to `new_epoch`.
    ForceRecover {
        /// The survivor.
        ordinal: u32,
        /// The epoch after recovery.
        new_epoch: u64,
        /// The approved plan id.
        plan_id: String,
    },
    /// Delete a member's volume and pod so it comes back empty and is rebuilt learner-first:
    /// only for data of this cluster from before a recovery, which the cluster refuses.
    RebuildMember {
        /// Member to rebuild.
        ordinal: u32,
        /// Why.
        reason: String,
    },
    /// A disruptive step is due but not safe; nothing is done until the cause clears.
    Blocked {
        /// The exact cause, e.g. `demo-2 is 12034 entries behind (max 1000)`.
        reason: String,
    },
}

impl Action {
    /// Names of the action: a snake_case label for metrics and logs, and a PascalCase reason
    /// for conditions and Events.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            Action::Wait { .. } => ("wait", "Waiting"),
            Action::CreateMembers { .. } => ("create_members", "CreatingMembers"),
            Action::InitializeCluster { .. } => ("initialize_cluster", "Bootstrapping"),
            Action::AddLearner { .. } => ("add_learner", "AddingLearner"),
            Action::PromoteVoter { .. } => ("promote_voter", "PromotingVoter"),
            Action::TransferLeadership { .. } => ("transfer_leadership", "TransferringLeadership"),
            Action::RemoveMember { .. } => ("remove_member", "RemovingMember"),
            Action::DeleteMember { .. } => ("delete_member", "DeletingMember"),
            Action::ReplaceMember { .. } => ("replace_member", "ReplacingMember"),
            Action::ForceRecover { .. } => ("force_recover", "ForcingRecovery"),
            Action::RebuildMember { .. } => ("rebuild_member", "RebuildingMember"),
            Action::Blocked { .. } => ("blocked", "Blocked"),
        }
    }

    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        self.names().0
    }

    /// Reason for conditions and Events, PascalCase.
    pub fn reason(&self) -> &'static str {
        self.names().1
    }

    /// Whether carrying the action out takes a member away or changes who votes or leads: such
    /// a step is re-checked against a fresh observation immediately before it is made.
    pub fn is_disruptive(&self) -> bool {
        matches!(
            self,
            Action::ReplaceMember { .. }
                | Action::RemoveMember { .. }
                | Action::TransferLeadership { .. }
                | Action::RebuildMember { .. }
                | Action::ForceRecover { .. }
        )
    }

    /// Whether two planned actions are the same step on the same members (reasons, which carry
    /// numbers that move between observations, are not compared).
    pub fn same_step(&self, other: &Action) -> bool {
        use Action::*;
        match (self, other) {
            (ReplaceMember { ordinal: a, .. }, ReplaceMember { ordinal: b, .. })
            | (RemoveMember { ordinal: a, .. }, RemoveMember { ordinal: b, .. })
            | (RebuildMember { ordinal: a, .. }, RebuildMember { ordinal: b, .. }) => a == b,
            (TransferLeadership { from: a, to: x }, TransferLeadership { from: b, to: y }) => {
                a == b && x == y
            }
            (
                ForceRecover {
                    ordinal: a,
                    new_epoch: x,
                    plan_id: p,
                },
                ForceRecover {
                    ordinal: b,
                    new_epoch: y,
                    plan_id: q,
                },
            ) => a == b && x == y && p == q,
            _ => self == other,
        }
    }

    fn wait(reason: impl Into<String>) -> Self {
        Action::Wait {
            reason: reason.into(),
        }
    }
}

/// Pick the next action. Pure: same input, same answer.
pub fn plan_next_action(o: &Observed) -> Action {
    let desired = u32::try_from(o.spec.replicas).unwrap_or(0);

    if !o.bootstrapped() {
        return plan_bootstrap(o, desired);
    }

    let membership = o.membership();
    let voters: BTreeSet<u32> = membership
        .voters
        .iter()
        .filter_map(|id| ordinal_of_raft_id(*id))
        .collect();
    let learners: BTreeSet<u32> = membership
        .learners
        .iter()
        .filter_map(|id| ordinal_of_raft_id(*id))
        .collect();

    // A member of the configuration whose pod vanished is down already: recreating it costs
    // nothing and is how a member with a surviving volume rejoins.
    if let Some(ordinal) = voters
        .iter()
        .chain(learners.iter())
        .find(|ordinal| o.member(**ordinal).is_none_or(|m| m.pod.is_none()))
    {
        return Action::CreateMembers {
            ordinals: vec![*ordinal],
        };
    }

    // An approved recovery that was started is finished before anything else, with the same
    // survivor, epoch and id: choosing again could fork the cluster into two of one epoch.
    if let Some(flight) = o.recovery_in_flight() {
        return plan_recovery_in_flight(o, flight);
    }

    let Some(leader) = o.leader() else {
        return plan_without_leader(o, &voters);
    };
    let leader_ordinal = leader.ordinal;

    if o.spec.paused {
        return Action::wait("paused: spec.paused is true, no disruptive step is taken");
    }
    if membership.joint {
        return Action::wait("a membership change is in flight (joint configuration)");
    }

    // Learners: promote once caught up, or drop when no longer wanted.
    if let Some(&learner) = learners.iter().next() {
        if voters.len() as u32 >= desired {
            return Action::RemoveMember {
                ordinal: learner,
                reason: format!(
                    "{} is a learner but the cluster already has {} voters",
                    pod_name(&o.name, learner),
                    voters.len()
                ),
            };
        }
        return match o.health_problem(learner) {
            None => Action::PromoteVoter { ordinal: learner },
            Some(problem) => Action::wait(format!("learner catching up: {problem}")),
        };
    }

    // A voter whose data directory is gone can never vote safely again: take it out of the
    // configuration; it comes back learner-first below.
    if let Some(&wiped) = voters.iter().find(|ordinal| {
        o.member(**ordinal)
            .and_then(|m| m.raft.as_ref())
            .is_some_and(|r| !r.initialized)
    }) {
        if wiped == leader_ordinal {
            return Action::wait("the leader reports no Raft state; waiting for it to step down");
        }
        return match disruption_gate(o, &voters, wiped, true) {
            Ok(()) => Action::RemoveMember {
                ordinal: wiped,
                reason: format!(
                    "{} lost its data directory; it is removed and rebuilt learner-first",
                    pod_name(&o.name, wiped)
                ),
            },
            Err(reason) => Action::Blocked { reason },
        };
    }

    // A member holding this cluster's data from before a recovery is refused by the cluster
    // (its epoch is old): its data was given up when the recovery was approved.
    if let Some(old) = o.members.iter().find(|m| {
        !voters.contains(&m.ordinal)
            && !learners.contains(&m.ordinal)
            && m.raft.as_ref().is_some_and(|r| o.is_before_recovery(r))
    }) {
        let epoch = old.raft.as_ref().map(|r| r.epoch).unwrap_or(0);
        return Action::RebuildMember {
            ordinal: old.ordinal,
            reason: format!(
                "{} holds data of epoch {epoch}, from before the recovery to epoch {}; the cluster refuses it, so its volume is deleted and it is rebuilt learner-first",
                pod_name(&o.name, old.ordinal),
                o.current_epoch()
            ),
        };
    }

    // Scale up: one member at a time, learner first. Prefer a free ordinal whose member can
    // act now (no pod yet, or answering) over one that is down.
    if (voters.len() as u32) < desired {
        let free: Vec<u32> = (0..desired)
            .filter(|ordinal| !voters.contains(ordinal))
            .collect();
        let Some(next) = free
            .iter()
            .copied()
            .find(|ordinal| {
                o.member(*ordinal)
                    .is_none_or(|m| m.pod.is_none() || m.raft.is_some())
            })
            .or_else(|| free.first().copied())
        else {
            return Action::wait("no free ordinal below replicas");
        };
        if let Err(reason) = others_healthy(o, &voters, None) {
            return Action::Blocked {
                reason: format!("scale-up to {desired} waits: {reason}"),
            };
        }
        let member = o.member(next);
        return match member {
            Some(m) if m.pod.is_none() => Action::CreateMembers {
                ordinals: vec![next],
            },
            None => Action::CreateMembers {
                ordinals: vec![next],
            },
            Some(m) if m.raft.is_some() => Action::AddLearner { ordinal: next },
            Some(_) => Action::wait(format!(
                "{} is starting before it joins as a learner",
                pod_name(&o.name, next)
            )),
        };
    }

    // Scale down: remove the highest voter, moving leadership away from it first. Removing the
    // highest ordinals keeps the round-robin zone plan.
    if (voters.len() as u32) > desired {
        let Some(&victim) = voters.iter().next_back() else {
            return Action::wait("no voter to remove");
        };
        if let Err(reason) = others_healthy(o, &voters, Some(victim)) {
            return Action::Blocked {
                reason: format!("scale-down to {desired} waits: {reason}"),
            };
        }
        if victim == leader_ordinal {
            return transfer_away_from(o, &voters, victim);
        }
        return Action::RemoveMember {
            ordinal: victim,
            reason: format!("scale-down to {desired} voters"),
        };
    }

    // Pods of members no longer in the configuration.
    if let Some(extra) = o
        .members
        .iter()
        .find(|m| m.pod.is_some() && !voters.contains(&m.ordinal) && m.ordinal >= desired)
    {
        return Action::DeleteMember {
            ordinal: extra.ordinal,
            delete_volume: o.spec.storage.retention.when_scaled
                == crate::crd::RetentionPolicy::Delete,
        };
    }

    plan_rollout(o, &voters, leader_ordinal)
}

/// Before the cluster exists: create every initial member, then initialize once all answer.
fn plan_bootstrap(o: &Observed, desired: u32) -> Action {
    let missing: Vec<u32> = (0..desired)
        .filter(|ordinal| o.member(*ordinal).is_none_or(|m| m.pod.is_none()))
        .collect();
    if !missing.is_empty() {
        return Action::CreateMembers { ordinals: missing };
    }
    let not_answering: Vec<String> = (0..desired)
        .filter(|ordinal| o.member(*ordinal).is_none_or(|m| m.raft.is_none()))
        .map(|ordinal| pod_name(&o.name, ordinal))
        .collect();
    if !not_answering.is_empty() {
        return Action::wait(format!(
            "bootstrap waits for every initial member to answer: {} not yet",
            not_answering.join(", ")
        ));
    }
    // A member holding state of another cluster must not be folded into this one.
    if let Some(foreign) = o.members.iter().find(|m| {
        m.raft
            .as_ref()
            .is_some_and(|r| r.initialized && !o.is_this_cluster(r))
    }) {
        return Action::Blocked {
            reason: format!(
                "{} holds state of another cluster; bootstrap refuses to proceed",
                pod_name(&o.name, foreign.ordinal)
            ),
        };
    }
    Action::InitializeCluster {
        ordinal: 0,
        voters: (0..desired).collect(),
    }
}

/// Rolling replacement of members whose pod revision differs from the target.
fn plan_rollout(o: &Observed, voters: &BTreeSet<u32>, leader: u32) -> Action {
    let stale: Vec<u32> = voters
        .iter()
        .copied()
        .filter(|ordinal| {
            o.member(*ordinal)
                .and_then(|m| m.pod.as_ref())
                .is_some_and(|p| p.revision != o.target_revision)
        })
        .collect();
    if stale.is_empty() {
        return Action::wait("");
    }

    // 1. Members already down: replacing them costs nothing, as long as the rest hold a quorum.
    //    Only members that are really down (no answer, crash-looping, terminating), never the
    //    leader: a member that answers but is briefly not ready is replaced in turn, gated.
    if let Some(&down) = stale
        .iter()
        .find(|ordinal| **ordinal != leader && o.is_down(**ordinal))
    {
        let healthy_others = voters
            .iter()
            .filter(|v| **v != down && o.is_healthy(**v))
            .count() as u32;
        let need = quorum::majority(voters.len() as u32);
        if healthy_others < need {
            return Action::Blocked {
                reason: format!(
                    "cannot replace {}: only {healthy_others} other voters are healthy, {need} needed",
                    pod_name(&o.name, down)
                ),
            };
        }
        let problem = o.health_problem(down).unwrap_or_default();
        return Action::ReplaceMember {
            ordinal: down,
            reason: format!("{problem}; replaced first, it is down already"),
        };
    }

    // 2. Followers, lowest ordinal first.
    if let Some(&follower) = stale.iter().find(|ordinal| **ordinal != leader) {
        return match disruption_gate(o, voters, follower, false) {
            Ok(()) => Action::ReplaceMember {
                ordinal: follower,
                reason: format!("rolling to revision {}", o.target_revision),
            },
            Err(reason) => Action::Blocked { reason },
        };
    }

    // 3. The leader, last, after leadership moves away.
    if let Err(reason) = disruption_gate(o, voters, leader, false) {
        return Action::Blocked { reason };
    }
    transfer_away_from(o, voters, leader)
}

/// Move leadership from `leader` to the best caught-up follower.
fn transfer_away_from(o: &Observed, voters: &BTreeSet<u32>, leader: u32) -> Action {
    match pick_successor(o, voters, leader) {
        Some(to) => Action::TransferLeadership { from: leader, to },
        None => Action::Blocked {
            reason: format!(
                "no caught-up follower to take leadership from {}",
                pod_name(&o.name, leader)
            ),
        },
    }
}

/// The follower to hand leadership to: healthy, on the target revision if possible, in another
/// zone if possible, most caught up, then lowest ordinal.
pub fn pick_successor(o: &Observed, voters: &BTreeSet<u32>, leader: u32) -> Option<u32> {
    let leader_zone = o.zone_of(leader);
    voters
        .iter()
        .copied()
        .filter(|v| *v != leader && o.is_healthy(*v))
        .min_by_key(|v| {
            let other_zone = o.zone_of(*v) != leader_zone;
            let updated = o
                .member(*v)
                .and_then(|m| m.pod.as_ref())
                .is_some_and(|p| p.revision == o.target_revision);
            let lag = o.lag_of(*v).unwrap_or(u64::MAX);
            (!updated, !other_zone, lag, *v)
        })
}

/// Every voter other than `except` is healthy and caught up; otherwise every problem, joined.
fn others_healthy(o: &Observed, voters: &BTreeSet<u32>, except: Option<u32>) -> Result<(), String> {
    let problems: Vec<String> = voters
        .iter()
        .filter(|v| Some(**v) != except)
        .filter_map(|v| o.health_problem(*v))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Finish the recovery recorded in `.status.recovery.inFlight`: call ForceRecover again on the
/// same survivor with the same epoch and id (raftd treats a repeat as done), or wait for the
/// survivor to answer. A different approval is refused; the reason says why.
fn plan_recovery_in_flight(o: &Observed, flight: &crate::crd::RecoveryInFlight) -> Action {
    let refused = refused_approval(o)
        .map(|r| format!(". {r}"))
        .unwrap_or_default();
    let Some(ordinal) = ordinal_of_pod_name(&o.name, &flight.survivor) else {
        return Action::Blocked {
            reason: format!(
                "recovery {} in flight names {}, which is not a member of {}{refused}",
                flight.id, flight.survivor, o.name
            ),
        };
    };
    if o.spec.paused {
        return Action::wait(format!(
            "recovery {} to epoch {} is in flight; paused: spec.paused is true{refused}",
            flight.id, flight.to_epoch
        ));
    }
    if o.member(ordinal).is_none_or(|m| m.raft.is_none()) {
        return Action::wait(format!(
            "recovery {} to epoch {} is in flight: waiting for its survivor {} to answer; no other survivor is chosen for epoch {}{refused}",
            flight.id, flight.to_epoch, flight.survivor, flight.to_epoch
        ));
    }
    Action::ForceRecover {
        ordinal,
        new_epoch: flight.to_epoch,
        plan_id: flight.id.clone(),
    }
}

/// Why the approval annotation is refused while another recovery is in flight, if it is.
pub fn refused_approval(o: &Observed) -> Option<String> {
    let flight = o.recovery_in_flight()?;
    let approval = o.recovery_approval.as_deref()?;
    (approval != flight.id).then(|| {
        format!(
            "approval {approval} is refused: recovery {} (survivor {}, epoch {}) is in flight, and an epoch gets exactly one recovery",
            flight.id, flight.survivor, flight.to_epoch
        )
    })
}

/// May `target` go away now? Every other voter healthy and within the lag bound, and the voters
/// left keep a quorum and span two zones (when the cluster has two zones to span).
/// `target_already_down`: the member is gone already, so its own health does not matter.
pub fn disruption_gate(
    o: &Observed,
    voters: &BTreeSet<u32>,
    target: u32,
    target_already_down: bool,
) -> Result<(), String> {
    let target_name = pod_name(&o.name, target);
    others_healthy(o, voters, Some(target))
        .map_err(|problem| format!("{target_name} must wait: {problem}"))?;
    if !target_already_down && let Some(problem) = o.health_problem(target) {
        // Unreachable or lagging members are replaced by the "down first" rule instead.
        return Err(format!("{target_name} must wait: {problem}"));
    }
    let remaining = voters.len() as u32 - 1;
    let need = quorum::majority(voters.len() as u32);
    if remaining < need {
        return Err(format!(
            "{target_name} must wait: {remaining} voters would remain, {need} needed for quorum"
        ));
    }
    let zones_left: BTreeSet<String> = voters
        .iter()
        .filter(|v| **v != target)
        .filter_map(|v| o.zone_of(*v))
        .collect();
    let zones_in_use: BTreeSet<String> = voters.iter().filter_map(|v| o.zone_of(*v)).collect();
    if zones_in_use.len() >= 2 && zones_left.len() < 2 {
        return Err(format!(
            "{target_name} must wait: the voters left would all be in one zone"
        ));
    }
    Ok(())
}

/// Why there is no leader, naming who is unreachable and how many voters are needed.
/// No leader: an election in progress, a transient loss of quorum (wait for the members whose
/// volumes survive), or a permanent one (propose a recovery; act only once it is approved).
fn plan_without_leader(o: &Observed, voters: &BTreeSet<u32>) -> Action {
    let reason = no_leader_reason(o, voters);
    let Some(proposal) = recovery_proposal(o) else {
        return Action::wait(reason);
    };
    if o.spec.recovery.policy == crate::crd::RecoveryPolicy::Disabled {
        return Action::Blocked {
            reason: format!(
                "{reason}. The quorum cannot come back ({} lost their data); spec.recovery.policy is Disabled, so the operator does not recover",
                proposal.lost_members.join(", ")
            ),
        };
    }
    if o.spec.paused {
        return Action::wait(format!("{reason}. paused: spec.paused is true"));
    }
    if o.recovery_approval.as_deref() == Some(proposal.id.as_str()) {
        let Some(ordinal) = ordinal_of_pod_name(&o.name, &proposal.survivor) else {
            return Action::wait(reason);
        };
        return Action::ForceRecover {
            ordinal,
            new_epoch: proposal.new_epoch,
            plan_id: proposal.id,
        };
    }
    Action::Blocked {
        reason: format!(
            "quorum cannot come back: {} lost their data. Recovery plan {}: make {} (last log {}/{}) the only voter and rebuild the rest; up to {} committed entries may be lost. Approve with: {}",
            proposal.lost_members.join(", "),
            proposal.id,
            proposal.survivor,
            proposal.survivor_last_term,
            proposal.survivor_last_index,
            proposal.possibly_lost_entries,
            proposal.approve_with
        ),
    }
}

/// The recovery plan when a majority of voters is lost for good, i.e. fewer than a quorum of
/// voters still hold data (answering with this cluster's state, or down with their volume).
/// `None` while the quorum can still come back by itself. Pure.
pub fn recovery_proposal(o: &Observed) -> Option<crate::crd::RecoveryProposal> {
    if o.leader().is_some() || !o.bootstrapped() {
        return None;
    }
    let membership = o.membership();
    let voters: Vec<u32> = membership
        .voters
        .iter()
        .filter_map(|id| ordinal_of_raft_id(*id))
        .collect();
    if voters.is_empty() {
        return None;
    }
    let data_gone = |ordinal: u32| match o.member(ordinal) {
        None => true,
        Some(m) => {
            !m.volume_exists
                || m.raft
                    .as_ref()
                    .is_some_and(|r| !r.initialized || !o.is_this_cluster(r))
        }
    };
    let lost: Vec<u32> = voters.iter().copied().filter(|v| data_gone(*v)).collect();
    let holding = voters.len() - lost.len();
    if holding as u32 >= quorum::majority(voters.len() as u32) {
        return None;
    }
    let mut candidates: Vec<(u32, u64, u64)> = voters
        .iter()
        .copied()
        .filter(|v| !lost.contains(v))
        .filter_map(|v| {
            let r = o.member(v)?.raft.as_ref()?;
            Some((v, r.last_log_term, r.last_log_index))
        })
        .collect();
    // Most up to date first: highest (last term, last index), then the lowest ordinal.
    candidates.sort_by(|a, b| (b.1, b.2, a.0).cmp(&(a.1, a.2, b.0)));
    let &(survivor, term, index) = candidates.first()?;
    let new_epoch = o.current_epoch() + 1;
    let survivor_name = pod_name(&o.name, survivor);
    let id = format!("{survivor_name}-to-epoch-{new_epoch}");
    let highest = o.previous_status.commit_index;
    Some(crate::crd::RecoveryProposal {
        approve_with: format!(
            "kubectl -n {} annotate raftcluster {} {}={id} --overwrite",
            o.namespace,
            o.name,
            crate::crd::APPROVE_RECOVERY_ANNOTATION
        ),
        id,
        survivor: survivor_name,
        survivor_last_index: index,
        survivor_last_term: term,
        new_epoch,
        candidates: candidates
            .iter()
            .map(|(v, t, i)| crate::crd::RecoveryCandidate {
                name: pod_name(&o.name, *v),
                last_log_index: *i,
                last_log_term: *t,
            })
            .collect(),
        lost_members: lost.iter().map(|v| pod_name(&o.name, *v)).collect(),
        highest_commit_index_seen: highest,
        possibly_lost_entries: highest.saturating_sub(index),
    })
}

fn no_leader_reason(o: &Observed, voters: &BTreeSet<u32>) -> String {
    let reachable: Vec<u32> = voters
        .iter()
        .copied()
        .filter(|v| o.member(*v).is_some_and(|m| m.raft.is_some()))
        .collect();
    let unreachable: Vec<String> = voters
        .iter()
        .filter(|v| !reachable.contains(v))
        .map(|v| pod_name(&o.name, *v))
        .collect();
    let need = quorum::majority(voters.len() as u32);
    if (reachable.len() as u32) < need {
        format!(
            "quorum lost: {} of {} voters reachable, {} needed; unreachable: {}. Members whose volumes survive rejoin by themselves",
            reachable.len(),
            voters.len(),
            need,
            unreachable.join(", ")
        )
    } else {
        format!(
            "no leader yet: election in progress ({} of {} voters reachable)",
            reachable.len(),
            voters.len()
        )
    }
}

/// Whether a role counts as a voter role.
pub fn is_voter_role(role: MemberRole) -> bool {
    matches!(
        role,
        MemberRole::Leader | MemberRole::Follower | MemberRole::Candidate
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::observed::fixtures::ObservedBuilder;

    #[test]
    fn bootstrap_creates_every_initial_member_at_once() {
        let o = ObservedBuilder::new(5).build();
        assert_eq!(
            plan_next_action(&o),
            Action::CreateMembers {
                ordinals: vec![0, 1, 2, 3, 4]
            }
        );
    }

    #[test]
    fn bootstrap_initializes_once_all_answer_uninitialized() {
        let o = ObservedBuilder::new(3)
            .running(3, "rev-2")
            .status(|s| s.cluster_id = None)
            .member(0, |m| m.raft.as_mut().unwrap().initialized = false)
            .member(1, |m| m.raft.as_mut().unwrap().initialized = false)
            .member(2, |m| m.raft.as_mut().unwrap().initialized = false)
            .member(0, |m| m.raft.as_mut().unwrap().cluster_id = None)
            .member(1, |m| m.raft.as_mut().unwrap().cluster_id = None)
            .member(2, |m| m.raft.as_mut().unwrap().cluster_id = None)
            .build();
        assert_eq!(
            plan_next_action(&o),
            Action::InitializeCluster {
                ordinal: 0,
                voters: vec![0, 1, 2]
            }
        );
    }

    #[test]
    fn bootstrap_waits_for_a_silent_member() {
        let o = ObservedBuilder::new(3)
            .running(3, "rev-2")
            .status(|s| s.cluster_id = None)
            .member(0, |m| {
                let r = m.raft.as_mut().unwrap();
                r.initialized = false;
                r.cluster_id = None;
            })
            .member(1, |m| {
                let r = m.raft.as_mut().unwrap();
                r.initialized = false;
                r.cluster_id = None;
            })
            .unreachable(2)
            .build();
        match plan_next_action(&o) {
            Action::Wait { reason } => assert!(reason.contains("demo-2"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bootstrapped_cluster_never_initializes_again() {
        // Member 0 lost its data directory: still no InitializeCluster, it is a wiped voter.
        let o = ObservedBuilder::new(3)
            .running(3, "rev-2")
            .leader(1)
            .member(0, |m| {
                let r = m.raft.as_mut().unwrap();
                r.initialized = false;
                r.cluster_id = None;
            })
            .build();
        // The leader (member 1) still lists member 0 as a voter.
        assert_eq!(
            plan_next_action(&o),
            Action::RemoveMember {
                ordinal: 0,
                reason: "demo-0 lost its data directory; it is removed and rebuilt learner-first"
                    .into()
            }
        );
    }

    #[test]
    fn settled_cluster_waits_with_no_reason() {
        let o = ObservedBuilder::new(5).running(5, "rev-2").build();
        assert_eq!(plan_next_action(&o), Action::wait(""));
    }

    #[test]
    fn rollout_replaces_followers_lowest_first_then_moves_leadership() {
        let o = ObservedBuilder::new(5).running(5, "rev-1").build();
        assert!(matches!(
            plan_next_action(&o),
            Action::ReplaceMember { ordinal: 1, .. }
        ));
        // Followers done: the leader (0) hands over to an updated follower in another zone.
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .member(0, |m| m.pod.as_mut().unwrap().revision = "rev-1".into())
            .build();
        // 0 is in zone-a, 3 is zone-a too; 1 (zone-b) is the first in another zone.
        assert_eq!(
            plan_next_action(&o),
            Action::TransferLeadership { from: 0, to: 1 }
        );
        // After the transfer the old leader is a follower and gets replaced.
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .leader(1)
            .member(0, |m| m.pod.as_mut().unwrap().revision = "rev-1".into())
            .build();
        assert!(matches!(
            plan_next_action(&o),
            Action::ReplaceMember { ordinal: 0, .. }
        ));
    }

    #[test]
    fn crash_looping_member_is_replaced_first_even_though_rollout_would_wait() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-1")
            .member(3, |m| {
                let p = m.pod.as_mut().unwrap();
                p.crash_looping = true;
                p.restarts = 7;
                m.raft = None;
            })
            .build();
        match plan_next_action(&o) {
            Action::ReplaceMember { ordinal, reason } => {
                assert_eq!(ordinal, 3);
                assert!(reason.contains("crash-looping"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_leader_that_is_briefly_not_ready_is_not_replaced_without_a_transfer() {
        let o = ObservedBuilder::new(3)
            .running(3, "rev-1")
            .member(0, |m| m.pod.as_mut().unwrap().ready = false)
            .build();
        // Member 0 leads and answers; its readiness flapped. The rollout must not replace it
        // first as if it were down: followers first, and here they wait for 0 to be healthy.
        match plan_next_action(&o) {
            Action::Blocked { reason } => {
                assert!(reason.contains("demo-0 is not ready"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lagging_follower_blocks_the_rollout_with_the_exact_reason() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .member(4, |m| m.pod.as_mut().unwrap().revision = "rev-1".into())
            .member(3, |m| m.pod.as_mut().unwrap().revision = "rev-2".into())
            .lagging(2, 12034)
            .build();
        // Member 2 is on the target revision but lagging: it is not "stale and down", so the
        // rollout of member 4 must wait for it.
        assert_eq!(
            plan_next_action(&o),
            Action::Blocked {
                reason: "demo-4 must wait: demo-2 is 12034 entries behind (max 1000)".into()
            }
        );
    }

    #[test]
    fn a_down_follower_blocks_replacing_a_healthy_one() {
        let o = ObservedBuilder::new(3)
            .running(3, "rev-1")
            .member(2, |m| m.pod.as_mut().unwrap().revision = "rev-2".into())
            .unreachable(2)
            .build();
        // 1 is stale and healthy, 2 is updated but down: replacing 1 would leave 1 of 3.
        match plan_next_action(&o) {
            Action::Blocked { reason } => {
                assert!(
                    reason.starts_with("demo-1 must wait: demo-2 is unreachable"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paused_cluster_takes_no_disruptive_step() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-1")
            .spec(|s| s.paused = true)
            .build();
        assert!(
            matches!(plan_next_action(&o), Action::Wait { reason } if reason.starts_with("paused"))
        );
    }

    #[test]
    fn missing_pod_of_a_voter_is_recreated_even_without_quorum() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .member(2, |m| {
                m.pod = None;
                m.raft = None;
            })
            .build();
        assert_eq!(
            plan_next_action(&o),
            Action::CreateMembers { ordinals: vec![2] }
        );
    }

    #[test]
    fn quorum_loss_waits_and_names_the_unreachable() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .unreachable(0)
            .unreachable(1)
            .unreachable(2)
            .member(3, |m| m.raft.as_mut().unwrap().role = MemberRole::Candidate)
            .build();
        match plan_next_action(&o) {
            Action::Wait { reason } => {
                assert!(
                    reason.starts_with("quorum lost: 2 of 5 voters reachable, 3 needed"),
                    "{reason}"
                );
                assert!(reason.contains("demo-0, demo-1, demo-2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scale_up_goes_learner_first_one_member_at_a_time() {
        // 3 -> 5: member 3 has no pod yet.
        let o = ObservedBuilder::new(5).running(3, "rev-2").build();
        assert_eq!(
            plan_next_action(&o),
            Action::CreateMembers { ordinals: vec![3] }
        );
        // Its pod answers (uninitialized): add as learner.
        let mut o = ObservedBuilder::new(5).running(4, "rev-2").build();
        for m in &mut o.members {
            if let Some(r) = &mut m.raft {
                r.voters = vec![1, 2, 3];
                r.matched.remove(&4);
            }
        }
        o.members[3].raft.as_mut().unwrap().initialized = false;
        assert_eq!(plan_next_action(&o), Action::AddLearner { ordinal: 3 });
        // Learner caught up: promote.
        for m in &mut o.members {
            if let Some(r) = &mut m.raft {
                r.learners = vec![4];
                r.initialized = true;
                if r.role == MemberRole::Leader {
                    r.matched.insert(4, r.last_log_index);
                }
            }
        }
        o.members[3].raft.as_mut().unwrap().role = MemberRole::Learner;
        assert_eq!(plan_next_action(&o), Action::PromoteVoter { ordinal: 3 });
        // Learner far behind: wait.
        let leader = o.members.iter_mut().find(|m| m.ordinal == 0).unwrap();
        leader.raft.as_mut().unwrap().matched.insert(4, 0);
        assert!(
            matches!(plan_next_action(&o), Action::Wait { reason } if reason.contains("learner catching up"))
        );
    }

    #[test]
    fn scale_down_removes_the_highest_voter_and_moves_leadership_first() {
        let o = ObservedBuilder::new(3).running(5, "rev-2").build();
        assert!(matches!(
            plan_next_action(&o),
            Action::RemoveMember { ordinal: 4, .. }
        ));
        let o = ObservedBuilder::new(3)
            .running(5, "rev-2")
            .leader(4)
            .build();
        assert!(matches!(
            plan_next_action(&o),
            Action::TransferLeadership { from: 4, .. }
        ));
        // Once out of the configuration, its pod is deleted, volume per policy (Delete).
        let mut o = ObservedBuilder::new(3).running(5, "rev-2").build();
        for m in &mut o.members {
            if let Some(r) = &mut m.raft {
                r.voters = vec![1, 2, 3];
            }
        }
        assert_eq!(
            plan_next_action(&o),
            Action::DeleteMember {
                ordinal: 3,
                delete_volume: true
            }
        );
    }

    #[test]
    fn gate_refuses_to_leave_voters_in_a_single_zone() {
        // 3 voters, two in zone-a, one in zone-b: removing the zone-b one leaves one zone.
        let o = ObservedBuilder::new(3)
            .zones(&["zone-a", "zone-b"])
            .running(3, "rev-2")
            .member(1, |m| m.pod.as_mut().unwrap().zone = Some("zone-b".into()))
            .member(2, |m| m.pod.as_mut().unwrap().zone = Some("zone-a".into()))
            .build();
        let voters: BTreeSet<u32> = [0, 1, 2].into();
        let err = disruption_gate(&o, &voters, 1, false).unwrap_err();
        assert!(err.contains("all be in one zone"), "{err}");
        assert!(disruption_gate(&o, &voters, 2, false).is_ok());
    }

    #[test]
    fn successor_prefers_another_zone() {
        let o = ObservedBuilder::new(5).running(5, "rev-2").build();
        let voters: BTreeSet<u32> = (0..5).collect();
        // Leader 0 in zone-a; 3 is zone-a too, 1 is zone-b.
        assert_eq!(pick_successor(&o, &voters, 0), Some(1));
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .lagging(1, 50)
            .build();
        assert_eq!(pick_successor(&o, &voters, 0), Some(2));
    }

    /// 5 voters, members 2, 3 and 4 wiped (answering with no state); 0 and 1 survive with
    /// logs ending at 90 and 100 in term 2; the operator saw commit index 120.
    fn majority_wiped() -> ObservedBuilder {
        let mut b = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .status(|s| s.commit_index = 120);
        for ordinal in 0..5 {
            b = b.member(ordinal, |m| {
                let r = m.raft.as_mut().unwrap();
                r.role = MemberRole::Candidate;
                r.leader_id = None;
                r.matched.clear();
            });
        }
        for ordinal in 2..5 {
            b = b.member(ordinal, |m| {
                let r = m.raft.as_mut().unwrap();
                r.initialized = false;
                r.awaiting_join = true;
                r.cluster_id = None;
                r.voters.clear();
            });
        }
        b.member(0, |m| m.raft.as_mut().unwrap().last_log_index = 90)
            .member(1, |m| m.raft.as_mut().unwrap().last_log_index = 100)
    }

    #[test]
    fn transient_quorum_loss_waits_for_members_with_volumes() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-2")
            .unreachable(0)
            .unreachable(1)
            .unreachable(2)
            .build();
        assert!(recovery_proposal(&o).is_none());
        match plan_next_action(&o) {
            Action::Wait { reason } => {
                assert!(reason.contains("quorum lost"), "{reason}");
                assert!(reason.contains("rejoin by themselves"), "{reason}");
            }
            other => panic!("expected Wait, got {other:?}"),
        }
    }

    #[test]
    fn permanent_loss_proposes_the_most_up_to_date_survivor_and_waits_for_approval() {
        let o = majority_wiped().build();
        let p = recovery_proposal(&o).unwrap();
        assert_eq!(p.survivor, "demo-1");
        assert_eq!((p.survivor_last_term, p.survivor_last_index), (2, 100));
        assert_eq!(p.new_epoch, 2);
        assert_eq!(p.id, "demo-1-to-epoch-2");
        assert_eq!(p.lost_members, vec!["demo-2", "demo-3", "demo-4"]);
        assert_eq!(p.candidates.len(), 2);
        assert_eq!(p.possibly_lost_entries, 20);
        match plan_next_action(&o) {
            Action::Blocked { reason } => {
                assert!(reason.contains("demo-1-to-epoch-2"), "{reason}");
                assert!(reason.contains("kubectl -n ns annotate raftcluster demo raft-operator.dev/approve-recovery=demo-1-to-epoch-2"), "{reason}");
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
        // A higher last term beats a longer log.
        let o = majority_wiped()
            .member(0, |m| m.raft.as_mut().unwrap().last_log_term = 3)
            .build();
        assert_eq!(recovery_proposal(&o).unwrap().survivor, "demo-0");
    }

    #[test]
    fn approved_recovery_forces_the_survivor_and_a_wrong_approval_does_nothing() {
        let mut o = majority_wiped().build();
        o.recovery_approval = Some("demo-0-to-epoch-2".into());
        assert!(matches!(plan_next_action(&o), Action::Blocked { .. }));
        o.recovery_approval = Some("demo-1-to-epoch-2".into());
        assert_eq!(
            plan_next_action(&o),
            Action::ForceRecover {
                ordinal: 1,
                new_epoch: 2,
                plan_id: "demo-1-to-epoch-2".into()
            }
        );
        let mut disabled = majority_wiped()
            .spec(|s| s.recovery.policy = crate::crd::RecoveryPolicy::Disabled)
            .build();
        disabled.recovery_approval = Some("demo-1-to-epoch-2".into());
        match plan_next_action(&disabled) {
            Action::Blocked { reason } => assert!(reason.contains("Disabled"), "{reason}"),
            other => panic!("expected Blocked, got {other:?}"),
        }
    }

    #[test]
    fn after_recovery_old_epoch_members_are_rebuilt_and_wiped_ones_join() {
        // demo-1 leads alone at epoch 2; demo-0 still holds epoch-1 data; 2..4 are empty.
        let mut b = majority_wiped().status(|s| s.epoch = 2);
        b = b.member(1, |m| {
            let r = m.raft.as_mut().unwrap();
            r.role = MemberRole::Leader;
            r.epoch = 2;
            r.term = 3;
            r.leader_id = Some(2);
            r.voters = vec![2];
            r.matched = [(2, 101)].into();
        });
        let o = b.clone().build();
        assert!(recovery_proposal(&o).is_none());
        match plan_next_action(&o) {
            Action::RebuildMember { ordinal, reason } => {
                assert_eq!(ordinal, 0);
                assert!(reason.contains("epoch 1"), "{reason}");
            }
            other => panic!("expected RebuildMember, got {other:?}"),
        }
        assert!(
            o.health_problem(0)
                .unwrap()
                .contains("from before the recovery to epoch 2")
        );
        // Once demo-0 is down (being rebuilt), the empty members are added, learner first.
        let o = b.unreachable(0).build();
        assert_eq!(plan_next_action(&o), Action::AddLearner { ordinal: 2 });
    }

    /// 3 voters on rev-1 asked to roll; the leader last heard from follower 2 `millis` ago.
    fn three_with_follower_2_cut_off(millis: u64) -> Observed {
        ObservedBuilder::new(3)
            .running(3, "rev-1")
            .last_ack(2, millis)
            .build()
    }

    #[test]
    fn a_follower_cut_off_from_the_leader_blocks_the_rollout_naming_it() {
        // It answers the operator, its pod is Ready and it lags 0 entries: only the leader's
        // view shows that it is gone.
        match plan_next_action(&three_with_follower_2_cut_off(1500)) {
            Action::Blocked { reason } => {
                assert!(
                    reason.contains(
                        "demo-2 is cut off from the leader: last acknowledged 1500 ms ago"
                    ),
                    "{reason}"
                );
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
        // Heard from within the election timeout: the rollout goes ahead.
        assert!(matches!(
            plan_next_action(&three_with_follower_2_cut_off(120)),
            Action::ReplaceMember { ordinal: 1, .. }
        ));
    }

    #[test]
    fn contact_falls_back_to_raftds_healthy_flag_without_an_ack_age() {
        let o = ObservedBuilder::new(3)
            .running(3, "rev-1")
            .member(0, |m| {
                m.raft.as_mut().unwrap().acks.insert(
                    3,
                    crate::observed::LeaderAck {
                        healthy: false,
                        millis_since_ack: None,
                    },
                );
            })
            .build();
        match plan_next_action(&o) {
            Action::Blocked { reason } => assert!(
                reason.contains("demo-2 is cut off from the leader: no acknowledgement within the 300 ms election timeout"),
                "{reason}"
            ),
            other => panic!("expected Blocked, got {other:?}"),
        }
        let never = ObservedBuilder::new(3)
            .running(3, "rev-2")
            .last_ack(1, u64::MAX)
            .build();
        assert!(
            never
                .health_problem(1)
                .unwrap()
                .contains("has not acknowledged the leader in this term")
        );
    }

    #[test]
    fn five_voters_with_two_cut_off_block_and_name_both() {
        let o = ObservedBuilder::new(5)
            .running(5, "rev-1")
            .last_ack(3, 2000)
            .last_ack(4, 2500)
            .build();
        match plan_next_action(&o) {
            Action::Blocked { reason } => {
                assert!(reason.contains("demo-3 is cut off"), "{reason}");
                assert!(reason.contains("demo-4 is cut off"), "{reason}");
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
    }

    #[test]
    fn same_step_ignores_reasons_but_not_members() {
        let a = Action::ReplaceMember {
            ordinal: 1,
            reason: "demo-1 lags 3".into(),
        };
        let b = Action::ReplaceMember {
            ordinal: 1,
            reason: "demo-1 lags 4".into(),
        };
        let c = Action::ReplaceMember {
            ordinal: 2,
            reason: "demo-1 lags 3".into(),
        };
        assert!(a.same_step(&b));
        assert!(!a.same_step(&c));
        assert!(!a.same_step(&Action::wait("")));
        assert!(a.is_disruptive());
        assert!(!Action::AddLearner { ordinal: 1 }.is_disruptive());
        // A re-check after the follower was cut off plans a block, not the same step.
        let before = plan_next_action(&three_with_follower_2_cut_off(100));
        let after = plan_next_action(&three_with_follower_2_cut_off(900));
        assert!(before.is_disruptive());
        assert!(!before.same_step(&after), "{before:?} vs {after:?}");
    }

    fn in_flight(survivor: &str, id: &str) -> crate::crd::RecoveryInFlight {
        crate::crd::RecoveryInFlight {
            id: id.into(),
            survivor: survivor.into(),
            from_epoch: 1,
            to_epoch: 2,
            survivor_last_index: 100,
            highest_commit_index_seen: 120,
            lost_members: vec!["demo-2".into(), "demo-3".into(), "demo-4".into()],
            started_at: "2026-12-02T04:00:00Z".into(),
        }
    }

    #[test]
    fn a_recovery_in_flight_is_finished_with_the_same_survivor_even_if_another_now_looks_better() {
        // demo-1 was approved and ForceRecover was called; the answer was lost. Now demo-0
        // reports a higher last term, so a fresh proposal would pick demo-0.
        let mut o = majority_wiped()
            .member(0, |m| m.raft.as_mut().unwrap().last_log_term = 3)
            .status(|s| {
                s.recovery = Some(crate::crd::RecoveryStatus {
                    in_flight: Some(in_flight("demo-1", "demo-1-to-epoch-2")),
                    ..Default::default()
                })
            })
            .build();
        assert_eq!(recovery_proposal(&o).unwrap().survivor, "demo-0");
        o.recovery_approval = Some("demo-1-to-epoch-2".into());
        let finish = Action::ForceRecover {
            ordinal: 1,
            new_epoch: 2,
            plan_id: "demo-1-to-epoch-2".into(),
        };
        assert_eq!(plan_next_action(&o), finish);
        // A second approval naming the other survivor for the same epoch is refused, with the
        // reason; the recovery in flight is still the one finished.
        o.recovery_approval = Some("demo-0-to-epoch-2".into());
        assert_eq!(plan_next_action(&o), finish);
        let refused = refused_approval(&o).unwrap();
        assert!(
            refused.contains("approval demo-0-to-epoch-2 is refused: recovery demo-1-to-epoch-2 (survivor demo-1, epoch 2) is in flight"),
            "{refused}"
        );
        let described = crate::status::describe(&o, &finish);
        assert!(described.contains("resumed"), "{described}");
        assert!(described.contains(&refused), "{described}");
        // The survivor does not answer: wait for it, never pick another.
        let silent = {
            let mut silent = o.clone();
            silent.members[1].raft = None;
            silent
        };
        match plan_next_action(&silent) {
            Action::Wait { reason } => {
                assert!(
                    reason.contains("waiting for its survivor demo-1"),
                    "{reason}"
                );
                assert!(reason.contains("is refused"), "{reason}");
            }
            other => panic!("expected Wait, got {other:?}"),
        }
    }

    #[test]
    fn a_recovery_that_took_effect_is_no_longer_in_flight() {
        let o = majority_wiped()
            .status(|s| {
                s.recovery = Some(crate::crd::RecoveryStatus {
                    in_flight: Some(in_flight("demo-1", "demo-1-to-epoch-2")),
                    ..Default::default()
                })
            })
            .member(1, |m| {
                let r = m.raft.as_mut().unwrap();
                r.role = MemberRole::Leader;
                r.epoch = 2;
                r.term = 3;
                r.leader_id = Some(2);
                r.voters = vec![2];
                r.matched = [(2, 101)].into();
                r.recovery_id = Some("demo-1-to-epoch-2".into());
            })
            .build();
        assert!(o.recovery_in_flight().is_none());
        assert_eq!(o.current_recovery_id(), "demo-1-to-epoch-2");
        assert!(!matches!(plan_next_action(&o), Action::ForceRecover { .. }));
    }
}
