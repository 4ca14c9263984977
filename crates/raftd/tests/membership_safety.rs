//! Membership safety against real processes in join mode `explicit`, as the operator runs
//! raftd: a member whose data directory was wiped is refused until it is admitted and rebuilt
//! learner-first, and a forced recovery from one survivor raises the epoch so members of the
//! old epoch are refused.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::{Duration, Instant};

use common::member::Member;
use raft_proto::pb::{ForceRecoverRequest, InitializeRequest};
use raft_proto::{Consistency, RaftClient};

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
        let r = m.join("c1", 1, "").await.unwrap().into_inner();
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
    let first = wiped.join("c1", 1, "").await.unwrap().into_inner();
    assert!(!first.already_joined);
    let again = wiped.join("c1", 1, "").await.unwrap().into_inner();
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
    let e = wiped.join("other", 1, "").await.unwrap_err();
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
        recovery_id: "plan-a".into(),
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
            recovery_id: "plan-b".into(),
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
    let e = old.join("c1", 2, "plan-a").await.unwrap_err();
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
    // Joining an epoch a recovery created needs that recovery's id.
    let e = fresh.join("c1", 2, "").await.unwrap_err();
    assert!(e.message().contains("recovery_id"), "{}", e.message());
    fresh.join("c1", 2, "plan-a").await.unwrap();
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

/// Two survivors recovered to the same epoch by two different recoveries are two different
/// clusters: each refuses the other, both ways, with the reason; and a recovery is refused
/// while the cluster it would replace still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recoveries_to_the_same_epoch_refuse_each_other() {
    let _serial = common::serial().await;
    let dir = common::tempdirs::Dir::new("recover-fork");
    let mut members = form_cluster(&dir.0, 3).await;
    let client = client_of(&members.iter().collect::<Vec<_>>());
    for i in 0..10 {
        common::put_retry(&client, format!("k{i}").as_bytes(), b"v").await;
    }
    let request = |recovery_id: &str, even_if_quorum_answers: bool| ForceRecoverRequest {
        cluster_id: "c1".into(),
        new_epoch: 2,
        recovery_id: recovery_id.into(),
        even_if_quorum_answers,
    };
    // A live cluster is not recovered, nor is a recovery without an id accepted.
    let e = members[0]
        .admin()
        .await
        .force_recover(request("plan-a", false))
        .await
        .unwrap_err();
    println!("recovery of a live cluster: {}", e.message());
    assert!(e.message().contains("would fork"), "{}", e.message());
    let e = members[0]
        .admin()
        .await
        .force_recover(request("", true))
        .await
        .unwrap_err();
    assert!(e.message().contains("recovery_id"), "{}", e.message());
    for m in members.iter_mut() {
        m.kill();
    }
    // Node 1 alone is recovered by plan A; then node 2 alone by plan B, to the same epoch.
    let (a, b) = (0, 1);
    members[a].start();
    let ra = members[a]
        .admin()
        .await
        .force_recover(request("plan-a", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ra.epoch, ra.recovery_id.as_str()), (2, "plan-a"));
    // The same recovery again is a no-op; another recovery to the same epoch is refused.
    let again = members[a]
        .admin()
        .await
        .force_recover(request("plan-a", false))
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_recovered && again.previous_last_index == ra.previous_last_index);
    let e = members[a]
        .admin()
        .await
        .force_recover(request("plan-b", false))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("already created") && e.message().contains("plan-a"),
        "{}",
        e.message()
    );
    members[a].kill();
    members[b].start();
    let rb = members[b]
        .admin()
        .await
        .force_recover(request("plan-b", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rb.epoch, rb.recovery_id.as_str()), (2, "plan-b"));
    // Both up: each leads its own one-voter cluster and refuses the other.
    members[a].start();
    let (ma, mb) = (&members[a], &members[b]);
    wait_for(
        "each survivor to lead its own cluster",
        Duration::from_secs(15),
        || async {
            let (sa, sb) = (ma.status().await, mb.status().await);
            sa.role == "leader" && sb.role == "leader"
        },
    )
    .await;
    // Adding the other survivor as a learner does not merge them: it refuses the leader, both
    // ways round.
    for (leader, learner, leader_plan) in [(ma, mb, "plan-a"), (mb, ma, "plan-b")] {
        client_of(&[leader])
            .add_learner(learner.id, &learner.grpc, &learner.http)
            .await
            .unwrap();
        wait_for(
            &format!("node {} to refuse {leader_plan}'s leader", learner.id),
            Duration::from_secs(10),
            || async { learner.status().await.recent_refusal.contains(leader_plan) },
        )
        .await;
    }
    let (sa, sb) = (ma.status().await, mb.status().await);
    assert_eq!(
        (sa.role.as_str(), sa.voters),
        ("leader", 1),
        "plan A's survivor stays its own"
    );
    println!(
        "plan A: epoch {} recovery {:?} refusal {:?}; plan B: epoch {} recovery {:?} refusal {:?}",
        sa.epoch, sa.recovery_id, sa.recent_refusal, sb.epoch, sb.recovery_id, sb.recent_refusal
    );
    assert_eq!(
        (sa.recovery_id.as_str(), sb.recovery_id.as_str()),
        ("plan-a", "plan-b")
    );
    assert_eq!(
        (sb.role.as_str(), sb.voters),
        ("leader", 1),
        "plan B's survivor stays its own"
    );
    let joined = mb.join("c1", 2, "plan-a").await;
    let e = joined.expect_err("plan B's survivor joined plan A's cluster");
    assert!(
        e.message().contains("delete its data directory"),
        "{}",
        e.message()
    );
}
