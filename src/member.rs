//! A member's identity: its ordinal and everything derived from it (Raft id, pod name, volume
//! name). The one definition the operator uses; nothing else formats or parses these.
//!
//! Ordinal `n` of cluster `demo` is pod `demo-n`, volume `data-demo-n` and Raft node id `n + 1`
//! (openraft ids start at 1 here so that 0 never names a member).

/// Raft node id of a member: its ordinal plus one.
pub fn raft_id(ordinal: u32) -> u64 {
    u64::from(ordinal) + 1
}

/// Ordinal of a Raft node id; `None` for 0 or an id beyond any ordinal.
pub fn ordinal_of_raft_id(id: u64) -> Option<u32> {
    id.checked_sub(1).and_then(|o| u32::try_from(o).ok())
}

/// Name of a member's pod: `<cluster>-<ordinal>`.
pub fn pod_name(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-{ordinal}")
}

/// Ordinal of a member pod name of this cluster (`demo-3` -> 3).
pub fn ordinal_of_pod_name(cluster: &str, pod: &str) -> Option<u32> {
    pod.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

/// Name of a member's PersistentVolumeClaim: `data-<cluster>-<ordinal>`.
pub fn volume_name(cluster: &str, ordinal: u32) -> String {
    format!("data-{}", pod_name(cluster, ordinal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip() {
        for ordinal in [0u32, 1, 8, 42] {
            assert_eq!(ordinal_of_raft_id(raft_id(ordinal)), Some(ordinal));
            assert_eq!(
                ordinal_of_pod_name("demo", &pod_name("demo", ordinal)),
                Some(ordinal)
            );
        }
        assert_eq!(raft_id(0), 1);
        assert_eq!(ordinal_of_raft_id(0), None);
        assert_eq!(pod_name("demo", 3), "demo-3");
        assert_eq!(volume_name("demo", 3), "data-demo-3");
        // Another cluster whose name extends this one's is not this cluster's member.
        assert_eq!(ordinal_of_pod_name("demo", "demo-x-1"), None);
        assert_eq!(ordinal_of_pod_name("demo", "demo2-1"), None);
    }
}
