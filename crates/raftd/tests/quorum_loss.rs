//! Kill 3 of 5 at once: the old leader steps down, writes fail with a clear unavailable
//! error within the deadline, only stale reads answer, restarting the 3 re-forms the cluster,
//! and no acknowledged write is lost. Prints how long each step took.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_proto::{Consistency, ErrorKind};

/// The clear "not applied" unavailable error, with the expected reachability in its message.
fn assert_no_quorum(e: &raft_proto::ClientError, expected: &str) {
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
    assert!(e.message.contains(expected), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_three_of_five_then_recover() {
    let (_serial, _dir, mut guard) = common::up("quorumloss", 5, &[]).await;
    let c = &mut guard.0;
    let leader = common::leader(c, Duration::from_secs(10)).await.unwrap();
    let client = Arc::new(c.client().unwrap());
    common::put_retry(&client, b"warmup", b"1").await;

    // A writer that records every acknowledged write and every error with its time.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let errors: Arc<Mutex<Vec<(Instant, ErrorKind, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, errors, stop) =
            (client.clone(), acked.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("w{i}"), format!("v{i}"));
                match client.put(k.as_bytes(), v.as_bytes()).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(k, v);
                    }
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push((Instant::now(), e.kind, e.message)),
                }
                i += 1;
            }
        })
    };
    // Let the writer get some writes acknowledged first.
    let warm = Instant::now();
    while acked.lock().unwrap().len() < 20 && warm.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let victims: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .take(3)
        .collect();
    // The majority goes at one instant: SIGSTOP freezes each victim at once (no waiting for an
    // exit), so none of them answers anything after `killed_at`; then they are killed.
    for v in &victims {
        c.pause(*v).unwrap();
    }
    let killed_at = Instant::now();
    for v in &victims {
        c.kill(*v).unwrap();
    }
    println!("killed nodes {victims:?} (leader was {leader})");

    // The old leader steps down.
    let old = common::node_client(c, leader);
    let step_down = loop {
        let s = old
            .status_of(&c.node(leader).unwrap().grpc_addr)
            .await
            .unwrap();
        if s.role != "leader" {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "old leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("old leader {leader} stepped down after {step_down:?}");

    // A fresh write gets the unavailable error within the deadline.
    let t = Instant::now();
    let e = client.put(b"during-outage", b"x").await.unwrap_err();
    let write_err_after = t.elapsed();
    println!(
        "write during outage failed after {write_err_after:?}: {}",
        e.message
    );
    assert_no_quorum(&e, "no quorum: 2 of 5 voters reachable, 3 needed");
    assert!(write_err_after < Duration::from_secs(5));
    let e = client
        .get(b"warmup", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(
        e.message.contains("no quorum"),
        "linearizable read during outage: {}",
        e.message
    );
    let stale = client.get(b"warmup", Consistency::Stale).await.unwrap();
    assert!(stale.stale && stale.found);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let first_unavailable = errors
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, kind, _)| *t > killed_at && *kind == ErrorKind::Unavailable)
        .map(|(t, _, _)| *t - killed_at)
        .min();
    println!("writer's first unavailable error after the kill: {first_unavailable:?}");
    let unknown = errors
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, k, _)| *k == ErrorKind::OutcomeUnknown)
        .count();
    println!("writes with outcome unknown (in flight when quorum was lost): {unknown}");

    // Restart the three: the cluster re-forms.
    let restart_at = Instant::now();
    for v in &victims {
        c.restart(*v).unwrap();
    }
    let rev = common::put_retry(&client, b"after-recovery", b"ok").await;
    let reformed = restart_at.elapsed();
    let new_leader = common::leader(c, Duration::from_secs(5)).await.unwrap();
    println!(
        "cluster re-formed {reformed:?} after restart (leader {new_leader}, first write at revision {rev})"
    );

    // No acknowledged write is lost.
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for (k, v) in &acked {
        let g = client
            .get(k.as_bytes(), Consistency::ReadIndex)
            .await
            .unwrap();
        assert!(g.found, "acknowledged write {k} lost");
        assert_eq!(g.value, v.as_bytes());
    }
    println!("all {} acknowledged writes present", acked.len());
}

/// Freeze (SIGSTOP) the leader and one follower of 3: their sockets still accept connections,
/// so a client that sent blindly would wait for its deadline and learn nothing. The client must
/// instead get the clear "no quorum ... (not applied)" error from the survivor, and keep getting
/// it quickly, while at most the writes already in flight to the frozen leader end "outcome
/// unknown". Prints how long each answer took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_majority_gives_a_clear_error_not_a_hang() {
    let (_serial, _dir, mut guard) = common::up("frozen", 3, &[]).await;
    let c = &mut guard.0;
    let leader = common::leader(c, Duration::from_secs(10)).await.unwrap();
    let client = c.client().unwrap();
    common::put_retry(&client, b"before", b"1").await;
    let follower = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();
    let survivor = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    c.pause(leader).unwrap();
    c.pause(follower).unwrap();
    let frozen_at = Instant::now();
    println!("froze leader {leader} and follower {follower}; node {survivor} survives");

    // Keys whose put was answered "not applied": none may exist afterwards.
    let mut refused: Vec<String> = Vec::new();
    let mut unknown = 0;
    let first_clear = loop {
        let t = Instant::now();
        let key = format!("frozen-{}", refused.len() + unknown);
        let e = client.put(key.as_bytes(), b"x").await.unwrap_err();
        println!(
            "put after {:?} failed in {:?}: {:?}: {}",
            frozen_at.elapsed(),
            t.elapsed(),
            e.kind,
            e.message
        );
        if e.kind == ErrorKind::Unavailable {
            refused.push(key);
            break frozen_at.elapsed();
        }
        assert_eq!(e.kind, ErrorKind::OutcomeUnknown, "{e:?}");
        unknown += 1;
        assert!(
            unknown <= 1,
            "more than the one write in flight to the frozen leader ended outcome unknown"
        );
    };
    println!("first clear no-quorum error {first_clear:?} after the freeze");
    for i in 0..3 {
        let t = Instant::now();
        let key = format!("refused-{i}");
        let e = client.put(key.as_bytes(), b"x").await.unwrap_err();
        refused.push(key);
        let took = t.elapsed();
        println!("next put failed in {took:?}: {}", e.message);
        assert_no_quorum(&e, "no quorum: 1 of 3 voters reachable, 2 needed");
        let e = client
            .get(b"before", Consistency::Linearizable)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "linearizable read: {e:?}");
    }

    c.resume(leader).unwrap();
    c.resume(follower).unwrap();
    common::put_retry(&client, b"after", b"ok").await;
    let g = client
        .get(b"before", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(g.value, b"1");
    for key in &refused {
        let g = client
            .get(key.as_bytes(), Consistency::Linearizable)
            .await
            .unwrap();
        assert!(!g.found, "{key} was answered 'not applied' but was applied");
    }
}
