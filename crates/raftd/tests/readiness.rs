//! Readiness means "can serve now", and a planned stop drains: real raftd processes, faults from
//! the playground's fault layer, `/readyz` read over HTTP as a kubelet would.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::{Duration, Instant};

use raft_local::{LinkDirection, LocalCluster};
use raft_proto::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET /readyz: (ready, body).
async fn readyz(c: &LocalCluster, id: u64) -> Option<(bool, String)> {
    let addr = c.node(id).unwrap().http_addr.clone();
    let mut s = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let ready = text.starts_with("HTTP/1.1 200");
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    Some((ready, body))
}

/// Polls until node `id`'s readiness is `want`; returns how long that took and the last body.
async fn wait_ready(
    c: &LocalCluster,
    id: u64,
    want: bool,
    timeout: Duration,
) -> (Duration, String) {
    let start = Instant::now();
    loop {
        if let Some((ready, body)) = readyz(c, id).await
            && ready == want
        {
            return (start.elapsed(), body);
        }
        assert!(
            start.elapsed() < timeout,
            "node {id} did not turn {} within {timeout:?}",
            if want { "ready" } else { "unready" }
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_turns_unready_and_a_restarted_one_waits_for_its_leader() {
    let (_serial, _dir, mut guard) = common::up("readiness", 3, &[]).await;
    let leader = common::leader(&guard.0, Duration::from_secs(10))
        .await
        .unwrap();
    let follower = guard
        .0
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|i| *i != leader)
        .unwrap();
    let client = guard.0.client().unwrap();
    common::put_retry(&client, b"k", b"v").await;
    wait_ready(&guard.0, follower, true, Duration::from_secs(5)).await;
    wait_ready(&guard.0, leader, true, Duration::from_secs(5)).await;

    // Cut off from its leader (the operator and clients still reach it).
    guard
        .0
        .partition(follower, &[], LinkDirection::Both)
        .await
        .unwrap();
    let (took, why) = wait_ready(&guard.0, follower, false, Duration::from_secs(3)).await;
    println!("partitioned follower unready after {took:?}: {why}");
    assert!(
        took < Duration::from_millis(1500),
        "unready only after {took:?}"
    );
    assert!(why.contains("leader"), "{why}");
    guard.0.heal(Some(follower)).await.unwrap();
    let (took, _) = wait_ready(&guard.0, follower, true, Duration::from_secs(5)).await;
    println!("healed follower ready again after {took:?}");

    // Restarted while its leader's messages cannot reach it: it stays unready, however long.
    guard
        .0
        .partition(leader, &[follower], LinkDirection::Out)
        .await
        .unwrap();
    guard.0.restart(follower).unwrap();
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(2) {
        if let Some((ready, body)) = readyz(&guard.0, follower).await {
            assert!(
                !ready,
                "a restarted follower its leader never reached turned ready: {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, why) = wait_ready(&guard.0, follower, false, Duration::from_secs(1)).await;
    println!("restarted follower, leader cut off: {why}");
    guard.0.heal(Some(leader)).await.unwrap();
    let (took, _) = wait_ready(&guard.0, follower, true, Duration::from_secs(5)).await;
    println!("restarted follower ready {took:?} after its leader reached it");
    let s = client
        .status_of(&guard.0.node(follower).unwrap().grpc_addr)
        .await
        .unwrap();
    let l = client
        .status_of(&guard.0.node(leader).unwrap().grpc_addr)
        .await
        .unwrap();
    assert!(s.ready && l.ready, "status agrees with /readyz: {s:?}");
    assert!(
        s.applied_index + 1000 >= l.commit_index,
        "ready only once caught up"
    );
}

/// SIGTERM to the leader under a writer: it turns unready, hands leadership over, answers what
/// it holds, and exits; the writer sees no write fail and no "outcome unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_stop_of_the_leader_drains_without_an_unknown_outcome() {
    let (_serial, _dir, guard) = common::up("drain", 3, &[]).await;
    let c = &guard.0;
    let leader = common::leader(c, Duration::from_secs(10)).await.unwrap();
    let client = c.client().unwrap().with_deadline(Duration::from_secs(5));
    let pid = c.node(leader).unwrap().pid.unwrap();
    let start = Instant::now();
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    let mut signalled_at = None;
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(4) {
        if signalled_at.is_none() && start.elapsed() > Duration::from_secs(1) {
            // SAFETY: sending a signal to a child process of this test.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            signalled_at = Some(Instant::now());
        }
        let key = format!("drain/{i:06}");
        match client.put(key.as_bytes(), b"x").await {
            Ok(_) => acked.push(key),
            Err(e) => failures.push((key, e)),
        }
        i += 1;
    }
    println!(
        "drain: {} writes acknowledged, {} failed: {:?}",
        acked.len(),
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        failures
            .iter()
            .all(|(_, e)| e.kind != ErrorKind::OutcomeUnknown),
        "a planned stop left a write with an unknown outcome: {failures:?}"
    );
    assert!(
        failures.is_empty(),
        "writes failed during a planned stop: {failures:?}"
    );
    // The old leader exited by itself, and another node leads.
    let exited = Instant::now();
    while c.is_running(leader) {
        assert!(
            exited.elapsed() < Duration::from_secs(12),
            "the drained node did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_leader = common::leader(c, Duration::from_secs(5)).await.unwrap();
    assert_ne!(new_leader, leader);
    for key in &acked {
        let r = client
            .get(key.as_bytes(), raft_proto::Consistency::ReadIndex)
            .await
            .unwrap();
        assert!(r.found, "acknowledged write {key} is lost");
    }
    assert!(acked.len() > 50, "too few writes to show anything");
}
