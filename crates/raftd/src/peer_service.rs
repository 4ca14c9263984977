//! The peer transport's server side: decodes and admits each openraft message (identity,
//! fault layer, the vote hold after a restart) before handing it to openraft.
use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use raft_proto::pb;
use raft_proto::pb::raft_peer_server::RaftPeer;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::grpc::to_status;
use crate::node::RaftNode;
use crate::store::ClusterIdentity;
use crate::types::{SnapshotMeta, Vote};

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
