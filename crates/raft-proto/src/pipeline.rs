//! The pipelined KV stream (`Kv.Pipeline`): batching of queued ops into one message, the
//! conversion of errors to and from their wire form, and the client end of the stream.
//!
//! Nothing waits to fill a batch: a sender takes the first queued item, adds whatever else is
//! already queued (up to `MAX_BATCH_ITEMS` items or `MAX_BATCH_BYTES`), and sends. An idle client
//! therefore sends batches of one, and a busy one amortizes the per-message cost over many ops.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::pb;
use crate::pb::kv_client::KvClient;

/// Most items in one batch message.
pub const MAX_BATCH_ITEMS: usize = 256;
/// A batch stops growing once its items reach this many encoded bytes (one item may exceed it).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Ops larger than this go by the unary call, whose own size checks answer them, so one
/// oversized op can never break a stream that other ops share.
pub const MAX_PIPELINED_OP_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Decoding limit for batch messages on both ends (a batch of items each under the op limit).
pub const MAX_BATCH_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Metadata a client sets on a status it made up for an op that never left the client.
const NOT_SENT: &str = "raft-client-not-sent";

/// A stream of batches: each takes the next queued item and whatever else is already queued.
pub fn coalesce<T, B>(
    queue: mpsc::UnboundedReceiver<T>,
    wrap: fn(Vec<T>) -> B,
) -> impl Stream<Item = B> + Send + 'static
where
    T: Message + Send + 'static,
    B: Send + 'static,
{
    futures::stream::unfold(queue, move |mut queue| async move {
        let first = queue.recv().await?;
        let mut bytes = first.encoded_len();
        let mut items = vec![first];
        while items.len() < MAX_BATCH_ITEMS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(item) => {
                    bytes += item.encoded_len();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        Some((wrap(items), queue))
    })
}

/// A gRPC status in its wire form for a pipelined op: code, message and ASCII metadata.
pub fn op_error(status: &Status) -> pb::KvOpError {
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|entry| match entry {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => v
                .to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string())),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    pb::KvOpError {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata,
    }
}

/// The status a pipelined op's error stands for, metadata included.
pub fn op_status(error: pb::KvOpError) -> Status {
    let mut metadata = MetadataMap::new();
    for (k, v) in error.metadata {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse::<MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            metadata.insert(k, v);
        }
    }
    Status::with_metadata(Code::from(error.code), error.message, metadata)
}

/// True for a status the client made up for an op that never left it (safe to send elsewhere).
pub fn never_left_client(status: &Status) -> bool {
    status.metadata().get(NOT_SENT).is_some()
}

fn not_sent(why: &str) -> Status {
    let mut status = Status::unavailable(why.to_string());
    status
        .metadata_mut()
        .insert(NOT_SENT, MetadataValue::from_static("true"));
    status
}

type Waiter = oneshot::Sender<Result<pb::kv_op_result::Result, Status>>;

/// The ops sent on one stream and not yet answered.
#[derive(Default)]
struct InFlight {
    waiters: Mutex<HashMap<u64, Waiter>>,
    closed: AtomicBool,
}

impl InFlight {
    /// Registers a waiter unless the stream is closed.
    fn register(&self, id: u64, waiter: Waiter) -> Result<(), Status> {
        let mut waiters = self
            .waiters
            .lock()
            .map_err(|_| not_sent("pipeline state poisoned"))?;
        if self.closed.load(Ordering::Acquire) {
            return Err(not_sent("pipeline closed before the op was sent"));
        }
        waiters.insert(id, waiter);
        Ok(())
    }

    fn forget(&self, id: u64) {
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(&id);
        }
    }

    fn complete(&self, result: pb::KvOpResult) {
        let waiter = match self.waiters.lock() {
            Ok(mut waiters) => waiters.remove(&result.id),
            Err(_) => None,
        };
        if let Some(waiter) = waiter {
            let answer = match result.result {
                Some(pb::kv_op_result::Result::Error(e)) => Err(op_status(e)),
                Some(r) => Ok(r),
                None => Err(Status::internal(format!(
                    "server answered op {} with an empty result",
                    result.id
                ))),
            };
            let _ = waiter.send(answer);
        }
    }

    /// Fails every op in flight: each was sent, so a write's outcome is unknown.
    fn close(&self, why: &str) {
        self.closed.store(true, Ordering::Release);
        let drained: Vec<Waiter> = match self.waiters.lock() {
            Ok(mut waiters) => waiters.drain().map(|(_, w)| w).collect(),
            Err(_) => Vec::new(),
        };
        for waiter in drained {
            let _ = waiter.send(Err(Status::unavailable(why.to_string())));
        }
    }
}

/// Removes an op's waiter when its caller stops waiting (deadline) before the answer came.
struct ForgetOnDrop<'a> {
    in_flight: &'a InFlight,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.in_flight.forget(self.id);
    }
}

/// The client end of one `Kv.Pipeline` stream to one node.
pub struct Pipeline {
    queue: mpsc::UnboundedSender<pb::KvOp>,
    in_flight: Arc<InFlight>,
    next_id: AtomicU64,
}

impl Pipeline {
    /// Opens the stream: returns once the server accepted it (its response headers arrived), so
    /// a node that cannot be reached fails here, before any op is queued.
    pub async fn open(channel: Channel, addr: &str) -> Result<Self, Status> {
        let (queue, queued) = mpsc::unbounded_channel();
        let requests = coalesce(queued, |ops| pb::KvOpBatch { ops });
        let mut responses = KvClient::new(channel)
            .max_decoding_message_size(MAX_BATCH_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_BATCH_MESSAGE_BYTES)
            .pipeline(requests)
            .await?
            .into_inner();
        let in_flight = Arc::new(InFlight::default());
        let reader = in_flight.clone();
        let addr = addr.to_string();
        tokio::spawn(async move {
            let why = loop {
                match responses.message().await {
                    Ok(Some(batch)) => {
                        for result in batch.results {
                            reader.complete(result);
                        }
                    }
                    Ok(None) => break "the node closed the stream".to_string(),
                    Err(status) => break format!("{}: {}", status.code(), status.message()),
                }
            };
            tracing::debug!(%addr, %why, "pipeline closed");
            reader.close(&format!(
                "the answer was lost: pipeline to {addr} closed ({why})"
            ));
        });
        Ok(Self {
            queue,
            in_flight,
            next_id: AtomicU64::new(1),
        })
    }

    /// False once the stream ended; a closed pipeline is replaced by a new one.
    pub fn is_open(&self) -> bool {
        !self.in_flight.closed.load(Ordering::Acquire) && !self.queue.is_closed()
    }

    /// Sends one op and waits for its answer. A status that `never_left_client` marks was not
    /// sent; any other failure after sending leaves a write's outcome unknown.
    pub async fn call(
        &self,
        op: pb::kv_op::Op,
        timeout: Duration,
    ) -> Result<pb::kv_op_result::Result, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, answer) = oneshot::channel();
        self.in_flight.register(id, waiter)?;
        let _forget = ForgetOnDrop {
            in_flight: &self.in_flight,
            id,
        };
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        self.queue
            .send(pb::KvOp {
                id,
                timeout_ms,
                op: Some(op),
            })
            .map_err(|_| not_sent("pipeline closed before the op was sent"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("pipeline dropped the op's answer")))
    }
}

/// Whether an op is small enough to share a stream (see `MAX_PIPELINED_OP_BYTES`).
pub fn fits_pipeline(op: &pb::kv_op::Op) -> bool {
    let len = match op {
        pb::kv_op::Op::Put(m) => m.encoded_len(),
        pb::kv_op::Op::Get(m) => m.encoded_len(),
        pb::kv_op::Op::Delete(m) => m.encoded_len(),
        pb::kv_op::Op::Cas(m) => m.encoded_len(),
    };
    len <= MAX_PIPELINED_OP_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn op_errors_keep_code_message_and_metadata() {
        let mut status = Status::failed_precondition("not leader; leader is node 2");
        status
            .metadata_mut()
            .insert("raft-outcome", MetadataValue::from_static("not-applied"));
        status
            .metadata_mut()
            .insert("raft-leader-addr", MetadataValue::from_static("n2:7000"));
        let back = op_status(op_error(&status));
        assert_eq!(back.code(), Code::FailedPrecondition);
        assert_eq!(back.message(), "not leader; leader is node 2");
        assert_eq!(
            back.metadata()
                .get("raft-leader-addr")
                .and_then(|v| v.to_str().ok()),
            Some("n2:7000")
        );
        assert!(!never_left_client(&back));
        assert!(never_left_client(&not_sent("x")));
    }

    #[tokio::test]
    async fn coalesce_takes_what_is_queued_and_never_waits_for_more() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut batches = Box::pin(coalesce(rx, |v: Vec<pb::GetRequest>| v));
        for i in 0..300u32 {
            tx.send(pb::GetRequest {
                key: i.to_be_bytes().to_vec(),
                consistency: 0,
            })
            .expect("queue open");
        }
        let sizes: Vec<usize> = vec![
            batches.next().await.map(|b| b.len()).unwrap_or(0),
            batches.next().await.map(|b| b.len()).unwrap_or(0),
        ];
        assert_eq!(sizes, vec![MAX_BATCH_ITEMS, 300 - MAX_BATCH_ITEMS]);
        // One item queued alone goes at once, in a batch of one.
        tx.send(pb::GetRequest::default()).expect("queue open");
        assert_eq!(batches.next().await.map(|b| b.len()), Some(1));
        drop(tx);
        assert!(batches.next().await.is_none());
    }

    #[tokio::test]
    async fn a_batch_stops_growing_at_the_byte_limit() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut batches = Box::pin(coalesce(rx, |v: Vec<pb::PutRequest>| v));
        for _ in 0..3 {
            tx.send(pb::PutRequest {
                value: vec![0; MAX_BATCH_BYTES / 2 + 1],
                ..Default::default()
            })
            .expect("queue open");
        }
        assert_eq!(batches.next().await.map(|b| b.len()), Some(2));
        assert_eq!(batches.next().await.map(|b| b.len()), Some(1));
    }

    #[test]
    fn closing_fails_waiters_and_refuses_new_ones_as_not_sent() {
        let in_flight = InFlight::default();
        let (waiter, mut answer) = oneshot::channel();
        in_flight.register(7, waiter).expect("open");
        in_flight.close("gone");
        match answer.try_recv() {
            Ok(Err(status)) => {
                assert_eq!(status.message(), "gone");
                assert!(!never_left_client(&status), "it was sent: outcome unknown");
            }
            other => panic!("expected the close error, got {other:?}"),
        }
        let (waiter, _answer) = oneshot::channel();
        let refused = in_flight.register(8, waiter).expect_err("closed");
        assert!(never_left_client(&refused));
    }
}
