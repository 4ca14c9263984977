//! The reconcile loop: observe -> plan -> act -> status for each RaftCluster, with a finalizer,
//! Events for every condition transition and action, and an error policy that tells an invalid
//! spec from a passing failure.

use crate::act::{self, ActError, Acted, FIELD_MANAGER};
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::manifests::CLUSTER_LABEL;
use crate::metrics::Metrics;
use crate::observe::{self, ObserveError};
use crate::plan::{Action, plan_next_action};
use crate::status::{self, compute_status, condition_transitions};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Finalizer name, qualified by the API group.
pub const FINALIZER: &str = "raft-operator.dev/cleanup";

/// How often a settled cluster is observed again: Raft state changes (a lost leader, a follower
/// cut off from the leader) do not always touch a Kubernetes object, so status is refreshed on
/// a short timer too. "A follower cut off shows as unhealthy within 3 s" needs this timer, an
/// observation (over 1 s on this loaded 2-core machine) and the second look at a silent member
/// (200 ms) to fit in 3 s: with 1.5 s it took 3.04 s once, so a settled cluster is observed as
/// often as a busy one.
pub const SETTLED_REQUEUE: Duration = Duration::from_secs(1);
/// Requeue while something is in progress, or while a member is down.
pub const BUSY_REQUEUE: Duration = Duration::from_secs(1);

/// First delay after a failed reconcile; it doubles with each failure in a row.
pub const ERROR_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between retries of a failing cluster.
pub const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Delay before retrying a cluster after `failures` failed reconciles in a row (1 or more):
/// 1 s, 2 s, 4 s ... up to 5 minutes.
pub fn error_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    ERROR_BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(ERROR_BACKOFF_MAX)
}

/// Shared by every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// A client that does not retry 429 answers, for evictions: a refusal by a
    /// PodDisruptionBudget must end the round, not hold it in retries.
    pub evict_client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Failed reconciles in a row, per `namespace/name`, for the per-object backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context with an event recorder named after the operator.
    pub fn new(
        client: Client,
        evict_client: Client,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "raft-operator".to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            evict_client,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn record_success(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn key_of(cluster: &RaftCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// Whether an API error means the object (or its namespace) is gone.
fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Observation failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The action failed.
    #[error(transparent)]
    Act(#[from] ActError),
    /// Writing status failed.
    #[error("writing status of {name} failed: {source}")]
    Status {
        /// Cluster.
        name: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The spec cannot be acted on; reported as a condition, retried only when it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
}

impl ReconcileError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Observe(_) => "observe",
            ReconcileError::Act(e) => e.metric_label(),
            ReconcileError::Status { .. } => "status",
            ReconcileError::Finalizer(_) => "finalizer",
            ReconcileError::InvalidSpec(_) => "invalid_spec",
        }
    }

    /// The object this reconcile works on was deleted meanwhile: nothing is left to do.
    fn is_not_found(&self) -> bool {
        match self {
            ReconcileError::Status { source, .. } => is_not_found(source),
            ReconcileError::Act(ActError::Kube { source, .. }) => {
                // Only a missing RaftCluster ends the reconcile; a missing pod is handled by
                // the act step itself (delete treats NotFound as done).
                is_not_found(source)
            }
            _ => false,
        }
    }
}

/// Checks the API server cannot make (a CRD installed from an older version may lack rules).
/// Pure.
pub fn validate_spec(spec: &crate::crd::RaftClusterSpec) -> Result<(), String> {
    if !(1..=9).contains(&spec.replicas) || spec.replicas % 2 == 0 {
        return Err(format!(
            "replicas is {}: it must be 1, 3, 5, 7 or 9 voters",
            spec.replicas
        ));
    }
    let raft = &spec.raft;
    if raft.election_timeout_min_ms >= raft.election_timeout_max_ms {
        return Err(format!(
            "raft.electionTimeoutMinMs ({}) must be below raft.electionTimeoutMaxMs ({})",
            raft.election_timeout_min_ms, raft.election_timeout_max_ms
        ));
    }
    if raft.heartbeat_interval_ms.saturating_mul(2) > raft.election_timeout_min_ms {
        return Err(format!(
            "raft.heartbeatIntervalMs ({}) must be at most half of raft.electionTimeoutMinMs ({})",
            raft.heartbeat_interval_ms, raft.election_timeout_min_ms
        ));
    }
    if spec.max_clock_drift_ms >= raft.election_timeout_min_ms {
        return Err(format!(
            "maxClockDriftMs ({}) must be below raft.electionTimeoutMinMs ({})",
            spec.max_clock_drift_ms, raft.election_timeout_min_ms
        ));
    }
    Ok(())
}

/// Reconcile one RaftCluster.
pub async fn reconcile(
    cluster: Arc<RaftCluster>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let started = Instant::now();
    let key = key_of(&cluster);
    let result = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            FinalizerEvent::Apply(cluster) => apply(&cluster, &ctx).await,
            FinalizerEvent::Cleanup(cluster) => {
                act::cleanup(&ctx.client, &cluster).await?;
                ctx.metrics
                    .forget(&format!("{}/{}", namespace, cluster.name_any()));
                Ok(Requeue::await_change())
            }
        }
    })
    .await;
    let result = match result {
        Ok(requeue) => Ok(requeue),
        // The RaftCluster was deleted while this reconcile ran: it ends quietly, and the next
        // watch event (if any) says what is left.
        Err(kube::runtime::finalizer::Error::ApplyFailed(err))
        | Err(kube::runtime::finalizer::Error::CleanupFailed(err))
            if err.is_not_found() =>
        {
            tracing::debug!(cluster = %key, error = %err, "cluster gone during reconcile");
            Ok(Requeue::await_change())
        }
        Err(kube::runtime::finalizer::Error::ApplyFailed(err))
        | Err(kube::runtime::finalizer::Error::CleanupFailed(err)) => {
            ctx.metrics.failed(err.metric_label());
            Err(err)
        }
        // The object is already gone (our own finalizer removal raced a second reconcile, or it
        // was deleted before the finalizer was added): NotFound is success.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(err))
        | Err(kube::runtime::finalizer::Error::AddFinalizer(err))
            if is_not_found(&err) =>
        {
            Ok(Requeue::await_change())
        }
        Err(other) => {
            ctx.metrics.failed("finalizer");
            tracing::warn!(elapsed_ms = started.elapsed().as_millis() as u64, error = %other, "finalizer step failed");
            Err(ReconcileError::Finalizer(other.to_string()))
        }
    };
    if result.is_ok() {
        ctx.record_success(&key);
    }
    result
}

async fn apply(cluster: &RaftCluster, ctx: &Context) -> Result<Requeue, ReconcileError> {
    let started = Instant::now();
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();

    // validate: a spec the operator cannot act on is reported and waits for a change
    if let Err(reason) = validate_spec(&cluster.spec) {
        let mut invalid = cluster.status.clone().unwrap_or_default();
        status::set_invalid_spec(&mut invalid, cluster.metadata.generation, &reason);
        write_status(ctx, cluster, &invalid).await?;
        return Err(ReconcileError::InvalidSpec(reason));
    }
    // observe
    let observed = observe::observe(&ctx.client, cluster).await?;
    // plan
    let planned = plan_next_action(&observed);
    // re-check: a disruptive step is made only if a fresh observation, taken just now, plans
    // the very same step; the first observation may be a second old, and a member may have
    // been cut off from the leader since.
    let (observed, action) = if planned.is_disruptive() {
        let fresh = observe::observe(&ctx.client, cluster).await?;
        let again = plan_next_action(&fresh);
        if planned.same_step(&again)
            || matches!(again, Action::Wait { .. } | Action::Blocked { .. })
        {
            (fresh, again)
        } else {
            let reason = format!(
                "re-check before {} found the cluster changed (now: {}); nothing is done this round",
                status::describe(&observed, &planned),
                status::describe(&fresh, &again)
            );
            (fresh, Action::Wait { reason })
        }
    } else {
        (observed, planned)
    };
    // act
    act::apply_cluster_objects(&ctx.client, cluster, &observed, &action).await?;
    let mut new_status = compute_status(&observed, &action);
    if matches!(action, Action::ForceRecover { .. }) {
        // The recovery is recorded as in flight before raftd is asked: if the call succeeds
        // but its answer is lost, the next reconcile finishes this recovery, never another.
        write_status(ctx, cluster, &new_status).await?;
    }
    let acted = act::execute(&ctx.client, &ctx.evict_client, cluster, &observed, &action).await;
    // A refused eviction is the gate of the PodDisruptionBudget closing: nothing was done, the
    // status says why, and the next round tries again.
    let (action, acted) = match acted {
        Err(ActError::EvictionRefused(reason)) => {
            let blocked = Action::Blocked { reason };
            new_status = compute_status(&observed, &blocked);
            (blocked, Ok(Acted::default()))
        }
        other => (action, other),
    };
    // status (written even when the action failed, so the status says what was seen)
    if let (
        Ok(Acted {
            recovery: Some(result),
        }),
        Action::ForceRecover { plan_id, .. },
    ) = (&acted, &action)
    {
        status::record_recovery(&mut new_status, &observed, result, plan_id);
    }
    write_status(ctx, cluster, &new_status).await?;
    publish_events(
        ctx,
        cluster,
        &observed.previous_status,
        &new_status,
        &observed,
        &action,
    )
    .await;
    acted?;

    let key = format!("{namespace}/{name}");
    let quorum_lost = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == status::condition::QUORUM_LOST && c.status == status::condition::TRUE);
    ctx.metrics.cluster(
        &key,
        new_status.node_fault_tolerance,
        new_status.zone_fault_tolerance,
        quorum_lost,
    );
    ctx.metrics.reconciled(action.label(), started.elapsed());
    tracing::info!(
        cluster = %key,
        action = action.label(),
        detail = %status::describe(&observed, &action),
        leader = new_status.leader.as_deref().unwrap_or("-"),
        healthy_voters = new_status.healthy_voters,
        took_ms = started.elapsed().as_millis() as u64,
        "reconciled"
    );
    // A cluster with a member down is watched as closely as a busy one: a second failure
    // (say, another zone) must show up as QuorumLost within seconds.
    let all_healthy = new_status.members.iter().all(|m| m.healthy);
    Ok(match action {
        Action::Wait { reason } if reason.is_empty() && all_healthy => {
            Requeue::requeue(SETTLED_REQUEUE)
        }
        _ => Requeue::requeue(BUSY_REQUEUE),
    })
}

async fn write_status(
    ctx: &Context,
    cluster: &RaftCluster,
    status: &RaftClusterStatus,
) -> Result<(), ReconcileError> {
    if cluster.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<RaftCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "raft-operator.dev/v1alpha1",
        "kind": "RaftCluster",
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| ReconcileError::Status {
        name: cluster.name_any(),
        source,
    })?;
    Ok(())
}

async fn publish_events(
    ctx: &Context,
    cluster: &RaftCluster,
    before: &RaftClusterStatus,
    after: &RaftClusterStatus,
    observed: &crate::observed::Observed,
    action: &Action,
) {
    let reference = cluster.object_ref(&());
    let mut events: Vec<Event> = condition_transitions(before, after)
        .into_iter()
        .filter(|c| {
            // A fresh cluster has no previous conditions; report only the ones that are news.
            !before.conditions.is_empty() || c.status == status::condition::TRUE
        })
        .map(|c| {
            let bad = status::condition::is_warning(&c.type_, &c.status);
            Event {
                type_: if bad {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: format!("{}{}", c.type_, c.status),
                note: Some(truncate(&c.message, 1000)),
                action: "Observe".to_string(),
                secondary: None,
            }
        })
        .collect();
    if !matches!(action, Action::Wait { .. } | Action::Blocked { .. }) {
        events.push(Event {
            type_: EventType::Normal,
            reason: action.reason().to_string(),
            note: Some(truncate(&status::describe(observed, action), 1000)),
            action: action.reason().to_string(),
            secondary: None,
        });
    }
    for event in events {
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, reason = %event.reason, "could not publish event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// An invalid spec waits for a change (its condition says why); any other failure is retried
/// with a per-cluster exponential backoff (1 s doubling to 5 min, reset by a success), so one
/// failing cluster neither spins nor floods the log.
pub fn error_policy(
    cluster: Arc<RaftCluster>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Requeue {
    let key = key_of(&cluster);
    if let ReconcileError::InvalidSpec(reason) = error {
        tracing::warn!(cluster = %key, %reason, "invalid spec; waiting for it to change");
        ctx.record_success(&key);
        return Requeue::await_change();
    }
    let failures = ctx.record_failure(&key);
    let delay = error_backoff(failures);
    tracing::warn!(cluster = %key, error = %error, label = error.metric_label(), failures, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Requeue::requeue(delay)
}

/// Label selector of the objects a cluster owns.
pub fn owned_selector(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn failures_back_off_exponentially_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=11).map(|n| error_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(error_backoff(u32::MAX), ERROR_BACKOFF_MAX);
    }

    #[test]
    fn invalid_specs_are_told_apart_with_the_reason() {
        let spec = |v: serde_json::Value| -> crate::crd::RaftClusterSpec {
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            validate_spec(&spec(serde_json::json!({"replicas": 5}))),
            Ok(())
        );
        let even = validate_spec(&spec(serde_json::json!({"replicas": 4}))).unwrap_err();
        assert!(even.contains("replicas is 4"), "{even}");
        let timings = validate_spec(&spec(serde_json::json!({
            "replicas": 3,
            "raft": {"electionTimeoutMinMs": 300, "electionTimeoutMaxMs": 200}
        })))
        .unwrap_err();
        assert!(timings.contains("electionTimeoutMinMs (300)"), "{timings}");
        let mut status = RaftClusterStatus::default();
        status::set_invalid_spec(&mut status, Some(3), &even);
        let c = &status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Progressing", "False", "InvalidSpec")
        );
    }
}
