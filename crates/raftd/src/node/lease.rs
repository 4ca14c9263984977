//! The one definition of time-based safety: every window derived from the flags, and whether
//! this node's leader lease holds. Reads, `/status`, `/readyz` and the watchdog all ask here.
//!
//! The rule (docs/raftd.md, "Leader lease"): a leader serves a read from its local state without
//! a quorum round trip only while all of these hold:
//! 1. it is leader, and it is not handing leadership over (a transfer makes the target campaign
//!    with `leadership_transfer`, which voters grant even while they still hold this leader's
//!    lease, so the lease means nothing from the moment a transfer starts);
//! 2. an entry of its own term is applied (so is everything committed before its term);
//! 3. a quorum acknowledged it within `lease - max_clock_drift`, measured from when the
//!    acknowledged request was sent.
//!
//! Voters keep their side of the bargain: a follower grants no vote while it heard from a leader
//! within the lease (openraft's vote lease), and a voter that restarted, whose in-memory vote
//! lease is gone, grants no vote until one lease has passed since it started
//! ([`Timing::vote_hold_after_start`]).
use std::time::Duration;

use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::{Core, RaftNode};
use crate::config::Args;

/// Every time window raftd's safety and availability decisions use, built once from the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The leader lease: `--election-timeout-max-ms`. A follower that heard from a leader within
    /// it grants no vote to anyone else.
    pub lease: Duration,
    /// How old a quorum ack may be for a lease read: the lease minus `--max-clock-drift-ms`.
    pub lease_read_window: Duration,
    /// A peer answered within this window counts as reachable (two leases).
    pub reachability_window: Duration,
    /// A leader whose lease lapsed and whose majority stays unreachable steps down after this.
    pub step_down_after: Duration,
    /// A voter grants no vote within this long after its Raft instance started (one lease).
    pub vote_hold_after_start: Duration,
}

impl Timing {
    pub fn from_args(args: &Args) -> Timing {
        let lease = Duration::from_millis(args.election_timeout_max_ms);
        Timing {
            lease,
            lease_read_window: lease.saturating_sub(Duration::from_millis(args.max_clock_drift_ms)),
            reachability_window: lease * 2,
            step_down_after: lease + Duration::from_millis(args.election_timeout_min_ms),
            vote_hold_after_start: lease,
        }
    }

    /// The flags' defaults (300 ms lease, 10 ms drift, 150 ms minimum election timeout).
    #[cfg(test)]
    pub(crate) fn defaults_for_tests() -> Timing {
        Timing {
            lease: Duration::from_millis(300),
            lease_read_window: Duration::from_millis(290),
            reachability_window: Duration::from_millis(600),
            step_down_after: Duration::from_millis(450),
            vote_hold_after_start: Duration::from_millis(300),
        }
    }

    /// Whether a leader whose last quorum ack is `since_quorum_ack` old has lost its lease.
    pub fn ack_lapsed(&self, since_quorum_ack: Option<Duration>) -> bool {
        since_quorum_ack.is_none_or(|d| d >= self.lease_read_window)
    }
}

/// Why a lease does not hold (or that it does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease holds: local reads are linearizable.
    Holds,
    NotLeader,
    /// This leader started handing leadership over in its current term.
    Transferring,
    /// No entry of the current term is applied yet (a new leader).
    TermNotApplied,
    /// The last quorum ack is older than the lease read window (or there was none).
    Lapsed,
}

impl LeaseState {
    pub fn holds(self) -> bool {
        self == LeaseState::Holds
    }

    pub fn describe(self) -> &'static str {
        match self {
            LeaseState::Holds => "lease holds",
            LeaseState::NotLeader => "not leader",
            LeaseState::Transferring => "handing leadership over",
            LeaseState::TermNotApplied => "no entry of this term applied yet",
            LeaseState::Lapsed => "no quorum ack within the lease",
        }
    }
}

/// The pure lease rule over what openraft's metrics say, so it can be tested without a cluster.
pub struct LeaseInputs {
    pub state: ServerState,
    pub is_current_leader: bool,
    pub current_term: u64,
    /// The term of the last applied entry, if any.
    pub applied_term: Option<u64>,
    pub voters: usize,
    pub since_quorum_ack: Option<Duration>,
    /// The term in which this node last started a leadership transfer (0: never).
    pub transfer_term: u64,
}

pub fn lease_state(i: &LeaseInputs, timing: &Timing) -> LeaseState {
    if i.state != ServerState::Leader || !i.is_current_leader {
        return LeaseState::NotLeader;
    }
    if i.transfer_term != 0 && i.transfer_term == i.current_term {
        return LeaseState::Transferring;
    }
    if i.applied_term != Some(i.current_term) {
        return LeaseState::TermNotApplied;
    }
    // A single voter is its own quorum: nobody else can be elected.
    if i.voters <= 1 {
        return LeaseState::Holds;
    }
    if timing.ack_lapsed(i.since_quorum_ack) {
        LeaseState::Lapsed
    } else {
        LeaseState::Holds
    }
}

impl RaftNode {
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Whether this node's leader lease holds now, and if not, why.
    pub fn lease_state(&self, core: &Core) -> LeaseState {
        let metrics = core.raft.metrics();
        let m = metrics.borrow_watched();
        let inputs = LeaseInputs {
            state: m.state,
            is_current_leader: m.current_leader == Some(self.id),
            current_term: m.current_term,
            applied_term: m.last_applied.as_ref().map(|a| a.leader_id.term),
            voters: m.membership_config.membership().voter_ids().count(),
            since_quorum_ack: m.last_quorum_acked.as_ref().map(|t| t.elapsed()),
            transfer_term: self.transfer_term.load(std::sync::atomic::Ordering::SeqCst),
        };
        lease_state(&inputs, &self.timing)
    }

    /// Marks the current term as handed over: no lease read is served in it from now on.
    pub(super) fn mark_transfer_started(&self, term: u64) {
        self.transfer_term
            .fetch_max(term, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this node's Raft instance started less than one lease ago: it grants no vote yet.
    pub fn within_vote_hold(&self) -> Option<Duration> {
        let age = self.core().started.elapsed();
        (age < self.timing.vote_hold_after_start).then_some(age)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::defaults_for_tests()
    }

    fn leader() -> LeaseInputs {
        LeaseInputs {
            state: ServerState::Leader,
            is_current_leader: true,
            current_term: 5,
            applied_term: Some(5),
            voters: 3,
            since_quorum_ack: Some(Duration::from_millis(10)),
            transfer_term: 0,
        }
    }

    #[test]
    fn a_fresh_quorum_ack_of_a_settled_leader_holds() {
        assert_eq!(lease_state(&leader(), &timing()), LeaseState::Holds);
    }

    #[test]
    fn a_transfer_in_this_term_ends_the_lease_at_once() {
        let mut i = leader();
        i.transfer_term = 5;
        assert_eq!(lease_state(&i, &timing()), LeaseState::Transferring);
        // A transfer of an earlier term says nothing about this one.
        i.transfer_term = 4;
        assert_eq!(lease_state(&i, &timing()), LeaseState::Holds);
    }

    #[test]
    fn an_ack_at_or_past_lease_minus_drift_lapses() {
        let mut i = leader();
        i.since_quorum_ack = Some(Duration::from_millis(290));
        assert_eq!(lease_state(&i, &timing()), LeaseState::Lapsed);
        i.since_quorum_ack = None;
        assert_eq!(lease_state(&i, &timing()), LeaseState::Lapsed);
    }

    #[test]
    fn a_new_leader_without_an_applied_entry_of_its_term_does_not_hold() {
        let mut i = leader();
        i.applied_term = Some(4);
        assert_eq!(lease_state(&i, &timing()), LeaseState::TermNotApplied);
    }

    #[test]
    fn followers_and_stale_leaders_do_not_hold() {
        let mut i = leader();
        i.state = ServerState::Follower;
        assert_eq!(lease_state(&i, &timing()), LeaseState::NotLeader);
        let mut i = leader();
        i.is_current_leader = false;
        assert_eq!(lease_state(&i, &timing()), LeaseState::NotLeader);
    }

    #[test]
    fn a_single_voter_holds_without_acks() {
        let mut i = leader();
        i.voters = 1;
        i.since_quorum_ack = None;
        assert_eq!(lease_state(&i, &timing()), LeaseState::Holds);
    }

    #[test]
    fn timing_follows_the_flags() {
        use clap::Parser;
        let args = Args::parse_from([
            "raftd",
            "--node-id=1",
            "--data-dir=/tmp/x",
            "--election-timeout-min-ms=150",
            "--election-timeout-max-ms=300",
            "--max-clock-drift-ms=10",
            "--heartbeat-ms=50",
        ]);
        assert_eq!(Timing::from_args(&args), timing());
    }
}
