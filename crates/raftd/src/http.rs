//! HTTP endpoints (axum): /healthz, /readyz, /status (JSON) and /metrics (Prometheus text).
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::node::RaftNode;
use crate::status;

pub fn router(node: Arc<RaftNode>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(node): State<Arc<RaftNode>>) -> Response {
    let s = status::status(&node).await;
    match status::ready(&s) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(reason) => (
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
