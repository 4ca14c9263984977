//! End-to-end tests of the operator core (issue 6) in the sandbox: a real API server, real
//! scheduler and controllers, raftd members running as processes across three zones. Each test
//! runs its own operator process watching only its own fresh namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    Operator, TestNamespace, client, create_cluster, install_crd, node_zones, poll_for, wait_ready,
    wait_until,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use raft_operator::crd::{MemberRole, RaftCluster};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn sorted_placement(cluster: &RaftCluster) -> Vec<u32> {
    let mut placement: Vec<u32> = cluster
        .status
        .as_ref()
        .map(|s| s.placement.iter().map(|z| z.voters).collect())
        .unwrap_or_default();
    placement.sort_unstable_by(|a, b| b.cmp(a));
    placement
}

/// The zone each member pod actually runs in, from its node.
async fn member_zones(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let zones = node_zones(client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={name}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            Some((p.name_any(), zones.get(&node)?.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_become_ready_placed_2_2_1_and_serve_through_the_client_service() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "five").await;
    let _operator = Operator::start(&ns.name);
    let started = Instant::now();
    create_cluster(
        &client,
        &ns.name,
        "demo",
        json!({"replicas": 5, "version": "e2e"}),
    )
    .await;
    let cluster = wait_ready(&client, &ns.name, "demo", 5, Duration::from_secs(240)).await;
    println!(
        "5-voter cluster Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let status = cluster.status.clone().unwrap();
    assert_eq!(sorted_placement(&cluster), vec![2, 2, 1], "{status:?}");
    assert_eq!(status.quorum_size, 3);
    assert_eq!(status.node_fault_tolerance, 2);
    assert_eq!(status.zone_fault_tolerance, 1);
    assert_eq!(
        status.cluster_id.as_deref(),
        cluster.metadata.uid.as_deref()
    );
    assert_eq!(status.members.len(), 5);
    assert_eq!(
        status
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Leader)
            .count(),
        1
    );
    // The status reports where members actually run.
    let actual = member_zones(&client, &ns.name, "demo").await;
    for member in &status.members {
        assert_eq!(
            member.zone.as_ref(),
            actual.get(&member.name),
            "{}",
            member.name
        );
    }
    let mut per_zone: BTreeMap<&str, u32> = BTreeMap::new();
    for zone in actual.values() {
        *per_zone.entry(zone).or_default() += 1;
    }
    let mut counts: Vec<u32> = per_zone.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(counts, vec![2, 2, 1], "pods per zone {per_zone:?}");

    // Writes and reads through the client Service's ClusterIP, from the host.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let svc = services.get("demo").await.expect("client service");
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    let kv = raft_proto::RaftClient::new(&[format!("{ip}:7000")]).expect("client");
    let put = kv
        .put(b"greeting", b"hello")
        .await
        .expect("put through the Service");
    let got = kv
        .get(b"greeting", raft_proto::Consistency::Linearizable)
        .await
        .expect("get through the Service");
    assert_eq!(got.value, b"hello");
    assert!(got.revision >= put.revision);

    // And from inside a pod, through the Service's DNS name: one pod writes, the host reads;
    // the host writes, a second pod compares-and-swaps on what it reads.
    let endpoint = format!("demo.{}.svc.cluster.local:7000", ns.name);
    run_raftctl_pod(
        &client,
        &ns.name,
        "writer",
        &[
            "put",
            "from-pod",
            "written-in-a-pod",
            "--endpoints",
            &endpoint,
        ],
    )
    .await;
    let got = kv
        .get(b"from-pod", raft_proto::Consistency::Linearizable)
        .await
        .expect("get what the pod wrote");
    assert_eq!(got.value, b"written-in-a-pod");
    kv.put(b"from-host", b"written-on-the-host")
        .await
        .expect("put from the host");
    run_raftctl_pod(
        &client,
        &ns.name,
        "reader",
        &[
            "cas",
            "from-host",
            "seen-by-a-pod",
            "--expect-value",
            "written-on-the-host",
            "--endpoints",
            &endpoint,
        ],
    )
    .await;
    let got = kv
        .get(b"from-host", raft_proto::Consistency::Linearizable)
        .await
        .expect("get what the pod swapped");
    assert_eq!(
        got.value, b"seen-by-a-pod",
        "the pod read the host's write and swapped it"
    );
    println!("client Service works from the host and from pods ({endpoint})");
}

/// Runs `raftctl ARGS` in a pod (image `raftctl`, which the sandbox maps to this checkout's
/// binary) and waits for it to succeed; a failed run fails the test.
async fn run_raftctl_pod(client: &Client, ns: &str, name: &str, args: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "raftctl", "image": "raftctl:e2e", "args": args}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the raftctl pod");
    let phase = poll_for(
        Duration::from_secs(60),
        &format!("pod {name} to finish"),
        || async {
            let p = pods.get(name).await.ok()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    assert_eq!(phase, "Succeeded", "raftctl {args:?} in pod {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_voters_are_placed_3_3_3() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "nine").await;
    let _operator = Operator::start(&ns.name);
    let started = Instant::now();
    create_cluster(
        &client,
        &ns.name,
        "big",
        json!({"replicas": 9, "version": "e2e"}),
    )
    .await;
    let cluster = wait_ready(&client, &ns.name, "big", 9, Duration::from_secs(300)).await;
    println!(
        "9-voter cluster Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sorted_placement(&cluster), vec![3, 3, 3]);
    let status = cluster.status.unwrap();
    assert_eq!(status.node_fault_tolerance, 4);
    assert_eq!(status.zone_fault_tolerance, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_replicas_are_refused_by_the_api_server_with_the_reason() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "even").await;
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    let cluster: RaftCluster = serde_json::from_value(json!({
        "apiVersion": "raft-operator.dev/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {"name": "six"},
        "spec": {"replicas": 6},
    }))
    .unwrap();
    let err = api
        .create(&PostParams::default(), &cluster)
        .await
        .expect_err("replicas: 6 must be refused");
    let text = err.to_string();
    println!("API server said: {text}");
    assert!(
        text.contains(
            "6 voters need 4 for quorum and survive only 2 failures, the same as 5; use 5 or 7"
        ),
        "{text}"
    );
    assert!(text.contains("spec.replicas"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_bootstrap_converges_to_one_cluster() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "restart").await;
    let mut operator = Operator::start(&ns.name);
    create_cluster(
        &client,
        &ns.name,
        "boot",
        json!({"replicas": 3, "version": "e2e"}),
    )
    .await;
    // Kill it as soon as it has created the members, before the cluster has formed.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_until(Duration::from_secs(60), "member pods created", || async {
        pods.list(&ListParams::default().labels("raft-operator.dev/cluster=boot"))
            .await
            .is_ok_and(|l| l.items.len() == 3)
    })
    .await;
    operator.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _operator = Operator::start(&ns.name);
    let cluster = wait_ready(&client, &ns.name, "boot", 3, Duration::from_secs(180)).await;
    let status = cluster.status.unwrap();
    // One cluster: every member reports the same cluster id and the same leader.
    let uid = cluster.metadata.uid.unwrap();
    assert_eq!(status.cluster_id.as_deref(), Some(uid.as_str()));
    for pod in pods
        .list(&ListParams::default().labels("raft-operator.dev/cluster=boot"))
        .await
        .unwrap()
        .items
    {
        let ip = common::pod_ip(&pod);
        let member = raft_operator::admin::member_status(
            &format!("{ip}:7000"),
            raft_operator::admin::ADMIN_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(
            member.cluster_id.as_deref(),
            Some(uid.as_str()),
            "{}",
            pod.name_any()
        );
        assert_eq!(member.voters.len(), 3, "{}", pod.name_any());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_cluster_removes_pods_and_services_and_keeps_volumes() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "delete").await;
    let _operator = Operator::start(&ns.name);
    create_cluster(
        &client,
        &ns.name,
        "gone",
        json!({"replicas": 3, "version": "e2e"}),
    )
    .await;
    wait_ready(&client, &ns.name, "gone", 3, Duration::from_secs(180)).await;
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    api.delete("gone", &DeleteParams::default())
        .await
        .expect("delete");
    let selector = ListParams::default().labels("raft-operator.dev/cluster=gone");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    wait_until(
        Duration::from_secs(90),
        "pods, services and the RaftCluster gone",
        || async {
            pods.list(&selector).await.is_ok_and(|l| l.items.is_empty())
                && services
                    .list(&selector)
                    .await
                    .is_ok_and(|l| l.items.is_empty())
                && api.get_opt("gone").await.is_ok_and(|c| c.is_none())
        },
    )
    .await;
    let volumes: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let kept = volumes.list(&selector).await.unwrap().items.len();
    assert_eq!(
        kept, 3,
        "retention whenDeleted=Retain keeps every member's volume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_is_refused_then_rebuilt_learner_first() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "wiped").await;
    let _operator = Operator::start(&ns.name);
    create_cluster(
        &client,
        &ns.name,
        "wipe",
        json!({"replicas": 3, "version": "e2e"}),
    )
    .await;
    let cluster = wait_ready(&client, &ns.name, "wipe", 3, Duration::from_secs(180)).await;
    let uid = cluster.metadata.uid.clone().unwrap();
    let status = cluster.status.unwrap();
    let leader = status.leader.clone().unwrap();
    let victim = status
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|n| *n != leader)
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let leader_ip = common::pod_ip(&pods.get(&leader).await.unwrap());
    let kv = raft_proto::RaftClient::new(&[format!("{leader_ip}:7000")]).unwrap();
    kv.put(b"before-wipe", b"kept").await.expect("put");

    // Wipe the follower's data: its claim (the sandbox provisioner deletes the volume with it)
    // and its pod. The operator recreates both; the new member starts empty.
    let volumes: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim = format!("data-{victim}");
    volumes
        .delete(&claim, &DeleteParams::default())
        .await
        .expect("delete the claim");
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("delete the pod");
    let started = Instant::now();
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    // The status says the member lost its data and is refused, while the operator rebuilds it.
    let message = poll_for(
        Duration::from_secs(120),
        "the status to report the wiped member",
        || async {
            let c = api.get("wipe").await.ok()?;
            let m = c.status?.members.into_iter().find(|m| m.name == victim)?;
            m.message.filter(|msg| msg.contains("empty data directory"))
        },
    )
    .await;
    println!("status of the wiped member: {message}");
    let cluster = wait_ready(&client, &ns.name, "wipe", 3, Duration::from_secs(180)).await;
    println!(
        "wiped member rebuilt learner-first and voting again after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("wipe"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|m| m.contains("lost its data directory")),
        "an Event names the removal of the wiped member: {reasons:?}"
    );
    // One cluster, same identity everywhere, and the data came back to the rebuilt member.
    let status = cluster.status.unwrap();
    assert_eq!(status.cluster_id.as_deref(), Some(uid.as_str()));
    let ip = common::pod_ip(&pods.get(&victim).await.unwrap());
    let member = raft_operator::admin::member_status(
        &format!("{ip}:7000"),
        raft_operator::admin::ADMIN_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(member.cluster_id.as_deref(), Some(uid.as_str()));
    assert_eq!(member.voters.len(), 3);
    let only_victim = raft_proto::RaftClient::new(&[format!("{ip}:7000")]).unwrap();
    let got = only_victim
        .get(b"before-wipe", raft_proto::Consistency::Stale)
        .await
        .expect("stale read on the rebuilt member");
    assert_eq!(got.value, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operator_replicas_share_one_lease_and_the_standby_takes_over() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "ha").await;
    let flags = [
        "--leader-elect",
        "--leader-election-namespace",
        ns.name.as_str(),
    ];
    let mut first = Operator::start_with(&ns.name, "op-a", &flags, &[]);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns.name);
    let holder = |name: &'static str| {
        let leases = leases.clone();
        async move {
            leases
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find_map(|l| l.spec?.holder_identity)
                .filter(|h| h == name)
        }
    };
    poll_for(Duration::from_secs(30), "op-a to hold the lease", || {
        holder("op-a")
    })
    .await;
    let _second = Operator::start_with(&ns.name, "op-b", &flags, &[]);
    create_cluster(
        &client,
        &ns.name,
        "ha",
        json!({"replicas": 3, "version": "e2e"}),
    )
    .await;
    wait_ready(&client, &ns.name, "ha", 3, Duration::from_secs(180)).await;
    // The standby never took the lease while the holder was alive.
    assert!(holder("op-a").await.is_some(), "op-a still holds the lease");

    // Kill the holder; the standby takes over and carries out a scale-up alone.
    first.kill();
    let killed = Instant::now();
    poll_for(Duration::from_secs(60), "op-b to take the lease", || {
        holder("op-b")
    })
    .await;
    println!(
        "standby took the lease {:.1}s after the holder died",
        killed.elapsed().as_secs_f64()
    );
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    api.patch(
        "ha",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("scale to 5");
    let cluster = wait_ready(&client, &ns.name, "ha", 5, Duration::from_secs(240)).await;
    assert_eq!(sorted_placement(&cluster), vec![2, 2, 1]);
}

/// Runs a sandbox script (`up.sh` / `down.sh`) from this checkout, failing the test if it fails.
fn sandbox_script(script: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox/");
    let status = std::process::Command::new(format!("{path}{script}"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} failed: {status}");
}

/// Issue 14: an operator left running while the API server is taken down and brought up again
/// on fresh storage (the sandbox's etcd is wiped) must see a RaftCluster created afterwards. Its
/// watches cannot resume (their resource versions are too large for the new storage), so they
/// must relist; `/readyz` fails while they are not live; the cluster deleted with the old
/// storage must not make it spin. Takes the whole sandbox down and up (about a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_left_running_across_an_api_server_restart_on_fresh_storage_sees_new_clusters()
{
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "apirestart").await;
    let ns_name = ns.name.clone();
    let operator = Operator::start(&ns.name);
    common::create_cluster(&client, &ns.name, "before", json!({"replicas": 1})).await;
    common::wait_ready(&client, &ns.name, "before", 1, Duration::from_secs(120)).await;
    common::wait_until(Duration::from_secs(30), "operator /readyz 200", || async {
        operator.http_status("/readyz").await == Some(200)
    })
    .await;

    // Down: the API server goes away and its storage with it.
    let down_at = Instant::now();
    sandbox_script("down.sh");
    let readyz_while_down = operator.http_status("/readyz").await;
    println!(
        "sandbox down in {:.1}s; operator /readyz while the API server is gone: {readyz_while_down:?}",
        down_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        readyz_while_down,
        Some(503),
        "/readyz must fail while the operator's watches are not live"
    );
    let up_at = Instant::now();
    sandbox_script("up.sh");
    println!("sandbox up again in {:.1}s", up_at.elapsed().as_secs_f64());
    let log_lines_before = std::fs::read_to_string(&operator.log_path)
        .unwrap_or_default()
        .lines()
        .count();

    // Fresh storage: the namespace, the CRD and the cluster are gone. Recreate the namespace
    // with the same name (the operator watches only it) and a new cluster.
    let client = common::client().await;
    install_crd(&client).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns_name}})).unwrap(),
        )
        .await
        .expect("recreate the namespace");
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns_name);
    common::wait_until(
        Duration::from_secs(60),
        "default service account",
        || async { sas.get_opt("default").await.ok().flatten().is_some() },
    )
    .await;
    let created_at = Instant::now();
    common::create_cluster(&client, &ns_name, "after", json!({"replicas": 1})).await;
    common::wait_ready(&client, &ns_name, "after", 1, Duration::from_secs(120)).await;
    println!(
        "a cluster created after the restart was reconciled to Ready {:.1}s after creation",
        created_at.elapsed().as_secs_f64()
    );
    common::wait_until(
        Duration::from_secs(30),
        "operator /readyz 200 again",
        || async { operator.http_status("/readyz").await == Some(200) },
    )
    .await;
    // No failure storm for the cluster that vanished with the old storage.
    let log = std::fs::read_to_string(&operator.log_path).unwrap_or_default();
    let after_restart: Vec<&str> = log.lines().skip(log_lines_before).collect();
    let failures = after_restart
        .iter()
        .filter(|l| l.contains("reconcile failed"))
        .count();
    let secs = up_at.elapsed().as_secs_f64();
    println!(
        "after the restart: {} log lines, {failures} reconcile failures in {secs:.0}s",
        after_restart.len()
    );
    assert!(
        (failures as f64) < secs,
        "reconcile failures must back off, not spin: {failures} in {secs:.0}s"
    );
}
