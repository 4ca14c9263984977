//! Local raftd playground: N raftd processes on 127.0.0.1, with kill/pause/resume/restart.
//!
//! State lives in a directory: `cluster.json` (members, ports, pids), `endpoints` (the client
//! endpoints, comma-separated), `node-ID/` data dirs and `node-ID.log` logs. `raftctl local` and
//! the multi-process tests both drive clusters through this code.
//!
//! Every playground raftd runs with `--enable-fault-injection`, so partitions and delays can be
//! set per node over its HTTP port (`partition`, `delay`, `heal`).
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use raft_proto::RaftClient;
use raft_proto::faults::FaultRules;
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

/// A free loopback port that this process has not handed out before: the kernel may give a
/// just-released port again, and two nodes given one address would talk to themselves.
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
        let port = l.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
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
        if Self::state_file(dir).exists() {
            let running = Self::load(dir)
                .map(|old| old.nodes.iter().any(|n| n.pid.is_some_and(alive)))
                .unwrap_or(false);
            if running {
                bail!(
                    "--dir {}: a local cluster is already running there; run `raftctl local down --dir {}` first",
                    dir.display(),
                    dir.display()
                );
            }
            bail!(
                "--dir {}: holds a stopped local cluster (its data is kept); start it again with `raftctl local start --dir {}`, or delete it with `raftctl local down --purge --dir {}`",
                dir.display(),
                dir.display(),
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
            .arg("--enable-fault-injection")
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
            self.check_no_node_exited()?;
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

    /// Fails at once, with the node's last log lines, when a node that was started has exited.
    fn check_no_node_exited(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            if let Some(pid) = n.pid
                && !alive(pid)
            {
                let log = self.dir.join(format!("node-{}.log", n.id));
                let tail = fs::read_to_string(&log)
                    .map(|t| {
                        let lines: Vec<&str> = t.lines().collect();
                        lines[lines.len().saturating_sub(5)..].join("\n")
                    })
                    .unwrap_or_default();
                bail!(
                    "node {} (pid {pid}) exited; the end of {}:\n{tail}",
                    n.id,
                    log.display()
                );
            }
        }
        Ok(())
    }

    /// Starts every node of a stopped cluster again, with its data, and waits for a leader.
    pub async fn start(&mut self, leader_timeout: Duration) -> anyhow::Result<u64> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            if !self.is_running(id) {
                self.spawn(id)?;
            }
        }
        self.wait_for_leader(leader_timeout).await
    }

    /// Stops every node and deletes the cluster's directory (data, logs and state).
    pub fn purge(mut self) -> anyhow::Result<()> {
        self.down()?;
        fs::remove_dir_all(&self.dir).with_context(|| format!("deleting {}", self.dir.display()))
    }

    /// The network fault rules in force on node `id`.
    pub async fn faults(&self, id: u64) -> anyhow::Result<FaultRules> {
        let node = self.node(id)?;
        let body = http_request(&node.http_addr, "GET", "/debug/faults", None).await?;
        serde_json::from_str(&body)
            .with_context(|| format!("node {id}: unreadable fault rules {body:?}"))
    }

    /// Replaces the network fault rules of node `id`.
    pub async fn set_faults(&self, id: u64, rules: &FaultRules) -> anyhow::Result<()> {
        let node = self.node(id)?;
        let body = serde_json::to_string(rules)?;
        http_request(&node.http_addr, "PUT", "/debug/faults", Some(&body))
            .await
            .with_context(|| format!("setting the fault rules of node {id}"))?;
        Ok(())
    }

    /// Cuts node `id` off from `peers` (every other node when empty) in `direction`. Rules
    /// already in force on `id` stay; those are set on `id` alone, so they hold while a peer
    /// restarts.
    pub async fn partition(
        &self,
        id: u64,
        peers: &[u64],
        direction: LinkDirection,
    ) -> anyhow::Result<FaultRules> {
        let peers = self.peers_or_all(id, peers)?;
        let mut rules = self.faults(id).await?;
        for p in peers {
            if matches!(direction, LinkDirection::Both | LinkDirection::Out) {
                rules.drop_to.insert(p);
            }
            if matches!(direction, LinkDirection::Both | LinkDirection::In) {
                rules.drop_from.insert(p);
            }
        }
        self.set_faults(id, &rules).await?;
        Ok(rules)
    }

    /// Delays node `id`'s messages to `peers` (every other node when empty) by `ms`.
    pub async fn delay(&self, id: u64, ms: u64, peers: &[u64]) -> anyhow::Result<FaultRules> {
        let peers = self.peers_or_all(id, peers)?;
        let mut rules = self.faults(id).await?;
        for p in peers {
            if ms == 0 {
                rules.delay_to_ms.remove(&p);
            } else {
                rules.delay_to_ms.insert(p, ms);
            }
        }
        self.set_faults(id, &rules).await?;
        Ok(rules)
    }

    /// Clears every fault on node `id`, or on every running node when `None`.
    pub async fn heal(&self, id: Option<u64>) -> anyhow::Result<()> {
        let ids: Vec<u64> = match id {
            Some(id) => vec![self.node(id)?.id],
            None => self
                .nodes
                .iter()
                .filter(|n| self.is_running(n.id))
                .map(|n| n.id)
                .collect(),
        };
        for id in ids {
            self.set_faults(id, &FaultRules::default()).await?;
        }
        Ok(())
    }

    fn peers_or_all(&self, id: u64, peers: &[u64]) -> anyhow::Result<Vec<u64>> {
        self.node(id)?;
        if peers.is_empty() {
            return Ok(self
                .nodes
                .iter()
                .map(|n| n.id)
                .filter(|p| *p != id)
                .collect());
        }
        for p in peers {
            self.node(*p)?;
            if *p == id {
                bail!("node {id} cannot be partitioned from itself");
            }
        }
        Ok(peers.to_vec())
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

/// Which way a partition cuts the links between a node and its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDirection {
    /// Neither side hears the other.
    Both,
    /// The node's messages do not reach the peers (the peers' messages still reach it).
    Out,
    /// The peers' messages do not reach the node (its messages still reach them).
    In,
}

/// One HTTP/1.1 request on loopback, answered with the body of a 2xx response; any other status
/// is an error with the body (raftd's reason). Enough for the playground's few control calls.
async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.unwrap_or("");
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .with_context(|| format!("{method} http://{addr}{path}: no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} http://{addr}{path}: malformed HTTP response"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} http://{addr}{path}: no status in {head:?}"))?;
    if !(200..300).contains(&status) {
        bail!(
            "{method} http://{addr}{path}: HTTP {status}: {}",
            rest.trim()
        );
    }
    Ok(rest.to_string())
}
