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

/// A replicated command. New kinds (e.g. lock operations, issue 4) are added as variants;
/// `apply` in `state_machine.rs` is the single place that interprets them.
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
