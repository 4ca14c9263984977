//! Helpers shared by the end-to-end tests: a client for the sandbox, fresh namespaces, polling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use raft_operator::crd::RaftCluster;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kubeconfig the sandbox writes.
pub const SANDBOX_KUBECONFIG: &str = "/var/lib/raft-sandbox/kubeconfig";

/// A client for the sandbox; fails the test with instructions when there is none.
pub async fn client() -> Client {
    let client = Client::try_default().await.expect(
        "no Kubernetes client: the sandbox must be up (`make sandbox-up`, KUBECONFIG=/var/lib/raft-sandbox/kubeconfig)",
    );
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default().limit(1))
        .await
        .expect("the sandbox API server does not answer: run `make sandbox-up` first");
    client
}

/// A fresh namespace, deleted when the test ends.
pub struct TestNamespace {
    /// Namespace name.
    pub name: String,
}

impl TestNamespace {
    /// Create `e2e-<prefix>-<suffix>` and wait for its default service account.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000;
        let name = format!("e2e-{prefix}-{suffix}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating test namespace");
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_until(
            Duration::from_secs(30),
            "default service account",
            || async { sas.get_opt("default").await.ok().flatten().is_some() },
        )
        .await;
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Best effort: the namespace lifecycle controller and GC remove its contents. A fresh
        // client on a fresh runtime: the test's own client is driven by the test's runtime, which
        // is blocked in this join (a current-thread runtime would deadlock).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                if let Ok(client) = Client::try_default().await {
                    // The test's operator is gone by now, so nothing would remove the
                    // RaftClusters' finalizers and the namespace would never finish deleting.
                    let clusters: Api<RaftCluster> = Api::namespaced(client.clone(), &name);
                    if let Ok(list) = clusters.list(&ListParams::default()).await {
                        for cluster in list.items {
                            let _ = clusters
                                .patch(
                                    &cluster.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                                )
                                .await;
                        }
                    }
                    let namespaces: Api<Namespace> = Api::all(client);
                    let _ = namespaces.delete(&name, &DeleteParams::default()).await;
                }
            });
        })
        .join();
    }
}

/// Poll `check` every 500 ms until it holds; fail the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Poll until `check` yields a value; fail the test after `timeout`.
pub async fn poll_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod's IP.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod has an IP")
}

/// Node name -> zone label.
pub async fn node_zones(client: &Client) -> BTreeMap<String, String> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .filter_map(|n| {
            let zone = n.labels().get("topology.kubernetes.io/zone")?.clone();
            Some((n.name_any(), zone))
        })
        .collect()
}

/// Install (or update) the CRD and wait until the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "raftclusters.raft-operator.dev",
        &PatchParams::apply("operator-e2e").force(),
        &Patch::Apply(RaftCluster::crd()),
    )
    .await
    .expect("apply the RaftCluster CRD");
    wait_until(Duration::from_secs(30), "CRD established", || async {
        crds.get("raftclusters.raft-operator.dev")
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
}

/// An operator process watching one namespace; killed when dropped.
pub struct Operator {
    child: Child,
    /// Address of its /metrics, /healthz and /readyz endpoint.
    pub http_addr: String,
    /// Its log file.
    pub log_path: std::path::PathBuf,
}

impl Operator {
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, "operator", &[], &[])
    }

    /// An operator process named `name` (its log file and POD_NAME, which is its leader-election
    /// identity) with extra flags and environment.
    pub fn start_with(
        namespace: &str,
        name: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log_path = log_dir.join(format!("{namespace}-{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("operator log");
        eprintln!("operator for {namespace} logs to {}", log_path.display());
        let child = Command::new(env!("CARGO_BIN_EXE_raft-operator"))
            .args([
                "--watch-namespaces",
                namespace,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "text",
            ])
            .args(extra_args)
            .env("RUST_LOG", "info,kube=warn")
            .env("POD_NAME", name)
            .envs(extra_env.iter().copied())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start raft-operator");
        Self {
            child,
            http_addr: format!("127.0.0.1:{port}"),
            log_path,
        }
    }

    /// HTTP status code of `GET path` on the operator's endpoint; `None` when it does not answer.
    pub async fn http_status(&self, path: &str) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&self.http_addr),
        )
        .await
        .ok()?
        .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Create a RaftCluster named `name` with this spec.
pub async fn create_cluster(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> RaftCluster {
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), ns);
    let cluster: RaftCluster = serde_json::from_value(json!({
        "apiVersion": "raft-operator.dev/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster)
        .await
        .expect("create RaftCluster")
}

/// Wait until the cluster reports Available with every voter healthy; returns it.
pub async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    voters: u32,
    timeout: Duration,
) -> RaftCluster {
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), ns);
    poll_for(
        timeout,
        &format!("{name} Available with {voters} healthy voters"),
        || async {
            let c = api.get(name).await.ok()?;
            let s = c.status.as_ref()?;
            let available = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            (available && s.healthy_voters == voters && s.leader.is_some()).then_some(c)
        },
    )
    .await
}

/// The condition of this type in a cluster's status, if any.
pub fn condition<'a>(
    c: &'a RaftCluster,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the condition of this type is True.
pub fn condition_true(c: &RaftCluster, type_: &str) -> bool {
    condition(c, type_).is_some_and(|c| c.status == "True")
}
