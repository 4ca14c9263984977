//! Network faults on real raftd processes, through the playground's fault layer (messages
//! dropped per peer and direction; clients still reach every node): a leadership transfer while
//! the old leader is cut off, an isolated leader, an asymmetric partition, and a voter that
//! restarts while the old leader's lease still counts its ack.
//!
//! Each test reads from the node that may be stale directly (no leader following), so a stale
//! answer cannot hide behind a redirect, and checks every read against the acknowledged writes.
#![allow(clippy::unwrap_used)]
mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft_local::{LinkDirection, LocalCluster};
use raft_proto::pb;
use raft_proto::pb::kv_client::KvClient;
use raft_proto::{Consistency, RaftClient};
use tonic::transport::Channel;

/// Long timeouts, so that the windows these tests aim at are wide on a busy 2-core machine:
/// a 2 s lease (1.99 s for reads).
const SLOW: [&str; 3] = [
    "--election-timeout-min-ms=1000",
    "--election-timeout-max-ms=2000",
    "--heartbeat-ms=100",
];

async fn kv(c: &LocalCluster, id: u64) -> KvClient<Channel> {
    let addr = format!("http://{}", c.node(id).unwrap().grpc_addr);
    KvClient::new(
        tonic::transport::Endpoint::from_shared(addr)
            .unwrap()
            .connect_lazy(),
    )
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// A read of `key` asked of node `id` (a follower forwards it to its leader): the value
/// (`None` when absent) and the node that served it, or the refusal.
async fn read_served(
    c: &LocalCluster,
    id: u64,
    key: &str,
    level: Consistency,
) -> Result<(Option<String>, u64), String> {
    let mut client = kv(c, id).await;
    let r = client
        .get(request(
            pb::GetRequest {
                key: key.as_bytes().to_vec(),
                consistency: level as i32,
            },
            Duration::from_millis(800),
        ))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let value = r
        .found
        .then(|| String::from_utf8_lossy(&r.value).to_string());
    Ok((value, r.served_by_node))
}

/// A read of `key` asked of node `id`; see `read_served`.
async fn read_at(
    c: &LocalCluster,
    id: u64,
    key: &str,
    level: Consistency,
) -> Result<Option<String>, String> {
    read_served(c, id, key, level).await.map(|(v, _)| v)
}

async fn put_at(c: &LocalCluster, id: u64, key: &str, value: &str) -> Result<u64, String> {
    let mut client = kv(c, id).await;
    client
        .put(request(
            pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            },
            Duration::from_secs(2),
        ))
        .await
        .map(|r| r.into_inner().revision)
        .map_err(|s| s.message().to_string())
}

async fn role_of(c: &LocalCluster, id: u64) -> Option<String> {
    let client = RaftClient::new(&[c.node(id).unwrap().grpc_addr.clone()]).unwrap();
    client
        .status_of(&c.node(id).unwrap().grpc_addr)
        .await
        .ok()
        .map(|s| s.role)
}

async fn wait_until_leader(c: &LocalCluster, id: u64, timeout: Duration) -> Duration {
    let start = Instant::now();
    while role_of(c, id).await.as_deref() != Some("leader") {
        assert!(
            start.elapsed() < timeout,
            "node {id} did not become leader within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// The leader every running node agrees on (after a heal, an old leader may still believe it
/// leads for a moment).
async fn settled_leader(c: &LocalCluster, timeout: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let mut views = Vec::new();
        for n in &c.nodes {
            let client = RaftClient::new(std::slice::from_ref(&n.grpc_addr)).unwrap();
            views.push(client.status_of(&n.grpc_addr).await.ok());
        }
        let leaders: Vec<u64> = views
            .iter()
            .flatten()
            .filter(|s| s.role == "leader")
            .map(|s| s.id)
            .collect();
        if let [leader] = leaders[..]
            && views
                .iter()
                .all(|v| v.as_ref().is_some_and(|s| s.leader_id == leader))
        {
            return leader;
        }
        assert!(
            start.elapsed() < timeout,
            "no settled leader within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LEVELS: [Consistency; 3] = [
    Consistency::Lease,
    Consistency::Linearizable,
    Consistency::ReadIndex,
];

/// The old leader hands leadership over while it hears nobody (its messages still go out, so
/// the transfer reaches the target, but no reply or newer leader's message comes back). The new
/// leader commits a newer value at once; the old leader, still believing it leads, must not
/// serve the superseded value at any linearizable level.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_transferred_leadership_never_serves_the_superseded_value() {
    let (_serial, _dir, guard) = common::up("transfer-cut", 3, &SLOW).await;
    let c = &guard.0;
    let old = common::leader(c, Duration::from_secs(10)).await.unwrap();
    let target = c.nodes.iter().map(|n| n.id).find(|id| *id != old).unwrap();
    put_at(c, old, "k", "v1").await.unwrap();
    // Everything into the old leader is lost from here on.
    c.partition(old, &[], LinkDirection::In).await.unwrap();
    let cut_at = Instant::now();
    let admin = RaftClient::new(&[c.node(old).unwrap().grpc_addr.clone()]).unwrap();
    let transfer = tokio::spawn(async move { admin.transfer_leader(target).await });
    let elected_in = wait_until_leader(c, target, Duration::from_secs(5)).await;
    let mut acked = false;
    let start = Instant::now();
    while !acked && start.elapsed() < Duration::from_secs(5) {
        acked = put_at(c, target, "k", "v2").await.is_ok();
    }
    assert!(acked, "the new leader did not commit v2");
    let v2_acked_after = cut_at.elapsed();
    let mut answers = Vec::new();
    for level in LEVELS {
        let r = read_at(c, old, "k", level).await;
        answers.push((level, r));
    }
    let old_status = RaftClient::new(&[c.node(old).unwrap().grpc_addr.clone()])
        .unwrap()
        .status_of(&c.node(old).unwrap().grpc_addr)
        .await
        .unwrap();
    println!(
        "old leader's status: role {} term {} leader {}",
        old_status.role, old_status.term, old_status.leader_id
    );
    println!(
        "transfer: target {target} led {elected_in:?} after the transfer; v2 acked {v2_acked_after:?} after the cut (the lease is 1.99 s); old leader answered {answers:?}"
    );
    assert!(
        v2_acked_after < Duration::from_millis(1900),
        "v2 was acked only {v2_acked_after:?} after the cut: the old leader's lease may have lapsed, so this run proves nothing"
    );
    for (level, r) in &answers {
        assert_ne!(
            r.as_ref().ok().cloned().flatten().as_deref(),
            Some("v1"),
            "stale read at {level:?} from the old leader after the transfer"
        );
    }
    c.heal(None).await.unwrap();
    let _ = transfer.await;
}

/// Both followers restart (their in-memory promise not to vote while they hear a leader is
/// gone) right after the leader is cut off, while its lease still counts their last acks. If a
/// restarted voter granted a vote at once, a new leader could commit while the old one still
/// serves lease reads. Two rounds: the window is random, the rule must hold in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_voters_do_not_elect_a_new_leader_within_the_old_leaders_lease() {
    // A 2 s lease with election timers from 0.5 s, so that without the rule an election lands
    // inside the old leader's lease most of the time.
    let flags = [
        "--election-timeout-min-ms=500",
        "--election-timeout-max-ms=2000",
        "--heartbeat-ms=100",
    ];
    let (_serial, _dir, mut guard) = common::up("restart-vote", 3, &flags).await;
    for round in 1..=2 {
        let old = settled_leader(&guard.0, Duration::from_secs(10)).await;
        let value = format!("v{round}");
        let start = Instant::now();
        while put_at(&guard.0, old, "k", &value).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no write before round {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let followers: Vec<u64> = guard
            .0
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| *id != old)
            .collect();
        guard
            .0
            .partition(old, &[], LinkDirection::Both)
            .await
            .unwrap();
        let cut_at = Instant::now();
        for f in &followers {
            guard.0.restart(*f).unwrap();
        }
        let newer = format!("{value}-superseded");
        let mut acked_after = None;
        'elected: while cut_at.elapsed() < Duration::from_secs(10) {
            for f in &followers {
                if put_at(&guard.0, *f, "k", &newer).await.is_ok() {
                    acked_after = Some(cut_at.elapsed());
                    break 'elected;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let acked_after =
            acked_after.expect("the restarted followers elected no leader within 10 s");
        let answer = read_at(&guard.0, old, "k", Consistency::Lease).await;
        println!(
            "round {round}: a new leader committed {acked_after:?} after the cut; the old leader's lease read then answered {answer:?}"
        );
        assert_ne!(
            answer.ok().flatten(),
            Some(value.clone()),
            "stale lease read from the old leader: restarted voters elected a new leader within its lease"
        );
        assert!(
            acked_after >= Duration::from_millis(1990),
            "round {round}: a new leader committed {acked_after:?} after the cut, within the old leader's 1.99 s lease"
        );
        guard.0.heal(None).await.unwrap();
    }
}

/// One acknowledged write of the register, and when its acknowledgement arrived.
#[derive(Clone, Copy, Debug)]
struct Ack {
    value: u64,
    at: Instant,
}

/// One read of the register at one node.
#[derive(Clone, Debug)]
struct Read {
    node: u64,
    served_by: u64,
    level: Consistency,
    started: Instant,
    value: u64,
}

/// A register history: one writer writes 1, 2, 3, ... to `reg` (and each value to a unique
/// key `w/N`); readers read `reg` from every node at every linearizable level.
#[derive(Default)]
struct History {
    acks: Vec<Ack>,
    reads: Vec<Read>,
    unknown: u64,
}

impl History {
    /// Every read returned at least the newest value acknowledged before it started.
    fn check_no_stale_read(&self) -> Result<usize, String> {
        for r in &self.reads {
            let newest_acked = self
                .acks
                .iter()
                .filter(|a| a.at < r.started)
                .map(|a| a.value)
                .max()
                .unwrap_or(0);
            if r.value < newest_acked {
                return Err(format!(
                    "stale read: node {} at {:?} returned {} after {} was acknowledged",
                    r.node, r.level, r.value, newest_acked
                ));
            }
        }
        Ok(self.reads.len())
    }
}

/// Runs the register workload against `c` for `duration` while `faults` runs, then checks the
/// history and that every acknowledged write is present.
async fn register_workload<F, Fut>(c: &LocalCluster, duration: Duration, faults: F) -> History
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = c.client().unwrap().with_deadline(Duration::from_secs(2));
        let history = history.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next = 1u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let unique = client
                    .put(
                        format!("w/{next:08}").as_bytes(),
                        next.to_string().as_bytes(),
                    )
                    .await;
                let reg = match unique {
                    Ok(_) => client.put(b"reg", next.to_string().as_bytes()).await,
                    Err(e) => Err(e),
                };
                match reg {
                    Ok(_) => history.lock().unwrap().acks.push(Ack {
                        value: next,
                        at: Instant::now(),
                    }),
                    Err(e) if e.not_applied() => {}
                    Err(_) => history.lock().unwrap().unknown += 1,
                }
                next += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut readers = Vec::new();
    for n in &c.nodes {
        let id = n.id;
        let c = c.clone();
        let history = history.clone();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let level = LEVELS[i % LEVELS.len()];
                i += 1;
                let started = Instant::now();
                if let Ok((v, served_by)) = read_served(&c, id, "reg", level).await {
                    let value = v.and_then(|v| v.parse().ok()).unwrap_or(0);
                    history.lock().unwrap().reads.push(Read {
                        node: id,
                        served_by,
                        level,
                        started,
                        value,
                    });
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }));
    }
    let started = Instant::now();
    faults().await;
    if let Some(left) = duration.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let h = std::mem::take(&mut *history.lock().unwrap());
    // Every acknowledged write is there, read from the leader at the end.
    c.heal(None).await.unwrap();
    let client = c.client().unwrap();
    for a in &h.acks {
        let key = format!("w/{:08}", a.value);
        let mut found = None;
        for _ in 0..100 {
            if let Ok(r) = client.get(key.as_bytes(), Consistency::ReadIndex).await {
                found = Some(r.found);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(found, Some(true), "acknowledged write {key} is lost");
    }
    h
}

/// The leader is cut off from everyone (clients still reach it): it stops serving reads within
/// its lease, a new leader serves within about a second, and healing causes no stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_stops_serving_and_healing_causes_no_stale_read() {
    let (_serial, _dir, guard) = common::up("isolate-leader", 3, &[]).await;
    let c = &guard.0;
    let old = common::leader(c, Duration::from_secs(10)).await.unwrap();
    let cut = Arc::new(Mutex::new(None::<Instant>));
    let new_leader_after = Arc::new(Mutex::new(None::<Duration>));
    let history = register_workload(c, Duration::from_secs(6), || {
        let cut = cut.clone();
        let new_leader_after = new_leader_after.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            c.partition(old, &[], LinkDirection::Both).await.unwrap();
            let at = Instant::now();
            *cut.lock().unwrap() = Some(at);
            // A new leader serving: a write through another node is acknowledged.
            let others: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|i| *i != old).collect();
            'found: while at.elapsed() < Duration::from_secs(5) {
                for id in &others {
                    if role_of(c, *id).await.as_deref() == Some("leader")
                        && put_at(c, *id, "probe", "x").await.is_ok()
                    {
                        *new_leader_after.lock().unwrap() = Some(at.elapsed());
                        break 'found;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.heal(Some(old)).await.unwrap();
        }
    })
    .await;
    let cut_at = cut.lock().unwrap().unwrap();
    let lease = Duration::from_millis(300);
    let late: Vec<&Read> = history
        .reads
        .iter()
        .filter(|r| r.served_by == old && r.started > cut_at + lease)
        .filter(|r| r.started < cut_at + Duration::from_secs(2))
        .collect();
    let new_leader_after = new_leader_after
        .lock()
        .unwrap()
        .expect("no new leader served within 5 s");
    let reads = history.check_no_stale_read().unwrap();
    println!(
        "isolated leader: new leader served {new_leader_after:?} after the cut; {reads} reads checked, {} acked writes, {} outcome unknown; old leader served {} reads later than one lease after the cut",
        history.acks.len(),
        history.unknown,
        late.len()
    );
    assert!(
        late.is_empty(),
        "the isolated leader served reads after its lease: {late:?}"
    );
    assert!(
        new_leader_after < Duration::from_secs(2),
        "a new leader served only {new_leader_after:?} after the old one was cut off"
    );
    assert!(
        history.acks.len() > 10 && reads > 100,
        "too little traffic to show anything"
    );
}

/// Asymmetric: the leader's messages to one follower are lost, while that follower's messages
/// still reach the leader (and the third node hears both). No stale read, no lost write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_asymmetric_partition_causes_no_stale_read_and_no_lost_write() {
    let (_serial, _dir, guard) = common::up("asymmetric", 3, &[]).await;
    let c = &guard.0;
    let leader = common::leader(c, Duration::from_secs(10)).await.unwrap();
    let deaf = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .unwrap();
    let history = register_workload(c, Duration::from_secs(6), || async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.partition(leader, &[deaf], LinkDirection::Out)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.heal(None).await.unwrap();
    })
    .await;
    let reads = history.check_no_stale_read().unwrap();
    println!(
        "asymmetric (leader {leader} -> {deaf} cut): {reads} reads checked, {} acked writes, {} outcome unknown",
        history.acks.len(),
        history.unknown
    );
    assert!(
        history.acks.len() > 10 && reads > 100,
        "too little traffic to show anything"
    );
}
