//! Operator metrics in Prometheus text format: reconcile counts, durations and errors, and a
//! fault-tolerance gauge per cluster. Kept in memory only; they describe this process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Metric values, behind one lock (reconciles are few per second).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reconciles: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    duration_seconds_sum: f64,
    duration_count: u64,
    /// (namespace/name) -> (node fault tolerance, zone fault tolerance, quorum lost)
    clusters: BTreeMap<String, (i32, i32, bool)>,
}

impl Metrics {
    /// Count a finished reconcile with the action it took.
    pub fn reconciled(&self, action: &str, took: Duration) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.reconciles.entry(action.to_string()).or_default() += 1;
            inner.duration_seconds_sum += took.as_secs_f64();
            inner.duration_count += 1;
        }
    }

    /// Count a failed reconcile.
    pub fn failed(&self, label: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.errors.entry(label.to_string()).or_default() += 1;
        }
    }

    /// Record a cluster's fault tolerance.
    pub fn cluster(&self, key: &str, node_ft: i32, zone_ft: i32, quorum_lost: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .clusters
                .insert(key.to_string(), (node_ft, zone_ft, quorum_lost));
        }
    }

    /// Forget a deleted cluster.
    pub fn forget(&self, key: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.clusters.remove(key);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let Ok(inner) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP raft_operator_reconciles_total Reconciles finished, by action taken."
        );
        let _ = writeln!(out, "# TYPE raft_operator_reconciles_total counter");
        for (action, n) in &inner.reconciles {
            let _ = writeln!(
                out,
                "raft_operator_reconciles_total{{action=\"{action}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP raft_operator_reconcile_errors_total Reconciles that failed, by cause."
        );
        let _ = writeln!(out, "# TYPE raft_operator_reconcile_errors_total counter");
        for (label, n) in &inner.errors {
            let _ = writeln!(
                out,
                "raft_operator_reconcile_errors_total{{error=\"{label}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP raft_operator_reconcile_duration_seconds Time spent reconciling."
        );
        let _ = writeln!(
            out,
            "# TYPE raft_operator_reconcile_duration_seconds summary"
        );
        let _ = writeln!(
            out,
            "raft_operator_reconcile_duration_seconds_sum {}",
            inner.duration_seconds_sum
        );
        let _ = writeln!(
            out,
            "raft_operator_reconcile_duration_seconds_count {}",
            inner.duration_count
        );
        let _ = writeln!(
            out,
            "# HELP raft_cluster_node_fault_tolerance Further voter failures the cluster survives."
        );
        let _ = writeln!(out, "# TYPE raft_cluster_node_fault_tolerance gauge");
        for (key, (node_ft, _, _)) in &inner.clusters {
            let _ = writeln!(
                out,
                "raft_cluster_node_fault_tolerance{{cluster=\"{key}\"}} {node_ft}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP raft_cluster_zone_fault_tolerance Zones that may fail at once, worst case."
        );
        let _ = writeln!(out, "# TYPE raft_cluster_zone_fault_tolerance gauge");
        for (key, (_, zone_ft, _)) in &inner.clusters {
            let _ = writeln!(
                out,
                "raft_cluster_zone_fault_tolerance{{cluster=\"{key}\"}} {zone_ft}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP raft_cluster_quorum_lost 1 while a majority of voters is unreachable."
        );
        let _ = writeln!(out, "# TYPE raft_cluster_quorum_lost gauge");
        for (key, (_, _, lost)) in &inner.clusters {
            let _ = writeln!(
                out,
                "raft_cluster_quorum_lost{{cluster=\"{key}\"}} {}",
                u8::from(*lost)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.reconciled("wait", Duration::from_millis(20));
        m.reconciled("wait", Duration::from_millis(30));
        m.failed("admin");
        m.cluster("ns/demo", 2, 1, false);
        let text = m.render();
        assert!(
            text.contains("raft_operator_reconciles_total{action=\"wait\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("raft_operator_reconcile_errors_total{error=\"admin\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("raft_cluster_node_fault_tolerance{cluster=\"ns/demo\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("raft_cluster_quorum_lost{cluster=\"ns/demo\"} 0"),
            "{text}"
        );
        m.forget("ns/demo");
        assert!(!m.render().contains("ns/demo"));
    }
}
