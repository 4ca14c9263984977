//! The reconcile loop: observe -> plan -> act -> status for each RaftCluster, with a finalizer,
//! Events for every condition transition and action, and an error policy that tells an invalid
//! spec from a passing failure.

use crate::act::{self, ActError, FIELD_MANAGER};
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
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Finalizer name, qualified by the API group.
pub const FINALIZER: &str = "raft-operator.dev/cleanup";

/// How often a settled cluster is observed again: Raft state changes (a lost leader) do not
/// always touch a Kubernetes object, so status is refreshed on a short timer too.
pub const SETTLED_REQUEUE: Duration = Duration::from_secs(3);
/// Requeue while something is in progress, or while a member is down.
pub const BUSY_REQUEUE: Duration = Duration::from_secs(1);

/// Shared by every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// A context with an event recorder named after the operator.
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "raft-operator".to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
        }
    }
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
}

impl ReconcileError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Observe(_) => "observe",
            ReconcileError::Act(e) => e.metric_label(),
            ReconcileError::Status { .. } => "status",
            ReconcileError::Finalizer(_) => "finalizer",
        }
    }
}

/// Reconcile one RaftCluster.
pub async fn reconcile(
    cluster: Arc<RaftCluster>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let started = Instant::now();
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
    match result {
        Ok(requeue) => Ok(requeue),
        Err(kube::runtime::finalizer::Error::ApplyFailed(err))
        | Err(kube::runtime::finalizer::Error::CleanupFailed(err)) => {
            ctx.metrics.failed(err.metric_label());
            Err(err)
        }
        // The object is already gone (our own finalizer removal raced a second reconcile):
        // cleanup is done, NotFound is success.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(status)))
            if status.code == 404 =>
        {
            Ok(Requeue::await_change())
        }
        Err(other) => {
            ctx.metrics.failed("finalizer");
            tracing::warn!(elapsed_ms = started.elapsed().as_millis() as u64, error = %other, "finalizer step failed");
            Err(ReconcileError::Finalizer(other.to_string()))
        }
    }
}

async fn apply(cluster: &RaftCluster, ctx: &Context) -> Result<Requeue, ReconcileError> {
    let started = Instant::now();
    let name = cluster.name_any();
    let namespace = cluster.namespace().unwrap_or_default();

    // observe
    let observed = observe::observe(&ctx.client, cluster).await?;
    // plan
    let action = plan_next_action(&observed);
    // act
    act::apply_cluster_objects(&ctx.client, cluster, &observed, &action).await?;
    let acted = act::execute(&ctx.client, cluster, &observed, &action).await;
    // status (written even when the action failed, so the status says what was seen)
    let mut new_status = compute_status(&observed, &action);
    if acted.is_ok() {
        status::record_recovery(
            &mut new_status,
            &observed,
            &action,
            k8s_openapi::jiff::Timestamp::now().to_string(),
        );
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
        .any(|c| c.type_ == status::condition::QUORUM_LOST && c.status == "True");
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
            !before.conditions.is_empty() || c.status == "True"
        })
        .map(|c| {
            let bad = matches!(
                (c.type_.as_str(), c.status.as_str()),
                ("QuorumLost", "True")
                    | ("Degraded", "True")
                    | ("RolloutBlocked", "True")
                    | ("Available", "False")
                    | ("ZoneFaultTolerant", "False")
            );
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

/// Transient failures requeue with a short backoff; the status already says what was seen.
pub fn error_policy(
    cluster: Arc<RaftCluster>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Requeue {
    tracing::warn!(cluster = %cluster.name_any(), error = %error, label = error.metric_label(), "reconcile failed");
    Requeue::requeue(Duration::from_secs(2))
}

/// Label selector of the objects a cluster owns.
pub fn owned_selector(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster}")
}
