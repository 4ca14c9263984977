//! The error metadata raftd attaches to a failed call, one name per concept: server, forwarder
//! and client all use these constants.
//!
//! Every failure carries `raft-outcome` (did the request apply?) and `raft-error` (why not);
//! a "not leader" or "draining" answer also carries the leader's id and address when known.

/// Metadata key: whether the request applied (`not-applied` or `unknown`).
pub const OUTCOME: &str = "raft-outcome";
/// Metadata key: the kind of failure (one of the `KIND_*` values).
pub const ERROR_KIND: &str = "raft-error";
/// Metadata key: the leader's node id, when known.
pub const LEADER_ID: &str = "raft-leader-id";
/// Metadata key: the leader's gRPC address, when known.
pub const LEADER_ADDR: &str = "raft-leader-addr";

/// The request did not apply and will not: safe to retry anywhere.
pub const OUTCOME_NOT_APPLIED: &str = "not-applied";
/// A write may or may not have applied.
pub const OUTCOME_UNKNOWN: &str = "unknown";

pub const KIND_NOT_LEADER: &str = "not-leader";
pub const KIND_NO_QUORUM: &str = "no-quorum";
pub const KIND_NO_LEADER: &str = "no-leader";
pub const KIND_DRAINING: &str = "draining";
pub const KIND_OUTCOME_UNKNOWN: &str = "outcome-unknown";
pub const KIND_INVALID_ARGUMENT: &str = "invalid-argument";
pub const KIND_UNINITIALIZED: &str = "uninitialized";
pub const KIND_REFUSED: &str = "refused";
pub const KIND_LOCK_CONFLICT: &str = "lock-conflict";
pub const KIND_FENCED_WRITE_REJECTED: &str = "fenced-write-rejected";
pub const KIND_INTERNAL: &str = "internal";
