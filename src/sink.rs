//! The Elasticsearch / OpenSearch sink: `_bulk` with external versions, retries that never drop
//! a write, and a dead-letter table for writes Elasticsearch refuses for good.
//!
//! Order of judgement for one request: the transport (timeout, connection) and the HTTP status
//! first — a whole request can be a 429 with no items — then each item: 2xx done; 404 on delete
//! done; 409 means the index already holds a newer version (stale, done); 429/5xx retried alone;
//! any other 4xx dead-lettered with its error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use crate::ack::{Ack, ShardId};
use crate::checkpoint::{CheckpointStore, DeadLetter};
use crate::config::SinkConfig;
use crate::es_client::{EsClient, SendError};
use crate::http::Health;
use crate::lease::Fence;
use crate::metrics::{result, Metrics};
use crate::retry::Backoff;
use crate::transform::DocAction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Index,
    Delete,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Index => "index",
            OpKind::Delete => "delete",
        }
    }
}

/// Where an operation came from: for dead letters and logs.
#[derive(Debug, Clone)]
pub struct Origin {
    pub stream: Arc<str>,
    pub shard: ShardId,
    pub sequence_number: String,
    /// The lease epoch it was read under.
    pub epoch: u64,
}

/// One versioned document operation, already encoded as its NDJSON lines.
#[derive(Debug)]
pub struct BulkOp {
    pub index: Arc<str>,
    pub id: String,
    /// Elasticsearch custom routing, kept for a dead letter (the action line carries it).
    pub routing: Option<String>,
    pub version: u64,
    pub kind: OpKind,
    /// Action line and (for index) source line, each ending in `\n`.
    pub lines: Bytes,
    pub origin: Origin,
    /// Acknowledgements completed when this write is acknowledged: its own, plus those of
    /// earlier operations on the same document that it superseded in a batch.
    pub acks: Vec<Ack>,
    /// Share of the pipeline memory budget, released when the operation is finished.
    pub permits: Vec<OwnedSemaphorePermit>,
}

impl BulkOp {
    pub fn new(
        index: Arc<str>,
        id: String,
        version: u64,
        action: DocAction,
        origin: Origin,
    ) -> Self {
        Self::routed(index, id, None, version, action, origin)
    }

    /// With Elasticsearch custom routing (a route's `routing`).
    pub fn routed(
        index: Arc<str>,
        id: String,
        routing: Option<&str>,
        version: u64,
        action: DocAction,
        origin: Origin,
    ) -> Self {
        let kind = match action {
            DocAction::Index(_) | DocAction::IndexJson(_) => OpKind::Index,
            DocAction::Delete => OpKind::Delete,
        };
        // written straight from borrowed fields: no JSON tree (and no copies) per operation
        #[derive(serde::Serialize)]
        struct Meta<'a> {
            _id: &'a str,
            _index: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            routing: Option<&'a str>,
            version: u64,
            version_type: &'static str,
        }
        let source = match &action {
            DocAction::IndexJson(text) => text.len() + 1,
            _ => 0,
        };
        let mut lines = Vec::with_capacity(96 + index.len() + id.len() + source);
        let meta = Meta {
            _id: &id,
            _index: &index,
            routing,
            version,
            version_type: "external",
        };
        lines.extend_from_slice(b"{\"");
        lines.extend_from_slice(kind.as_str().as_bytes());
        lines.extend_from_slice(b"\":");
        serde_json::to_writer(&mut lines, &meta).expect("serializing JSON to memory");
        lines.extend_from_slice(b"}\n");
        match &action {
            DocAction::Index(source) => {
                serde_json::to_writer(&mut lines, source).expect("serializing JSON to memory");
                lines.push(b'\n');
            }
            DocAction::IndexJson(source) => {
                lines.extend_from_slice(source.as_bytes());
                lines.push(b'\n');
            }
            DocAction::Delete => {}
        }
        Self {
            index,
            id,
            routing: routing.map(str::to_owned),
            version,
            kind,
            lines: Bytes::from(lines),
            origin,
            acks: Vec::new(),
            permits: Vec::new(),
        }
    }

    /// Bytes this operation adds to a request body.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The source line (for dead letters), without its newline.
    fn source_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.lines);
        text.split_once('\n')
            .map(|(_, src)| src.trim_end().to_string())
            .unwrap_or_default()
    }

    /// This operation replaces `earlier` (same document, later change): take over its claims.
    pub fn supersede(&mut self, earlier: BulkOp) {
        self.acks.extend(earlier.acks);
        self.permits.extend(earlier.permits);
    }

    fn finish(self) {
        for ack in self.acks {
            ack.done();
        }
    }
}

/// How one item of a bulk response is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Indexed,
    Deleted,
    /// 409 under external versioning: the index already holds this or a newer version.
    Stale,
    /// Not the document's fault (a block, a missing index, permissions, pressure): retry this
    /// item alone until the cluster accepts it. `reason` labels `sluice_retries_total`.
    Retry {
        reason: &'static str,
        why: String,
    },
    /// The document itself is refused for good (mapping, parsing, validation).
    DeadLetter(String),
}

/// What an Elasticsearch / OpenSearch error type says about whose fault a failed write is.
/// The table in ARCHITECTURE.md ("Item errors") lists every type and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The document (or its action line) can never be accepted as it is.
    Document,
    /// The cluster or the target index refuses writes for now; the label says why.
    Cluster(&'static str),
    /// A type this table does not know: retried, loudly (the safe side).
    Unknown,
}

/// Whose fault an error of type `ty` (with its `reason` text) is.
pub fn fault_of(ty: &str, reason: &str) -> Fault {
    match ty {
        "mapper_parsing_exception"
        | "document_parsing_exception"
        | "strict_dynamic_mapping_exception"
        | "mapper_exception"
        | "x_content_parse_exception"
        | "json_parse_exception"
        | "parse_exception"
        | "not_x_content_exception"
        | "action_request_validation_exception"
        | "document_source_missing_exception" => Fault::Document,
        // "no write index is defined for alias [a]", "… is a data stream": the alias or index
        // is being changed; the write will pass once it points somewhere writable.
        "illegal_argument_exception" if names_the_target(reason) => Fault::Cluster("index_target"),
        // Broad: about a field or value (the document's), but also "pipeline with id [x] does
        // not exist" or a full shard (the cluster's). Only reasons about the document count as
        // its fault; the rest is retried, loudly.
        "illegal_argument_exception" if names_the_document(reason) => Fault::Document,
        "cluster_block_exception" => Fault::Cluster("cluster_block"),
        "index_not_found_exception" => Fault::Cluster("index_not_found"),
        "index_closed_exception" => Fault::Cluster("index_closed"),
        "security_exception" | "authorization_exception" | "access_denied_exception" => {
            Fault::Cluster("security")
        }
        "es_rejected_execution_exception"
        | "rejected_execution_exception"
        | "circuit_breaking_exception" => Fault::Cluster("item_429"),
        "unavailable_shards_exception"
        | "no_shard_available_action_exception"
        | "primary_missing_action_exception"
        | "shard_not_found_exception"
        | "node_not_connected_exception"
        | "node_closed_exception"
        | "node_disconnected_exception"
        | "connect_transport_exception"
        | "receive_timeout_transport_exception"
        | "process_cluster_event_timeout_exception"
        | "timeout_exception"
        | "retry_on_primary_exception"
        | "retry_on_replica_exception"
        | "not_master_exception"
        | "not_cluster_manager_exception"
        | "master_not_discovered_exception"
        | "cluster_manager_not_discovered_exception" => Fault::Cluster("item_5xx"),
        _ => Fault::Unknown,
    }
}

/// An `illegal_argument_exception` about the document's content: a field, a value, its size.
fn names_the_document(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "field",
        "failed to parse",
        "immense term",
        "too long",
        "nested",
        "depth",
        "mapper",
        "mapping",
        "version",
    ]
    .iter()
    .any(|w| r.contains(w))
}

/// An `illegal_argument_exception` about the index or alias written to, not about the document.
fn names_the_target(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("write index")
        || (r.contains("alias") && !r.contains("field alias"))
        || r.contains("data stream")
}

pub fn judge_item(kind: OpKind, status: u16, error: Option<&Value>) -> ItemOutcome {
    let ty = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let reason = error
        .and_then(|e| e.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let why = || {
        if ty.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("{status} {ty}: {reason}")
        }
    };
    match (status, kind) {
        (200..=299, OpKind::Index) => return ItemOutcome::Indexed,
        (200..=299, OpKind::Delete) => return ItemOutcome::Deleted,
        // A delete of a missing document (`result: not_found`, no error): the index holds no
        // such document, and the external version stays as a tombstone.
        (404, OpKind::Delete) if error.is_none() => return ItemOutcome::Deleted,
        (409, _) if ty.is_empty() || ty == "version_conflict_engine_exception" => {
            return ItemOutcome::Stale
        }
        _ => {}
    }
    match fault_of(ty, reason) {
        Fault::Document => ItemOutcome::DeadLetter(why()),
        Fault::Cluster(reason) => ItemOutcome::Retry { reason, why: why() },
        Fault::Unknown => ItemOutcome::Retry {
            reason: match status {
                429 => "item_429",
                500..=599 => "item_5xx",
                _ => "item_unknown",
            },
            why: why(),
        },
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

/// One item of a `_bulk` answer: its status and, when it failed, the error object.
#[derive(Debug, Deserialize)]
pub struct BulkItem {
    pub status: u16,
    #[serde(default)]
    pub error: Option<Value>,
}

/// Why a whole request failed.
#[derive(Debug)]
struct RequestFailure {
    reason: &'static str,
    detail: String,
    /// The error object of an HTTP 400 answer, when it has one: decides whether a single
    /// document refused this way is at fault (see [`BulkSink::write`]).
    error: Option<Value>,
}

impl RequestFailure {
    fn new(reason: &'static str, detail: String) -> Self {
        Self {
            reason,
            detail,
            error: None,
        }
    }
}

/// Why a part of a batch comes back to [`BulkSink::write`] to be split.
enum SplitReason {
    /// 413: larger than the cluster accepts.
    TooLarge,
    /// 400 for the whole request: one of its operations is malformed (an out-of-range version,
    /// a broken action line) — split until it is isolated.
    BadRequest(RequestFailure),
}

/// One warn line per reason per interval, with how many times it happened meanwhile: item
/// retries can come by the thousand per second and must be visible without flooding the log.
struct WarnEvery {
    interval: Duration,
    seen: Mutex<HashMap<&'static str, (u64, Option<Instant>)>>,
}

impl WarnEvery {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: Mutex::default(),
        }
    }

    /// Counts one event; `Some(count since the last line)` when a line is due now.
    fn note(&self, reason: &'static str, n: u64) -> Option<u64> {
        let mut seen = self.seen.lock().expect("warn limiter lock");
        let (count, last) = seen.entry(reason).or_insert((0, None));
        *count += n;
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= self.interval) {
            *last = Some(now);
            Some(std::mem::take(count))
        } else {
            None
        }
    }
}

pub struct BulkSink {
    client: EsClient,
    backoff: Backoff,
    max_retries: u32,
    store: CheckpointStore,
    metrics: Metrics,
    health: Arc<Health>,
    item_warnings: WarnEvery,
    fence: Fence,
}

impl BulkSink {
    /// `source_region` is the default region for SigV4 signing.
    pub async fn new(
        cfg: &SinkConfig,
        source_region: &str,
        store: CheckpointStore,
        metrics: Metrics,
        health: Arc<Health>,
        fence: Fence,
    ) -> anyhow::Result<Self> {
        let client = EsClient::new(cfg, source_region).await?;
        Ok(Self {
            client,
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            max_retries: cfg.max_retries,
            store,
            metrics,
            health,
            item_warnings: WarnEvery::new(Duration::from_secs(10)),
            fence,
        })
    }

    /// GET / — is the cluster there at all? Used for readiness.
    pub async fn probe(&self) -> bool {
        let answer = tokio::time::timeout(Duration::from_secs(5), self.client.info()).await;
        let ok = match answer {
            Ok(Ok(a)) if (200..300).contains(&a.status) => {
                self.health.probe_succeeded();
                true
            }
            Ok(Ok(a)) => {
                // reachable, but refusing us (credentials, permissions — `GET /` needs
                // cluster:monitor/main): said, and readiness closes after the grace
                let why = format!("HTTP {}: {}", a.status, truncate(&a.body));
                tracing::warn!(error = %why, "elasticsearch answers the probe with an error");
                self.health.probe_failed(&why);
                true
            }
            Ok(Err(e)) => {
                // a refused certificate, a wrong port, DNS: said at every probe (every 5 s)
                tracing::warn!(error = %e, "elasticsearch cannot be reached");
                self.health.probe_failed(&e.to_string());
                false
            }
            Err(_) => {
                self.health.probe_failed("no answer to GET / within 5s");
                false
            }
        };
        self.health.set_sink_reachable(ok);
        ok
    }

    /// Writes every operation; returns once each one is indexed, deleted, stale or
    /// dead-lettered, and has been acknowledged. Never gives up unless `max_retries` says so.
    ///
    /// A request the cluster finds too large (413: `http.max_content_length`, or Amazon
    /// OpenSearch Service's 10 MiB payload cap) is split in halves until it fits; a single
    /// document that is too large on its own can never be accepted and is dead-lettered.
    /// A request refused as a whole with 400 (Elasticsearch validates every action before
    /// writing any: an out-of-range version, a malformed line) is split the same way until the
    /// offending operation is alone; it is dead-lettered with the error unless the error is
    /// about the cluster rather than the document, which is retried.
    pub async fn write(&self, ops: Vec<BulkOp>) {
        let mut parts = std::collections::VecDeque::from([ops]);
        while let Some(part) = parts.pop_front() {
            let Some((mut refused, why)) = self.write_part(part).await else {
                continue;
            };
            if refused.len() == 1 {
                match why {
                    SplitReason::TooLarge => {
                        self.dead_letter_all(
                            refused,
                            "HTTP 413: the document alone exceeds the cluster's request size limit",
                        )
                        .await;
                    }
                    SplitReason::BadRequest(failure) => {
                        self.dead_letter_all(refused, &failure.detail).await;
                    }
                }
                continue;
            }
            let label = match &why {
                SplitReason::TooLarge => "http_413_split",
                SplitReason::BadRequest(_) => "http_400_split",
            };
            self.metrics.retries.with_label_values(&[label]).inc();
            let second = refused.split_off(refused.len() / 2);
            match why {
                SplitReason::TooLarge => tracing::warn!(
                    documents = refused.len() + second.len(),
                    "bulk request too large for the cluster (413); splitting it in two"
                ),
                SplitReason::BadRequest(failure) => tracing::warn!(
                    documents = refused.len() + second.len(),
                    error = %failure.detail,
                    "bulk request refused as a whole (400); splitting it to find the operation at fault"
                ),
            }
            parts.push_front(second);
            parts.push_front(refused);
        }
    }

    /// One request's worth: the operations back, with why, when they must be split.
    async fn write_part(&self, ops: Vec<BulkOp>) -> Option<(Vec<BulkOp>, SplitReason)> {
        let mut pending = ops;
        let mut attempt: u32 = 0;
        loop {
            pending = self.fenced_out(pending);
            if pending.is_empty() {
                return None;
            }
            let body: Vec<Bytes> = pending.iter().map(|op| op.lines.clone()).collect();
            let bytes: usize = body.iter().map(Bytes::len).sum();
            self.metrics.batch_documents.observe(pending.len() as f64);
            self.metrics.batch_bytes.observe(bytes as f64);
            let outcome = match self.send(body).await {
                Err(failure) => {
                    self.metrics
                        .bulk_requests
                        .with_label_values(&[failure.reason])
                        .inc();
                    Err(failure)
                }
                Ok(items) if items.len() != pending.len() => {
                    self.metrics
                        .bulk_requests
                        .with_label_values(&["malformed_response"])
                        .inc();
                    Err(RequestFailure::new(
                        "malformed_response",
                        format!("{} items for {} operations", items.len(), pending.len()),
                    ))
                }
                Ok(items) => {
                    self.metrics.bulk_requests.with_label_values(&["ok"]).inc();
                    Ok(items)
                }
            };
            let items = match outcome {
                Ok(items) => items,
                Err(failure) if failure.reason == "http_413" => {
                    return Some((pending, SplitReason::TooLarge))
                }
                Err(failure) if failure.reason == "http_400" && document_at_fault(&failure) => {
                    return Some((pending, SplitReason::BadRequest(failure)))
                }
                Err(failure) => {
                    attempt += 1;
                    self.metrics
                        .retries
                        .with_label_values(&[failure.reason])
                        .inc();
                    self.health.sink_failed(&failure.detail);
                    if self.max_retries > 0 && attempt > self.max_retries {
                        let why = format!(
                            "gave up after {} retries: {}",
                            self.max_retries, failure.detail
                        );
                        self.dead_letter_all(pending, &why).await;
                        return None;
                    }
                    let delay = self.backoff.delay(attempt);
                    if failure.reason.starts_with("http_4") {
                        // 401/403…: no write can succeed until someone fixes the cluster or the
                        // config; keep retrying and say so loudly rather than dropping the batch.
                        tracing::error!(reason = failure.reason, error = %failure.detail, attempt, delay_ms = delay.as_millis() as u64, "bulk request refused as a whole; retrying");
                    } else {
                        tracing::warn!(reason = failure.reason, error = %failure.detail, attempt, delay_ms = delay.as_millis() as u64, "bulk request failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let mut retry: Vec<(BulkOp, &'static str, String)> = Vec::new();
            let mut dead = Vec::new();
            let mut accepted = false;
            for (op, item) in pending.into_iter().zip(items) {
                match judge_item(op.kind, item.status, item.error.as_ref()) {
                    ItemOutcome::Indexed => {
                        accepted = true;
                        self.finish(op, result::INDEXED)
                    }
                    ItemOutcome::Deleted => {
                        accepted = true;
                        self.finish(op, result::DELETED)
                    }
                    ItemOutcome::Stale => {
                        accepted = true;
                        self.finish(op, result::STALE)
                    }
                    ItemOutcome::Retry { reason, why } => {
                        self.metrics.retries.with_label_values(&[reason]).inc();
                        retry.push((op, reason, why));
                    }
                    ItemOutcome::DeadLetter(why) => {
                        accepted = true;
                        dead.push((op, why))
                    }
                }
            }
            if accepted {
                self.health.sink_succeeded();
            }
            self.dead_letter(dead).await;
            if retry.is_empty() {
                return None;
            }
            if !accepted {
                self.health.sink_failed(&retry[0].2);
            }
            self.warn_item_retries(&retry);
            attempt += 1;
            if self.max_retries > 0 && attempt > self.max_retries {
                let give_up = retry
                    .into_iter()
                    .map(|(op, _, why)| {
                        (
                            op,
                            format!("gave up after {} retries: {why}", self.max_retries),
                        )
                    })
                    .collect();
                self.dead_letter(give_up).await;
                return None;
            }
            let delay = self.backoff.delay(attempt);
            tokio::time::sleep(delay).await;
            pending = retry.into_iter().map(|(op, _, _)| op).collect();
        }
    }

    /// Before every request: operations of shards this worker no longer holds (a lost lease,
    /// or a hold that lapsed while the process was paused) are dropped unsent and *not*
    /// acknowledged — their shard is stopped, its pending work discarded, and the holder
    /// re-reads them from the last committed checkpoint.
    fn fenced_out(&self, ops: Vec<BulkOp>) -> Vec<BulkOp> {
        let (held, fenced): (Vec<BulkOp>, Vec<BulkOp>) = ops
            .into_iter()
            .partition(|op| self.fence.holds(&op.origin.shard, op.origin.epoch));
        if !fenced.is_empty() {
            tracing::info!(
                operations = fenced.len(),
                "dropping operations of shards whose lease this worker no longer holds"
            );
            self.metrics
                .documents
                .with_label_values(&[result::FENCED])
                .inc_by(fenced.len() as u64);
        }
        held
    }

    /// Item retries are logged at warn, one line per reason per interval.
    fn warn_item_retries(&self, retry: &[(BulkOp, &'static str, String)]) {
        let mut by_reason: HashMap<&'static str, (u64, &BulkOp, &str)> = HashMap::new();
        for (op, reason, why) in retry {
            by_reason.entry(reason).or_insert((0, op, why)).0 += 1;
        }
        for (reason, (n, op, why)) in by_reason {
            if let Some(count) = self.item_warnings.note(reason, n) {
                tracing::warn!(reason, items = count, example_index = %op.index, example_doc_id = %op.id, error = %why, "bulk items refused for a reason that is not the document's; retrying them");
            }
        }
    }

    async fn send(&self, body: Vec<Bytes>) -> Result<Vec<BulkItem>, RequestFailure> {
        let started = Instant::now();
        let response = self.client.bulk(&body).await;
        self.metrics
            .bulk_duration
            .observe(started.elapsed().as_secs_f64());
        let response = response.map_err(|e| {
            let reason = match e {
                SendError::Timeout(_) => "timeout",
                SendError::Connection(_) => "connection",
                // no request went out: not the cluster's doing
                SendError::Signing(_) => "signing",
            };
            if reason != "signing" {
                self.health.set_sink_reachable(false);
            }
            RequestFailure::new(reason, e.to_string())
        })?;
        self.health.set_sink_reachable(true);
        let status = response.status;
        let text = response.body;
        if (200..300).contains(&status) {
            return parse_bulk_response(&text)
                .map_err(|e| RequestFailure::new("malformed_response", e));
        }
        let reason = match status {
            429 => "http_429",
            413 => "http_413",
            400 => "http_400",
            500..=599 => "http_5xx",
            _ => "http_4xx",
        };
        let error = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").cloned())
            .filter(Value::is_object);
        let detail = match &error {
            Some(e) => format!(
                "HTTP {status} {}: {}",
                e.get("type").and_then(Value::as_str).unwrap_or("error"),
                e.get("reason").and_then(Value::as_str).unwrap_or("")
            ),
            None => format!("HTTP {status}: {}", truncate(&text)),
        };
        Err(RequestFailure {
            reason,
            detail,
            error,
        })
    }

    fn finish(&self, op: BulkOp, result: &str) {
        self.metrics.documents.with_label_values(&[result]).inc();
        op.finish();
    }

    async fn dead_letter_all(&self, ops: Vec<BulkOp>, why: &str) {
        self.dead_letter(ops.into_iter().map(|op| (op, why.to_string())).collect())
            .await
    }

    /// Stores refused operations; only then are they acknowledged (so the checkpoint may pass).
    async fn dead_letter(&self, ops: Vec<(BulkOp, String)>) {
        if ops.is_empty() {
            return;
        }
        let letters: Vec<DeadLetter> = ops
            .iter()
            .map(|(op, why)| {
                tracing::error!(index = %op.index, doc_id = %op.id, shard_id = %op.origin.shard, sequence_number = %op.origin.sequence_number, error = %why, "operation dead-lettered");
                DeadLetter {
                    stream: op.origin.stream.to_string(),
                    shard_id: op.origin.shard.to_string(),
                    sequence_number: op.origin.sequence_number.clone(),
                    index: Some(op.index.to_string()),
                    doc_id: Some(op.id.clone()),
                    routing: op.routing.clone(),
                    version: Some(op.version),
                    action: op.kind.as_str().into(),
                    payload: op.source_text(),
                    error: why.clone(),
                }
            })
            .collect();
        let stored = letters.len() as i64;
        self.store.dead_letter_durably(letters).await;
        self.metrics.dead_letters.add(stored);
        for (op, _) in ops {
            self.finish(op, result::DEAD_LETTERED);
        }
    }
}

/// Is a whole-request 400 about the operations in it (split, then dead-letter the one at
/// fault)? Only when its error type says so (validation, parsing); a 400 without one — an HTML
/// page from a proxy, a target that rejects the request shape — or naming the cluster is
/// retried, loudly, never turned into dead letters.
fn document_at_fault(failure: &RequestFailure) -> bool {
    let field = |name: &str| {
        failure
            .error
            .as_ref()
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    fault_of(field("type"), field("reason")) == Fault::Document
}

/// The items of a 2xx `_bulk` answer, in request order. Never panics, whatever the bytes.
pub fn parse_bulk_response(text: &str) -> Result<Vec<BulkItem>, String> {
    serde_json::from_str::<BulkResponse>(text)
        .map(|r| {
            r.items
                .into_iter()
                .filter_map(|m| m.into_values().next())
                .collect()
        })
        .map_err(|e| format!("{e}: {}", truncate(text)))
}

fn truncate(text: &str) -> String {
    if text.len() > 500 {
        format!("{}…", &text[..text.floor_char_boundary(500)])
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin() -> Origin {
        Origin {
            stream: "s".into(),
            shard: "shard-1".into(),
            sequence_number: "1".into(),
            epoch: 1,
        }
    }

    #[test]
    fn index_and_delete_encode_as_exact_ndjson_with_external_versions() {
        let index = BulkOp::new(
            "posts".into(),
            "p1".into(),
            1_700_000_000_000_001,
            DocAction::Index(json!({"title": "Hi"})),
            origin(),
        );
        assert_eq!(
            std::str::from_utf8(&index.lines).unwrap(),
            "{\"index\":{\"_id\":\"p1\",\"_index\":\"posts\",\"version\":1700000000000001,\"version_type\":\"external\"}}\n{\"title\":\"Hi\"}\n"
        );
        let delete = BulkOp::new("posts".into(), "p1".into(), 7, DocAction::Delete, origin());
        assert_eq!(
            std::str::from_utf8(&delete.lines).unwrap(),
            "{\"delete\":{\"_id\":\"p1\",\"_index\":\"posts\",\"version\":7,\"version_type\":\"external\"}}\n"
        );
        assert_eq!(index.source_text(), "{\"title\":\"Hi\"}");
    }

    fn err(ty: &str, reason: &str) -> Value {
        json!({"type": ty, "reason": reason})
    }

    fn retry_reason(o: ItemOutcome) -> &'static str {
        match o {
            ItemOutcome::Retry { reason, .. } => reason,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn successes_missing_deletes_and_stale_versions_are_done() {
        assert_eq!(judge_item(OpKind::Index, 201, None), ItemOutcome::Indexed);
        assert_eq!(judge_item(OpKind::Index, 200, None), ItemOutcome::Indexed);
        assert_eq!(judge_item(OpKind::Delete, 200, None), ItemOutcome::Deleted);
        // `result: not_found`: the index holds no such document (the tombstone is kept)
        assert_eq!(judge_item(OpKind::Delete, 404, None), ItemOutcome::Deleted);
        let conflict = err("version_conflict_engine_exception", "[8]: version conflict");
        assert_eq!(
            judge_item(OpKind::Index, 409, Some(&conflict)),
            ItemOutcome::Stale
        );
    }

    #[test]
    fn blocks_missing_indices_and_permissions_are_the_clusters_fault_and_retried() {
        let write_block = err(
            "cluster_block_exception",
            "index [posts] blocked by: [FORBIDDEN/8/index write (api)];",
        );
        let flood_old = err(
            "cluster_block_exception",
            "index [posts] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)];",
        );
        let flood_new = err(
            "cluster_block_exception",
            "index [posts] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];",
        );
        for kind in [OpKind::Index, OpKind::Delete] {
            assert_eq!(
                retry_reason(judge_item(kind, 403, Some(&write_block))),
                "cluster_block"
            );
            assert_eq!(
                retry_reason(judge_item(kind, 403, Some(&flood_old))),
                "cluster_block"
            );
            assert_eq!(
                retry_reason(judge_item(kind, 429, Some(&flood_new))),
                "cluster_block"
            );
        }
        let no_index = err(
            "index_not_found_exception",
            "no such index [posts] and [action.auto_create_index] is [false]",
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 404, Some(&no_index))),
            "index_not_found"
        );
        // not proof the document is gone from the index the alias will point to
        assert_eq!(
            retry_reason(judge_item(OpKind::Delete, 404, Some(&no_index))),
            "index_not_found"
        );
        let denied = err(
            "security_exception",
            "action [indices:data/write/bulk[s]] is unauthorized for user [sluice]",
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 403, Some(&denied))),
            "security"
        );
        let closed = err("index_closed_exception", "closed");
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 400, Some(&closed))),
            "index_closed"
        );
        let alias = err(
            "illegal_argument_exception",
            "no write index is defined for alias [posts]. The write index may be explicitly disabled using is_write_index=false or the alias points to multiple indices without one being designated as a write index",
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 400, Some(&alias))),
            "index_target"
        );
        let pressure = err("es_rejected_execution_exception", "queue full");
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 429, Some(&pressure))),
            "item_429"
        );
        let breaker = err("circuit_breaking_exception", "[parent] Data too large");
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 429, Some(&breaker))),
            "item_429"
        );
        let shards = err(
            "unavailable_shards_exception",
            "primary shard is not active",
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 503, Some(&shards))),
            "item_5xx"
        );
    }

    #[test]
    fn only_errors_about_the_document_itself_are_dead_lettered() {
        for (status, ty, reason) in [
            (
                400,
                "mapper_parsing_exception",
                "failed to parse field [n] of type [long]",
            ),
            (
                400,
                "document_parsing_exception",
                "[1:426] failed to parse field [SEQ] of type [long]",
            ),
            (
                400,
                "strict_dynamic_mapping_exception",
                "mapping set to strict, dynamic introduction of [x] within [_doc] is not allowed",
            ),
            (
                400,
                "illegal_argument_exception",
                "Limit of total fields [1000] has been exceeded",
            ),
            (
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: illegal version value [-5] for version type [EXTERNAL];",
            ),
        ] {
            assert_eq!(
                judge_item(OpKind::Index, status, Some(&err(ty, reason))),
                ItemOutcome::DeadLetter(format!("{status} {ty}: {reason}")),
                "{ty}"
            );
        }
    }

    #[test]
    fn an_illegal_argument_that_is_not_about_the_document_is_retried() {
        let pipeline = err(
            "illegal_argument_exception",
            "pipeline with id [enrich] does not exist",
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 400, Some(&pipeline))),
            "item_unknown"
        );
        let full = err(
            "illegal_argument_exception",
            "number of documents in the index cannot exceed 2147483519",
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 400, Some(&full))),
            "item_unknown"
        );
        let field = err(
            "illegal_argument_exception",
            "mapper [n] cannot be changed from type [long] to [text]",
        );
        assert!(matches!(
            judge_item(OpKind::Index, 400, Some(&field)),
            ItemOutcome::DeadLetter(_)
        ));
    }

    #[test]
    fn only_a_whole_request_400_about_the_request_content_is_split() {
        let failure = |error: Option<Value>| RequestFailure {
            reason: "http_400",
            detail: String::new(),
            error,
        };
        let validation = err(
            "action_request_validation_exception",
            "Validation Failed: 1: illegal version value [-5] for version type [EXTERNAL];",
        );
        assert!(document_at_fault(&failure(Some(validation))));
        let parse = err(
            "x_content_parse_exception",
            "[1:1] failed to parse field [version]",
        );
        assert!(document_at_fault(&failure(Some(parse))));
        // an HTML page from a proxy, or an unknown type: retried, never dead-lettered
        assert!(!document_at_fault(&failure(None)));
        assert!(!document_at_fault(&failure(Some(err(
            "some_future_exception",
            "?"
        )))));
        let block = err(
            "cluster_block_exception",
            "blocked by: [FORBIDDEN/8/index write (api)];",
        );
        assert!(!document_at_fault(&failure(Some(block))));
    }

    #[test]
    fn an_unknown_error_is_retried_loudly_not_dead_lettered() {
        let odd = err("some_future_exception", "?");
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 400, Some(&odd))),
            "item_unknown"
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 404, None)),
            "item_unknown"
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 418, None)),
            "item_unknown"
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 502, Some(&odd))),
            "item_5xx"
        );
        assert_eq!(
            retry_reason(judge_item(OpKind::Index, 409, Some(&odd))),
            "item_unknown"
        );
    }

    #[test]
    fn warnings_come_once_per_reason_per_interval_with_counts() {
        let w = WarnEvery::new(Duration::from_secs(3600));
        assert_eq!(w.note("cluster_block", 5), Some(5));
        assert_eq!(w.note("cluster_block", 7), None);
        assert_eq!(w.note("security", 1), Some(1));
        let w = WarnEvery::new(Duration::ZERO);
        assert_eq!(w.note("cluster_block", 2), Some(2));
        assert_eq!(w.note("cluster_block", 3), Some(3));
    }

    proptest::proptest! {
        /// Whatever a cluster (or a proxy in front of it) answers, parsing and judging never
        /// panic.
        #[test]
        fn bulk_answers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_bulk_response(&text);
        }

        #[test]
        fn bulk_shaped_answers_never_panic(
            statuses in proptest::collection::vec(0u16..1000, 0..8),
            types in proptest::collection::vec("[a-z_]{0,30}", 0..8),
            junk in "\\PC{0,40}",
        ) {
            let items: Vec<Value> = statuses
                .iter()
                .zip(types.iter().chain(std::iter::repeat(&String::new())))
                .map(|(s, t)| json!({"index": {"status": s, "error": {"type": t, "reason": junk}}}))
                .collect();
            let text = json!({"errors": true, "items": items}).to_string();
            for item in parse_bulk_response(&text).unwrap() {
                let _ = judge_item(OpKind::Index, item.status, item.error.as_ref());
                let _ = judge_item(OpKind::Delete, item.status, item.error.as_ref());
            }
            let _ = parse_bulk_response(&junk);
        }
    }

    #[test]
    fn bulk_responses_parse_with_mixed_items() {
        let text = r#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"t","_id":"1","status":201}},
            {"delete":{"_index":"t","_id":"2","status":404,"result":"not_found"}},
            {"index":{"_index":"t","_id":"9","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}}]}"#;
        let r: BulkResponse = serde_json::from_str(text).unwrap();
        let statuses: Vec<u16> = r
            .items
            .into_iter()
            .map(|m| m.into_values().next().unwrap().status)
            .collect();
        assert_eq!(statuses, [201, 404, 429]);
    }
}
