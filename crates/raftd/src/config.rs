//! raftd command-line flags and environment variables.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How `linearizable` reads are served by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadMode {
    /// Leader lease (falls back to ReadIndex when the lease is not valid).
    LeaseRead,
    /// A quorum round trip per read batch.
    ReadIndex,
}

impl ReadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::LeaseRead => "LeaseRead",
            ReadMode::ReadIndex => "ReadIndex",
        }
    }
}

/// How a node with no data and no cluster identity treats the first peer that contacts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JoinMode {
    /// Adopt the cluster id and epoch of the first leader that contacts it (standalone use).
    Auto,
    /// Refuse every peer until an admin `Join` (or `Initialize`) names the cluster. An operator
    /// uses this so that a member whose data directory was wiped is never silently re-added
    /// as a voter that forgot its votes and log.
    Explicit,
}

impl JoinMode {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinMode::Auto => "auto",
            JoinMode::Explicit => "explicit",
        }
    }
}

/// One member of an initial cluster: `ID=GRPC_ADDR[@HTTP_ADDR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
}

/// Parses `--initial-cluster` (comma-separated `ID=GRPC_ADDR[@HTTP_ADDR]`).
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, String> {
    let mut out: Vec<InitialMember> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').ok_or_else(|| {
            format!("initial-cluster: entry {part:?} must look like ID=GRPC_ADDR[@HTTP_ADDR]")
        })?;
        let id: u64 = id.trim().parse().map_err(|_| {
            format!("initial-cluster: node id {id:?} in {part:?} is not a positive integer")
        })?;
        if id == 0 {
            return Err(format!(
                "initial-cluster: node id 0 in {part:?} is reserved; use ids from 1"
            ));
        }
        let (grpc, http) = match addrs.split_once('@') {
            Some((g, h)) => (g.to_string(), h.to_string()),
            None => (addrs.to_string(), String::new()),
        };
        if grpc.parse::<SocketAddr>().is_err() && !grpc.contains(':') {
            return Err(format!(
                "initial-cluster: address {grpc:?} of node {id} must be HOST:PORT"
            ));
        }
        if out.iter().any(|m| m.id == id) {
            return Err(format!("initial-cluster: node id {id} appears twice"));
        }
        out.push(InitialMember {
            id,
            grpc_addr: grpc,
            http_addr: http,
        });
    }
    if out.is_empty() {
        return Err("initial-cluster: no members given".to_string());
    }
    Ok(out)
}

#[derive(Debug, Clone, Parser)]
#[command(name = "raftd", version, about = "Raft-replicated key-value server")]
pub struct Args {
    /// This node's Raft id (a positive integer, unique in the cluster).
    #[arg(long, env = "RAFTD_NODE_ID")]
    pub node_id: u64,
    /// Address the gRPC server (clients, admin, peers) listens on.
    #[arg(long, env = "RAFTD_GRPC_LISTEN", default_value = "127.0.0.1:7001")]
    pub grpc_listen: SocketAddr,
    /// Address the HTTP server (/healthz, /readyz, /status, /metrics) listens on.
    #[arg(long, env = "RAFTD_HTTP_LISTEN", default_value = "127.0.0.1:8001")]
    pub http_listen: SocketAddr,
    /// gRPC address other members and clients use to reach this node (default: --grpc-listen).
    #[arg(long, env = "RAFTD_GRPC_ADVERTISE")]
    pub grpc_advertise: Option<String>,
    /// HTTP address advertised in the membership (default: --http-listen).
    #[arg(long, env = "RAFTD_HTTP_ADVERTISE")]
    pub http_advertise: Option<String>,
    /// Data directory (redb database).
    #[arg(long, env = "RAFTD_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Cluster id. Persisted on first use; a node refuses peers of another cluster id.
    #[arg(long, env = "RAFTD_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Initial members, `ID=GRPC_ADDR[@HTTP_ADDR],...`; used with --bootstrap.
    #[arg(long, env = "RAFTD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Form a new cluster from --initial-cluster if this node's data dir is empty. Without it an
    /// empty node stays uninitialized until the admin Initialize call or a leader adds it.
    #[arg(long, env = "RAFTD_BOOTSTRAP", default_value_t = false)]
    pub bootstrap: bool,
    /// How an empty node (no data, no identity) treats peers: `auto` adopts the first leader's
    /// cluster, `explicit` waits for an admin Join.
    #[arg(long, env = "RAFTD_JOIN_MODE", value_enum, default_value_t = JoinMode::Auto)]
    pub join_mode: JoinMode,
    /// Minimum election timeout (ms).
    #[arg(long, env = "RAFTD_ELECTION_TIMEOUT_MIN_MS", default_value_t = 150)]
    pub election_timeout_min_ms: u64,
    /// Maximum election timeout (ms); also the leader lease.
    #[arg(long, env = "RAFTD_ELECTION_TIMEOUT_MAX_MS", default_value_t = 300)]
    pub election_timeout_max_ms: u64,
    /// Heartbeat interval (ms).
    #[arg(long, env = "RAFTD_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// How `linearizable` reads are served.
    #[arg(long, env = "RAFTD_READ_MODE", value_enum, default_value_t = ReadMode::LeaseRead)]
    pub read_mode: ReadMode,
    /// Bound on clock drift between members over one lease (ms); subtracted from the lease.
    /// The default is the RaftCluster CRD's (`maxClockDriftMs: 10`): 10 ms over a 300 ms lease
    /// is a 3% rate difference, hundreds of times what quartz clocks drift.
    #[arg(long, env = "RAFTD_MAX_CLOCK_DRIFT_MS", default_value_t = 10)]
    pub max_clock_drift_ms: u64,
    /// Userspace round-trip delay added to every peer RPC (ms), for benchmarks.
    #[arg(long, env = "RAFTD_INJECT_PEER_RTT_MS", default_value_t = 0)]
    pub inject_peer_rtt_ms: u64,
    /// Take a snapshot after this many applied entries.
    #[arg(long, env = "RAFTD_SNAPSHOT_EVERY", default_value_t = 50_000)]
    pub snapshot_every: u64,
    /// Accept test-only network faults (drops and delays per peer) over HTTP `/debug/faults`.
    /// For playgrounds and fault campaigns; never in production.
    #[arg(long, env = "RAFTD_ENABLE_FAULT_INJECTION", default_value_t = false)]
    pub enable_fault_injection: bool,
    /// A follower counts as caught up (and turns ready) once its applied index is within this
    /// many entries of the leader's commit index.
    #[arg(long, env = "RAFTD_READY_MAX_LAG_ENTRIES", default_value_t = 1000)]
    pub ready_max_lag_entries: u64,
    /// Log format: text or json.
    #[arg(long, env = "RAFTD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Args {
    pub fn grpc_advertise(&self) -> String {
        self.grpc_advertise
            .clone()
            .unwrap_or_else(|| self.grpc_listen.to_string())
    }
    pub fn http_advertise(&self) -> String {
        self.http_advertise
            .clone()
            .unwrap_or_else(|| self.http_listen.to_string())
    }

    /// Checks cross-field constraints; the error names the flag and the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("--node-id: 0 is reserved; use ids from 1".into());
        }
        if self.election_timeout_min_ms == 0
            || self.election_timeout_min_ms >= self.election_timeout_max_ms
        {
            return Err(format!(
                "--election-timeout-min-ms ({}) must be > 0 and below --election-timeout-max-ms ({})",
                self.election_timeout_min_ms, self.election_timeout_max_ms
            ));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_min_ms {
            return Err(format!(
                "--heartbeat-ms ({}) must be > 0 and below --election-timeout-min-ms ({})",
                self.heartbeat_ms, self.election_timeout_min_ms
            ));
        }
        if self.max_clock_drift_ms >= self.election_timeout_min_ms {
            return Err(format!(
                "--max-clock-drift-ms ({}) must be below --election-timeout-min-ms ({}): the lease read window is the lease minus the drift, and a drift that large leaves no safe window",
                self.max_clock_drift_ms, self.election_timeout_min_ms
            ));
        }
        if self.bootstrap {
            let Some(ic) = &self.initial_cluster else {
                return Err("--bootstrap needs --initial-cluster".into());
            };
            let members = parse_initial_cluster(ic)?;
            if !members.iter().any(|m| m.id == self.node_id) {
                return Err(format!(
                    "--initial-cluster does not contain this node's id {}",
                    self.node_id
                ));
            }
            if self.cluster_id.as_deref().unwrap_or("").is_empty() {
                return Err("--bootstrap needs --cluster-id".into());
            }
        }
        Ok(())
    }
}
