//! Local raftd playground: N raftd processes on 127.0.0.1, with kill/pause/resume/restart.
//!
//! State lives in a directory: `cluster.json` (members, ports, pids), `endpoints` (the client
//! endpoints, comma-separated), `node-ID/` data dirs and `node-ID.log` logs. `raftctl local` and
//! the multi-process tests both drive clusters through this code.
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use raft_proto::RaftClient;
use serde::{Deserialize, Serialize};

/// One raftd process of a local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalNode {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
    pub pid: Option<u32>,
}

/// Options for `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: usize,
    pub raftd_bin: PathBuf,
    /// Extra flags passed to every raftd (e.g. `--inject-peer-rtt-ms=5`).
    pub extra_args: Vec<String>,
    /// How long to wait for a leader.
    pub leader_timeout: Duration,
}

/// A local cluster described by `DIR/cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub cluster_id: String,
    pub raftd_bin: PathBuf,
    pub extra_args: Vec<String>,
    pub nodes: Vec<LocalNode>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Finds the raftd binary: `$RAFTD_BIN`, next to the running executable (or its parent, for
/// test binaries in target/*/deps), else `raftd` on PATH.
pub fn find_raftd() -> PathBuf {
    if let Ok(p) = std::env::var("RAFTD_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let cand = dir.join("raftd");
            if cand.is_file() {
                return cand;
            }
        }
    }
    PathBuf::from("raftd")
}

fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        bail!(
            "signal {sig} to pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(p, 0) };
    if rc != 0 {
        return false;
    }
    // A zombie (exited, not yet reaped) still answers kill(0); check /proc.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
        Err(_) => false,
    }
}

impl LocalCluster {
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    /// Loads a cluster started earlier by `up`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let f = Self::state_file(dir);
        let text = fs::read_to_string(&f).with_context(|| {
            format!(
                "--dir {}: no local cluster here (missing {})",
                dir.display(),
                f.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid cluster state file", f.display()))
    }

    fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        fs::write(Self::state_file(&self.dir), text)?;
        fs::write(self.dir.join("endpoints"), self.endpoints())?;
        Ok(())
    }

    /// Comma-separated client endpoints.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.grpc_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, id: u64) -> anyhow::Result<&LocalNode> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| {
            format!(
                "node id {id}: no such node; this cluster has {:?}",
                self.nodes.iter().map(|n| n.id).collect::<Vec<_>>()
            )
        })
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}@{}", n.id, n.grpc_addr, n.http_addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts N nodes and waits for a leader. Writes DIR/endpoints.
    pub async fn up(dir: &Path, opts: UpOptions) -> anyhow::Result<Self> {
        if opts.nodes == 0 || opts.nodes > 9 {
            bail!("--nodes {}: must be between 1 and 9", opts.nodes);
        }
        if Self::state_file(dir).exists()
            && let Ok(old) = Self::load(dir)
            && old.nodes.iter().any(|n| n.pid.is_some_and(alive))
        {
            bail!(
                "--dir {}: a local cluster is already running there; run `raftctl local down` first",
                dir.display()
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let mut nodes = Vec::new();
        for id in 1..=opts.nodes as u64 {
            nodes.push(LocalNode {
                id,
                grpc_addr: format!("127.0.0.1:{}", free_port()?),
                http_addr: format!("127.0.0.1:{}", free_port()?),
                pid: None,
            });
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut cluster = LocalCluster {
            dir: dir.clone(),
            cluster_id: format!("local-{:x}", nanos & 0xffff_ffff),
            raftd_bin: opts.raftd_bin.clone(),
            extra_args: opts.extra_args.clone(),
            nodes,
        };
        for id in 1..=opts.nodes as u64 {
            cluster.spawn(id)?;
        }
        cluster.save()?;
        cluster.wait_for_leader(opts.leader_timeout).await?;
        Ok(cluster)
    }

    /// Starts (or restarts) the process of node `id` with its existing data dir.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<u32> {
        let node = self.node(id)?.clone();
        if let Some(pid) = node.pid
            && alive(pid)
        {
            bail!("node {id} is already running (pid {pid})");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let mut cmd = Command::new(&self.raftd_bin);
        cmd.arg("--node-id")
            .arg(id.to_string())
            .arg("--grpc-listen")
            .arg(&node.grpc_addr)
            .arg("--http-listen")
            .arg(&node.http_addr)
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{id}")))
            .arg("--cluster-id")
            .arg(&self.cluster_id)
            .arg("--initial-cluster")
            .arg(self.initial_cluster())
            .arg("--bootstrap")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (set RAFTD_BIN to the raftd binary)",
                self.raftd_bin.display()
            )
        })?;
        let pid = child.id();
        // The child is reaped by whoever outlives it; we only track its pid.
        std::mem::forget(child);
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
            n.pid = Some(pid);
        }
        self.save()?;
        Ok(pid)
    }

    pub fn client(&self) -> anyhow::Result<RaftClient> {
        RaftClient::new(&[self.endpoints()]).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Waits until some node reports itself leader and answers; returns the leader id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        let client = self.client()?;
        loop {
            for n in &self.nodes {
                if let Ok(s) = client.status_of(&n.grpc_addr).await
                    && s.role == "leader"
                    && s.applied_index >= s.commit_index
                    && s.commit_index > 0
                {
                    return Ok(s.id);
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "no leader elected within {timeout:?}; see the logs in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid_of(&self, id: u64) -> anyhow::Result<u32> {
        self.node(id)?
            .pid
            .with_context(|| format!("node {id} has no running process"))
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill_process(id)?;
        self.save()
    }

    fn kill_process(&mut self, id: u64) -> anyhow::Result<()> {
        let pid = self.pid_of(id)?;
        if alive(pid) {
            signal(pid, libc::SIGKILL)?;
        }
        for _ in 0..200 {
            if !alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
            n.pid = None;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        signal(self.pid_of(id)?, libc::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        signal(self.pid_of(id)?, libc::SIGCONT)
    }

    /// Kill (if running) and start again with the same data.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<u32> {
        if self.node(id)?.pid.is_some_and(alive) {
            self.kill(id)?;
        }
        self.spawn(id)
    }

    /// Stops every node (SIGCONT first so paused nodes can exit, then SIGKILL). Every node is
    /// signalled even if one fails; the first error is returned.
    pub fn down(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        let mut first_err = None;
        for id in ids {
            if let Some(pid) = self.node(id)?.pid
                && alive(pid)
            {
                let _ = signal(pid, libc::SIGCONT);
                if let Err(e) = self.kill_process(id) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.dir.exists()
            && let Err(e) = self.save()
        {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether node `id`'s process is running.
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).ok().and_then(|n| n.pid).is_some_and(alive)
    }
}

/// Kills the cluster's processes when dropped (tests use this so nothing leaks).
pub struct ClusterGuard(pub LocalCluster);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = self.0.down();
    }
}
