//! Membership safety against real processes in join mode `explicit`, as the operator runs
//! raftd: a member whose data directory was wiped is refused until it is admitted and rebuilt
//! learner-first, and a forced recovery from one survivor raises the epoch so members of the
//! old epoch are refused.
#![allow(clippy::unwrap_used)]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_proto::pb::admin_client::AdminClient;
use raft_proto::pb::{
    ForceRecoverRequest, InitializeRequest, JoinRequest, MemberAddr, StatusRequest, StatusResponse,
};
use raft_proto::{Consistency, RaftClient};

/// One raftd process with fixed ports and data dir, restartable.
struct Member {
    id: u64,
    grpc: String,
    http: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn new(dir: &std::path::Path, id: u64) -> Self {
        Member {
            id,
            grpc: format!("127.0.0.1:{}", port()),
            http: format!("127.0.0.1:{}", port()),
            data: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(common::raftd_bin())
            .args(["--node-id", &self.id.to_string()])
            .args(["--grpc-listen", &self.grpc, "--http-listen", &self.http])
            .args(["--join-mode", "explicit"])
            .arg("--data-dir")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> MemberAddr {
        MemberAddr {
            id: self.id,
            grpc_addr: self.grpc.clone(),
            http_addr: self.http.clone(),
        }
    }

    async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        let start = Instant::now();
        loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
            {
                return AdminClient::new(ch);
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node {} did not start",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Admin Join of this member into `cluster_id` at `epoch`.
    async fn join(
        &self,
        cluster_id: &str,
        epoch: u64,
    ) -> Result<tonic::Response<raft_proto::pb::JoinResponse>, tonic::Status> {
        self.admin()
            .await
            .join(JoinRequest {
                cluster_id: cluster_id.into(),
                epoch,
                ..Default::default()
            })
            .await
    }

    async fn status(&self) -> StatusResponse {
        self.admin()
            .await
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `n` empty members in join mode explicit and forms cluster `c1` the way the operator
/// does: Join every member but the first, then Initialize the first with all of them.
async fn form_cluster(dir: &std::path::Path, n: u64) -> Vec<Member> {
    let mut members: Vec<Member> = (1..=n).map(|id| Member::new(dir, id)).collect();
    for m in &mut members {
        m.start();
    }
    for m in &members[1..] {
        let r = m.join("c1", 1).await.unwrap().into_inner();
        assert!(!r.already_joined);
    }
    members[0]
        .admin()
        .await
        .initialize(InitializeRequest {
            cluster_id: "c1".into(),
            members: members.iter().map(Member::addr).collect(),
        })
        .await
        .unwrap();
    members
}

fn client_of(members: &[&Member]) -> RaftClient {
    let eps: Vec<String> = members.iter().map(|m| m.grpc.clone()).collect();
    RaftClient::new(&eps)
        .unwrap()
        .with_deadline(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_is_refused_until_admitted_and_rebuilt_learner_first() {
    let _serial = common::serial().await;
    let dir = common::tempdirs::Dir::new("wiped");
    let mut members = form_cluster(&dir.0, 3).await;
    let client = client_of(&members.iter().collect::<Vec<_>>());
    common::put_retry(&client, b"before-wipe", b"1").await;
    let s = members[2].status().await;
    assert_eq!(
        (s.cluster_id.as_str(), s.epoch, s.initialized),
        ("c1", 1, true),
        "{s:?}"
    );

    // Wipe node 3's data directory and restart it: it must not rejoin by itself.
    members[2].kill();
    std::fs::remove_dir_all(&members[2].data).unwrap();
    members[2].start();
    let wiped = &members[2];
    wait_for(
        "the wiped member to refuse the leader",
        Duration::from_secs(10),
        || async {
            let s = wiped.status().await;
            s.awaiting_join
                && !s.initialized
                && s.recent_refusal.contains("no data and no cluster identity")
        },
    )
    .await;
    let s = wiped.status().await;
    println!("wiped member refuses: {}", s.recent_refusal);
    assert!(
        s.cluster_id.is_empty() && s.join_mode == "explicit",
        "{s:?}"
    );
    // The cluster keeps serving with 2 of 3 voters.
    common::put_retry(&client, b"while-wiped", b"2").await;

    // Rebuild: remove it, admit it (Join), add it as a learner, promote it.
    assert!(client.remove_member(3).await.unwrap().changed);
    let first = wiped.join("c1", 1).await.unwrap().into_inner();
    assert!(!first.already_joined);
    let again = wiped.join("c1", 1).await.unwrap().into_inner();
    assert!(again.already_joined, "Join is idempotent");
    client
        .add_learner(3, &wiped.grpc, &wiped.http)
        .await
        .unwrap();
    let leader_commit = client.status().await.unwrap().commit_index;
    wait_for(
        "the rebuilt member to catch up",
        Duration::from_secs(15),
        || async {
            let s = wiped.status().await;
            s.initialized && s.applied_index >= leader_commit
        },
    )
    .await;
    client.promote_voter(3).await.unwrap();
    let status = client.status().await.unwrap();
    assert_eq!(status.voters, 3);
    let only3 = client_of(&[wiped]);
    let g = only3.get(b"while-wiped", Consistency::Stale).await.unwrap();
    assert_eq!(g.value, b"2");
    // A member holding state cannot be re-joined into another cluster.
    let e = wiped.join("other", 1).await.unwrap_err();
    assert!(
        e.message().contains("belongs to cluster \"c1\""),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_recovery_keeps_the_survivors_log_and_refuses_the_old_epoch() {
    let _serial = common::serial().await;
    let dir = common::tempdirs::Dir::new("recover");
    let mut members = form_cluster(&dir.0, 3).await;
    let client = client_of(&members.iter().collect::<Vec<_>>());
    for i in 0..20 {
        common::put_retry(&client, format!("k{i}").as_bytes(), b"v").await;
    }
    // A lock granted before the loss: its token is from epoch 1.
    let lock_before = client
        .acquire_lock("jobs/1", "worker-a", Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap();
    assert!(lock_before.granted);
    let mut node3 = members.pop().unwrap();
    let mut node2 = members.pop().unwrap();
    // Lose the majority: nodes 2 and 3 go away.
    node2.kill();
    node3.kill();
    let survivor = &members[0];
    let survivor_client = client_of(&[survivor]);
    // Without a quorum a write cannot be acknowledged: it fails as not applied or, when the
    // leader steps down after proposing it, with an unknown outcome.
    let e = survivor_client.put(b"during-loss", b"x").await.unwrap_err();
    println!("write during the loss: {e}");
    assert!(
        e.not_applied() || e.kind == raft_proto::ErrorKind::OutcomeUnknown,
        "{e:?}"
    );

    let recover = ForceRecoverRequest {
        cluster_id: "c1".into(),
        new_epoch: 2,
        ..Default::default()
    };
    let before = survivor.status().await;
    let r = survivor
        .admin()
        .await
        .force_recover(recover.clone())
        .await
        .unwrap()
        .into_inner();
    println!(
        "recovered: previous last log {}/{} (status said {}), membership at {}, epoch {}",
        r.previous_last_term,
        r.previous_last_index,
        before.last_log_index,
        r.membership_index,
        r.epoch
    );
    assert!(
        r.previous_last_index >= 20 && r.epoch == 2 && !r.already_recovered,
        "{r:?}"
    );
    assert_eq!(r.previous_last_term, before.last_log_term);
    // A wrong cluster id or a non-increasing epoch is refused; the same call again is a no-op.
    let e = survivor
        .admin()
        .await
        .force_recover(ForceRecoverRequest {
            cluster_id: "c9".into(),
            new_epoch: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("not \"c9\""), "{}", e.message());

    wait_for(
        "the survivor to lead alone",
        Duration::from_secs(10),
        || async {
            let s = survivor.status().await;
            s.role == "leader" && s.voters == 1 && s.epoch == 2
        },
    )
    .await;
    let again = survivor
        .admin()
        .await
        .force_recover(recover)
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_recovered, "{again:?}");
    for i in 0..20 {
        let g = survivor_client
            .get(format!("k{i}").as_bytes(), Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(g.value, b"v", "k{i} was acknowledged before the loss");
    }
    common::put_retry(&survivor_client, b"after-recovery", b"y").await;
    let s = survivor.status().await;
    assert_eq!(
        s.sm_epoch, 2,
        "the recovery replicated the new epoch: {s:?}"
    );
    // Fencing tokens issued after the recovery exceed every token of the old epoch.
    let after = survivor_client
        .acquire_lock("jobs/2", "worker-b", Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    assert!(after.granted);
    println!(
        "fencing token before recovery {} (epoch {}), after {} (epoch {})",
        lock_before.token,
        lock_before.token >> 40,
        after.token,
        after.token >> 40
    );
    assert!(after.token > lock_before.token && after.token >> 40 == 2);

    // Node 2 comes back with its old data (epoch 1): refused both ways, never a second cluster.
    node2.start();
    let old = &node2;
    wait_for(
        "the survivor to refuse the old-epoch member",
        Duration::from_secs(10),
        || async {
            let s = survivor.status().await;
            s.recent_refusal.contains("epoch")
                || old.status().await.recent_refusal.contains("epoch 2")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s_old = old.status().await;
    println!(
        "old member: role {} epoch {} refusal {:?}",
        s_old.role, s_old.epoch, s_old.recent_refusal
    );
    assert_ne!(s_old.role, "leader", "an old member must not lead anything");
    assert_eq!(s_old.epoch, 1);
    let e = old.join("c1", 2).await.unwrap_err();
    assert!(
        e.message().contains("delete its data directory"),
        "{}",
        e.message()
    );
    let s = survivor.status().await;
    assert_eq!((s.voters, s.role.as_str()), (1, "leader"));

    // Node 3 is rebuilt from an empty volume into epoch 2.
    std::fs::remove_dir_all(&node3.data).unwrap();
    node3.start();
    let fresh = &node3;
    fresh.join("c1", 2).await.unwrap();
    survivor_client
        .add_learner(3, &fresh.grpc, &fresh.http)
        .await
        .unwrap();
    let commit = survivor.status().await.commit_index;
    wait_for(
        "the rebuilt member to catch up",
        Duration::from_secs(15),
        || async {
            let s = fresh.status().await;
            s.initialized && s.applied_index >= commit
        },
    )
    .await;
    survivor_client.promote_voter(3).await.unwrap();
    let s = survivor.status().await;
    assert_eq!(s.voters, 2);
    common::put_retry(&survivor_client, b"two-voters-again", b"z").await;
}
