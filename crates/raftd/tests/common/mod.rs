//! Shared helpers for the multi-process tests: start a local cluster of real raftd processes.
#![allow(dead_code, clippy::unwrap_used)]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use raft_local::{ClusterGuard, LocalCluster, UpOptions};
use raft_proto::RaftClient;
use raft_proto::pb::StatusResponse;

pub mod member;

pub fn raftd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftd"))
}

/// Multi-process tests in one binary run one at a time: parallel clusters on a 2-core machine
/// would turn timing into noise.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the serial lock (for tests that start processes themselves).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Returns (dir, guard): declared in this order, the guard drops first and stops the nodes
/// before the directory is removed.
pub async fn up(
    name: &str,
    nodes: usize,
    extra: &[&str],
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    tempdirs::Dir,
    ClusterGuard,
) {
    let serial = SERIAL.lock().await;
    let dir = tempdirs::Dir::new(name);
    let c = LocalCluster::up(
        &dir.0,
        UpOptions {
            nodes,
            raftd_bin: raftd_bin(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            leader_timeout: Duration::from_secs(20),
        },
    )
    .await
    .expect("local cluster up");
    (serial, dir, ClusterGuard(c))
}

pub mod tempdirs {
    /// A temp dir kept on failure (for the logs) and removed on success.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Self {
            let base =
                std::env::temp_dir().join(format!("raftd-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(&base).unwrap();
            Dir(base)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.0);
            } else {
                eprintln!("kept test dir with logs: {}", self.0.display());
            }
        }
    }
}

pub async fn status(client: &RaftClient, addr: &str) -> Option<StatusResponse> {
    client.status_of(addr).await.ok()
}

/// The id of the node that reports itself leader (among running nodes), polling up to `timeout`.
pub async fn leader(c: &LocalCluster, timeout: Duration) -> Option<u64> {
    let client = c.client().unwrap();
    let start = Instant::now();
    while start.elapsed() < timeout {
        for n in &c.nodes {
            if c.is_running(n.id)
                && let Some(s) = status(&client, &n.grpc_addr).await
                && s.role == "leader"
            {
                return Some(s.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// A client talking to one node only (no leader following across nodes).
pub fn node_client(c: &LocalCluster, id: u64) -> RaftClient {
    RaftClient::new(&[c.node(id).unwrap().grpc_addr.clone()]).unwrap()
}

/// Puts with retries on outcome-unknown/unavailable answers (for setup writes only: a put of the
/// same value is idempotent, so retrying is harmless). Returns the revision of the acked put.
pub async fn put_retry(client: &RaftClient, key: &[u8], value: &[u8]) -> u64 {
    let start = Instant::now();
    loop {
        match client.put(key, value).await {
            Ok(r) => return r.revision,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "put kept failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
