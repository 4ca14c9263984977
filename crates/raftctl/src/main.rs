//! `raftctl`: the command line for raftd clusters and RaftCluster resources.
//!
//! Each subcommand lives in its own module; this file only parses arguments and dispatches.

mod admin;
mod bench;
mod kv;
mod local;
mod output;

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
    /// Write a key.
    Put(kv::PutArgs),
    /// Read a key.
    Get(kv::GetArgs),
    /// Delete a key.
    Del(kv::DelArgs),
    /// Compare-and-swap a key on its value or revision.
    Cas(kv::CasArgs),
    /// List keys under a prefix.
    List(kv::ListArgs),
    /// Cluster status (from the leader when reachable).
    Status(admin::StatusArgs),
    /// Membership: list, add (learner), promote, remove.
    Member(admin::MemberArgs),
    /// Move leadership to another voter.
    TransferLeader(admin::TransferArgs),
    /// Local playground: raftd processes on 127.0.0.1 with fault injection.
    Local(local::LocalArgs),
    /// Throughput and latency of local clusters, compared with etcd.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Put(a) => kv::put(a, cli.output).await,
            Command::Get(a) => kv::get(a, cli.output).await,
            Command::Del(a) => kv::del(a, cli.output).await,
            Command::Cas(a) => kv::cas(a, cli.output).await,
            Command::List(a) => kv::list(a, cli.output).await,
            Command::Status(a) => admin::status(a, cli.output).await,
            Command::Member(a) => admin::member(a, cli.output).await,
            Command::TransferLeader(a) => admin::transfer(a, cli.output).await,
            Command::Local(a) => local::run(a, cli.output).await,
            Command::Bench(a) => bench::run(a, cli.output).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            kv::exit_code(&err)
        }
    }
}
