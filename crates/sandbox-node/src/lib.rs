//! Local Kubernetes sandbox: node agent, volume provisioner, fault injection and a test server.
//!
//! The library half is what end-to-end tests use: [`faults`] to kill, pause, partition pods and
//! take zones down, [`state`] to find a pod's process and network namespace, and [`http`] for a
//! tiny HTTP/1.0 client that talks to pod IPs from the host.

pub mod agent;
pub mod config;
pub mod echo;
pub mod faults;
pub mod http;
pub mod podexec;
pub mod state;
