//! Pod lifecycle: one worker per pod bound to a sandbox node. It sets up the pod's network
//! namespace, DNS files and volumes, supervises each container as a local process (restart policy
//! with exponential backoff, readiness/liveness/startup probes), reports status, and on deletion
//! terminates gracefully (SIGTERM, SIGKILL after the grace period) and removes the pod.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use super::status::{self, ContainerView, State, Terminated, Transitions};
use super::{AgentContext, PodEvent, network, probes, volumes};
use crate::config::SandboxConfig;
use crate::podexec::BindMount;
use crate::state::{self, PodRecord};

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether a pod has reached a terminal phase.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Kills processes and removes namespaces left by a previous agent run.
pub fn cleanup_stale(config: &SandboxConfig) -> Result<()> {
    for record in state::list_records(&config.state_dir)? {
        for pid in record.containers.values() {
            let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        network::teardown(&record.netns, &record.host_veth);
        info!(pod = %format!("{}/{}", record.namespace, record.name), "removed stale pod from a previous run");
    }
    let pods = config.state_dir.join("pods");
    if pods.exists() {
        std::fs::remove_dir_all(&pods).with_context(|| format!("clearing {}", pods.display()))?;
    }
    std::fs::create_dir_all(&pods).with_context(|| format!("creating {}", pods.display()))?;
    Ok(())
}

/// How to start a process inside a pod (`pod-exec` arguments and environment).
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The agent executable.
    pub self_exe: PathBuf,
    /// `/var/run/netns/<name>`.
    pub netns_path: PathBuf,
    /// Pod hostname.
    pub hostname: String,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub workdir: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
}

impl LaunchSpec {
    /// A command that runs `argv` inside the pod.
    pub fn command(&self, argv: &[String]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.self_exe);
        c.arg("pod-exec")
            .arg("--netns")
            .arg(&self.netns_path)
            .arg("--hostname")
            .arg(&self.hostname);
        c.arg("--state-dir").arg(&self.state_dir);
        for m in &self.mounts {
            c.arg("--mount").arg(m.to_arg());
        }
        if let Some(dir) = &self.workdir {
            c.arg("--workdir").arg(dir);
        }
        c.arg("--").args(argv);
        c.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        c
    }
}

/// State shared between a pod worker and its container supervisors.
struct PodShared {
    views: Mutex<Vec<ContainerView>>,
    record: Mutex<PodRecord>,
    changed: Notify,
    state_dir: PathBuf,
}

impl PodShared {
    fn update(&self, index: usize, f: impl FnOnce(&mut ContainerView)) {
        if let Ok(mut views) = self.views.lock()
            && let Some(v) = views.get_mut(index)
        {
            f(v);
        }
        self.changed.notify_one();
    }

    fn set_pid(&self, container: &str, pid: Option<i32>) {
        let Ok(mut record) = self.record.lock() else {
            return;
        };
        match pid {
            Some(pid) => record.containers.insert(container.to_string(), pid),
            None => record.containers.remove(container),
        };
        if let Err(e) = state::write_record(&self.state_dir, &record) {
            warn!(error = %format!("{e:#}"), "writing pod record");
        }
    }
}

/// Everything a container supervisor needs.
struct Supervised {
    ctx: Arc<AgentContext>,
    shared: Arc<PodShared>,
    index: usize,
    container: Container,
    pod: Pod,
    pod_ip: String,
    node: String,
    pod_dir: PathBuf,
    base: LaunchSpec,
    volume_paths: volumes::VolumePaths,
    restart_policy: String,
}

/// Runs one pod until it is deleted.
pub async fn run_pod(ctx: Arc<AgentContext>, pod: Pod, rx: mpsc::UnboundedReceiver<PodEvent>) {
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    info!(pod = %name, node = ?pod.spec.as_ref().and_then(|s| s.node_name.clone()), "pod accepted");
    let mut worker = PodWorker::new(ctx, pod, rx);
    if let Err(e) = worker.run().await {
        warn!(pod = %name, error = %format!("{e:#}"), "pod worker failed");
    }
    worker.cleanup();
    info!(pod = %name, "pod finished on this node");
}

struct PodWorker {
    ctx: Arc<AgentContext>,
    pod: Pod,
    rx: mpsc::UnboundedReceiver<PodEvent>,
    uid: String,
    namespace: String,
    name: String,
    node: String,
    dir: PathBuf,
    netns: String,
    host_veth: String,
    ip: Option<Ipv4Addr>,
    start_time: Timestamp,
    transitions: Transitions,
    shared: Arc<PodShared>,
    stop: watch::Sender<Option<i64>>,
    supervisors: tokio::task::JoinSet<()>,
    sandbox_ready: bool,
    last_patch: Option<serde_json::Value>,
}

enum Outcome {
    /// The pod is being deleted with this grace period.
    Delete(i64),
    /// The pod object is gone: stop at once.
    Gone,
}

impl PodWorker {
    fn new(ctx: Arc<AgentContext>, pod: Pod, rx: mpsc::UnboundedReceiver<PodEvent>) -> Self {
        let uid = pod.uid().unwrap_or_default();
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let zone = ctx.config.zone_of(&node).unwrap_or_default().to_string();
        let (netns, host_veth) = network::names_for(&uid);
        let dir = state::pod_dir(&ctx.config.state_dir, &uid);
        let views = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| ContainerView::new(&c.name, c.image.as_deref().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        let record = PodRecord {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            node: node.clone(),
            zone,
            netns: netns.clone(),
            ip: String::new(),
            host_veth: host_veth.clone(),
            containers: BTreeMap::new(),
        };
        let shared = Arc::new(PodShared {
            views: Mutex::new(views),
            record: Mutex::new(record),
            changed: Notify::new(),
            state_dir: ctx.config.state_dir.clone(),
        });
        let (stop, _) = watch::channel(None);
        Self {
            ctx,
            pod,
            rx,
            uid,
            namespace,
            name,
            node,
            dir,
            netns,
            host_veth,
            ip: None,
            start_time: Timestamp::now(),
            transitions: Transitions::new(),
            shared,
            stop,
            supervisors: tokio::task::JoinSet::new(),
            sandbox_ready: false,
            last_patch: None,
        }
    }

    fn deletion_grace(&self) -> Option<i64> {
        self.pod.metadata.deletion_timestamp.as_ref()?;
        Some(
            self.pod
                .metadata
                .deletion_grace_period_seconds
                .or(self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30),
        )
    }

    /// Applies one watch event; returns an outcome when the pod must stop.
    fn on_event(&mut self, event: Option<PodEvent>) -> Option<Outcome> {
        match event {
            Some(PodEvent::Updated(pod)) => {
                self.pod = *pod;
                self.deletion_grace().map(Outcome::Delete)
            }
            Some(PodEvent::Gone) | None => Some(Outcome::Gone),
        }
    }

    async fn run(&mut self) -> Result<()> {
        if let Some(grace) = self.deletion_grace() {
            return self.finish(Outcome::Delete(grace)).await;
        }
        // Set up the sandbox, retrying while the pod exists (e.g. a ConfigMap not created yet).
        let mut backoff = MIN_BACKOFF;
        let volume_paths = loop {
            if self.ctx.node_down(&self.node) {
                // A dead node does nothing; wait for events or the zone to return.
                tokio::select! {
                    event = self.rx.recv() => if let Some(o) = self.on_event(event) { return self.finish(o).await },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            match self.setup().await {
                Ok(paths) => break paths,
                Err(e) => {
                    let message = format!("{e:#}");
                    warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %message, "pod setup failed; retrying");
                    for i in 0..self
                        .pod
                        .spec
                        .as_ref()
                        .map(|s| s.containers.len())
                        .unwrap_or(0)
                    {
                        let message = message.clone();
                        self.shared.update(i, |v| {
                            v.state = State::Waiting {
                                reason: "ContainerCreating".into(),
                                message,
                            }
                        });
                    }
                    self.publish().await;
                    tokio::select! {
                        event = self.rx.recv() => if let Some(o) = self.on_event(event) { return self.finish(o).await },
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        self.sandbox_ready = true;
        self.start_containers(volume_paths);
        let mut resync = tokio::time::interval(Duration::from_secs(5));
        let mut pending: Option<Outcome> = None;
        loop {
            if let Some(outcome) = pending.take() {
                if matches!(outcome, Outcome::Gone) || !self.ctx.node_down(&self.node) {
                    return self.finish(outcome).await;
                }
                pending = Some(outcome);
            }
            tokio::select! {
                event = self.rx.recv() => {
                    if let Some(o) = self.on_event(event) {
                        pending = Some(o);
                    }
                }
                _ = self.shared.changed.notified() => self.publish().await,
                _ = resync.tick() => {
                    self.last_patch = None;
                    self.publish().await;
                }
            }
        }
    }

    /// Network namespace, DNS files and volumes.
    async fn setup(&mut self) -> Result<volumes::VolumePaths> {
        let ip = match self.ip {
            Some(ip) => ip,
            None => {
                let ip = self
                    .ctx
                    .ips
                    .lock()
                    .map_err(|_| anyhow::anyhow!("IP allocator lock poisoned"))?
                    .allocate()?;
                self.ip = Some(ip);
                ip
            }
        };
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        network::setup(&self.ctx.config, &self.netns, &self.host_veth, ip)?;
        let (hostname, fqdn) = pod_hostname(&self.pod, &self.ctx.config.cluster_domain);
        let domain = &self.ctx.config.cluster_domain;
        let ns = &self.namespace;
        let resolv = format!(
            "search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {}\noptions ndots:5\n",
            self.ctx.config.gateway
        );
        std::fs::write(self.dir.join("resolv.conf"), resolv).context("writing resolv.conf")?;
        let names = match &fqdn {
            Some(fqdn) => format!("{fqdn} {hostname}"),
            None => hostname.clone(),
        };
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{names}\n"
        );
        std::fs::write(self.dir.join("hosts"), hosts).context("writing hosts")?;
        std::fs::create_dir_all(self.dir.join("logs")).context("creating log directory")?;
        let paths = volumes::prepare(&self.ctx, &self.pod, &self.dir).await?;
        if let Ok(mut record) = self.shared.record.lock() {
            record.ip = ip.to_string();
            state::write_record(&self.ctx.config.state_dir, &record)?;
        }
        info!(pod = %format!("{}/{}", self.namespace, self.name), %ip, netns = %self.netns, "pod sandbox ready");
        Ok(paths)
    }

    fn start_containers(&mut self, volume_paths: volumes::VolumePaths) {
        let Some(spec) = self.pod.spec.clone() else {
            return;
        };
        let (hostname, _) = pod_hostname(&self.pod, &self.ctx.config.cluster_domain);
        let base = LaunchSpec {
            self_exe: self.ctx.self_exe.clone(),
            netns_path: PathBuf::from("/var/run/netns").join(&self.netns),
            hostname,
            mounts: vec![
                BindMount {
                    source: self.dir.join("resolv.conf"),
                    target: "/etc/resolv.conf".into(),
                    read_only: true,
                },
                BindMount {
                    source: self.dir.join("hosts"),
                    target: "/etc/hosts".into(),
                    read_only: false,
                },
            ],
            env: Vec::new(),
            workdir: None,
            state_dir: self.ctx.config.state_dir.clone(),
        };
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        for (index, container) in spec.containers.iter().enumerate() {
            let sup = Supervised {
                ctx: self.ctx.clone(),
                shared: self.shared.clone(),
                index,
                container: container.clone(),
                pod: self.pod.clone(),
                pod_ip: self.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                node: self.node.clone(),
                pod_dir: self.dir.clone(),
                base: base.clone(),
                volume_paths: volume_paths.clone(),
                restart_policy: restart_policy.clone(),
            };
            self.supervisors
                .spawn(supervise(sup, self.stop.subscribe()));
        }
    }

    async fn publish(&mut self) {
        if self.ctx.node_down(&self.node) {
            return; // a dead kubelet reports nothing
        }
        let views = match self.shared.views.lock() {
            Ok(v) => v.clone(),
            Err(_) => return,
        };
        let ip = self.ip.map(|ip| ip.to_string());
        let report = status::Report {
            pod_ip: if self.sandbox_ready {
                ip.as_deref()
            } else {
                None
            },
            host_ip: &self.ctx.config.gateway,
            start_time: self.start_time,
            views: &views,
            sandbox_ready: self.sandbox_ready,
        };
        let patch = status::patch(&report, &mut self.transitions);
        if self.last_patch.as_ref() == Some(&patch) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        match pods
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_patch = Some(patch),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %e, "status update failed")
            }
        }
    }

    async fn finish(&mut self, outcome: Outcome) -> Result<()> {
        let grace = match outcome {
            Outcome::Delete(grace) => grace,
            Outcome::Gone => 0,
        };
        info!(pod = %format!("{}/{}", self.namespace, self.name), grace, "stopping pod");
        let _ = self.stop.send(Some(grace));
        while self.supervisors.join_next().await.is_some() {}
        if matches!(outcome, Outcome::Delete(_)) {
            let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&self.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e).context("deleting the pod after termination"),
            }
        }
        Ok(())
    }

    fn cleanup(&mut self) {
        self.stop.send_replace(Some(0));
        self.supervisors.abort_all();
        if let Ok(record) = self.shared.record.lock() {
            for pid in record.containers.values() {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        network::teardown(&self.netns, &self.host_veth);
        if let Some(ip) = self.ip.take()
            && let Ok(mut ips) = self.ctx.ips.lock()
        {
            ips.release(ip);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %self.dir.display(), error = %e, "removing pod directory");
        }
    }
}

/// The pod's hostname and, with a subdomain, its FQDN.
fn pod_hostname(pod: &Pod, domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let mut hostname = spec
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.name_any());
    hostname.truncate(63);
    let fqdn = spec
        .and_then(|s| s.subdomain.clone())
        .filter(|s| !s.is_empty())
        .map(|sub| {
            format!(
                "{hostname}.{sub}.{}.svc.{domain}",
                pod.namespace().unwrap_or_default()
            )
        });
    (hostname, fqdn)
}

/// Expands `$(VAR)` references as Kubernetes does (`$$` escapes, unknown references stay).
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

async fn resolve_env(sup: &Supervised) -> Result<Vec<(String, String)>> {
    let ctx = &sup.ctx;
    let pod = &sup.pod;
    let ns = pod.namespace().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    };
    let (hostname, _) = pod_hostname(pod, &ctx.config.cluster_domain);
    set(&mut env, "PATH".into(), DEFAULT_PATH.into());
    set(&mut env, "HOSTNAME".into(), hostname);
    set(&mut env, "HOME".into(), "/root".into());
    let host = &ctx.config.kubernetes_service_host;
    let port = ctx.config.kubernetes_service_port;
    set(&mut env, "KUBERNETES_SERVICE_HOST".into(), host.clone());
    set(&mut env, "KUBERNETES_SERVICE_PORT".into(), port.to_string());
    set(
        &mut env,
        "KUBERNETES_SERVICE_PORT_HTTPS".into(),
        port.to_string(),
    );
    set(
        &mut env,
        "KUBERNETES_PORT".into(),
        format!("tcp://{host}:{port}"),
    );
    for from in sup.container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            volumes::config_map_values(ctx, &ns, &cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(secret) = &from.secret_ref {
            volumes::secret_values(ctx, &ns, &secret.name, secret.optional.unwrap_or(false)).await?
        } else {
            continue;
        };
        let mut keys: Vec<_> = data.into_iter().collect();
        keys.sort();
        for (k, v) in keys {
            set(
                &mut env,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for var in sup.container.env.as_deref().unwrap_or_default() {
        let value = if let Some(source) = &var.value_from {
            if let Some(field) = &source.field_ref {
                volumes::field_value(pod, &field.field_path, Some(&sup.pod_ip))
                    .with_context(|| format!("env {:?}", var.name))?
            } else if let Some(key) = &source.config_map_key_ref {
                let data =
                    volumes::config_map_values(ctx, &ns, &key.name, key.optional.unwrap_or(false))
                        .await?;
                match data.get(&key.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if key.optional.unwrap_or(false) => continue,
                    None => bail!(
                        "env {:?}: key {:?} not in ConfigMap {:?}",
                        var.name,
                        key.key,
                        key.name
                    ),
                }
            } else if let Some(key) = &source.secret_key_ref {
                let data =
                    volumes::secret_values(ctx, &ns, &key.name, key.optional.unwrap_or(false))
                        .await?;
                match data.get(&key.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if key.optional.unwrap_or(false) => continue,
                    None => bail!(
                        "env {:?}: key {:?} not in Secret {:?}",
                        var.name,
                        key.key,
                        key.name
                    ),
                }
            } else if source.resource_field_ref.is_some() {
                // No resource accounting in the sandbox: report "0" like an unlimited container's request.
                "0".to_string()
            } else {
                bail!("env {:?}: unsupported valueFrom", var.name);
            }
        } else {
            let vars: HashMap<String, String> = env.iter().cloned().collect();
            expand(var.value.as_deref().unwrap_or_default(), &vars)
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The process to run: the image's executable unless `command` names another program.
fn container_argv(sup: &Supervised, env: &[(String, String)]) -> Result<(Vec<String>, String)> {
    let image = sup.container.image.as_deref().unwrap_or_default();
    let (executable, default_args) = sup.ctx.config.resolve_image(image)?;
    if !Path::new(&executable).is_file() {
        bail!("image {image:?} maps to {executable}, which does not exist (build it first)");
    }
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let command: Vec<String> = sup
        .container
        .command
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| expand(a, &vars))
        .collect();
    let args: Vec<String> = sup
        .container
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| expand(a, &vars))
        .collect();
    let exe_name = Path::new(&executable)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (repo, _) = crate::config::split_image(image);
    let mut argv = Vec::new();
    match command.split_first() {
        None => {
            argv.push(executable.clone());
            argv.extend(if args.is_empty() { default_args } else { args });
        }
        Some((first, rest)) => {
            let program = if *first == exe_name || *first == repo || *first == executable {
                executable.clone()
            } else {
                first.clone()
            };
            argv.push(program);
            argv.extend(rest.iter().cloned());
            argv.extend(args);
        }
    }
    Ok((argv, executable))
}

async fn supervise(sup: Supervised, mut stop: watch::Receiver<Option<i64>>) {
    let pod_name = format!(
        "{}/{}",
        sup.pod.namespace().unwrap_or_default(),
        sup.pod.name_any()
    );
    let cname = sup.container.name.clone();
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        if stop.borrow().is_some() {
            return;
        }
        while sup.ctx.node_down(&sup.node) {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        if !first {
            sup.shared.update(sup.index, |v| v.restart_count += 1);
        }
        first = false;
        let started = tokio::time::Instant::now();
        let started_at = Timestamp::now();
        let outcome = run_once(&sup, &mut stop, started_at).await;
        let (terminated, stopping) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let message = format!("{e:#}");
                warn!(pod = %pod_name, container = %cname, error = %message, "container could not start");
                sup.shared.update(sup.index, |v| {
                    v.state = State::Waiting {
                        reason: "CreateContainerError".into(),
                        message,
                    };
                    v.ready = false;
                });
                (None, false)
            }
        };
        if stopping || stop.borrow().is_some() {
            if let Some(t) = terminated {
                sup.shared
                    .update(sup.index, |v| v.state = State::Terminated(t));
            }
            return;
        }
        let exit_code = terminated.as_ref().map(|t| t.exit_code).unwrap_or(1);
        let restart = match sup.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        if let Some(t) = terminated.clone() {
            info!(pod = %pod_name, container = %cname, exit_code = t.exit_code, signal = ?t.signal, restart, "container exited");
        }
        if !restart {
            if let Some(t) = terminated {
                sup.shared
                    .update(sup.index, |v| v.state = State::Terminated(t));
            }
            return;
        }
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = MIN_BACKOFF;
        }
        sup.shared.update(sup.index, |v| {
            if let Some(t) = terminated {
                v.last_terminated = Some(t);
            }
            if let State::Running { .. } = v.state {
                v.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container",
                        backoff.as_secs()
                    ),
                };
            }
        });
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Starts the container once and waits for it to end. Returns how it ended and whether the pod is stopping.
async fn run_once(
    sup: &Supervised,
    stop: &mut watch::Receiver<Option<i64>>,
    started_at: Timestamp,
) -> Result<(Option<Terminated>, bool)> {
    let env = resolve_env(sup).await?;
    let (argv, executable) = container_argv(sup, &env)?;
    let mut launch = sup.base.clone();
    launch
        .mounts
        .extend(volumes::mounts_for(&sup.container, &sup.volume_paths)?);
    launch.env = env;
    launch.workdir = sup.container.working_dir.clone().filter(|d| !d.is_empty());
    let log_path = sup
        .pod_dir
        .join("logs")
        .join(format!("{}.log", sup.container.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_err = log.try_clone().context("duplicating log file handle")?;
    let mut command = launch.command(&argv);
    command.stdout(log).stderr(log_err).process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {argv:?}"))?;
    let pid = child
        .id()
        .map(|p| p as i32)
        .context("started process has no pid")?;
    let has_readiness = sup.container.readiness_probe.is_some();
    sup.shared.update(sup.index, |v| {
        v.state = State::Running { started_at };
        v.executable = executable.clone();
        v.pid = Some(pid);
        v.ready = !has_readiness;
    });
    sup.shared.set_pid(&sup.container.name, Some(pid));
    debug!(container = %sup.container.name, pid, ?argv, "container started");

    let (liveness_tx, mut liveness_rx) = mpsc::channel::<String>(1);
    let probe_task = tokio::spawn(probe_loops(ProbeCtx {
        ctx: sup.ctx.clone(),
        shared: sup.shared.clone(),
        index: sup.index,
        container: sup.container.clone(),
        pod_ip: sup.pod_ip.clone(),
        node: sup.node.clone(),
        launch: launch.clone(),
        liveness: liveness_tx,
    }));
    let default_grace = sup
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let (status, stopping) = tokio::select! {
        status = child.wait() => (status.context("waiting for container")?, false),
        Some(reason) = liveness_rx.recv() => {
            info!(container = %sup.container.name, %reason, "liveness failed; restarting container");
            (terminate(&mut child, pid, default_grace).await?, false)
        }
        _ = stop.changed() => {
            let grace = stop.borrow().unwrap_or(default_grace);
            (terminate(&mut child, pid, grace).await?, true)
        }
    };
    probe_task.abort();
    sup.shared.set_pid(&sup.container.name, None);
    // Reap anything the container left in its process group.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    let exit_code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
    let terminated = Terminated {
        exit_code,
        signal,
        reason: if exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        started_at,
        finished_at: Timestamp::now(),
    };
    sup.shared.update(sup.index, |v| {
        v.pid = None;
        v.ready = false;
    });
    Ok((Some(terminated), stopping))
}

/// SIGTERM to the process group, SIGKILL after `grace` seconds.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: i32,
    grace: i64,
) -> Result<std::process::ExitStatus> {
    let group = Pid::from_raw(pid);
    // A stopped (paused) process must be continued to act on SIGTERM.
    let _ = killpg(group, Signal::SIGCONT);
    if grace > 0 {
        let _ = killpg(group, Signal::SIGTERM);
        if let Ok(status) =
            tokio::time::timeout(Duration::from_secs(grace as u64), child.wait()).await
        {
            return status.context("waiting for container after SIGTERM");
        }
        info!(pid, grace, "grace period over; sending SIGKILL");
    }
    let _ = killpg(group, Signal::SIGKILL);
    child
        .wait()
        .await
        .context("waiting for container after SIGKILL")
}

struct ProbeCtx {
    ctx: Arc<AgentContext>,
    shared: Arc<PodShared>,
    index: usize,
    container: Container,
    pod_ip: String,
    node: String,
    launch: LaunchSpec,
    liveness: mpsc::Sender<String>,
}

async fn probe_loops(p: ProbeCtx) {
    if let Some(startup) = p.container.startup_probe.clone()
        && !probe_until(&p, &startup, true).await
    {
        let _ = p.liveness.send("startup probe failed".into()).await;
        return;
    }
    let readiness = async {
        if let Some(probe) = p.container.readiness_probe.clone() {
            run_probe_loop(&p, &probe, Kind::Readiness).await;
        }
    };
    let liveness = async {
        if let Some(probe) = p.container.liveness_probe.clone() {
            run_probe_loop(&p, &probe, Kind::Liveness).await;
        }
    };
    tokio::join!(readiness, liveness);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Readiness,
    Liveness,
}

/// Startup probe: true once it succeeds, false after failureThreshold failures.
async fn probe_until(
    p: &ProbeCtx,
    probe: &k8s_openapi::api::core::v1::Probe,
    _startup: bool,
) -> bool {
    let timing = probes::Timing::of(probe);
    tokio::time::sleep(timing.initial_delay).await;
    let mut failures = 0;
    loop {
        if !p.ctx.node_down(&p.node) {
            match probes::check(probe, &p.container, &p.pod_ip, &p.launch).await {
                Ok(true) => return true,
                _ => failures += 1,
            }
            if failures >= timing.failure_threshold {
                return false;
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

async fn run_probe_loop(p: &ProbeCtx, probe: &k8s_openapi::api::core::v1::Probe, kind: Kind) {
    let timing = probes::Timing::of(probe);
    tokio::time::sleep(timing.initial_delay).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        if !p.ctx.node_down(&p.node) {
            let ok = match probes::check(probe, &p.container, &p.pod_ip, &p.launch).await {
                Ok(ok) => ok,
                Err(e) => {
                    debug!(container = %p.container.name, ?kind, error = %format!("{e:#}"), "probe error");
                    false
                }
            };
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            match kind {
                Kind::Readiness => {
                    if ok && successes >= timing.success_threshold {
                        p.shared.update(p.index, |v| v.ready = true);
                    } else if !ok && failures >= timing.failure_threshold {
                        p.shared.update(p.index, |v| v.ready = false);
                    }
                }
                Kind::Liveness => {
                    if failures >= timing.failure_threshold {
                        let _ = p
                            .liveness
                            .send(format!("{failures} consecutive liveness failures"))
                            .await;
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_dependent_vars() {
        let vars: HashMap<String, String> = [("POD_NAME".to_string(), "web-0".to_string())].into();
        assert_eq!(expand("--id=$(POD_NAME)", &vars), "--id=web-0");
        assert_eq!(
            expand("$(MISSING)-$$(POD_NAME)", &vars),
            "$(MISSING)-$(POD_NAME)"
        );
        assert_eq!(expand("cost $5", &vars), "cost $5");
    }
}
