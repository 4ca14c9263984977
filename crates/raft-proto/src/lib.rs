//! raftd wire protocol (generated gRPC code) and `RaftClient`, the leader-following client.
//!
//! This crate depends on neither openraft nor redb: the operator uses it for the admin API.
pub mod client;
pub mod faults;
pub mod pipeline;
pub mod wire;

#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod pb {
    //! Generated protobuf messages and tonic clients/servers for `raftd.v1`.
    tonic::include_proto!("raftd.v1");
}

pub use client::{ClientError, Consistency, ErrorKind, RaftClient};
