//! End-to-end tests of the local Kubernetes sandbox (issue 5). They need a running sandbox
//! (`make sandbox-up`, done by `make test-sandbox-e2e`) and root; without one they fail with a
//! message saying so. Each test works in a fresh namespace. Run with `--test-threads=1`:
//! zone-down affects the whole sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Service,
};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
mod common;

use common::{TestNamespace, client, is_ready, node_zones, pod_ip, poll_for, wait_until};
use sandbox_node::faults::Faults;
use sandbox_node::http;
use serde_json::json;

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// A StatefulSet of echo-server pods with a PVC each, spread over zones (maxSkew 1, DoNotSchedule).
fn echo_statefulset(name: &str, replicas: i32, owner: Option<&ConfigMap>) -> StatefulSet {
    let mut value = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": name}},
                    }],
                    "containers": [{
                        "name": "echo",
                        "image": "echo-server:v1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "DATA_DIR", "value": "/sandbox-e2e/data"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
                        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                        "volumeMounts": [{"name": "data", "mountPath": "/sandbox-e2e/data"}],
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    });
    if let Some(owner) = owner {
        value["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(), "uid": owner.uid().unwrap(),
        }]);
    }
    serde_json::from_value(value).unwrap()
}

fn headless_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"clusterIP": "None", "selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap()
}

async fn create_echo_set(client: &Client, ns: &str, name: &str, replicas: i32) -> Vec<Pod> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &headless_service(name))
        .await
        .expect("creating headless service");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.create(
        &PostParams::default(),
        &echo_statefulset(name, replicas, None),
    )
    .await
    .expect("creating statefulset");
    wait_ready_pods(
        client,
        ns,
        name,
        replicas as usize,
        Duration::from_secs(120),
    )
    .await
}

async fn wait_ready_pods(
    client: &Client,
    ns: &str,
    app: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = ListParams::default().labels(&format!("app={app}"));
    let mut ready: Vec<Pod> = poll_for(
        timeout,
        &format!("{count} ready pods of {ns}/{app}"),
        || {
            let pods = pods.clone();
            let selector = selector.clone();
            async move {
                let list = pods
                    .list(&selector)
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                let ready: Vec<Pod> = list
                    .into_iter()
                    .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
                    .collect();
                (ready.len() == count).then_some(ready)
            }
        },
    )
    .await;
    ready.sort_by_key(|p| p.name_any());
    ready
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("pod is bound")
}

async fn get(ip: &str, path: &str) -> anyhow::Result<http::Response> {
    http::get(ip, 8080, path, Duration::from_secs(8)).await
}

#[tokio::test]
async fn six_ready_nodes_in_three_zones_with_fresh_leases() {
    let client = client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default().labels("sandbox.raft-operator.io/node=true"))
        .await
        .unwrap()
        .items;
    let ready: Vec<&Node> = list
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    assert!(
        ready.len() >= 6,
        "expected >= 6 Ready nodes, got {}",
        ready.len()
    );
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for n in &ready {
        let labels = n.labels();
        assert_eq!(
            labels
                .get("topology.kubernetes.io/region")
                .map(String::as_str),
            Some("sandbox")
        );
        *per_zone
            .entry(
                labels
                    .get("topology.kubernetes.io/zone")
                    .cloned()
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    for zone in ZONES {
        assert!(
            per_zone.get(zone).copied().unwrap_or(0) >= 2,
            "zone {zone} has < 2 Ready nodes: {per_zone:?}"
        );
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    for n in &ready {
        let lease = leases.get(&n.name_any()).await.expect("node lease exists");
        let renewed = lease
            .spec
            .and_then(|s| s.renew_time)
            .expect("lease has renewTime")
            .0;
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed);
        assert!(
            age.as_secs() < 40,
            "lease of {} is {}s old",
            n.name_any(),
            age.as_secs()
        );
    }
}

#[tokio::test]
async fn statefulset_spreads_two_per_zone_resolves_and_talks() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "spread").await;
    let pods = create_echo_set(&client, &ns.name, "web", 6).await;
    let zones = node_zones(&client).await;
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_zone.entry(zones[&node_of(p)].clone()).or_default() += 1;
    }
    assert_eq!(
        per_zone,
        ZONES
            .iter()
            .map(|z| (z.to_string(), 2))
            .collect::<BTreeMap<_, _>>()
    );

    // Downward API and pod identity: the pod sees its own name, namespace and IP.
    for p in &pods {
        let who: serde_json::Value =
            serde_json::from_str(&get(&pod_ip(p), "/whoami").await.unwrap().body).unwrap();
        assert_eq!(who["pod"], p.name_any());
        assert_eq!(who["namespace"], ns.name);
        assert_eq!(who["ip"], pod_ip(p));
        assert_eq!(who["hostname"], p.name_any());
    }
    // Each pod resolves the next one by its stable DNS name and talks to it over the pod IP.
    for (i, p) in pods.iter().enumerate() {
        let peer = &pods[(i + 1) % pods.len()];
        let fqdn = format!("{}.web.{}.svc.cluster.local", peer.name_any(), ns.name);
        let mut last = String::new();
        let mut resolved = false;
        for _ in 0..20 {
            match get(&pod_ip(p), &format!("/resolve?name={fqdn}")).await {
                Ok(r) if r.status == 200 && r.body == pod_ip(peer) => {
                    resolved = true;
                    break;
                }
                Ok(r) => last = format!("{} {}", r.status, r.body),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            resolved,
            "{} could not resolve {fqdn} to {}: {last}",
            p.name_any(),
            pod_ip(peer)
        );
        let r = get(
            &pod_ip(p),
            &format!("/fetch?host={fqdn}&port=8080&path=/whoami"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{} -> {fqdn}: {}", p.name_any(), r.body);
        let who: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(who["pod"], peer.name_any());
    }
    // Volumes are zonal: each PV is pinned to the zone its pod was first scheduled in.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for p in &pods {
        let claim = claims.get(&format!("data-{}", p.name_any())).await.unwrap();
        let pv = pvs
            .get(claim.spec.unwrap().volume_name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(
            pv.labels().get("topology.kubernetes.io/zone"),
            Some(&zones[&node_of(p)])
        );
    }
    // The projected service-account token volume is mounted where in-cluster clients look.
    let token = get(
        &pod_ip(&pods[0]),
        "/file?path=/var/run/secrets/kubernetes.io/serviceaccount/token",
    )
    .await
    .unwrap();
    assert_eq!(token.status, 200, "token: {}", token.body);
    assert_eq!(token.body.split('.').count(), 3, "token is a JWT");
    let sa_ns = get(
        &pod_ip(&pods[0]),
        "/file?path=/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    )
    .await
    .unwrap();
    assert_eq!(sa_ns.body, ns.name);
}

#[tokio::test]
async fn cluster_ip_service_reaches_pods_from_pods_and_host() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "svc").await;
    let pods = create_echo_set(&client, &ns.name, "echo", 3).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "front"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    wait_until(Duration::from_secs(30), "ClusterIP reachable from the host", || async {
        matches!(http::get(&cluster_ip, 80, "/whoami", Duration::from_secs(2)).await, Ok(r) if r.status == 200)
    })
    .await;
    let r = get(
        &pod_ip(&pods[0]),
        &format!(
            "/fetch?host=front.{}.svc.cluster.local&port=80&path=/whoami",
            ns.name
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "pod -> service: {}", r.body);
    let who: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(
        names.contains(who["pod"].as_str().unwrap()),
        "answered by {who}"
    );
}

#[tokio::test]
async fn killed_process_restarts_and_recreated_pod_keeps_pvc_data() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "restart").await;
    let pods = create_echo_set(&client, &ns.name, "db", 1).await;
    let pod = &pods[0];
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let before = restart_count(pod);

    Faults::running()
        .unwrap()
        .kill(&ns.name, "db-0", None)
        .expect("killing db-0");
    wait_until(
        Duration::from_secs(60),
        "restartCount to rise and the pod to be Ready again",
        || async {
            let p = api.get("db-0").await.unwrap();
            restart_count(&p) > before && is_ready(&p)
        },
    )
    .await;

    let marker = format!("written-by-test-{}", pod.uid().unwrap());
    let r = http::request(
        "PUT",
        &pod_ip(pod),
        8080,
        "/data",
        marker.as_bytes(),
        Duration::from_secs(8),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    api.delete("db-0", &DeleteParams::default()).await.unwrap();
    let old_uid = pod.uid().unwrap();
    let new_pod = poll_for(
        Duration::from_secs(90),
        "db-0 to be recreated and Ready",
        || {
            let api = api.clone();
            let old_uid = old_uid.clone();
            async move {
                match api.get_opt("db-0").await {
                    Ok(Some(p)) if p.uid().as_deref() != Some(old_uid.as_str()) && is_ready(&p) => {
                        Some(p)
                    }
                    _ => None,
                }
            }
        },
    )
    .await;
    let r = get(&pod_ip(&new_pod), "/data").await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, marker.as_str()),
        "PVC data survived the pod"
    );
}

/// Brings the zone back even when an assertion fails, so later tests see a whole sandbox.
struct ZoneUpOnDrop(&'static str);

impl Drop for ZoneUpOnDrop {
    fn drop(&mut self) {
        if let Ok(f) = Faults::running() {
            let _ = f.zone_up(self.0);
        }
    }
}

#[tokio::test]
async fn zone_down_makes_pods_unready_and_unreachable_and_zone_up_restores() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "zone").await;
    let pods = create_echo_set(&client, &ns.name, "z", 3).await;
    let zones = node_zones(&client).await;
    let in_a = pods
        .iter()
        .find(|p| zones[&node_of(p)] == "zone-a")
        .expect("one pod per zone")
        .clone();
    let in_b = pods
        .iter()
        .find(|p| zones[&node_of(p)] == "zone-b")
        .expect("one pod per zone")
        .clone();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    let node_ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };

    let guard = ZoneUpOnDrop("zone-a");
    Faults::running().unwrap().zone_down("zone-a").unwrap();
    wait_until(Duration::from_secs(30), "zone-a nodes NotReady", || async {
        let list = nodes
            .list(&ListParams::default().labels("topology.kubernetes.io/zone=zone-a"))
            .await
            .unwrap();
        list.items.iter().all(|n| !node_ready(n))
    })
    .await;
    wait_until(Duration::from_secs(60), "zone-a pod not Ready", || async {
        !is_ready(&api.get(&in_a.name_any()).await.unwrap())
    })
    .await;
    assert!(
        get(&pod_ip(&in_a), "/healthz").await.is_err(),
        "zone-a pod must be unreachable from the host"
    );
    let r = get(
        &pod_ip(&in_b),
        &format!("/fetch?host={}&port=8080&path=/healthz", pod_ip(&in_a)),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status, 502,
        "zone-a pod must be unreachable from zone-b: {}",
        r.body
    );
    assert!(
        is_ready(&api.get(&in_b.name_any()).await.unwrap()),
        "zone-b pod stays Ready"
    );

    Faults::running().unwrap().zone_up("zone-a").unwrap();
    drop(guard);
    wait_until(
        Duration::from_secs(60),
        "zone-a pod Ready again",
        || async { is_ready(&api.get(&in_a.name_any()).await.unwrap()) },
    )
    .await;
    let r = get(
        &pod_ip(&in_b),
        &format!("/fetch?host={}&port=8080&path=/healthz", pod_ip(&in_a)),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "zone-a pod reachable again: {}", r.body);
}

#[tokio::test]
async fn partition_cuts_a_pod_off_and_heal_restores() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "part").await;
    let pods = create_echo_set(&client, &ns.name, "p", 2).await;
    let (a, b) = (&pods[0], &pods[1]);
    let faults = Faults::running().unwrap();
    faults.partition(&ns.name, &a.name_any()).unwrap();
    let r = get(
        &pod_ip(b),
        &format!("/fetch?host={}&port=8080&path=/healthz", pod_ip(a)),
    )
    .await
    .unwrap();
    let heal_result = faults.heal(&ns.name, &a.name_any());
    assert_eq!(
        r.status, 502,
        "partitioned pod must be unreachable from its peer: {}",
        r.body
    );
    heal_result.unwrap();
    let r = get(
        &pod_ip(b),
        &format!("/fetch?host={}&port=8080&path=/healthz", pod_ip(a)),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "healed pod reachable: {}", r.body);
}

#[tokio::test]
async fn deleting_the_owner_garbage_collects_the_statefulset() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(&PostParams::default(), &headless_service("owned"))
        .await
        .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    sets.create(
        &PostParams::default(),
        &echo_statefulset("owned", 1, Some(&owner)),
    )
    .await
    .unwrap();
    wait_ready_pods(&client, &ns.name, "owned", 1, Duration::from_secs(90)).await;

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "garbage collection of the StatefulSet",
        || async { sets.get_opt("owned").await.unwrap().is_none() },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_until(
        Duration::from_secs(60),
        "garbage collection of its pods",
        || async {
            pods.list(&ListParams::default().labels("app=owned"))
                .await
                .unwrap()
                .items
                .is_empty()
        },
    )
    .await;
}

#[tokio::test]
async fn graceful_termination_waits_for_the_grace_period_then_kills() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "grace").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // One process that exits on SIGTERM, one that ignores it (killed after its 4 s grace period).
    let make = |name: &str, command: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "terminationGracePeriodSeconds": 4,
                "containers": [{"name": "main", "image": "echo-server:v1", "command": command}],
            },
        }))
        .unwrap()
    };
    // No command: the image's default, echo-server, which exits on SIGTERM.
    let polite = make("polite", serde_json::Value::Null);
    let stubborn = make(
        "stubborn",
        json!(["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]),
    );
    for pod in [&polite, &stubborn] {
        pods.create(&PostParams::default(), pod).await.unwrap();
    }
    for app in ["polite", "stubborn"] {
        wait_ready_pods(&client, &ns.name, app, 1, Duration::from_secs(60)).await;
    }
    for (name, min, max) in [
        ("polite", Duration::ZERO, Duration::from_secs(3)),
        ("stubborn", Duration::from_secs(4), Duration::from_secs(12)),
    ] {
        let started = Instant::now();
        pods.delete(name, &DeleteParams::default()).await.unwrap();
        wait_until(
            Duration::from_secs(30),
            &format!("{name} to be gone"),
            || async { pods.get_opt(name).await.unwrap().is_none() },
        )
        .await;
        let took = started.elapsed();
        assert!(
            took >= min && took <= max,
            "{name}: deletion took {took:?}, expected between {min:?} and {max:?}"
        );
    }
}

#[tokio::test]
async fn failing_exec_liveness_probe_restarts_the_container() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "live").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "live", "labels": {"app": "live"}},
        "spec": {
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{
                "name": "main",
                "image": "echo-server:v1",
                "env": [{"name": "DATA_DIR", "value": "/sandbox-e2e/scratch"}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/sandbox-e2e/scratch"}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                "livenessProbe": {
                    "exec": {"command": ["sh", "-c", "! grep -q unhealthy /sandbox-e2e/scratch/data"]},
                    "periodSeconds": 1,
                    "failureThreshold": 2,
                },
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = wait_ready_pods(&client, &ns.name, "live", 1, Duration::from_secs(60)).await;
    let ip = pod_ip(&ready[0]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        restart_count(&pods.get("live").await.unwrap()),
        0,
        "a passing liveness probe must not restart the container"
    );
    let r = http::request(
        "PUT",
        &ip,
        8080,
        "/data",
        b"unhealthy",
        Duration::from_secs(8),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until(
        Duration::from_secs(30),
        "the liveness probe to restart the container",
        || async { restart_count(&pods.get("live").await.unwrap()) >= 1 },
    )
    .await;
    // The emptyDir survives the restart (as in Kubernetes); make the probe pass again.
    let healed = poll_for(Duration::from_secs(30), "the restarted server", || async {
        http::request("PUT", &ip, 8080, "/data", b"ok", Duration::from_secs(2))
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(healed.body, "stored");
    let after = restart_count(&pods.get("live").await.unwrap());
    wait_ready_pods(&client, &ns.name, "live", 1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        restart_count(&pods.get("live").await.unwrap()),
        after,
        "once healthy again, no further restarts"
    );
}
