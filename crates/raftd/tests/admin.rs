//! Bootstrap and admin API against real processes: an empty node stays uninitialized until
//! told; Initialize, AddLearner, PromoteVoter, TransferLeader, RemoveMember and Snapshot are
//! idempotent; a joining node adopts the cluster id; HTTP endpoints answer.
#![allow(clippy::unwrap_used)]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_proto::pb::admin_client::AdminClient;
use raft_proto::pb::{InitializeRequest, MemberAddr, SnapshotRequest, StatusRequest};
use raft_proto::{Consistency, ErrorKind, RaftClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, buf)
}

async fn admin(addr: &str) -> AdminClient<tonic::transport::Channel> {
    let start = Instant::now();
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            return AdminClient::new(ch);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "raftd at {addr} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_idempotent_admin_calls() {
    let dir = common::tempdirs::Dir::new("admin");
    let mut nodes = Vec::new();
    let mut procs = Procs(Vec::new());
    for id in 1..=3u64 {
        let (g, h) = (
            format!("127.0.0.1:{}", port()),
            format!("127.0.0.1:{}", port()),
        );
        let log = std::fs::File::create(dir.0.join(format!("node-{id}.log"))).unwrap();
        procs.0.push(
            Command::new(common::raftd_bin())
                .args([
                    "--node-id",
                    &id.to_string(),
                    "--grpc-listen",
                    &g,
                    "--http-listen",
                    &h,
                ])
                .arg("--data-dir")
                .arg(dir.0.join(format!("node-{id}")))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        nodes.push((id, g, h));
    }
    let mut a1 = admin(&nodes[0].1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // An empty node never forms a cluster by itself.
    let s = a1.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        !s.initialized && !s.has_leader && s.cluster_id.is_empty(),
        "{s:?}"
    );
    let (code, body) = http_get(&nodes[0].2, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not initialized"));
    let c1 = RaftClient::new(std::slice::from_ref(&nodes[0].1))
        .unwrap()
        .with_deadline(Duration::from_millis(800));
    let e = c1.put(b"k", b"v").await.unwrap_err();
    assert!(
        e.not_applied() && e.message.contains("not initialized"),
        "{e:?}"
    );
    assert_ne!(e.kind, ErrorKind::OutcomeUnknown);

    // Initialize; repeating is harmless; another cluster id is refused.
    let init = |cid: &str| InitializeRequest {
        cluster_id: cid.into(),
        members: vec![MemberAddr {
            id: 1,
            grpc_addr: nodes[0].1.clone(),
            http_addr: nodes[0].2.clone(),
        }],
    };
    assert!(
        !a1.initialize(init("c1"))
            .await
            .unwrap()
            .into_inner()
            .already_initialized
    );
    assert!(
        a1.initialize(init("c1"))
            .await
            .unwrap()
            .into_inner()
            .already_initialized
    );
    let e = a1.initialize(init("c2")).await.unwrap_err();
    assert!(
        e.message().contains("already belongs to cluster \"c1\""),
        "{}",
        e.message()
    );

    let client = RaftClient::new(&[nodes[0].1.clone()]).unwrap();
    common::put_retry(&client, b"k", b"v").await;
    // Grow to 3 voters, learner first; every call twice.
    for (id, g, h) in &nodes[1..] {
        let r = client.add_learner(*id, g, h).await.unwrap();
        assert!(r.changed);
        assert!(!client.add_learner(*id, g, h).await.unwrap().changed);
        let r = client.promote_voter(*id).await.unwrap();
        assert!(r.changed);
        assert!(!client.promote_voter(*id).await.unwrap().changed);
    }
    let s = client.status().await.unwrap();
    assert_eq!(s.voters, 3);
    assert_eq!(s.members.iter().filter(|m| m.role == "voter").count(), 3);
    let mut a2 = admin(&nodes[1].1).await;
    let s2 = a2.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (s2.cluster_id.as_str(), s2.epoch, s2.initialized),
        ("c1", 1, true),
        "joined node adopts the cluster id"
    );

    // Transfer leadership, twice.
    let t = client.transfer_leader(2).await.unwrap();
    assert_eq!(t.leader_id, 2);
    assert_eq!(client.transfer_leader(2).await.unwrap().leader_id, 2);
    let g = client.get(b"k", Consistency::Linearizable).await.unwrap();
    assert_eq!(g.value, b"v");

    // Remove node 3, twice; unknown ids are a no-op.
    assert!(client.remove_member(3).await.unwrap().changed);
    assert!(!client.remove_member(3).await.unwrap().changed);
    assert!(!client.remove_member(77).await.unwrap().changed);
    let s = client.status().await.unwrap();
    assert_eq!(s.voters, 2);

    // Snapshot now.
    let snap = a2.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    assert!(snap.snapshot_index > 0);

    // HTTP endpoints.
    let (code, body) = http_get(&nodes[1].2, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&nodes[1].2, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&nodes[1].2, "/status").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"commit_index\"") && body.contains("\"cluster_id\":\"c1\""),
        "{body}"
    );
    let (code, body) = http_get(&nodes[1].2, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("raftd_commit_index{node=\"2\"}"), "{body}");
    drop(procs);
}
