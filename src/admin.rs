//! The operator's calls to raftd's admin API: read one member's status with a bounded timeout,
//! and the membership calls the planner's actions need. Converts the wire format into
//! [`RaftObserved`], the planner's view.

use crate::crd::MemberRole;
use crate::observed::{LeaderAck, RaftObserved};
use raft_proto::pb;
use raft_proto::pb::admin_client::AdminClient;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Bound on connecting to a member and on each admin call.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on the status call to a member that did not answer the previous observation: waiting
/// the full `ADMIN_TIMEOUT` for members already known to be down made every observation of a
/// cluster with a lost zone take 2 s, and delayed noticing a second loss.
pub const UNREACHABLE_STATUS_TIMEOUT: Duration = Duration::from_millis(700);

/// An admin call that failed, with the member address and the reason.
#[derive(Debug, thiserror::Error)]
#[error("admin call to {addr} failed: {reason}")]
pub struct AdminError {
    /// Address called.
    pub addr: String,
    /// What went wrong.
    pub reason: String,
}

async fn connect(addr: &str) -> Result<AdminClient<Channel>, AdminError> {
    connect_within(addr, ADMIN_TIMEOUT).await
}

async fn connect_within(addr: &str, timeout: Duration) -> Result<AdminClient<Channel>, AdminError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|err| AdminError {
            addr: addr.to_string(),
            reason: format!("bad address: {err}"),
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|err| AdminError {
        addr: addr.to_string(),
        reason: format!("cannot connect: {err}"),
    })?;
    Ok(AdminClient::new(channel))
}

fn failed(addr: &str, status: tonic::Status) -> AdminError {
    AdminError {
        addr: addr.to_string(),
        reason: format!("{}: {}", status.code(), status.message()),
    }
}

/// One member's status, connecting and answering within `timeout` each.
pub async fn member_status(addr: &str, timeout: Duration) -> Result<RaftObserved, AdminError> {
    let mut client = connect_within(addr, timeout).await?;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| failed(addr, s))?
        .into_inner();
    Ok(to_observed(&status))
}

/// Convert the wire status into the planner's view.
pub fn to_observed(s: &pb::StatusResponse) -> RaftObserved {
    let role = match s.role.as_str() {
        "leader" => MemberRole::Leader,
        "follower" => MemberRole::Follower,
        "candidate" => MemberRole::Candidate,
        "learner" => MemberRole::Learner,
        _ => MemberRole::Unknown,
    };
    RaftObserved {
        initialized: s.initialized,
        cluster_id: (!s.cluster_id.is_empty()).then(|| s.cluster_id.clone()),
        epoch: s.epoch,
        role,
        term: s.term,
        leader_id: s.has_leader.then_some(s.leader_id),
        commit_index: s.commit_index,
        last_log_index: s.last_log_index,
        last_log_term: s.last_log_term,
        voters: s
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| m.id)
            .collect(),
        learners: s
            .members
            .iter()
            .filter(|m| m.role == "learner")
            .map(|m| m.id)
            .collect(),
        joint: s.joint_membership,
        matched: s
            .members
            .iter()
            .filter(|m| m.match_known)
            .map(|m| (m.id, m.match_index))
            .collect(),
        version: s.version.clone(),
        lease_valid: s.lease_valid,
        awaiting_join: s.awaiting_join,
        recent_refusal: (!s.recent_refusal.is_empty()).then(|| s.recent_refusal.clone()),
        acks: if s.role == "leader" {
            s.members.iter().map(|m| (m.id, leader_ack(m))).collect()
        } else {
            // A follower's `healthy` is its own reachability guess, not the leader's word.
            Default::default()
        },
        recovery_id: (!s.recovery_id.is_empty()).then(|| s.recovery_id.clone()),
        not_ready_reason: (!s.not_ready_reason.is_empty()).then(|| s.not_ready_reason.clone()),
        draining: s.draining,
    }
}

/// The leader's contact with one member. A raftd that does not fill `millis_since_ack` sends 0
/// for every member; 0 is therefore read as "not reported" and the `healthy` flag decides. (A
/// raftd that does fill it and saw an ack under a millisecond ago also says `healthy`.)
fn leader_ack(m: &pb::Member) -> LeaderAck {
    LeaderAck {
        healthy: m.healthy,
        millis_since_ack: (m.millis_since_ack != 0).then_some(m.millis_since_ack),
    }
}

/// A member id with its advertised addresses.
#[derive(Debug, Clone)]
pub struct MemberAddress {
    /// Raft id.
    pub id: u64,
    /// gRPC address peers and clients use.
    pub grpc_addr: String,
    /// HTTP address.
    pub http_addr: String,
}

/// Form the cluster on the member at `addr`. Idempotent: a member already initialized into the
/// same cluster answers `already_initialized`.
pub async fn initialize(
    addr: &str,
    cluster_id: &str,
    members: &[MemberAddress],
) -> Result<bool, AdminError> {
    let mut client = connect(addr).await?;
    let response = client
        .initialize(pb::InitializeRequest {
            cluster_id: cluster_id.to_string(),
            members: members
                .iter()
                .map(|m| pb::MemberAddr {
                    id: m.id,
                    grpc_addr: m.grpc_addr.clone(),
                    http_addr: m.http_addr.clone(),
                })
                .collect(),
        })
        .await
        .map_err(|s| failed(addr, s))?;
    Ok(response.into_inner().already_initialized)
}

/// Add a learner, through the leader at `leader_addr`.
pub async fn add_learner(leader_addr: &str, member: &MemberAddress) -> Result<(), AdminError> {
    let mut client = connect(leader_addr).await?;
    client
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::MemberAddr {
                id: member.id,
                grpc_addr: member.grpc_addr.clone(),
                http_addr: member.http_addr.clone(),
            }),
            wait_caught_up: false,
        })
        .await
        .map_err(|s| failed(leader_addr, s))?;
    Ok(())
}

/// Promote a learner to voter, through the leader.
pub async fn promote_voter(leader_addr: &str, id: u64) -> Result<(), AdminError> {
    let mut client = connect(leader_addr).await?;
    client
        .promote_voter(pb::PromoteVoterRequest { id })
        .await
        .map_err(|s| failed(leader_addr, s))?;
    Ok(())
}

/// Remove a member from the configuration, through the leader.
pub async fn remove_member(leader_addr: &str, id: u64) -> Result<(), AdminError> {
    let mut client = connect(leader_addr).await?;
    client
        .remove_member(pb::RemoveMemberRequest { id })
        .await
        .map_err(|s| failed(leader_addr, s))?;
    Ok(())
}

/// Admit the empty member at `addr` into this cluster at `epoch`, so the leader may add it.
/// `recovery_id` names the recovery that created `epoch` (empty for epoch 1). Idempotent;
/// refused when the member holds Raft state of another cluster, epoch or recovery.
pub async fn join(
    addr: &str,
    cluster_id: &str,
    epoch: u64,
    recovery_id: &str,
) -> Result<bool, AdminError> {
    let mut client = connect(addr).await?;
    let response = client
        .join(pb::JoinRequest {
            cluster_id: cluster_id.to_string(),
            epoch,
            recovery_id: recovery_id.to_string(),
        })
        .await
        .map_err(|s| failed(addr, s))?;
    Ok(response.into_inner().already_joined)
}

/// What a forced recovery did on the survivor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryResult {
    /// The survivor's last log entry before recovery.
    pub previous_last_index: u64,
    /// Its term.
    pub previous_last_term: u64,
    /// The epoch now in force.
    pub epoch: u64,
    /// The call had been made before.
    pub already: bool,
}

/// Make the member at `addr` the only voter of its cluster and raise the epoch, as recovery
/// `recovery_id` (the approved plan's id, which raftd persists with the epoch). Repeating the
/// same call is answered as already done; raftd refuses it while a quorum still answers.
pub async fn force_recover(
    addr: &str,
    cluster_id: &str,
    new_epoch: u64,
    recovery_id: &str,
) -> Result<RecoveryResult, AdminError> {
    let mut client = connect(addr).await?;
    let r = client
        .force_recover(pb::ForceRecoverRequest {
            cluster_id: cluster_id.to_string(),
            new_epoch,
            recovery_id: recovery_id.to_string(),
            even_if_quorum_answers: false,
        })
        .await
        .map_err(|s| failed(addr, s))?
        .into_inner();
    Ok(RecoveryResult {
        previous_last_index: r.previous_last_index,
        previous_last_term: r.previous_last_term,
        epoch: r.epoch,
        already: r.already_recovered,
    })
}

/// Ask the leader to hand leadership to `to`.
pub async fn transfer_leader(leader_addr: &str, to: u64) -> Result<u64, AdminError> {
    let mut client = connect(leader_addr).await?;
    let response = client
        .transfer_leader(pb::TransferLeaderRequest { to })
        .await
        .map_err(|s| failed(leader_addr, s))?;
    Ok(response.into_inner().leader_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_status_becomes_the_planner_view() {
        let status = pb::StatusResponse {
            id: 1,
            role: "leader".into(),
            term: 4,
            leader_id: 1,
            has_leader: true,
            last_log_index: 50,
            initialized: true,
            cluster_id: "uid".into(),
            epoch: 1,
            members: vec![
                pb::Member {
                    id: 1,
                    role: "voter".into(),
                    match_index: 50,
                    match_known: true,
                    ..Default::default()
                },
                pb::Member {
                    id: 2,
                    role: "voter".into(),
                    match_index: 40,
                    match_known: true,
                    ..Default::default()
                },
                pb::Member {
                    id: 3,
                    role: "learner".into(),
                    match_index: 0,
                    match_known: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let view = to_observed(&status);
        assert_eq!(view.role, MemberRole::Leader);
        assert_eq!(view.voters, vec![1, 2]);
        assert_eq!(view.learners, vec![3]);
        assert_eq!(view.matched.get(&2), Some(&40));
        assert!(
            !view.matched.contains_key(&3),
            "unknown progress is not zero progress"
        );
        assert_eq!(view.cluster_id.as_deref(), Some("uid"));
        assert_eq!(view.leader_id, Some(1));
    }

    #[test]
    fn the_leaders_contact_with_members_is_kept_and_a_followers_guess_is_not() {
        let member = |id, healthy, millis_since_ack| pb::Member {
            id,
            role: "voter".into(),
            healthy,
            millis_since_ack,
            ..Default::default()
        };
        let mut status = pb::StatusResponse {
            role: "leader".into(),
            members: vec![
                member(1, true, 0),
                member(2, false, 1800),
                member(3, false, 0),
            ],
            recovery_id: "demo-1-to-epoch-2".into(),
            not_ready_reason: String::new(),
            ..Default::default()
        };
        let view = to_observed(&status);
        assert_eq!(view.acks[&2].millis_since_ack, Some(1800));
        // 0 means "not reported" (an older raftd): the healthy flag decides.
        assert_eq!(
            view.acks[&3],
            LeaderAck {
                healthy: false,
                millis_since_ack: None
            }
        );
        assert_eq!(view.recovery_id.as_deref(), Some("demo-1-to-epoch-2"));
        assert_eq!(view.not_ready_reason, None);
        status.role = "follower".into();
        status.not_ready_reason = "no leader contact for 2 s".into();
        let view = to_observed(&status);
        assert!(view.acks.is_empty());
        assert_eq!(
            view.not_ready_reason.as_deref(),
            Some("no leader contact for 2 s")
        );
    }
}
