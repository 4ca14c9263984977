//! The chaos workload: concurrent clients issuing puts, gets at every linearizable level,
//! compare-and-swaps and deletes over a small key space, each recorded with its timing and
//! outcome. Bounded by a stop flag and a per-client operation limit.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raft_proto::pb::CasRequest;
use raft_proto::pb::cas_request::Expected;
use raft_proto::{ClientError, Consistency, ErrorKind, RaftClient};

use super::history::{HistoryOp, Outcome};

/// Keys each client picks from; few enough that clients contend.
pub const KEYS: usize = 32;
/// No client issues more than this many operations in one schedule.
pub const MAX_OPS_PER_CLIENT: usize = 20_000;

/// A tiny deterministic generator (splitmix64), so a seed reproduces a client's choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn ns_since(base: Instant) -> i64 {
    base.elapsed().as_nanos() as i64
}

/// Runs one client until `stop`, returning its history.
pub async fn client(
    id: usize,
    seed: u64,
    endpoints: String,
    base: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<HistoryOp> {
    let mut history = Vec::new();
    let Ok(client) = RaftClient::new(&[endpoints]) else {
        return history;
    };
    let client = client.with_deadline(Duration::from_secs(2));
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
    let mut last_seen: Vec<Option<String>> = vec![None; KEYS];
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) && n < MAX_OPS_PER_CLIENT {
        n += 1;
        let key_index = rng.range(0, KEYS as u64) as usize;
        let key = format!("chaos/{key_index:02}");
        let value = format!("c{id}-{n}");
        let roll = rng.range(0, 10);
        let invoke_ns = ns_since(base);
        let mut op = HistoryOp::invoked(id, "get", key.clone(), invoke_ns);
        let result: Result<(), ClientError> = match roll {
            0..=3 => {
                let (level, name) = [
                    (Consistency::Linearizable, "linearizable"),
                    (Consistency::Lease, "lease"),
                    (Consistency::ReadIndex, "read_index"),
                    (Consistency::Stale, "stale"),
                ][rng.range(0, 4) as usize];
                op.level = Some(name);
                client.get(key.as_bytes(), level).await.map(|r| {
                    op.found = r.found;
                    op.read = r
                        .found
                        .then(|| String::from_utf8_lossy(&r.value).to_string());
                    if level != Consistency::Stale {
                        last_seen[key_index] = op.read.clone();
                    }
                })
            }
            4..=6 => {
                op.op = "put";
                op.value = Some(value.clone());
                client
                    .put(key.as_bytes(), value.as_bytes())
                    .await
                    .map(|_| ())
            }
            7 => {
                op.op = "delete";
                client.delete(key.as_bytes()).await.map(|r| {
                    op.deleted = r.deleted;
                })
            }
            _ => {
                op.op = "cas";
                op.value = Some(value.clone());
                op.expect = last_seen[key_index].clone();
                let expected = match &op.expect {
                    Some(v) => Expected::ExpectedValue(v.clone().into_bytes()),
                    None => Expected::ExpectAbsent(true),
                };
                client
                    .cas(CasRequest {
                        key: key.clone().into_bytes(),
                        expected: Some(expected),
                        new_value: value.into_bytes(),
                        delete: false,
                    })
                    .await
                    .map(|r| {
                        op.succeeded = r.succeeded;
                        op.seen = r
                            .found
                            .then(|| String::from_utf8_lossy(&r.current_value).to_string());
                        last_seen[key_index] = op.seen.clone();
                    })
            }
        };
        op.complete_ns = ns_since(base);
        if let Err(e) = result {
            op.outcome =
                if op.is_write() && (e.kind == ErrorKind::OutcomeUnknown || !e.not_applied()) {
                    Outcome::Unknown
                } else {
                    Outcome::NotApplied
                };
            op.error = Some(e.to_string());
        }
        let failed = op.outcome != Outcome::Ok;
        history.push(op);
        if failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    history
}

/// After the faults end: one read of every key by a fresh client, so a lost acknowledged write
/// shows up as a violation.
pub async fn final_reads(
    endpoints: &str,
    base: Instant,
    client_id: usize,
) -> anyhow::Result<Vec<HistoryOp>> {
    let client = RaftClient::new(&[endpoints])
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_deadline(Duration::from_secs(10));
    let mut out = Vec::new();
    for key_index in 0..KEYS {
        let key = format!("chaos/{key_index:02}");
        let invoke_ns = ns_since(base);
        let r = client
            .get(key.as_bytes(), Consistency::ReadIndex)
            .await
            .map_err(|e| anyhow::anyhow!("final read of {key}: {e}"))?;
        let mut op = HistoryOp::invoked(client_id, "get", key, invoke_ns);
        op.level = Some("read_index");
        op.complete_ns = ns_since(base);
        op.found = r.found;
        op.read = r
            .found
            .then(|| String::from_utf8_lossy(&r.value).to_string());
        out.push(op);
    }
    Ok(out)
}

/// Stale reads are checked against their own, weaker model: a stale read may return any value
/// some write of that key had been sent before the read completed (or absence), never a value
/// nobody wrote or one written only after it. Returns the violations found.
pub fn stale_read_violations(history: &[HistoryOp]) -> Vec<String> {
    use std::collections::HashMap;
    let mut first_sent: HashMap<(&str, &str), i64> = HashMap::new();
    for op in history.iter().filter(|o| o.is_write()) {
        if let Some(v) = op.value.as_deref() {
            let at = first_sent
                .entry((op.key.as_str(), v))
                .or_insert(op.invoke_ns);
            *at = (*at).min(op.invoke_ns);
        }
    }
    history
        .iter()
        .filter(|o| o.level == Some("stale") && o.outcome == Outcome::Ok)
        .filter_map(|o| {
            let v = o.read.as_deref()?;
            match first_sent.get(&(o.key.as_str(), v)) {
                Some(sent) if *sent <= o.complete_ns => None,
                Some(_) => Some(format!(
                    "stale read of {} returned {v:?} before it was written",
                    o.key
                )),
                None => Some(format!(
                    "stale read of {} returned {v:?}, which nobody wrote",
                    o.key
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        kind: &'static str,
        value: Option<&str>,
        level: Option<&'static str>,
        invoke_ns: i64,
        complete_ns: i64,
    ) -> HistoryOp {
        let mut op = HistoryOp::invoked(0, kind, "k".into(), invoke_ns);
        op.complete_ns = complete_ns;
        op.level = level;
        if kind == "get" {
            op.found = value.is_some();
            op.read = value.map(str::to_string);
        } else {
            op.value = value.map(str::to_string);
        }
        op
    }

    #[test]
    fn a_stale_read_may_lag_but_never_invent_or_see_the_future() {
        let ok = vec![
            op("put", Some("a"), None, 0, 10),
            op("put", Some("b"), None, 20, 30),
            op("get", Some("a"), Some("stale"), 40, 50),
        ];
        assert!(stale_read_violations(&ok).is_empty());
        let phantom = vec![op("get", Some("zz"), Some("stale"), 40, 50)];
        assert!(stale_read_violations(&phantom)[0].contains("nobody wrote"));
        let future = vec![
            op("get", Some("c"), Some("stale"), 0, 5),
            op("put", Some("c"), None, 10, 20),
        ];
        assert!(stale_read_violations(&future)[0].contains("before it was written"));
    }
}
