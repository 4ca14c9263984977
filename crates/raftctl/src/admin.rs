//! Admin commands: status, member list|add|promote|remove, transfer-leader.
use clap::{Args, Subcommand};
use raft_proto::pb::{Member, StatusResponse};

use crate::kv::ClusterArgs;
use crate::output::OutputFormat;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    pub command: MemberCommand,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List members with role, match index, lag and health.
    List,
    /// Add a learner (idempotent).
    Add {
        id: u64,
        /// The new member's gRPC address (host:port).
        grpc_addr: String,
        /// The new member's HTTP address.
        #[arg(default_value = "")]
        http_addr: String,
    },
    /// Promote a learner to voter (idempotent).
    Promote { id: u64 },
    /// Remove a member (idempotent).
    Remove { id: u64 },
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The voter that should lead.
    pub to: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Status JSON: the shape `raftctl status --output json` prints.
pub fn status_json(s: &StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "role": s.role,
        "leader": if s.has_leader { serde_json::json!(s.leader_id) } else { serde_json::Value::Null },
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_log_index": s.last_log_index,
        "members": members_json(&s.members),
        "lease_valid": s.lease_valid,
        "cluster_id": s.cluster_id,
        "epoch": s.epoch,
        "initialized": s.initialized,
        "voters": s.voters,
        "reachable_voters": s.reachable_voters,
        "quorum": s.quorum,
        "read_mode": s.read_mode,
    })
}

fn members_json(members: &[Member]) -> serde_json::Value {
    serde_json::Value::Array(
        members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "role": m.role,
                    "grpc_addr": m.grpc_addr,
                    "match_index": m.match_index,
                    "lag": m.lag,
                    "healthy": m.healthy,
                })
            })
            .collect(),
    )
}

fn print_members(members: &[Member], leader: Option<u64>) {
    println!(
        "{:<4} {:<8} {:<7} {:<22} {:>11} {:>6} HEALTHY",
        "ID", "ROLE", "LEADER", "GRPC", "MATCH", "LAG"
    );
    for m in members {
        println!(
            "{:<4} {:<8} {:<7} {:<22} {:>11} {:>6} {}",
            m.id,
            m.role,
            if leader == Some(m.id) { "*" } else { "" },
            m.grpc_addr,
            m.match_index,
            m.lag,
            m.healthy
        );
    }
}

pub async fn status(a: &StatusArgs, out: OutputFormat) -> anyhow::Result<()> {
    let s = a.cluster.client()?.status().await?;
    match out {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status_json(&s))?),
        OutputFormat::Table => {
            let leader = s.has_leader.then_some(s.leader_id);
            println!(
                "cluster {} epoch {}  answered by node {} ({})  term {}  leader {}  commit {}  applied {}  lease {}",
                s.cluster_id,
                s.epoch,
                s.id,
                s.role,
                s.term,
                leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "none".into()),
                s.commit_index,
                s.applied_index,
                if s.lease_valid { "valid" } else { "-" }
            );
            println!(
                "voters reachable: {} of {} (quorum {})",
                s.reachable_voters, s.voters, s.quorum
            );
            print_members(&s.members, leader);
        }
    }
    Ok(())
}

pub async fn member(a: &MemberArgs, out: OutputFormat) -> anyhow::Result<()> {
    let client = a.cluster.client()?;
    let members = match &a.command {
        MemberCommand::List => {
            let s = client.status().await?;
            match out {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&members_json(&s.members))?
                ),
                OutputFormat::Table => {
                    print_members(&s.members, s.has_leader.then_some(s.leader_id))
                }
            }
            return Ok(());
        }
        MemberCommand::Add {
            id,
            grpc_addr,
            http_addr,
        } => client.add_learner(*id, grpc_addr, http_addr).await?,
        MemberCommand::Promote { id } => client.promote_voter(*id).await?,
        MemberCommand::Remove { id } => client.remove_member(*id).await?,
    };
    match out {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "changed": members.changed,
                "revision": members.revision,
                "members": members_json(&members.members),
            }))?
        ),
        OutputFormat::Table => {
            println!(
                "{} (revision {})",
                if members.changed {
                    "changed"
                } else {
                    "no change needed"
                },
                members.revision
            );
            print_members(&members.members, None);
        }
    }
    Ok(())
}

pub async fn transfer(a: &TransferArgs, out: OutputFormat) -> anyhow::Result<()> {
    let r = a.cluster.client()?.transfer_leader(a.to).await?;
    match out {
        OutputFormat::Json => println!("{}", serde_json::json!({"leader": r.leader_id})),
        OutputFormat::Table => println!("leader is now node {}", r.leader_id),
    }
    Ok(())
}
