//! `raftctl`: the command line for raftd clusters and RaftCluster resources.
//!
//! Each subcommand lives in its own module; this file only parses arguments and dispatches.
//! Installed as `kubectl-raft`, it also works as a kubectl plugin (`kubectl raft ...`).

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Quorum(args) => quorum_cmd::run(args, cli.output),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
