//! raftd: a Raft-replicated key-value server (openraft + redb + tonic + axum).
pub mod admin_service;
pub mod config;
pub mod faults;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod lock_service;
pub mod locks;
pub mod network;
pub mod node;
pub mod peer_service;
pub mod state_machine;
pub mod status;
pub mod store;
pub mod types;
