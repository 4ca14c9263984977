//! `sandbox-node`: the sandbox node agent (`agent`), the in-pod launcher (`pod-exec`) and the
//! built-in test image (`echo-server`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sandbox_node::config::SandboxConfig;
use sandbox_node::podexec::{self, BindMount, PodExec};

#[derive(Parser)]
#[command(name = "sandbox-node", about = "Local Kubernetes sandbox node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: register nodes, run their pods, provision volumes.
    Agent {
        /// Sandbox configuration file.
        #[arg(long, env = "RAFT_SANDBOX_CONFIG")]
        config: PathBuf,
    },
    /// Internal: enter a pod's namespaces, set up its mounts, exec the container.
    PodExec {
        /// Network namespace file.
        #[arg(long)]
        netns: PathBuf,
        /// Hostname inside the pod.
        #[arg(long)]
        hostname: String,
        /// Bind mounts, SOURCE=TARGET[:ro].
        #[arg(long = "mount")]
        mounts: Vec<String>,
        /// Working directory.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Sandbox state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// Program and arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Built-in test image: a small HTTP server (see the `echo` module).
    EchoServer {
        /// Port to listen on.
        #[arg(long, env = "PORT", default_value_t = 8080)]
        port: u16,
        /// Directory for the data file (usually a PVC mount).
        #[arg(long, env = "DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::PodExec {
            netns,
            hostname,
            mounts,
            workdir,
            state_dir,
            argv,
        } => {
            // Single-threaded on purpose: setns/unshare apply to the calling thread only.
            let mounts = mounts
                .iter()
                .map(|m| BindMount::parse(m))
                .collect::<Result<Vec<_>>>()?;
            let spec = PodExec {
                netns_path: netns,
                hostname,
                mounts,
                workdir,
                state_dir,
                argv,
            };
            match podexec::run(&spec) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("pod-exec: {e:#}");
                    std::process::exit(127);
                }
            }
        }
        Command::Agent { config } => {
            init_tracing();
            let config = SandboxConfig::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(sandbox_node::agent::run(config))
        }
        Command::EchoServer { port, data_dir } => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(sandbox_node::echo::serve(port, data_dir))
        }
    }
}
