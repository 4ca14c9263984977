//! The read path: lease reads, ReadIndex reads and stale reads.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{LinearizableReadError, RaftError};
use openraft::{LinearizerOption, ReadPolicy};

use super::*;
use crate::config::ReadMode;
use crate::store::KvState;

impl RaftNode {
    /// Makes a read at `level` safe; returns how it was served. Read the state machine after.
    pub async fn linearize(
        &self,
        level: ReadLevel,
        deadline: Duration,
    ) -> Result<(ServedBy, Arc<KvState>), NodeError> {
        let Some(_in_flight) = self.begin_request() else {
            self.counters.reads_failed.fetch_add(1, Ordering::Relaxed);
            return Err(self.draining_error());
        };
        let res = self.linearize_inner(level, deadline).await;
        let c = match &res {
            Ok((ServedBy::Lease, _)) => &self.counters.reads_lease,
            Ok((ServedBy::ReadIndex, _)) => &self.counters.reads_read_index,
            Ok((ServedBy::Stale, _)) => &self.counters.reads_stale,
            Err(_) => &self.counters.reads_failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        res
    }

    pub(super) async fn linearize_inner(
        &self,
        level: ReadLevel,
        deadline: Duration,
    ) -> Result<(ServedBy, Arc<KvState>), NodeError> {
        let core = self.core();
        let level = match level {
            ReadLevel::Linearizable => match self.args.read_mode {
                ReadMode::LeaseRead => ReadLevel::Lease,
                ReadMode::ReadIndex => ReadLevel::ReadIndex,
            },
            other => other,
        };
        if level == ReadLevel::Stale {
            return Ok((ServedBy::Stale, core.kv.clone()));
        }
        if !core.raft.is_leader() || *self.quorum_lost.borrow() {
            return Err(self.unavailable_error());
        }
        let deadline = deadline.min(MAX_WRITE_WAIT);
        let lease = self.lease_state(&core);
        if level == ReadLevel::Lease
            && matches!(
                lease,
                LeaseState::Holds | LeaseState::Lapsed | LeaseState::TermNotApplied
            )
        {
            if lease.holds() {
                return Ok((ServedBy::Lease, core.kv.clone()));
            }
            // A lease read never waits for a new quorum ack: if the last one is too old, fall
            // back to ReadIndex. The linearizer's read log id includes this term's first
            // (blank) entry, so a new leader serves nothing until that entry is committed and
            // applied.
            let opt = LinearizerOption::new(Some(self.timing.lease_read_window), false)
                .with_wait_timeout(Duration::ZERO);
            match core.raft.get_read_linearizer(opt).await {
                Ok(lin) => {
                    return match lin.try_await_ready(&core.raft, Some(deadline)).await {
                        Ok(Ok(_)) => Ok((ServedBy::Lease, core.kv.clone())),
                        Ok(Err(_)) => Err(self.unavailable_error()),
                        Err(fatal) => Err(NodeError::Internal(fatal.to_string())),
                    };
                }
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    return Err(self.map_forward(f.leader_id, f.leader_node));
                }
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                    tracing::debug!("lease not valid; falling back to ReadIndex");
                }
                Err(RaftError::Fatal(e)) => return Err(NodeError::Internal(e.to_string())),
            }
        }
        let read = async {
            match core.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
                Ok(lin) => match lin.try_await_ready(&core.raft, Some(deadline)).await {
                    Ok(Ok(_)) => Ok((ServedBy::ReadIndex, core.kv.clone())),
                    Ok(Err(_)) => Err(self.unavailable_error()),
                    Err(fatal) => Err(NodeError::Internal(fatal.to_string())),
                },
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    Err(self.map_forward(f.leader_id, f.leader_node))
                }
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                    Err(self.unavailable_error())
                }
                Err(RaftError::Fatal(e)) => Err(NodeError::Internal(e.to_string())),
            }
        };
        match tokio::time::timeout(deadline, read).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable_error()),
        }
    }
}
