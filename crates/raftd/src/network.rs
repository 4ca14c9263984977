//! Peer transport (client side): openraft RPCs over gRPC, peer reachability, injected delay.
//!
//! Each openraft message is postcard-encoded into `PeerRequest.payload`, tagged with this node's
//! cluster id and epoch. openraft batches entries into AppendEntries itself; HTTP/2 multiplexes
//! the replication streams on one connection per peer. An optional injected round-trip delay
//! (half before sending, half after the reply) emulates network latency for benchmarks, since
//! the kernel here has no netem.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::RaftNetworkV2;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use raft_proto::pb::PeerRequest;
use raft_proto::pb::raft_peer_client::RaftPeerClient;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::faults::FaultLayer;
use crate::types::{MemberNode, NodeId, Snapshot, TypeConfig, Vote};

/// Largest peer message accepted (snapshots travel in one message).
pub const MAX_PEER_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Who this node is on the wire; shared so the identity can be adopted/changed at runtime.
#[derive(Debug, Clone, Default)]
pub struct WireIdentity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub epoch: u64,
    pub recovery_id: String,
}

/// Last time each peer answered an RPC (either direction), to report quorum reachability.
#[derive(Default)]
pub struct PeerTracker {
    last_ok: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerTracker {
    pub fn mark_ok(&self, peer: NodeId) {
        if let Ok(mut m) = self.last_ok.lock() {
            m.insert(peer, Instant::now());
        }
    }

    /// Whether `peer` answered (or sent us) an RPC within `window`.
    pub fn reachable(&self, peer: NodeId, window: Duration) -> bool {
        self.last_ok
            .lock()
            .ok()
            .and_then(|m| m.get(&peer).map(|t| t.elapsed() < window))
            .unwrap_or(false)
    }
}

/// Settings shared by every peer client.
#[derive(Clone)]
pub struct NetworkShared {
    pub identity: Arc<std::sync::RwLock<WireIdentity>>,
    pub tracker: Arc<PeerTracker>,
    pub injected_rtt: Duration,
    /// Floor for AppendEntries timeouts.
    pub min_append_timeout: Duration,
    /// Test-only message drops and delays (inert unless enabled by a flag).
    pub faults: Arc<FaultLayer>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkShared {
    pub fn new(
        identity: Arc<std::sync::RwLock<WireIdentity>>,
        tracker: Arc<PeerTracker>,
        injected_rtt: Duration,
        min_append_timeout: Duration,
        faults: Arc<FaultLayer>,
    ) -> Self {
        Self {
            identity,
            tracker,
            injected_rtt,
            min_append_timeout,
            faults,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut chans = self.channels.lock().map_err(|e| e.to_string())?;
        if let Some(c) = chans.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("invalid peer address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_millis(200))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        let ch = endpoint.connect_lazy();
        chans.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn request(&self, payload: Vec<u8>) -> PeerRequest {
        let id = self.identity.read().map(|i| i.clone()).unwrap_or_default();
        PeerRequest {
            cluster_id: id.cluster_id,
            from: id.node_id,
            payload,
            epoch: id.epoch,
            recovery_id: id.recovery_id,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkShared {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        PeerClient {
            shared: self.clone(),
            target,
            addr: node.grpc_addr.clone(),
        }
    }
}

/// An openraft network client for one peer.
pub struct PeerClient {
    shared: NetworkShared,
    target: NodeId,
    addr: String,
}

/// Failure of one peer call, before conversion into openraft's error types.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("peer {0} error: {1}")]
    Network(NodeId, String),
}

impl<E: std::error::Error> From<PeerCallError> for RPCError<TypeConfig, E> {
    fn from(e: PeerCallError) -> Self {
        match &e {
            PeerCallError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
            PeerCallError::Network(..) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl From<PeerCallError> for StreamingError<TypeConfig> {
    fn from(e: PeerCallError) -> Self {
        match &e {
            PeerCallError::Unreachable(..) => StreamingError::Unreachable(Unreachable::new(&e)),
            PeerCallError::Network(..) => StreamingError::Network(NetworkError::new(&e)),
        }
    }
}

/// Which peer RPC to call.
#[derive(Clone, Copy)]
enum PeerRpc {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: for<'a> Deserialize<'a>>(
        &self,
        rpc: PeerRpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        let payload = postcard::to_stdvec(req)
            .map_err(|e| PeerCallError::Network(self.target, e.to_string()))?;
        let channel = self
            .shared
            .channel(&self.addr)
            .map_err(|e| PeerCallError::Unreachable(self.target, e))?;
        let mut client = RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let faults = &self.shared.faults;
        if faults.drops_to(self.target) {
            return Err(PeerCallError::Unreachable(
                self.target,
                format!("fault injection: the link to node {} is cut", self.target),
            ));
        }
        let fault_delay = faults.delay_to(self.target);
        if !fault_delay.is_zero() {
            tokio::time::sleep(fault_delay).await;
        }
        let half_rtt = self.shared.injected_rtt / 2;
        if !half_rtt.is_zero() {
            tokio::time::sleep(half_rtt).await;
        }
        let mut request = tonic::Request::new(self.shared.request(payload));
        request.set_timeout(timeout);
        let fut = async {
            match rpc {
                PeerRpc::Append => client.append_entries(request).await,
                PeerRpc::Vote => client.vote(request).await,
                PeerRpc::PreVote => client.pre_vote(request).await,
                PeerRpc::Snapshot => client.full_snapshot(request).await,
                PeerRpc::TransferLeader => client.transfer_leader(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, fut).await {
            Err(_) => {
                return Err(PeerCallError::Unreachable(
                    self.target,
                    format!("timed out after {timeout:?}"),
                ));
            }
            Ok(Err(status)) => {
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled => {
                        PeerCallError::Unreachable(self.target, status.message().to_string())
                    }
                    tonic::Code::FailedPrecondition => {
                        tracing::warn!(
                            peer = self.target,
                            error = status.message(),
                            "peer refused RPC"
                        );
                        PeerCallError::Unreachable(self.target, status.message().to_string())
                    }
                    _ => PeerCallError::Network(
                        self.target,
                        format!("{}: {}", status.code(), status.message()),
                    ),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        if !half_rtt.is_zero() {
            tokio::time::sleep(half_rtt).await;
        }
        if faults.drops_from(self.target) {
            return Err(PeerCallError::Unreachable(
                self.target,
                format!(
                    "fault injection: the link from node {} is cut (its reply was lost)",
                    self.target
                ),
            ));
        }
        self.shared.tracker.mark_ok(self.target);
        let decoded: Result<Resp, String> = postcard::from_bytes(&reply.payload)
            .map_err(|e| PeerCallError::Network(self.target, format!("undecodable reply: {e}")))?;
        decoded.map_err(|e| PeerCallError::Network(self.target, format!("remote error: {e}")))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft sizes replication RPC timeouts from the heartbeat interval (50 ms), which an
        // fsync on a busy disk can exceed; a timed-out append is just retried, wasting the work.
        // Heartbeats are still bounded by openraft's own hard timeout.
        let timeout = option.soft_ttl().max(self.shared.min_append_timeout);
        Ok(self.call(PeerRpc::Append, &rpc, timeout).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(PeerRpc::Vote, &rpc, option.soft_ttl()).await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call(PeerRpc::PreVote, &rpc, option.soft_ttl()).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        let timeout = option.hard_ttl().max(Duration::from_secs(30));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.call(PeerRpc::Snapshot, &req, timeout) => Ok(res?),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self
            .call(PeerRpc::TransferLeader, &req, option.soft_ttl())
            .await?)
    }
}
