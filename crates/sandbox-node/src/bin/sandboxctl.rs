//! `sandboxctl`: fault injection against the running sandbox (kill, pause, resume, partition,
//! heal, zone-down, zone-up) and a listing of where pods run.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sandbox_node::faults::Faults;

#[derive(Parser)]
#[command(
    name = "sandboxctl",
    about = "Inject faults into the local Kubernetes sandbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SIGKILL a pod's container process(es); the agent restarts per restart policy.
    Kill {
        /// Pod as NAMESPACE/NAME.
        pod: String,
        /// Only this container.
        #[arg(long, short)]
        container: Option<String>,
    },
    /// Freeze a pod's processes (SIGSTOP).
    Pause {
        /// Pod as NAMESPACE/NAME.
        pod: String,
    },
    /// Thaw a paused pod (SIGCONT).
    Resume {
        /// Pod as NAMESPACE/NAME.
        pod: String,
    },
    /// Cut a pod off from all other pods and Service IPs.
    Partition {
        /// Pod as NAMESPACE/NAME.
        pod: String,
    },
    /// Undo `partition`.
    Heal {
        /// Pod as NAMESPACE/NAME.
        pod: String,
    },
    /// Take a zone down: nodes NotReady, processes stopped, network cut.
    ZoneDown {
        /// Zone name, e.g. zone-a.
        zone: String,
    },
    /// Bring a zone back up.
    ZoneUp {
        /// Zone name.
        zone: String,
    },
    /// List pods running on the sandbox (namespace/name, node, zone, IP, PIDs).
    Pods,
}

fn split_pod(pod: &str) -> Result<(&str, &str)> {
    match pod.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        _ => anyhow::bail!("pod {pod:?}: expected NAMESPACE/NAME"),
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let faults = Faults::running()?;
    match &cli.command {
        Command::Kill { pod, container } => {
            let (ns, name) = split_pod(pod)?;
            faults.kill(ns, name, container.as_deref())
        }
        Command::Pause { pod } => split_pod(pod).and_then(|(ns, name)| faults.pause(ns, name)),
        Command::Resume { pod } => split_pod(pod).and_then(|(ns, name)| faults.resume(ns, name)),
        Command::Partition { pod } => {
            split_pod(pod).and_then(|(ns, name)| faults.partition(ns, name))
        }
        Command::Heal { pod } => split_pod(pod).and_then(|(ns, name)| faults.heal(ns, name)),
        Command::ZoneDown { zone } => faults.zone_down(zone),
        Command::ZoneUp { zone } => faults.zone_up(zone),
        Command::Pods => {
            let mut records = faults.records()?;
            records.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            println!(
                "{:<40} {:<14} {:<8} {:<14} PIDS",
                "POD", "NODE", "ZONE", "IP"
            );
            for r in records {
                let pids: Vec<String> = r
                    .containers
                    .iter()
                    .map(|(c, p)| format!("{c}={p}"))
                    .collect();
                println!(
                    "{:<40} {:<14} {:<8} {:<14} {}",
                    format!("{}/{}", r.namespace, r.name),
                    r.node,
                    r.zone,
                    r.ip,
                    pids.join(",")
                );
            }
            Ok(())
        }
    }
}
