//! Openraft type configuration for raftd: node ids, member addresses, commands and results.
use std::fmt;

use serde::{Deserialize, Serialize};

/// Addresses of one member, stored in the replicated membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// gRPC address other members and clients dial (host:port).
    pub grpc_addr: String,
    /// HTTP address serving /healthz, /readyz, /status, /metrics.
    pub http_addr: String,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc={} http={}", self.grpc_addr, self.http_addr)
    }
}

/// What a compare-and-swap compares against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key currently holds exactly this value.
    Value(Vec<u8>),
    /// The key was last modified at this revision (0 means "absent").
    ModRevision(u64),
    /// The key does not exist.
    Absent,
}

/// A replicated command. New kinds are appended as variants (postcard encodes the variant
/// index, so the order of existing variants must never change); `apply` in `state_machine.rs`
/// is the single place that interprets them.
///
/// Lock commands carry the proposing leader's wall clock (`now_ms`, Unix milliseconds) so that
/// apply is deterministic and never reads a clock: every replica computes the same lease times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Cas {
        key: Vec<u8>,
        expect: Expect,
        new_value: Option<Vec<u8>>,
    },
    /// Grant `lock` to `holder` for `ttl_ms` if it is free; the same holder again extends it.
    AcquireLock {
        lock: String,
        holder: String,
        ttl_ms: u64,
        now_ms: u64,
    },
    /// Extend the lease of `lock` if `token` is current.
    RenewLock {
        lock: String,
        token: u64,
        ttl_ms: u64,
        now_ms: u64,
    },
    /// Free `lock` if `token` is current.
    ReleaseLock {
        lock: String,
        token: u64,
    },
    /// Proposed by the leader for a lease it saw expired at `now_ms`; ignored unless `token` is
    /// still current and the lease (possibly renewed since) really ends at or before `now_ms`.
    ExpireLock {
        lock: String,
        token: u64,
        now_ms: u64,
    },
    /// Proposed by a new leader before it expires anything: every held lease ends no earlier
    /// than `now_ms + its ttl`.
    ExtendLeases {
        now_ms: u64,
    },
    /// Raise the cluster epoch (never lowers it). Fencing tokens embed the epoch.
    SetEpoch {
        epoch: u64,
    },
    /// A put applied only if `token` is the current token of `lock` (checked in log order).
    FencedPut {
        key: Vec<u8>,
        value: Vec<u8>,
        lock: String,
        token: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => write!(
                f,
                "put({} bytes key, {} bytes value)",
                key.len(),
                value.len()
            ),
            Command::Delete { key } => write!(f, "delete({} bytes key)", key.len()),
            Command::Cas { key, .. } => write!(f, "cas({} bytes key)", key.len()),
            Command::AcquireLock { lock, holder, .. } => {
                write!(f, "acquire_lock({lock:?} by {holder:?})")
            }
            Command::RenewLock { lock, token, .. } => write!(f, "renew_lock({lock:?}, {token})"),
            Command::ReleaseLock { lock, token } => write!(f, "release_lock({lock:?}, {token})"),
            Command::ExpireLock { lock, token, .. } => write!(f, "expire_lock({lock:?}, {token})"),
            Command::ExtendLeases { now_ms } => write!(f, "extend_leases(now_ms={now_ms})"),
            Command::SetEpoch { epoch } => write!(f, "set_epoch({epoch})"),
            Command::FencedPut {
                key, lock, token, ..
            } => write!(
                f,
                "fenced_put({} bytes key, lock {lock:?} token {token})",
                key.len()
            ),
        }
    }
}

/// The outcome of applying one command at log index `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub revision: u64,
    /// Whether the command took effect (false only for a failed compare-and-swap).
    pub succeeded: bool,
    /// The value and mod revision the key had before this command.
    pub previous: Option<(Vec<u8>, u64)>,
    /// Lock commands: the lock as it is after this command (`None`: free).
    pub lock: Option<LockState>,
    /// Why a lock command or fenced put did not take effect (shown to the client).
    pub rejection: Option<String>,
}

/// One held lock in the replicated state machine.
///
/// The fencing token is `(epoch << 40) | grant_index`: the log index of the entry that granted
/// the lock, under the cluster epoch at that time. See docs/raftd.md, "Locks".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    pub holder: String,
    pub token: u64,
    /// Leader wall clock (Unix ms) when the lock was granted.
    pub granted_at_ms: u64,
    /// Leader wall clock (Unix ms) at which the lease ends unless renewed or extended.
    pub expires_at_ms: u64,
    pub ttl_ms: u64,
    /// Raft term of the granting entry.
    pub term: u64,
    /// Cluster epoch (state machine) when granted.
    pub epoch: u64,
    /// Log index of the granting entry.
    pub grant_index: u64,
}

openraft::declare_raft_types!(
    /// raftd's openraft configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = MemberNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub type Membership = openraft::Membership<NodeId, MemberNode>;
