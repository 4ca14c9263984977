//! `raftctl cluster status NAME` (also `kubectl raft status NAME`): a RaftCluster's status from
//! the API server, members grouped by zone with role, lag and health, then the conditions.

use crate::output::{OutputFormat, print_json, render_table};
use anyhow::Context;
use kube::{Api, Client};
use raft_operator::crd::{MemberStatus, RaftCluster};
use std::collections::BTreeMap;

/// Arguments of `cluster status`.
#[derive(Debug, clap::Args)]
pub struct ClusterStatusArgs {
    /// RaftCluster name.
    pub name: String,
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// `cluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Status of a RaftCluster, members grouped by zone.
    Status(ClusterStatusArgs),
}

/// Run a `cluster` subcommand.
pub async fn run(command: &ClusterCommand, output: OutputFormat) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(args) => status(args, output).await,
    }
}

async fn status(args: &ClusterStatusArgs, output: OutputFormat) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API; is KUBECONFIG set?")?;
    let api: Api<RaftCluster> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::default_namespaced(client),
    };
    let cluster = api
        .get(&args.name)
        .await
        .with_context(|| format!("cannot read RaftCluster {}", args.name))?;
    match output {
        OutputFormat::Json => print_json(&cluster.status.clone().unwrap_or_default()),
        OutputFormat::Table => {
            println!("{}", render_status(&cluster));
            Ok(())
        }
    }
}

/// The readable view: headline, members by zone, conditions.
pub fn render_status(cluster: &RaftCluster) -> String {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let Some(status) = &cluster.status else {
        return format!("RaftCluster {name}: no status yet (is the operator running?)");
    };
    let mut out = format!(
        "RaftCluster {name}: {} voters wanted, leader {}, term {}, commit index {}\n\
         quorum {}, {} of {} voters healthy; survives {} more node failure(s) and the loss of {} zone(s)\n",
        cluster.spec.replicas,
        status.leader.as_deref().unwrap_or("none"),
        status.term,
        status.commit_index,
        status.quorum_size,
        status.healthy_voters,
        status.replicas,
        status.node_fault_tolerance,
        status.zone_fault_tolerance,
    );
    if let Some(id) = &status.cluster_id {
        out.push_str(&format!("cluster id {id}, epoch {}\n", status.epoch));
    }
    let mut by_zone: BTreeMap<String, Vec<&MemberStatus>> = BTreeMap::new();
    for member in &status.members {
        by_zone
            .entry(
                member
                    .zone
                    .clone()
                    .unwrap_or_else(|| "(unscheduled)".to_string()),
            )
            .or_default()
            .push(member);
    }
    let mut rows = Vec::new();
    for (zone, members) in &by_zone {
        for (i, m) in members.iter().enumerate() {
            rows.push(vec![
                if i == 0 { zone.clone() } else { String::new() },
                m.name.clone(),
                format!("{:?}", m.role),
                m.match_index.map_or("-".to_string(), |v| v.to_string()),
                m.lag.map_or("-".to_string(), |v| v.to_string()),
                if m.healthy {
                    "yes".to_string()
                } else {
                    "NO".to_string()
                },
                m.message.clone().unwrap_or_default(),
            ]);
        }
    }
    out.push('\n');
    out.push_str(&render_table(
        &[
            "ZONE", "MEMBER", "ROLE", "MATCH", "LAG", "HEALTHY", "PROBLEM",
        ],
        &rows,
    ));
    out.push_str("\n\n");
    let conditions: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["CONDITION", "STATUS", "REASON", "MESSAGE"],
        &conditions,
    ));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raft_operator::crd::{MemberRole, RaftClusterStatus};

    #[test]
    fn members_are_grouped_by_zone() {
        let mut cluster = RaftCluster::new(
            "demo",
            serde_json::from_value(serde_json::json!({"replicas": 3})).unwrap(),
        );
        let member = |name: &str, zone: &str, role: MemberRole, healthy: bool| MemberStatus {
            name: name.into(),
            zone: Some(zone.into()),
            role,
            lag: Some(0),
            healthy,
            message: (!healthy).then(|| format!("{name} is unreachable: connection refused")),
            ..MemberStatus::default()
        };
        cluster.status = Some(RaftClusterStatus {
            leader: Some("demo-0".into()),
            quorum_size: 2,
            healthy_voters: 2,
            replicas: 3,
            node_fault_tolerance: 0,
            members: vec![
                member("demo-0", "zone-a", MemberRole::Leader, true),
                member("demo-1", "zone-b", MemberRole::Follower, true),
                member("demo-2", "zone-a", MemberRole::Unknown, false),
            ],
            ..RaftClusterStatus::default()
        });
        let text = render_status(&cluster);
        assert!(text.contains("leader demo-0"), "{text}");
        assert!(text.contains("2 of 3 voters healthy"), "{text}");
        let zone_a = text.lines().position(|l| l.starts_with("zone-a")).unwrap();
        let next = text.lines().nth(zone_a + 1).unwrap();
        assert!(
            next.trim_start().starts_with("demo-2"),
            "zone-a groups demo-0 and demo-2:\n{text}"
        );
        assert!(text.contains("demo-2 is unreachable"), "{text}");
    }
}
