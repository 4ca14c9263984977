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
    rolling_upgrade_under_load(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_of_nine_voters_keeps_quorum_and_every_acknowledged_write() {
    rolling_upgrade_under_load(9).await;
}

/// Creates a cluster of `voters`, writes and reads all the time, changes the version, and checks
/// the rollout: one member at a time, the leader last, no acknowledged write lost, no stale read.
async fn rolling_upgrade_under_load(voters: usize) {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, &format!("roll{voters}")).await;
    let mut operator = Operator::start(&ns.name);
    let mut operator_restarted = false;
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    let cluster: RaftCluster = serde_json::from_value(json!({
        "apiVersion": "raft-operator.dev/v1alpha1", "kind": "RaftCluster",
        "metadata": {"name": "roll"},
        "spec": {"replicas": voters, "version": "v1"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &cluster).await.unwrap();
    poll_for(Duration::from_secs(300), "every voter healthy", || async {
        let c = api.get("roll").await.ok()?;
        (c.status.as_ref()?.healthy_voters as usize == voters).then_some(c)
    })
    .await;

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
        let down = voters - now.values().filter(|(_, ready)| *ready).count();
        most_down = most_down.max(down);
        for (name, (revision, _)) in &now {
            if *revision != old_revision && !order.contains(name) {
                order.push(name.clone());
            }
        }
        // Kill the operator in the middle of the 5-voter rollout; a new one must finish it
        // from the status alone, still one member at a time.
        if voters == 5 && order.len() == 2 && !operator_restarted {
            operator.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            operator = Operator::start(&ns.name);
            operator_restarted = true;
            println!("operator killed and restarted with {order:?} replaced");
        }
        let status = api.get("roll").await.unwrap().status.unwrap_or_default();
        assert!(
            !status
                .conditions
                .iter()
                .any(|c| c.type_ == "QuorumLost" && c.status == "True"),
            "quorum lost during the rollout: {status:?}"
        );
        let done = now.len() == voters
            && now.values().all(|(r, ready)| *r != old_revision && *ready)
            && status.healthy_voters as usize == voters;
        if done {
            break;
        }
        assert!(
            rollout_started.elapsed() < Duration::from_secs(600),
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
        "rolling upgrade of {voters} voters: {:.1}s; longest gap between acknowledged writes {} ms; \
         {last_acked} writes acknowledged, {unknown} outcome-unknown, {reads} linearizable reads checked; \
         order {order:?} (leader was {first_leader}); at most {most_down} member(s) down at once",
        rollout_took.as_secs_f64(),
        longest_gap.as_millis()
    );
    assert!(
        final_value >= last_acked && final_value < attempted,
        "final {final_value}, acked {last_acked}"
    );
    assert_eq!(order.len(), voters, "every member replaced once: {order:?}");
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

async fn patch_spec(api: &Api<RaftCluster>, name: &str, spec: serde_json::Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .expect("patch the spec");
}

/// The kubernetes/kubernetes#67250 trap: a bad image leaves the first replaced member
/// crash-looping and the rollout must stop there; the fix (a good image) must heal that member
/// first, not wait on it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_member_is_replaced_first_when_the_spec_is_fixed() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "crash").await;
    let _operator = Operator::start(&ns.name);
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    common::create_cluster(
        &client,
        &ns.name,
        "crash",
        json!({"replicas": 3, "version": "v1"}),
    )
    .await;
    common::wait_ready(&client, &ns.name, "crash", 3, Duration::from_secs(180)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let image_of = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };

    // A broken image (the sandbox maps `raftd-broken` to /bin/false): the first member replaced
    // crash-loops, and the rollout goes no further.
    patch_spec(&api, "crash", json!({"image": "raftd-broken"})).await;
    let broken = poll_for(
        Duration::from_secs(120),
        "a crash-looping member reported",
        || async {
            let c = api.get("crash").await.ok()?;
            c.status?
                .members
                .into_iter()
                .find(|m| {
                    m.message
                        .as_deref()
                        .is_some_and(|msg| msg.contains("crash-looping"))
                })
                .map(|m| m.name)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let on_broken_image: Vec<String> = pods
        .list(&ListParams::default().labels("raft-operator.dev/cluster=crash"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| image_of(p).starts_with("raftd-broken"))
        .map(|p| p.name_any())
        .collect();
    assert_eq!(
        on_broken_image,
        vec![broken.clone()],
        "the rollout stops at the first crash-looping member"
    );
    let c = api.get("crash").await.unwrap();
    assert_eq!(
        common::condition(&c, "Available").map(|c| c.status.as_str()),
        Some("True"),
        "2 of 3 voters keep serving"
    );
    println!(
        "bad image: {broken} crash-loops, the rollout stopped there, the cluster stays Available"
    );

    // The fix: a good image and a new version. The crash-looping member goes first.
    let fixed_at = Instant::now();
    patch_spec(&api, "crash", json!({"image": "raftd", "version": "v2"})).await;
    let mut first_fixed: Option<String> = None;
    loop {
        let list = pods
            .list(&ListParams::default().labels("raft-operator.dev/cluster=crash"))
            .await
            .unwrap()
            .items;
        if first_fixed.is_none()
            && let Some(p) = list.iter().find(|p| image_of(p) == "raftd:v2")
        {
            first_fixed = Some(p.name_any());
        }
        let c = api.get("crash").await.unwrap();
        let all_good = list.len() == 3 && list.iter().all(|p| image_of(p) == "raftd:v2");
        if all_good && c.status.as_ref().is_some_and(|s| s.healthy_voters == 3) {
            break;
        }
        assert!(
            fixed_at.elapsed() < Duration::from_secs(240),
            "the fixed rollout did not complete"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "fixed spec: {} replaced first, all 3 healthy on the good image after {:.1}s",
        first_fixed.as_deref().unwrap_or("?"),
        fixed_at.elapsed().as_secs_f64()
    );
    assert_eq!(first_fixed.as_deref(), Some(broken.as_str()));
}

/// A lagging follower (partitioned from its peers) closes the gate: the rollout reports
/// RolloutBlocked with the member named, replaces nothing else, and resumes by itself once the
/// follower is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_blocks_on_a_lagging_follower_and_resumes_when_it_recovers() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "blocked").await;
    let _operator = Operator::start(&ns.name);
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    common::create_cluster(
        &client,
        &ns.name,
        "blk",
        json!({"replicas": 5, "version": "v1", "rollout": {"gateTimeoutSeconds": 5, "maxLagEntries": 20}}),
    )
    .await;
    let ready = common::wait_ready(&client, &ns.name, "blk", 5, Duration::from_secs(180)).await;
    let leader = ready.status.unwrap().leader.unwrap();
    // The highest-ordinal follower: the rollout takes followers lowest first, so it is not
    // the one replaced first.
    let lagging = (0..5)
        .rev()
        .map(|i| format!("blk-{i}"))
        .find(|n| *n != leader)
        .unwrap();
    let faults = sandbox_node::faults::Faults::running().expect("sandbox faults");
    faults.partition(&ns.name, &lagging).unwrap();
    struct Heal<'a>(&'a sandbox_node::faults::Faults, String, String);
    impl Drop for Heal<'_> {
        fn drop(&mut self) {
            let _ = self.0.heal(&self.1, &self.2);
        }
    }
    let heal = Heal(&faults, ns.name.clone(), lagging.clone());
    // Writes make the partitioned follower fall behind.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let leader_ip = common::pod_ip(&pods.get(&leader).await.unwrap());
    let kv = RaftClient::new(&[format!("{leader_ip}:7000")]).unwrap();
    for i in 0..50 {
        kv.put(format!("k{i}").as_bytes(), b"v").await.expect("put");
    }
    let before = members(&pods, "blk").await;
    patch_spec(&api, "blk", json!({"version": "v2"})).await;
    let blocked = poll_for(Duration::from_secs(60), "RolloutBlocked=True", || async {
        let c = api.get("blk").await.ok()?;
        common::condition(&c, "RolloutBlocked")
            .filter(|c| c.status == "True")
            .map(|c| c.message.clone())
    })
    .await;
    println!("rollout blocked: {blocked}");
    assert!(
        blocked.contains(lagging.as_str()),
        "the reason names {lagging}: {blocked}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    let event_reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.reason.unwrap_or_default())
        .collect();
    assert!(
        event_reasons.iter().any(|r| r == "RolloutBlockedTrue"),
        "an Event for the block: {event_reasons:?}"
    );
    let now = members(&pods, "blk").await;
    assert_eq!(
        now.iter()
            .filter(|(n, (rev, _))| before[*n].0 != *rev)
            .count(),
        0,
        "nothing was replaced while the gate was closed: {now:?}"
    );

    // Heal: the follower catches up and the rollout completes by itself.
    let healed_at = Instant::now();
    drop(heal);
    let old_revision = before.values().next().unwrap().0.clone();
    poll_for(
        Duration::from_secs(300),
        "the rollout to complete",
        || async {
            let now = members(&pods, "blk").await;
            let c = api.get("blk").await.ok()?;
            (now.len() == 5
                && now.values().all(|(r, up)| *r != old_revision && *up)
                && c.status.as_ref()?.healthy_voters == 5)
                .then_some(())
        },
    )
    .await;
    let c = api.get("blk").await.unwrap();
    assert_eq!(
        common::condition(&c, "RolloutBlocked").map(|c| c.status.as_str()),
        Some("False")
    );
    println!(
        "healed: the rollout resumed and completed {:.1}s later",
        healed_at.elapsed().as_secs_f64()
    );
}

/// Sorted voters per zone, from where the member pods actually run.
async fn zone_spread(client: &kube::Client, pods: &Api<Pod>, cluster: &str) -> Vec<u32> {
    let zones = common::node_zones(client).await;
    let mut per_zone: BTreeMap<String, u32> = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={cluster}")))
        .await
        .unwrap()
        .items
    {
        if let Some(zone) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| zones.get(n))
        {
            *per_zone.entry(zone.clone()).or_default() += 1;
        }
    }
    let mut spread: Vec<u32> = per_zone.into_values().collect();
    spread.sort_unstable_by(|a, b| b.cmp(a));
    spread
}

/// Scaling 3 -> 5 -> 7 -> 9 -> 5 under steady writes, with the operator killed and restarted in
/// the middle of one step: the zone spread matches the quorum plan at every step, no acknowledged
/// write is lost, and the voter count never drops by more than one member at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_3_5_7_9_5_under_load_keeps_the_zone_plan_and_every_write() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "scale").await;
    let mut operator = Operator::start(&ns.name);
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    common::create_cluster(
        &client,
        &ns.name,
        "sc",
        json!({"replicas": 3, "version": "v1"}),
    )
    .await;
    common::wait_ready(&client, &ns.name, "sc", 3, Duration::from_secs(180)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &ns.name);
    let ip = services
        .get("sc")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    let kv = Arc::new(RaftClient::new(&[format!("{ip}:7000")]).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kv, stop) = (kv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked: Vec<u64> = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                if kv
                    .put(format!("s-{n:06}").as_bytes(), n.to_string().as_bytes())
                    .await
                    .is_ok()
                {
                    acked.push(n);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    let plan = |n: u32| {
        let mut p = quorum::plan_placement(n, 3);
        p.sort_unstable_by(|a, b| b.cmp(a));
        p
    };
    for (step, target) in [5u32, 7, 9, 5].into_iter().enumerate() {
        let started = Instant::now();
        let before = api.get("sc").await.unwrap().status.unwrap().replicas;
        patch_spec(&api, "sc", json!({"replicas": target})).await;
        if step == 1 {
            // Kill the operator in the middle of the 5 -> 7 step and start a new one.
            poll_for(Duration::from_secs(60), "the first new member", || async {
                pods.get_opt("sc-5").await.ok().flatten().map(|_| ())
            })
            .await;
            operator.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            operator = Operator::start(&ns.name);
            println!("operator killed and restarted during 5 -> 7");
        }
        let mut lowest = before;
        loop {
            let c = api.get("sc").await.unwrap();
            let s = c.status.clone().unwrap_or_default();
            lowest = lowest.min(s.replicas);
            assert!(
                common::condition(&c, "QuorumLost").is_none_or(|c| c.status != "True"),
                "quorum lost while scaling to {target}"
            );
            if s.replicas == target as i32
                && s.healthy_voters == target
                && pods
                    .list(&ListParams::default().labels("raft-operator.dev/cluster=sc"))
                    .await
                    .unwrap()
                    .items
                    .len()
                    == target as usize
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "scaling to {target} did not finish: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let spread = zone_spread(&client, &pods, "sc").await;
        println!(
            "scaled {before} -> {target} in {:.1}s; pods per zone {spread:?}; fewest voters during the step {lowest}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(spread, plan(target), "zone plan for {target}");
        assert!(
            lowest >= before.min(target as i32),
            "voters dropped below {} (lowest {lowest})",
            before.min(target as i32)
        );
    }
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    let listed = kv
        .list(b"s-", 1_000_000, Consistency::Linearizable)
        .await
        .unwrap();
    let present: std::collections::BTreeSet<String> = listed
        .items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.key).into_owned())
        .collect();
    for n in &acked {
        assert!(
            present.contains(&format!("s-{n:06}")),
            "acknowledged write s-{n:06} lost"
        );
    }
    println!(
        "{} acknowledged writes during 3 -> 5 -> 7 -> 9 -> 5, all present",
        acked.len()
    );
    assert!(acked.len() > 100);
}

/// A node drain goes through the eviction API, which honours the Raft-driven
/// PodDisruptionBudget: one voter may go while every voter is healthy; while it is away (its
/// zone's nodes are cordoned, so its replacement cannot start) a second eviction is refused;
/// once it is back and caught up the next eviction is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drain_evicts_one_voter_at_a_time_only_when_safe() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "drain").await;
    let _operator = Operator::start(&ns.name);
    common::create_cluster(
        &client,
        &ns.name,
        "dr",
        json!({"replicas": 5, "version": "v1"}),
    )
    .await;
    let ready = common::wait_ready(&client, &ns.name, "dr", 5, Duration::from_secs(180)).await;
    let leader = ready.status.unwrap().leader.unwrap();
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &ns.name);
    let allowed_now = || {
        let budgets = budgets.clone();
        async move {
            budgets
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .first()?
                .status
                .as_ref()
                .map(|s| s.disruptions_allowed)
        }
    };
    poll_for(
        Duration::from_secs(60),
        "the budget to allow one disruption",
        || async { (allowed_now().await == Some(1)).then_some(()) },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let followers: Vec<String> = (0..5)
        .map(|i| format!("dr-{i}"))
        .filter(|n| *n != leader)
        .collect();
    // Maintenance of a whole zone: cordon every node in the first follower's zone, so its
    // replacement stays Pending (members are pinned to their zone) until the zone returns.
    let first = pods.get(&followers[0]).await.unwrap();
    let node = first
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap();
    let zones = common::node_zones(&client).await;
    let zone = zones[&node].clone();
    let zone_nodes: Vec<String> = zones
        .iter()
        .filter(|(_, z)| **z == zone)
        .map(|(n, _)| n.clone())
        .collect();
    let mut node_of: BTreeMap<String, String> = BTreeMap::new();
    for f in &followers {
        if let Some(n) = pods.get(f).await.ok().and_then(|p| p.spec?.node_name) {
            node_of.insert(f.clone(), n);
        }
    }
    let second = followers
        .iter()
        .skip(1)
        .find(|f| node_of.get(*f).is_some_and(|n| !zone_nodes.contains(n)))
        .cloned()
        .unwrap_or_else(|| followers[1].clone());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let cordon = |unschedulable: bool| {
        let (nodes, zone_nodes) = (nodes.clone(), zone_nodes.clone());
        async move {
            for n in &zone_nodes {
                nodes
                    .patch(
                        n,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"unschedulable": unschedulable}})),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    cordon(true).await;
    /// Uncordons on failure too. A fresh client on a fresh runtime: the test's client is driven
    /// by the test's runtime, which is blocked while this runs.
    struct Uncordon(Vec<String>);
    impl Drop for Uncordon {
        fn drop(&mut self) {
            let nodes = self.0.clone();
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(async move {
                        let Ok(client) = kube::Client::try_default().await else {
                            return;
                        };
                        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
                        for node in nodes {
                            let _ = api
                                .patch(
                                    &node,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"spec": {"unschedulable": false}})),
                                )
                                .await;
                        }
                    })
            })
            .join();
        }
    }
    let _uncordon = Uncordon(zone_nodes.clone());
    // kube-rs retries 429 answers by default (with backoff, for minutes); an eviction refused by
    // the budget must be seen as refused, as `kubectl drain` sees it.
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.default_retry = false;
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), &ns.name);
    let evict = kube::api::EvictParams::default();
    pods.evict(&followers[0], &evict)
        .await
        .expect("the first eviction is allowed while every voter is healthy");
    println!("{zone} cordoned ({zone_nodes:?}); evicted {}", followers[0]);
    // The replacement cannot start; the budget closes; a second eviction is refused.
    poll_for(Duration::from_secs(30), "the budget to close", || async {
        (allowed_now().await == Some(0)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    match pods.evict(&second, &evict).await {
        Err(kube::Error::Api(e)) => {
            println!(
                "second eviction ({second}) refused: {} {}",
                e.code, e.message
            );
            assert_eq!(e.code, 429, "{e:?}");
        }
        other => panic!("a second voter was evicted while one is down: {other:?}"),
    }
    let c = Api::<RaftCluster>::namespaced(client.clone(), &ns.name)
        .get("dr")
        .await
        .unwrap();
    assert_eq!(c.status.unwrap().healthy_voters, 4);

    // The zone returns: the member comes back, catches up, and the next eviction is allowed.
    let back_at = Instant::now();
    cordon(false).await;
    let allowed = poll_for(
        Duration::from_secs(120),
        "the next eviction to be allowed",
        || async {
            pods.evict(&second, &evict)
                .await
                .ok()
                .map(|_| Instant::now())
        },
    )
    .await;
    println!(
        "zone back: the next eviction ({second}) was allowed {:.1}s after uncordon",
        allowed.duration_since(back_at).as_secs_f64()
    );
    common::wait_ready(&client, &ns.name, "dr", 5, Duration::from_secs(180)).await;
    println!(
        "5 healthy voters again {:.1}s after uncordon",
        back_at.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_of_three_shows_within_3s_and_blocks_the_rollout_until_healed() {
    partitioned_followers_block_the_rollout(3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partitioned_followers_of_five_show_within_3s_and_block_the_rollout_until_healed() {
    partitioned_followers_block_the_rollout(5, 2).await;
}

/// Issue 14: an idle cluster of `voters`, `cut` followers partitioned with the sandbox's fault
/// tool (they still answer the operator, which runs on the host). Within 3 s the status counts
/// them unhealthy (node fault tolerance 0, `Degraded` naming them) and the budget allows no
/// eviction; a version change is refused (`RolloutBlocked` naming them) and no pod is deleted;
/// after `heal` the rollout completes by itself.
async fn partitioned_followers_block_the_rollout(voters: u32, cut: usize) {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, &format!("part{voters}")).await;
    let _operator = Operator::start(&ns.name);
    let api: Api<RaftCluster> = Api::namespaced(client.clone(), &ns.name);
    let name = format!("pf{voters}");
    common::create_cluster(
        &client,
        &ns.name,
        &name,
        json!({"replicas": voters, "version": "v1", "rollout": {"gateTimeoutSeconds": 1}}),
    )
    .await;
    let ready =
        common::wait_ready(&client, &ns.name, &name, voters, Duration::from_secs(180)).await;
    let leader = ready.status.unwrap().leader.unwrap();
    // The highest-ordinal followers: the rollout takes followers lowest first, so the gate (not
    // the order) is what must keep their peers from being replaced.
    let victims: Vec<String> = (0..voters)
        .rev()
        .map(|i| format!("{name}-{i}"))
        .filter(|n| *n != leader)
        .take(cut)
        .collect();
    let faults = sandbox_node::faults::Faults::running().expect("sandbox faults");
    struct Heal<'a>(&'a sandbox_node::faults::Faults, String, Vec<String>);
    impl Heal<'_> {
        fn heal(&self) {
            for pod in &self.2 {
                let _ = self.0.heal(&self.1, pod);
            }
        }
    }
    impl Drop for Heal<'_> {
        fn drop(&mut self) {
            self.heal();
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let uids_before: BTreeMap<String, String> = pods
        .list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={name}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    assert_eq!(uids_before.len(), voters as usize);

    let cut_at = Instant::now();
    for victim in &victims {
        faults.partition(&ns.name, victim).unwrap();
    }
    let heal = Heal(&faults, ns.name.clone(), victims.clone());
    let healthy_left = voters - cut as u32;
    let tolerance = healthy_left as i32 - (voters as i32 / 2 + 1);
    // Poll every 100 ms to time it; the bound is the 3 s.
    let degraded_message = loop {
        let c = api.get(&name).await.unwrap();
        let s = c.status.clone().unwrap_or_default();
        let degraded = common::condition(&c, "Degraded")
            .filter(|d| d.status == "True")
            .map(|d| d.message.clone());
        if let Some(message) = degraded
            && s.healthy_voters == healthy_left
            && s.node_fault_tolerance == tolerance
            && victims.iter().all(|v| message.contains(v.as_str()))
        {
            break message;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "no unhealthy status 10 s after the partition: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let noticed = cut_at.elapsed();
    println!(
        "{voters} voters, {cut} partitioned: status {healthy_left} of {voters} healthy, node fault tolerance {tolerance}, after {:.2}s: {degraded_message}",
        noticed.as_secs_f64()
    );
    assert!(
        degraded_message.contains("cut off from the leader"),
        "the reason says what is wrong: {degraded_message}"
    );
    assert!(
        noticed < Duration::from_secs(3),
        "a partitioned follower must show as unhealthy within 3 s, took {noticed:?}"
    );
    let c = api.get(&name).await.unwrap();
    for member in &c.status.as_ref().unwrap().members {
        let expect_healthy = !victims.contains(&member.name);
        assert_eq!(member.healthy, expect_healthy, "{member:?}");
    }
    // The budget the operator applies allows no eviction now.
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(client.clone(), &ns.name);
    poll_for(Duration::from_secs(10), "the budget to close", || async {
        let pdb = budgets.get(&name).await.ok()?;
        (pdb.spec?.min_available
            == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(voters as i32)))
        .then_some(())
    })
    .await;

    // A version change is refused by the gate, naming the partitioned members; no pod goes.
    patch_spec(&api, &name, json!({"version": "v2"})).await;
    let changed_at = Instant::now();
    let blocked = loop {
        let now = pods
            .list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={name}")))
            .await
            .unwrap();
        for p in &now.items {
            assert!(
                p.metadata.deletion_timestamp.is_none()
                    && uids_before.get(&p.name_any()) == p.uid().as_ref(),
                "{} was deleted or replaced while {victims:?} were partitioned",
                p.name_any()
            );
        }
        let c = api.get(&name).await.unwrap();
        if let Some(message) = common::condition(&c, "RolloutBlocked")
            .filter(|b| b.status == "True")
            .map(|b| b.message.clone())
        {
            break message;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(30),
            "no RolloutBlocked 30 s after the version change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "rollout blocked {:.1}s after the version change: {blocked}",
        changed_at.elapsed().as_secs_f64()
    );
    for victim in &victims {
        assert!(
            blocked.contains(victim.as_str()),
            "names {victim}: {blocked}"
        );
    }
    // Still nothing replaced a few observations later (the operator re-plans every second).
    let hold_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < hold_until {
        let listed = pods
            .list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={name}")))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), voters as usize);
        for p in &listed.items {
            assert!(
                p.metadata.deletion_timestamp.is_none()
                    && uids_before.get(&p.name_any()) == p.uid().as_ref(),
                "{} was deleted or replaced while the gate was closed",
                p.name_any()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Heal: the members come back, and the rollout completes by itself.
    let healed_at = Instant::now();
    heal.heal();
    drop(heal);
    // Nothing was replaced, so any pod's revision is the old one.
    let old_revision = pods
        .list(&ListParams::default().labels(&format!("raft-operator.dev/cluster={name}")))
        .await
        .unwrap()
        .items
        .first()
        .and_then(|p| p.labels().get("raft-operator.dev/revision").cloned())
        .unwrap();
    poll_for(
        Duration::from_secs(300),
        "the rollout to complete",
        || async {
            let now = members(&pods, &name).await;
            let c = api.get(&name).await.ok()?;
            let s = c.status.as_ref()?;
            (now.len() == voters as usize
                && now.values().all(|(r, up)| *r != old_revision && *up)
                && s.healthy_voters == voters
                && !common::condition_true(&c, "RolloutBlocked"))
            .then_some(())
        },
    )
    .await;
    println!(
        "healed: the rollout completed {:.1}s later",
        healed_at.elapsed().as_secs_f64()
    );
}
