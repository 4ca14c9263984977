//! `raftctl chaos`: seeded random fault schedules over a local raftd cluster, with a client
//! workload whose history is checked for linearizability by Porcupine (tools/chaos-check), and
//! a report directory per schedule (summary, history, timeline picture).
//!
//! Bounded: every schedule runs for `--seconds`, every client for at most
//! `workload::MAX_OPS_PER_CLIENT` operations, and traffic stays on loopback.
mod history;
mod locks;
mod report;
mod schedule;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use raft_local::{LocalCluster, UpOptions, find_raftd};
use serde::Serialize;

use history::{HistoryOp, LeaderSample, Outcome};

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Seed of the first schedule; schedule i uses seed + i. A failing seed reruns alone.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many schedules to run.
    #[arg(long, default_value_t = 1)]
    pub schedules: u64,
    /// How long each schedule injects faults, in seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// raftd nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory for the reports (one `seed-N/` per schedule, and `summary.json`).
    #[arg(long)]
    pub report: PathBuf,
    /// The Porcupine checker built from tools/chaos-check (`make chaos-check`).
    #[arg(long, env = "RAFT_CHAOS_CHECKER")]
    pub checker: PathBuf,
    /// raftd binary (default: $RAFTD_BIN, next to raftctl, or on PATH).
    #[arg(long)]
    pub raftd: Option<PathBuf>,
}

/// The verdict Porcupine's checker prints.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CheckVerdict {
    pub linearizable: bool,
    pub result: String,
    pub operations: usize,
    pub unknown: usize,
    pub not_applied: usize,
    pub keys: usize,
    pub check_ms: u64,
    #[serde(default)]
    pub visualization: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSummary {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub seconds: u64,
    pub faults: Vec<String>,
    pub ops: usize,
    pub acknowledged: usize,
    pub not_applied: usize,
    pub outcome_unknown: usize,
    pub longest_write_gap_ms: f64,
    pub latency: std::collections::BTreeMap<String, report::Percentiles>,
    pub check: CheckVerdict,
    pub lock_grants: usize,
    pub fenced_writes_applied: usize,
    pub fenced_writes_rejected: usize,
    pub lock_violations: Vec<String>,
    pub stale_reads: usize,
    pub stale_read_violations: Vec<String>,
}

impl ScheduleSummary {
    pub fn passed(&self) -> bool {
        self.check.linearizable
            && self.lock_violations.is_empty()
            && self.stale_read_violations.is_empty()
    }
}

/// Workers contending for the locks besides the KV clients.
const LOCK_WORKERS: usize = 4;

pub async fn run(a: &ChaosArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.schedules == 0 || a.seconds == 0 {
        bail!("--clients, --schedules and --seconds must be at least 1");
    }
    if !a.checker.exists() {
        bail!(
            "--checker {}: not found; build it with `make chaos-check` (Porcupine, from tools/chaos-check)",
            a.checker.display()
        );
    }
    std::fs::create_dir_all(&a.report)
        .with_context(|| format!("--report {}", a.report.display()))?;
    let mut summaries = Vec::new();
    println!(
        "SEED  FAULTS  OPS     ACKED   UNKNOWN  GAP(ms)  LOCKS(grants/fenced ok/rejected)  CHECK"
    );
    for i in 0..a.schedules {
        let seed = a.seed + i;
        let s = run_schedule(a, seed).await?;
        println!(
            "{:<5} {:<7} {:<7} {:<7} {:<8} {:<8.0} {:<33} {} ({} ops, {} ms)",
            s.seed,
            s.faults.len(),
            s.ops,
            s.acknowledged,
            s.outcome_unknown,
            s.longest_write_gap_ms,
            format!(
                "{}/{}/{}{}",
                s.lock_grants,
                s.fenced_writes_applied,
                s.fenced_writes_rejected,
                if s.lock_violations.is_empty() {
                    ""
                } else {
                    " VIOLATION"
                }
            ),
            if s.check.linearizable {
                "linearizable"
            } else {
                "VIOLATION"
            },
            s.check.operations,
            s.check.check_ms
        );
        summaries.push(s);
    }
    let violations: Vec<u64> = summaries
        .iter()
        .filter(|s| !s.passed())
        .map(|s| s.seed)
        .collect();
    let total = serde_json::json!({
        "schedules": summaries.len(),
        "operations": summaries.iter().map(|s| s.ops).sum::<usize>(),
        "faults": summaries.iter().map(|s| s.faults.len()).sum::<usize>(),
        "outcome_unknown": summaries.iter().map(|s| s.outcome_unknown).sum::<usize>(),
        "violations": violations,
        "runs": summaries,
    });
    std::fs::write(
        a.report.join("summary.json"),
        serde_json::to_string_pretty(&total)?,
    )?;
    if !violations.is_empty() {
        bail!(
            "linearizability or lock-safety violations in seeds {violations:?}; see {}/seed-N/ (rerun one with --seed N --schedules 1)",
            a.report.display()
        );
    }
    println!(
        "{} schedules, 0 violations; report in {}",
        summaries.len(),
        a.report.display()
    );
    Ok(())
}

async fn run_schedule(a: &ChaosArgs, seed: u64) -> anyhow::Result<ScheduleSummary> {
    let dir = a.report.join(format!("seed-{seed}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut cluster = LocalCluster::up(
        &dir.join("cluster"),
        UpOptions {
            nodes: a.nodes,
            raftd_bin: a.raftd.clone().unwrap_or_else(find_raftd),
            extra_args: vec![],
            leader_timeout: Duration::from_secs(30),
        },
    )
    .await?;
    let result = drive(a, seed, &mut cluster, &dir).await;
    let _ = cluster.down();
    let summary = result?;
    if summary.passed() {
        // Keep the raftd logs only when they explain a violation.
        let _ = std::fs::remove_dir_all(dir.join("cluster"));
    }
    Ok(summary)
}

async fn drive(
    a: &ChaosArgs,
    seed: u64,
    cluster: &mut LocalCluster,
    dir: &Path,
) -> anyhow::Result<ScheduleSummary> {
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..a.clients {
        clients.push(tokio::spawn(workload::client(
            id,
            seed,
            cluster.endpoints(),
            base,
            stop.clone(),
        )));
    }
    let mut workers = Vec::new();
    for id in 0..LOCK_WORKERS {
        workers.push(tokio::spawn(locks::worker(
            id,
            seed,
            cluster.endpoints(),
            base,
            stop.clone(),
        )));
    }
    let sampler = {
        let stop = stop.clone();
        let c = cluster.clone();
        tokio::spawn(async move { sample_leaders(c, base, stop).await })
    };
    let mut rng = workload::Rng::new(seed);
    let nodes: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let mut faults = Vec::new();
    let run_for = Duration::from_secs(a.seconds);
    while base.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(rng.range(200, 1000))).await;
        let fault = schedule::Fault::draw(&mut rng, &nodes);
        let hold = Duration::from_millis(rng.range(200, 2500));
        let window = schedule::apply(cluster, fault, hold, base).await?;
        eprintln!("  seed {seed} {:>6.1?}: {}", base.elapsed(), window.what);
        faults.push(window);
    }
    cluster.heal(None).await?;
    for n in &nodes {
        if !cluster.is_running(*n) {
            cluster.restart(*n)?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<HistoryOp> = Vec::new();
    for c in clients {
        history.extend(c.await.context("a chaos client panicked")?);
    }
    let leaders = sampler.await.context("the leader sampler panicked")?;
    let mut lock_history = locks::LockHistory::default();
    for w in workers {
        let h = w.await.context("a lock worker panicked")?;
        lock_history.grants.extend(h.grants);
        lock_history.writes.extend(h.writes);
    }
    let lock_violations = locks::violations(&lock_history);
    std::fs::write(
        dir.join("locks.json"),
        serde_json::to_string_pretty(&lock_history)?,
    )?;
    history.extend(workload::final_reads(&cluster.endpoints(), base, a.clients).await?);
    history.sort_by_key(|o| o.invoke_ns);

    // Stale reads answer to their own model (checked here), not to linearizability.
    let stale_violations = workload::stale_read_violations(&history);
    let stale_reads = history.iter().filter(|o| o.level == Some("stale")).count();
    let history_path = dir.join("history.jsonl");
    let mut lines = String::new();
    for op in history.iter().filter(|o| o.level != Some("stale")) {
        lines.push_str(&serde_json::to_string(op)?);
        lines.push('\n');
    }
    std::fs::write(&history_path, lines)?;
    std::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(&faults)?,
    )?;
    let check = check(&a.checker, &history_path, &dir.join("porcupine.html"))?;
    let (gap_ns, _) = report::longest_write_gap(&history);
    let svg = report::timeline_svg(
        &format!(
            "raftctl chaos seed {seed}: {} nodes, {} clients, {} faults, {}",
            a.nodes,
            a.clients,
            faults.len(),
            if check.linearizable {
                "linearizable"
            } else {
                "VIOLATION"
            }
        ),
        &history,
        &faults,
        &leaders,
        a.clients,
    );
    std::fs::write(dir.join("timeline.svg"), svg)?;
    let count = |o: Outcome| history.iter().filter(|h| h.outcome == o).count();
    let summary = ScheduleSummary {
        seed,
        nodes: a.nodes,
        clients: a.clients,
        seconds: a.seconds,
        faults: faults.iter().map(|f| f.what.clone()).collect(),
        ops: history.len(),
        acknowledged: count(Outcome::Ok),
        not_applied: count(Outcome::NotApplied),
        outcome_unknown: count(Outcome::Unknown),
        longest_write_gap_ms: gap_ns as f64 / 1e6,
        latency: report::latency_by_op(&history),
        check,
        lock_grants: lock_history.grants.len(),
        fenced_writes_applied: lock_history.writes.iter().filter(|w| w.applied).count(),
        fenced_writes_rejected: lock_history.writes.iter().filter(|w| w.fenced).count(),
        lock_violations,
        stale_reads,
        stale_read_violations: stale_violations,
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

/// Samples which node leads every 100 ms until `stop`.
async fn sample_leaders(
    c: LocalCluster,
    base: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<LeaderSample> {
    let mut out = Vec::new();
    let Ok(client) = c.client() else {
        return out;
    };
    while !stop.load(Ordering::Relaxed) {
        let mut sample = LeaderSample {
            at_ns: base.elapsed().as_nanos() as i64,
            leader: None,
            term: 0,
        };
        for n in &c.nodes {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(100), client.status_of(&n.grpc_addr))
                    .await
                && s.role == "leader"
                && s.term >= sample.term
            {
                sample.leader = Some(s.id);
                sample.term = s.term;
            }
        }
        out.push(sample);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// Runs the Porcupine checker on a history.
fn check(checker: &Path, history: &Path, viz: &Path) -> anyhow::Result<CheckVerdict> {
    let out = std::process::Command::new(checker)
        .arg("-history")
        .arg(history)
        .arg("-viz")
        .arg(viz)
        .output()
        .with_context(|| format!("running {}", checker.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "{} gave no verdict (exit {:?}): {} {}",
            checker.display(),
            out.status.code(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
