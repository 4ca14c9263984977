//! End-to-end test of a quorum-safe rolling upgrade (issue 7) in the sandbox, under steady
//! writes and reads: one member at a time, the leader last, no acknowledged write lost, reads
//! never older than the last acknowledged write, and the longest write gap printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Operator, TestNamespace, client, install_crd, poll_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use raft_operator::crd::RaftCluster;
use raft_proto::{Consistency, RaftClient};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Revision label of every member pod and whether its raftd process is up (container running,
/// pod not being deleted), by name. Readiness is not used: raftd reports not-ready for a moment
/// whenever the cluster has no leader, e.g. during the leadership transfer, without being down.
async fn members(pods: &Api<Pod>, cluster: &str) -> BTreeMap<String, (String, bool)> {
    pods.list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={cluster}")))
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|p| {
                    (
                        p.name_any(),
                        (
                            p.labels()
                                .get("raft-operator.dev/revision")
                                .cloned()
                                .unwrap_or_default(),
                            p.metadata.deletion_timestamp.is_none()
                                && p.status
                                    .as_ref()
                                    .and_then(|s| s.container_statuses.as_ref())
                                    .is_some_and(|cs| {
                                        cs.iter().all(|c| {
                                            c.state.as_ref().is_some_and(|st| st.running.is_some())
                                        })
                                    }),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_of_five_voters_keeps_quorum_and_every_acknowledged_write() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "roll").await;
    let _operator = Operator::start(&ns.name);
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    let cluster: RaftCluster = serde_json::from_value(json!({
        "apiVersion": "raft-operator.dev/v1alpha1", "kind": "RaftCluster",
        "metadata": {"name": "roll"},
        "spec": {"replicas": 5, "version": "v1"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
    let ready = poll_for(Duration::from_secs(240), "5 healthy voters", || async {
        let c = api.get("roll").await.ok()?;
        (c.status.as_ref()?.healthy_voters == 5).then_some(c)
    })
    .await;
    let _ = ready;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // Through the client Service: member pods get new IPs when they are replaced, the Service's
    // ClusterIP stays, and a member that follows forwards to the leader.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &ns.name);
    let cluster_ip = services
        .get("roll")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("client Service has a ClusterIP");
    let endpoints = vec![format!("{cluster_ip}:7000")];

    // A sequential writer of one counter, and a reader checking reads are never older than the
    // last write acknowledged before the read began.
    let kv = Arc::new(RaftClient::new(&endpoints).unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kv, acked, stop) = (kv.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut longest_gap = Duration::ZERO;
            let mut last_ack = Instant::now();
            let mut unknown = 0u32;
            let mut next = 1u64;
            while !stop.load(Ordering::SeqCst) {
                match kv.put(b"counter", next.to_string().as_bytes()).await {
                    Ok(_) => {
                        acked.store(next, Ordering::SeqCst);
                        longest_gap = longest_gap.max(last_ack.elapsed());
                        last_ack = Instant::now();
                        next += 1;
                    }
                    Err(e) if e.not_applied() => {}
                    Err(_) => {
                        // Outcome unknown: the value may or may not be there; move on so a later
                        // acknowledged value supersedes it.
                        unknown += 1;
                        next += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (longest_gap, unknown, next)
        })
    };
    let reader = {
        let (kv, acked, stop) = (kv.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let floor = acked.load(Ordering::SeqCst);
                if let Ok(r) = kv.get(b"counter", Consistency::Linearizable).await {
                    let seen: u64 = String::from_utf8_lossy(&r.value).parse().unwrap_or(0);
                    assert!(
                        seen >= floor,
                        "stale linearizable read: saw {seen} after {floor} was acknowledged"
                    );
                    reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            reads
        })
    };

    // Roll.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_leader = api
        .get("roll")
        .await
        .unwrap()
        .status
        .unwrap()
        .leader
        .unwrap();
    let rollout_started = Instant::now();
    api.patch(
        "roll",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"version": "v2"}})),
    )
    .await
    .unwrap();
    let before = members(&pods, "roll").await;
    let old_revision = before.values().next().unwrap().0.clone();
    let mut order: Vec<String> = Vec::new();
    let mut most_down = 0usize;
    loop {
        let now = members(&pods, "roll").await;
        let down = 5 - now.values().filter(|(_, ready)| *ready).count();
        most_down = most_down.max(down);
        for (name, (revision, _)) in &now {
            if *revision != old_revision && !order.contains(name) {
                order.push(name.clone());
            }
        }
        let status = api.get("roll").await.unwrap().status.unwrap_or_default();
        assert!(
            !status
                .conditions
                .iter()
                .any(|c| c.type_ == "QuorumLost" && c.status == "True"),
            "quorum lost during the rollout: {status:?}"
        );
        let done = now.len() == 5
            && now.values().all(|(r, ready)| *r != old_revision && *ready)
            && status.healthy_voters == 5;
        if done {
            break;
        }
        assert!(
            rollout_started.elapsed() < Duration::from_secs(300),
            "rollout did not finish: {now:?} {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rollout_took = rollout_started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let (longest_gap, unknown, attempted) = writer.await.unwrap();
    let reads = reader.await.unwrap();

    // Every acknowledged write survived: the counter is at least the last acknowledged value.
    let last_acked = acked.load(Ordering::SeqCst);
    let final_value: u64 = String::from_utf8_lossy(
        &kv.get(b"counter", Consistency::Linearizable)
            .await
            .unwrap()
            .value,
    )
    .parse()
    .unwrap();
    println!(
        "rolling upgrade of 5 voters: {:.1}s; longest gap between acknowledged writes {} ms; \
         {last_acked} writes acknowledged, {unknown} outcome-unknown, {reads} linearizable reads checked; \
         order {order:?} (leader was {first_leader}); at most {most_down} member(s) down at once",
        rollout_took.as_secs_f64(),
        longest_gap.as_millis()
    );
    assert!(
        final_value >= last_acked && final_value < attempted,
        "final {final_value}, acked {last_acked}"
    );
    assert_eq!(order.len(), 5, "every member replaced once: {order:?}");
    assert_eq!(
        order.last(),
        Some(&first_leader),
        "the leader goes last: {order:?}"
    );
    assert!(
        most_down <= 1,
        "at most one member down at a time, saw {most_down}"
    );
}
