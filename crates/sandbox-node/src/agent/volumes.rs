//! Pod volumes: materialises each volume of a pod as a host directory (emptyDir, configMap,
//! secret, downwardAPI, projected service-account token, hostPath, PVC) and turns a container's
//! volumeMounts into bind mounts for `pod-exec`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::AgentContext;
use crate::podexec::BindMount;

/// Host directories of a pod's volumes, by volume name.
pub type VolumePaths = HashMap<String, PathBuf>;

/// Creates every volume of `pod` under `pod_dir/volumes`, returning where each one lives.
pub async fn prepare(ctx: &AgentContext, pod: &Pod, pod_dir: &Path) -> Result<VolumePaths> {
    let mut out = VolumePaths::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in &volumes {
        let path = prepare_one(ctx, pod, pod_dir, volume)
            .await
            .with_context(|| format!("preparing volume {:?}", volume.name))?;
        out.insert(volume.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(
    ctx: &AgentContext,
    pod: &Pod,
    pod_dir: &Path,
    volume: &Volume,
) -> Result<PathBuf> {
    let namespace = pod.namespace().unwrap_or_default();
    let dir = pod_dir.join("volumes").join(&volume.name);
    if let Some(claim) = &volume.persistent_volume_claim {
        return pvc_path(ctx, &namespace, &claim.claim_name).await;
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if matches!(host.type_.as_deref(), Some("DirectoryOrCreate")) {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating hostPath {}", path.display()))?;
        }
        return Ok(path);
    }
    fresh_dir(&dir)?;
    if volume.empty_dir.is_some() {
        return Ok(dir);
    }
    if let Some(cm) = &volume.config_map {
        let optional = cm.optional.unwrap_or(false);
        let data = config_map_data(ctx, &namespace, &cm.name, optional).await?;
        write_items(&dir, &data, cm.items.as_deref())?;
        return Ok(dir);
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_data(ctx, &namespace, &name, secret.optional.unwrap_or(false)).await?;
        write_items(&dir, &data, secret.items.as_deref())?;
        return Ok(dir);
    }
    if let Some(downward) = &volume.downward_api {
        for item in downward.items.as_deref().unwrap_or_default() {
            let Some(field) = &item.field_ref else {
                bail!(
                    "downwardAPI item {:?}: only fieldRef is supported by the sandbox",
                    item.path
                );
            };
            write_file(
                &dir,
                &item.path,
                field_value(pod, &field.field_path, None)?.as_bytes(),
            )?;
        }
        return Ok(dir);
    }
    if let Some(projected) = &volume.projected {
        for source in projected.sources.as_deref().unwrap_or_default() {
            if let Some(token) = &source.service_account_token {
                let jwt = service_account_token(
                    ctx,
                    pod,
                    token.audience.clone(),
                    token.expiration_seconds,
                )
                .await?;
                write_file(&dir, &token.path, jwt.as_bytes())?;
            }
            if let Some(cm) = &source.config_map {
                let data = config_map_data(ctx, &namespace, &cm.name, cm.optional.unwrap_or(false))
                    .await?;
                write_items(&dir, &data, cm.items.as_deref())?;
            }
            if let Some(secret) = &source.secret {
                let data = secret_data(
                    ctx,
                    &namespace,
                    &secret.name,
                    secret.optional.unwrap_or(false),
                )
                .await?;
                write_items(&dir, &data, secret.items.as_deref())?;
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.as_deref().unwrap_or_default() {
                    if let Some(field) = &item.field_ref {
                        write_file(
                            &dir,
                            &item.path,
                            field_value(pod, &field.field_path, None)?.as_bytes(),
                        )?;
                    }
                }
            }
        }
        return Ok(dir);
    }
    bail!(
        "volume {:?}: this volume type is not supported by the sandbox",
        volume.name
    )
}

/// Turns a container's volumeMounts into bind mounts.
pub fn mounts_for(container: &Container, paths: &VolumePaths) -> Result<Vec<BindMount>> {
    let mut out = Vec::new();
    for m in container.volume_mounts.as_deref().unwrap_or_default() {
        let Some(base) = paths.get(&m.name) else {
            bail!(
                "container {:?}: volumeMount {:?} names no volume of the pod",
                container.name,
                m.name
            );
        };
        let source = match m.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => {
                if sub.split('/').any(|part| part == "..") || sub.starts_with('/') {
                    bail!(
                        "container {:?}: volumeMount {:?} subPath {sub:?} must be relative without `..`",
                        container.name,
                        m.name
                    );
                }
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .with_context(|| format!("creating subPath {}", p.display()))?;
                }
                p
            }
            _ => base.clone(),
        };
        out.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// The value of a downward-API field path (`metadata.name`, `status.podIP`, ...).
pub fn field_value(pod: &Pod, field_path: &str, pod_ip: Option<&str>) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match field_path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.map(str::to_string).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => String::new(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        other => {
            if let Some(key) = other
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = other
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                bail!("downward API fieldPath {other:?} is not supported by the sandbox");
            }
        }
    };
    Ok(value)
}

fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.map(|m| m.iter().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect())
        .unwrap_or_default()
}

async fn pvc_path(ctx: &AgentContext, namespace: &str, claim: &str) -> Result<PathBuf> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let pvc = pvcs
        .get(claim)
        .await
        .with_context(|| format!("reading PVC {namespace}/{claim}"))?;
    let Some(volume_name) = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
    else {
        bail!("PVC {namespace}/{claim} is not bound to a volume yet");
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get(&volume_name)
        .await
        .with_context(|| format!("reading PV {volume_name}"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .local
        .map(|l| l.path)
        .or(spec.host_path.map(|h| h.path))
        .with_context(|| format!("PV {volume_name} is neither a local nor a hostPath volume"))?;
    let path = PathBuf::from(path);
    if !path.is_dir() {
        bail!(
            "PV {volume_name}: directory {} does not exist",
            path.display()
        );
    }
    Ok(path)
}

async fn config_map_data(
    ctx: &AgentContext,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<HashMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cm) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading ConfigMap {ns}/{name}"))?
    else {
        if optional {
            return Ok(HashMap::new());
        }
        bail!("ConfigMap {ns}/{name} not found");
    };
    let mut out: HashMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    out.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    Ok(out)
}

async fn secret_data(
    ctx: &AgentContext,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<HashMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {ns}/{name}"))?
    else {
        if optional {
            return Ok(HashMap::new());
        }
        bail!("Secret {ns}/{name} not found");
    };
    let mut out: HashMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    out.extend(
        secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    Ok(out)
}

/// Config map / secret data as a key -> bytes map (used for env too).
pub async fn config_map_values(
    ctx: &AgentContext,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<HashMap<String, Vec<u8>>> {
    config_map_data(ctx, ns, name, optional).await
}

/// Secret data as a key -> bytes map (used for env too).
pub async fn secret_values(
    ctx: &AgentContext,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<HashMap<String, Vec<u8>>> {
    secret_data(ctx, ns, name, optional).await
}

async fn service_account_token(
    ctx: &AgentContext,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: Option<i64>,
) -> Result<String> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().filter(|a| !a.is_empty()).collect(),
            expiration_seconds: Some(expiration_seconds.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for service account {ns}/{sa}"))?;
    issued
        .status
        .map(|s| s.token)
        .context("token request returned no token")
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_items(
    dir: &Path,
    data: &HashMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<()> {
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(bytes) = data.get(&item.key) else {
                    bail!(
                        "key {:?} listed in items is missing from the source",
                        item.key
                    );
                };
                write_file(dir, &item.path, bytes)?;
            }
        }
        _ => {
            for (key, bytes) in data {
                write_file(dir, key, bytes)?;
            }
        }
    }
    Ok(())
}

fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> Result<()> {
    if relative.starts_with('/') || relative.split('/').any(|p| p == "..") {
        bail!("volume file path {relative:?} must be relative without `..`");
    }
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}
