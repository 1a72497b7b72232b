//! The HTTP server on `--listen-metrics`: `GET /metrics`, `/livez`,
//! `/readyz` and `/health`. Any other path is 404, another method 405.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::health;
use crate::core::NodeCore;
use crate::election::Election;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Node {
    core: Arc<NodeCore>,
    election: Arc<Election>,
    registry: Arc<Registry>,
}

/// The routes; any other path is 404, another method on these 405.
fn router(core: Arc<NodeCore>, election: Arc<Election>) -> Router {
    let registry = Arc::new(super::registry(&core));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .with_state(Node {
            core,
            election,
            registry,
        })
}

pub async fn serve(
    core: Arc<NodeCore>,
    election: Arc<Election>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let app = router(core, election);
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("metrics server stopped: {e}");
    }
}

async fn metrics(State(node): State<Node>) -> Response {
    // Refreshes the commit index gauge; a RaftCore that does not answer
    // shows in /livez, and the page is served all the same.
    let _ = health::ask_core(&node.core).await;
    let registry = node.registry.clone();
    // Off the async workers: the page walks the data dir for its sizes.
    let page = tokio::task::spawn_blocking(move || {
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).map(|()| page)
    })
    .await;
    match page {
        Ok(Ok(page)) => ([(header::CONTENT_TYPE, OPENMETRICS)], page).into_response(),
        Ok(Err(e)) => unavailable(format!("encoding the metrics failed: {e}")),
        Err(e) => unavailable(format!("encoding the metrics failed: {e}")),
    }
}

fn unavailable(reason: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
}

fn plain(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => unavailable(reason),
    }
}

async fn livez(State(node): State<Node>) -> Response {
    plain(health::livez(&node.core).await)
}

async fn readyz(State(node): State<Node>) -> Response {
    plain(health::readyz(&node.core, &node.election).await)
}

/// etcd's `/health` body: `{"health":"true","reason":""}`, from readiness.
async fn health(State(node): State<Node>) -> Response {
    let result = health::readyz(&node.core, &node.election).await;
    let (status, body) = match &result {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({"health": "true", "reason": ""}),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}
