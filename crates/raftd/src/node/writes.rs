//! The write path: validate, propose, and answer honestly whether the write applied.
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};

use super::*;
use crate::types::{Command, CommandResult};

impl RaftNode {
    /// Validates and replicates a command; returns once applied on this (leader) node.
    pub async fn write(
        &self,
        cmd: Command,
        deadline: Duration,
    ) -> Result<CommandResult, NodeError> {
        let Some(_in_flight) = self.begin_request() else {
            self.counters
                .writes_not_applied
                .fetch_add(1, Ordering::Relaxed);
            return Err(self.draining_error());
        };
        // Right after a recovery the identity epoch is raised before SetEpoch commits: grant no
        // lock until it has, or a token could fall below one the lost majority issued.
        if matches!(cmd, Command::AcquireLock { .. })
            && self.state_machine_epoch() < self.cluster_identity().epoch
        {
            self.counters
                .writes_not_applied
                .fetch_add(1, Ordering::Relaxed);
            return Err(NodeError::Refused(format!(
                "not applied: epoch {} is being replicated after a recovery; retry the acquire",
                self.cluster_identity().epoch
            )));
        }
        let res = self.write_inner(cmd, deadline).await;
        let c = match &res {
            Ok(_) => &self.counters.writes_ok,
            Err(NodeError::OutcomeUnknown(_)) => &self.counters.writes_unknown,
            Err(_) => &self.counters.writes_not_applied,
        };
        c.fetch_add(1, Ordering::Relaxed);
        res
    }

    pub(super) async fn write_inner(
        &self,
        cmd: Command,
        deadline: Duration,
    ) -> Result<CommandResult, NodeError> {
        validate_command(&cmd)?;
        let raft = self.raft();
        if !raft.is_leader() {
            return Err(self.unavailable_error());
        }
        let mut lost = self.quorum_lost.subscribe();
        if *lost.borrow() {
            return Err(self.unavailable_error());
        }
        let deadline = deadline.min(MAX_WRITE_WAIT);
        let write = raft.client_write(cmd);
        tokio::pin!(write);
        let lost_fut = async {
            loop {
                if lost.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if *lost.borrow() {
                    return;
                }
            }
        };
        tokio::select! {
            res = &mut write => match res {
                Ok(resp) => Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(self.map_forward(f.leader_id, f.leader_node)),
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => Err(NodeError::OutcomeUnknown(format!(
                    "the proposed entry was discarded when this node adopted another leader's log{}; it may still have committed elsewhere",
                    leader_hint(&f.leader_id, &f.leader_node.map(|n| n.grpc_addr))
                ))),
                Err(RaftError::APIError(e)) => Err(NodeError::Internal(e.to_string())),
                Err(RaftError::Fatal(e)) => Err(NodeError::OutcomeUnknown(format!("raft stopped after the write was proposed: {e}"))),
            },
            _ = lost_fut => {
                let (reachable, voters, needed) = self.reachability();
                Err(NodeError::OutcomeUnknown(format!(
                    "no quorum: {reachable} of {voters} voters reachable, {needed} needed; the write was proposed before quorum was lost and may still commit"
                )))
            }
            _ = tokio::time::sleep(deadline) => Err(NodeError::OutcomeUnknown(format!(
                "not committed within {deadline:?} after being proposed"
            ))),
        }
    }
}
