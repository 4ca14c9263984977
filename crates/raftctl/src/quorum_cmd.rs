//! `raftctl quorum`: answers "how many voters do I need, and what can I lose?" from the pure
//! `quorum` crate, as a table for people or JSON for scripts.

use crate::output::{OutputFormat, print_json, render_table};
use anyhow::Context;
use quorum::{QuorumReport, analyze};

/// Arguments of `raftctl quorum`.
#[derive(Debug, clap::Args)]
pub struct QuorumArgs {
    /// Voter counts to analyze (e.g. `5 7 9`).
    #[arg(required = true, value_name = "VOTERS")]
    voters: Vec<u32>,

    /// Availability zones the voters are spread over.
    #[arg(long, default_value_t = 3)]
    zones: u32,

    /// Also say whether this many failed voters leave a quorum.
    #[arg(long, value_name = "F")]
    fail: Option<u32>,
}

/// Analyze every requested voter count and print the reports.
pub fn run(args: &QuorumArgs, output: OutputFormat) -> anyhow::Result<()> {
    let reports = args
        .voters
        .iter()
        .map(|&voters| {
            analyze(voters, args.zones, args.fail).with_context(|| {
                format!("cannot analyze {voters} voters over {} zones", args.zones)
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    match output {
        OutputFormat::Json => print_json(&reports),
        OutputFormat::Table => {
            println!("{}", render_reports(&reports, args.fail));
            Ok(())
        }
    }
}

/// The table and the notes under it, one line of explanation per report.
fn render_reports(reports: &[QuorumReport], fail: Option<u32>) -> String {
    let mut header = vec![
        "VOTERS",
        "ZONES",
        "QUORUM",
        "TOLERATES",
        "PLACEMENT",
        "ZONE-LOSSES-TOLERATED",
    ];
    let survives_header = fail.map(|f| format!("SURVIVES-{f}-FAILED"));
    if let Some(h) = &survives_header {
        header.push(h);
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let mut row = vec![
                r.voters.to_string(),
                r.zones.to_string(),
                r.quorum.to_string(),
                format!("{} failures", r.tolerated_failures),
                join_placement(&r.placement),
                r.zone_failures_tolerated.to_string(),
            ];
            if let Some(survives) = r.survives {
                row.push(if survives { "yes" } else { "no (halts)" }.to_string());
            }
            row
        })
        .collect();
    let mut out = render_table(&header, &rows);
    out.push('\n');
    for r in reports {
        out.push('\n');
        out.push_str(&explain(r));
    }
    out
}

fn join_placement(placement: &[u32]) -> String {
    placement
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// One paragraph per voter count: the arithmetic, the worst zone loss survived, the first that halts.
fn explain(r: &QuorumReport) -> String {
    let mut lines = vec![format!(
        "{} voters: quorum = floor({}/2)+1 = {}; up to {} may fail.",
        r.voters, r.voters, r.quorum, r.tolerated_failures
    )];
    let survived_loss: u32 = r
        .placement
        .iter()
        .take(r.zone_failures_tolerated as usize)
        .sum();
    if r.zone_failures_tolerated > 0 {
        lines.push(format!(
            "  placed {} over {} zones: survives the loss of any {} zone(s) (worst case {} voters lost, {} left >= {}).",
            join_placement(&r.placement),
            r.zones,
            r.zone_failures_tolerated,
            survived_loss,
            r.voters - survived_loss,
            r.quorum
        ));
    } else {
        lines.push(format!(
            "  placed {} over {} zones: the loss of a single zone can halt it.",
            join_placement(&r.placement),
            r.zones
        ));
    }
    if let Some(smallest) = r.halting_zone_losses.iter().map(Vec::len).min() {
        let lost: u32 = r.placement.iter().take(smallest).sum();
        lines.push(format!(
            "  halts when {} zone(s) fail together in the worst case ({} voters lost, {} left < {}).",
            smallest,
            lost,
            r.voters - lost.min(r.voters),
            r.quorum
        ));
    }
    if let Some(cmp) = &r.even_comparison {
        lines.push(format!("  even count: {}.", cmp.explanation()));
    } else if !r.supported {
        lines.push("  not a voter count a RaftCluster accepts (1, 3, 5, 7 or 9).".to_string());
    }
    if let (Some(failed), Some(survives)) = (r.failed, r.survives) {
        let left = r.voters - failed;
        lines.push(if survives {
            format!("  with {failed} failed: {left} left >= {} needed, keeps working.", r.quorum)
        } else {
            format!(
                "  with {failed} failed: {left} left < {} needed, no leader can be elected and writes stop.",
                r.quorum
            )
        });
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn table_names_every_count_and_explains_even_counts() {
        let reports: Vec<_> = [5, 6]
            .iter()
            .map(|&v| analyze(v, 3, Some(3)).unwrap())
            .collect();
        let text = render_reports(&reports, Some(3));
        assert!(text.contains("SURVIVES-3-FAILED"), "{text}");
        assert!(text.contains("2/2/1"), "{text}");
        assert!(text.contains("6 voters need 4 for quorum"), "{text}");
        assert!(text.contains("with 3 failed: 2 left < 3 needed"), "{text}");
        assert!(text.contains("with 3 failed: 3 left < 4 needed"), "{text}");
    }

    #[test]
    fn nine_over_three_zones_names_the_halting_loss() {
        let text = explain(&analyze(9, 3, None).unwrap());
        assert!(
            text.contains(
                "survives the loss of any 1 zone(s) (worst case 3 voters lost, 6 left >= 5)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "halts when 2 zone(s) fail together in the worst case (6 voters lost, 3 left < 5)"
            ),
            "{text}"
        );
    }
}
