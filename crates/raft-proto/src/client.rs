//! `RaftClient`: talks to a raftd cluster, follows leader hints, retries only what is safe.
//!
//! Retry rules:
//! - A failure the server labels `raft-outcome: not-applied` (not leader, no leader yet,
//!   uninitialized) is retried on the hinted leader or the next endpoint until the deadline.
//! - `no quorum` is returned at once: the cluster answered that a majority is unreachable.
//! - A connection that could not be established is retried (the request never left).
//! - Anything else after a write was sent (timeout, reset, `raft-outcome: unknown`) is returned
//!   as `OutcomeUnknown`: the write may or may not have been applied. Reads are always retried.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::kv_client::KvClient;
use crate::pb::lock_client::LockClient;

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

/// A cluster client. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct RaftClient {
    endpoints: Vec<String>,
    channels: Mutex<Vec<Option<Channel>>>,
    leader: Mutex<Option<String>>,
    next: Mutex<usize>,
    deadline: Duration,
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
    let outcome = md(status, "raft-outcome");
    let kind = md(status, "raft-error").unwrap_or("");
    let msg = status.message().to_string();
    match (outcome, kind) {
        (Some("not-applied"), "not-leader") => match md(status, "raft-leader-addr") {
            Some(addr) => Verdict::RetryAt(addr.to_string()),
            None => Verdict::RetryElsewhere(msg),
        },
        (Some("not-applied"), "no-quorum") => {
            Verdict::Fail(ClientError::new(ErrorKind::Unavailable, msg))
        }
        (Some("not-applied"), "no-leader" | "uninitialized") => Verdict::RetryElsewhere(msg),
        (Some("not-applied"), "invalid-argument") => {
            Verdict::Fail(ClientError::new(ErrorKind::InvalidArgument, msg))
        }
        (Some("not-applied"), _) => Verdict::Fail(ClientError::new(ErrorKind::Refused, msg)),
        (Some("unknown"), _) => Verdict::Fail(ClientError::new(
            if is_write {
                ErrorKind::OutcomeUnknown
            } else {
                ErrorKind::Other
            },
            msg,
        )),
        _ => {
            // No raftd metadata: a transport-level failure or a non-raftd error.
            let connect_failed = never_sent(status);
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
        let n = endpoints.len();
        Ok(Self {
            endpoints,
            channels: Mutex::new(vec![None; n]),
            leader: Mutex::new(None),
            next: Mutex::new(0),
            deadline: Duration::from_secs(5),
        })
    }

    /// Overall deadline per call (default 5 s), including retries.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel_for(&self, addr: &str) -> Result<Channel, ClientError> {
        let idx = self.endpoints.iter().position(|e| e == addr);
        if let Some(i) = idx
            && let Ok(chans) = self.channels.lock()
            && let Some(Some(c)) = chans.get(i)
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
            .tcp_nodelay(true);
        let ch = ep.connect_lazy();
        if let Some(i) = idx
            && let Ok(mut chans) = self.channels.lock()
            && let Some(slot) = chans.get_mut(i)
        {
            *slot = Some(ch.clone());
        }
        Ok(ch)
    }

    fn pick(&self) -> String {
        if let Ok(l) = self.leader.lock()
            && let Some(a) = l.as_ref()
        {
            return a.clone();
        }
        self.rotate()
    }

    fn rotate(&self) -> String {
        let mut n = match self.next.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let a = self.endpoints[*n % self.endpoints.len()].clone();
        *n = n.wrapping_add(1);
        a
    }

    fn set_leader(&self, a: Option<String>) {
        if let Ok(mut l) = self.leader.lock() {
            *l = a;
        }
    }

    /// Runs `call` against the leader (following hints) until success, a final error, or the deadline.
    async fn run<T, F, Fut>(&self, is_write: bool, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.run_for(self.deadline, is_write, call).await
    }

    /// `run` with an overall deadline other than the client's (a blocking lock acquire).
    async fn run_for<T, F, Fut>(
        &self,
        deadline: Duration,
        is_write: bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut addr = self.pick();
        let mut last_err = String::from("no endpoint answered");
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "deadline {:?} exceeded (not applied); last error: {last_err}",
                        deadline
                    ),
                ));
            }
            let ch = self.channel_for(&addr)?;
            match tokio::time::timeout(remaining, call(ch, remaining)).await {
                Ok(Ok(v)) => {
                    self.set_leader(Some(addr));
                    return Ok(v);
                }
                Ok(Err(status)) => match classify(&status, is_write) {
                    Verdict::RetryAt(a) => {
                        last_err = status.message().to_string();
                        if a == addr {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        self.set_leader(Some(a.clone()));
                        addr = a;
                    }
                    Verdict::RetryElsewhere(e) => {
                        last_err = e;
                        self.set_leader(None);
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        addr = self.rotate();
                    }
                    Verdict::Fail(e) => {
                        if e.kind == ErrorKind::OutcomeUnknown {
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
        self.run(true, |ch, t| {
            let m = msg.clone();
            async move {
                KvClient::new(ch)
                    .put(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
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
        // The same path for every level: a stale read is answered by whichever node is reached
        // (followers answer it locally), the others by the leader.
        self.run(false, |ch, t| {
            let m = msg.clone();
            async move {
                KvClient::new(ch)
                    .get(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<pb::DeleteResponse, ClientError> {
        let msg = pb::DeleteRequest { key: key.to_vec() };
        self.run(true, |ch, t| {
            let m = msg.clone();
            async move {
                KvClient::new(ch)
                    .delete(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    pub async fn cas(&self, req: pb::CasRequest) -> Result<pb::CasResponse, ClientError> {
        self.run(true, |ch, t| {
            let m = req.clone();
            async move {
                KvClient::new(ch)
                    .cas(Self::req(m, t))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
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
        self.run(false, |ch, t| {
            let m = msg.clone();
            async move {
                KvClient::new(ch)
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
        self.run_for(deadline, true, |ch, t| {
            let m = msg.clone();
            async move {
                LockClient::new(ch)
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
        self.run(true, |ch, t| {
            let m = msg.clone();
            async move {
                LockClient::new(ch)
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
        self.run(true, |ch, t| {
            let m = msg.clone();
            async move {
                LockClient::new(ch)
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
        self.run(false, |ch, t| {
            let m = msg.clone();
            async move {
                LockClient::new(ch)
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
        self.run(false, |ch, _| {
            let m = msg.clone();
            // No timeout on the request: the stream lives as long as the caller reads it.
            async move {
                LockClient::new(ch)
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
        self.run(false, move |ch, t| call(AdminClient::new(ch), t))
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
