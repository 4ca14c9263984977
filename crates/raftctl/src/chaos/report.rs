//! What a chaos run leaves behind: `summary.json` (verdict, counts, latency percentiles by op
//! and level, the longest gap between acknowledged writes) and `timeline.svg` (the leader over
//! time, the fault windows, every client's operations coloured by outcome, the write gaps).
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::history::{FaultWindow, HistoryOp, LeaderSample, Outcome};

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * q).round() as usize]
        }
    };
    Percentiles {
        count: v.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// Latency of the acknowledged operations, by op (and level for reads).
pub fn latency_by_op(history: &[HistoryOp]) -> BTreeMap<String, Percentiles> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.outcome == Outcome::Ok) {
        let name = match op.level {
            Some(l) => format!("{} {l}", op.op),
            None => op.op.to_string(),
        };
        by.entry(name).or_default().push(op.latency_ms());
    }
    by.into_iter().map(|(k, v)| (k, percentiles(v))).collect()
}

/// The longest time with no write acknowledged, and when it started (ns since the run began).
pub fn longest_write_gap(history: &[HistoryOp]) -> (i64, i64) {
    let mut acks: Vec<i64> = history
        .iter()
        .filter(|o| o.is_write() && o.outcome == Outcome::Ok)
        .map(|o| o.complete_ns)
        .collect();
    acks.sort_unstable();
    acks.windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or((0, 0))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The timeline picture.
pub fn timeline_svg(
    title: &str,
    history: &[HistoryOp],
    faults: &[FaultWindow],
    leaders: &[LeaderSample],
    clients: usize,
) -> String {
    let end_ns = history
        .iter()
        .map(|o| o.complete_ns)
        .chain(faults.iter().map(|f| f.end_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let (left, width, lane) = (110.0, 1100.0, 14.0);
    let leader_top = 40.0;
    let faults_top = leader_top + 30.0;
    let fault_rows = faults.len().clamp(1, 12);
    let clients_top = faults_top + fault_rows as f64 * 14.0 + 20.0;
    let height = clients_top + clients as f64 * lane + 80.0;
    let x = |ns: i64| left + width * ns as f64 / end_ns as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="monospace" font-size="11">"#,
        left + width + 20.0
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    // Seconds axis.
    let secs = end_ns / 1_000_000_000;
    for s in 0..=secs {
        let xs = x(s * 1_000_000_000);
        let _ = writeln!(
            svg,
            r##"<line x1="{xs}" y1="{leader_top}" x2="{xs}" y2="{}" stroke="#eee"/><text x="{xs}" y="{}" fill="#888">{s}s</text>"##,
            height - 40.0,
            height - 28.0
        );
    }
    // The leader per sample.
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
        "#bab0ac",
    ];
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}">leader</text>"#,
        leader_top + 12.0
    );
    let mut previous: Option<Option<u64>> = None;
    for w in leaders.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if previous != Some(a.leader) {
            if let Some(l) = a.leader {
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{}" font-size="9">{l}</text>"#,
                    x(a.at_ns) + 2.0,
                    leader_top - 2.0
                );
            }
            previous = Some(a.leader);
        }
        let (fill, label) = match a.leader {
            Some(l) => (palette[(l as usize) % palette.len()], format!("{l}")),
            None => ("#d62728", "-".to_string()),
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{leader_top}" width="{}" height="16" fill="{fill}"><title>leader {label}, term {}</title></rect>"#,
            x(a.at_ns),
            (x(b.at_ns) - x(a.at_ns)).max(0.5),
            a.term
        );
    }
    // Fault windows: a band over every lane, and a labelled row each.
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}">faults</text>"#,
        faults_top + 10.0
    );
    for (i, f) in faults.iter().enumerate() {
        let row = faults_top + (i % fault_rows) as f64 * 14.0;
        let (x0, x1) = (x(f.start_ns), x(f.end_ns).max(x(f.start_ns) + 1.0));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{clients_top}" width="{}" height="{}" fill="#d62728" opacity="0.07"/><rect x="{x0}" y="{row}" width="{}" height="11" fill="#d62728" opacity="0.6"><title>{}</title></rect><text x="{}" y="{}" font-size="9">{}</text>"##,
            x1 - x0,
            clients as f64 * lane,
            x1 - x0,
            escape(&f.what),
            x1 + 2.0,
            row + 9.0,
            escape(&f.what)
        );
    }
    // Each client's operations.
    for c in 0..clients {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}">client {c}</text>"#,
            clients_top + c as f64 * lane + 10.0
        );
    }
    for op in history.iter().filter(|o| o.client < clients) {
        let fill = match op.outcome {
            Outcome::Ok if op.is_write() => "#2ca02c",
            Outcome::Ok => "#98df8a",
            Outcome::NotApplied => "#aaaaaa",
            Outcome::Unknown => "#ff7f0e",
        };
        let y = clients_top + op.client as f64 * lane + 2.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{y}" width="{}" height="10" fill="{fill}"/>"#,
            x(op.invoke_ns),
            (x(op.complete_ns) - x(op.invoke_ns)).max(0.6)
        );
    }
    // The longest write gap.
    let (gap, at) = longest_write_gap(history);
    if gap > 0 {
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="8" fill="#9467bd"><title>longest gap between acknowledged writes: {} ms</title></rect><text x="{}" y="{}" fill="#9467bd">longest write gap {} ms</text>"##,
            x(at),
            height - 52.0,
            (x(at + gap) - x(at)).max(1.0),
            gap / 1_000_000,
            x(at),
            height - 56.0,
            gap / 1_000_000
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{}" fill="#555">green: acked write, light green: read, grey: not applied, orange: outcome unknown; leader: a colour per node, red: none</text>"##,
        height - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn op(
        client: usize,
        kind: &'static str,
        start_ms: i64,
        end_ms: i64,
        outcome: Outcome,
    ) -> HistoryOp {
        let mut op = HistoryOp::invoked(client, kind, "k".into(), start_ms * 1_000_000);
        op.complete_ns = end_ms * 1_000_000;
        op.outcome = outcome;
        op
    }

    #[test]
    fn the_longest_gap_counts_acknowledged_writes_only() {
        let h = vec![
            op(0, "put", 0, 10, Outcome::Ok),
            op(0, "get", 20, 30, Outcome::Ok),
            op(1, "put", 40, 900, Outcome::Unknown),
            op(0, "put", 100, 510, Outcome::Ok),
        ];
        assert_eq!(longest_write_gap(&h), (500_000_000, 10_000_000));
    }

    #[test]
    fn the_timeline_draws_every_op_fault_and_leader_span() {
        let h = vec![
            op(0, "put", 0, 10, Outcome::Ok),
            op(1, "get", 5, 50, Outcome::NotApplied),
        ];
        let faults = vec![FaultWindow {
            what: "isolate <leader> 1".into(),
            start_ns: 1_000_000,
            end_ns: 40_000_000,
        }];
        let leaders = vec![
            LeaderSample {
                at_ns: 0,
                leader: Some(1),
                term: 2,
            },
            LeaderSample {
                at_ns: 50_000_000,
                leader: None,
                term: 2,
            },
        ];
        let svg = timeline_svg("t", &h, &faults, &leaders, 2);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains("isolate &lt;leader&gt; 1"),
            "fault labels are escaped"
        );
        assert!(
            svg.contains("#2ca02c") && svg.contains("#aaaaaa"),
            "ops coloured by outcome"
        );
        assert!(svg.contains("leader 1, term 2"));
    }

    #[test]
    fn percentiles_of_acknowledged_ops_by_op_and_level() {
        let mut get = op(0, "get", 0, 4, Outcome::Ok);
        get.level = Some("lease");
        let h = vec![
            get,
            op(0, "put", 0, 2, Outcome::Ok),
            op(0, "put", 0, 9, Outcome::NotApplied),
        ];
        let l = latency_by_op(&h);
        assert_eq!(l["put"].count, 1);
        assert_eq!(l["get lease"].p99_ms, 4.0);
    }
}
