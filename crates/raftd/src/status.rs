//! Node status (admin Status RPC, HTTP /status, /readyz) and Prometheus metrics text.
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use raft_proto::pb;

use crate::node::RaftNode;

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Builds the admin status of this node.
pub async fn status(node: &RaftNode) -> pb::StatusResponse {
    let core = node.core();
    let raft = &core.raft;
    let m = raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let leader_last = m.last_log_index.unwrap_or(0);
    let is_leader = m.state == ServerState::Leader;
    let healthy_window = node.timing().lease;
    let voters: Vec<u64> = membership.voter_ids().collect();
    let mut members = Vec::new();
    for (id, n) in membership.nodes() {
        let is_voter = voters.contains(id);
        let (match_index, known) = if *id == node.id {
            (leader_last, true)
        } else {
            match m.replication.as_ref().and_then(|r| r.get(id)) {
                Some(Some(l)) => (l.index, true),
                Some(None) => (0, true),
                None => (0, false),
            }
        };
        let since_ack = if *id == node.id {
            Some(Duration::ZERO)
        } else if is_leader {
            m.heartbeat
                .as_ref()
                .and_then(|h| h.get(id).cloned().flatten())
                .map(|t| t.elapsed())
        } else {
            None
        };
        let healthy = if *id == node.id {
            true
        } else if is_leader {
            since_ack.is_some_and(|d| d < healthy_window)
        } else {
            node.tracker
                .reachable(*id, node.timing().reachability_window)
        };
        members.push(pb::Member {
            id: *id,
            role: if is_voter { "voter" } else { "learner" }.to_string(),
            grpc_addr: n.grpc_addr.clone(),
            http_addr: n.http_addr.clone(),
            match_index,
            lag: if is_leader && known {
                leader_last.saturating_sub(match_index)
            } else {
                0
            },
            healthy,
            match_known: is_leader && known,
            millis_since_ack: if is_leader {
                since_ack.map_or(u64::MAX, |d| d.as_millis() as u64)
            } else {
                0
            },
        });
    }
    let since_ack = if is_leader {
        m.last_quorum_acked.as_ref().map(|t| t.elapsed())
    } else {
        None
    };
    let lease_valid = node.lease_state(&core).holds();
    let ident = node.cluster_identity();
    let readiness = node.readiness();
    let (reachable, nvoters, quorum) = node.reachability();
    let leader_grpc_addr = m
        .current_leader
        .and_then(|l| membership.get_node(&l).map(|n| n.grpc_addr.clone()))
        .unwrap_or_default();
    pb::StatusResponse {
        id: node.id,
        role: role(m.state).to_string(),
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        has_leader: m.current_leader.is_some(),
        commit_index: m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
        applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
        last_log_index: leader_last,
        // The term of the last durable entry: what recovery compares between survivors.
        last_log_term: node.last_durable_log_term(),
        members,
        joint_membership: membership.get_joint_config().len() > 1,
        lease_valid,
        cluster_id: ident.cluster_id,
        epoch: ident.epoch,
        initialized: !voters.is_empty(),
        leader_grpc_addr,
        snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
        reachable_voters: reachable as u32,
        voters: nvoters as u32,
        quorum: quorum as u32,
        read_mode: node.args.read_mode.as_str().to_string(),
        millis_since_quorum_ack: since_ack.map(|d| d.as_millis() as u64).unwrap_or(0),
        version: env!("CARGO_PKG_VERSION").to_string(),
        awaiting_join: node.awaiting_join(),
        recent_refusal: node
            .recent_refusal(Duration::from_secs(5))
            .unwrap_or_default(),
        join_mode: node.args.join_mode.as_str().to_string(),
        sm_epoch: core.kv.data.read().map(|sm| sm.epoch).unwrap_or(0),
        recovery_id: ident.recovery_id,
        ready: readiness.is_ready(),
        not_ready_reason: readiness.reason().to_string(),
        draining: node.is_draining(),
    }
}

/// The status as JSON (HTTP /status and `raftctl status --output json` use the same shape).
pub fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "role": s.role,
        "term": s.term,
        "leader": if s.has_leader { serde_json::json!(s.leader_id) } else { serde_json::Value::Null },
        "leader_grpc_addr": s.leader_grpc_addr,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index,
        "members": s.members.iter().map(|m| serde_json::json!({
            "id": m.id,
            "role": m.role,
            "grpc_addr": m.grpc_addr,
            "http_addr": m.http_addr,
            "match_index": m.match_index,
            "lag": m.lag,
            "healthy": m.healthy,
        })).collect::<Vec<_>>(),
        "joint_membership": s.joint_membership,
        "lease_valid": s.lease_valid,
        "cluster_id": s.cluster_id,
        "epoch": s.epoch,
        "initialized": s.initialized,
        "awaiting_join": s.awaiting_join,
        "recent_refusal": s.recent_refusal,
        "join_mode": s.join_mode,
        "last_log_term": s.last_log_term,
        "reachable_voters": s.reachable_voters,
        "voters": s.voters,
        "quorum": s.quorum,
        "read_mode": s.read_mode,
        "millis_since_quorum_ack": s.millis_since_quorum_ack,
        "version": s.version,
        "sm_epoch": s.sm_epoch,
    })
}

/// Prometheus text exposition.
pub fn metrics_text(node: &RaftNode, s: &pb::StatusResponse) -> String {
    let mut out = String::new();
    let c = &node.counters;
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP raftd_{name} {help}\n# TYPE raftd_{name} gauge\nraftd_{name}{{node=\"{}\"}} {v}",
            node.id
        );
    };
    gauge("term", "Current Raft term.", s.term);
    gauge(
        "is_leader",
        "1 if this node is the leader.",
        u64::from(s.role == "leader"),
    );
    gauge(
        "has_leader",
        "1 if a leader is known.",
        u64::from(s.has_leader),
    );
    gauge("commit_index", "Committed log index.", s.commit_index);
    gauge("applied_index", "Applied log index.", s.applied_index);
    gauge("last_log_index", "Last log index.", s.last_log_index);
    gauge("snapshot_index", "Last snapshot index.", s.snapshot_index);
    gauge("voters", "Voters in the membership.", u64::from(s.voters));
    gauge(
        "reachable_voters",
        "Voters reachable from this node (incl. itself).",
        u64::from(s.reachable_voters),
    );
    gauge(
        "lease_valid",
        "1 if this leader's read lease is valid.",
        u64::from(s.lease_valid),
    );
    gauge("epoch", "Cluster epoch.", s.epoch);
    gauge(
        "sm_epoch",
        "Cluster epoch in the replicated state machine (fencing tokens use it).",
        s.sm_epoch,
    );
    let locks_held = node
        .core()
        .kv
        .data
        .read()
        .map(|sm| sm.locks.len() as u64)
        .unwrap_or(0);
    gauge(
        "locks_held",
        "Locks held in this node's applied state.",
        locks_held,
    );
    gauge(
        "lock_waiters",
        "Blocked lock acquires waiting on this node.",
        node.lock_waiters.total() as u64,
    );
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP raftd_{name} {help}\n# TYPE raftd_{name} counter\nraftd_{name}{{node=\"{}\"}} {v}",
            node.id
        );
    };
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter("writes_ok_total", "Writes applied.", ld(&c.writes_ok));
    counter(
        "writes_not_applied_total",
        "Writes rejected before being proposed.",
        ld(&c.writes_not_applied),
    );
    counter(
        "writes_outcome_unknown_total",
        "Writes proposed whose outcome is unknown.",
        ld(&c.writes_unknown),
    );
    counter(
        "reads_lease_total",
        "Reads served under the leader lease.",
        ld(&c.reads_lease),
    );
    counter(
        "reads_read_index_total",
        "Reads served by ReadIndex.",
        ld(&c.reads_read_index),
    );
    counter(
        "reads_stale_total",
        "Stale (local) reads.",
        ld(&c.reads_stale),
    );
    counter(
        "reads_failed_total",
        "Reads that failed.",
        ld(&c.reads_failed),
    );
    counter(
        "step_downs_total",
        "Leader step-downs after quorum loss.",
        ld(&c.step_downs),
    );
    counter(
        "lock_expiries_total",
        "Leases ended by applied expiry entries (leader-proposed).",
        ld(&node.lock_hub.expiries),
    );
    counter(
        "fenced_writes_rejected_total",
        "Fenced puts rejected in apply because the token was not current.",
        ld(&node.lock_hub.fenced_rejected),
    );
    counter(
        "pipeline_batches_total",
        "Batch messages received on pipelined client streams.",
        ld(&c.pipeline_batches),
    );
    counter(
        "pipeline_ops_total",
        "Ops received on pipelined client streams (ops per batch = this / batches).",
        ld(&c.pipeline_ops),
    );
    counter(
        "peer_refusals_total",
        "Peer RPCs refused for a cluster id or epoch mismatch.",
        ld(&c.peer_refusals),
    );
    out
}
