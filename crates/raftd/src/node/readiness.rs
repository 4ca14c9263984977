//! Readiness ("can this node serve a client now?", what `/readyz` and the client Service route
//! by) and draining for a planned stop.
//!
//! Ready means: a leader whose lease holds, or a follower that had entries accepted from its
//! current leader within the reachability window and has applied to within
//! `--ready-max-lag-entries` of the commit index that leader sent. A partitioned follower turns
//! unready once the window passes; a restarted one turns ready only after its leader reached it
//! and it caught up. A draining node is never ready.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::*;

/// The last successful AppendEntries from a leader: who, the commit index it carried, and when.
#[derive(Debug, Clone, Copy)]
pub struct LeaderContact {
    pub leader: NodeId,
    pub commit_index: u64,
    pub at: Instant,
}

/// Whether the node can serve now, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    pub fn reason(&self) -> &str {
        match self {
            Readiness::Ready => "",
            Readiness::NotReady(r) => r,
        }
    }
}

/// The pure readiness rule, so it can be tested without a cluster.
pub struct ReadinessInputs {
    pub draining: bool,
    pub voters: usize,
    pub state: ServerState,
    pub current_leader: Option<NodeId>,
    pub lease: LeaseState,
    pub applied_index: u64,
    pub contact: Option<LeaderContact>,
}

pub fn readiness(i: &ReadinessInputs, timing: &Timing, max_lag: u64) -> Readiness {
    if i.draining {
        return Readiness::NotReady("draining for a planned stop".into());
    }
    if i.voters == 0 {
        return Readiness::NotReady("not initialized".into());
    }
    if i.state == ServerState::Leader {
        return if i.lease.holds() {
            Readiness::Ready
        } else {
            Readiness::NotReady(format!("leader, but {}", i.lease.describe()))
        };
    }
    let Some(leader) = i.current_leader else {
        return Readiness::NotReady("no leader known".into());
    };
    let Some(contact) = i.contact.filter(|c| c.leader == leader) else {
        return Readiness::NotReady(format!("leader {leader} has not reached this node yet"));
    };
    let since = contact.at.elapsed();
    if since >= timing.reachability_window {
        return Readiness::NotReady(format!(
            "leader {leader} last reached this node {} ms ago (window {} ms)",
            since.as_millis(),
            timing.reachability_window.as_millis()
        ));
    }
    if i.applied_index.saturating_add(max_lag) < contact.commit_index {
        return Readiness::NotReady(format!(
            "catching up: applied {} of {} committed by leader {leader}",
            i.applied_index, contact.commit_index
        ));
    }
    Readiness::Ready
}

impl RaftNode {
    /// Records a successful AppendEntries from `leader` carrying its commit index.
    pub fn saw_leader_commit(&self, leader: NodeId, commit_index: u64) {
        let contact = LeaderContact {
            leader,
            commit_index,
            at: Instant::now(),
        };
        match self.leader_contact.lock() {
            Ok(mut c) => *c = Some(contact),
            Err(p) => *p.into_inner() = Some(contact),
        }
    }

    /// Whether this node can serve a client now, and if not, why.
    pub fn readiness(&self) -> Readiness {
        let core = self.core();
        let lease = self.lease_state(&core);
        let contact = self.leader_contact.lock().ok().and_then(|c| *c);
        let metrics = core.raft.metrics();
        let m = metrics.borrow_watched();
        let inputs = ReadinessInputs {
            draining: self.is_draining(),
            voters: m.membership_config.membership().voter_ids().count(),
            state: m.state,
            current_leader: m.current_leader,
            lease,
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            contact,
        };
        readiness(&inputs, &self.timing, self.args.ready_max_lag_entries)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The answer to a client request that arrives while draining: not applied, and where to go.
    pub(super) fn draining_error(&self) -> NodeError {
        let m = self.raft().metrics().borrow_watched().clone();
        let leader = m.current_leader.filter(|l| *l != self.id);
        let leader_addr = leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.grpc_addr.clone())
        });
        NodeError::Draining {
            leader_id: leader,
            leader_addr,
        }
    }

    /// Counts a client request in flight for the drain to wait on; `None` while draining.
    pub fn begin_request(&self) -> Option<InFlight<'_>> {
        if self.is_draining() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // A drain that started between the check and the count waits for this request.
        Some(InFlight(self))
    }

    /// Drains for a planned stop: turns unready and refuses new client requests at once, hands
    /// leadership to the most caught-up voter it reaches if it leads, and waits (up to
    /// `timeout`) for the requests it already took to be answered. Returns how many were still
    /// running when it gave up (0 when all were answered).
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let started = Instant::now();
        tracing::info!(node = self.id, "draining for a planned stop");
        if self.raft().is_leader()
            && let Some(to) = self.best_transfer_target()
        {
            match self.transfer_leader(to).await {
                Ok(_) => tracing::info!(node = self.id, to, "drain: leadership handed over"),
                Err(e) => {
                    tracing::warn!(node = self.id, to, error = %e, "drain: leadership transfer failed")
                }
            }
        }
        loop {
            let running = self.in_flight.load(Ordering::SeqCst);
            if running == 0 {
                tracing::info!(
                    node = self.id,
                    took_ms = started.elapsed().as_millis() as u64,
                    "drained"
                );
                return 0;
            }
            if started.elapsed() >= timeout {
                tracing::warn!(
                    node = self.id,
                    running,
                    "drain timed out with requests running"
                );
                return running;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The voter other than this node with the highest matched log index that answered within
    /// the reachability window (leader only).
    fn best_transfer_target(&self) -> Option<NodeId> {
        let m = self.raft().metrics().borrow_watched().clone();
        let replication = m.replication.as_ref()?;
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.id && self.tracker.reachable(*v, self.reachability_window()))
            .max_by_key(|v| {
                replication
                    .get(v)
                    .cloned()
                    .flatten()
                    .map(|l| l.index)
                    .unwrap_or(0)
            })
    }
}

/// A client request being served; the drain waits until none is left.
pub struct InFlight<'a>(&'a RaftNode);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::defaults_for_tests()
    }

    fn follower(contact: Option<LeaderContact>) -> ReadinessInputs {
        ReadinessInputs {
            draining: false,
            voters: 3,
            state: ServerState::Follower,
            current_leader: Some(1),
            lease: LeaseState::NotLeader,
            applied_index: 100,
            contact,
        }
    }

    fn contact(leader: NodeId, commit_index: u64, ago: Duration) -> Option<LeaderContact> {
        Some(LeaderContact {
            leader,
            commit_index,
            at: Instant::now() - ago,
        })
    }

    #[test]
    fn a_follower_its_leader_reached_recently_and_caught_up_is_ready() {
        let i = follower(contact(1, 100, Duration::from_millis(20)));
        assert_eq!(readiness(&i, &timing(), 1000), Readiness::Ready);
    }

    #[test]
    fn a_follower_cut_off_from_its_leader_turns_unready_after_the_window() {
        let i = follower(contact(1, 100, Duration::from_millis(700)));
        let r = readiness(&i, &timing(), 1000);
        assert!(r.reason().contains("last reached this node"), "{r:?}");
    }

    #[test]
    fn a_restarted_follower_waits_for_its_leader_and_for_catching_up() {
        let r = readiness(&follower(None), &timing(), 1000);
        assert!(r.reason().contains("has not reached"), "{r:?}");
        // Contact from an earlier leader does not count for the current one.
        let r = readiness(&follower(contact(2, 100, Duration::ZERO)), &timing(), 1000);
        assert!(r.reason().contains("has not reached"), "{r:?}");
        let r = readiness(&follower(contact(1, 5000, Duration::ZERO)), &timing(), 1000);
        assert!(
            r.reason().contains("catching up: applied 100 of 5000"),
            "{r:?}"
        );
    }

    #[test]
    fn a_leader_is_ready_only_while_its_lease_holds() {
        let mut i = follower(None);
        i.state = ServerState::Leader;
        i.lease = LeaseState::Holds;
        assert!(readiness(&i, &timing(), 1000).is_ready());
        i.lease = LeaseState::Transferring;
        let r = readiness(&i, &timing(), 1000);
        assert!(r.reason().contains("handing leadership over"), "{r:?}");
    }

    #[test]
    fn draining_wins_over_everything() {
        let mut i = follower(contact(1, 100, Duration::ZERO));
        i.draining = true;
        assert!(readiness(&i, &timing(), 1000).reason().contains("draining"));
    }
}
