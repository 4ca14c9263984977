//! The sandbox configuration file: nodes and zones, address ranges, and the image-to-executable map.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Default location of the runtime state (pod records, control files) shared by agent and CLI.
pub const DEFAULT_STATE_DIR: &str = "/run/raft-sandbox";

/// One simulated node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name as registered with the API server.
    pub name: String,
    /// Value of `topology.kubernetes.io/zone`.
    pub zone: String,
}

/// How an image repository maps to a local executable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// Absolute path of the executable. `{tag}` is replaced by the image tag.
    pub executable: String,
    /// Arguments the image runs with when the container gives no `command` (like an entrypoint).
    #[serde(default)]
    pub default_args: Vec<String>,
}

/// The whole sandbox configuration (`sandbox/sandbox.yaml`, rendered by `sandbox/up.sh`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxConfig {
    /// Runtime state directory (pod records, control files, logs).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Persistent data directory (per-claim volume directories live under `volumes/`).
    pub data_dir: PathBuf,
    /// Name of the host bridge pods attach to.
    pub bridge: String,
    /// The host's address on the bridge; pods' gateway, DNS server and node InternalIP.
    pub gateway: String,
    /// The pod network (the bridge's subnet), e.g. `10.88.0.0/16`.
    pub pod_cidr: String,
    /// First three octets range start: pods get addresses from `<first_pod_ip>` upwards.
    pub first_pod_ip: String,
    /// Service ClusterIP range, routed via the gateway inside pods (e.g. `10.96.0.0/16`).
    pub service_cidr: String,
    /// `KUBERNETES_SERVICE_HOST` handed to pods.
    pub kubernetes_service_host: String,
    /// `KUBERNETES_SERVICE_PORT` handed to pods.
    pub kubernetes_service_port: u16,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Value of `topology.kubernetes.io/region` on every node.
    pub region: String,
    /// Kubernetes version the nodes report.
    pub kubelet_version: String,
    /// StorageClass provisioner name the volume provisioner serves.
    pub provisioner_name: String,
    /// Simulated nodes.
    pub nodes: Vec<NodeConfig>,
    /// Image repository (the part before `:`) to executable.
    pub images: BTreeMap<String, ImageConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

impl SandboxConfig {
    /// Reads and validates the configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sandbox config {}", path.display()))?;
        let config: SandboxConfig = serde_saphyr::from_str(&text)
            .with_context(|| format!("parsing sandbox config {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects configurations the agent cannot run with, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            bail!("sandbox config: `nodes` must list at least one node");
        }
        for node in &self.nodes {
            if node.name.is_empty() || node.zone.is_empty() {
                bail!("sandbox config: every entry of `nodes` needs a non-empty `name` and `zone`");
            }
        }
        if self.bridge.len() > 15 {
            bail!(
                "sandbox config: `bridge` must be at most 15 characters (a Linux interface name)"
            );
        }
        self.gateway
            .parse::<std::net::Ipv4Addr>()
            .with_context(|| {
                format!(
                    "sandbox config: `gateway` {:?} is not an IPv4 address",
                    self.gateway
                )
            })?;
        self.first_pod_ip
            .parse::<std::net::Ipv4Addr>()
            .with_context(|| {
                format!(
                    "sandbox config: `firstPodIp` {:?} is not an IPv4 address",
                    self.first_pod_ip
                )
            })?;
        self.pod_prefix_len()?;
        Ok(())
    }

    /// Prefix length of `podCidr`.
    pub fn pod_prefix_len(&self) -> Result<u8> {
        let prefix = self
            .pod_cidr
            .split_once('/')
            .and_then(|(_, p)| p.parse::<u8>().ok());
        match prefix {
            Some(p) if (8..=30).contains(&p) => Ok(p),
            _ => bail!(
                "sandbox config: `podCidr` {:?} must look like 10.88.0.0/16 (prefix 8..30)",
                self.pod_cidr
            ),
        }
    }

    /// Loads the config the running sandbox uses: `$RAFT_SANDBOX_CONFIG`, else `<state>/sandbox.yaml`.
    pub fn load_running() -> Result<Self> {
        let path = std::env::var_os("RAFT_SANDBOX_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR).join("sandbox.yaml"));
        Self::load(&path).context("is the sandbox up? (`make sandbox-up`)")
    }

    /// The zone of a node this agent owns, if it owns it.
    pub fn zone_of(&self, node: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.zone.as_str())
    }

    /// Resolves an image reference to (executable, default args).
    pub fn resolve_image(&self, image: &str) -> Result<(String, Vec<String>)> {
        let (repo, tag) = split_image(image);
        let Some(entry) = self.images.get(repo) else {
            let known: Vec<&String> = self.images.keys().collect();
            bail!(
                "image {image:?}: repository {repo:?} is not in the sandbox image map (known: {known:?})"
            );
        };
        Ok((
            entry.executable.replace("{tag}", tag),
            entry.default_args.clone(),
        ))
    }
}

/// Splits `registry/repo:tag@digest` into (last path segment of the repo, tag or `latest`).
pub fn split_image(image: &str) -> (&str, &str) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((repo, tag)) => (repo, tag),
        None => (last, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_image_references() {
        assert_eq!(split_image("raftd:v2"), ("raftd", "v2"));
        assert_eq!(split_image("example.org/x/raftd:v2"), ("raftd", "v2"));
        assert_eq!(split_image("echo-server"), ("echo-server", "latest"));
        assert_eq!(split_image("raftd:v1@sha256:abc"), ("raftd", "v1"));
    }
}
