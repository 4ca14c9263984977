//! Concurrent client histories under a seeded random schedule of faults pass stateright's
//! linearizability checker.
//!
//! 8 clients run puts, gets at every linearizable level, compare-and-swaps and deletes on 64
//! keys for 30 s (`RAFTD_LIN_SECS`), while a schedule drawn from a seed (`RAFTD_LIN_SEED`,
//! printed) kills and restarts, pauses, partitions (one node, the leader, asymmetric), delays
//! and transfers leadership. Histories are split per key; a write whose outcome is unknown stays
//! invoked without a return (it may or may not have applied) and its client continues under a
//! fresh id, as the checker requires. After the faults end every key is read once more, so an
//! acknowledged write that was lost fails the check.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_local::{LinkDirection, LocalCluster};
use raft_proto::pb::CasRequest;
use raft_proto::pb::cas_request::Expected;
use raft_proto::{Consistency, ErrorKind, RaftClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

const KEYS: usize = 64;
const CLIENTS: u64 = 8;

/// One key of the store: absent or a value.
#[derive(Clone, Debug, Default, PartialEq)]
struct KeySpec(Option<String>);

#[derive(Clone, Debug, PartialEq)]
enum KvOp {
    Put(String),
    Get,
    Delete,
    /// Swap to `new` if the key holds `expect` (absent when `None`).
    Cas {
        expect: Option<String>,
        new: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum KvRet {
    PutOk,
    Value(Option<String>),
    Deleted(bool),
    /// Whether the swap happened, and the value the comparison saw.
    Cas {
        succeeded: bool,
        seen: Option<String>,
    },
}

impl SequentialSpec for KeySpec {
    type Op = KvOp;
    type Ret = KvRet;

    fn invoke(&mut self, op: &KvOp) -> KvRet {
        match op {
            KvOp::Put(v) => {
                self.0 = Some(v.clone());
                KvRet::PutOk
            }
            KvOp::Get => KvRet::Value(self.0.clone()),
            KvOp::Delete => KvRet::Deleted(self.0.take().is_some()),
            KvOp::Cas { expect, new } => {
                let seen = self.0.clone();
                let succeeded = seen == *expect;
                if succeeded {
                    self.0 = Some(new.clone());
                }
                KvRet::Cas { succeeded, seen }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Event {
    Invoke {
        key: usize,
        tid: (u64, u64),
        op: KvOp,
    },
    Return {
        key: usize,
        tid: (u64, u64),
        ret: KvRet,
    },
    /// The operation definitely had no effect (not applied, or a failed read).
    Cancel { tid: (u64, u64) },
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    ok: u64,
    unknown: u64,
    not_applied: u64,
}

fn key_name(key: usize) -> String {
    format!("lin/{key:02}")
}

async fn run_op(
    client: &RaftClient,
    key: usize,
    op: &KvOp,
    level: Consistency,
) -> Result<KvRet, raft_proto::ClientError> {
    let k = key_name(key);
    match op {
        KvOp::Put(v) => client
            .put(k.as_bytes(), v.as_bytes())
            .await
            .map(|_| KvRet::PutOk),
        KvOp::Get => client
            .get(k.as_bytes(), level)
            .await
            .map(|r| KvRet::Value(r.found.then(|| String::from_utf8(r.value).unwrap()))),
        KvOp::Delete => client
            .delete(k.as_bytes())
            .await
            .map(|r| KvRet::Deleted(r.deleted)),
        KvOp::Cas { expect, new } => client
            .cas(CasRequest {
                key: k.into_bytes(),
                expected: Some(match expect {
                    Some(v) => Expected::ExpectedValue(v.clone().into_bytes()),
                    None => Expected::ExpectAbsent(true),
                }),
                new_value: new.clone().into_bytes(),
                delete: false,
            })
            .await
            .map(|r| KvRet::Cas {
                succeeded: r.succeeded,
                seen: r.found.then(|| String::from_utf8(r.current_value).unwrap()),
            }),
    }
}

async fn client_loop(
    id: u64,
    seed: u64,
    endpoints: String,
    history: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
) -> Counts {
    let client = RaftClient::new(&[endpoints])
        .unwrap()
        .with_deadline(Duration::from_secs(2));
    let mut rng = StdRng::seed_from_u64(seed ^ (id << 32));
    let mut generation = 0u64;
    let mut counts = Counts::default();
    // The last value this client saw per key, to aim its compare-and-swaps.
    let mut last_seen: BTreeMap<usize, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = rng.random_range(0..KEYS);
        let tid = (id, generation);
        let value = format!("c{id}-{n}");
        let op = match rng.random_range(0..10) {
            0..=3 => KvOp::Get,
            4..=6 => KvOp::Put(value),
            7 => KvOp::Delete,
            _ => KvOp::Cas {
                expect: last_seen.get(&key).cloned().flatten(),
                new: value,
            },
        };
        let level = [
            Consistency::Linearizable,
            Consistency::Lease,
            Consistency::ReadIndex,
        ][rng.random_range(0..3)];
        history.lock().unwrap().push(Event::Invoke {
            key,
            tid,
            op: op.clone(),
        });
        let is_write = op != KvOp::Get;
        match run_op(&client, key, &op, level).await {
            Ok(ret) => {
                counts.ok += 1;
                match &ret {
                    KvRet::Value(v) => {
                        last_seen.insert(key, v.clone());
                    }
                    KvRet::Cas { seen, .. } => {
                        last_seen.insert(key, seen.clone());
                    }
                    _ => {}
                }
                history
                    .lock()
                    .unwrap()
                    .push(Event::Return { key, tid, ret });
            }
            Err(e) if is_write && (e.kind == ErrorKind::OutcomeUnknown || !e.not_applied()) => {
                counts.unknown += 1;
                generation += 1;
            }
            Err(_) => {
                counts.not_applied += 1;
                history.lock().unwrap().push(Event::Cancel { tid });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    counts
}

/// One fault of the schedule, applied and then undone.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillRestart(u64),
    Pause(u64),
    IsolateLeader,
    Isolate(u64),
    AsymmetricFromLeader(u64),
    Delay(u64, u64),
    TransferLeader(u64),
}

fn draw_fault(rng: &mut StdRng, nodes: &[u64]) -> Fault {
    let node = nodes[rng.random_range(0..nodes.len())];
    match rng.random_range(0..7) {
        0 => Fault::KillRestart(node),
        1 => Fault::Pause(node),
        2 => Fault::IsolateLeader,
        3 => Fault::Isolate(node),
        4 => Fault::AsymmetricFromLeader(node),
        5 => Fault::Delay(node, rng.random_range(20..100)),
        _ => Fault::TransferLeader(node),
    }
}

/// Applies `fault`, holds it for `hold`, and undoes it. Returns what it did, for the log.
async fn apply(c: &mut LocalCluster, fault: Fault, hold: Duration) -> String {
    let leader = common::leader(c, Duration::from_secs(3)).await;
    match fault {
        Fault::KillRestart(n) => {
            c.kill(n).unwrap();
            tokio::time::sleep(hold).await;
            c.restart(n).unwrap();
            format!("killed and restarted node {n}")
        }
        Fault::Pause(n) => {
            c.pause(n).unwrap();
            tokio::time::sleep(hold).await;
            c.resume(n).unwrap();
            format!("paused node {n}")
        }
        Fault::IsolateLeader | Fault::Isolate(_) => {
            let n = match fault {
                Fault::Isolate(n) => n,
                _ => match leader {
                    Some(l) => l,
                    None => return "no leader to isolate".into(),
                },
            };
            c.partition(n, &[], LinkDirection::Both).await.unwrap();
            tokio::time::sleep(hold).await;
            c.heal(Some(n)).await.unwrap();
            format!("isolated node {n}")
        }
        Fault::AsymmetricFromLeader(n) => match leader {
            Some(l) if l != n => {
                c.partition(l, &[n], LinkDirection::Out).await.unwrap();
                tokio::time::sleep(hold).await;
                c.heal(Some(l)).await.unwrap();
                format!("leader {l}'s messages to node {n} lost")
            }
            _ => "no asymmetric cut (the node leads)".into(),
        },
        Fault::Delay(n, ms) => {
            c.delay(n, ms, &[]).await.unwrap();
            tokio::time::sleep(hold).await;
            c.heal(Some(n)).await.unwrap();
            format!("node {n}'s messages delayed {ms} ms")
        }
        Fault::TransferLeader(n) => {
            let client = c.client().unwrap();
            let r = client.transfer_leader(n).await;
            tokio::time::sleep(hold).await;
            format!(
                "leadership transfer to node {n}: {}",
                if r.is_ok() { "done" } else { "failed" }
            )
        }
    }
}

fn seed() -> u64 {
    std::env::var("RAFTD_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn duration() -> Duration {
    let secs = std::env::var("RAFTD_LIN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_a_random_fault_schedule_are_linearizable() {
    let seed = seed();
    println!("seed {seed} (rerun with RAFTD_LIN_SEED={seed})");
    let (_serial, _dir, mut guard) = common::up("linearizability", 3, &[]).await;
    let c = &mut guard.0;
    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        tasks.push(tokio::spawn(client_loop(
            id,
            seed,
            c.endpoints(),
            history.clone(),
            stop.clone(),
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let start = Instant::now();
    let mut faults = 0;
    while start.elapsed() < duration() {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let fault = draw_fault(&mut rng, &nodes);
        let hold = Duration::from_millis(rng.random_range(300..2500));
        let did = apply(c, fault, hold).await;
        faults += 1;
        println!("{:>6.1?}: {did} for {hold:?}", start.elapsed());
    }
    // Quiet period, then every key read once more by a client that saw no fault.
    c.heal(None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut totals = Counts::default();
    for t in tasks {
        let n = t.await.unwrap();
        totals.ok += n.ok;
        totals.unknown += n.unknown;
        totals.not_applied += n.not_applied;
    }
    let final_reader = c.client().unwrap().with_deadline(Duration::from_secs(10));
    for key in 0..KEYS {
        let tid = (1000, key as u64);
        history.lock().unwrap().push(Event::Invoke {
            key,
            tid,
            op: KvOp::Get,
        });
        let ret = run_op(&final_reader, key, &KvOp::Get, Consistency::ReadIndex)
            .await
            .unwrap();
        history
            .lock()
            .unwrap()
            .push(Event::Return { key, tid, ret });
    }
    println!(
        "seed {seed}: {faults} faults; {} completed, {} outcome unknown, {} not applied",
        totals.ok, totals.unknown, totals.not_applied
    );
    assert!(faults >= 5, "the schedule injected only {faults} faults");
    assert!(
        totals.ok > 500,
        "too few completed operations to say anything: {totals:?}"
    );

    let events = history.lock().unwrap().clone();
    // Which invocations were cancelled (no effect).
    let mut open: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut cancelled = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Invoke { tid, .. } => {
                open.insert(*tid, i);
            }
            Event::Cancel { tid } => {
                if let Some(inv) = open.remove(tid) {
                    cancelled.insert(inv);
                }
            }
            Event::Return { tid, .. } => {
                open.remove(tid);
            }
        }
    }
    let mut per_key: BTreeMap<usize, LinearizabilityTester<(u64, u64), KeySpec>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Invoke { key, tid, op } if !cancelled.contains(&i) => {
                per_key
                    .entry(*key)
                    .or_insert_with(|| LinearizabilityTester::new(KeySpec::default()))
                    .on_invoke(*tid, op.clone())
                    .unwrap();
            }
            Event::Return { key, tid, ret } => {
                per_key
                    .get_mut(key)
                    .unwrap()
                    .on_return(*tid, ret.clone())
                    .unwrap();
            }
            _ => {}
        }
    }
    let checked = Instant::now();
    for (key, t) in &per_key {
        assert!(
            t.is_consistent(),
            "seed {seed}: history of key {} is not linearizable: {t:?}",
            key_name(*key)
        );
    }
    println!(
        "seed {seed}: {} keys, {} operations checked in {:?}",
        per_key.len(),
        per_key.values().map(|t| t.len()).sum::<usize>(),
        checked.elapsed()
    );
}

/// The checker itself rejects a stale read, a lost write and a wrong compare-and-swap (guards
/// against a test that cannot fail).
#[test]
fn checker_rejects_stale_reads_lost_writes_and_wrong_swaps() {
    let tester = || LinearizabilityTester::<(u64, u64), KeySpec>::new(KeySpec::default());
    let mut t = tester();
    t.on_invoke((0, 0), KvOp::Put("new".into())).unwrap();
    t.on_return((0, 0), KvRet::PutOk).unwrap();
    t.on_invoke((1, 0), KvOp::Get).unwrap();
    t.on_return((1, 0), KvRet::Value(None)).unwrap();
    assert!(!t.is_consistent(), "stale read accepted");

    let mut t = tester();
    t.on_invoke((0, 0), KvOp::Put("a".into())).unwrap();
    t.on_return((0, 0), KvRet::PutOk).unwrap();
    t.on_invoke(
        (1, 0),
        KvOp::Cas {
            expect: None,
            new: "b".into(),
        },
    )
    .unwrap();
    t.on_return(
        (1, 0),
        KvRet::Cas {
            succeeded: true,
            seen: None,
        },
    )
    .unwrap();
    assert!(
        !t.is_consistent(),
        "a swap that expected an absent key after a put was accepted"
    );

    let mut t = tester();
    t.on_invoke((0, 0), KvOp::Put("a".into())).unwrap();
    t.on_invoke((1, 0), KvOp::Get).unwrap();
    t.on_return((1, 0), KvRet::Value(Some("a".into()))).unwrap();
    assert!(t.is_consistent(), "an unknown write may have applied");
}
