//! The rules of raftd's test-only network fault layer (see raftd's `faults.rs` for what they
//! mean on the wire), shared by raftd and the playground that sets them over HTTP.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

type NodeId = u64;

/// The faults in force on one node. Serialized as the `/debug/faults` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRules {
    /// Peers this node's messages do not reach.
    #[serde(default)]
    pub drop_to: BTreeSet<NodeId>,
    /// Peers whose messages do not reach this node.
    #[serde(default)]
    pub drop_from: BTreeSet<NodeId>,
    /// Delay, in milliseconds, added to this node's requests to each peer.
    #[serde(default)]
    pub delay_to_ms: BTreeMap<NodeId, u64>,
}

impl FaultRules {
    /// Checks the rules against this node's id: a node cannot cut or delay itself.
    pub fn validate(&self, self_id: NodeId) -> Result<(), String> {
        let named = self
            .drop_to
            .iter()
            .chain(self.drop_from.iter())
            .chain(self.delay_to_ms.keys());
        for id in named {
            if *id == 0 || *id == self_id {
                return Err(format!(
                    "faults: node id {id} is not a peer of node {self_id}"
                ));
            }
        }
        if let Some((id, ms)) = self.delay_to_ms.iter().find(|(_, ms)| **ms > 60_000) {
            return Err(format!(
                "faults: delay_to_ms[{id}] = {ms} exceeds the limit of 60000 ms"
            ));
        }
        Ok(())
    }
}

impl FaultRules {
    /// No fault in force.
    pub fn is_empty(&self) -> bool {
        self.drop_to.is_empty() && self.drop_from.is_empty() && self.delay_to_ms.is_empty()
    }
}
