//! The act step: carry out the planner's one action, and keep the cluster's Services and
//! PodDisruptionBudget applied. Every write is server-side apply with one field manager.

use crate::admin::{self, AdminError, MemberAddress};
use crate::crd::RaftCluster;
use crate::manifests::{
    self, GRPC_PORT, allowed_disruptions, client_service, disruption_budget, member_grpc_addr,
    member_http_addr, member_pod, member_volume, peer_service,
};
use crate::member::{self, pod_name, raft_id};
use crate::observed::{Observed, planned_zone};
use crate::plan::Action;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "raft-operator";

/// Why an action could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// An API-server write failed.
    #[error("{verb} {kind} {name} failed: {source}")]
    Kube {
        /// apply, delete...
        verb: &'static str,
        /// Object kind.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A raftd admin call failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The PodDisruptionBudget refused an eviction: nothing was done this round.
    #[error("{0}")]
    EvictionRefused(String),
    /// The action needs a leader or member address that is not known.
    #[error("cannot {action}: {reason}")]
    Precondition {
        /// The action.
        action: &'static str,
        /// What was missing.
        reason: String,
    },
}

impl ActError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ActError::Kube { .. } => "kube",
            ActError::Admin(_) => "admin",
            ActError::EvictionRefused(_) => "eviction_refused",
            ActError::Precondition { .. } => "precondition",
        }
    }
}

async fn apply<K>(api: &Api<K>, kind: &'static str, object: &K) -> Result<(), ActError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| ActError::Kube {
        verb: "apply",
        kind,
        name,
        source,
    })?;
    Ok(())
}

/// Delete, treating NotFound as done.
async fn delete<K>(api: &Api<K>, kind: &'static str, name: &str) -> Result<(), ActError>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ActError::Kube {
            verb: "delete",
            kind,
            name: name.to_string(),
            source,
        }),
    }
}

/// Apply the non-disruptive objects every reconcile: Services and the Raft-driven PDB.
pub async fn apply_cluster_objects(
    client: &Client,
    cluster: &RaftCluster,
    observed: &Observed,
    action: &Action,
) -> Result<(), ActError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    apply(&services, "Service", &peer_service(cluster)).await?;
    apply(&services, "Service", &client_service(cluster)).await?;

    let membership = observed.membership();
    let voters = membership.voters.len() as u32;
    let healthy = membership
        .voters
        .iter()
        .filter_map(|id| member::ordinal_of_raft_id(*id))
        .filter(|ordinal| observed.is_healthy(*ordinal))
        .count() as u32;
    // While the operator changes something, drains wait. The one exception is the operator's
    // own eviction of a healthy member: it goes through this budget like any drain, so the
    // budget must allow it, and the eviction consumes the one disruption.
    let in_flight = match action {
        Action::Wait { reason } => !reason.is_empty(),
        Action::ReplaceMember { ordinal, .. } => observed.is_down(*ordinal),
        _ => true,
    };
    // The budget counts voters, never the pods that happen to exist: while an evicted pod is
    // gone and Raft has not noticed yet, a pod count would shrink minAvailable and let a second
    // eviction through.
    let members = voters.max(u32::try_from(observed.spec.replicas).unwrap_or(0));
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    let allowed = allowed_disruptions(healthy, voters.max(1), in_flight);
    apply(
        &budgets,
        "PodDisruptionBudget",
        &disruption_budget(cluster, members, allowed),
    )
    .await
}

fn address_of(o: &Observed, ordinal: u32) -> MemberAddress {
    MemberAddress {
        id: raft_id(ordinal),
        grpc_addr: member_grpc_addr(&o.name, &o.namespace, ordinal),
        http_addr: member_http_addr(&o.name, &o.namespace, ordinal),
    }
}

/// Where the operator reaches a member's admin API: its pod IP (the operator may run outside
/// the cluster DNS).
fn admin_addr(o: &Observed, ordinal: u32, action: &'static str) -> Result<String, ActError> {
    o.member(ordinal)
        .and_then(|m| m.pod.as_ref())
        .and_then(|p| p.ip.clone())
        .map(|ip| format!("{ip}:{GRPC_PORT}"))
        .ok_or_else(|| ActError::Precondition {
            action,
            reason: format!("{} has no pod IP", pod_name(&o.name, ordinal)),
        })
}

fn leader_addr(o: &Observed, action: &'static str) -> Result<String, ActError> {
    let leader = o.leader().ok_or_else(|| ActError::Precondition {
        action,
        reason: "no leader".to_string(),
    })?;
    admin_addr(o, leader.ordinal, action)
}

/// What carrying out an action returned that the status records.
#[derive(Debug, Default)]
pub struct Acted {
    /// ForceRecover's answer.
    pub recovery: Option<admin::RecoveryResult>,
}

/// Evict a member pod through the Eviction API, so its PodDisruptionBudget is honoured by the
/// operator as by any drain. `client` must not retry 429 answers: a refused eviction ends this
/// round (the next one observes again) instead of blocking the reconcile in retries.
async fn evict(client: &Client, namespace: &str, name: &str) -> Result<(), ActError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.evict(name, &kube::api::EvictParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 429 => {
            Err(ActError::EvictionRefused(format!(
                "the PodDisruptionBudget refused evicting {name} ({}); trying again next round",
                status.message
            )))
        }
        Err(source) => Err(ActError::Kube {
            verb: "evict",
            kind: "Pod",
            name: name.to_string(),
            source,
        }),
    }
}

/// Carry out one planned action. `evict_client` is a client that does not retry 429s.
pub async fn execute(
    client: &Client,
    evict_client: &Client,
    cluster: &RaftCluster,
    o: &Observed,
    action: &Action,
) -> Result<Acted, ActError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let volumes: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let done = Ok(Acted::default());
    match action {
        Action::Wait { .. } | Action::Blocked { .. } => done,
        Action::CreateMembers { ordinals } => {
            for ordinal in ordinals {
                apply(
                    &volumes,
                    "PersistentVolumeClaim",
                    &member_volume(cluster, *ordinal),
                )
                .await?;
                let zone = planned_zone(&o.zones, *ordinal);
                apply(&pods, "Pod", &member_pod(cluster, *ordinal, zone)).await?;
            }
            done
        }
        Action::InitializeCluster { ordinal, voters } => {
            let members: Vec<MemberAddress> = voters.iter().map(|v| address_of(o, *v)).collect();
            let addr = admin_addr(o, *ordinal, "initialize the cluster")?;
            // The other members wait for an explicit Join (join mode explicit): admit them
            // first, so they accept the new leader and nothing else.
            for other in voters.iter().filter(|v| *v != ordinal) {
                let other_addr = admin_addr(o, *other, "admit a member into the new cluster")?;
                admin::join(&other_addr, &o.uid, 1, "").await?;
            }
            let already = admin::initialize(&addr, &o.uid, &members).await?;
            tracing::info!(cluster = %o.name, already, voters = members.len(), "cluster initialized");
            done
        }
        Action::AddLearner { ordinal } => {
            let addr = leader_addr(o, "add a learner")?;
            let member_addr = admin_addr(o, *ordinal, "admit the new member")?;
            admin::join(
                &member_addr,
                &o.uid,
                o.current_epoch(),
                &o.current_recovery_id(),
            )
            .await?;
            admin::add_learner(&addr, &address_of(o, *ordinal)).await?;
            done
        }
        Action::PromoteVoter { ordinal } => {
            let addr = leader_addr(o, "promote a voter")?;
            admin::promote_voter(&addr, raft_id(*ordinal)).await?;
            done
        }
        Action::TransferLeadership { to, .. } => {
            let addr = leader_addr(o, "transfer leadership")?;
            admin::transfer_leader(&addr, raft_id(*to)).await?;
            done
        }
        Action::RemoveMember { ordinal, .. } => {
            let addr = leader_addr(o, "remove a member")?;
            admin::remove_member(&addr, raft_id(*ordinal)).await?;
            done
        }
        Action::DeleteMember {
            ordinal,
            delete_volume,
        } => {
            delete_member(&pods, &volumes, &o.name, *ordinal, *delete_volume).await?;
            done
        }
        // A member that is down already is deleted: nothing is disrupted, and the budget (which
        // counts it as unavailable) would refuse its eviction. Any other member is evicted.
        Action::ReplaceMember { ordinal, .. } if o.is_down(*ordinal) => {
            delete(&pods, "Pod", &pod_name(&o.name, *ordinal)).await?;
            done
        }
        Action::ReplaceMember { ordinal, .. } => {
            evict(evict_client, &namespace, &pod_name(&o.name, *ordinal)).await?;
            done
        }
        Action::ForceRecover {
            ordinal,
            new_epoch,
            plan_id,
        } => {
            let addr = admin_addr(o, *ordinal, "force a recovery")?;
            let result = admin::force_recover(&addr, &o.uid, *new_epoch, plan_id).await?;
            tracing::warn!(
                cluster = %o.name,
                survivor = %pod_name(&o.name, *ordinal),
                previous_last_index = result.previous_last_index,
                previous_last_term = result.previous_last_term,
                epoch = result.epoch,
                already = result.already,
                "forced recovery carried out"
            );
            Ok(Acted {
                recovery: Some(result),
            })
        }
        // The member comes back empty (CreateMembers) and is added learner-first.
        Action::RebuildMember { ordinal, .. } => {
            delete_member(&pods, &volumes, &o.name, *ordinal, true).await?;
            done
        }
    }
}

/// Deletes a member's pod and, when asked, its volume.
async fn delete_member(
    pods: &Api<Pod>,
    volumes: &Api<PersistentVolumeClaim>,
    cluster: &str,
    ordinal: u32,
    delete_volume: bool,
) -> Result<(), ActError> {
    delete(pods, "Pod", &pod_name(cluster, ordinal)).await?;
    if delete_volume {
        delete(
            volumes,
            "PersistentVolumeClaim",
            &member::volume_name(cluster, ordinal),
        )
        .await?;
    }
    Ok(())
}

/// Finalizer cleanup: pods go (their owner reference would take them too); volumes go only
/// when `storage.retention.whenDeleted` is `Delete`.
pub async fn cleanup(client: &Client, cluster: &RaftCluster) -> Result<(), ActError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let selector =
        kube::api::ListParams::default().labels(&format!("{}={name}", manifests::CLUSTER_LABEL));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = pods
        .list(&selector)
        .await
        .map_err(|source| ActError::Kube {
            verb: "list",
            kind: "Pod",
            name: name.clone(),
            source,
        })?;
    for pod in list.items {
        delete(&pods, "Pod", &pod.name_any()).await?;
    }
    if cluster.spec.storage.retention.when_deleted == crate::crd::RetentionPolicy::Delete {
        let volumes: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
        let list = volumes
            .list(&selector)
            .await
            .map_err(|source| ActError::Kube {
                verb: "list",
                kind: "PersistentVolumeClaim",
                name: name.clone(),
                source,
            })?;
        for volume in list.items {
            delete(&volumes, "PersistentVolumeClaim", &volume.name_any()).await?;
        }
    }
    Ok(())
}
