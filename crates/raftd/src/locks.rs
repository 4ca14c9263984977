//! The lock service on a node: input validation, blocked acquires (a first-in-first-out queue
//! per lock, woken by applied lock events rather than polling), and the leader's lease keeper
//! that extends leases when it takes over and proposes `ExpireLock` entries for leases past
//! their end. The lock table itself lives in the replicated state machine (`state_machine.rs`).
//!
//! Clocks: lease times are the proposing leader's wall clock (Unix ms) written into each command,
//! so apply never reads a clock and every replica agrees. Only the leader decides that a lease
//! has ended, by proposing an expiry; replicas never expire a lease on their own. A new leader
//! first commits `ExtendLeases { now_ms }`, which gives every held lease at least its full TTL
//! from the new leader's clock, so neither a leader change nor a clock offset between the old
//! and the new leader can end a lease early.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::node::{NodeError, RaftNode};
use crate::types::{Command, CommandResult};

/// Longest lock name and holder id, in bytes.
pub const MAX_LOCK_NAME_BYTES: usize = 256;
/// Shortest and longest lease a client may ask for.
pub const MIN_TTL_MS: u64 = 100;
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
/// How long the lease keeper sleeps at most between checks (it also wakes on lock events).
const KEEPER_MAX_SLEEP: Duration = Duration::from_millis(100);

/// This node's wall clock in Unix milliseconds (only the leader's is ever written into a command).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Checks a lock name or holder id: 1..=256 bytes.
pub fn validate_name(field: &str, v: &str) -> Result<(), NodeError> {
    if v.is_empty() {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: "must not be empty".into(),
        });
    }
    if v.len() > MAX_LOCK_NAME_BYTES {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: format!(
                "{} bytes exceeds the limit of {MAX_LOCK_NAME_BYTES} bytes",
                v.len()
            ),
        });
    }
    Ok(())
}

/// Checks a lease length (0 is allowed only where it means "keep the lock's TTL").
pub fn validate_ttl(field: &str, ttl_ms: u64, zero_ok: bool) -> Result<(), NodeError> {
    if zero_ok && ttl_ms == 0 {
        return Ok(());
    }
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(NodeError::InvalidArgument {
            field: field.into(),
            reason: format!(
                "{ttl_ms} ms is outside the allowed range {MIN_TTL_MS}..={MAX_TTL_MS} ms"
            ),
        });
    }
    Ok(())
}

fn validate_token(token: u64) -> Result<(), NodeError> {
    if token == 0 {
        return Err(NodeError::InvalidArgument {
            field: "token".into(),
            reason: "must be the fencing token returned by acquire (never 0)".into(),
        });
    }
    Ok(())
}

/// Validates the lock commands (the KV commands are checked in `node::validate_command`).
pub fn validate_lock_command(cmd: &Command) -> Result<(), NodeError> {
    match cmd {
        Command::AcquireLock {
            lock,
            holder,
            ttl_ms,
            ..
        } => {
            validate_name("lock", lock)?;
            validate_name("holder", holder)?;
            validate_ttl("ttl_ms", *ttl_ms, false)
        }
        Command::RenewLock {
            lock,
            token,
            ttl_ms,
            ..
        } => {
            validate_name("lock", lock)?;
            validate_token(*token)?;
            validate_ttl("ttl_ms", *ttl_ms, true)
        }
        Command::ReleaseLock { lock, token } | Command::ExpireLock { lock, token, .. } => {
            validate_name("lock", lock)?;
            validate_token(*token)
        }
        Command::SetEpoch { epoch } => {
            if *epoch == 0 {
                return Err(NodeError::InvalidArgument {
                    field: "epoch".into(),
                    reason: "epochs start at 1".into(),
                });
            }
            Ok(())
        }
        Command::FencedPut { lock, token, .. } => {
            validate_name("fence_lock", lock)?;
            if *token == 0 {
                return Err(NodeError::InvalidArgument {
                    field: "fence_token".into(),
                    reason: "must be set together with fence_lock".into(),
                });
            }
            Ok(())
        }
        Command::ExtendLeases { .. }
        | Command::Put { .. }
        | Command::Delete { .. }
        | Command::Cas { .. } => Ok(()),
    }
}

/// Blocked acquires on this node, in arrival order per lock. Only the head of a lock's queue
/// proposes; the others wait for the queue to move.
pub struct LockWaiters {
    queues: Mutex<HashMap<String, VecDeque<u64>>>,
    next_ticket: AtomicU64,
    moved: tokio::sync::watch::Sender<u64>,
}

impl Default for LockWaiters {
    fn default() -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(1),
            moved: tokio::sync::watch::channel(0).0,
        }
    }
}

/// A place in a lock's queue; leaving it (dropped when the acquire returns or the client goes
/// away) lets the next waiter move up.
struct Ticket<'a> {
    waiters: &'a LockWaiters,
    lock: String,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Ok(mut q) = self.waiters.queues.lock()
            && let Some(queue) = q.get_mut(&self.lock)
        {
            queue.retain(|t| *t != self.id);
            if queue.is_empty() {
                q.remove(&self.lock);
            }
        }
        self.waiters.moved.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl LockWaiters {
    fn enqueue(&self, lock: &str) -> Ticket<'_> {
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut q) = self.queues.lock() {
            q.entry(lock.to_string()).or_default().push_back(id);
        }
        Ticket {
            waiters: self,
            lock: lock.to_string(),
            id,
        }
    }

    fn is_head(&self, t: &Ticket<'_>) -> bool {
        self.queues
            .lock()
            .map(|q| q.get(&t.lock).and_then(|q| q.front()) == Some(&t.id))
            .unwrap_or(true)
    }

    /// Blocked acquires waiting for `lock`.
    pub fn waiting_for(&self, lock: &str) -> usize {
        self.queues
            .lock()
            .map(|q| q.get(lock).map(VecDeque::len).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Blocked acquires on this node, all locks.
    pub fn total(&self) -> usize {
        self.queues
            .lock()
            .map(|q| q.values().map(VecDeque::len).sum())
            .unwrap_or(0)
    }
}

/// Acquires `lock` for `holder`. With `wait` zero it answers at once (granted, or the current
/// holder); otherwise it queues behind earlier waiters on this leader and proposes again each
/// time an applied release or expiry frees the lock, until granted or `wait` has passed. The
/// answer after a timeout is the last refusal (naming the current holder).
pub async fn acquire(
    node: &RaftNode,
    lock: &str,
    holder: &str,
    ttl_ms: u64,
    wait: Duration,
) -> Result<CommandResult, NodeError> {
    let propose = |budget: Duration| {
        node.write(
            Command::AcquireLock {
                lock: lock.to_string(),
                holder: holder.to_string(),
                ttl_ms,
                now_ms: now_ms(),
            },
            budget,
        )
    };
    let per_write = crate::node::MAX_WRITE_WAIT;
    if wait.is_zero() {
        return propose(per_write).await;
    }
    if !node.raft().is_leader() {
        // Queue only where the proposals are made.
        return propose(per_write).await;
    }
    let until = Instant::now() + wait;
    let ticket = node.lock_waiters.enqueue(lock);
    let mut moved = node.lock_waiters.moved.subscribe();
    let mut last: Option<CommandResult> = None;
    loop {
        while !node.lock_waiters.is_head(&ticket) {
            tokio::select! {
                r = moved.changed() => {
                    if r.is_err() {
                        return Err(NodeError::Internal("lock wait queue closed".into()));
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    return match last {
                        Some(r) => Ok(r),
                        None => propose(per_write).await,
                    };
                }
            }
        }
        // Subscribe before proposing, so a release applied right after the refusal is seen.
        let mut events = node.lock_hub.events.subscribe();
        let r = propose(per_write).await?;
        if r.succeeded || Instant::now() >= until {
            return Ok(r);
        }
        last = Some(r);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(e) if e.lock == lock && e.kind.frees() => break,
                    Ok(_) => {}
                    // Missed events: propose again to learn the state.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        return Err(NodeError::Internal("lock event channel closed".into()));
                    }
                },
                _ = tokio::time::sleep_until(until) => {
                    return last.ok_or_else(|| NodeError::Internal("no acquire result".into()));
                }
            }
        }
    }
}

/// Runs for the node's lifetime. While this node leads: first commit `ExtendLeases` for the
/// current term, then propose `ExpireLock` for every lease whose end has passed on this
/// leader's clock, sleeping until the next lease end or the next lock event.
pub async fn lease_keeper(node: std::sync::Arc<RaftNode>) {
    let mut extended_term: Option<u64> = None;
    let mut events = node.lock_hub.events.subscribe();
    loop {
        let raft = node.raft();
        let (is_leader, term) = {
            let m = raft.metrics().borrow_watched().clone();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !is_leader {
            extended_term = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if extended_term != Some(term) {
            let now = now_ms();
            match node
                .write(
                    Command::ExtendLeases { now_ms: now },
                    Duration::from_secs(2),
                )
                .await
            {
                Ok(r) => {
                    tracing::info!(
                        term,
                        index = r.revision,
                        now_ms = now,
                        "new leader extended every held lease to at least its full TTL"
                    );
                    extended_term = Some(term);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "extending leases failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let now = now_ms();
        let (expired, next_end) = {
            let core = node.core();
            let Ok(sm) = core.kv.data.read() else {
                tokio::time::sleep(KEEPER_MAX_SLEEP).await;
                continue;
            };
            let mut expired = Vec::new();
            let mut next_end: Option<u64> = None;
            for (name, l) in &sm.locks {
                if l.expires_at_ms <= now {
                    expired.push((name.clone(), l.token));
                } else {
                    next_end = Some(next_end.map_or(l.expires_at_ms, |n| n.min(l.expires_at_ms)));
                }
            }
            (expired, next_end)
        };
        for (lock, token) in expired {
            match node
                .write(
                    Command::ExpireLock {
                        lock: lock.clone(),
                        token,
                        now_ms: now,
                    },
                    Duration::from_secs(2),
                )
                .await
            {
                Ok(r) if r.succeeded => {
                    tracing::info!(lock, token, index = r.revision, "lease expired")
                }
                Ok(_) => tracing::debug!(lock, token, "expiry was stale (renewed or released)"),
                Err(e) => tracing::debug!(lock, token, error = %e, "proposing expiry failed"),
            }
        }
        let sleep = next_end
            .map(|end| Duration::from_millis(end.saturating_sub(now_ms()).saturating_add(1)))
            .unwrap_or(KEEPER_MAX_SLEEP)
            .min(KEEPER_MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            // A grant or renewal may end sooner than the current sleep.
            _ = events.recv() => {}
        }
    }
}
