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
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::SnapshotPolicy;
use redb::Database;

use crate::config::Args;
use crate::faults::FaultLayer;
use crate::locks::LockWaiters;
use crate::network::{NetworkShared, PeerTracker, WireIdentity};
use crate::store::{self, ClusterIdentity, KvState, LockHub, LogStore, StateMachineStore};
use crate::types::{MemberNode, NodeId, Raft};

mod availability;
mod identity;
pub mod lease;
mod membership;
mod readiness;
mod reads;
mod validate;
mod watchdog;
mod writes;

pub use lease::{LeaseState, Timing};
pub use readiness::{InFlight, Readiness};
pub use validate::{validate_command, validate_prefix, validate_read_key};

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
    /// Not applied: this node drains for a planned stop and takes no new requests.
    #[error("node is draining for a planned stop (not applied){}", leader_hint(.leader_id, .leader_addr))]
    Draining {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
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
    /// When this instance started: a voter grants no vote within one lease of it.
    pub started: Instant,
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
    /// Test-only drops and delays on the peer transport (inert unless enabled).
    pub faults: Arc<FaultLayer>,
    /// Every time window, derived once from the flags.
    timing: Timing,
    /// The term in which this node last started a leadership transfer (0: never); no lease
    /// read is served in that term.
    transfer_term: AtomicU64,
    /// The last successful AppendEntries from a leader (readiness of a follower).
    leader_contact: std::sync::Mutex<Option<readiness::LeaderContact>>,
    /// Set once a planned stop begins: unready, and no new client requests.
    draining: std::sync::atomic::AtomicBool,
    /// Client requests being served, which a drain waits for.
    in_flight: std::sync::atomic::AtomicUsize,
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
                        recovery_id: String::new(),
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
            recovery_id: identity.recovery_id.clone(),
        }));
        let faults = Arc::new(FaultLayer::new(args.enable_fault_injection));
        let tracker = Arc::new(PeerTracker::default());
        let network = NetworkShared::new(
            wire.clone(),
            tracker.clone(),
            Duration::from_millis(args.inject_peer_rtt_ms),
            Duration::from_millis(args.election_timeout_max_ms),
            faults.clone(),
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
            timing: Timing::from_args(&args),
            faults,
            transfer_term: AtomicU64::new(0),
            leader_contact: std::sync::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
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
        Ok(Core {
            raft,
            kv,
            started: Instant::now(),
        })
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

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
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
