//! The Elasticsearch / OpenSearch sink: `_bulk` with external versions, retries that never drop
//! a write, and a dead-letter table for writes Elasticsearch refuses for good.
//!
//! Order of judgement for one request: the transport (timeout, connection) and the HTTP status
//! first — a whole request can be a 429 with no items — then each item: 2xx done; 404 on delete
//! done; 409 means the index already holds a newer version (stale, done); 429/5xx retried alone;
//! any other 4xx dead-lettered with its error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::{auth::Credentials, BulkParts, Elasticsearch};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::ack::{Ack, ShardId};
use crate::checkpoint::{CheckpointStore, DeadLetter};
use crate::config::SinkConfig;
use crate::http::Health;
use crate::metrics::{result, Metrics};
use crate::retry::Backoff;
use crate::transform::DocAction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Index,
    Delete,
}

impl OpKind {
    fn as_str(self) -> &'static str {
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
}

/// One versioned document operation, already encoded as its NDJSON lines.
#[derive(Debug)]
pub struct BulkOp {
    pub index: Arc<str>,
    pub id: String,
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
        let kind = match action {
            DocAction::Index(_) => OpKind::Index,
            DocAction::Delete => OpKind::Delete,
        };
        let meta = json!({ kind.as_str(): { "_index": &*index, "_id": &id, "version": version, "version_type": "external" } });
        let mut lines = serde_json::to_vec(&meta).expect("serializing JSON to memory");
        lines.push(b'\n');
        if let DocAction::Index(source) = &action {
            serde_json::to_writer(&mut lines, source).expect("serializing JSON to memory");
            lines.push(b'\n');
        }
        Self {
            index,
            id,
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
    /// 429 / 5xx: retry this item alone.
    Retry(String),
    /// Any other 4xx: refused for good.
    DeadLetter(String),
}

pub fn judge_item(kind: OpKind, status: u16, error: Option<&Value>) -> ItemOutcome {
    let describe = || match error {
        Some(e) => {
            let ty = e.get("type").and_then(Value::as_str).unwrap_or("error");
            let reason = e.get("reason").and_then(Value::as_str).unwrap_or("");
            format!("{status} {ty}: {reason}")
        }
        None => format!("HTTP {status}"),
    };
    match (status, kind) {
        (200..=299, OpKind::Index) => ItemOutcome::Indexed,
        (200..=299, OpKind::Delete) | (404, OpKind::Delete) => ItemOutcome::Deleted,
        (409, _) => ItemOutcome::Stale,
        (429, _) | (500..=599, _) => ItemOutcome::Retry(describe()),
        _ => ItemOutcome::DeadLetter(describe()),
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

/// Why a whole request must be retried.
#[derive(Debug)]
struct RequestFailure {
    reason: &'static str,
    detail: String,
}

pub struct BulkSink {
    client: Elasticsearch,
    timeout: Duration,
    backoff: Backoff,
    max_retries: u32,
    store: CheckpointStore,
    metrics: Metrics,
    health: Arc<Health>,
}

impl BulkSink {
    pub fn new(
        cfg: &SinkConfig,
        store: CheckpointStore,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let url = cfg
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("sink.url `{}`: {e}", cfg.url))?;
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(cfg.request_timeout)
            .disable_proxy();
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            transport = transport.auth(Credentials::Basic(user.clone(), pass.clone()));
        }
        let client = Elasticsearch::new(transport.build()?);
        Ok(Self {
            client,
            timeout: cfg.request_timeout,
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
            max_retries: cfg.max_retries,
            store,
            metrics,
            health,
        })
    }

    /// GET / — is the cluster there at all? Used for readiness.
    pub async fn probe(&self) -> bool {
        let ok = match self
            .client
            .info()
            .request_timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.status_code().is_success(),
            Err(_) => false,
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
    pub async fn write(&self, ops: Vec<BulkOp>) {
        let mut parts = std::collections::VecDeque::from([ops]);
        while let Some(part) = parts.pop_front() {
            let Some(mut too_large) = self.write_part(part).await else {
                continue;
            };
            if too_large.len() == 1 {
                self.dead_letter_all(
                    too_large,
                    "HTTP 413: the document alone exceeds the cluster's request size limit",
                )
                .await;
                continue;
            }
            self.metrics
                .retries
                .with_label_values(&["http_413_split"])
                .inc();
            let second = too_large.split_off(too_large.len() / 2);
            tracing::warn!(
                documents = too_large.len() + second.len(),
                "bulk request too large for the cluster (413); splitting it in two"
            );
            parts.push_front(second);
            parts.push_front(too_large);
        }
    }

    /// One request's worth: `Some(ops)` back when the cluster answered 413 (too large).
    async fn write_part(&self, ops: Vec<BulkOp>) -> Option<Vec<BulkOp>> {
        let mut pending = ops;
        let mut attempt: u32 = 0;
        while !pending.is_empty() {
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
                Ok(items) if items.len() != pending.len() => Err(RequestFailure {
                    reason: "malformed_response",
                    detail: format!("{} items for {} operations", items.len(), pending.len()),
                }),
                Ok(items) => {
                    self.metrics.bulk_requests.with_label_values(&["ok"]).inc();
                    Ok(items)
                }
            };
            let items = match outcome {
                Ok(items) => items,
                Err(failure) if failure.reason == "http_413" => return Some(pending),
                Err(failure) => {
                    attempt += 1;
                    self.metrics
                        .retries
                        .with_label_values(&[failure.reason])
                        .inc();
                    if self.max_retries > 0 && attempt > self.max_retries {
                        let why = format!(
                            "gave up after {} retries: {}",
                            self.max_retries, failure.detail
                        );
                        self.dead_letter_all(pending, &why).await;
                        return None;
                    }
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(reason = failure.reason, error = %failure.detail, attempt, delay_ms = delay.as_millis() as u64, "bulk request failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let mut retry = Vec::new();
            let mut dead = Vec::new();
            for (op, item) in pending.into_iter().zip(items) {
                match judge_item(op.kind, item.status, item.error.as_ref()) {
                    ItemOutcome::Indexed => self.finish(op, result::INDEXED),
                    ItemOutcome::Deleted => self.finish(op, result::DELETED),
                    ItemOutcome::Stale => self.finish(op, result::STALE),
                    ItemOutcome::Retry(why) => {
                        let reason = if item.status == 429 {
                            "item_429"
                        } else {
                            "item_5xx"
                        };
                        self.metrics.retries.with_label_values(&[reason]).inc();
                        retry.push((op, why));
                    }
                    ItemOutcome::DeadLetter(why) => dead.push((op, why)),
                }
            }
            self.dead_letter(dead).await;
            if retry.is_empty() {
                return None;
            }
            attempt += 1;
            if self.max_retries > 0 && attempt > self.max_retries {
                let give_up = retry
                    .into_iter()
                    .map(|(op, why)| {
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
            tracing::debug!(items = retry.len(), attempt, first_error = %retry[0].1, "retrying rejected items");
            tokio::time::sleep(delay).await;
            pending = retry.into_iter().map(|(op, _)| op).collect();
        }
        None
    }

    async fn send(&self, body: Vec<Bytes>) -> Result<Vec<BulkItem>, RequestFailure> {
        let started = Instant::now();
        let response = self
            .client
            .bulk(BulkParts::None)
            .body(body)
            .request_timeout(self.timeout)
            .send()
            .await;
        self.metrics
            .bulk_duration
            .observe(started.elapsed().as_secs_f64());
        let response = response.map_err(|e| {
            self.health.set_sink_reachable(false);
            let reason = if e.is_timeout() {
                "timeout"
            } else {
                "connection"
            };
            RequestFailure {
                reason,
                detail: e.to_string(),
            }
        })?;
        self.health.set_sink_reachable(true);
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| RequestFailure {
            reason: "connection",
            detail: e.to_string(),
        })?;
        if status == 429 {
            return Err(RequestFailure {
                reason: "http_429",
                detail: truncate(&text),
            });
        }
        if status >= 500 {
            return Err(RequestFailure {
                reason: "http_5xx",
                detail: format!("HTTP {status}: {}", truncate(&text)),
            });
        }
        if status == 413 {
            return Err(RequestFailure {
                reason: "http_413",
                detail: truncate(&text),
            });
        }
        if !(200..300).contains(&status) {
            // 401/403…: no write can succeed until someone fixes the cluster or the config;
            // keep retrying (with the cap) and say so loudly rather than dropping the batch.
            tracing::error!(status, body = %truncate(&text), "bulk request refused as a whole");
            return Err(RequestFailure {
                reason: "http_4xx",
                detail: format!("HTTP {status}: {}", truncate(&text)),
            });
        }
        serde_json::from_str::<BulkResponse>(&text)
            .map(|r| {
                r.items
                    .into_iter()
                    .filter_map(|m| m.into_values().next())
                    .collect()
            })
            .map_err(|e| RequestFailure {
                reason: "malformed_response",
                detail: format!("{e}: {}", truncate(&text)),
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
                    version: Some(op.version),
                    action: op.kind.as_str().into(),
                    payload: op.source_text(),
                    error: why.clone(),
                }
            })
            .collect();
        self.store.dead_letter_durably(letters).await;
        for (op, _) in ops {
            self.finish(op, result::DEAD_LETTERED);
        }
    }
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

    fn origin() -> Origin {
        Origin {
            stream: "s".into(),
            shard: "shard-1".into(),
            sequence_number: "1".into(),
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

    #[test]
    fn items_are_judged_as_the_elasticsearch_docs_describe() {
        let err = |ty: &str| json!({"type": ty, "reason": "r"});
        assert_eq!(judge_item(OpKind::Index, 201, None), ItemOutcome::Indexed);
        assert_eq!(judge_item(OpKind::Index, 200, None), ItemOutcome::Indexed);
        assert_eq!(judge_item(OpKind::Delete, 200, None), ItemOutcome::Deleted);
        assert_eq!(judge_item(OpKind::Delete, 404, None), ItemOutcome::Deleted);
        assert_eq!(
            judge_item(
                OpKind::Index,
                409,
                Some(&err("version_conflict_engine_exception"))
            ),
            ItemOutcome::Stale
        );
        assert!(matches!(
            judge_item(
                OpKind::Index,
                429,
                Some(&err("es_rejected_execution_exception"))
            ),
            ItemOutcome::Retry(_)
        ));
        assert!(matches!(
            judge_item(OpKind::Index, 503, None),
            ItemOutcome::Retry(_)
        ));
        assert_eq!(
            judge_item(OpKind::Index, 400, Some(&err("mapper_parsing_exception"))),
            ItemOutcome::DeadLetter("400 mapper_parsing_exception: r".into())
        );
        // an index (not delete) answered 404 (e.g. index closed) is not silently accepted
        assert!(matches!(
            judge_item(OpKind::Index, 404, None),
            ItemOutcome::DeadLetter(_)
        ));
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
