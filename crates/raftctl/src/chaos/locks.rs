//! The lock part of the chaos workload and its safety checks: workers contend for a few locks,
//! write under their fencing token while they hold one, and release; the history is checked for
//! - distinct grants with the same token (a token handed out twice),
//! - a grant acknowledged before another was asked for, with a token not below it (tokens
//!   must strictly increase in real-time order),
//! - a fenced write applied although a grant with a newer token had been acknowledged before
//!   the write was sent (a superseded holder's write accepted outside its grant).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raft_proto::RaftClient;
use serde::Serialize;

use super::workload::Rng;

/// Locks the workers contend for.
pub const LOCKS: usize = 2;
/// No worker runs more than this many acquire rounds.
const MAX_ROUNDS: usize = 5_000;

/// A grant a worker was told it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub lock: String,
    pub holder: String,
    pub token: u64,
    pub invoke_ns: i64,
    pub complete_ns: i64,
}

/// A fenced write a worker made under a token, and whether it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct FencedWrite {
    pub lock: String,
    pub holder: String,
    pub token: u64,
    pub invoke_ns: i64,
    pub complete_ns: i64,
    /// Acknowledged as applied.
    pub applied: bool,
    /// Refused as fenced (a stale token).
    pub fenced: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct LockHistory {
    pub grants: Vec<Grant>,
    pub writes: Vec<FencedWrite>,
}

fn ns(base: Instant) -> i64 {
    base.elapsed().as_nanos() as i64
}

/// One worker: acquire a lock (waiting a little), write under its token, sometimes pause past
/// a short lease (as a stalled holder would), write again, release.
pub async fn worker(
    id: usize,
    seed: u64,
    endpoints: String,
    base: Instant,
    stop: Arc<AtomicBool>,
) -> LockHistory {
    let mut h = LockHistory::default();
    let Ok(client) = RaftClient::new(&[endpoints]) else {
        return h;
    };
    let client = client.with_deadline(Duration::from_secs(2));
    let mut rng = Rng::new(seed.wrapping_mul(7_919).wrapping_add(id as u64));
    let holder = format!("worker-{id}");
    for _ in 0..MAX_ROUNDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let lock = format!("chaos-lock/{}", rng.range(0, LOCKS as u64));
        let invoke_ns = ns(base);
        let ttl = Duration::from_millis(rng.range(300, 1500));
        let granted = client
            .acquire_lock(&lock, &holder, ttl, Duration::from_millis(300))
            .await;
        let token = match granted {
            Ok(r) if r.granted => r.token,
            _ => {
                tokio::time::sleep(Duration::from_millis(rng.range(10, 100))).await;
                continue;
            }
        };
        h.grants.push(Grant {
            lock: lock.clone(),
            holder: holder.clone(),
            token,
            invoke_ns,
            complete_ns: ns(base),
        });
        for write in 0..2 {
            if write == 1 && rng.range(0, 3) == 0 {
                // A stalled holder: its lease may run out and another worker take the lock.
                tokio::time::sleep(ttl + Duration::from_millis(200)).await;
            }
            let invoke_ns = ns(base);
            let r = client
                .put_fenced(
                    format!("{lock}/data").as_bytes(),
                    format!("{holder}:{token}:{write}").as_bytes(),
                    &lock,
                    token,
                )
                .await;
            h.writes.push(FencedWrite {
                lock: lock.clone(),
                holder: holder.clone(),
                token,
                invoke_ns,
                complete_ns: ns(base),
                applied: r.is_ok(),
                fenced: r
                    .as_ref()
                    .err()
                    .is_some_and(|e| e.message.contains("fenced")),
            });
        }
        let _ = client.release_lock(&lock, token).await;
        tokio::time::sleep(Duration::from_millis(rng.range(5, 50))).await;
    }
    h
}

/// Every lock-safety violation in the history, described.
pub fn violations(h: &LockHistory) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in h.grants.iter().enumerate() {
        for b in &h.grants[i + 1..] {
            if a.lock != b.lock {
                continue;
            }
            if a.token == b.token && a.holder != b.holder {
                out.push(format!(
                    "{}: token {} granted to both {} and {}",
                    a.lock, a.token, a.holder, b.holder
                ));
            }
            let (first, second) = if a.complete_ns < b.invoke_ns {
                (a, b)
            } else if b.complete_ns < a.invoke_ns {
                (b, a)
            } else {
                continue;
            };
            if second.token <= first.token && second.holder != first.holder {
                out.push(format!(
                    "{}: token {} granted to {} after token {} to {} was acknowledged",
                    a.lock, second.token, second.holder, first.token, first.holder
                ));
            }
        }
    }
    for w in h.writes.iter().filter(|w| w.applied) {
        if let Some(newer) = h
            .grants
            .iter()
            .find(|g| g.lock == w.lock && g.token > w.token && g.complete_ns < w.invoke_ns)
        {
            out.push(format!(
                "{}: {}'s write under token {} was applied although token {} ({}) was granted before it was sent",
                w.lock, w.holder, w.token, newer.token, newer.holder
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(holder: &str, token: u64, invoke_ns: i64, complete_ns: i64) -> Grant {
        Grant {
            lock: "l".into(),
            holder: holder.into(),
            token,
            invoke_ns,
            complete_ns,
        }
    }

    fn write(token: u64, invoke_ns: i64, applied: bool) -> FencedWrite {
        FencedWrite {
            lock: "l".into(),
            holder: "a".into(),
            token,
            invoke_ns,
            complete_ns: invoke_ns + 1,
            applied,
            fenced: !applied,
        }
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let h = LockHistory {
            grants: vec![grant("a", 5, 0, 10), grant("b", 9, 20, 30)],
            writes: vec![write(5, 12, true), write(5, 40, false)],
        };
        assert!(violations(&h).is_empty(), "{:?}", violations(&h));
    }

    #[test]
    fn a_token_granted_twice_or_going_backwards_is_found() {
        let h = LockHistory {
            grants: vec![
                grant("a", 5, 0, 10),
                grant("b", 5, 20, 30),
                grant("c", 3, 40, 50),
            ],
            writes: vec![],
        };
        let v = violations(&h);
        assert!(
            v.iter().any(|m| m.contains("granted to both a and b")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|m| m.contains("token 3 granted to c")),
            "{v:?}"
        );
    }

    #[test]
    fn a_superseded_holders_applied_write_is_found() {
        let h = LockHistory {
            grants: vec![grant("a", 5, 0, 10), grant("b", 9, 20, 30)],
            writes: vec![write(5, 40, true)],
        };
        let v = violations(&h);
        assert!(
            v.iter().any(|m| m.contains("applied although token 9")),
            "{v:?}"
        );
    }
}
