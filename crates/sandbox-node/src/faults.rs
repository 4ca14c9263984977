//! Fault injection against running sandbox pods and zones: kill, pause, resume, partition, heal,
//! zone-down and zone-up. Used by the `sandboxctl` CLI and by end-to-end tests.
//!
//! Mechanisms: signals to the container's process group (kill/pause/resume); iptables rules inside
//! the pod's own network namespace (partition/heal; the pod keeps talking to the host gateway so
//! the agent's probes and DNS still reach it); for a zone, a marker file that makes the agent stop
//! heartbeating the zone's nodes and mark them NotReady, SIGSTOP of every process there and the
//! host ends of the pods' veths set down (network cut).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::info;

use crate::config::SandboxConfig;
use crate::state::{self, PodRecord};

const PARTITION_IN: &str = "SBX-PARTITION-IN";
const PARTITION_OUT: &str = "SBX-PARTITION-OUT";

/// Fault injector bound to a running sandbox's configuration.
#[derive(Debug, Clone)]
pub struct Faults {
    config: SandboxConfig,
}

impl Faults {
    /// Uses the running sandbox's configuration.
    pub fn running() -> Result<Self> {
        Ok(Self {
            config: SandboxConfig::load_running()?,
        })
    }

    /// Uses an explicit configuration.
    pub fn new(config: SandboxConfig) -> Self {
        Self { config }
    }

    fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Every pod the agent runs.
    pub fn records(&self) -> Result<Vec<PodRecord>> {
        state::list_records(self.state_dir())
    }

    /// The record of a running pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<PodRecord> {
        state::find_pod(self.state_dir(), namespace, name)
    }

    /// Sends `signal` to the process group of `container` (or every container) of a pod.
    pub fn signal(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
        signal: Signal,
    ) -> Result<()> {
        let record = self.pod(namespace, name)?;
        let targets: Vec<(&String, &i32)> = record
            .containers
            .iter()
            .filter(|(c, _)| container.is_none_or(|want| want == c.as_str()))
            .collect();
        if targets.is_empty() {
            bail!(
                "pod {namespace}/{name}: no running container{} (running: {:?})",
                container
                    .map(|c| format!(" named {c:?}"))
                    .unwrap_or_default(),
                record.containers.keys().collect::<Vec<_>>()
            );
        }
        for (c, pid) in targets {
            killpg(Pid::from_raw(*pid), signal).with_context(|| {
                format!("sending {signal} to {namespace}/{name} container {c} (pid {pid})")
            })?;
            info!(pod = %format!("{namespace}/{name}"), container = %c, pid, %signal, "signalled");
        }
        Ok(())
    }

    /// SIGKILLs a pod's container process(es); the agent restarts them per the restart policy.
    pub fn kill(&self, namespace: &str, name: &str, container: Option<&str>) -> Result<()> {
        self.signal(namespace, name, container, Signal::SIGKILL)
    }

    /// Freezes a pod's processes (SIGSTOP).
    pub fn pause(&self, namespace: &str, name: &str) -> Result<()> {
        self.signal(namespace, name, None, Signal::SIGSTOP)
    }

    /// Thaws a paused pod (SIGCONT).
    pub fn resume(&self, namespace: &str, name: &str) -> Result<()> {
        self.signal(namespace, name, None, Signal::SIGCONT)
    }

    /// Cuts a pod off from every other pod and from Service IPs. The host gateway stays reachable.
    pub fn partition(&self, namespace: &str, name: &str) -> Result<()> {
        let record = self.pod(namespace, name)?;
        self.heal_record(&record)?;
        let gw = &self.config.gateway;
        let pods = &self.config.pod_cidr;
        let svc = &self.config.service_cidr;
        let ns = record.netns.as_str();
        for chain in [PARTITION_IN, PARTITION_OUT] {
            iptables(ns, &["-N", chain])?;
        }
        iptables(ns, &["-A", PARTITION_IN, "-i", "lo", "-j", "RETURN"])?;
        iptables(ns, &["-A", PARTITION_IN, "-s", gw, "-j", "RETURN"])?;
        iptables(ns, &["-A", PARTITION_IN, "-s", pods, "-j", "DROP"])?;
        iptables(ns, &["-A", PARTITION_OUT, "-o", "lo", "-j", "RETURN"])?;
        iptables(ns, &["-A", PARTITION_OUT, "-d", gw, "-j", "RETURN"])?;
        iptables(ns, &["-A", PARTITION_OUT, "-d", pods, "-j", "DROP"])?;
        iptables(ns, &["-A", PARTITION_OUT, "-d", svc, "-j", "DROP"])?;
        iptables(ns, &["-I", "INPUT", "-j", PARTITION_IN])?;
        iptables(ns, &["-I", "OUTPUT", "-j", PARTITION_OUT])?;
        info!(pod = %format!("{namespace}/{name}"), ip = %record.ip, "partitioned");
        Ok(())
    }

    /// Removes a partition (no-op if none).
    pub fn heal(&self, namespace: &str, name: &str) -> Result<()> {
        let record = self.pod(namespace, name)?;
        self.heal_record(&record)?;
        info!(pod = %format!("{namespace}/{name}"), "healed");
        Ok(())
    }

    fn heal_record(&self, record: &PodRecord) -> Result<()> {
        let ns = record.netns.as_str();
        // Each delete may fail when the rule or chain is absent; that is what "already healed" looks like.
        let _ = iptables(ns, &["-D", "INPUT", "-j", PARTITION_IN]);
        let _ = iptables(ns, &["-D", "OUTPUT", "-j", PARTITION_OUT]);
        for chain in [PARTITION_IN, PARTITION_OUT] {
            let _ = iptables(ns, &["-F", chain]);
            let _ = iptables(ns, &["-X", chain]);
        }
        Ok(())
    }

    fn check_zone(&self, zone: &str) -> Result<()> {
        if !self.config.nodes.iter().any(|n| n.zone == zone) {
            let zones: std::collections::BTreeSet<&str> =
                self.config.nodes.iter().map(|n| n.zone.as_str()).collect();
            bail!("zone {zone:?} is not a sandbox zone (zones: {zones:?})");
        }
        Ok(())
    }

    /// Takes a zone down: its nodes go NotReady, its pods' processes stop, their network is cut.
    pub fn zone_down(&self, zone: &str) -> Result<()> {
        self.check_zone(zone)?;
        let marker_dir = state::zone_down_dir(self.state_dir());
        std::fs::create_dir_all(&marker_dir)
            .with_context(|| format!("creating {}", marker_dir.display()))?;
        std::fs::write(marker_dir.join(zone), b"down\n").context("writing zone-down marker")?;
        for record in state::list_records(self.state_dir())?
            .iter()
            .filter(|r| r.zone == zone)
        {
            for pid in record.containers.values() {
                // A process may have exited between listing and signalling; that is fine.
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGSTOP);
            }
            ip(&["link", "set", &record.host_veth, "down"])?;
            info!(pod = %format!("{}/{}", record.namespace, record.name), zone, "stopped and cut off");
        }
        Ok(())
    }

    /// Brings a zone back: network up, processes continued, nodes heartbeating again.
    pub fn zone_up(&self, zone: &str) -> Result<()> {
        self.check_zone(zone)?;
        for record in state::list_records(self.state_dir())?
            .iter()
            .filter(|r| r.zone == zone)
        {
            ip(&["link", "set", &record.host_veth, "up"])?;
            for pid in record.containers.values() {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGCONT);
            }
            info!(pod = %format!("{}/{}", record.namespace, record.name), zone, "continued and reconnected");
        }
        let marker = state::zone_down_dir(self.state_dir()).join(zone);
        match std::fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", marker.display())),
        }
    }
}

/// Runs `ip netns exec NETNS iptables -w ARGS`.
fn iptables(netns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["netns", "exec", netns, "iptables", "-w"];
    full.extend_from_slice(args);
    ip(&full)
}

/// Runs `ip ARGS` and fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
