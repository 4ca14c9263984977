//! Membership changes, leadership transfer and snapshots the admin API asks for.
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};

use super::*;
use crate::types::{MemberNode, NodeId, Raft, TypeConfig};

impl RaftNode {
    pub(super) fn ensure_leader_for_admin(&self) -> Result<Raft, NodeError> {
        let raft = self.raft();
        if raft.is_leader() {
            Ok(raft)
        } else {
            Err(self.unavailable_error())
        }
    }

    pub(super) fn map_membership_err(
        &self,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                self.map_forward(f.leader_id, f.leader_node)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                NodeError::Refused(format!("membership change refused: {c}"))
            }
            other => NodeError::Internal(other.to_string()),
        }
    }

    /// Adds (or updates the address of) a learner. Idempotent.
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: MemberNode,
        wait: bool,
    ) -> Result<(u64, bool), NodeError> {
        if id == 0 {
            return Err(NodeError::InvalidArgument {
                field: "member.id".into(),
                reason: "0 is reserved".into(),
            });
        }
        if node.grpc_addr.is_empty() {
            return Err(NodeError::InvalidArgument {
                field: "member.grpc_addr".into(),
                reason: "must not be empty".into(),
            });
        }
        let raft = self.ensure_leader_for_admin()?;
        let metrics = raft.metrics().borrow_watched().clone();
        let m = metrics.membership_config.membership();
        if m.get_node(&id) == Some(&node) {
            return Ok((metrics.last_applied.map(|l| l.index).unwrap_or(0), false));
        }
        let resp = raft
            .add_learner(id, node, wait)
            .await
            .map_err(|e| self.map_membership_err(e))?;
        Ok((resp.log_id.index, true))
    }

    /// Promotes a learner to voter. Idempotent (a voter stays a voter).
    pub async fn promote_voter(&self, id: NodeId) -> Result<(u64, bool), NodeError> {
        let raft = self.ensure_leader_for_admin()?;
        let metrics = raft.metrics().borrow_watched().clone();
        let m = metrics.membership_config.membership();
        if m.voter_ids().any(|v| v == id) && m.get_joint_config().len() == 1 {
            return Ok((metrics.last_applied.map(|l| l.index).unwrap_or(0), false));
        }
        if m.get_node(&id).is_none() {
            return Err(NodeError::InvalidArgument {
                field: "id".into(),
                reason: format!("node {id} is not a member; add it as a learner first"),
            });
        }
        let before = *metrics.membership_config.log_id();
        let resp = raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.membership_error_after(&before, e))?;
        Ok((resp.log_id.index, true))
    }

    /// The error of a membership change: "not applied" only while the membership this node
    /// knows is the one the call started from. A change goes through a joint configuration
    /// first; when leadership is lost after that entry was proposed, the change is half done,
    /// and saying "not applied" would be false.
    fn membership_error_after(
        &self,
        before: &Option<crate::types::LogId>,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> NodeError {
        let now = *self
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .log_id();
        if now != *before {
            return NodeError::OutcomeUnknown(format!(
                "the membership change was proposed (configuration now at {}) and then interrupted: {e}; call again to finish it (a leader also finishes a joint configuration left behind)",
                now.map(|l| l.index).unwrap_or(0)
            ));
        }
        self.map_membership_err(e)
    }

    /// A joint configuration is the middle of a membership change. One left behind (its leader
    /// lost leadership between the two steps) blocks every later change, so a leader finishes
    /// it: the target is the joint configuration's last half.
    pub(super) async fn finish_joint_membership(&self) -> Result<(), NodeError> {
        let raft = self.ensure_leader_for_admin()?;
        let joint = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1;
        if !joint {
            return Ok(());
        }
        tracing::warn!(
            node = self.id,
            "finishing a joint configuration left behind"
        );
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::new()), false)
            .await
            .map(|_| ())
            .map_err(|e| self.map_membership_err(e))
    }

    /// Removes a voter or learner. Idempotent (removing a non-member is a no-op).
    pub async fn remove_member(&self, id: NodeId) -> Result<(u64, bool), NodeError> {
        let raft = self.ensure_leader_for_admin()?;
        let metrics = raft.metrics().borrow_watched().clone();
        let m = metrics.membership_config.membership();
        let applied = metrics.last_applied.map(|l| l.index).unwrap_or(0);
        if m.get_node(&id).is_none() {
            return Ok((applied, false));
        }
        let is_voter = m.voter_ids().any(|v| v == id);
        if is_voter {
            let voters: BTreeSet<NodeId> = m.voter_ids().collect();
            if voters.len() == 1 {
                return Err(NodeError::Refused(format!(
                    "node {id} is the last voter; it cannot be removed"
                )));
            }
            let before = *metrics.membership_config.log_id();
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.membership_error_after(&before, e))?;
        }
        let before = *raft.metrics().borrow_watched().membership_config.log_id();
        let resp = raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.membership_error_after(&before, e))?;
        Ok((resp.log_id.index, true))
    }

    /// Transfers leadership to `to` and waits (up to 3 s) until it leads. Idempotent.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<NodeId, NodeError> {
        let raft = self.raft();
        let metrics = raft.metrics().borrow_watched().clone();
        let m = metrics.membership_config.membership();
        if !m.voter_ids().any(|v| v == to) {
            return Err(NodeError::InvalidArgument {
                field: "to".into(),
                reason: format!("node {to} is not a voter"),
            });
        }
        if metrics.current_leader == Some(to) {
            return Ok(to);
        }
        if !raft.is_leader() {
            return Err(self.unavailable_error());
        }
        // The lease ends before the target hears of the transfer: it campaigns with
        // `leadership_transfer`, which voters grant while still holding this leader's lease.
        self.mark_transfer_started(metrics.current_term);
        raft.trigger().transfer_leader(to).await.map_err(raft_err)?;
        let waited = raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(|m| m.current_leader == Some(to), "leader transferred")
            .await;
        match waited {
            Ok(_) => Ok(to),
            Err(e) => Err(NodeError::Internal(format!(
                "leadership did not move to node {to}: {e}"
            ))),
        }
    }

    /// Builds a snapshot now and returns its last included index.
    pub async fn snapshot_now(&self) -> Result<u64, NodeError> {
        let raft = self.raft();
        let applied = raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        raft.trigger().snapshot().await.map_err(raft_err)?;
        let m = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.as_ref().map(|s| s.index).unwrap_or(0) >= applied,
                "snapshot built",
            )
            .await
            .map_err(raft_err)?;
        Ok(m.snapshot.map(|s| s.index).unwrap_or(0))
    }
}
