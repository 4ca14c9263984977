//! A paused (SIGSTOP) leader is replaced; after it resumes, linearizable reads sent to it never
//! return the value the new leader superseded.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::{Duration, Instant};

use raft_proto::RaftClient;
use raft_proto::pb::kv_client::KvClient;
use raft_proto::pb::{Consistency, GetRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_never_serves_superseded_value() {
    let (_serial, _dir, mut guard) = common::up("paused", 3, &[]).await;
    let c = &mut guard.0;
    let client = c.client().unwrap();
    common::put_retry(&client, b"k", b"old").await;
    let old = common::leader(c, Duration::from_secs(5)).await.unwrap();
    // Make sure the old leader has applied "old" and holds a fresh lease.
    let g = common::node_client(c, old)
        .get(b"k", Consistency::Lease)
        .await
        .unwrap();
    assert_eq!(g.value, b"old");

    c.pause(old).unwrap();
    let paused_at = Instant::now();
    let others: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.id != old)
        .map(|n| n.grpc_addr.clone())
        .collect();
    let others_client = RaftClient::new(&others).unwrap();
    let rev = common::put_retry(&others_client, b"k", b"new").await;
    println!(
        "old leader {old} paused; new value written through the new leader after {:?} (revision {rev})",
        paused_at.elapsed()
    );

    c.resume(old).unwrap();
    let resumed_at = Instant::now();
    let ch = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        c.node(old).unwrap().grpc_addr
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut kv = KvClient::new(ch);
    let (mut served, mut refused) = (0, 0);
    while resumed_at.elapsed() < Duration::from_millis(1500) {
        for lvl in [
            Consistency::Linearizable,
            Consistency::Lease,
            Consistency::ReadIndex,
        ] {
            match kv
                .get(GetRequest {
                    key: b"k".to_vec(),
                    consistency: lvl as i32,
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_ne!(
                        r.value, b"old",
                        "old leader served the superseded value at {lvl:?} ({})",
                        r.served_by
                    );
                    assert_eq!(r.value, b"new");
                    served += 1;
                }
                Err(_) => refused += 1,
            }
        }
    }
    println!(
        "after resume, the old leader answered {served} linearizable reads with the new value and refused {refused}"
    );
    // The old leader learns the new term and the cluster keeps working.
    let g = client.get(b"k", Consistency::Linearizable).await.unwrap();
    assert_eq!(g.value, b"new");
}
