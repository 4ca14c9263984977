//! Who can serve: reachability of voters, the leader hint, and the "not applied" errors that say why not.
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::*;
use crate::types::{MemberNode, NodeId};

impl RaftNode {
    pub(super) fn reachability_window(&self) -> Duration {
        self.timing.reachability_window
    }

    /// (reachable voters including self, voters, quorum size)
    pub fn reachability(&self) -> (usize, usize, usize) {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let window = self.reachability_window();
        let reachable = voters
            .iter()
            .filter(|v| **v == self.id || self.tracker.reachable(**v, window))
            .count();
        (reachable, voters.len(), voters.len() / 2 + 1)
    }

    /// The leader's gRPC address when this node is a follower that knows its leader, so a client
    /// request can be forwarded there; `None` when this node leads or knows no leader.
    /// `None` also when the leader it remembers has not been heard from within the reachability
    /// window: it may be gone, and a forward would end "outcome unknown" where the truth is
    /// "not applied"; the request then gets this node's own not-leader answer.
    pub fn leader_addr_if_follower(&self) -> Option<String> {
        let raft = self.raft();
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader.filter(|l| *l != self.id)?;
        if !self.tracker.reachable(leader, self.reachability_window()) {
            return None;
        }
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.grpc_addr.clone())
    }

    /// The error for "this node cannot serve": not leader with a hint, no quorum, or no leader.
    pub(super) fn unavailable_error(&self) -> NodeError {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let (reachable, voters, needed) = self.reachability();
        if voters == 0 {
            return NodeError::Uninitialized(self.id);
        }
        // A leader not heard from within the reachability window may be gone: naming it would
        // send the client to a dead address, where its write ends "outcome unknown".
        if let Some(leader) = metrics.current_leader
            && leader != self.id
            && self.tracker.reachable(leader, self.reachability_window())
        {
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.grpc_addr.clone());
            return NodeError::NotLeader {
                leader_id: Some(leader),
                leader_addr: addr,
            };
        }
        if reachable < needed {
            NodeError::NoQuorum {
                reachable,
                voters,
                needed,
            }
        } else {
            NodeError::NoLeader { reachable, voters }
        }
    }

    pub(super) fn map_forward(
        &self,
        leader_id: Option<NodeId>,
        leader_node: Option<MemberNode>,
    ) -> NodeError {
        match leader_id {
            Some(id) if id != self.id && self.tracker.reachable(id, self.reachability_window()) => {
                NodeError::NotLeader {
                    leader_id: Some(id),
                    leader_addr: leader_node.map(|n| n.grpc_addr),
                }
            }
            _ => self.unavailable_error(),
        }
    }
}
