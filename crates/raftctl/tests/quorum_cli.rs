//! End-to-end checks of `raftctl quorum`: the real binary, its JSON and its errors.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn raftctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(args)
        .output()
        .expect("run raftctl")
}

#[test]
fn answers_the_first_exercise_as_json() {
    let out = raftctl(&["quorum", "5", "7", "9", "--zones", "3", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let field = |key: &str| -> Vec<serde_json::Value> {
        reports
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].clone())
            .collect()
    };
    assert_eq!(field("voters"), [5, 7, 9].map(serde_json::Value::from));
    assert_eq!(field("quorum"), [3, 4, 5].map(serde_json::Value::from));
    assert_eq!(
        field("tolerated_failures"),
        [2, 3, 4].map(serde_json::Value::from)
    );
    assert_eq!(
        field("placement"),
        [
            serde_json::json!([2, 2, 1]),
            serde_json::json!([3, 2, 2]),
            serde_json::json!([3, 3, 3])
        ]
    );
    assert_eq!(
        field("zone_failures_tolerated"),
        [1, 1, 1].map(serde_json::Value::from)
    );
    assert!(reports[0].get("survives").is_none());
}

#[test]
fn six_versus_five_when_three_fail() {
    let out = raftctl(&["quorum", "5", "6", "--fail", "3", "-o", "json"]);
    assert!(out.status.success());
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["survives"], false);
    assert_eq!(reports[1]["survives"], false);
    assert_eq!(reports[1]["quorum"], 4);
    assert_eq!(reports[1]["supported"], false);
    let table = raftctl(&["quorum", "5", "6", "--fail", "3"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("6 voters need 4 for quorum and survive only 2 failures, the same as 5"),
        "{text}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    for (args, needle) in [
        (
            &["quorum", "0"][..],
            "voters must be between 1 and 99, got 0",
        ),
        (&["quorum", "abc"][..], "invalid value 'abc'"),
        (
            &["quorum", "5", "--zones", "0"][..],
            "zones must be between 1 and 16, got 0",
        ),
        (
            &["quorum", "5", "--fail", "6"][..],
            "cannot fail 6 voters in a cluster of 5",
        ),
        (&["quorum"][..], "VOTERS"),
    ] {
        let out = raftctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
