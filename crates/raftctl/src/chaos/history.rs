//! One client operation of a chaos run as it is written to `history.jsonl`: what was asked,
//! when it was invoked and completed, and how it ended. The Porcupine checker
//! (tools/chaos-check) reads exactly this shape.
use serde::Serialize;

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Definitely had no effect.
    NotApplied,
    /// A write that may or may not have applied.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryOp {
    pub client: usize,
    /// put, get, cas or delete.
    pub op: &'static str,
    pub key: String,
    /// put: the value; cas: the new value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// cas: the expected value (absent when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// get: the consistency level asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<&'static str>,
    pub invoke_ns: i64,
    pub complete_ns: i64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub found: bool,
    /// get: the value read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub succeeded: bool,
    /// cas: the value the comparison saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The error, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HistoryOp {
    /// An operation of `client` on `key`, invoked at `invoke_ns`, before its answer is known
    /// (ok until a failure says otherwise).
    pub fn invoked(client: usize, op: &'static str, key: String, invoke_ns: i64) -> HistoryOp {
        HistoryOp {
            client,
            op,
            key,
            value: None,
            expect: None,
            level: None,
            invoke_ns,
            complete_ns: invoke_ns,
            outcome: Outcome::Ok,
            found: false,
            read: None,
            succeeded: false,
            seen: None,
            deleted: false,
            error: None,
        }
    }

    pub fn is_write(&self) -> bool {
        self.op != "get"
    }

    pub fn latency_ms(&self) -> f64 {
        (self.complete_ns - self.invoke_ns) as f64 / 1e6
    }
}

/// A fault window of the schedule, for the report and the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub what: String,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Which node led, sampled over the run.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderSample {
    pub at_ns: i64,
    pub leader: Option<u64>,
    pub term: u64,
}
