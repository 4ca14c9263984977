//! Quorum-loss detection on the leader, and stepping down when a majority stays unreachable.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use super::*;

/// A joint configuration a leader still sees after this long was left behind by an interrupted
/// membership change (a change takes milliseconds); the leader finishes it.
const JOINT_LEFT_BEHIND_AFTER: Duration = Duration::from_secs(2);

impl RaftNode {
    /// Watches the leader's quorum acks. When the lease expires the node marks quorum lost
    /// (pending writes then fail with "outcome unknown" at once); one election timeout later it
    /// steps down by restarting its Raft instance from durable state as a follower.
    pub(super) async fn watchdog(node: Arc<RaftNode>) {
        let timing = node.timing;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        // Since when this leader has seen a joint configuration (a membership change midway).
        let mut joint_since: Option<std::time::Instant> = None;
        let finishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            tick.tick().await;
            let raft = node.raft();
            let metrics = raft.metrics().borrow_watched().clone();
            let is_leader = metrics.state == ServerState::Leader;
            let joint = metrics
                .membership_config
                .membership()
                .get_joint_config()
                .len()
                > 1;
            if is_leader && joint {
                let since = *joint_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= JOINT_LEFT_BEHIND_AFTER
                    && !finishing.swap(true, Ordering::SeqCst)
                {
                    let (node, finishing) = (node.clone(), finishing.clone());
                    tokio::spawn(async move {
                        if let Err(e) = node.finish_joint_membership().await {
                            tracing::warn!(error = %e, "finishing a joint configuration failed");
                        }
                        finishing.store(false, Ordering::SeqCst);
                    });
                    joint_since = None;
                }
            } else {
                joint_since = None;
            }
            let voters = metrics.membership_config.membership().voter_ids().count();
            let since_ack = if is_leader && voters > 1 {
                metrics.last_quorum_acked.as_ref().map(|t| t.elapsed())
            } else {
                None
            };
            let lease_expired = since_ack.is_some() && timing.ack_lapsed(since_ack);
            // A late quorum ack alone can be a slow machine; quorum is lost when, in addition,
            // a majority of voters has not answered any RPC within the reachability window.
            let majority_unreachable = lease_expired && {
                let (reachable, _, needed) = node.reachability();
                reachable < needed
            };
            let lost = majority_unreachable;
            node.quorum_lost.send_if_modified(|v| {
                if *v != lost {
                    *v = lost;
                    true
                } else {
                    false
                }
            });
            if let Some(d) = since_ack
                && d >= timing.step_down_after
                && majority_unreachable
            {
                let (reachable, voters, needed) = node.reachability();
                tracing::warn!(
                    node = node.id,
                    since_quorum_ack_ms = d.as_millis() as u64,
                    "no quorum: {reachable} of {voters} voters reachable, {needed} needed; stepping down"
                );
                node.counters.step_downs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = node.step_down().await {
                    tracing::error!(error = %e, "step down failed");
                }
            }
        }
    }

    /// Restarts the openraft instance from durable state: the node comes back as a follower.
    pub(super) async fn step_down(&self) -> anyhow::Result<()> {
        let _guard = self.rebuild_lock.lock().await;
        self.stop_core("step-down").await;
        self.start_core().await?;
        tracing::info!(node = self.id, "stepped down: restarted as follower");
        Ok(())
    }
}
