//! The admin API's gRPC service the operator calls: status, membership, transfer, join, recovery.
use std::sync::Arc;

use raft_proto::pb;
use raft_proto::pb::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::grpc::to_status;
use crate::node::RaftNode;
use crate::status;
use crate::store::ClusterIdentity;
use crate::types::MemberNode;

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
