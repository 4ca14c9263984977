//! A member's cluster identity: bootstrap, admission of peers, Join, forced recovery and epochs.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::RaftError;

use super::*;
use crate::config::JoinMode;
use crate::store::{self, ClusterIdentity};
use crate::types::{Command, MemberNode, NodeId};

impl RaftNode {
    pub fn cluster_identity(&self) -> ClusterIdentity {
        let w = self.identity.read().map(|w| w.clone()).unwrap_or_default();
        ClusterIdentity {
            cluster_id: w.cluster_id,
            epoch: w.epoch,
            recovery_id: w.recovery_id,
        }
    }

    /// Checks a decoded peer RPC's cluster identity (id, epoch and recovery id).
    ///
    /// A node with no identity yet (join mode `auto`) adopts the sender's only when the message
    /// comes from a leader (`from_leader`: entries or a snapshot, never a vote request), the
    /// sender's cluster id is the one this node was configured with (`--cluster-id`, if any),
    /// and the sender is one of `--initial-cluster` (if given). One stray RPC must not pin a
    /// foreign cluster on an empty node.
    pub fn admit_peer(
        &self,
        from: NodeId,
        sender: &ClusterIdentity,
        from_leader: bool,
    ) -> Result<(), NodeError> {
        let mine = self.cluster_identity();
        if mine.cluster_id.is_empty() && self.args.join_mode == JoinMode::Explicit {
            return Err(self.refuse(format!(
                "node {} has no data and no cluster identity (a new member, or its data directory was wiped); \
                 it takes part only after an admin Join names its cluster, so it refuses node {from} of cluster {:?}",
                self.id, sender.cluster_id
            )));
        }
        if mine.cluster_id.is_empty() {
            self.check_adoptable(from, sender, from_leader)?;
            let adopted = ClusterIdentity {
                cluster_id: sender.cluster_id.clone(),
                epoch: sender.epoch.max(1),
                recovery_id: sender.recovery_id.clone(),
            };
            self.set_identity(&adopted)?;
            tracing::info!(
                cluster_id = %adopted.cluster_id,
                epoch = adopted.epoch,
                from,
                "joined cluster: adopted its identity"
            );
            self.tracker.mark_ok(from);
            return Ok(());
        }
        if !mine.same_incarnation(sender) {
            return Err(self.refuse(format!(
                "cluster id mismatch: node {} belongs to cluster {:?} epoch {}{}, but node {from} sent cluster {:?} epoch {}{}",
                self.id,
                mine.cluster_id,
                mine.epoch,
                recovery_suffix(&mine.recovery_id),
                sender.cluster_id,
                sender.epoch,
                recovery_suffix(&sender.recovery_id),
            )));
        }
        self.tracker.mark_ok(from);
        Ok(())
    }

    /// Whether an empty node in join mode `auto` may adopt `sender`'s identity.
    fn check_adoptable(
        &self,
        from: NodeId,
        sender: &ClusterIdentity,
        from_leader: bool,
    ) -> Result<(), NodeError> {
        if sender.cluster_id.is_empty() {
            return Err(self.refuse(format!(
                "peer RPC from node {from} carries no cluster id and node {} has none either",
                self.id
            )));
        }
        if !from_leader {
            return Err(self.refuse(format!(
                "node {} has no cluster identity yet; it adopts one only from a leader's entries, not from a vote request of node {from}",
                self.id
            )));
        }
        if let Some(configured) = self.args.cluster_id.as_deref().filter(|c| !c.is_empty())
            && configured != sender.cluster_id
        {
            return Err(self.refuse(format!(
                "node {} is configured for cluster {configured:?}; refusing node {from} of cluster {:?}",
                self.id, sender.cluster_id
            )));
        }
        if let Some(ic) = self
            .args
            .initial_cluster
            .as_deref()
            .filter(|c| !c.is_empty())
        {
            let members = crate::config::parse_initial_cluster(ic).map_err(NodeError::Internal)?;
            if !members.iter().any(|m| m.id == from) {
                return Err(self.refuse(format!(
                    "node {} has no cluster identity yet and node {from} is not in its --initial-cluster; refusing to adopt cluster {:?}",
                    self.id, sender.cluster_id
                )));
            }
        }
        Ok(())
    }

    /// Persists this node's cluster identity (fsynced) and puts it on the wire.
    pub(super) fn set_identity(&self, id: &ClusterIdentity) -> Result<(), NodeError> {
        store::write_identity(&self.db, id).map_err(raft_err)?;
        if let Ok(mut w) = self.identity.write() {
            w.cluster_id = id.cluster_id.clone();
            w.epoch = id.epoch;
            w.recovery_id = id.recovery_id.clone();
        }
        Ok(())
    }

    /// Counts and remembers a refused peer RPC; the status shows the last one.
    pub(super) fn refuse(&self, reason: String) -> NodeError {
        self.counters.peer_refusals.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_refusal.lock() {
            let repeated = last.as_ref().is_some_and(|(_, r)| *r == reason);
            if !repeated {
                tracing::warn!(node = self.id, %reason, "peer RPC refused");
            }
            *last = Some((Instant::now(), reason.clone()));
        }
        NodeError::Refused(reason)
    }

    /// The last refused peer RPC within the past `window`, if any.
    pub fn recent_refusal(&self, window: Duration) -> Option<String> {
        let last = self.last_refusal.lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < window)
            .map(|(_, r)| r.clone())
    }

    /// The term of the last entry in the durable log (0 when empty or unreadable).
    pub fn last_durable_log_term(&self) -> u64 {
        store::last_durable_log_id(&self.db)
            .ok()
            .flatten()
            .map(|l| l.leader_id.term)
            .unwrap_or(0)
    }

    /// True when this node has no identity and waits for an admin Join.
    pub fn awaiting_join(&self) -> bool {
        self.args.join_mode == JoinMode::Explicit && self.cluster_identity().cluster_id.is_empty()
    }

    /// Admits this node into `cluster_id` at `epoch` so a leader may add it as a learner.
    /// Idempotent. Refused when the node already holds Raft state of another cluster or of an
    /// older epoch (it was cut off by a recovery): such data must be deleted, not merged.
    pub async fn join(&self, target: &ClusterIdentity) -> Result<bool, NodeError> {
        let (cluster_id, epoch) = (target.cluster_id.as_str(), target.epoch);
        if cluster_id.is_empty() {
            return Err(NodeError::InvalidArgument {
                field: "cluster_id".into(),
                reason: "must not be empty".into(),
            });
        }
        if epoch == 0 {
            return Err(NodeError::InvalidArgument {
                field: "epoch".into(),
                reason: "epochs start at 1".into(),
            });
        }
        if epoch > 1 && target.recovery_id.is_empty() {
            return Err(NodeError::InvalidArgument {
                field: "recovery_id".into(),
                reason: format!(
                    "epoch {epoch} was created by a recovery: name that recovery's id, so the node cannot join another recovery of the same epoch"
                ),
            });
        }
        let mine = self.cluster_identity();
        if mine.same_incarnation(target) {
            return Ok(true);
        }
        let has_state = self.raft().is_initialized().await.map_err(raft_err)?;
        if !mine.cluster_id.is_empty() && mine.cluster_id != cluster_id {
            return Err(NodeError::Refused(format!(
                "node {} belongs to cluster {:?}; refusing to join {cluster_id:?}",
                self.id, mine.cluster_id
            )));
        }
        if has_state {
            return Err(NodeError::Refused(format!(
                "node {} holds Raft state of cluster {:?} epoch {}{}; it cannot join epoch {epoch}{}: delete its data directory to rebuild it",
                self.id,
                mine.cluster_id,
                mine.epoch,
                recovery_suffix(&mine.recovery_id),
                recovery_suffix(&target.recovery_id)
            )));
        }
        self.set_identity(target)?;
        tracing::info!(
            node = self.id,
            cluster_id,
            epoch,
            "joined: waiting to be added as a learner"
        );
        Ok(false)
    }

    /// Disaster recovery after the loss of a majority: makes this node the only voter of its
    /// cluster and moves the cluster to `new_epoch` under `recovery_id`, so members of the old
    /// epoch, and of any other recovery to the same epoch, are refused.
    ///
    /// It records the new identity (fsynced) first, stops openraft, appends a membership entry
    /// `{self}` after the last durable entry, and restarts; a single voter elects itself and
    /// commits the entry. Entries the lost majority committed after this node's last index are
    /// gone; the result names that index so the caller can record it.
    ///
    /// Idempotent for the same `new_epoch` and `recovery_id`, also after a crash part-way: the
    /// outcome is stored when done and returned again. Refused while this node hears a leader
    /// or a quorum of voters, unless `even_if_quorum_answers`.
    pub async fn force_recover(
        &self,
        cluster_id: &str,
        new_epoch: u64,
        recovery_id: &str,
        even_if_quorum_answers: bool,
    ) -> Result<RecoveryOutcome, NodeError> {
        if recovery_id.is_empty() {
            return Err(NodeError::InvalidArgument {
                field: "recovery_id".into(),
                reason: "must not be empty: name the recovery (the operator uses its approved plan's id), so a second recovery to the same epoch cannot fork the cluster".into(),
            });
        }
        let mine = self.cluster_identity();
        if cluster_id.is_empty() || mine.cluster_id != cluster_id {
            return Err(NodeError::Refused(format!(
                "node {} belongs to cluster {:?}, not {cluster_id:?}; refusing to recover it",
                self.id, mine.cluster_id
            )));
        }
        let _guard = self.rebuild_lock.lock().await;
        let same_recovery = mine.epoch == new_epoch && mine.recovery_id == recovery_id;
        if same_recovery
            && let Some(done) = store::read_recovery_outcome(&self.db).map_err(raft_err)?
            && done.epoch == new_epoch
        {
            drop(_guard);
            self.replicate_epoch(new_epoch).await?;
            return Ok(RecoveryOutcome {
                already: true,
                ..done
            });
        }
        if !same_recovery {
            if mine.epoch == new_epoch {
                return Err(NodeError::Refused(format!(
                    "epoch {new_epoch} of cluster {cluster_id:?} was already created on node {} by recovery {:?}; a second recovery {recovery_id:?} to the same epoch would fork the cluster: use a higher epoch",
                    self.id, mine.recovery_id
                )));
            }
            if new_epoch < mine.epoch {
                return Err(NodeError::InvalidArgument {
                    field: "new_epoch".into(),
                    reason: format!("must be greater than the current epoch {}", mine.epoch),
                });
            }
            if !even_if_quorum_answers {
                self.refuse_recovery_of_a_live_cluster()?;
            }
        }
        let Some(last) = store::last_durable_log_id(&self.db).map_err(raft_err)? else {
            return Err(NodeError::Refused(format!(
                "node {} has an empty log; there is nothing to recover from",
                self.id
            )));
        };
        // The identity first: from here on peers of the old epoch are refused, and a retry after
        // a crash finds this recovery in progress and finishes it.
        self.set_identity(&ClusterIdentity {
            cluster_id: cluster_id.to_string(),
            epoch: new_epoch,
            recovery_id: recovery_id.to_string(),
        })?;
        self.stop_core("recovery").await;
        let membership = openraft::Membership::new(
            vec![BTreeSet::from([self.id])],
            BTreeMap::from([(self.id, self.self_node.clone())]),
        )
        .map_err(raft_err)?;
        let log_id = openraft::LogId::new(last.leader_id, last.index + 1);
        let entry =
            <crate::types::Entry as openraft::entry::RaftEntry>::new_membership(log_id, membership);
        store::force_append_entry(&self.db, &entry).map_err(raft_err)?;
        let outcome = RecoveryOutcome {
            previous_last_index: last.index,
            previous_last_term: last.leader_id.term,
            membership_index: last.index + 1,
            epoch: new_epoch,
            already: false,
        };
        store::write_recovery_outcome(&self.db, &outcome).map_err(raft_err)?;
        self.start_core().await.map_err(raft_err)?;
        drop(_guard);
        self.replicate_epoch(new_epoch).await?;
        tracing::warn!(
            node = self.id,
            previous_last_index = last.index,
            previous_last_term = last.leader_id.term,
            epoch = new_epoch,
            recovery_id,
            "forced recovery: this node is now the only voter"
        );
        Ok(outcome)
    }

    /// Refuses a recovery while this node still hears a leader or a quorum of voters: the
    /// majority it would give up is alive, and recovering would fork the cluster.
    fn refuse_recovery_of_a_live_cluster(&self) -> Result<(), NodeError> {
        let m = self.raft().metrics().borrow_watched().clone();
        if let Some(leader) = m.current_leader
            && leader != self.id
            && self.tracker.reachable(leader, self.reachability_window())
        {
            return Err(NodeError::Refused(format!(
                "node {leader} leads this cluster and was heard from within {} ms: the majority is alive, and a recovery would fork the cluster (set even_if_quorum_answers only if you know it is gone)",
                self.reachability_window().as_millis()
            )));
        }
        let (reachable, voters, needed) = self.reachability();
        if reachable >= needed {
            return Err(NodeError::Refused(format!(
                "{reachable} of {voters} voters answer node {} ({needed} form a quorum): the cluster is alive, and a recovery would fork it (set even_if_quorum_answers only if you know they are gone)",
                self.id
            )));
        }
        Ok(())
    }

    /// The epoch the replicated state machine has applied (fencing tokens embed it).
    pub fn state_machine_epoch(&self) -> u64 {
        self.core().kv.data.read().map(|sm| sm.epoch).unwrap_or(0)
    }

    /// After a recovery: waits for this node to lead, then commits `SetEpoch` so every fencing
    /// token issued from now on is above every token of the old epoch. Idempotent.
    pub(super) async fn replicate_epoch(&self, epoch: u64) -> Result<(), NodeError> {
        let started = Instant::now();
        while self.state_machine_epoch() < epoch {
            if self.raft().is_leader() {
                self.write(Command::SetEpoch { epoch }, MAX_WRITE_WAIT)
                    .await?;
            } else if started.elapsed() > Duration::from_secs(10) {
                return Err(NodeError::Internal(format!(
                    "node {} did not become leader within 10 s after recovery; epoch {epoch} is not replicated yet (call again)",
                    self.id
                )));
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Bootstraps a cluster. Idempotent; refuses a different cluster id.
    pub async fn initialize(
        &self,
        cluster_id: &str,
        members: Vec<(NodeId, MemberNode)>,
    ) -> Result<bool, NodeError> {
        if cluster_id.is_empty() {
            return Err(NodeError::InvalidArgument {
                field: "cluster_id".into(),
                reason: "must not be empty".into(),
            });
        }
        if members.is_empty() {
            return Err(NodeError::InvalidArgument {
                field: "members".into(),
                reason: "must not be empty".into(),
            });
        }
        if !members.iter().any(|(id, _)| *id == self.id) {
            return Err(NodeError::InvalidArgument {
                field: "members".into(),
                reason: format!("must include this node (id {})", self.id),
            });
        }
        let mut seen = BTreeSet::new();
        for (id, m) in &members {
            if *id == 0 || !seen.insert(*id) {
                return Err(NodeError::InvalidArgument {
                    field: "members".into(),
                    reason: format!("member id {id} is 0 or appears twice"),
                });
            }
            if m.grpc_addr.is_empty() {
                return Err(NodeError::InvalidArgument {
                    field: "members.grpc_addr".into(),
                    reason: format!("member {id} has no gRPC address"),
                });
            }
        }
        let mine = self.cluster_identity();
        if !mine.cluster_id.is_empty() && mine.cluster_id != cluster_id {
            return Err(NodeError::Refused(format!(
                "node {} already belongs to cluster {:?}; refusing to initialize it into {cluster_id:?}",
                self.id, mine.cluster_id
            )));
        }
        if mine.cluster_id.is_empty() {
            let id = ClusterIdentity {
                cluster_id: cluster_id.to_string(),
                epoch: 1,
                recovery_id: String::new(),
            };
            self.set_identity(&id)?;
        }
        let raft = self.raft();
        if raft.is_initialized().await.map_err(raft_err)? {
            let metrics = raft.metrics().borrow_watched().clone();
            let current: BTreeSet<NodeId> =
                metrics.membership_config.membership().voter_ids().collect();
            let wanted: BTreeSet<NodeId> = members.iter().map(|(id, _)| *id).collect();
            if current != wanted
                && metrics
                    .membership_config
                    .log_id()
                    .is_some_and(|l| l.index == 0)
            {
                return Err(NodeError::Refused(format!(
                    "node {} was initialized with voters {current:?}, not {wanted:?}",
                    self.id
                )));
            }
            return Ok(true);
        }
        let map: BTreeMap<NodeId, MemberNode> = members.into_iter().collect();
        match raft.initialize(map).await {
            Ok(()) => Ok(false),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(true),
            Err(e) => Err(NodeError::Internal(e.to_string())),
        }
    }
}

/// " (recovery ID)" for messages, or nothing for an epoch no recovery created.
fn recovery_suffix(recovery_id: &str) -> String {
    if recovery_id.is_empty() {
        String::new()
    } else {
        format!(" (recovery {recovery_id:?})")
    }
}
