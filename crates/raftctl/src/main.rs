//! `raftctl`: the command line for raftd clusters and RaftCluster resources.
//!
//! Each subcommand lives in its own module; this file only parses arguments and dispatches.
//! Installed as `kubectl-raft`, it also works as a kubectl plugin (`kubectl raft ...`).

mod admin;
mod bench;
mod chaos;
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
    /// Seeded random fault schedules over a local cluster, checked with Porcupine.
    Chaos(chaos::ChaosArgs),
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
    move_cluster_flags_after_subcommand(args)
}

/// Flags every data-plane subcommand takes, which users of etcdctl put before the subcommand.
const CLUSTER_FLAGS: [&str; 2] = ["--endpoints", "--timeout-ms"];

/// `raftctl --endpoints E put k v` means `raftctl put k v --endpoints E`: the cluster flags are
/// the subcommands' own, so those given before the subcommand move after it (before a `--`,
/// which starts a command line of its own in `lock run`).
fn move_cluster_flags_after_subcommand(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    let mut moved: Vec<std::ffi::OsString> = Vec::new();
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut before_subcommand = true;
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().to_string();
        if before_subcommand {
            if let Some(flag) = CLUSTER_FLAGS.iter().find(|f| text == **f) {
                moved.push(arg);
                match iter.next() {
                    Some(value) => moved.push(value),
                    None => moved.push(std::ffi::OsString::from(*flag)),
                }
                continue;
            }
            if CLUSTER_FLAGS
                .iter()
                .any(|f| text.starts_with(&format!("{f}=")))
            {
                moved.push(arg);
                continue;
            }
            if !text.starts_with('-') {
                before_subcommand = false;
            } else if matches!(text.as_str(), "-o" | "--output") {
                out.push(arg);
                if let Some(value) = iter.next() {
                    out.push(value);
                }
                continue;
            }
        }
        out.push(arg);
    }
    match out.iter().position(|a| a == "--") {
        Some(i) => {
            let tail = out.split_off(i);
            out.extend(moved);
            out.extend(tail);
        }
        None => out.extend(moved),
    }
    out
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
        Command::Chaos(a) => chaos::run(a).await,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rewrite(line: &str) -> String {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        move_cluster_flags_after_subcommand(args)
            .iter()
            .map(|a| a.to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn cluster_flags_before_the_subcommand_move_after_it() {
        assert_eq!(
            rewrite("raftctl --endpoints a:1,b:2 put k v"),
            "raftctl put k v --endpoints a:1,b:2"
        );
        assert_eq!(
            rewrite("raftctl --timeout-ms=900 -o json get k"),
            "raftctl -o json get k --timeout-ms=900"
        );
        assert_eq!(
            rewrite("raftctl --endpoints e lock run jobs/1 --ttl 5s -- ./job.sh --endpoints x"),
            "raftctl lock run jobs/1 --ttl 5s --endpoints e -- ./job.sh --endpoints x"
        );
    }

    #[test]
    fn flags_after_the_subcommand_stay_where_they_are() {
        assert_eq!(
            rewrite("raftctl put k v --endpoints e"),
            "raftctl put k v --endpoints e"
        );
    }

    #[test]
    fn the_cli_accepts_cluster_flags_on_either_side() {
        for line in [
            "raftctl --endpoints 127.0.0.1:1 put k v",
            "raftctl put k v --endpoints 127.0.0.1:1",
            "raftctl --endpoints=127.0.0.1:1 get k --consistency read_index",
            "raftctl get k --consistency read-index",
        ] {
            let args: Vec<std::ffi::OsString> =
                line.split(' ').map(std::ffi::OsString::from).collect();
            Cli::try_parse_from(move_cluster_flags_after_subcommand(args))
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
