//! The volume provisioner: a PersistentVolume per claim of the sandbox StorageClass, backed by a
//! per-claim directory that outlives pods. The volume is pinned (PV nodeAffinity) to the zone of
//! the node the claim was first scheduled to, like a zonal disk. When the claim is deleted and the
//! PV is released, the directory and the PV are removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::AgentContext;

const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Reconciles claims and volumes every second until the agent stops.
pub async fn run(ctx: Arc<AgentContext>) -> Result<()> {
    loop {
        if let Err(e) = reconcile(&ctx).await {
            warn!(error = %format!("{e:#}"), "volume provisioner pass failed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn volume_dir(ctx: &AgentContext, pv_name: &str) -> PathBuf {
    ctx.config.data_dir.join("volumes").join(pv_name)
}

async fn reconcile(ctx: &AgentContext) -> Result<()> {
    let claims: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for claim in claims
        .list(&ListParams::default())
        .await
        .context("listing PVCs")?
    {
        if let Err(e) = provision(ctx, &volumes, &claim).await {
            warn!(claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()),
                  error = %format!("{e:#}"), "provisioning failed");
        }
    }
    for pv in volumes
        .list(&ListParams::default())
        .await
        .context("listing PVs")?
    {
        let ours = pv.annotations().get(PROVISIONED_BY) == Some(&ctx.config.provisioner_name);
        let phase = pv
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default();
        let reclaim = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Delete");
        if ours && (phase == "Released" || phase == "Failed") && reclaim == "Delete" {
            let name = pv.name_any();
            let dir = volume_dir(ctx, &name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            match volumes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(pv = %name, "released volume deleted with its directory"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting PV {name}")),
            }
        }
    }
    Ok(())
}

async fn provision(
    ctx: &AgentContext,
    volumes: &Api<PersistentVolume>,
    claim: &PersistentVolumeClaim,
) -> Result<()> {
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || claim.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let annotations = claim.annotations();
    let provisioner = annotations
        .get(STORAGE_PROVISIONER)
        .or(annotations.get(BETA_STORAGE_PROVISIONER));
    if provisioner != Some(&ctx.config.provisioner_name) {
        return Ok(());
    }
    let Some(node) = annotations.get(SELECTED_NODE) else {
        return Ok(()); // WaitForFirstConsumer: the scheduler has not picked a node yet
    };
    let Some(zone) = ctx.config.zone_of(node) else {
        anyhow::bail!("selected node {node:?} is not a sandbox node");
    };
    let uid = claim.uid().context("claim has no uid")?;
    let pv_name = format!("pvc-{uid}");
    let dir = volume_dir(ctx, &pv_name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {PROVISIONED_BY: ctx.config.provisioner_name},
            "labels": {"topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": ctx.config.region},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.storage_class_name,
            "volumeMode": "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.namespace(),
                "name": claim.name_any(),
                "uid": uid,
            },
            "local": {"path": dir.to_string_lossy()},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}
            ]}]}},
        },
    }))
    .context("building PV")?;
    match volumes.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            info!(pv = %pv_name, claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()),
                  zone, "provisioned zonal volume");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("creating PV"),
    }
}
