//! raft-operator: the Kubernetes operator for zone-aware, quorum-safe Raft clusters.
//!
//! The operator reconciles in four steps: observe (client calls), plan (a pure function that
//! picks at most one next action), act, and write status (`controller` runs them in that
//! order). The crate also holds the `RaftCluster` API types (`crd`), the manifests the operator
//! applies, a member's identity (`member`) and the watches that feed the controller (`watch`).

pub mod act;
pub mod admin;
pub mod controller;
pub mod crd;
pub mod leader_election;
pub mod manifests;
pub mod member;
pub mod metrics;
pub mod observe;
pub mod observed;
pub mod plan;
pub mod status;
pub mod watch;
