//! The fault schedule of one chaos run, drawn from its seed: kill -9 and restart, SIGSTOP and
//! SIGCONT, partitions (one node, the leader, a majority/minority split, asymmetric, a bridge),
//! peer delay, leadership transfer and a snapshot, each applied, held, and undone.
use std::time::{Duration, Instant};

use raft_local::{LinkDirection, LocalCluster};

use super::history::FaultWindow;
use super::workload::Rng;

/// One fault, with the nodes it names.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    KillRestart(u64),
    Pause(u64),
    Isolate(u64),
    IsolateLeader,
    /// The leader's messages to this node are lost; its messages to the leader arrive.
    AsymmetricFromLeader(u64),
    /// The leader and one follower on one side, everyone else on the other.
    MinorityWithLeader,
    /// Two halves that hear only this node (the bridge).
    Bridge(u64),
    Delay(u64, u64),
    TransferLeader(u64),
    Snapshot,
}

impl Fault {
    pub fn draw(rng: &mut Rng, nodes: &[u64]) -> Fault {
        let node = nodes[rng.range(0, nodes.len() as u64) as usize];
        match rng.range(0, 10) {
            0 => Fault::KillRestart(node),
            1 => Fault::Pause(node),
            2 => Fault::Isolate(node),
            3 => Fault::IsolateLeader,
            4 => Fault::AsymmetricFromLeader(node),
            5 => Fault::MinorityWithLeader,
            6 => Fault::Bridge(node),
            7 => Fault::Delay(node, rng.range(10, 120)),
            8 => Fault::TransferLeader(node),
            _ => Fault::Snapshot,
        }
    }
}

async fn leader(c: &LocalCluster) -> Option<u64> {
    let client = c.client().ok()?;
    for n in &c.nodes {
        if c.is_running(n.id)
            && let Ok(s) = client.status_of(&n.grpc_addr).await
            && s.role == "leader"
        {
            return Some(s.id);
        }
    }
    None
}

/// Cuts `a` from `b` both ways (rules set on `a`).
async fn cut(c: &LocalCluster, a: u64, b: &[u64]) -> anyhow::Result<()> {
    if b.is_empty() {
        return Ok(());
    }
    c.partition(a, b, LinkDirection::Both).await.map(|_| ())
}

/// Applies `fault`, holds it for `hold`, undoes it, and returns its window.
pub async fn apply(
    c: &mut LocalCluster,
    fault: Fault,
    hold: Duration,
    base: Instant,
) -> anyhow::Result<FaultWindow> {
    let start_ns = base.elapsed().as_nanos() as i64;
    let nodes: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let leader = leader(c).await;
    let what = match fault {
        Fault::KillRestart(n) => {
            c.kill(n)?;
            tokio::time::sleep(hold).await;
            c.restart(n)?;
            format!("kill -9 node {n}, restart")
        }
        Fault::Pause(n) => {
            c.pause(n)?;
            tokio::time::sleep(hold).await;
            c.resume(n)?;
            format!("pause node {n}")
        }
        Fault::Isolate(n) => {
            c.partition(n, &[], LinkDirection::Both).await?;
            tokio::time::sleep(hold).await;
            c.heal(None).await?;
            format!("isolate node {n}")
        }
        Fault::IsolateLeader => {
            let Some(l) = leader else {
                return Ok(FaultWindow {
                    what: "isolate leader: none".into(),
                    start_ns,
                    end_ns: start_ns,
                });
            };
            c.partition(l, &[], LinkDirection::Both).await?;
            tokio::time::sleep(hold).await;
            c.heal(None).await?;
            format!("isolate leader {l}")
        }
        Fault::AsymmetricFromLeader(n) => match leader {
            Some(l) if l != n => {
                c.partition(l, &[n], LinkDirection::Out).await?;
                tokio::time::sleep(hold).await;
                c.heal(None).await?;
                format!("leader {l} -> node {n} lost")
            }
            _ => "asymmetric: node leads".into(),
        },
        Fault::MinorityWithLeader => {
            let Some(l) = leader else {
                return Ok(FaultWindow {
                    what: "split: no leader".into(),
                    start_ns,
                    end_ns: start_ns,
                });
            };
            let minority_size = nodes.len().div_ceil(2) - 1;
            let mut minority = vec![l];
            minority.extend(
                nodes
                    .iter()
                    .copied()
                    .filter(|n| *n != l)
                    .take(minority_size.saturating_sub(1)),
            );
            let majority: Vec<u64> = nodes
                .iter()
                .copied()
                .filter(|n| !minority.contains(n))
                .collect();
            for m in &minority {
                cut(c, *m, &majority).await?;
            }
            tokio::time::sleep(hold).await;
            c.heal(None).await?;
            format!("split {minority:?} (with leader) | {majority:?}")
        }
        Fault::Bridge(b) => {
            let others: Vec<u64> = nodes.iter().copied().filter(|n| *n != b).collect();
            let (left, right) = others.split_at(others.len() / 2);
            for l in left {
                cut(c, *l, right).await?;
            }
            tokio::time::sleep(hold).await;
            c.heal(None).await?;
            format!("bridge node {b} between {left:?} and {right:?}")
        }
        Fault::Delay(n, ms) => {
            c.delay(n, ms, &[]).await?;
            tokio::time::sleep(hold).await;
            c.heal(None).await?;
            format!("delay node {n} by {ms} ms")
        }
        Fault::TransferLeader(n) => {
            let r = match c.client() {
                Ok(client) => client.transfer_leader(n).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            tokio::time::sleep(hold).await;
            format!(
                "transfer leadership to node {n}{}",
                if r.is_ok() { "" } else { " (refused)" }
            )
        }
        Fault::Snapshot => {
            if let Ok(client) = c.client() {
                let _ = client
                    .admin(|mut a, _| async move {
                        a.snapshot(raft_proto::pb::SnapshotRequest {})
                            .await
                            .map(|r| r.into_inner())
                    })
                    .await;
            }
            tokio::time::sleep(hold).await;
            "snapshot on the leader".into()
        }
    };
    Ok(FaultWindow {
        what,
        start_ns,
        end_ns: base.elapsed().as_nanos() as i64,
    })
}
