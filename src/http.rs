//! /metrics, /healthz (alive), /readyz (able to make progress).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Readiness conditions. The config is loaded before this exists, so it is not a condition.
#[derive(Debug, Default)]
pub struct Health {
    store_open: AtomicBool,
    shards_discovered: AtomicBool,
    sink_reachable: AtomicBool,
}

impl Health {
    pub fn set_store_open(&self, v: bool) {
        self.store_open.store(v, Ordering::Relaxed);
    }
    pub fn set_shards_discovered(&self, v: bool) {
        self.shards_discovered.store(v, Ordering::Relaxed);
    }
    pub fn set_sink_reachable(&self, v: bool) {
        self.sink_reachable.store(v, Ordering::Relaxed);
    }

    /// `None` when ready, else what is missing.
    pub fn not_ready(&self) -> Option<String> {
        let missing: Vec<&str> = [
            (&self.store_open, "checkpoint store not open"),
            (&self.shards_discovered, "shards not discovered"),
            (&self.sink_reachable, "sink not reachable"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Relaxed))
        .map(|(_, what)| what)
        .collect();
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_page(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds now (so a port clash is reported at start) and serves until `stop`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "http endpoint listening");
    let app = router(metrics, health);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    }))
}
