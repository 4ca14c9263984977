//! The lock API's gRPC service: acquire (with FIFO waiting), renew, release, status, watch.
use std::sync::Arc;
use std::time::Duration;

use raft_proto::pb;
use tonic::{Request, Response, Status};

use crate::grpc::{deadline, level, to_status};
use crate::locks::{self, validate_lock_command};
use crate::node::{NodeError, RaftNode};
use crate::types::{Command, LockState};

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
