//! `RaftClient`: talks to a raftd cluster, follows leader hints, retries only what is safe.
//!
//! Routing: the client sends to the leader. When it knows none, it asks every endpoint for its
//! status at once (a short, bounded probe) and picks the endpoint that leads with a quorum; if no
//! endpoint leads, a follower that reaches a quorum and knows a leader (it forwards); if the nodes
//! that answer report no quorum and no leader, the call fails at once with that reason, before any
//! write is sent. Connections carry HTTP/2 keep-alive pings, so a dead peer is noticed in ~2 s.
//!
//! Retry rules:
//! - A failure the server labels `raft-outcome: not-applied` (not leader, no leader yet,
//!   uninitialized) is retried on the hinted leader or the next endpoint until the deadline.
//! - `no quorum` is returned at once: the cluster answered that a majority is unreachable.
//! - A connection that could not be established is retried (the request never left).
//! - Anything else after a write was sent (timeout, reset, `raft-outcome: unknown`) is returned
//!   as `OutcomeUnknown`: the write may or may not have been applied. Reads are always retried.
use crate::wire;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::kv_client::KvClient;
use crate::pb::kv_op::Op;
use crate::pb::kv_op_result::Result as OpResult;
use crate::pb::lock_client::LockClient;
use crate::pipeline::{Pipeline, fits_pipeline};

/// What kind of failure a client call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was not applied; the cluster cannot serve it now (no quorum / no leader).
    Unavailable,
    /// A write was sent and its outcome is unknown: it may or may not have been applied.
    OutcomeUnknown,
    /// The request was invalid (names the field and reason); not applied.
    InvalidArgument,
    /// Refused by the server (e.g. cluster id mismatch, membership rule); not applied.
    Refused,
    /// The deadline passed before any node could serve the request; not applied.
    DeadlineExceeded,
    /// Anything else.
    Other,
}

/// A client error with its kind and a readable message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ClientError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// True when the server guaranteed the request was not applied.
    pub fn not_applied(&self) -> bool {
        self.kind != ErrorKind::OutcomeUnknown && self.kind != ErrorKind::Other
    }
}

/// Read consistency levels.
pub use crate::pb::Consistency;

/// How long leader discovery waits for endpoints' status answers.
const DISCOVERY_PROBE: Duration = Duration::from_millis(500);

/// A cluster client. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct RaftClient {
    endpoints: Vec<String>,
    /// One channel per address: the endpoints and any leader hint outside them.
    channels: Mutex<HashMap<String, Channel>>,
    /// Where requests go: the leader, or a follower that forwards to it.
    leader: Mutex<Option<String>>,
    /// Round-robin position for requests any node may answer (stale reads).
    next: AtomicUsize,
    deadline: Duration,
    /// Whether puts, gets, deletes and CAS share one `Kv.Pipeline` stream per node.
    pipelining: bool,
    /// The pipeline to each address, opened on first use.
    pipelines: Mutex<HashMap<String, PipelineSlot>>,
}

type PipelineSlot = Arc<tokio::sync::OnceCell<PipelineState>>;

/// What opening a pipeline to an address gave.
#[derive(Clone)]
enum PipelineState {
    Open(Arc<Pipeline>),
    /// The node has no `Kv.Pipeline` (an older raftd): ops to it go by unary calls until
    /// `RECHECK_UNSUPPORTED` has passed, when the client asks again (the node may have been
    /// upgraded in place, keeping its address).
    Unsupported(Instant),
}

const RECHECK_UNSUPPORTED: Duration = Duration::from_secs(60);

/// The node a call goes to this attempt.
struct Target {
    channel: Channel,
    addr: String,
}

/// Which node a request needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The leader (found by discovery when unknown); a follower that forwards will do.
    Leader,
    /// Any node that answers (a stale read).
    AnyNode,
}

/// What asking every endpoint for its status found.
enum Discovery {
    /// This endpoint leads and reaches a quorum.
    Leader(String),
    /// No endpoint leads, but this one follows a leader and reaches a quorum: it forwards.
    Forwarder(String),
    /// Every node that answered knows no leader and reaches no quorum: fail now, not applied.
    NoQuorum(String),
    /// Nothing usable yet (an election under way, or no answer): try again.
    NotYet(String),
}

enum Verdict {
    /// Retry now on this address (leader hint).
    RetryAt(String),
    /// Retry on another endpoint after a short pause.
    RetryElsewhere(String),
    /// Give up with this error.
    Fail(ClientError),
}

fn md<'a>(s: &'a Status, key: &str) -> Option<&'a str> {
    s.metadata().get(key).and_then(|v| v.to_str().ok())
}

fn classify(status: &Status, is_write: bool) -> Verdict {
    let outcome = md(status, wire::OUTCOME);
    let kind = md(status, wire::ERROR_KIND).unwrap_or("");
    let msg = status.message().to_string();
    match (outcome, kind) {
        (Some(wire::OUTCOME_NOT_APPLIED), wire::KIND_NOT_LEADER | wire::KIND_DRAINING) => {
            match md(status, wire::LEADER_ADDR) {
                Some(addr) => Verdict::RetryAt(addr.to_string()),
                None => Verdict::RetryElsewhere(msg),
            }
        }
        (Some(wire::OUTCOME_NOT_APPLIED), wire::KIND_NO_QUORUM) => {
            Verdict::Fail(ClientError::new(ErrorKind::Unavailable, msg))
        }
        (Some(wire::OUTCOME_NOT_APPLIED), wire::KIND_NO_LEADER | wire::KIND_UNINITIALIZED) => {
            Verdict::RetryElsewhere(msg)
        }
        (Some(wire::OUTCOME_NOT_APPLIED), wire::KIND_INVALID_ARGUMENT) => {
            Verdict::Fail(ClientError::new(ErrorKind::InvalidArgument, msg))
        }
        (Some(wire::OUTCOME_NOT_APPLIED), _) => {
            Verdict::Fail(ClientError::new(ErrorKind::Refused, msg))
        }
        (Some(wire::OUTCOME_UNKNOWN), _) => Verdict::Fail(ClientError::new(
            if is_write {
                ErrorKind::OutcomeUnknown
            } else {
                ErrorKind::Other
            },
            msg,
        )),
        _ => {
            // No raftd metadata: a transport-level failure or a non-raftd error.
            let connect_failed = never_sent(status) || crate::pipeline::never_left_client(status);
            if status.code() == Code::InvalidArgument {
                Verdict::Fail(ClientError::new(ErrorKind::InvalidArgument, msg))
            } else if connect_failed || !is_write {
                Verdict::RetryElsewhere(format!("{}: {}", status.code(), msg))
            } else {
                Verdict::Fail(ClientError::new(
                    ErrorKind::OutcomeUnknown,
                    format!(
                        "outcome unknown: the write was sent but the answer was lost ({}: {})",
                        status.code(),
                        describe(status)
                    ),
                ))
            }
        }
    }
}

/// The error for an answer of the wrong kind (a server bug, never expected).
fn mismatched(asked: &str, got: &OpResult) -> ClientError {
    ClientError::new(
        ErrorKind::Other,
        format!("asked for {asked}, the server answered {got:?}"),
    )
}

/// The status message with its error source chain.
fn describe(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        text.push_str(": ");
        text.push_str(&e.to_string());
        src = e.source();
    }
    text
}

/// Whether the failure happened while connecting, so the request never reached a server.
fn never_sent(status: &Status) -> bool {
    let mut text = status.message().to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        text.push_str(" | ");
        text.push_str(&e.to_string());
        src = e.source();
    }
    // A name that does not resolve (a leader hint naming a cluster-internal DNS name, seen from
    // outside the cluster) fails before any connection: nothing was sent.
    text.contains("tcp connect error")
        || text.contains("Connection refused")
        || text.contains("error trying to connect")
        || text.contains("dns error")
}

impl RaftClient {
    /// A client for the given gRPC endpoints (`host:port`, comma-separated lists are split).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self, ClientError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| {
                e.as_ref()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::new(
                ErrorKind::InvalidArgument,
                "endpoints: at least one endpoint is required",
            ));
        }
        Ok(Self {
            endpoints,
            channels: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
            deadline: Duration::from_secs(5),
            pipelining: true,
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    /// Overall deadline per call (default 5 s), including retries.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Whether KV calls share one pipelined stream per node (default) or each make a unary
    /// gRPC call. Both give the same answers and errors; pipelining costs less per call when
    /// many calls run at once.
    pub fn with_pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel_for(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Ok(chans) = self.channels.lock()
            && let Some(c) = chans.get(addr)
        {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                ClientError::new(
                    ErrorKind::InvalidArgument,
                    format!("endpoint {addr:?}: {e}"),
                )
            })?
            .connect_timeout(Duration::from_millis(300))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let ch = ep.connect_lazy();
        if let Ok(mut chans) = self.channels.lock() {
            chans.entry(addr.to_string()).or_insert_with(|| ch.clone());
        }
        Ok(ch)
    }

    fn rotate(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints[n % self.endpoints.len()].clone()
    }

    fn current_leader(&self) -> Option<String> {
        self.leader.lock().ok().and_then(|l| l.clone())
    }

    fn set_leader(&self, a: Option<String>) {
        if let Ok(mut l) = self.leader.lock() {
            *l = a;
        }
    }

    /// Asks every endpoint for its status at once, bounded by `budget` (at most
    /// `DISCOVERY_PROBE`), and decides where requests should go.
    async fn discover(&self, budget: Duration) -> Discovery {
        let probe = budget.min(DISCOVERY_PROBE);
        let mut probes = tokio::task::JoinSet::new();
        for ep in &self.endpoints {
            let Ok(ch) = self.channel_for(ep) else {
                continue;
            };
            let ep = ep.clone();
            probes.spawn(async move {
                let answer = tokio::time::timeout(
                    probe,
                    AdminClient::new(ch).status(Self::req(pb::StatusRequest {}, probe)),
                )
                .await;
                (ep, answer)
            });
        }
        let mut forwarder = None;
        // The no-quorum answer with the most voters reachable: (reachable, voters, needed, node).
        let mut without_quorum: Option<(u32, u32, u32, u64)> = None;
        let mut electing = None;
        let mut silent = Vec::new();
        while let Some(joined) = probes.join_next().await {
            let Ok((ep, answer)) = joined else {
                continue;
            };
            let s = match answer {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    silent.push(format!("{ep} ({})", status.message()));
                    continue;
                }
                Err(_) => {
                    silent.push(format!("{ep} (no answer within {probe:?})"));
                    continue;
                }
            };
            let has_quorum = s.voters > 0 && s.reachable_voters >= s.quorum;
            // Only a leader hears from every voter; a follower's reachable count is itself, its
            // leader and any candidate, so it speaks for the quorum only when it knows no leader.
            if s.role == "leader" && has_quorum {
                return Discovery::Leader(ep);
            }
            if !s.initialized || s.voters == 0 {
                electing.get_or_insert_with(|| format!("{ep}: node {} is not initialized", s.id));
            } else if s.role != "leader" && s.has_leader {
                forwarder.get_or_insert(ep);
            } else if !has_quorum {
                if without_quorum.is_none_or(|(r, ..)| s.reachable_voters > r) {
                    without_quorum = Some((s.reachable_voters, s.voters, s.quorum, s.id));
                }
            } else {
                electing.get_or_insert_with(|| {
                    format!(
                        "{ep}: node {} knows no leader yet (election under way)",
                        s.id
                    )
                });
            }
        }
        if let Some(ep) = forwarder {
            return Discovery::Forwarder(ep);
        }
        let silent_note = if silent.is_empty() {
            String::new()
        } else {
            format!("; no status from {}", silent.join(", "))
        };
        if let Some(e) = electing {
            return Discovery::NotYet(format!("{e}{silent_note}"));
        }
        if let Some((reachable, voters, needed, node)) = without_quorum {
            return Discovery::NoQuorum(format!(
                "no quorum: {reachable} of {voters} voters reachable, {needed} needed (not applied; seen by node {node}{silent_note})"
            ));
        }
        Discovery::NotYet(format!("no endpoint answered{silent_note}"))
    }

    /// Runs `call` against the leader (following hints) until success, a final error, or the deadline.
    async fn run<T, F, Fut>(&self, is_write: bool, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Target, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.run_for(self.deadline, is_write, Route::Leader, call)
            .await
    }

    /// `run` with an overall deadline other than the client's (a blocking lock acquire).
    async fn run_for<T, F, Fut>(
        &self,
        deadline: Duration,
        is_write: bool,
        route: Route,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Target, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut last_err = String::from("no endpoint answered");
        let deadline_error = |last_err: &str| {
            ClientError::new(
                ErrorKind::DeadlineExceeded,
                format!("deadline {deadline:?} exceeded (not applied); last error: {last_err}"),
            )
        };
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(deadline_error(&last_err));
            }
            let addr = match self.current_leader() {
                Some(a) => a,
                None if route == Route::AnyNode => self.rotate(),
                None => match self.discover(remaining).await {
                    Discovery::Leader(a) | Discovery::Forwarder(a) => {
                        self.set_leader(Some(a.clone()));
                        a
                    }
                    Discovery::NoQuorum(e) => {
                        return Err(ClientError::new(ErrorKind::Unavailable, e));
                    }
                    Discovery::NotYet(e) => {
                        last_err = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(deadline_error(&last_err));
            }
            let to = Target {
                channel: self.channel_for(&addr)?,
                addr: addr.clone(),
            };
            match tokio::time::timeout(remaining, call(to, remaining)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => match classify(&status, is_write) {
                    Verdict::RetryAt(a) => {
                        last_err = status.message().to_string();
                        if a == addr {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        self.set_leader(Some(a));
                    }
                    Verdict::RetryElsewhere(e) => {
                        last_err = e;
                        self.set_leader(None);
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Verdict::Fail(e) => {
                        // After "outcome unknown" or "no quorum" the node may no longer lead (a
                        // deposed leader on the minority side answers "no quorum" while the
                        // majority elects another): the next call finds the leader afresh.
                        if matches!(e.kind, ErrorKind::OutcomeUnknown | ErrorKind::Unavailable) {
                            self.set_leader(None);
                        }
                        return Err(e);
                    }
                },
                Err(_) => {
                    self.set_leader(None);
                    if is_write {
                        return Err(ClientError::new(
                            ErrorKind::OutcomeUnknown,
                            format!(
                                "outcome unknown: no answer from {addr} within the deadline {:?}",
                                deadline
                            ),
                        ));
                    }
                    return Err(ClientError::new(
                        ErrorKind::DeadlineExceeded,
                        format!("deadline {:?} exceeded; last error: {last_err}", deadline),
                    ));
                }
            }
        }
    }

    fn req<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    /// Runs one KV op on the leader (or any node, for a stale read), pipelined when possible.
    async fn kv_op(&self, is_write: bool, route: Route, op: Op) -> Result<OpResult, ClientError> {
        self.run_for(self.deadline, is_write, route, |to, t| {
            let op = op.clone();
            async move { self.send_op(to, op, t).await }
        })
        .await
    }

    async fn send_op(&self, to: Target, op: Op, timeout: Duration) -> Result<OpResult, Status> {
        if self.pipelining
            && fits_pipeline(&op)
            && let Some(pipeline) = self.pipeline_for(&to).await?
        {
            return pipeline.call(op, timeout).await;
        }
        let mut kv = KvClient::new(to.channel);
        match op {
            Op::Put(m) => kv
                .put(Self::req(m, timeout))
                .await
                .map(|r| OpResult::Put(r.into_inner())),
            Op::Get(m) => kv
                .get(Self::req(m, timeout))
                .await
                .map(|r| OpResult::Get(r.into_inner())),
            Op::Delete(m) => kv
                .delete(Self::req(m, timeout))
                .await
                .map(|r| OpResult::Delete(r.into_inner())),
            Op::Cas(m) => kv
                .cas(Self::req(m, timeout))
                .await
                .map(|r| OpResult::Cas(r.into_inner())),
        }
    }

    /// The open pipeline to `to`, opening one if there is none or the last one closed. `None`:
    /// the node does not offer pipelining.
    async fn pipeline_for(&self, to: &Target) -> Result<Option<Arc<Pipeline>>, Status> {
        for _ in 0..2 {
            // Every op passes here: look up by reference, and allocate a key only for a new
            // address.
            let Ok(slot) = self.pipelines.lock().map(|mut p| match p.get(&to.addr) {
                Some(slot) => slot.clone(),
                None => p.entry(to.addr.clone()).or_default().clone(),
            }) else {
                return Ok(None);
            };
            let state = slot
                .get_or_try_init(|| async {
                    match Pipeline::open(to.channel.clone(), &to.addr).await {
                        Ok(p) => Ok(PipelineState::Open(Arc::new(p))),
                        Err(s) if s.code() == Code::Unimplemented => {
                            tracing::info!(addr = %to.addr, "node offers no pipeline; using unary calls");
                            Ok(PipelineState::Unsupported(Instant::now()))
                        }
                        Err(s) => Err(s),
                    }
                })
                .await?;
            let stale = match state {
                PipelineState::Open(p) if p.is_open() => return Ok(Some(p.clone())),
                PipelineState::Unsupported(since) if since.elapsed() < RECHECK_UNSUPPORTED => {
                    return Ok(None);
                }
                _ => slot.clone(),
            };
            // Closed, or time to ask again: drop the slot (unless another call replaced it).
            if let Ok(mut pipelines) = self.pipelines.lock()
                && pipelines
                    .get(&to.addr)
                    .is_some_and(|s| Arc::ptr_eq(s, &stale))
            {
                pipelines.remove(&to.addr);
            }
        }
        Ok(None)
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<pb::PutResponse, ClientError> {
        self.put_request(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
    }

    /// A fenced put: applied only while `token` is the current fencing token of `lock`; else
    /// refused (`ErrorKind::Refused`, "fenced write rejected: ...").
    pub async fn put_fenced(
        &self,
        key: &[u8],
        value: &[u8],
        lock: &str,
        token: u64,
    ) -> Result<pb::PutResponse, ClientError> {
        self.put_request(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            fence_lock: lock.to_string(),
            fence_token: token,
        })
        .await
    }

    async fn put_request(&self, msg: pb::PutRequest) -> Result<pb::PutResponse, ClientError> {
        match self.kv_op(true, Route::Leader, Op::Put(msg)).await? {
            OpResult::Put(r) => Ok(r),
            other => Err(mismatched("put", &other)),
        }
    }

    pub async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<pb::GetResponse, ClientError> {
        let msg = pb::GetRequest {
            key: key.to_vec(),
            consistency: consistency as i32,
        };
        // A stale read is answered by whichever node is reached (followers answer it locally),
        // the other levels by the leader.
        let route = if consistency == Consistency::Stale {
            Route::AnyNode
        } else {
            Route::Leader
        };
        match self.kv_op(false, route, Op::Get(msg)).await? {
            OpResult::Get(r) => Ok(r),
            other => Err(mismatched("get", &other)),
        }
    }

    pub async fn delete(&self, key: &[u8]) -> Result<pb::DeleteResponse, ClientError> {
        let msg = pb::DeleteRequest { key: key.to_vec() };
        match self.kv_op(true, Route::Leader, Op::Delete(msg)).await? {
            OpResult::Delete(r) => Ok(r),
            other => Err(mismatched("delete", &other)),
        }
    }

    pub async fn cas(&self, req: pb::CasRequest) -> Result<pb::CasResponse, ClientError> {
        match self.kv_op(true, Route::Leader, Op::Cas(req)).await? {
            OpResult::Cas(r) => Ok(r),
            other => Err(mismatched("cas", &other)),
        }
    }

    pub async fn list(
        &self,
        prefix: &[u8],
        limit: u32,
        consistency: Consistency,
    ) -> Result<pb::ListResponse, ClientError> {
        let msg = pb::ListRequest {
            prefix: prefix.to_vec(),
            limit,
            consistency: consistency as i32,
        };
        let route = if consistency == Consistency::Stale {
            Route::AnyNode
        } else {
            Route::Leader
        };
        self.run_for(self.deadline, false, route, |to, t| {
            let m = msg.clone();
            async move {
                KvClient::new(to.channel)
                    .list(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Acquires `lock` for `holder` with a lease of `ttl`. With `wait` > 0 the leader queues the
    /// request (first in, first out) until the lock is granted or `wait` passes; the answer then
    /// names the current holder. Re-acquiring a held lock as the same holder returns its token.
    pub async fn acquire_lock(
        &self,
        lock: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<pb::AcquireLockResponse, ClientError> {
        let msg = pb::AcquireLockRequest {
            lock: lock.to_string(),
            holder: holder.to_string(),
            ttl_ms: ttl.as_millis() as u64,
            wait_ms: wait.as_millis() as u64,
        };
        let deadline = self.deadline.max(wait + Duration::from_secs(2));
        self.run_for(deadline, true, Route::Leader, |to, t| {
            let m = msg.clone();
            async move {
                LockClient::new(to.channel)
                    .acquire(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Extends the lease of `lock` (ttl zero: the lock's own TTL). Refused when `token` is not
    /// current (the lease was lost).
    pub async fn renew_lock(
        &self,
        lock: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<pb::RenewLockResponse, ClientError> {
        let msg = pb::RenewLockRequest {
            lock: lock.to_string(),
            token,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.run(true, |to, t| {
            let m = msg.clone();
            async move {
                LockClient::new(to.channel)
                    .renew(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Releases `lock` if `token` is current; a free lock answers `released: false`.
    pub async fn release_lock(
        &self,
        lock: &str,
        token: u64,
    ) -> Result<pb::ReleaseLockResponse, ClientError> {
        let msg = pb::ReleaseLockRequest {
            lock: lock.to_string(),
            token,
        };
        self.run(true, |to, t| {
            let m = msg.clone();
            async move {
                LockClient::new(to.channel)
                    .release(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// The lock's holder and lease (linearizable unless `consistency` says otherwise).
    pub async fn lock_status(
        &self,
        lock: &str,
        consistency: Consistency,
    ) -> Result<pb::LockStatusResponse, ClientError> {
        let msg = pb::LockStatusRequest {
            lock: lock.to_string(),
            consistency: consistency as i32,
        };
        self.run(false, |to, t| {
            let m = msg.clone();
            async move {
                LockClient::new(to.channel)
                    .status(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// A stream of applied changes to `lock` from whichever member answers: first its current
    /// state ("current"), then every grant, renewal, release and expiry in log order.
    pub async fn watch_lock(
        &self,
        lock: &str,
    ) -> Result<tonic::Streaming<pb::LockEvent>, ClientError> {
        let msg = pb::WatchLockRequest {
            lock: lock.to_string(),
        };
        self.run(false, |to, _| {
            let m = msg.clone();
            // No timeout on the request: the stream lives as long as the caller reads it.
            async move {
                LockClient::new(to.channel)
                    .watch(tonic::Request::new(m))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Status of the node at `addr` (no leader following).
    pub async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse, ClientError> {
        let ch = self.channel_for(addr)?;
        AdminClient::new(ch)
            .status(Self::req(pb::StatusRequest {}, Duration::from_secs(2)))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| {
                ClientError::new(
                    ErrorKind::Unavailable,
                    format!("status of {addr}: {}", s.message()),
                )
            })
    }

    /// Status from the leader if one is reachable, else from any node that answers.
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        let mut fallback = None;
        let mut last_err = None;
        for ep in &self.endpoints {
            match self.status_of(ep).await {
                Ok(s) if s.role == "leader" => return Ok(s),
                Ok(s) => {
                    if s.has_leader
                        && !s.leader_grpc_addr.is_empty()
                        && fallback.is_none()
                        && let Ok(l) = self.status_of(&s.leader_grpc_addr).await
                        && l.role == "leader"
                    {
                        return Ok(l);
                    }
                    fallback.get_or_insert(s);
                }
                Err(e) => last_err = Some(e),
            }
        }
        fallback.ok_or_else(|| {
            last_err
                .unwrap_or_else(|| ClientError::new(ErrorKind::Unavailable, "no endpoint answered"))
        })
    }

    /// Runs an admin call on the leader (following hints).
    pub async fn admin<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut call = call;
        self.run(false, move |to, t| call(AdminClient::new(to.channel), t))
            .await
    }

    pub async fn add_learner(
        &self,
        id: u64,
        grpc_addr: &str,
        http_addr: &str,
    ) -> Result<pb::MembershipResponse, ClientError> {
        let m = pb::AddLearnerRequest {
            member: Some(pb::MemberAddr {
                id,
                grpc_addr: grpc_addr.into(),
                http_addr: http_addr.into(),
            }),
            wait_caught_up: false,
        };
        self.admin(|mut c, t| {
            let m = m.clone();
            async move { c.add_learner(Self::req(m, t)).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn promote_voter(&self, id: u64) -> Result<pb::MembershipResponse, ClientError> {
        self.admin(|mut c, t| async move {
            c.promote_voter(Self::req(pb::PromoteVoterRequest { id }, t))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<pb::MembershipResponse, ClientError> {
        self.admin(|mut c, t| async move {
            c.remove_member(Self::req(pb::RemoveMemberRequest { id }, t))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    pub async fn transfer_leader(
        &self,
        to: u64,
    ) -> Result<pb::TransferLeaderResponse, ClientError> {
        self.admin(|mut c, t| async move {
            c.transfer_leader(Self::req(pb::TransferLeaderRequest { to }, t))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }
}
