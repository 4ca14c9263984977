//! gRPC services: the client KV API, the lock API, the admin API, and the peer transport
//! (server side).
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use raft_proto::pb;
use raft_proto::pb::admin_server::Admin;
use raft_proto::pb::kv_server::Kv;
use raft_proto::pb::raft_peer_server::RaftPeer;
use raft_proto::wire;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::forward::{FORWARDED, Forwarder};
use crate::locks::{self, validate_lock_command};
use crate::node::{NodeError, RaftNode, ReadLevel, validate_prefix, validate_read_key};
use crate::status;
use crate::store::ClusterIdentity;
use crate::types::{Command, Expect, LockState, MemberNode, SnapshotMeta, Vote};

/// Ops of one pipelined stream that may be running at once (a client's flood waits in its own
/// stream, not in the server's memory).
const MAX_OPS_IN_FLIGHT_PER_STREAM: usize = 4096;

/// Default deadline when the client sends none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Turns a node error into a gRPC status with machine-readable metadata:
/// `raft-outcome` = `not-applied` | `unknown`, `raft-error` = kind, and leader hints.
pub fn to_status(e: NodeError) -> Status {
    use tonic::Code;
    use wire::OUTCOME_NOT_APPLIED as NOT_APPLIED;
    let msg = e.to_string();
    let (code, outcome, kind) = match &e {
        NodeError::NotLeader { .. } => {
            (Code::FailedPrecondition, NOT_APPLIED, wire::KIND_NOT_LEADER)
        }
        NodeError::NoQuorum { .. } => (Code::Unavailable, NOT_APPLIED, wire::KIND_NO_QUORUM),
        NodeError::NoLeader { .. } => (Code::Unavailable, NOT_APPLIED, wire::KIND_NO_LEADER),
        NodeError::Draining { .. } => (Code::Unavailable, NOT_APPLIED, wire::KIND_DRAINING),
        NodeError::OutcomeUnknown(_) => (
            Code::Unknown,
            wire::OUTCOME_UNKNOWN,
            wire::KIND_OUTCOME_UNKNOWN,
        ),
        NodeError::InvalidArgument { .. } => (
            Code::InvalidArgument,
            NOT_APPLIED,
            wire::KIND_INVALID_ARGUMENT,
        ),
        NodeError::Uninitialized(_) => (Code::Unavailable, NOT_APPLIED, wire::KIND_UNINITIALIZED),
        NodeError::Refused(_) => (Code::FailedPrecondition, NOT_APPLIED, wire::KIND_REFUSED),
        NodeError::LockConflict(_) => (
            Code::FailedPrecondition,
            NOT_APPLIED,
            wire::KIND_LOCK_CONFLICT,
        ),
        NodeError::FencedWriteRejected(_) => (
            Code::FailedPrecondition,
            NOT_APPLIED,
            wire::KIND_FENCED_WRITE_REJECTED,
        ),
        NodeError::Internal(_) => (Code::Internal, wire::OUTCOME_UNKNOWN, wire::KIND_INTERNAL),
    };
    let mut status = Status::new(code, msg);
    let md = status.metadata_mut();
    md.insert(wire::OUTCOME, MetadataValue::from_static(outcome));
    md.insert(wire::ERROR_KIND, MetadataValue::from_static(kind));
    if let NodeError::NotLeader {
        leader_id,
        leader_addr,
    }
    | NodeError::Draining {
        leader_id,
        leader_addr,
    } = &e
    {
        if let Some(id) = leader_id
            && let Ok(v) = id.to_string().parse()
        {
            md.insert(wire::LEADER_ID, v);
        }
        if let Some(a) = leader_addr
            && let Ok(v) = a.parse()
        {
            md.insert(wire::LEADER_ADDR, v);
        }
    }
    status
}

/// The client's deadline from the `grpc-timeout` header, else 5 s.
fn deadline<T>(req: &Request<T>) -> Duration {
    let Some(v) = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
    else {
        return DEFAULT_DEADLINE;
    };
    if v.len() < 2 {
        return DEFAULT_DEADLINE;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let Ok(n) = num.parse::<u64>() else {
        return DEFAULT_DEADLINE;
    };
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => DEFAULT_DEADLINE,
    };
    // Leave a little time for the answer to travel back.
    d.saturating_sub(Duration::from_millis(20))
        .max(Duration::from_millis(10))
}

fn level(c: i32) -> Result<ReadLevel, Status> {
    match pb::Consistency::try_from(c) {
        Ok(pb::Consistency::Linearizable) => Ok(ReadLevel::Linearizable),
        Ok(pb::Consistency::Lease) => Ok(ReadLevel::Lease),
        Ok(pb::Consistency::ReadIndex) => Ok(ReadLevel::ReadIndex),
        Ok(pb::Consistency::Stale) => Ok(ReadLevel::Stale),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency: unknown level {c}; use linearizable, lease, read_index or stale"
        ))),
    }
}

#[derive(Clone)]
pub struct KvService {
    pub node: Arc<RaftNode>,
    pub forwarder: Arc<Forwarder>,
}

impl KvService {
    /// A client KV service on `node`, forwarding to the leader when `node` follows.
    pub fn new(node: Arc<RaftNode>) -> Self {
        Self {
            node,
            forwarder: Arc::default(),
        }
    }

    /// Starts one pipelined op; its result goes to `results`. An op that can finish without
    /// waiting (a lease read, a bad request) is answered inline, without a task. `slot` is the
    /// op's place among its stream's ops in flight, held until the op is answered.
    fn start_op(
        &self,
        op: pb::KvOp,
        results: &mpsc::UnboundedSender<pb::KvOpResult>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let id = op.id;
        let service = self.clone();
        let mut answer = Box::pin(async move { service.run_op(op).await });
        if let Some(result) = (&mut answer).now_or_never() {
            let _ = results.send(pb::KvOpResult {
                id,
                result: Some(result),
            });
            return;
        }
        let results = results.clone();
        tokio::spawn(async move {
            let result = answer.await;
            let _ = results.send(pb::KvOpResult {
                id,
                result: Some(result),
            });
            drop(slot);
        });
    }

    /// One pipelined op, through the same handler (forwarding, validation, errors) as its unary
    /// call.
    async fn run_op(&self, op: pb::KvOp) -> pb::kv_op_result::Result {
        use pb::kv_op::Op;
        use pb::kv_op_result::Result as R;
        let timeout = match op.timeout_ms {
            0 => DEFAULT_DEADLINE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        fn request<T>(message: T, timeout: Duration) -> Request<T> {
            let mut r = Request::new(message);
            r.set_timeout(timeout);
            r
        }
        let answer = match op.op {
            Some(Op::Put(m)) => self
                .put(request(m, timeout))
                .await
                .map(|r| R::Put(r.into_inner())),
            Some(Op::Get(m)) => self
                .get(request(m, timeout))
                .await
                .map(|r| R::Get(r.into_inner())),
            Some(Op::Delete(m)) => self
                .delete(request(m, timeout))
                .await
                .map(|r| R::Delete(r.into_inner())),
            Some(Op::Cas(m)) => self
                .cas(request(m, timeout))
                .await
                .map(|r| R::Cas(r.into_inner())),
            None => Err(to_status(NodeError::InvalidArgument {
                field: "op".into(),
                reason: "not set; one of put, get, delete or cas is required".into(),
            })),
        };
        answer.unwrap_or_else(|status| R::Error(raft_proto::pipeline::op_error(&status)))
    }

    /// Where to forward this request: the leader, when this node follows one and the request
    /// was not forwarded already. Checked before any work, so the leader's own path is untouched.
    /// The returned guard counts the forward as a request in flight, which a drain waits for;
    /// a draining node forwards nothing (its own path answers "draining", with a leader hint).
    fn forward_to<T>(&self, req: &Request<T>) -> Option<(String, crate::node::InFlight<'_>)> {
        if req.metadata().get(FORWARDED).is_some() {
            return None;
        }
        let addr = self.node.leader_addr_if_follower()?;
        let in_flight = self.node.begin_request()?;
        Some((addr, in_flight))
    }

    /// The "not leader" error with a hint, for a forward that could not reach the leader.
    fn not_leader(&self, addr: &str) -> impl FnOnce() -> Status {
        let leader_id = None;
        let addr = addr.to_string();
        move || {
            to_status(NodeError::NotLeader {
                leader_id,
                leader_addr: Some(addr),
            })
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let d = deadline(&req);
        if let Some((addr, _in_flight)) = self.forward_to(&req) {
            return self
                .forwarder
                .forward(
                    &addr,
                    req.into_inner(),
                    d,
                    true,
                    self.not_leader(&addr),
                    |mut c, r| async move { c.put(r).await },
                )
                .await;
        }
        let r = req.into_inner();
        let cmd = match (r.fence_lock.is_empty(), r.fence_token) {
            (true, 0) => Command::Put {
                key: r.key,
                value: r.value,
            },
            (true, _) => {
                return Err(to_status(NodeError::InvalidArgument {
                    field: "fence_lock".into(),
                    reason: "must be set together with fence_token".into(),
                }));
            }
            (false, token) => Command::FencedPut {
                key: r.key,
                value: r.value,
                lock: r.fence_lock,
                token,
            },
        };
        let res = self.node.write(cmd, d).await.map_err(to_status)?;
        if let Some(why) = res.rejection {
            return Err(to_status(NodeError::FencedWriteRejected(why)));
        }
        Ok(Response::new(pb::PutResponse {
            revision: res.revision,
            had_previous: res.previous.is_some(),
        }))
    }

    type PipelineStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<pb::KvOpResultBatch, Status>> + Send>>;

    async fn pipeline(
        &self,
        req: Request<Streaming<pb::KvOpBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let mut ops = req.into_inner();
        let (results, queued) = mpsc::unbounded_channel();
        // Why the stream ended early, sent after the answers to the ops already received.
        let (ended_by, end_reason) = tokio::sync::oneshot::channel::<Status>();
        let service = self.clone();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_OPS_IN_FLIGHT_PER_STREAM));
        tokio::spawn(async move {
            loop {
                match ops.message().await {
                    Ok(Some(batch)) => {
                        let counters = &service.node.counters;
                        counters.pipeline_batches.fetch_add(1, Ordering::Relaxed);
                        counters
                            .pipeline_ops
                            .fetch_add(batch.ops.len() as u64, Ordering::Relaxed);
                        for op in batch.ops {
                            // At most MAX_OPS_IN_FLIGHT_PER_STREAM ops run per stream; beyond
                            // that the stream is not read, and HTTP/2 flow control holds the
                            // client back.
                            let Ok(slot) = in_flight.clone().acquire_owned().await else {
                                break;
                            };
                            service.start_op(op, &results, slot);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        // A malformed or oversized batch ends this stream only; ops already
                        // started still answer, and other clients' streams are untouched.
                        tracing::debug!(error = %status, "pipeline stream ended by a bad message");
                        let _ = ended_by.send(Status::new(
                            status.code(),
                            format!(
                                "pipeline: a batch could not be read, so this stream ends (ops \
                                 received before it are answered; the unread batch was not \
                                 applied): {}",
                                status.message()
                            ),
                        ));
                        break;
                    }
                }
            }
        });
        let batches =
            raft_proto::pipeline::coalesce(queued, |results| pb::KvOpResultBatch { results });
        let end = futures::stream::once(end_reason).filter_map(|r| async move { r.ok().map(Err) });
        Ok(Response::new(Box::pin(batches.map(Ok).chain(end))))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let d = deadline(&req);
        if req.get_ref().consistency != pb::Consistency::Stale as i32
            && let Some((addr, _in_flight)) = self.forward_to(&req)
        {
            return self
                .forwarder
                .forward(
                    &addr,
                    req.into_inner(),
                    d,
                    false,
                    self.not_leader(&addr),
                    |mut c, r| async move { c.get(r).await },
                )
                .await;
        }
        let r = req.into_inner();
        validate_read_key(&r.key).map_err(to_status)?;
        let lvl = level(r.consistency)?;
        let (served, kv) = self.node.linearize(lvl, d).await.map_err(to_status)?;
        let revision = kv.applied();
        let data = kv
            .data
            .read()
            .map_err(|e| Status::internal(e.to_string()))?;
        let (found, value, mod_revision) = match data.kv.get(&r.key) {
            Some((v, rev)) => (true, v.clone(), *rev),
            None => (false, Vec::new(), 0),
        };
        Ok(Response::new(pb::GetResponse {
            found,
            value,
            mod_revision,
            revision,
            stale: served == crate::node::ServedBy::Stale,
            served_by: served.as_str().to_string(),
            served_by_node: self.node.id,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let d = deadline(&req);
        if let Some((addr, _in_flight)) = self.forward_to(&req) {
            return self
                .forwarder
                .forward(
                    &addr,
                    req.into_inner(),
                    d,
                    true,
                    self.not_leader(&addr),
                    |mut c, r| async move { c.delete(r).await },
                )
                .await;
        }
        let r = req.into_inner();
        let res = self
            .node
            .write(Command::Delete { key: r.key }, d)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteResponse {
            revision: res.revision,
            deleted: res.previous.is_some(),
        }))
    }

    async fn cas(&self, req: Request<pb::CasRequest>) -> Result<Response<pb::CasResponse>, Status> {
        let d = deadline(&req);
        if let Some((addr, _in_flight)) = self.forward_to(&req) {
            return self
                .forwarder
                .forward(
                    &addr,
                    req.into_inner(),
                    d,
                    true,
                    self.not_leader(&addr),
                    |mut c, r| async move { c.cas(r).await },
                )
                .await;
        }
        let r = req.into_inner();
        let expect = match r.expected {
            Some(pb::cas_request::Expected::ExpectedValue(v)) => Expect::Value(v),
            Some(pb::cas_request::Expected::ExpectedModRevision(rev)) => Expect::ModRevision(rev),
            Some(pb::cas_request::Expected::ExpectAbsent(true)) => Expect::Absent,
            Some(pb::cas_request::Expected::ExpectAbsent(false)) | None => {
                return Err(Status::invalid_argument(
                    "expected: set one of expected_value, expected_mod_revision or expect_absent=true",
                ));
            }
        };
        let new_value = if r.delete { None } else { Some(r.new_value) };
        let res = self
            .node
            .write(
                Command::Cas {
                    key: r.key,
                    expect,
                    new_value,
                },
                d,
            )
            .await
            .map_err(to_status)?;
        let (found, current_value, current_mod_revision) = match res.previous {
            Some((v, rev)) => (true, v, rev),
            None => (false, Vec::new(), 0),
        };
        Ok(Response::new(pb::CasResponse {
            succeeded: res.succeeded,
            revision: res.revision,
            found,
            current_value,
            current_mod_revision,
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let d = deadline(&req);
        if req.get_ref().consistency != pb::Consistency::Stale as i32
            && let Some((addr, _in_flight)) = self.forward_to(&req)
        {
            return self
                .forwarder
                .forward(
                    &addr,
                    req.into_inner(),
                    d,
                    false,
                    self.not_leader(&addr),
                    |mut c, r| async move { c.list(r).await },
                )
                .await;
        }
        let r = req.into_inner();
        validate_prefix(&r.prefix).map_err(to_status)?;
        let lvl = level(r.consistency)?;
        let (served, kv) = self.node.linearize(lvl, d).await.map_err(to_status)?;
        let revision = kv.applied();
        let limit = if r.limit == 0 {
            10_000
        } else {
            r.limit as usize
        };
        let data = kv
            .data
            .read()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut items = Vec::new();
        let mut more = false;
        for (k, (v, rev)) in data.kv.range(r.prefix.clone()..) {
            if !k.starts_with(&r.prefix) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(pb::KeyValue {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *rev,
            });
        }
        Ok(Response::new(pb::ListResponse {
            items,
            revision,
            stale: served == crate::node::ServedBy::Stale,
            more,
        }))
    }
}

/// The wire form of a held lock.
pub fn lock_info(name: &str, l: &LockState) -> pb::LockInfo {
    pb::LockInfo {
        lock: name.to_string(),
        holder: l.holder.clone(),
        token: l.token,
        granted_at_ms: l.granted_at_ms,
        expires_at_ms: l.expires_at_ms,
        ttl_ms: l.ttl_ms,
        term: l.term,
        epoch: l.epoch,
        grant_index: l.grant_index,
    }
}

/// The lock API. Acquire, Renew, Release and Status must reach the leader (a follower answers
/// "not leader" with a hint that `RaftClient` follows); Watch is served by any member from its
/// own applied log.
pub struct LockService {
    pub node: Arc<RaftNode>,
}

/// How much of the client's deadline a blocked acquire leaves for its final proposal and answer.
const ACQUIRE_ANSWER_MARGIN: Duration = Duration::from_millis(300);

type LockEventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LockEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn acquire(
        &self,
        req: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        let d = deadline(&req);
        let r = req.into_inner();
        validate_lock_command(&Command::AcquireLock {
            lock: r.lock.clone(),
            holder: r.holder.clone(),
            ttl_ms: r.ttl_ms,
            now_ms: 0,
        })
        .map_err(to_status)?;
        let wait = Duration::from_millis(r.wait_ms).min(d.saturating_sub(ACQUIRE_ANSWER_MARGIN));
        let res = locks::acquire(&self.node, &r.lock, &r.holder, r.ttl_ms, wait)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::AcquireLockResponse {
            granted: res.succeeded,
            token: if res.succeeded {
                res.lock.as_ref().map(|l| l.token).unwrap_or(0)
            } else {
                0
            },
            current: res.lock.as_ref().map(|l| lock_info(&r.lock, l)),
            revision: res.revision,
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewLockRequest>,
    ) -> Result<Response<pb::RenewLockResponse>, Status> {
        let d = deadline(&req);
        let r = req.into_inner();
        let res = self
            .node
            .write(
                Command::RenewLock {
                    lock: r.lock.clone(),
                    token: r.token,
                    ttl_ms: r.ttl_ms,
                    now_ms: locks::now_ms(),
                },
                d,
            )
            .await
            .map_err(to_status)?;
        if let Some(why) = res.rejection {
            return Err(to_status(NodeError::LockConflict(why)));
        }
        Ok(Response::new(pb::RenewLockResponse {
            current: res.lock.as_ref().map(|l| lock_info(&r.lock, l)),
            revision: res.revision,
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let d = deadline(&req);
        let r = req.into_inner();
        let res = self
            .node
            .write(
                Command::ReleaseLock {
                    lock: r.lock,
                    token: r.token,
                },
                d,
            )
            .await
            .map_err(to_status)?;
        match (res.succeeded, res.rejection) {
            (true, _) => Ok(Response::new(pb::ReleaseLockResponse {
                released: true,
                revision: res.revision,
            })),
            // Already free (released before, or expired): nothing to release.
            (false, _) if res.lock.is_none() => Ok(Response::new(pb::ReleaseLockResponse {
                released: false,
                revision: res.revision,
            })),
            (false, why) => Err(to_status(NodeError::LockConflict(
                why.unwrap_or_else(|| "release refused".into()),
            ))),
        }
    }

    async fn status(
        &self,
        req: Request<pb::LockStatusRequest>,
    ) -> Result<Response<pb::LockStatusResponse>, Status> {
        let d = deadline(&req);
        let r = req.into_inner();
        locks::validate_name("lock", &r.lock).map_err(to_status)?;
        let lvl = level(r.consistency)?;
        let (_, kv) = self.node.linearize(lvl, d).await.map_err(to_status)?;
        let revision = kv.applied();
        let sm = kv
            .data
            .read()
            .map_err(|e| Status::internal(e.to_string()))?;
        let current = sm.locks.get(&r.lock).map(|l| lock_info(&r.lock, l));
        Ok(Response::new(pb::LockStatusResponse {
            held: current.is_some(),
            current,
            revision,
            epoch: sm.epoch,
            waiters: self.node.lock_waiters.waiting_for(&r.lock) as u32,
        }))
    }

    type WatchStream = LockEventStream;

    async fn watch(
        &self,
        req: Request<pb::WatchLockRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let name = req.into_inner().lock;
        locks::validate_name("lock", &name).map_err(to_status)?;
        let node = self.node.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<pb::LockEvent, Status>>(64);
        tokio::spawn(async move {
            // Subscribe before reading the current state: no change can fall in between.
            let mut events = node.lock_hub.events.subscribe();
            let current = |node: &RaftNode| -> pb::LockEvent {
                let kv = node.core().kv.clone();
                let revision = kv.applied();
                let held = kv
                    .data
                    .read()
                    .ok()
                    .and_then(|sm| sm.locks.get(&name).map(|l| lock_info(&name, l)));
                pb::LockEvent {
                    lock: name.clone(),
                    kind: "current".into(),
                    held: held.is_some(),
                    current: held,
                    revision,
                    served_by_node: node.id,
                }
            };
            if tx.send(Ok(current(&node))).await.is_err() {
                return;
            }
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = tx.closed() => return,
                };
                let msg = match ev {
                    Ok(e) if e.lock == name => pb::LockEvent {
                        lock: e.lock.clone(),
                        kind: e.kind.as_str().into(),
                        held: e.state.is_some(),
                        current: e.state.as_ref().map(|l| lock_info(&e.lock, l)),
                        revision: e.index,
                        served_by_node: node.id,
                    },
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => current(&node),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }
}

pub struct AdminService {
    pub node: Arc<RaftNode>,
}

fn member_addr(m: Option<pb::MemberAddr>) -> Result<(u64, MemberNode), Status> {
    let m = m.ok_or_else(|| Status::invalid_argument("member: required"))?;
    Ok((
        m.id,
        MemberNode {
            grpc_addr: m.grpc_addr,
            http_addr: m.http_addr,
        },
    ))
}

impl AdminService {
    /// The answer to a membership call: its log revision, whether it changed anything, and the
    /// members as this node now sees them.
    async fn membership_response(
        &self,
        revision: u64,
        changed: bool,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let st = status::status(&self.node).await;
        Ok(Response::new(pb::MembershipResponse {
            revision,
            changed,
            members: st.members,
        }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status::status(&self.node).await))
    }

    async fn initialize(
        &self,
        req: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        let r = req.into_inner();
        let members = r
            .members
            .into_iter()
            .map(|m| {
                (
                    m.id,
                    MemberNode {
                        grpc_addr: m.grpc_addr,
                        http_addr: m.http_addr,
                    },
                )
            })
            .collect();
        let already = self
            .node
            .initialize(&r.cluster_id, members)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::InitializeResponse {
            already_initialized: already,
        }))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let r = req.into_inner();
        let (id, node) = member_addr(r.member)?;
        let (revision, changed) = self
            .node
            .add_learner(id, node, r.wait_caught_up)
            .await
            .map_err(to_status)?;
        self.membership_response(revision, changed).await
    }

    async fn promote_voter(
        &self,
        req: Request<pb::PromoteVoterRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let (revision, changed) = self
            .node
            .promote_voter(req.into_inner().id)
            .await
            .map_err(to_status)?;
        self.membership_response(revision, changed).await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let (revision, changed) = self
            .node
            .remove_member(req.into_inner().id)
            .await
            .map_err(to_status)?;
        self.membership_response(revision, changed).await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let leader_id = self
            .node
            .transfer_leader(req.into_inner().to)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TransferLeaderResponse { leader_id }))
    }

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let snapshot_index = self.node.snapshot_now().await.map_err(to_status)?;
        Ok(Response::new(pb::SnapshotResponse { snapshot_index }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let r = req.into_inner();
        let already = self
            .node
            .join(&ClusterIdentity {
                cluster_id: r.cluster_id,
                epoch: r.epoch,
                recovery_id: r.recovery_id,
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::JoinResponse {
            already_joined: already,
        }))
    }

    async fn force_recover(
        &self,
        req: Request<pb::ForceRecoverRequest>,
    ) -> Result<Response<pb::ForceRecoverResponse>, Status> {
        let r = req.into_inner();
        let out = self
            .node
            .force_recover(
                &r.cluster_id,
                r.new_epoch,
                &r.recovery_id,
                r.even_if_quorum_answers,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ForceRecoverResponse {
            previous_last_index: out.previous_last_index,
            previous_last_term: out.previous_last_term,
            membership_index: out.membership_index,
            epoch: out.epoch,
            already_recovered: out.already,
            recovery_id: r.recovery_id,
        }))
    }
}

pub struct PeerService {
    pub node: Arc<RaftNode>,
}

fn reply<T: Serialize, E: std::fmt::Display>(
    res: Result<T, E>,
) -> Result<Response<pb::PeerReply>, Status> {
    let res: Result<T, String> = res.map_err(|e| e.to_string());
    let payload =
        postcard::to_stdvec(&res).map_err(|e| Status::internal(format!("encoding reply: {e}")))?;
    Ok(Response::new(pb::PeerReply { payload }))
}

/// Which peer messages may make an empty node adopt the sender's cluster: only a leader's
/// (entries or a snapshot), never a candidate's vote request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FromLeader {
    Yes,
    No,
}

impl PeerService {
    /// Decodes a peer request and admits its sender. The payload is decoded first, so a request
    /// that is not a valid message changes nothing (an empty node adopts no identity from it).
    fn admit<T: for<'a> serde::Deserialize<'a>>(
        &self,
        req: Request<pb::PeerRequest>,
        what: &str,
        from_leader: FromLeader,
    ) -> Result<(u64, T), Status> {
        let r = req.into_inner();
        if self.node.faults.drops_from(r.from) {
            return Err(Status::unavailable(format!(
                "fault injection: the link from node {} is cut",
                r.from
            )));
        }
        let msg: T = postcard::from_bytes(&r.payload).map_err(|e| {
            Status::invalid_argument(format!(
                "payload: not a valid {what} message from node {}: {e}",
                r.from
            ))
        })?;
        let sender = ClusterIdentity {
            cluster_id: r.cluster_id,
            epoch: r.epoch,
            recovery_id: r.recovery_id,
        };
        self.node
            .admit_peer(r.from, &sender, from_leader == FromLeader::Yes)
            .map_err(to_status)?;
        Ok((r.from, msg))
    }

    /// The reply to `from`, unless the fault layer cuts the link back to it.
    fn reply_to<T: Serialize, E: std::fmt::Display>(
        &self,
        from: u64,
        res: Result<T, E>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        if self.node.faults.drops_to(from) {
            return Err(Status::unavailable(format!(
                "fault injection: the link to node {from} is cut (the request was processed, its reply lost)"
            )));
        }
        reply(res)
    }

    /// A voter whose Raft instance started less than one lease ago grants no vote: its vote
    /// lease (the promise not to elect anyone while it recently heard from a leader) was in
    /// memory and is gone, and the old leader may still be serving lease reads on its ack.
    fn refuse_vote_while_restarting(&self, from: u64) -> Result<(), Status> {
        match self.node.within_vote_hold() {
            Some(age) => Err(Status::unavailable(format!(
                "node {} started {} ms ago and grants no vote within one lease ({} ms) of starting; node {from} may retry",
                self.node.id,
                age.as_millis(),
                self.node.timing().vote_hold_after_start.as_millis()
            ))),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        let (from, rpc): (u64, AppendEntriesRequest<crate::types::TypeConfig>) =
            self.admit(req, "AppendEntries", FromLeader::Yes)?;
        let leader_commit = rpc.leader_commit.as_ref().map(|l| l.index);
        let res = self.node.raft().append_entries(rpc).await;
        if let (Ok(resp), Some(commit)) = (&res, leader_commit)
            && resp.is_success()
        {
            self.node.saw_leader_commit(from, commit);
        }
        self.reply_to(from, res)
    }

    async fn vote(&self, req: Request<pb::PeerRequest>) -> Result<Response<pb::PeerReply>, Status> {
        let (from, rpc): (u64, VoteRequest<crate::types::TypeConfig>) =
            self.admit(req, "Vote", FromLeader::No)?;
        self.refuse_vote_while_restarting(from)?;
        let res = self.node.raft().vote(rpc).await;
        self.reply_to(from, res)
    }

    async fn pre_vote(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        let (from, rpc): (u64, VoteRequest<crate::types::TypeConfig>) =
            self.admit(req, "PreVote", FromLeader::No)?;
        self.refuse_vote_while_restarting(from)?;
        let res = self.node.raft().pre_vote(rpc).await;
        self.reply_to(from, res)
    }

    async fn full_snapshot(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        let (from, (vote, meta, data)): (u64, (Vote, SnapshotMeta, Vec<u8>)) =
            self.admit(req, "FullSnapshot", FromLeader::Yes)?;
        let snapshot = crate::types::Snapshot {
            meta,
            snapshot: data,
        };
        let res = self.node.raft().install_full_snapshot(vote, snapshot).await;
        self.reply_to(from, res)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        let (from, rpc): (u64, TransferLeaderRequest<crate::types::TypeConfig>) =
            self.admit(req, "TransferLeader", FromLeader::No)?;
        let res = self.node.raft().handle_transfer_leader(rpc).await;
        self.reply_to(from, res)
    }
}
