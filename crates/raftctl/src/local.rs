//! `raftctl local`: a playground of raftd processes on loopback, with fault injection.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use clap::{Args, Subcommand};
use raft_local::{LinkDirection, LocalCluster, UpOptions, find_raftd};

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
    /// Start every node of a stopped cluster again, with its data.
    Start {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every node; with --purge also delete the directory (data, logs, state).
    Down {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        purge: bool,
    },
    /// Cut a node's peer links (raft messages only; clients still reach it). Rules add up
    /// until `heal`.
    Partition {
        node_id: u64,
        /// The peers to cut it from, comma-separated (default: every other node).
        #[arg(long, value_delimiter = ',')]
        from: Vec<u64>,
        /// both: neither side hears the other; out: its messages are lost; in: theirs are.
        #[arg(long, value_enum, default_value_t = Direction::Both)]
        direction: Direction,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Delay a node's raft messages to its peers by MS milliseconds (0 removes the delay).
    Delay {
        node_id: u64,
        ms: u64,
        /// The peers whose messages are delayed, comma-separated (default: every other node).
        #[arg(long, value_delimiter = ',')]
        to: Vec<u64>,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Clear every partition and delay on one node, or on every node.
    Heal {
        node_id: Option<u64>,
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Which way `partition` cuts the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Both,
    Out,
    In,
}

impl From<Direction> for LinkDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Both => LinkDirection::Both,
            Direction::Out => LinkDirection::Out,
            Direction::In => LinkDirection::In,
        }
    }
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
        LocalCommand::Start { dir } => {
            let mut c = LocalCluster::load(dir)?;
            let leader = c.start(Duration::from_secs(30)).await?;
            println!("{} nodes running; leader is node {leader}", c.nodes.len());
        }
        LocalCommand::Down { dir, purge } => {
            let c = LocalCluster::load(dir)?;
            if *purge {
                c.purge()?;
                println!("all nodes stopped; {} deleted", dir.display());
            } else {
                let mut c = c;
                c.down()?;
                println!("all nodes stopped (data kept; `raftctl local start` brings them back)");
            }
        }
        LocalCommand::Partition {
            node_id,
            from,
            direction,
            dir,
        } => {
            let rules = LocalCluster::load(dir)?
                .partition(*node_id, from, (*direction).into())
                .await?;
            println!(
                "node {node_id}: messages to {:?} and from {:?} are dropped",
                rules.drop_to, rules.drop_from
            );
        }
        LocalCommand::Delay {
            node_id,
            ms,
            to,
            dir,
        } => {
            let rules = LocalCluster::load(dir)?.delay(*node_id, *ms, to).await?;
            println!(
                "node {node_id}: message delays {:?} (ms)",
                rules.delay_to_ms
            );
        }
        LocalCommand::Heal { node_id, dir } => {
            LocalCluster::load(dir)?.heal(*node_id).await?;
            match node_id {
                Some(id) => println!("node {id}: every fault cleared"),
                None => println!("every fault cleared on every running node"),
            }
        }
    }
    Ok(())
}
