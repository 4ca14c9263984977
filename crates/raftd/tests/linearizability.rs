//! Concurrent client histories under kill and pause faults pass stateright's linearizability
//! checker. Histories are split per key; "outcome unknown" writes stay in the history as
//! invocations without a return (they may or may not have taken effect), and the client that
//! issued one continues under a fresh id, as the checker requires.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_proto::{Consistency, ErrorKind, RaftClient};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

#[derive(Debug, Clone)]
enum Event {
    Invoke {
        key: usize,
        tid: (u64, u64),
        op: RegisterOp<String>,
    },
    Return {
        key: usize,
        tid: (u64, u64),
        ret: RegisterRet<String>,
    },
    /// The operation definitely had no effect (not applied / failed read): drop its invocation.
    Cancel { tid: (u64, u64) },
}

const KEYS: usize = 3;

async fn client_loop(
    id: u64,
    endpoints: String,
    history: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
) -> (u64, u64, u64) {
    let client = RaftClient::new(&[endpoints])
        .unwrap()
        .with_deadline(Duration::from_secs(2));
    let mut generation = 0u64;
    let (mut ok, mut unknown, mut failed) = (0, 0, 0);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = ((n * 7 + id * 3) % KEYS as u64) as usize;
        let tid = (id, generation);
        let is_write = (n + id).is_multiple_of(2);
        let op = if is_write {
            RegisterOp::Write(format!("c{id}-{n}"))
        } else {
            RegisterOp::Read
        };
        history.lock().unwrap().push(Event::Invoke {
            key,
            tid,
            op: op.clone(),
        });
        let kname = format!("lin/{key}");
        let res = match &op {
            RegisterOp::Write(v) => client
                .put(kname.as_bytes(), v.as_bytes())
                .await
                .map(|_| RegisterRet::WriteOk),
            RegisterOp::Read => {
                let lvl = match n % 3 {
                    0 => Consistency::Linearizable,
                    1 => Consistency::Lease,
                    _ => Consistency::ReadIndex,
                };
                client.get(kname.as_bytes(), lvl).await.map(|r| {
                    RegisterRet::ReadOk(if r.found {
                        String::from_utf8(r.value).unwrap()
                    } else {
                        String::new()
                    })
                })
            }
        };
        match res {
            Ok(ret) => {
                ok += 1;
                history
                    .lock()
                    .unwrap()
                    .push(Event::Return { key, tid, ret });
            }
            Err(e) if is_write && e.kind == ErrorKind::OutcomeUnknown => {
                unknown += 1;
                generation += 1;
            }
            Err(e) if !e.not_applied() && is_write => {
                unknown += 1;
                generation += 1;
            }
            Err(_) => {
                failed += 1;
                history.lock().unwrap().push(Event::Cancel { tid });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (ok, unknown, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_kill_and_pause_are_linearizable() {
    let (_serial, _dir, mut guard) = common::up("linearizability", 3, &[]).await;
    let c = &mut guard.0;
    let setup = c.client().unwrap();
    for k in 0..KEYS {
        common::put_retry(&setup, format!("lin/{k}").as_bytes(), b"").await;
    }
    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..4 {
        tasks.push(tokio::spawn(client_loop(
            id,
            c.endpoints(),
            history.clone(),
            stop.clone(),
        )));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let l1 = common::leader(c, Duration::from_secs(5)).await.unwrap();
    c.kill(l1).unwrap();
    println!("{:?}: killed leader {l1}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart(l1).unwrap();
    println!("{:?}: restarted {l1}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let l2 = common::leader(c, Duration::from_secs(5)).await.unwrap();
    c.pause(l2).unwrap();
    println!("{:?}: paused leader {l2}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.resume(l2).unwrap();
    println!("{:?}: resumed {l2}", start.elapsed());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut unknown, mut failed) = (0, 0, 0);
    for t in tasks {
        let (o, u, f) = t.await.unwrap();
        ok += o;
        unknown += u;
        failed += f;
    }
    println!(
        "history: {ok} completed, {unknown} outcome-unknown writes, {failed} failed (not applied) operations"
    );
    assert!(ok > 20, "too few completed operations to say anything");

    let events = history.lock().unwrap().clone();
    // Pre-pass: which invocations were cancelled (no effect). A client's thread id is reused
    // after a cancelled op, so match each Cancel to the open invocation of that id.
    let mut open: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    let mut cancelled_invocations = std::collections::HashSet::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Invoke { tid, .. } => {
                open.insert(*tid, i);
            }
            Event::Cancel { tid, .. } => {
                if let Some(inv) = open.remove(tid) {
                    cancelled_invocations.insert(inv);
                }
            }
            Event::Return { tid, .. } => {
                open.remove(tid);
            }
        }
    }
    // Feed the checker in real-time order; outcome-unknown writes stay invoked without a return.
    let mut per_key: BTreeMap<usize, LinearizabilityTester<(u64, u64), Register<String>>> =
        BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Invoke { key, tid, op } if !cancelled_invocations.contains(&i) => {
                let t = per_key
                    .entry(*key)
                    .or_insert_with(|| LinearizabilityTester::new(Register(String::new())));
                t.on_invoke(*tid, op.clone()).unwrap();
            }
            Event::Return { key, tid, ret } => {
                let t = per_key.get_mut(key).unwrap();
                t.on_return(*tid, ret.clone()).unwrap();
            }
            _ => {}
        }
    }
    for (key, t) in &per_key {
        println!("key lin/{key}: {} operations", t.len());
        assert!(
            t.is_consistent(),
            "history of key lin/{key} is not linearizable: {t:?}"
        );
    }
}

/// The checker itself rejects a stale read (guards against a test that cannot fail).
#[test]
fn checker_rejects_a_stale_read() {
    let mut t: LinearizabilityTester<(u64, u64), Register<String>> =
        LinearizabilityTester::new(Register(String::new()));
    t.on_invoke((0, 0), RegisterOp::Write("new".into()))
        .unwrap();
    t.on_return((0, 0), RegisterRet::WriteOk).unwrap();
    t.on_invoke((1, 0), RegisterOp::Read).unwrap();
    t.on_return((1, 0), RegisterRet::ReadOk(String::new()))
        .unwrap();
    assert!(!t.is_consistent());
}
