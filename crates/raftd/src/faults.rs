//! Test-only network faults on the peer transport: drop or delay messages per peer and per
//! direction, since the kernel here has no netem. Off unless `--enable-fault-injection` is given;
//! driven over HTTP (`/debug/faults`) by `raftctl local partition|heal|delay`.
//!
//! The model is a directed link per pair of nodes, configured on one end:
//! - `drop_to X` breaks the link from this node to X: this node's requests to X are not sent,
//!   and its replies to X's requests are lost (X's request is still processed here).
//! - `drop_from X` breaks the link from X to this node: X's requests are refused unprocessed,
//!   and X's replies to this node's requests are lost (the request reached X and was processed).
//! - `delay_to X` holds this node's requests to X for that long before sending them.
//!
//! So a full partition of N from X is `drop_to X` plus `drop_from X` on N alone, which holds
//! even while X restarts (X's fault state is in memory and starts empty).
use std::sync::RwLock;
use std::time::Duration;

pub use raft_proto::faults::FaultRules;

use crate::types::NodeId;

/// The fault layer of one node; inert (every check answers "deliver") when not enabled.
#[derive(Debug, Default)]
pub struct FaultLayer {
    enabled: bool,
    rules: RwLock<FaultRules>,
}

impl FaultLayer {
    pub fn new(enabled: bool) -> FaultLayer {
        FaultLayer {
            enabled,
            rules: RwLock::new(FaultRules::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn rules(&self) -> FaultRules {
        self.rules.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Replaces the rules in force.
    pub fn set(&self, self_id: NodeId, rules: FaultRules) -> Result<(), String> {
        if !self.enabled {
            return Err(
                "fault injection is off on this node: start raftd with --enable-fault-injection"
                    .to_string(),
            );
        }
        rules.validate(self_id)?;
        match self.rules.write() {
            Ok(mut r) => *r = rules,
            Err(p) => *p.into_inner() = rules,
        }
        Ok(())
    }

    fn check(&self, f: impl FnOnce(&FaultRules) -> bool) -> bool {
        self.enabled && self.rules.read().map(|r| f(&r)).unwrap_or(false)
    }

    /// A request from this node to `peer` is not sent.
    pub fn drops_to(&self, peer: NodeId) -> bool {
        self.check(|r| r.drop_to.contains(&peer))
    }

    /// A message from `peer` to this node (a request or a reply) is lost.
    pub fn drops_from(&self, peer: NodeId) -> bool {
        self.check(|r| r.drop_from.contains(&peer))
    }

    /// Delay before a request from this node reaches `peer`.
    pub fn delay_to(&self, peer: NodeId) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        self.rules
            .read()
            .ok()
            .and_then(|r| r.delay_to_ms.get(&peer).copied())
            .map(Duration::from_millis)
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn a_disabled_layer_delivers_everything_and_refuses_rules() {
        let layer = FaultLayer::new(false);
        let rules = FaultRules {
            drop_to: BTreeSet::from([2]),
            ..Default::default()
        };
        let err = layer.set(1, rules).unwrap_err();
        assert!(err.contains("--enable-fault-injection"), "{err}");
        assert!(!layer.drops_to(2));
        assert_eq!(layer.delay_to(2), Duration::ZERO);
    }

    #[test]
    fn rules_apply_per_peer_and_direction() {
        let layer = FaultLayer::new(true);
        layer
            .set(
                1,
                FaultRules {
                    drop_to: BTreeSet::from([2]),
                    drop_from: BTreeSet::from([3]),
                    delay_to_ms: BTreeMap::from([(3, 40)]),
                },
            )
            .unwrap();
        assert!(layer.drops_to(2) && !layer.drops_from(2));
        assert!(layer.drops_from(3) && !layer.drops_to(3));
        assert_eq!(layer.delay_to(3), Duration::from_millis(40));
        assert_eq!(layer.delay_to(2), Duration::ZERO);
    }

    #[test]
    fn a_node_cannot_cut_itself_and_delays_are_bounded() {
        let layer = FaultLayer::new(true);
        let err = layer
            .set(
                1,
                FaultRules {
                    drop_to: BTreeSet::from([1]),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(err.contains("not a peer of node 1"), "{err}");
        let err = layer
            .set(
                1,
                FaultRules {
                    delay_to_ms: BTreeMap::from([(2, 120_000)]),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(err.contains("delay_to_ms[2]"), "{err}");
    }

    #[test]
    fn unknown_fields_in_a_request_are_named() {
        let err = serde_json::from_str::<FaultRules>(r#"{"drop_too":[2]}"#).unwrap_err();
        assert!(err.to_string().contains("drop_too"), "{err}");
    }
}
