//! `raft-operator`: runs the RaftCluster controller, with leader election for HA and an HTTP
//! endpoint for /metrics, /healthz and /readyz.

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client};
use raft_operator::controller::{Context, error_policy, reconcile};
use raft_operator::crd::RaftCluster;
use raft_operator::leader_election::{self, LeaseConfig};
use raft_operator::metrics::Metrics;
use raft_operator::watch::{WatchHealth, relisting_watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "raft-operator",
    version,
    about = "Kubernetes operator for quorum-safe Raft clusters"
)]
struct Args {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Reconcile only while holding a Lease, so several replicas are safe.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_NAME",
        default_value = "raft-operator-leader"
    )]
    leader_election_lease_name: String,
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    watch_namespaces: Vec<String>,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);

    let config = kube::Config::infer().await.map_err(|err| {
        anyhow::anyhow!("cannot reach the Kubernetes API (kubeconfig or in-cluster config): {err}")
    })?;
    let client = Client::try_from(config.clone())?;
    // The default client retries 429/503/504 answers for minutes (15 times, backoff up to
    // 1000 s). Evictions refused by a PodDisruptionBudget answer 429, and a watch resuming from a
    // resource version the API server no longer has (it came back on fresh storage) answers 504
    // "Too large resource version": both must come back at once, so that the round ends or the
    // watch relists. Watches and evictions use this client; their own loops back off.
    let mut no_retry = config;
    no_retry.default_retry = false;
    let no_retry_client = Client::try_from(no_retry)?;
    let metrics = Arc::new(Metrics::default());
    let leading = Arc::new(AtomicBool::new(!args.leader_elect));
    let health = WatchHealth::default();
    tokio::spawn(serve_http(
        args.metrics_addr,
        metrics.clone(),
        leading.clone(),
        health.clone(),
    ));

    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("raft-operator-{}", std::process::id()));
    let lease = LeaseConfig {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(10),
        renew_every: Duration::from_secs(2),
    };
    if args.leader_elect {
        leader_election::acquire(&client, &lease).await?;
        leading.store(true, Ordering::SeqCst);
    }

    let ctx = Arc::new(Context::new(
        client.clone(),
        no_retry_client.clone(),
        metrics,
        Some(identity),
    ));
    let namespaces: Vec<Option<String>> = {
        let named: Vec<Option<String>> = args
            .watch_namespaces
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| Some(n.to_string()))
            .collect();
        if named.is_empty() { vec![None] } else { named }
    };
    tracing::info!(
        ?namespaces,
        leader_elect = args.leader_elect,
        "starting controllers"
    );
    let controllers = namespaces
        .into_iter()
        .map(|ns| run_controller(no_retry_client.clone(), ns, ctx.clone(), health.clone()));
    let all = futures::future::join_all(controllers);

    if args.leader_elect {
        tokio::select! {
            _ = all => {}
            lost = leader_election::hold(&client, &lease) => {
                // Stop at once: another replica may take over now.
                return Err(anyhow::anyhow!("{lost}; exiting so another replica can lead"));
            }
        }
    } else {
        all.await;
    }
    Ok(())
}

fn api_for<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One controller per watched namespace. Every watch is a [`relisting_watcher`]: it starts over
/// with a fresh list when its resource version cannot be resumed, and `/readyz` fails while any
/// watch is not live. `client` must not retry 504s (see `main`).
async fn run_controller(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    health: WatchHealth,
) {
    let scope = namespace.clone().unwrap_or_else(|| "*".to_string());
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=raft-operator");
    let writer = Writer::<RaftCluster>::default();
    let reader = writer.as_reader();
    let clusters = reflector::reflector(
        writer,
        relisting_watcher(
            api_for::<RaftCluster>(&client, &namespace),
            watcher::Config::default(),
            &format!("raftclusters in {scope}"),
            health.clone(),
        ),
    )
    .applied_objects();
    let pods = relisting_watcher(
        api_for::<Pod>(&client, &namespace),
        owned.clone(),
        &format!("pods in {scope}"),
        health.clone(),
    )
    .touched_objects();
    let services = relisting_watcher(
        api_for::<Service>(&client, &namespace),
        owned.clone(),
        &format!("services in {scope}"),
        health.clone(),
    )
    .touched_objects();
    let budgets = relisting_watcher(
        api_for::<PodDisruptionBudget>(&client, &namespace),
        owned.clone(),
        &format!("poddisruptionbudgets in {scope}"),
        health.clone(),
    )
    .touched_objects();
    let volumes = relisting_watcher(
        api_for::<PersistentVolumeClaim>(&client, &namespace),
        owned,
        &format!("persistentvolumeclaims in {scope}"),
        health,
    )
    .touched_objects();
    Controller::for_stream(clusters, reader)
        .owns_stream(pods)
        .owns_stream(services)
        .owns_stream(budgets)
        .owns_stream(volumes)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile ended with an error");
            }
        })
        .await;
}

async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    leading: Arc<AtomicBool>,
    health: WatchHealth,
) {
    use axum::{Router, http::StatusCode, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move { metrics.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let leading = leading.clone();
                let health = health.clone();
                async move {
                    if !leading.load(Ordering::SeqCst) {
                        return (StatusCode::OK, "standing by".to_string());
                    }
                    match health.check() {
                        Ok(()) => (StatusCode::OK, "leading".to_string()),
                        Err(down) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("watches not live: {}", down.join(", ")),
                        ),
                    }
                }
            }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "HTTP endpoint stopped");
            }
        }
        Err(err) => tracing::error!(%addr, error = %err, "cannot bind the HTTP endpoint"),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
