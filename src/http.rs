//! /metrics, /healthz (alive), /readyz (able to make progress).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Readiness conditions. The config is loaded before this exists, so it is not a condition.
/// Readiness closes, with the reason, whenever sluice cannot make progress: the store is not
/// open, shards are not discovered, the sink is unreachable or has answered only errors for
/// longer than `health.sink_error_grace`, a shard waits on a parent nobody is reading, or no
/// checkpoint has advanced for `health.stall_after` while records are pending.
#[derive(Debug)]
pub struct Health {
    store_open: AtomicBool,
    shards_discovered: AtomicBool,
    sink_reachable: AtomicBool,
    sink_error_grace: Duration,
    /// Since when every answer of the sink was an error, and the last one.
    sink_failing: Mutex<Option<(Instant, String)>>,
    /// Since when the readiness probe has failed, and how.
    probe_failing: Mutex<Option<(Instant, String)>>,
    /// Shards stuck behind parents that nobody is reading (set by the coordinator).
    orphaned_waits: Mutex<Option<String>>,
    /// Records pending and no checkpoint advancing (set by the committer).
    stalled: Mutex<Option<String>>,
    /// This worker holds no lease while shards are unowned (set by the lease keeper).
    leases: Mutex<Option<String>>,
    /// A shard's time to data loss is below `health.min_time_to_data_loss` (set by the
    /// data-loss watch), and every shard's figure for the details.
    data_loss: Mutex<Option<String>>,
    time_to_data_loss: Mutex<BTreeMap<String, f64>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Health {
    pub fn new(sink_error_grace: Duration) -> Self {
        Self {
            store_open: AtomicBool::new(false),
            shards_discovered: AtomicBool::new(false),
            sink_reachable: AtomicBool::new(false),
            sink_error_grace,
            sink_failing: Mutex::default(),
            probe_failing: Mutex::default(),
            orphaned_waits: Mutex::default(),
            stalled: Mutex::default(),
            leases: Mutex::default(),
            data_loss: Mutex::default(),
            time_to_data_loss: Mutex::default(),
        }
    }
    pub fn set_store_open(&self, v: bool) {
        self.store_open.store(v, Ordering::Relaxed);
    }
    pub fn set_shards_discovered(&self, v: bool) {
        self.shards_discovered.store(v, Ordering::Relaxed);
    }
    pub fn set_sink_reachable(&self, v: bool) {
        self.sink_reachable.store(v, Ordering::Relaxed);
    }
    pub fn sink_reachable(&self) -> bool {
        self.sink_reachable.load(Ordering::Relaxed)
    }
    /// The readiness probe (`GET /`) got an error answer: kept apart from the writes' state, so
    /// a probe that works again clears it while a write block (probe fine, writes refused) does not.
    pub fn probe_failed(&self, error: &str) {
        let mut failing = self.probe_failing.lock().expect("health lock");
        let since = failing.as_ref().map_or_else(Instant::now, |(at, _)| *at);
        *failing = Some((since, error.to_string()));
    }
    pub fn probe_succeeded(&self) {
        *self.probe_failing.lock().expect("health lock") = None;
    }
    pub fn probe_is_failing(&self) -> bool {
        self.probe_failing.lock().expect("health lock").is_some()
    }
    /// The sink accepted at least one write (or judged it stale or dead-lettered it).
    pub fn sink_succeeded(&self) {
        *self.sink_failing.lock().expect("health lock") = None;
    }
    /// The sink answered with an error that is not the document's fault.
    pub fn sink_failed(&self, error: &str) {
        let mut failing = self.sink_failing.lock().expect("health lock");
        let since = failing.as_ref().map_or_else(Instant::now, |(at, _)| *at);
        *failing = Some((since, error.to_string()));
    }
    pub fn set_orphaned_waits(&self, what: Option<String>) {
        *self.orphaned_waits.lock().expect("health lock") = what;
    }
    pub fn set_stalled(&self, what: Option<String>) {
        *self.stalled.lock().expect("health lock") = what;
    }
    pub fn set_leases(&self, what: Option<String>) {
        *self.leases.lock().expect("health lock") = what;
    }
    /// Every shard's time to data loss (seconds), and the reason readiness closes, if any.
    pub fn set_time_to_data_loss(&self, per_shard: BTreeMap<String, f64>, what: Option<String>) {
        *self.time_to_data_loss.lock().expect("health lock") = per_shard;
        *self.data_loss.lock().expect("health lock") = what;
    }
    /// The details `/readyz?format=json` gives beside the reasons.
    pub fn details(&self) -> serde_json::Value {
        let ttdl = self.time_to_data_loss.lock().expect("health lock");
        let shards: serde_json::Map<String, serde_json::Value> = ttdl
            .iter()
            .map(|(shard, secs)| {
                (
                    shard.clone(),
                    serde_json::json!({ "time_to_data_loss_seconds": secs.round() as i64 }),
                )
            })
            .collect();
        serde_json::json!({ "shards": shards })
    }

    /// `None` when ready, else what is missing.
    pub fn not_ready(&self) -> Option<String> {
        let missing = self.reasons();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// What keeps sluice from being ready, one reason each (empty: ready).
    pub fn reasons(&self) -> Vec<String> {
        self.reasons_but(false)
    }

    /// The reasons a container health check acts on: all but the time to data loss — a
    /// restarted task reads from the same checkpoint and is only further behind, so that one is
    /// for alerts and dashboards, not for replacing the task.
    pub fn reasons_for_container(&self) -> Vec<String> {
        self.reasons_but(true)
    }

    fn reasons_but(&self, without_data_loss: bool) -> Vec<String> {
        let mut missing: Vec<String> = [
            (&self.store_open, "checkpoint store not open"),
            (&self.shards_discovered, "shards not discovered"),
            (&self.sink_reachable, "sink not reachable"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Relaxed))
        .map(|(_, what)| what.to_string())
        .collect();
        for state in [&self.sink_failing, &self.probe_failing] {
            if let Some((since, error)) = &*state.lock().expect("health lock") {
                let failing_for = since.elapsed();
                if failing_for >= self.sink_error_grace {
                    missing.push(format!(
                        "sink has answered only errors for {}s (last: {error})",
                        failing_for.as_secs()
                    ));
                    break;
                }
            }
        }
        for (what, is_data_loss) in [
            (&self.orphaned_waits, false),
            (&self.stalled, false),
            (&self.leases, false),
            (&self.data_loss, true),
        ] {
            if without_data_loss && is_data_loss {
                continue;
            }
            if let Some(why) = &*what.lock().expect("health lock") {
                missing.push(why.clone());
            }
        }
        missing
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
    s.metrics.ready.set(s.health.not_ready().is_none() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// `ready` or `not ready: <reasons>` as text (what people read); with `?format=json` the same
/// verdict as JSON, with each shard's time to data loss; with `?for=container` (what `sluice
/// healthcheck` asks) without the time to data loss, which a restart cannot improve.
async fn readyz(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let reasons = if q.get("for").map(String::as_str) == Some("container") {
        s.health.reasons_for_container()
    } else {
        s.health.reasons()
    };
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if q.get("format").map(String::as_str) == Some("json") {
        let mut body = s.health.details();
        body["ready"] = reasons.is_empty().into();
        body["reasons"] = reasons.into();
        return (status, axum::Json(body)).into_response();
    }
    let text = if reasons.is_empty() {
        "ready\n".to_string()
    } else {
        format!("not ready: {}\n", reasons.join("; "))
    };
    (status, text).into_response()
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
