//! raft-operator: the Kubernetes operator for zone-aware, quorum-safe Raft clusters.
//!
//! The operator reconciles in four steps: observe (client calls), plan (a pure function that
//! picks at most one next action), act, and write status. This crate holds the `RaftCluster`
//! API types; the reconcile pipeline arrives with the operator-core work.

pub mod act;
pub mod admin;
pub mod controller;
pub mod crd;
pub mod leader_election;
pub mod manifests;
pub mod metrics;
pub mod observe;
pub mod observed;
pub mod plan;
pub mod status;
