//! The client KV API's gRPC service (unary calls and the pipelined stream), and the error
//! mapping every service shares; the lock, admin and peer services live beside it.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use raft_proto::pb;
use raft_proto::pb::kv_server::Kv;
use raft_proto::wire;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

pub use crate::admin_service::AdminService;
use crate::forward::{FORWARDED, Forwarder};
pub use crate::lock_service::{LockService, lock_info};
use crate::node::{NodeError, RaftNode, ReadLevel, validate_prefix, validate_read_key};
pub use crate::peer_service::PeerService;
use crate::types::{Command, Expect};

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
pub(crate) fn deadline<T>(req: &Request<T>) -> Duration {
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

pub(crate) fn level(c: i32) -> Result<ReadLevel, Status> {
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
