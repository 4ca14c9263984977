//! The node agent: registers the sandbox's nodes, runs the pods bound to them as local processes,
//! provisions per-claim volumes, and follows zone-down markers written by the fault injector.

pub mod network;
pub mod nodes;
pub mod probes;
pub mod provisioner;
pub mod runtime;
pub mod status;
pub mod volumes;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::SandboxConfig;
use crate::state;

/// What every part of the agent shares.
pub struct AgentContext {
    /// API client (the agent uses the sandbox admin kubeconfig).
    pub client: Client,
    /// Sandbox configuration.
    pub config: SandboxConfig,
    /// This executable, re-run as `pod-exec` to enter pod namespaces.
    pub self_exe: PathBuf,
    /// Pod IP allocator.
    pub ips: Mutex<network::IpAllocator>,
    /// Zones currently down (from the marker files).
    zones_down: RwLock<BTreeSet<String>>,
}

impl AgentContext {
    /// True while the node's zone is down: its "kubelet" must act dead.
    pub fn node_down(&self, node: &str) -> bool {
        let Some(zone) = self.config.zone_of(node) else {
            return false;
        };
        self.zones_down
            .read()
            .map(|z| z.contains(zone))
            .unwrap_or(false)
    }

    /// Whether a zone is down.
    pub fn zone_down(&self, zone: &str) -> bool {
        self.zones_down
            .read()
            .map(|z| z.contains(zone))
            .unwrap_or(false)
    }
}

/// Messages from the pod watch to a pod's worker.
#[derive(Debug)]
pub enum PodEvent {
    /// The pod object changed.
    Updated(Box<Pod>),
    /// The pod object is gone from the API.
    Gone,
}

/// Runs the agent until a fatal error.
pub async fn run(config: SandboxConfig) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("building Kubernetes client (set KUBECONFIG)")?;
    let self_exe = std::env::current_exe().context("locating the agent executable")?;
    std::fs::create_dir_all(config.state_dir.join("pods")).context("creating state directory")?;
    runtime::cleanup_stale(&config)?;
    let ips = network::IpAllocator::new(&config)?;
    let ctx = Arc::new(AgentContext {
        client,
        config,
        self_exe,
        ips: Mutex::new(ips),
        zones_down: RwLock::new(BTreeSet::new()),
    });
    refresh_zones(&ctx);
    nodes::register(&ctx).await?;
    info!(nodes = ctx.config.nodes.len(), "nodes registered");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(nodes::heartbeat_loop(ctx.clone()));
    tasks.spawn(provisioner::run(ctx.clone()));
    tasks.spawn(zone_marker_loop(ctx.clone()));
    tasks.spawn(pod_loop(ctx.clone()));
    match tasks.join_next().await {
        Some(Ok(Ok(()))) => anyhow::bail!("an agent loop ended unexpectedly"),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(e).context("agent task panicked"),
        None => Ok(()),
    }
}

fn refresh_zones(ctx: &AgentContext) {
    match state::zones_down(&ctx.config.state_dir) {
        Ok(zones) => {
            let zones: BTreeSet<String> = zones.into_iter().collect();
            if let Ok(mut current) = ctx.zones_down.write()
                && *current != zones
            {
                info!(?zones, "zones down changed");
                *current = zones;
            }
        }
        Err(e) => warn!(error = %format!("{e:#}"), "reading zone-down markers"),
    }
}

async fn zone_marker_loop(ctx: Arc<AgentContext>) -> Result<()> {
    loop {
        refresh_zones(&ctx);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pod_loop(ctx: Arc<AgentContext>) -> Result<()> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, mpsc::UnboundedSender<PodEvent>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            event = stream.try_next() => {
                let event = match event {
                    Ok(Some(event)) => event,
                    Ok(None) => anyhow::bail!("pod watch ended"),
                    Err(e) => {
                        error!(error = %e, "pod watch error");
                        continue;
                    }
                };
                let (pod, gone) = match event {
                    Event::Apply(pod) | Event::InitApply(pod) => (pod, false),
                    Event::Delete(pod) => (pod, true),
                    Event::Init | Event::InitDone => continue,
                };
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
                if ctx.config.zone_of(&node).is_none() {
                    continue;
                }
                let Some(uid) = pod.uid() else { continue };
                let message = if gone { PodEvent::Gone } else { PodEvent::Updated(Box::new(pod.clone())) };
                if let Some(tx) = workers.get(&uid) {
                    if tx.send(message).is_ok() {
                        continue;
                    }
                    workers.remove(&uid);
                    continue;
                }
                if gone || runtime::is_finished(&pod) {
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                workers.insert(uid.clone(), tx);
                let ctx = ctx.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    runtime::run_pod(ctx, pod, rx).await;
                    let _ = done.send(uid);
                });
            }
        }
    }
}
