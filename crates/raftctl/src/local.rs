//! `raftctl local`: a playground of raftd processes on loopback, with fault injection.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use raft_local::{LocalCluster, UpOptions, find_raftd};

use crate::output::OutputFormat;

#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub command: LocalCommand,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start N raftd processes and wait for a leader; writes DIR/endpoints.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        dir: PathBuf,
        /// raftd binary (default: $RAFTD_BIN, next to raftctl, or on PATH).
        #[arg(long)]
        raftd: Option<PathBuf>,
        /// Extra raftd flag, repeatable (e.g. --raftd-arg=--inject-peer-rtt-ms=5).
        #[arg(long = "raftd-arg", allow_hyphen_values = true)]
        raftd_args: Vec<String>,
    },
    /// SIGKILL a node.
    Kill {
        node_id: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGSTOP a node.
    Pause {
        node_id: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGCONT a node.
    Resume {
        node_id: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Kill (if running) and start a node again with its data.
    Restart {
        node_id: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every node.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

pub async fn run(a: &LocalArgs, out: OutputFormat) -> anyhow::Result<()> {
    match &a.command {
        LocalCommand::Up {
            nodes,
            dir,
            raftd,
            raftd_args,
        } => {
            let start = Instant::now();
            let c = LocalCluster::up(
                dir,
                UpOptions {
                    nodes: *nodes,
                    raftd_bin: raftd.clone().unwrap_or_else(find_raftd),
                    extra_args: raftd_args.clone(),
                    leader_timeout: Duration::from_secs(30),
                },
            )
            .await?;
            let leader = c.wait_for_leader(Duration::from_secs(5)).await?;
            match out {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"endpoints": c.endpoints(), "leader": leader, "cluster_id": c.cluster_id,
                        "nodes": c.nodes.iter().map(|n| serde_json::json!({"id": n.id, "grpc_addr": n.grpc_addr, "http_addr": n.http_addr, "pid": n.pid})).collect::<Vec<_>>()})
                ),
                OutputFormat::Table => {
                    println!(
                        "{} nodes up in {:?}; leader is node {leader}",
                        c.nodes.len(),
                        start.elapsed()
                    );
                    for n in &c.nodes {
                        println!(
                            "  node {}: grpc {} http {} pid {:?}",
                            n.id, n.grpc_addr, n.http_addr, n.pid
                        );
                    }
                    println!("endpoints written to {}", c.dir.join("endpoints").display());
                }
            }
        }
        LocalCommand::Kill { node_id, dir } => {
            LocalCluster::load(dir)?.kill(*node_id)?;
            println!("node {node_id} killed");
        }
        LocalCommand::Pause { node_id, dir } => {
            LocalCluster::load(dir)?.pause(*node_id)?;
            println!("node {node_id} paused");
        }
        LocalCommand::Resume { node_id, dir } => {
            LocalCluster::load(dir)?.resume(*node_id)?;
            println!("node {node_id} resumed");
        }
        LocalCommand::Restart { node_id, dir } => {
            let pid = LocalCluster::load(dir)?.restart(*node_id)?;
            println!("node {node_id} restarted (pid {pid})");
        }
        LocalCommand::Down { dir } => {
            LocalCluster::load(dir)?.down()?;
            println!("all nodes stopped");
        }
    }
    Ok(())
}
