//! HTTP endpoints (axum): /healthz, /readyz, /status (JSON) and /metrics (Prometheus text).
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::faults::FaultRules;
use crate::node::{RaftNode, Readiness};
use crate::status;

pub fn router(node: Arc<RaftNode>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics))
        .route("/debug/faults", get(get_faults).put(put_faults))
        .with_state(node)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(node): State<Arc<RaftNode>>) -> Response {
    match node.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn status_handler(State(node): State<Arc<RaftNode>>) -> Response {
    let s = status::status(&node).await;
    axum::Json(status::status_json(&s)).into_response()
}

async fn metrics(State(node): State<Arc<RaftNode>>) -> Response {
    let s = status::status(&node).await;
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        status::metrics_text(&node, &s),
    )
        .into_response()
}

/// The fault rules in force (test-only fault layer; see `faults.rs`).
async fn get_faults(State(node): State<Arc<RaftNode>>) -> Response {
    if !node.faults.enabled() {
        return fault_injection_off();
    }
    axum::Json(node.faults.rules()).into_response()
}

/// Replaces the fault rules in force. The body is a JSON `FaultRules`.
async fn put_faults(State(node): State<Arc<RaftNode>>, body: axum::body::Bytes) -> Response {
    if !node.faults.enabled() {
        return fault_injection_off();
    }
    let rules: FaultRules = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("faults: invalid body: {e}\n"),
            )
                .into_response();
        }
    };
    match node.faults.set(node.id, rules.clone()) {
        Ok(()) => {
            tracing::warn!(node = node.id, ?rules, "fault injection: rules replaced");
            axum::Json(rules).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

fn fault_injection_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "fault injection is off on this node: start raftd with --enable-fault-injection\n",
    )
        .into_response()
}
