//! The pipelined client stream (`Kv.Pipeline`) on real raftd processes: busy clients share
//! batches, every op gets the answer its unary call would, and a bad stream ends alone.
#![allow(clippy::unwrap_used)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use raft_proto::pb;
use raft_proto::pb::kv_client::KvClient;
use raft_proto::{Consistency, ErrorKind, RaftClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn metric(http_addr: &str, name: &str) -> u64 {
    let mut s = tokio::net::TcpStream::connect(http_addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find(|l| l.starts_with(&format!("raftd_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_clients_share_batches_and_get_their_own_answers() {
    let (_serial, _dir, guard) = common::up("pipeline-batches", 3, &[]).await;
    let c = guard.0.clone();
    let leader_id = common::leader(&c, Duration::from_secs(10)).await.unwrap();
    let leader = c.nodes.iter().find(|n| n.id == leader_id).unwrap();
    let client = Arc::new(c.client().unwrap());
    let (batches_before, ops_before) = (
        metric(&leader.http_addr, "pipeline_batches_total").await,
        metric(&leader.http_addr, "pipeline_ops_total").await,
    );
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u32 {
                let key = format!("p/{t}/{i}");
                let value = format!("{t}:{i}");
                let put = client.put(key.as_bytes(), value.as_bytes()).await.unwrap();
                let got = client
                    .get(key.as_bytes(), Consistency::Lease)
                    .await
                    .unwrap();
                // Each caller gets its own op's answer, never a neighbour's from the batch.
                assert_eq!(got.value, value.as_bytes(), "{key}");
                assert_eq!(got.mod_revision, put.revision, "{key}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batches = metric(&leader.http_addr, "pipeline_batches_total").await - batches_before;
    let ops = metric(&leader.http_addr, "pipeline_ops_total").await - ops_before;
    println!(
        "64 clients x 40 ops: {ops} ops in {batches} batches ({:.1} ops per batch)",
        ops as f64 / batches.max(1) as f64
    );
    assert!(ops >= 64 * 40, "every op went by the pipeline: {ops}");
    assert!(
        ops as f64 >= 2.0 * batches as f64,
        "concurrent ops share batches: {ops} ops in {batches} batches"
    );

    // The same errors as the unary calls, from both clients.
    let unary = c.client().unwrap().with_pipelining(false);
    for (name, cl) in [("pipelined", &*client), ("unary", &unary)] {
        let e = cl.put(&[b'k'; 5000], b"v").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{name}: {e}");
        assert!(
            e.message.contains("key") && e.message.contains("exceeds"),
            "{name}: {e}"
        );
        let e = cl.put(b"", b"v").await.unwrap_err();
        assert!(e.message.contains("key: must not be empty"), "{name}: {e}");
        // Oversized values are sent by unary call even when pipelining, and refused by name.
        let e = cl.put(b"k", &vec![0u8; 2 * 1024 * 1024]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{name}: {e}");
        assert!(e.message.contains("value"), "{name}: {e}");
    }

    // A client that knows only a follower is forwarded to the leader through its pipeline.
    let follower = c.nodes.iter().find(|n| n.id != leader_id).unwrap();
    let via_follower = RaftClient::new(std::slice::from_ref(&follower.grpc_addr)).unwrap();
    let p = via_follower.put(b"via-follower", b"1").await.unwrap();
    let g = via_follower
        .get(b"via-follower", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(g.value, b"1");
    assert!(g.revision >= p.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stream_ends_alone_and_the_node_keeps_serving() {
    let (_serial, _dir, guard) = common::up("pipeline-bad", 3, &[]).await;
    let c = guard.0.clone();
    let leader_id = common::leader(&c, Duration::from_secs(10)).await.unwrap();
    let leader = c.nodes.iter().find(|n| n.id == leader_id).unwrap();
    let client = c.client().unwrap();
    client.put(b"before", b"1").await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", leader.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = KvClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024);

    // Ops that make no sense get per-op errors naming the field; the stream carries on.
    let ops = vec![
        pb::KvOp {
            id: 1,
            timeout_ms: 0,
            op: None,
        },
        pb::KvOp {
            id: 2,
            timeout_ms: 1000,
            op: Some(pb::kv_op::Op::Get(pb::GetRequest {
                key: b"before".to_vec(),
                consistency: 42,
            })),
        },
        pb::KvOp {
            id: 3,
            timeout_ms: 1000,
            op: Some(pb::kv_op::Op::Get(pb::GetRequest {
                key: b"before".to_vec(),
                consistency: Consistency::Lease as i32,
            })),
        },
    ];
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(pb::KvOpBatch { ops }).unwrap();
    let mut answers = raw
        .pipeline(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        }))
        .await
        .unwrap()
        .into_inner();
    let mut results = std::collections::HashMap::new();
    while results.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("answers within 5 s")
            .unwrap()
            .expect("stream open");
        for r in batch.results {
            results.insert(r.id, r.result.unwrap());
        }
    }
    match &results[&1] {
        pb::kv_op_result::Result::Error(e) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
            assert!(
                e.message.contains("op") && e.message.contains("not set"),
                "{}",
                e.message
            );
            assert_eq!(
                e.metadata.get("raft-outcome").map(String::as_str),
                Some("not-applied")
            );
        }
        other => panic!("op 1: expected an error, got {other:?}"),
    }
    match &results[&2] {
        pb::kv_op_result::Result::Error(e) => {
            assert!(e.message.contains("consistency"), "{}", e.message)
        }
        other => panic!("op 2: expected an error, got {other:?}"),
    }
    match &results[&3] {
        pb::kv_op_result::Result::Get(g) => assert_eq!(g.value, b"1"),
        other => panic!("op 3: expected the value, got {other:?}"),
    }

    // A message over the stream's size limit ends that stream with an error...
    tx.send(pb::KvOpBatch {
        ops: vec![pb::KvOp {
            id: 4,
            timeout_ms: 1000,
            op: Some(pb::kv_op::Op::Put(pb::PutRequest {
                key: b"huge".to_vec(),
                value: vec![0; 20 * 1024 * 1024],
                ..Default::default()
            })),
        }],
    })
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("the stream ends within 5 s");
    match end {
        Err(status) => {
            println!("oversized batch ended the stream: {status}");
            assert!(
                status.message().contains("could not be read")
                    && status.message().contains("not applied"),
                "{status}"
            );
        }
        other => panic!("the oversized batch must end the stream with a reason: {other:?}"),
    }

    // ...and nothing else: the node serves every client, the huge put was not applied.
    client.put(b"after", b"2").await.unwrap();
    let g = client.get(b"after", Consistency::Lease).await.unwrap();
    assert_eq!(g.value, b"2");
    let g = client
        .get(b"huge", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(!g.found, "the refused batch was not applied");
}
