//! `raftctl`: the command line for raftd clusters and RaftCluster resources.
//!
//! Each subcommand lives in its own module; this file only parses arguments and dispatches.
//! Installed as `kubectl-raft`, it also works as a kubectl plugin (`kubectl raft ...`).

mod cluster;
mod output;
mod quorum_cmd;

use clap::{Parser, Subcommand};
use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "raftctl",
    version,
    about = "Client for raftd clusters and RaftCluster resources"
)]
struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Quorum size, tolerated failures and zone-loss analysis for voter counts.
    Quorum(quorum_cmd::QuorumArgs),
    /// RaftCluster resources in Kubernetes (`kubectl raft status NAME` is `cluster status NAME`).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// As a kubectl plugin (`kubectl-raft`), `kubectl raft status NAME` means the RaftCluster's status.
fn plugin_args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as_plugin = args
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().starts_with("kubectl-raft"))
        })
        .unwrap_or(false);
    if invoked_as_plugin && args.get(1).is_some_and(|a| a == "status") {
        args.insert(1, "cluster".into());
    }
    args
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(plugin_args());
    let result = match &cli.command {
        Command::Quorum(args) => quorum_cmd::run(args, cli.output),
        Command::Cluster(command) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(cluster::run(command, cli.output))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
