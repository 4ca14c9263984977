//! The playground's own promises: `raftctl local up` on a directory that holds a stopped cluster
//! refuses at once with the way out, a node that exits during `up` is reported with its reason
//! at once, and a stopped cluster starts again with its data.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::{Duration, Instant};

use raft_local::{LocalCluster, UpOptions};
use raft_proto::Consistency;

fn options(extra: &[&str]) -> UpOptions {
    UpOptions {
        nodes: 3,
        raftd_bin: common::raftd_bin(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        leader_timeout: Duration::from_secs(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_a_stopped_cluster_and_start_brings_it_back_with_its_data() {
    let _serial = common::serial().await;
    let dir = common::tempdirs::Dir::new("playground");
    let mut c = LocalCluster::up(&dir.0, options(&[])).await.unwrap();
    common::put_retry(&c.client().unwrap(), b"kept", b"yes").await;
    c.down().unwrap();

    let started = Instant::now();
    let e = LocalCluster::up(&dir.0, options(&[]))
        .await
        .unwrap_err()
        .to_string();
    println!("up on a stopped cluster: {e} ({:?})", started.elapsed());
    assert!(e.contains("local start") && e.contains("--purge"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused only after {:?}",
        started.elapsed()
    );

    let mut c = LocalCluster::load(&dir.0).unwrap();
    c.start(Duration::from_secs(20)).await.unwrap();
    let g = c
        .client()
        .unwrap()
        .get(b"kept", Consistency::ReadIndex)
        .await
        .unwrap();
    assert_eq!(g.value, b"yes");
    let root = c.dir.clone();
    c.purge().unwrap();
    assert!(!root.exists(), "down --purge deletes the directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_exits_during_up_is_reported_at_once_with_its_reason() {
    let _serial = common::serial().await;
    let dir = common::tempdirs::Dir::new("playground-exit");
    let started = Instant::now();
    // A drift at the election timeout is refused by raftd's flag check: every node exits.
    let e = LocalCluster::up(&dir.0, options(&["--max-clock-drift-ms=150"]))
        .await
        .unwrap_err()
        .to_string();
    println!("up with a bad flag: {e} ({:?})", started.elapsed());
    assert!(
        e.contains("exited") && e.contains("--max-clock-drift-ms"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reported only after {:?}",
        started.elapsed()
    );
    if let Ok(mut c) = LocalCluster::load(&dir.0) {
        let _ = c.down();
    }
}
