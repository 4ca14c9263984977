//! `raftctl`: the command line for raftd clusters and RaftCluster resources.
//!
//! Each subcommand lives in its own module; this file only parses arguments and dispatches.
//! Installed as `kubectl-raft`, it also works as a kubectl plugin (`kubectl raft ...`).

mod admin;
mod bench;
mod cluster;
mod kv;
mod local;
mod lock;
mod output;
mod quorum_cmd;

use clap::{Parser, Subcommand};
use output::OutputFormat;

/// mimalloc: the request path allocates per message; glibc malloc/free cost ~8% of CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Write a key to a raftd cluster.
    Put(kv::PutArgs),
    /// Read a key.
    Get(kv::GetArgs),
    /// Delete a key.
    Del(kv::DelArgs),
    /// Compare-and-swap a key on its value or revision.
    Cas(kv::CasArgs),
    /// List keys under a prefix.
    List(kv::ListArgs),
    /// Distributed locks with fencing tokens: acquire, renew, release, status, watch, run.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// raftd cluster status (from the leader when reachable).
    Status(admin::StatusArgs),
    /// raftd membership: list, add (learner), promote, remove.
    Member(admin::MemberArgs),
    /// Move raftd leadership to another voter.
    TransferLeader(admin::TransferArgs),
    /// Local playground: raftd processes on 127.0.0.1 with fault injection.
    Local(local::LocalArgs),
    /// Throughput and latency of local raftd clusters, compared with etcd.
    Bench(bench::BenchArgs),
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

async fn run_async(command: &Command, output: OutputFormat) -> anyhow::Result<()> {
    match command {
        Command::Quorum(args) => quorum_cmd::run(args, output),
        Command::Cluster(command) => cluster::run(command, output).await,
        Command::Put(a) => kv::put(a, output).await,
        Command::Get(a) => kv::get(a, output).await,
        Command::Del(a) => kv::del(a, output).await,
        Command::Cas(a) => kv::cas(a, output).await,
        Command::List(a) => kv::list(a, output).await,
        Command::Lock(c) => lock::run(c, output).await,
        Command::Status(a) => admin::status(a, output).await,
        Command::Member(a) => admin::member(a, output).await,
        Command::TransferLeader(a) => admin::transfer(a, output).await,
        Command::Local(a) => local::run(a, output).await,
        Command::Bench(a) => bench::run(a, output).await,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(plugin_args());
    let result = match &cli.command {
        Command::Quorum(args) => quorum_cmd::run(args, cli.output),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run_async(command, cli.output))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `lock run` mirrors the command's exit code; the command spoke for itself.
        Err(err) if err.downcast_ref::<lock::ExitWith>().is_some() => {
            let code = err
                .downcast_ref::<lock::ExitWith>()
                .map(|e| e.0)
                .unwrap_or(1);
            std::process::ExitCode::from(code)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<lock::NotGranted>().is_some() {
                return std::process::ExitCode::from(2);
            }
            kv::exit_code(&err)
        }
    }
}
