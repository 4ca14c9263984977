//! Command semantics: how each replicated command changes the in-memory state machine (the KV
//! map, the lock table and the cluster epoch). Apply is deterministic: it depends only on the
//! state, the entry's log id and the command, and never reads a clock (lock commands carry the
//! proposing leader's wall clock).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Command, CommandResult, Expect, LockState};

/// key -> (value, mod_revision)
pub type KvMap = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// lock name -> the lock's holder and lease (absent: free).
pub type LockTable = BTreeMap<String, LockState>;

/// Bits of a fencing token taken by the grant's log index; the epoch sits above them.
pub const TOKEN_INDEX_BITS: u32 = 40;

/// The fencing token of a grant at log index `index` in cluster epoch `epoch`.
pub fn fencing_token(epoch: u64, index: u64) -> u64 {
    (epoch << TOKEN_INDEX_BITS) | (index & ((1u64 << TOKEN_INDEX_BITS) - 1))
}

/// Everything the replicated state machine holds besides openraft's own metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmData {
    pub kv: KvMap,
    pub locks: LockTable,
    /// Cluster epoch as replicated through `SetEpoch` (1 until a recovery raises it).
    pub epoch: u64,
}

impl Default for SmData {
    fn default() -> Self {
        Self {
            kv: KvMap::new(),
            locks: LockTable::new(),
            epoch: 1,
        }
    }
}

/// What happened to one lock, published to watchers after the entry is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEventKind {
    Granted,
    Renewed,
    Released,
    Expired,
    /// A new leader extended the lease (`ExtendLeases`).
    Extended,
}

impl LockEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LockEventKind::Granted => "granted",
            LockEventKind::Renewed => "renewed",
            LockEventKind::Released => "released",
            LockEventKind::Expired => "expired",
            LockEventKind::Extended => "extended",
        }
    }

    /// Whether the lock is free after this event.
    pub fn frees(self) -> bool {
        matches!(self, LockEventKind::Released | LockEventKind::Expired)
    }
}

/// A change to one lock at log index `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEvent {
    pub lock: String,
    pub kind: LockEventKind,
    /// The lock after the change (`None`: free).
    pub state: Option<LockState>,
    pub index: u64,
}

/// Side effects of applying entries, collected for watchers and metrics.
#[derive(Debug, Default)]
pub struct ApplyEffects {
    pub events: Vec<LockEvent>,
    pub expiries: u64,
    pub fenced_rejected: u64,
}

fn done(index: u64) -> CommandResult {
    CommandResult {
        revision: index,
        succeeded: true,
        ..Default::default()
    }
}

fn refused(index: u64, lock: Option<LockState>, why: String) -> CommandResult {
    CommandResult {
        revision: index,
        succeeded: false,
        lock,
        rejection: Some(why),
        ..Default::default()
    }
}

/// "current token T held by H" or "lock is not held", for rejection messages.
fn describe_current(current: Option<&LockState>) -> String {
    match current {
        Some(l) => format!("current token {} held by {}", l.token, l.holder),
        None => "the lock is not held".to_string(),
    }
}

/// Applies one command at log id (`term`, `index`). Deterministic: depends only on the state,
/// the log id and the command.
pub fn apply(
    sm: &mut SmData,
    index: u64,
    term: u64,
    cmd: Command,
    fx: &mut ApplyEffects,
) -> CommandResult {
    match cmd {
        Command::Put { key, value } => {
            let previous = sm.kv.insert(key, (value, index));
            CommandResult {
                previous,
                ..done(index)
            }
        }
        Command::Delete { key } => {
            let previous = sm.kv.remove(&key);
            CommandResult {
                succeeded: previous.is_some(),
                previous,
                ..done(index)
            }
        }
        Command::Cas {
            key,
            expect,
            new_value,
        } => {
            let current = sm.kv.get(&key).cloned();
            let holds = match (&expect, &current) {
                (Expect::Absent, None) => true,
                (Expect::Absent, Some(_)) => false,
                (Expect::Value(v), Some((cur, _))) => v == cur,
                (Expect::Value(_), None) => false,
                (Expect::ModRevision(0), None) => true,
                (Expect::ModRevision(r), Some((_, cur))) => r == cur,
                (Expect::ModRevision(_), None) => false,
            };
            if holds {
                match new_value {
                    Some(v) => {
                        sm.kv.insert(key, (v, index));
                    }
                    None => {
                        sm.kv.remove(&key);
                    }
                }
            }
            CommandResult {
                succeeded: holds,
                previous: current,
                ..done(index)
            }
        }
        Command::AcquireLock {
            lock,
            holder,
            ttl_ms,
            now_ms,
        } => match sm.locks.get_mut(&lock) {
            // Re-acquire by the holder: same token, lease extended (never shortened).
            Some(cur) if cur.holder == holder => {
                cur.expires_at_ms = cur.expires_at_ms.max(now_ms.saturating_add(ttl_ms));
                cur.ttl_ms = ttl_ms;
                let state = cur.clone();
                fx.events.push(LockEvent {
                    lock,
                    kind: LockEventKind::Renewed,
                    state: Some(state.clone()),
                    index,
                });
                CommandResult {
                    lock: Some(state),
                    ..done(index)
                }
            }
            // Held by someone else: log order decided, the earlier grant stands. A lease past
            // its end stays held until the leader's ExpireLock entry is applied.
            Some(cur) => {
                let why = format!(
                    "lock {lock} is held by {} (token {})",
                    cur.holder, cur.token
                );
                refused(index, Some(cur.clone()), why)
            }
            None => {
                let state = LockState {
                    holder,
                    token: fencing_token(sm.epoch, index),
                    granted_at_ms: now_ms,
                    expires_at_ms: now_ms.saturating_add(ttl_ms),
                    ttl_ms,
                    term,
                    epoch: sm.epoch,
                    grant_index: index,
                };
                sm.locks.insert(lock.clone(), state.clone());
                fx.events.push(LockEvent {
                    lock,
                    kind: LockEventKind::Granted,
                    state: Some(state.clone()),
                    index,
                });
                CommandResult {
                    lock: Some(state),
                    ..done(index)
                }
            }
        },
        Command::RenewLock {
            lock,
            token,
            ttl_ms,
            now_ms,
        } => match sm.locks.get_mut(&lock) {
            Some(cur) if cur.token == token => {
                let ttl = if ttl_ms == 0 { cur.ttl_ms } else { ttl_ms };
                cur.ttl_ms = ttl;
                cur.expires_at_ms = cur.expires_at_ms.max(now_ms.saturating_add(ttl));
                let state = cur.clone();
                fx.events.push(LockEvent {
                    lock,
                    kind: LockEventKind::Renewed,
                    state: Some(state.clone()),
                    index,
                });
                CommandResult {
                    lock: Some(state),
                    ..done(index)
                }
            }
            other => {
                let current = other.map(|c| c.clone());
                let why = format!(
                    "renew refused: lock {lock} token {token} is not current ({})",
                    describe_current(current.as_ref())
                );
                refused(index, current, why)
            }
        },
        Command::ReleaseLock { lock, token } => match sm.locks.get(&lock) {
            Some(cur) if cur.token == token => {
                sm.locks.remove(&lock);
                fx.events.push(LockEvent {
                    lock,
                    kind: LockEventKind::Released,
                    state: None,
                    index,
                });
                done(index)
            }
            other => {
                let current = other.cloned();
                let why = format!(
                    "release refused: lock {lock} token {token} is not current ({})",
                    describe_current(current.as_ref())
                );
                refused(index, current, why)
            }
        },
        Command::ExpireLock {
            lock,
            token,
            now_ms,
        } => match sm.locks.get(&lock) {
            // Only the lease the leader saw expire: a stale token or a lease renewed after the
            // expiry was proposed is left alone.
            Some(cur) if cur.token == token && cur.expires_at_ms <= now_ms => {
                sm.locks.remove(&lock);
                fx.expiries += 1;
                fx.events.push(LockEvent {
                    lock,
                    kind: LockEventKind::Expired,
                    state: None,
                    index,
                });
                done(index)
            }
            other => {
                let current = other.cloned();
                let why = format!(
                    "stale expiry ignored: lock {lock} token {token} ({})",
                    describe_current(current.as_ref())
                );
                refused(index, current, why)
            }
        },
        Command::ExtendLeases { now_ms } => {
            for (name, l) in sm.locks.iter_mut() {
                let floor = now_ms.saturating_add(l.ttl_ms);
                if l.expires_at_ms < floor {
                    l.expires_at_ms = floor;
                    fx.events.push(LockEvent {
                        lock: name.clone(),
                        kind: LockEventKind::Extended,
                        state: Some(l.clone()),
                        index,
                    });
                }
            }
            done(index)
        }
        Command::SetEpoch { epoch } => {
            sm.epoch = sm.epoch.max(epoch);
            done(index)
        }
        Command::FencedPut {
            key,
            value,
            lock,
            token,
        } => {
            let current = sm.locks.get(&lock);
            if current.is_some_and(|c| c.token == token) {
                let previous = sm.kv.insert(key, (value, index));
                CommandResult {
                    previous,
                    lock: current.cloned(),
                    ..done(index)
                }
            } else {
                fx.fenced_rejected += 1;
                let why = format!(
                    "fenced write rejected: lock {lock} token {token} is not current ({})",
                    describe_current(current)
                );
                refused(index, current.cloned(), why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(sm: &mut SmData, index: u64, cmd: Command) -> CommandResult {
        apply(sm, index, 1, cmd, &mut ApplyEffects::default())
    }

    fn acquire(lock: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> Command {
        Command::AcquireLock {
            lock: lock.into(),
            holder: holder.into(),
            ttl_ms,
            now_ms,
        }
    }

    #[test]
    fn cas_on_value_and_revision() {
        let mut m = SmData::default();
        run(
            &mut m,
            1,
            Command::Put {
                key: b"k".to_vec(),
                value: b"a".to_vec(),
            },
        );
        let r = run(
            &mut m,
            2,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::Value(b"x".to_vec()),
                new_value: Some(b"b".to_vec()),
            },
        );
        assert!(!r.succeeded);
        let r = run(
            &mut m,
            3,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::ModRevision(1),
                new_value: Some(b"b".to_vec()),
            },
        );
        assert!(r.succeeded);
        assert_eq!(m.kv.get(b"k".as_slice()).unwrap(), &(b"b".to_vec(), 3));
        let r = run(
            &mut m,
            4,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::Absent,
                new_value: None,
            },
        );
        assert!(!r.succeeded);
        let r = run(
            &mut m,
            5,
            Command::Cas {
                key: b"k".to_vec(),
                expect: Expect::ModRevision(3),
                new_value: None,
            },
        );
        assert!(r.succeeded && !m.kv.contains_key(b"k".as_slice()));
    }

    #[test]
    fn simultaneous_acquires_first_in_log_order_wins() {
        // Two workers' requests reach the leader at the same time; whichever entry is first in
        // the log wins, in either order.
        for (first, second) in [("a", "b"), ("b", "a")] {
            let mut sm = SmData::default();
            let r1 = run(&mut sm, 10, acquire("jobs/42", first, 5000, 1000));
            let r2 = run(&mut sm, 11, acquire("jobs/42", second, 5000, 1000));
            assert!(r1.succeeded);
            assert!(!r2.succeeded);
            let held = r2.lock.unwrap();
            assert_eq!(held.holder, first);
            assert_eq!(held.token, r1.lock.unwrap().token);
            assert!(r2.rejection.unwrap().contains(&format!("held by {first}")));
            assert_eq!(sm.locks["jobs/42"].holder, first);
        }
    }

    #[test]
    fn reacquire_by_holder_is_idempotent_and_extends() {
        let mut sm = SmData::default();
        let t1 = run(&mut sm, 3, acquire("l", "a", 1000, 100)).lock.unwrap();
        let r = run(&mut sm, 4, acquire("l", "a", 1000, 600));
        assert!(r.succeeded);
        let t2 = r.lock.unwrap();
        assert_eq!(t1.token, t2.token);
        assert_eq!(t2.expires_at_ms, 1600);
        assert_eq!(t2.grant_index, 3);
    }

    #[test]
    fn release_needs_the_current_token() {
        let mut sm = SmData::default();
        let token = run(&mut sm, 5, acquire("l", "a", 1000, 0))
            .lock
            .unwrap()
            .token;
        let r = run(
            &mut sm,
            6,
            Command::ReleaseLock {
                lock: "l".into(),
                token: token + 1,
            },
        );
        assert!(!r.succeeded);
        assert!(r.rejection.unwrap().contains("is not current"));
        assert!(sm.locks.contains_key("l"));
        let mut fx = ApplyEffects::default();
        let r = apply(
            &mut sm,
            7,
            1,
            Command::ReleaseLock {
                lock: "l".into(),
                token,
            },
            &mut fx,
        );
        assert!(r.succeeded);
        assert!(!sm.locks.contains_key("l"));
        assert_eq!(fx.events.len(), 1);
        assert!(fx.events[0].kind.frees());
    }

    #[test]
    fn stale_expiry_is_ignored() {
        let mut sm = SmData::default();
        let old = run(&mut sm, 2, acquire("l", "a", 1000, 0))
            .lock
            .unwrap()
            .token;
        let mut fx = ApplyEffects::default();
        let r = apply(
            &mut sm,
            3,
            1,
            Command::ExpireLock {
                lock: "l".into(),
                token: old,
                now_ms: 1000,
            },
            &mut fx,
        );
        assert!(r.succeeded);
        assert_eq!(fx.expiries, 1);
        let new = run(&mut sm, 4, acquire("l", "b", 1000, 1000))
            .lock
            .unwrap()
            .token;
        // A second expiry of the old grant (e.g. proposed twice) must not free b's lock.
        let r = run(
            &mut sm,
            5,
            Command::ExpireLock {
                lock: "l".into(),
                token: old,
                now_ms: 5000,
            },
        );
        assert!(!r.succeeded);
        assert_eq!(sm.locks["l"].token, new);
        // Nor does an expiry whose lease was renewed after the leader proposed it.
        run(
            &mut sm,
            6,
            Command::RenewLock {
                lock: "l".into(),
                token: new,
                ttl_ms: 1000,
                now_ms: 1900,
            },
        );
        let r = run(
            &mut sm,
            7,
            Command::ExpireLock {
                lock: "l".into(),
                token: new,
                now_ms: 2000,
            },
        );
        assert!(!r.succeeded);
        assert_eq!(sm.locks["l"].expires_at_ms, 2900);
    }

    #[test]
    fn tokens_strictly_increase_and_epoch_raises_them() {
        let mut sm = SmData::default();
        let mut last = 0;
        let mut index = 1;
        for round in 0..5 {
            if round == 3 {
                run(&mut sm, index, Command::SetEpoch { epoch: 2 });
                index += 1;
                // Never lowered.
                run(&mut sm, index, Command::SetEpoch { epoch: 1 });
                index += 1;
                assert_eq!(sm.epoch, 2);
            }
            let r = run(&mut sm, index, acquire("l", "w", 1000, 0));
            let token = r.lock.unwrap().token;
            assert!(token > last, "token {token} after {last}");
            last = token;
            index += 1;
            run(
                &mut sm,
                index,
                Command::ReleaseLock {
                    lock: "l".into(),
                    token,
                },
            );
            index += 1;
        }
        // A recovered cluster whose log is much shorter than the lost majority's still issues
        // larger tokens once the epoch is bumped.
        let before = fencing_token(1, (1 << TOKEN_INDEX_BITS) - 1);
        let mut recovered = SmData::default();
        run(&mut recovered, 3, Command::SetEpoch { epoch: 2 });
        let after = run(&mut recovered, 4, acquire("l", "w", 1000, 0))
            .lock
            .unwrap()
            .token;
        assert!(after > before, "{after} <= {before}");
        assert_eq!(after >> TOKEN_INDEX_BITS, 2);
    }

    #[test]
    fn fenced_put_checks_the_token_in_log_order() {
        let mut sm = SmData::default();
        let ta = run(&mut sm, 1, acquire("jobs/42", "a", 1000, 0))
            .lock
            .unwrap()
            .token;
        let put = |token| Command::FencedPut {
            key: b"out".to_vec(),
            value: format!("by {token}").into_bytes(),
            lock: "jobs/42".into(),
            token,
        };
        assert!(run(&mut sm, 2, put(ta)).succeeded);
        run(
            &mut sm,
            3,
            Command::ExpireLock {
                lock: "jobs/42".into(),
                token: ta,
                now_ms: 1000,
            },
        );
        let tb = run(&mut sm, 4, acquire("jobs/42", "b", 1000, 1000))
            .lock
            .unwrap()
            .token;
        assert!(tb > ta);
        let mut fx = ApplyEffects::default();
        let r = apply(&mut sm, 5, 1, put(ta), &mut fx);
        assert!(!r.succeeded);
        assert_eq!(fx.fenced_rejected, 1);
        let why = r.rejection.unwrap();
        assert!(
            why.contains(&format!(
                "token {ta} is not current (current token {tb} held by b)"
            )),
            "{why}"
        );
        assert_eq!(sm.kv[b"out".as_slice()].0, format!("by {ta}").into_bytes());
        assert!(run(&mut sm, 6, put(tb)).succeeded);
        assert_eq!(sm.kv[b"out".as_slice()].0, format!("by {tb}").into_bytes());
    }

    #[test]
    fn extend_leases_gives_every_lease_its_full_ttl() {
        let mut sm = SmData::default();
        run(&mut sm, 1, acquire("short", "a", 1000, 0));
        // Granted later on the old leader's clock: already ends after now + ttl.
        run(&mut sm, 2, acquire("late", "b", 1000, 5000));
        let mut fx = ApplyEffects::default();
        apply(
            &mut sm,
            3,
            2,
            Command::ExtendLeases { now_ms: 800 },
            &mut fx,
        );
        assert_eq!(sm.locks["short"].expires_at_ms, 1800);
        // Already beyond now + ttl: unchanged.
        assert_eq!(sm.locks["late"].expires_at_ms, 6000);
        assert_eq!(fx.events.len(), 1);
    }
}
