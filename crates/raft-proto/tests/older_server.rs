//! `RaftClient` against a node that predates `Kv.Pipeline` (as during a rolling upgrade, when a
//! new client meets old members): the client falls back to unary calls, and keeps using them.
#![allow(clippy::unwrap_used)]
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use raft_proto::pb;
use raft_proto::pb::admin_server::{Admin, AdminServer};
use raft_proto::pb::kv_server::{Kv, KvServer};
use raft_proto::{Consistency, RaftClient};
use tonic::{Request, Response, Status, Streaming};

/// Key -> (value, mod revision).
type Store = HashMap<Vec<u8>, (Vec<u8>, u64)>;

/// A single-node "cluster" speaking the pre-pipeline API: put and get by unary call only.
#[derive(Default)]
struct OlderNode {
    data: Mutex<Store>,
    unary_calls: AtomicU64,
    pipeline_attempts: AtomicU64,
}

/// The server's handle on the node (the service traits are foreign, so a local type).
#[derive(Clone)]
struct Older(Arc<OlderNode>);

impl std::ops::Deref for Older {
    type Target = OlderNode;
    fn deref(&self) -> &OlderNode {
        &self.0
    }
}

#[tonic::async_trait]
impl Kv for Older {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let revision = self.unary_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let r = req.into_inner();
        let previous = self.data.lock().unwrap().insert(r.key, (r.value, revision));
        Ok(Response::new(pb::PutResponse {
            revision,
            had_previous: previous.is_some(),
        }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        let key = req.into_inner().key;
        let found = self.data.lock().unwrap().get(&key).cloned();
        Ok(Response::new(pb::GetResponse {
            found: found.is_some(),
            mod_revision: found.as_ref().map(|f| f.1).unwrap_or(0),
            value: found.map(|f| f.0).unwrap_or_default(),
            served_by: "lease".into(),
            ..Default::default()
        }))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn cas(&self, _: Request<pb::CasRequest>) -> Result<Response<pb::CasResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type PipelineStream = futures::stream::Empty<Result<pb::KvOpResultBatch, Status>>;

    /// What tonic answers for a method the server does not have.
    async fn pipeline(
        &self,
        _: Request<Streaming<pb::KvOpBatch>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        self.pipeline_attempts.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented(""))
    }
}

#[tonic::async_trait]
impl Admin for Older {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            id: 1,
            role: "leader".into(),
            has_leader: true,
            initialized: true,
            reachable_voters: 1,
            voters: 1,
            quorum: 1,
            ..Default::default()
        }))
    }

    async fn initialize(
        &self,
        _: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn add_learner(
        &self,
        _: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn promote_voter(
        &self,
        _: Request<pb::PromoteVoterRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn remove_member(
        &self,
        _: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn transfer_leader(
        &self,
        _: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn join(
        &self,
        _: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn force_recover(
        &self,
        _: Request<pb::ForceRecoverRequest>,
    ) -> Result<Response<pb::ForceRecoverResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn a_node_without_pipelining_is_served_by_unary_calls() {
    let node = Arc::new(OlderNode::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(KvServer::new(Older(node.clone())))
        .add_service(AdminServer::new(Older(node.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let client = RaftClient::new(&[addr.to_string()]).unwrap();
    for i in 0..5u32 {
        let key = format!("k{i}");
        client.put(key.as_bytes(), b"v").await.unwrap();
        let got = client
            .get(key.as_bytes(), Consistency::Lease)
            .await
            .unwrap();
        assert_eq!(got.value, b"v");
    }
    assert_eq!(
        node.unary_calls.load(Ordering::SeqCst),
        10,
        "every op by unary call"
    );
    assert_eq!(
        node.pipeline_attempts.load(Ordering::SeqCst),
        1,
        "the client asked once, then remembered the node has no pipeline"
    );
}
