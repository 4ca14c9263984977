//! Quorum and zone-placement arithmetic for Raft clusters: pure functions, no I/O.
//!
//! Everything the operator, `raftctl quorum` and the status computation need to know about
//! majorities lives here, so that one tested implementation answers all of them:
//! - [`majority`] and [`tolerated_failures`] for a voter count;
//! - [`plan_placement`]: spread voters over zones as evenly as possible, deterministically;
//! - [`zone_failures_tolerated`] and [`halting_zone_losses`]: which simultaneous zone losses a
//!   placement survives, in the worst case;
//! - [`analyze`]: the whole report for one voter count, as `raftctl quorum` prints it.

use serde::Serialize;

/// Voter counts a `RaftCluster` accepts: odd, so no voter is spent without buying tolerance.
pub const SUPPORTED_VOTER_COUNTS: [u32; 5] = [1, 3, 5, 7, 9];

/// Largest voter count the analysis accepts (for what-if questions beyond what a cluster may use).
pub const MAX_ANALYZED_VOTERS: u32 = 99;

/// Largest zone count the analysis accepts; the zone-loss search enumerates zone subsets.
pub const MAX_ZONES: u32 = 16;

/// Why a quorum question cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// The voter count is zero or beyond [`MAX_ANALYZED_VOTERS`].
    #[error("voters must be between 1 and {MAX_ANALYZED_VOTERS}, got {0}")]
    VotersOutOfRange(u32),
    /// The zone count is zero or beyond [`MAX_ZONES`].
    #[error("zones must be between 1 and {MAX_ZONES}, got {0}")]
    ZonesOutOfRange(u32),
    /// More failed voters than voters.
    #[error("cannot fail {failed} voters in a cluster of {voters}")]
    MoreFailuresThanVoters {
        /// Voters in the cluster.
        voters: u32,
        /// Failed voters asked about.
        failed: u32,
    },
}

/// The number of votes needed to elect a leader or commit an entry: floor(N/2) + 1.
///
/// `voters` of zero has no majority; it returns 1 so that callers never divide a cluster of
/// nothing into a quorum of nothing (the analysis rejects zero voters before asking).
pub fn majority(voters: u32) -> u32 {
    voters / 2 + 1
}

/// How many voters may fail at once while a majority remains: N - majority(N).
pub fn tolerated_failures(voters: u32) -> u32 {
    voters.saturating_sub(majority(voters))
}

/// Whether `failed` voters down out of `voters` still leaves a majority.
pub fn survives_failures(voters: u32, failed: u32) -> bool {
    failed <= voters && voters - failed >= majority(voters)
}

/// Voters per zone for `voters` voters over `zones` zones, largest first.
///
/// As even as possible: every zone gets `voters / zones`, and the first `voters % zones` zones get
/// one more. Deterministic, so the operator and the status agree on the intended spread
/// (5 over 3 zones: [2, 2, 1]; 7: [3, 2, 2]; 9: [3, 3, 3]). Zones beyond `voters` get 0.
pub fn plan_placement(voters: u32, zones: u32) -> Vec<u32> {
    if zones == 0 {
        return Vec::new();
    }
    let base = voters / zones;
    let extra = voters % zones;
    (0..zones)
        .map(|zone| base + u32::from(zone < extra))
        .collect()
}

/// The largest `k` such that losing ANY `k` zones at once still leaves a majority of `voters`.
///
/// `voters_up_per_zone` holds the voters currently up in each zone (any order); `voters` is the
/// configured voter count, whose majority is what must remain. The worst case loses the fullest
/// zones first, so checking the `k` largest entries is enough.
pub fn zone_failures_tolerated(voters_up_per_zone: &[u32], voters: u32) -> u32 {
    let mut sorted: Vec<u32> = voters_up_per_zone.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let up: u32 = sorted.iter().sum();
    let need = majority(voters);
    if up < need {
        return 0;
    }
    let mut lost = 0u32;
    let mut tolerated = 0u32;
    for zone_voters in sorted {
        lost += zone_voters;
        if up - lost >= need {
            tolerated += 1;
        } else {
            break;
        }
    }
    tolerated
}

/// The number of further voter failures the cluster survives, given how many voters are up now.
/// Zero when the cluster already has no quorum.
pub fn node_failures_tolerated(voters_up: u32, voters: u32) -> u32 {
    voters_up.saturating_sub(majority(voters))
}

/// The smallest sets of zones whose simultaneous loss halts the cluster (leaves no majority).
///
/// Each set is a list of zone indices into `placement`, ascending; sets are minimal (no proper
/// subset of one also halts) and listed in lexicographic order. Empty when no loss of zones can
/// halt the cluster, which only happens when there are no voters at all.
pub fn halting_zone_losses(placement: &[u32], voters: u32) -> Vec<Vec<usize>> {
    let zones = placement.len();
    if zones == 0 || zones > MAX_ZONES as usize {
        return Vec::new();
    }
    let need = majority(voters);
    let up: u32 = placement.iter().sum();
    let halts = |mask: u32| -> bool {
        let lost: u32 = (0..zones)
            .filter(|z| mask & (1 << z) != 0)
            .map(|z| placement[z])
            .sum();
        up.saturating_sub(lost) < need
    };
    let mut minimal: Vec<u32> = Vec::new();
    let mut masks: Vec<u32> = (1u32..(1 << zones)).collect();
    masks.sort_by_key(|m| (m.count_ones(), *m));
    for mask in masks {
        if minimal.iter().any(|smaller| mask & smaller == *smaller) {
            continue;
        }
        if halts(mask) {
            minimal.push(mask);
        }
    }
    let mut sets: Vec<Vec<usize>> = minimal
        .into_iter()
        .map(|mask| (0..zones).filter(|z| mask & (1 << z) != 0).collect())
        .collect();
    sets.sort();
    sets
}

/// How an even voter count compares with the odd count just below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvenVoterComparison {
    /// The even count asked about.
    pub even_voters: u32,
    /// The odd count one below, which tolerates the same failures.
    pub odd_voters: u32,
    /// Majority of the even count (one more than the odd count's).
    pub even_quorum: u32,
    /// Majority of the odd count.
    pub odd_quorum: u32,
    /// Failures both tolerate.
    pub tolerated_failures: u32,
}

impl EvenVoterComparison {
    /// A one-line explanation, the same text the API server gives for an even `replicas`.
    pub fn explanation(&self) -> String {
        format!(
            "{} voters need {} for quorum and survive only {} failures, the same as {}; use {} or {}",
            self.even_voters,
            self.even_quorum,
            self.tolerated_failures,
            self.odd_voters,
            self.odd_voters,
            self.even_voters + 1
        )
    }
}

/// For an even, non-zero voter count, how it compares with the odd count below; `None` if odd.
pub fn compare_with_odd_below(voters: u32) -> Option<EvenVoterComparison> {
    if voters == 0 || voters % 2 == 1 {
        return None;
    }
    let odd = voters - 1;
    Some(EvenVoterComparison {
        even_voters: voters,
        odd_voters: odd,
        even_quorum: majority(voters),
        odd_quorum: majority(odd),
        tolerated_failures: tolerated_failures(voters),
    })
}

/// Everything `raftctl quorum` reports for one voter count over some zones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuorumReport {
    /// Voters in the cluster.
    pub voters: u32,
    /// Zones the voters are spread over.
    pub zones: u32,
    /// Votes needed to elect a leader or commit: floor(N/2) + 1.
    pub quorum: u32,
    /// Voters that may fail at once with the cluster still making progress.
    pub tolerated_failures: u32,
    /// Voters per zone, largest first.
    pub placement: Vec<u32>,
    /// The most zones whose simultaneous loss, in the worst case, still leaves a quorum.
    pub zone_failures_tolerated: u32,
    /// Minimal sets of zones (indices into `placement`) whose loss halts the cluster.
    pub halting_zone_losses: Vec<Vec<usize>>,
    /// Whether a `RaftCluster` accepts this voter count.
    pub supported: bool,
    /// Present for even counts: the odd count below tolerates as many failures with fewer voters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub even_comparison: Option<EvenVoterComparison>,
    /// Present when asked about a number of failed voters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<u32>,
    /// Whether `failed` failed voters leave a quorum; present with `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survives: Option<bool>,
}

/// Analyze `voters` voters over `zones` zones, optionally with `failed` voters down.
pub fn analyze(voters: u32, zones: u32, failed: Option<u32>) -> Result<QuorumReport, QuorumError> {
    if voters == 0 || voters > MAX_ANALYZED_VOTERS {
        return Err(QuorumError::VotersOutOfRange(voters));
    }
    if zones == 0 || zones > MAX_ZONES {
        return Err(QuorumError::ZonesOutOfRange(zones));
    }
    if let Some(failed) = failed
        && failed > voters
    {
        return Err(QuorumError::MoreFailuresThanVoters { voters, failed });
    }
    let placement = plan_placement(voters, zones);
    Ok(QuorumReport {
        voters,
        zones,
        quorum: majority(voters),
        tolerated_failures: tolerated_failures(voters),
        zone_failures_tolerated: zone_failures_tolerated(&placement, voters),
        halting_zone_losses: halting_zone_losses(&placement, voters),
        placement,
        supported: SUPPORTED_VOTER_COUNTS.contains(&voters),
        even_comparison: compare_with_odd_below(voters),
        failed,
        survives: failed.map(|failed| survives_failures(voters, failed)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn majority_and_tolerance_table() {
        // (voters, majority, tolerated)
        let table = [
            (1, 1, 0),
            (2, 2, 0),
            (3, 2, 1),
            (4, 3, 1),
            (5, 3, 2),
            (6, 4, 2),
            (7, 4, 3),
            (8, 5, 3),
            (9, 5, 4),
        ];
        for (voters, want_majority, want_tolerated) in table {
            assert_eq!(majority(voters), want_majority, "majority({voters})");
            assert_eq!(
                tolerated_failures(voters),
                want_tolerated,
                "tolerated({voters})"
            );
        }
    }

    #[test]
    fn placement_table() {
        let table: [(u32, u32, &[u32]); 9] = [
            (5, 3, &[2, 2, 1]),
            (7, 3, &[3, 2, 2]),
            (9, 3, &[3, 3, 3]),
            (3, 3, &[1, 1, 1]),
            (1, 3, &[1, 0, 0]),
            (5, 2, &[3, 2]),
            (5, 1, &[5]),
            (9, 4, &[3, 2, 2, 2]),
            (7, 5, &[2, 2, 1, 1, 1]),
        ];
        for (voters, zones, want) in table {
            assert_eq!(plan_placement(voters, zones), want, "{voters} over {zones}");
        }
    }

    #[test]
    fn zone_tolerance_for_the_first_exercise() {
        // 5/7/9 over 3 zones each survive the loss of any one zone, never two.
        for voters in [5, 7, 9] {
            let placement = plan_placement(voters, 3);
            assert_eq!(zone_failures_tolerated(&placement, voters), 1, "{voters}");
        }
        // 9 voters 3/3/3: losing any two zones leaves 3 < 5, so every pair halts.
        assert_eq!(
            halting_zone_losses(&[3, 3, 3], 9),
            vec![vec![0, 1], vec![0, 2], vec![1, 2]]
        );
        // 5 voters 2/2/1: losing the two 2-voter zones halts, and so does any pair.
        assert_eq!(
            halting_zone_losses(&[2, 2, 1], 5),
            vec![vec![0, 1], vec![0, 2], vec![1, 2]]
        );
    }

    #[test]
    fn a_zone_holding_a_majority_tolerates_no_zone_loss() {
        // 5 voters over 2 zones: 3/2. Losing the 3-voter zone halts the cluster.
        assert_eq!(zone_failures_tolerated(&[3, 2], 5), 0);
        assert_eq!(halting_zone_losses(&[3, 2], 5), vec![vec![0]]);
        // All voters in one zone.
        assert_eq!(zone_failures_tolerated(&[5], 5), 0);
    }

    #[test]
    fn actual_placement_with_voters_down() {
        // 5 voters, 2/2/1 planned, but one voter of zone 0 is down: 1/2/1 up.
        // Losing zone 1 leaves 2 < 3: no zone loss is tolerated any more.
        assert_eq!(zone_failures_tolerated(&[1, 2, 1], 5), 0);
        assert_eq!(node_failures_tolerated(4, 5), 1);
        // No quorum at all.
        assert_eq!(zone_failures_tolerated(&[1, 1, 0], 5), 0);
        assert_eq!(node_failures_tolerated(2, 5), 0);
    }

    #[test]
    fn six_versus_five_with_three_failed() {
        // The exercise: both halt when 3 fail; 6 buys nothing over 5.
        let six = analyze(6, 3, Some(3)).unwrap();
        let five = analyze(5, 3, Some(3)).unwrap();
        assert_eq!(six.survives, Some(false));
        assert_eq!(five.survives, Some(false));
        assert_eq!(six.tolerated_failures, five.tolerated_failures);
        assert_eq!(six.quorum, 4);
        assert!(!six.supported);
        let cmp = six.even_comparison.unwrap();
        assert_eq!(
            cmp.explanation(),
            "6 voters need 4 for quorum and survive only 2 failures, the same as 5; use 5 or 7"
        );
        assert!(five.even_comparison.is_none());
    }

    #[test]
    fn bad_input_is_rejected_with_reason() {
        assert_eq!(analyze(0, 3, None), Err(QuorumError::VotersOutOfRange(0)));
        assert_eq!(
            analyze(100, 3, None),
            Err(QuorumError::VotersOutOfRange(100))
        );
        assert_eq!(analyze(5, 0, None), Err(QuorumError::ZonesOutOfRange(0)));
        assert_eq!(
            analyze(5, 3, Some(6)),
            Err(QuorumError::MoreFailuresThanVoters {
                voters: 5,
                failed: 6
            })
        );
        assert_eq!(
            analyze(0, 3, None).unwrap_err().to_string(),
            "voters must be between 1 and 99, got 0"
        );
    }

    #[test]
    fn json_shape_for_scripts() {
        let report = analyze(5, 3, Some(2)).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["voters"], 5);
        assert_eq!(json["zones"], 3);
        assert_eq!(json["quorum"], 3);
        assert_eq!(json["tolerated_failures"], 2);
        assert_eq!(json["placement"], serde_json::json!([2, 2, 1]));
        assert_eq!(json["zone_failures_tolerated"], 1);
        assert_eq!(json["survives"], true);
        // Without --fail there is no `survives` key at all.
        let json = serde_json::to_value(analyze(5, 3, None).unwrap()).unwrap();
        assert!(json.get("survives").is_none());
    }

    /// Brute force over every subset of zones: the reference the fast functions must match.
    fn brute_force_zone_tolerance(placement: &[u32], voters: u32) -> u32 {
        let zones = placement.len();
        let up: u32 = placement.iter().sum();
        let mut tolerated = 0;
        for k in 1..=zones {
            let all_survive = (0u32..(1 << zones))
                .filter(|m| m.count_ones() as usize == k)
                .all(|m| {
                    let lost: u32 = (0..zones)
                        .filter(|z| m & (1 << z) != 0)
                        .map(|z| placement[z])
                        .sum();
                    up - lost >= majority(voters)
                });
            if all_survive && up >= majority(voters) {
                tolerated = k as u32;
            } else {
                break;
            }
        }
        tolerated
    }

    proptest! {
        #[test]
        fn majority_is_a_strict_majority(voters in 1u32..=MAX_ANALYZED_VOTERS) {
            let m = majority(voters);
            // Two majorities always overlap, and a majority never needs every voter beyond one.
            prop_assert!(2 * m > voters);
            prop_assert!(2 * (m - 1) <= voters);
            prop_assert_eq!(tolerated_failures(voters) + m, voters);
        }

        #[test]
        fn even_counts_buy_no_tolerance(half in 1u32..=49) {
            let even = 2 * half;
            prop_assert_eq!(tolerated_failures(even), tolerated_failures(even - 1));
            prop_assert_eq!(majority(even), majority(even - 1) + 1);
        }

        #[test]
        fn placement_is_even_complete_and_sorted(voters in 0u32..=MAX_ANALYZED_VOTERS, zones in 1u32..=MAX_ZONES) {
            let placement = plan_placement(voters, zones);
            prop_assert_eq!(placement.len() as u32, zones);
            prop_assert_eq!(placement.iter().sum::<u32>(), voters);
            let max = *placement.iter().max().unwrap();
            let min = *placement.iter().min().unwrap();
            prop_assert!(max - min <= 1);
            prop_assert!(placement.windows(2).all(|w| w[0] >= w[1]));
            prop_assert_eq!(placement.clone(), plan_placement(voters, zones));
        }

        #[test]
        fn zone_tolerance_matches_brute_force(placement in proptest::collection::vec(0u32..6, 1..7), extra_down in 0u32..4) {
            let voters = placement.iter().sum::<u32>() + extra_down;
            prop_assume!(voters > 0);
            prop_assert_eq!(
                zone_failures_tolerated(&placement, voters),
                brute_force_zone_tolerance(&placement, voters)
            );
        }

        #[test]
        fn halting_sets_halt_and_are_minimal(placement in proptest::collection::vec(0u32..6, 1..6)) {
            let voters: u32 = placement.iter().sum();
            prop_assume!(voters > 0);
            let need = majority(voters);
            let remaining = |set: &[usize]| voters - set.iter().map(|&z| placement[z]).sum::<u32>();
            let sets = halting_zone_losses(&placement, voters);
            for set in &sets {
                prop_assert!(remaining(set) < need, "{:?} should halt", set);
                for skip in 0..set.len() {
                    let smaller: Vec<usize> = set.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, z)| *z).collect();
                    prop_assert!(remaining(&smaller) >= need, "{:?} is not minimal", set);
                }
            }
            // The smallest halting set has one more zone than the tolerated count.
            let tolerated = zone_failures_tolerated(&placement, voters) as usize;
            let smallest = sets.iter().map(Vec::len).min().unwrap();
            prop_assert_eq!(smallest, tolerated + 1);
        }

        #[test]
        fn survives_agrees_with_tolerance(voters in 1u32..=MAX_ANALYZED_VOTERS, failed in 0u32..=MAX_ANALYZED_VOTERS) {
            prop_assume!(failed <= voters);
            prop_assert_eq!(survives_failures(voters, failed), failed <= tolerated_failures(voters));
        }
    }
}
