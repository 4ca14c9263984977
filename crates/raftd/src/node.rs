//! A running raftd member: the openraft instance, the write and read paths with honest errors,
//! quorum-loss detection and step-down, bootstrap/cluster identity, and the admin operations.
//!
//! Clock assumption for leader-lease reads: clocks on members may drift, but the drift
//! accumulated over one lease (`election_timeout_max`) is bounded by `--max-clock-drift-ms`, as in
//! TiKV and CockroachDB. A follower does not grant a vote to another candidate until its own lease
//! on the leader (measured from when it received the leader's last heartbeat, which is after the
//! leader sent it) expires. The leader serves a lease read only while
//! `now < last_quorum_ack_sent_at + lease - max_clock_drift`; every other read goes through
//! ReadIndex. A monotonic clock (tokio `Instant`) is used, so wall-clock steps do not matter; a
//! process pause (SIGSTOP) is harmless because it stops the leader's clock-derived decisions too
//! and the lease check happens after the pause.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, LinearizerOption, ReadPolicy, ServerState, SnapshotPolicy};
use redb::Database;

use crate::config::{Args, JoinMode, ReadMode};
use crate::locks::{LockWaiters, validate_lock_command};
use crate::network::{NetworkShared, PeerTracker, WireIdentity};
use crate::store::{self, ClusterIdentity, KvState, LockHub, LogStore, StateMachineStore};
use crate::types::{Command, CommandResult, MemberNode, NodeId, Raft, TypeConfig};

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Server-side bound on how long a write may wait for commit.
pub const MAX_WRITE_WAIT: Duration = Duration::from_secs(5);

/// Why a request failed, and whether a write may have applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// Not applied: this node is not the leader.
    #[error("not leader (not applied){}", leader_hint(.leader_id, .leader_addr))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// Not applied: a majority of voters is unreachable.
    #[error("no quorum: {reachable} of {voters} voters reachable, {needed} needed (not applied)")]
    NoQuorum {
        reachable: usize,
        voters: usize,
        needed: usize,
    },
    /// Not applied: no leader is known yet (election in progress); safe to retry.
    #[error("no leader elected yet (not applied); {reachable} of {voters} voters reachable")]
    NoLeader { reachable: usize, voters: usize },
    /// The write was proposed; it may or may not commit.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("invalid argument: {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error(
        "node {0} is not initialized: start it with --bootstrap or call Admin.Initialize, or add it as a learner"
    )]
    Uninitialized(NodeId),
    #[error("refused: {0}")]
    Refused(String),
    /// Applied as a no-op: a lock command whose token or holder did not match (not applied).
    #[error("{0}")]
    LockConflict(String),
    /// Applied as a no-op: a fenced put whose token is not the lock's current one.
    #[error("{0}")]
    FencedWriteRejected(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_hint(id: &Option<NodeId>, addr: &Option<String>) -> String {
    match (id, addr) {
        (Some(id), Some(a)) => format!("; leader is node {id} at {a}"),
        (Some(id), None) => format!("; leader is node {id}"),
        _ => String::new(),
    }
}

/// How a read was made linearizable (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLevel {
    Linearizable,
    Lease,
    ReadIndex,
    Stale,
}

/// What served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedBy {
    Lease,
    ReadIndex,
    Stale,
}

impl ServedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedBy::Lease => "lease",
            ServedBy::ReadIndex => "read_index",
            ServedBy::Stale => "stale",
        }
    }
}

/// The openraft instance and the state machine view it feeds; replaced on step-down.
pub struct Core {
    pub raft: Raft,
    pub kv: Arc<KvState>,
}

/// Counters exported on /metrics.
#[derive(Default)]
pub struct Counters {
    pub writes_ok: AtomicU64,
    pub writes_not_applied: AtomicU64,
    pub writes_unknown: AtomicU64,
    pub reads_lease: AtomicU64,
    pub reads_read_index: AtomicU64,
    pub reads_stale: AtomicU64,
    pub reads_failed: AtomicU64,
    pub step_downs: AtomicU64,
    pub peer_refusals: AtomicU64,
    /// Batch messages received on `Kv.Pipeline` streams, and the ops they carried.
    pub pipeline_batches: AtomicU64,
    pub pipeline_ops: AtomicU64,
}

pub struct RaftNode {
    pub id: NodeId,
    pub args: Args,
    pub self_node: MemberNode,
    db: Arc<Database>,
    core: RwLock<Arc<Core>>,
    raft_config: Arc<openraft::Config>,
    network: NetworkShared,
    pub identity: Arc<RwLock<WireIdentity>>,
    pub tracker: Arc<PeerTracker>,
    pub counters: Counters,
    /// True while this node is leader and its lease has expired (quorum lost).
    quorum_lost: tokio::sync::watch::Sender<bool>,
    started: Instant,
    rebuild_lock: tokio::sync::Mutex<()>,
    /// Lock events and counters, shared by every state machine this node builds.
    pub lock_hub: Arc<LockHub>,
    /// Blocked acquires waiting on this node (as leader), first in first out per lock.
    pub lock_waiters: LockWaiters,
    /// The last peer RPC this node refused and when, for the status.
    last_refusal: std::sync::Mutex<Option<(Instant, String)>>,
}

/// What a forced recovery did, for the operator's audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryOutcome {
    /// The survivor's last log entry before recovery (index, term).
    pub previous_last_index: u64,
    pub previous_last_term: u64,
    /// Index of the single-voter membership entry that was appended.
    pub membership_index: u64,
    /// The cluster epoch now in force.
    pub epoch: u64,
    /// True when the node was already recovered into this epoch (the call was repeated).
    pub already: bool,
}

fn raft_err<E: std::fmt::Display>(e: E) -> NodeError {
    NodeError::Internal(e.to_string())
}

impl RaftNode {
    /// Opens storage, starts openraft, and bootstraps if asked to.
    pub async fn start(args: Args) -> anyhow::Result<Arc<RaftNode>> {
        let db = store::open_database(&args.data_dir)?;
        let mut identity = store::read_identity(&db)?;
        if let Some(flag) = args.cluster_id.as_deref().filter(|s| !s.is_empty()) {
            match &identity {
                Some(id) if id.cluster_id != flag => anyhow::bail!(
                    "--cluster-id {flag:?} differs from the cluster id {:?} stored in {}; refusing to start",
                    id.cluster_id,
                    args.data_dir.display()
                ),
                Some(_) => {}
                None => {
                    let new = ClusterIdentity {
                        cluster_id: flag.to_string(),
                        epoch: 1,
                    };
                    store::write_identity(&db, &new)?;
                    identity = Some(new);
                }
            }
        }
        let identity = identity.unwrap_or_default();
        let wire = Arc::new(RwLock::new(WireIdentity {
            node_id: args.node_id,
            cluster_id: identity.cluster_id.clone(),
            epoch: identity.epoch,
        }));
        let tracker = Arc::new(PeerTracker::default());
        let network = NetworkShared::new(
            wire.clone(),
            tracker.clone(),
            Duration::from_millis(args.inject_peer_rtt_ms),
            Duration::from_millis(args.election_timeout_max_ms),
        );
        let raft_config = openraft::Config {
            cluster_name: "raftd".to_string(),
            election_timeout_min: args.election_timeout_min_ms,
            election_timeout_max: args.election_timeout_max_ms,
            heartbeat_interval: args.heartbeat_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_every),
            max_in_snapshot_log_to_keep: 1000,
            enable_pre_vote: Some(true),
            enable_leader_restore: Some(false),
            max_payload_entries: 2000,
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        }
        .validate()?;
        let raft_config = Arc::new(raft_config);
        let self_node = MemberNode {
            grpc_addr: args.grpc_advertise(),
            http_addr: args.http_advertise(),
        };
        let lock_hub = Arc::new(LockHub::default());
        let core = Self::build_core(args.node_id, &raft_config, &network, &db, &lock_hub).await?;
        let (quorum_lost, _) = tokio::sync::watch::channel(false);
        let node = Arc::new(RaftNode {
            id: args.node_id,
            args,
            self_node,
            db,
            core: RwLock::new(Arc::new(core)),
            raft_config,
            network,
            identity: wire,
            tracker,
            counters: Counters::default(),
            quorum_lost,
            started: Instant::now(),
            rebuild_lock: tokio::sync::Mutex::new(()),
            last_refusal: std::sync::Mutex::new(None),
            lock_hub,
            lock_waiters: LockWaiters::default(),
        });
        if node.args.bootstrap {
            let ic = node.args.initial_cluster.clone().unwrap_or_default();
            let members = crate::config::parse_initial_cluster(&ic).map_err(anyhow::Error::msg)?;
            let cluster_id = node.args.cluster_id.clone().unwrap_or_default();
            let members: Vec<(NodeId, MemberNode)> = members
                .into_iter()
                .map(|m| {
                    (
                        m.id,
                        MemberNode {
                            grpc_addr: m.grpc_addr,
                            http_addr: m.http_addr,
                        },
                    )
                })
                .collect();
            let already = node
                .initialize(&cluster_id, members)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(node = node.id, already_initialized = already, "bootstrap");
        }
        tokio::spawn(Self::watchdog(node.clone()));
        tokio::spawn(crate::locks::lease_keeper(node.clone()));
        Ok(node)
    }

    async fn build_core(
        id: NodeId,
        config: &Arc<openraft::Config>,
        network: &NetworkShared,
        db: &Arc<Database>,
        hub: &Arc<LockHub>,
    ) -> anyhow::Result<Core> {
        let sm = StateMachineStore::open_with_hub(db.clone(), hub.clone())?;
        let kv = sm.state.clone();
        let raft = Raft::new(
            id,
            config.clone(),
            network.clone(),
            LogStore::new(db.clone()),
            sm,
        )
        .await?;
        Ok(Core { raft, kv })
    }

    pub fn core(&self) -> Arc<Core> {
        match self.core.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn raft(&self) -> Raft {
        self.core().raft.clone()
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.args.election_timeout_max_ms)
    }

    /// The lease minus the drift bound: how old a quorum ack may be for a lease read.
    pub fn lease_read_window(&self) -> Duration {
        self.lease()
            .saturating_sub(Duration::from_millis(self.args.max_clock_drift_ms))
    }

    pub fn cluster_identity(&self) -> ClusterIdentity {
        let w = self.identity.read().map(|w| w.clone()).unwrap_or_default();
        ClusterIdentity {
            cluster_id: w.cluster_id,
            epoch: w.epoch,
        }
    }

    /// Checks an incoming peer RPC's cluster id and epoch; an uninitialized node adopts them.
    pub fn admit_peer(&self, from: NodeId, cluster_id: &str, epoch: u64) -> Result<(), NodeError> {
        let mine = self.cluster_identity();
        if mine.cluster_id.is_empty() && self.args.join_mode == JoinMode::Explicit {
            return Err(self.refuse(format!(
                "node {} has no data and no cluster identity (a new member, or its data directory was wiped); \
                 it takes part only after an admin Join names its cluster, so it refuses node {from} of cluster {cluster_id:?}",
                self.id
            )));
        }
        if mine.cluster_id.is_empty() {
            if cluster_id.is_empty() {
                return Err(NodeError::Refused(format!(
                    "peer RPC from node {from} carries no cluster id and node {} has none either",
                    self.id
                )));
            }
            let adopted = ClusterIdentity {
                cluster_id: cluster_id.to_string(),
                epoch: epoch.max(1),
            };
            self.set_identity(&adopted)?;
            tracing::info!(
                cluster_id,
                epoch = adopted.epoch,
                from,
                "joined cluster: adopted its identity"
            );
            self.tracker.mark_ok(from);
            return Ok(());
        }
        if mine.cluster_id != cluster_id || mine.epoch != epoch {
            return Err(self.refuse(format!(
                "cluster id mismatch: node {} belongs to cluster {:?} epoch {}, but node {from} sent cluster {:?} epoch {}",
                self.id, mine.cluster_id, mine.epoch, cluster_id, epoch
            )));
        }
        self.tracker.mark_ok(from);
        Ok(())
    }

    /// Persists this node's cluster identity (fsynced) and puts it on the wire.
    fn set_identity(&self, id: &ClusterIdentity) -> Result<(), NodeError> {
        store::write_identity(&self.db, id).map_err(raft_err)?;
        if let Ok(mut w) = self.identity.write() {
            w.cluster_id = id.cluster_id.clone();
            w.epoch = id.epoch;
        }
        Ok(())
    }

    /// Counts and remembers a refused peer RPC; the status shows the last one.
    fn refuse(&self, reason: String) -> NodeError {
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
    pub async fn join(&self, cluster_id: &str, epoch: u64) -> Result<bool, NodeError> {
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
        let mine = self.cluster_identity();
        if mine.cluster_id == cluster_id && mine.epoch == epoch {
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
                "node {} holds Raft state of cluster {:?} epoch {}; it cannot join epoch {epoch}: delete its data directory to rebuild it",
                self.id, mine.cluster_id, mine.epoch
            )));
        }
        let id = ClusterIdentity {
            cluster_id: cluster_id.to_string(),
            epoch,
        };
        self.set_identity(&id)?;
        tracing::info!(
            node = self.id,
            cluster_id,
            epoch,
            "joined: waiting to be added as a learner"
        );
        Ok(false)
    }

    /// Disaster recovery after the loss of a majority: makes this node the only voter of its
    /// cluster and moves the cluster to `new_epoch`, so members of the old epoch are refused.
    ///
    /// It stops openraft, appends a membership entry `{self}` after the last durable entry,
    /// raises the epoch, and restarts; a single voter elects itself and commits the entry.
    /// Entries the lost majority committed after this node's last index are gone; the result
    /// names that index so the caller can record it. Idempotent for the same `new_epoch`.
    pub async fn force_recover(
        &self,
        cluster_id: &str,
        new_epoch: u64,
    ) -> Result<RecoveryOutcome, NodeError> {
        let mine = self.cluster_identity();
        if cluster_id.is_empty() || mine.cluster_id != cluster_id {
            return Err(NodeError::Refused(format!(
                "node {} belongs to cluster {:?}, not {cluster_id:?}; refusing to recover it",
                self.id, mine.cluster_id
            )));
        }
        let _guard = self.rebuild_lock.lock().await;
        let last = store::last_durable_log_id(&self.db).map_err(raft_err)?;
        let (last_index, last_term) = last
            .as_ref()
            .map(|l| (l.index, l.leader_id.term))
            .unwrap_or((0, 0));
        if mine.epoch == new_epoch {
            let m = self.raft().metrics().borrow_watched().clone();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            if voters.first() == Some(&self.id) {
                drop(_guard);
                self.replicate_epoch(new_epoch).await?;
                return Ok(RecoveryOutcome {
                    previous_last_index: last_index,
                    previous_last_term: last_term,
                    membership_index: m.membership_config.log_id().map(|l| l.index).unwrap_or(0),
                    epoch: new_epoch,
                    already: true,
                });
            }
        }
        if new_epoch <= mine.epoch {
            return Err(NodeError::InvalidArgument {
                field: "new_epoch".into(),
                reason: format!("must be greater than the current epoch {}", mine.epoch),
            });
        }
        let Some(last) = last else {
            return Err(NodeError::Refused(format!(
                "node {} has an empty log; there is nothing to recover from",
                self.id
            )));
        };
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
        self.set_identity(&ClusterIdentity {
            cluster_id: cluster_id.to_string(),
            epoch: new_epoch,
        })?;
        self.start_core().await.map_err(raft_err)?;
        drop(_guard);
        self.replicate_epoch(new_epoch).await?;
        tracing::warn!(
            node = self.id,
            previous_last_index = last.index,
            previous_last_term = last.leader_id.term,
            epoch = new_epoch,
            "forced recovery: this node is now the only voter"
        );
        Ok(RecoveryOutcome {
            previous_last_index: last.index,
            previous_last_term: last.leader_id.term,
            membership_index: last.index + 1,
            epoch: new_epoch,
            already: false,
        })
    }

    /// The epoch the replicated state machine has applied (fencing tokens embed it).
    pub fn state_machine_epoch(&self) -> u64 {
        self.core().kv.data.read().map(|sm| sm.epoch).unwrap_or(0)
    }

    /// After a recovery: waits for this node to lead, then commits `SetEpoch` so every fencing
    /// token issued from now on is above every token of the old epoch. Idempotent.
    async fn replicate_epoch(&self, epoch: u64) -> Result<(), NodeError> {
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

    fn reachability_window(&self) -> Duration {
        Duration::from_millis(self.args.election_timeout_max_ms * 2)
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
    fn unavailable_error(&self) -> NodeError {
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

    fn map_forward(&self, leader_id: Option<NodeId>, leader_node: Option<MemberNode>) -> NodeError {
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

    /// Validates and replicates a command; returns once applied on this (leader) node.
    pub async fn write(
        &self,
        cmd: Command,
        deadline: Duration,
    ) -> Result<CommandResult, NodeError> {
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

    async fn write_inner(
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

    /// Makes a read at `level` safe; returns how it was served. Read the state machine after.
    pub async fn linearize(
        &self,
        level: ReadLevel,
        deadline: Duration,
    ) -> Result<(ServedBy, Arc<KvState>), NodeError> {
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

    async fn linearize_inner(
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
        if level == ReadLevel::Lease && !self.lease_read_window().is_zero() {
            if self.lease_holds_locally(&core) {
                return Ok((ServedBy::Lease, core.kv.clone()));
            }
            // A lease read never waits for a new quorum ack: if the last one is too old, fall
            // back to ReadIndex. The linearizer's read log id includes this term's first
            // (blank) entry, so a new leader serves nothing until that entry is committed and
            // applied.
            let opt = LinearizerOption::new(Some(self.lease_read_window()), false)
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

    /// The lease check without a call into openraft's core task, from its metrics: this node
    /// leads, a quorum acknowledged it within the lease window (minus the drift bound), and an
    /// entry of the current term is applied, so this term's first (blank) entry is, and with it
    /// everything committed before it. Writes acknowledged by this leader were applied before
    /// their answer, so the local state holds every acknowledged write. Anything uncertain
    /// returns false and the read takes openraft's linearizer.
    fn lease_holds_locally(&self, core: &Core) -> bool {
        let metrics = core.raft.metrics();
        let m = metrics.borrow_watched();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && m.last_applied
                .as_ref()
                .is_some_and(|a| a.leader_id.term == m.current_term)
            && m.last_quorum_acked
                .as_ref()
                .is_some_and(|t| t.elapsed() < self.lease_read_window())
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

    fn ensure_leader_for_admin(&self) -> Result<Raft, NodeError> {
        let raft = self.raft();
        if raft.is_leader() {
            Ok(raft)
        } else {
            Err(self.unavailable_error())
        }
    }

    fn map_membership_err(
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
        let resp = raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.map_membership_err(e))?;
        Ok((resp.log_id.index, true))
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
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.map_membership_err(e))?;
        }
        let resp = raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.map_membership_err(e))?;
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

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Watches the leader's quorum acks. When the lease expires the node marks quorum lost
    /// (pending writes then fail with "outcome unknown" at once); one election timeout later it
    /// steps down by restarting its Raft instance from durable state as a follower.
    async fn watchdog(node: Arc<RaftNode>) {
        let lease = node.lease();
        let step_down_after = lease + Duration::from_millis(node.args.election_timeout_min_ms);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let raft = node.raft();
            let metrics = raft.metrics().borrow_watched().clone();
            let is_leader = metrics.state == ServerState::Leader;
            let voters = metrics.membership_config.membership().voter_ids().count();
            let since_ack = if is_leader && voters > 1 {
                metrics.last_quorum_acked.as_ref().map(|t| t.elapsed())
            } else {
                None
            };
            let lease_expired = since_ack.is_some_and(|d| d >= lease);
            // A late quorum ack alone can be a slow machine; quorum is lost when, in addition,
            // a majority of voters has not answered any RPC within the reachability window.
            let majority_unreachable = lease_expired && {
                let (reachable, _, needed) = node.reachability();
                reachable < needed
            };
            let lost = majority_unreachable;
            node.quorum_lost.send_if_modified(|v| {
                if *v != lost {
                    *v = lost;
                    true
                } else {
                    false
                }
            });
            if let Some(d) = since_ack
                && d >= step_down_after
                && majority_unreachable
            {
                let (reachable, voters, needed) = node.reachability();
                tracing::warn!(
                    node = node.id,
                    since_quorum_ack_ms = d.as_millis() as u64,
                    "no quorum: {reachable} of {voters} voters reachable, {needed} needed; stepping down"
                );
                node.counters.step_downs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = node.step_down().await {
                    tracing::error!(error = %e, "step down failed");
                }
            }
        }
    }

    /// Restarts the openraft instance from durable state: the node comes back as a follower.
    async fn step_down(&self) -> anyhow::Result<()> {
        let _guard = self.rebuild_lock.lock().await;
        self.stop_core("step-down").await;
        self.start_core().await?;
        tracing::info!(node = self.id, "stepped down: restarted as follower");
        Ok(())
    }

    /// Shuts the running openraft instance down (a failure is logged: it may be stopping
    /// already). Callers hold `rebuild_lock`.
    async fn stop_core(&self, why: &str) {
        if let Err(e) = self.core().raft.shutdown().await {
            tracing::warn!(error = %e, why, "raft shutdown");
        }
    }

    /// Starts a fresh openraft instance from durable state and makes it the current one.
    /// Callers hold `rebuild_lock`.
    async fn start_core(&self) -> anyhow::Result<()> {
        let new = Self::build_core(
            self.id,
            &self.raft_config,
            &self.network,
            &self.db,
            &self.lock_hub,
        )
        .await?;
        match self.core.write() {
            Ok(mut c) => *c = Arc::new(new),
            Err(p) => *p.into_inner() = Arc::new(new),
        }
        self.quorum_lost.send_replace(false);
        Ok(())
    }
}

fn validate_key(field: &str, key: &[u8]) -> Result<(), NodeError> {
    if key.is_empty() {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: "must not be empty".into(),
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        });
    }
    Ok(())
}

fn validate_value(field: &str, v: &[u8]) -> Result<(), NodeError> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_VALUE_BYTES} bytes",
                v.len()
            ),
        });
    }
    Ok(())
}

/// Rejects commands with empty or oversized keys and oversized values.
pub fn validate_command(cmd: &Command) -> Result<(), NodeError> {
    match cmd {
        Command::Put { key, value } => {
            validate_key("key", key)?;
            validate_value("value", value)
        }
        Command::Delete { key } => validate_key("key", key),
        Command::Cas {
            key,
            expect,
            new_value,
        } => {
            validate_key("key", key)?;
            if let crate::types::Expect::Value(v) = expect {
                validate_value("expected_value", v)?;
            }
            if let Some(v) = new_value {
                validate_value("new_value", v)?;
            }
            Ok(())
        }
        Command::FencedPut {
            key, value, lock, ..
        } => {
            validate_key("key", key)?;
            validate_value("value", value)?;
            crate::locks::validate_name("fence_lock", lock)
        }
        other => validate_lock_command(other),
    }
}

pub fn validate_read_key(key: &[u8]) -> Result<(), NodeError> {
    validate_key("key", key)
}

pub fn validate_prefix(prefix: &[u8]) -> Result<(), NodeError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(NodeError::InvalidArgument {
            field: "prefix".into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
                prefix.len()
            ),
        });
    }
    Ok(())
}
