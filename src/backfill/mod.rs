//! Backfill: the rows that existed before the stream, loaded with a parallel Scan beside the
//! running stream, resumably, through the same batcher and sink.
//!
//! * One task per Scan segment (`Segment`/`TotalSegments`); a segment's `LastEvaluatedKey` is
//!   saved in the SQLite file only after every document of the page is acknowledged, so a killed
//!   backfill resumes at the last acknowledged page of each segment.
//! * Every scan image is written with one version: the scan's start time **minus**
//!   `backfill.clock_skew_allowance`, in µs — the unit of stream versions. A change the scan did
//!   not see was made after its item was read, so after the scan started; its stream version is at
//!   least its `ApproximateCreationDateTime` (whole seconds, from DynamoDB's clock), which is above
//!   the scan version as long as the two clocks differ by less than the allowance (less one
//!   second of rounding). So a scan image never overwrites a newer change, and a stream change is
//!   never lost to an older scan image (ARCHITECTURE.md, "Backfill").
//! * Reads are paced by `ConsumedCapacity` to `max_read_units_per_second`, shared by all segments.
//!
//! [`export`] reads a DynamoDB export (ExportTableToPointInTime) instead of scanning.

pub mod export;
pub mod progress;
pub mod tombstones;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use rusqlite::params;
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckTracker, ShardId};
use crate::batch::{self, Router};
use crate::checkpoint::{now_ms, CheckpointStore, DeadLetter, ShardCheckpoint, StoreError};
use crate::config::Config;
use crate::http::Health;
use crate::lease::Fence;
use crate::metrics::Metrics;
use crate::sink::{BulkOp, BulkSink, Origin};
use crate::transform::route::{IdRule, Routes, RowChange, Template};
use crate::transform::{item_to_json, DecodeError, Decoded};

/// Where one segment stands.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentProgress {
    pub segment: u32,
    pub total: u32,
    /// The last acknowledged page's LastEvaluatedKey (DynamoDB JSON); `None` before the first.
    pub last_key: Option<String>,
    pub done: bool,
    pub items: u64,
    /// The version every image of this backfill is written with.
    pub version: u64,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backfill_segments (
    table_name TEXT NOT NULL,
    segment    INTEGER NOT NULL,
    total      INTEGER NOT NULL,
    last_key   TEXT,
    done       INTEGER NOT NULL DEFAULT 0,
    items      INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (table_name, segment)
)";

/// The saved progress of `table`'s backfill (empty if none ever started).
pub async fn progress(
    store: &CheckpointStore,
    table: &str,
) -> Result<Vec<SegmentProgress>, StoreError> {
    let table = table.to_string();
    store
        .with_connection(move |conn| {
            conn.execute(SCHEMA, [])?;
            let mut stmt = conn.prepare(
                "SELECT segment, total, last_key, done, items, version FROM backfill_segments
                 WHERE table_name = ?1 ORDER BY segment",
            )?;
            let rows = stmt.query_map(params![table], |r| {
                Ok(SegmentProgress {
                    segment: r.get(0)?,
                    total: r.get(1)?,
                    last_key: r.get(2)?,
                    done: r.get::<_, i64>(3)? != 0,
                    items: r.get::<_, i64>(4)? as u64,
                    version: r.get::<_, i64>(5)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

async fn save(store: &CheckpointStore, table: &str, p: &SegmentProgress) -> Result<(), StoreError> {
    let (table, p) = (table.to_string(), p.clone());
    store
        .with_connection(move |conn| {
            conn.execute(SCHEMA, [])?;
            conn.execute(
                "INSERT INTO backfill_segments (table_name, segment, total, last_key, done, items, version, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (table_name, segment) DO UPDATE SET last_key = excluded.last_key,
                   done = excluded.done, items = excluded.items, updated_at_ms = excluded.updated_at_ms",
                params![table, p.segment, p.total, p.last_key, p.done as i64, p.items as i64, p.version as i64, now_ms()],
            )
            .map(|_| ())
            .map_err(StoreError::from)
        })
        .await
}

/// Scans can read at most this many units a second (shared by every segment); 0: no limit.
pub(crate) struct ReadPace {
    per_second: f64,
    /// Units read beyond what the elapsed time allows: paid back by sleeping.
    debt: Mutex<(tokio::time::Instant, f64)>,
}

impl ReadPace {
    pub(crate) fn new(per_second: f64) -> Self {
        Self {
            per_second,
            debt: Mutex::new((tokio::time::Instant::now(), 0.0)),
        }
    }

    pub(crate) async fn consumed(&self, units: f64) {
        if self.per_second <= 0.0 {
            return;
        }
        let wait = {
            let mut d = self.debt.lock().await;
            let now = tokio::time::Instant::now();
            let paid = now.duration_since(d.0).as_secs_f64() * self.per_second;
            d.1 = (d.1 - paid).max(0.0) + units;
            d.0 = now;
            Duration::from_secs_f64(d.1 / self.per_second)
        };
        tokio::time::sleep(wait).await;
    }
}

/// DynamoDB's AttributeValue, as the stream decoder's (which turns it into JSON).
fn to_stream_value(
    v: &AttributeValue,
) -> Result<aws_sdk_dynamodbstreams::types::AttributeValue, String> {
    use aws_sdk_dynamodbstreams::primitives::Blob;
    use aws_sdk_dynamodbstreams::types::AttributeValue as S;
    Ok(match v {
        AttributeValue::S(x) => S::S(x.clone()),
        AttributeValue::N(x) => S::N(x.clone()),
        AttributeValue::B(b) => S::B(Blob::new(b.as_ref())),
        AttributeValue::Bool(b) => S::Bool(*b),
        AttributeValue::Null(b) => S::Null(*b),
        AttributeValue::M(m) => S::M(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), to_stream_value(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        AttributeValue::L(l) => S::L(l.iter().map(to_stream_value).collect::<Result<_, _>>()?),
        AttributeValue::Ss(x) => S::Ss(x.clone()),
        AttributeValue::Ns(x) => S::Ns(x.clone()),
        AttributeValue::Bs(x) => S::Bs(x.iter().map(|b| Blob::new(b.as_ref())).collect()),
        other => return Err(format!("unsupported attribute type {other:?}")),
    })
}

/// An item in DynamoDB's JSON wire form (`{"attr": {"S": "…"}}`), for dead letters.
fn wire_json(item: &HashMap<String, AttributeValue>) -> Value {
    fn one(v: &AttributeValue) -> Value {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match v {
            AttributeValue::S(x) => serde_json::json!({ "S": x }),
            AttributeValue::N(x) => serde_json::json!({ "N": x }),
            AttributeValue::B(b) => serde_json::json!({ "B": b64(b.as_ref()) }),
            AttributeValue::Bool(b) => serde_json::json!({ "BOOL": b }),
            AttributeValue::Null(b) => serde_json::json!({ "NULL": b }),
            AttributeValue::M(m) => serde_json::json!({ "M": wire_json(m) }),
            AttributeValue::L(l) => {
                serde_json::json!({ "L": l.iter().map(one).collect::<Vec<_>>() })
            }
            AttributeValue::Ss(x) => serde_json::json!({ "SS": x }),
            AttributeValue::Ns(x) => serde_json::json!({ "NS": x }),
            AttributeValue::Bs(x) => {
                serde_json::json!({ "BS": x.iter().map(|b| b64(b.as_ref())).collect::<Vec<_>>() })
            }
            _ => serde_json::json!({ "unknown": "an attribute type this SDK does not know" }),
        }
    }
    Value::Object(item.iter().map(|(k, v)| (k.clone(), one(v))).collect())
}

/// A LastEvaluatedKey in DynamoDB's JSON wire form (`{"attr": {"S": "…"}}`), read back exactly.
fn key_json(key: &HashMap<String, AttributeValue>) -> Result<String, String> {
    let scalar = |v: &AttributeValue| {
        matches!(
            v,
            AttributeValue::S(_) | AttributeValue::N(_) | AttributeValue::B(_)
        )
    };
    if !key.values().all(scalar) {
        return Err("a key attribute is not S, N or B".into());
    }
    Ok(wire_json(key).to_string())
}

fn key_from_json(text: &str) -> Result<HashMap<String, AttributeValue>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not an object")?;
    obj.iter()
        .map(|(k, v)| {
            let value = if let Some(s) = v.get("S").and_then(Value::as_str) {
                AttributeValue::S(s.into())
            } else if let Some(n) = v.get("N").and_then(Value::as_str) {
                AttributeValue::N(n.into())
            } else if let Some(b) = v.get("B").and_then(Value::as_str) {
                let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
                    .map_err(|e| e.to_string())?;
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes))
            } else {
                return Err(format!("key attribute `{k}` is not S, N or B"));
            };
            Ok((k.clone(), value))
        })
        .collect()
}

/// What every segment task shares.
struct Shared {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// Where its progress is kept: the table *and* the index it fills.
    key: String,
    routes: Routes,
    /// Where a route without an index of its own writes (`sink.index`).
    default_index: Arc<str>,
    key_attributes: Vec<String>,
    consistent_read: bool,
    page_items: Option<u32>,
    router: Router,
    tracker: AckTracker,
    store: CheckpointStore,
    pace: ReadPace,
    progress: Arc<progress::Progress>,
    metrics: Metrics,
}

/// What a backfill's progress, claim and completion are kept under: the table and the indices it
/// fills — pointing `sink.index` (or a route) at a new index backfills that one too.
pub fn progress_key(config: &Config) -> anyhow::Result<String> {
    Ok(format!(
        "{} → {}",
        table_name(config)?,
        target_names(&targets(config)?)
    ))
}

/// The indices a backfill writes, as the configuration names them: `sink.index`, or each
/// route's index (fixed, or a template such as `posts-{tenant}`), each once.
pub(crate) fn targets(config: &Config) -> anyhow::Result<Vec<(String, Template)>> {
    let mut texts: Vec<&str> = if config.route.is_empty() {
        vec![config.sink.index.as_str()]
    } else {
        config
            .route
            .iter()
            .map(|r| r.index.as_deref().unwrap_or(config.sink.index.as_str()))
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    texts.retain(|t| seen.insert(*t));
    texts
        .into_iter()
        .map(|t| {
            Template::parse(t)
                .map(|template| (t.to_owned(), template))
                .map_err(|e| anyhow::anyhow!("index {e}"))
        })
        .collect()
}

pub(crate) fn target_names(targets: &[(String, Template)]) -> String {
    targets
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The routes a backfill applies: the stream's, with what the stream knows of the key, so that
/// an item lands where the stream puts it — and is refused where the stream refuses it.
/// DynamoDB Streams knows the key from DescribeTable; DynamoDB→Kinesis records carry their keys
/// unordered, and the stream presumes the key from the routes' ids (`Routes::from_config`).
pub(crate) fn routes(
    config: &Config,
    table: &str,
    key_attributes: &[String],
) -> anyhow::Result<Routes> {
    let key = match config.source.kind {
        crate::config::SourceType::Kinesis => None,
        _ => (!key_attributes.is_empty()).then_some(key_attributes),
    };
    let routes = Routes::from_config(config, key)?;
    if routes.key.is_none()
        && key_attributes.len() > 1
        && routes.routes.iter().any(|r| r.id == IdRule::Key)
    {
        anyhow::bail!(
            "table `{table}` has a composite key ({}): DynamoDB→Kinesis records carry it without its order, so the stream cannot build `_id` from it — set sink.document_id = [{}]",
            key_attributes.join(", "),
            key_attributes.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
        );
    }
    // a route on another table would take nothing, and the backfill would say it is complete
    if let Some((route, other)) = routes
        .routes
        .iter()
        .find_map(|r| Some((r, r.table.as_deref().filter(|t| *t != table)?)))
    {
        anyhow::bail!(
            "route `{}` takes table `{other}`, but the backfill reads table `{table}`: remove `table` or correct it",
            route.name
        );
    }
    Ok(routes)
}

/// A table item as the stream would write it (the INSERT of the item): its documents, placed by
/// the routes, or a counted skip.
pub(crate) fn item_changes(
    routes: &Routes,
    table: &str,
    key_attributes: &[String],
    row: Map<String, Value>,
) -> Result<Decoded, DecodeError> {
    let keys: Map<String, Value> = key_attributes
        .iter()
        .filter_map(|k| Some((k.clone(), row.get(k)?.clone())))
        .collect();
    routes.apply(RowChange {
        table: Some(table.to_owned()),
        new: Some(row),
        new_json: None,
        old: None,
        keys: (!keys.is_empty()).then_some(keys),
        version: None,
    })
}

/// A scanned item as the JSON row the routes read.
pub(crate) fn item_row(
    item: &HashMap<String, AttributeValue>,
) -> Result<Map<String, Value>, DecodeError> {
    let stream_item: HashMap<String, _> = item
        .iter()
        .map(|(k, v)| Ok((k.clone(), to_stream_value(v)?)))
        .collect::<Result<_, String>>()
        .map_err(DecodeError)?;
    match item_to_json(&stream_item)? {
        Value::Object(m) => Ok(m),
        _ => Err(DecodeError("an item that is not a map".into())),
    }
}

/// The table a backfill reads: `backfill.table`, else `source.table`.
pub fn table_name(config: &Config) -> anyhow::Result<String> {
    config
        .backfill
        .table
        .clone()
        .or_else(|| config.source.table.clone())
        .ok_or_else(|| anyhow::anyhow!("backfill.table (or source.table) names no table to scan"))
}

/// What DescribeTable says of a table.
pub(crate) struct TableShape {
    /// Key attributes, hash key first (for `_id`, as the stream decoder orders them).
    pub keys: Vec<String>,
    /// Attribute types (S, N, B) of the attributes the table defines (its keys and indices').
    pub key_types: HashMap<String, aws_sdk_dynamodb::types::ScalarAttributeType>,
    /// Size in bytes and item count: approximate, DynamoDB updates them about every six hours.
    pub size: u64,
    pub item_count: u64,
}

pub(crate) async fn describe(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<TableShape> {
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "table `{table}`: {}",
                aws_smithy_types::error::display::DisplayErrorContext(e)
            )
        })?;
    let description = out
        .table()
        .ok_or_else(|| anyhow::anyhow!("table `{table}` not described"))?;
    let mut schema: Vec<_> = description.key_schema().to_vec();
    schema.sort_by_key(|k| k.key_type().as_str() != "HASH");
    Ok(TableShape {
        keys: schema
            .iter()
            .map(|k| k.attribute_name().to_string())
            .collect(),
        key_types: description
            .attribute_definitions()
            .iter()
            .map(|d| (d.attribute_name().to_string(), d.attribute_type().clone()))
            .collect(),
        size: description.table_size_bytes().unwrap_or(0).max(0) as u64,
        item_count: description.item_count().unwrap_or(0).max(0) as u64,
    })
}

pub(crate) async fn client(config: &Config) -> aws_sdk_dynamodb::Client {
    let sdk = crate::source::dynamodb_streams::sdk_config(&config.source).await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

/// The table's key attributes, hash key first.
pub async fn table_keys(config: &Config) -> anyhow::Result<Vec<String>> {
    let table = table_name(config)?;
    Ok(describe(&client(config).await, &table).await?.keys)
}

/// Where a backfill's operations go: a batcher's router, and the fence its sink checks (the
/// backfill grants its own parts in it: nobody else writes them).
#[derive(Clone)]
pub struct Writer {
    pub router: Router,
    pub fence: Fence,
}

impl Writer {
    pub(crate) fn hold(&self, parts: &[ShardId]) {
        let forever = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400);
        for part in parts {
            self.fence.grant(part, 1, forever);
        }
    }
}

/// The batcher and sink the stream uses, for a tool that runs without the daemon; the lanes end
/// once every clone of the router is dropped.
pub(crate) async fn writer(
    config: &Config,
    store: &CheckpointStore,
    metrics: &Metrics,
) -> anyhow::Result<(Writer, Vec<tokio::task::JoinHandle<()>>)> {
    let health = Arc::new(Health::new(config.health.sink_error_grace));
    let fence = Fence::default();
    let sink = BulkSink::new(
        &config.sink,
        &config.source.region,
        store.clone(),
        metrics.clone(),
        health,
        fence.clone(),
    )
    .await?;
    let (router, lanes) = batch::start(&config.batch, Arc::new(sink), metrics.clone());
    Ok((Writer { router, fence }, lanes))
}

/// Runs `sluice backfill` on its own: a writer of its own, progress on stderr.
pub async fn run_alone(
    config: &Config,
    segments: Option<u32>,
) -> anyhow::Result<Vec<SegmentProgress>> {
    let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
    let metrics = Metrics::new();
    let table = progress_key(config)?;
    let worker = crate::app::worker_id(config);
    // a process killed while backfilling leaves its claim: it is taken over once stale
    let mut said = false;
    while !claim(&store, &table, &worker).await? {
        if !said {
            tracing::warn!(table = %table, "another process is backfilling this table with this checkpoint file; waiting until it stops or its claim goes stale (30 s)");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (out, lanes) = writer(config, &store, &metrics).await?;
    let result = tokio::select! {
        r = run(config, &store, segments, out, &metrics, progress::Display::for_stderr()) => r,
        _ = renew_claim(store.clone(), table.clone(), worker.clone()) => {
            Err(anyhow::anyhow!("the claim on the backfill could not be renewed"))
        }
    };
    let _ = release_claim(&store, &table, &worker).await;
    for lane in lanes {
        let _ = lane.await;
    }
    result
}

/// `[backfill] on_start`: inside `sluice run`, once the stream is being followed, backfills the
/// table unless this checkpoint file records that it was done (an interrupted one resumes).
/// Errors are logged and the backfill tried again a minute later; the stream is not stopped.
pub async fn on_start(
    config: Config,
    store: CheckpointStore,
    out: Writer,
    metrics: Metrics,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let table = match progress_key(&config) {
        Ok(t) => t,
        Err(e) => return tracing::error!(error = %e, "backfill on start"),
    };
    let worker = crate::app::worker_id(&config);
    let work = async {
        // Changes the scan misses must reach the stream's readers: start scanning only once
        // every shard is read (ready), and its reader has polled at least once.
        while health.not_ready().is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(config.source.poll_interval * 2 + Duration::from_secs(1)).await;
        let mut attempt = 0u32;
        loop {
            match finished(&store, &table).await {
                Ok(true) => {
                    // a raise that could not be put back when it completed is put back now
                    if let Err(e) = tombstones::restore(&config, &store, &table).await {
                        tracing::error!(error = %format!("{e:#}"), "backfill on start");
                    }
                    tracing::info!(backfill = %table, "backfill on start: backfilled before (this table into this index); nothing to do");
                    metrics.backfill_complete.set(1);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "backfill on start: cannot read its progress")
                }
            }
            match claim(&store, &table, &worker).await {
                Ok(true) => {
                    let renewing = renew_claim(store.clone(), table.clone(), worker.clone());
                    let result = tokio::select! {
                        r = run(&config, &store, None, out.clone(), &metrics, progress::Display::Log) => r,
                        _ = renewing => Err(anyhow::anyhow!("the claim on the backfill could not be renewed")),
                    };
                    let _ = release_claim(&store, &table, &worker).await;
                    match result {
                        Ok(_) => return,
                        Err(e) => {
                            tracing::error!(table = %table, error = format!("{e:#}"), "backfill on start failed; trying again in a minute")
                        }
                    }
                }
                Ok(false) => {
                    tracing::info!(table = %table, "another process on this checkpoint file is backfilling; waiting")
                }
                Err(e) => tracing::error!(error = %e, "backfill on start: cannot claim it"),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(60).min(Duration::from_secs(5) * attempt)).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = stop.cancelled() => {
            // the next process need not wait for the claim to go stale
            let _ = release_claim(&store, &table, &worker).await;
        }
    }
}

/// A claim unrenewed this long is taken over (its process died).
const CLAIM_STALE_AFTER_MS: i64 = 30_000;

const CLAIMS: &str = "CREATE TABLE IF NOT EXISTS backfill_claims (
    table_name TEXT PRIMARY KEY, owner TEXT NOT NULL, heartbeat_ms INTEGER NOT NULL)";

/// Claims the backfill of `table` among the processes sharing this checkpoint file (the
/// `sqlite` lease backend), so that one of them scans.
async fn claim(store: &CheckpointStore, table: &str, worker: &str) -> Result<bool, StoreError> {
    let (table, worker) = (table.to_string(), worker.to_string());
    store
        .with_connection(move |conn| {
            conn.execute(CLAIMS, [])?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held: Option<(String, i64)> = rusqlite::OptionalExtension::optional(tx.query_row(
                "SELECT owner, heartbeat_ms FROM backfill_claims WHERE table_name = ?1",
                params![table],
                |r| Ok((r.get(0)?, r.get(1)?)),
            ))?;
            let now = now_ms();
            let free = match &held {
                None => true,
                Some((owner, beat)) => owner == &worker || now - beat > CLAIM_STALE_AFTER_MS,
            };
            if free {
                tx.execute(
                    "INSERT OR REPLACE INTO backfill_claims (table_name, owner, heartbeat_ms) VALUES (?1, ?2, ?3)",
                    params![table, worker, now],
                )?;
            }
            tx.commit()?;
            Ok(free)
        })
        .await
}

/// Renews the claim every few seconds; returns only when it was lost or cannot be renewed.
async fn renew_claim(store: CheckpointStore, table: String, worker: String) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(CLAIM_STALE_AFTER_MS as u64 / 6)).await;
        match claim(&store, &table, &worker).await {
            Ok(true) => failures = 0,
            Ok(false) => return,
            Err(_) => {
                failures += 1;
                if failures >= 3 {
                    return;
                }
            }
        }
    }
}

async fn release_claim(
    store: &CheckpointStore,
    table: &str,
    worker: &str,
) -> Result<(), StoreError> {
    let (table, worker) = (table.to_string(), worker.to_string());
    store
        .with_connection(move |conn| {
            conn.execute(CLAIMS, [])?;
            conn.execute(
                "DELETE FROM backfill_claims WHERE table_name = ?1 AND owner = ?2",
                params![table, worker],
            )?;
            Ok(())
        })
        .await
}

/// Has this checkpoint file seen the backfill of `table` through to the end?
pub async fn finished(store: &CheckpointStore, table: &str) -> Result<bool, StoreError> {
    let saved = progress(store, table).await?;
    Ok(!saved.is_empty() && saved.iter().all(|p| p.done) && saved.len() as u32 == saved[0].total)
}

/// Runs (or resumes) the backfill of the configured table until every segment is done,
/// writing through `out`.
pub async fn run(
    config: &Config,
    store: &CheckpointStore,
    segments: Option<u32>,
    out: Writer,
    metrics: &Metrics,
    display: progress::Display,
) -> anyhow::Result<Vec<SegmentProgress>> {
    let table = table_name(config)?;
    let key = progress_key(config)?;
    let client = client(config).await;
    let TableShape {
        keys: key_attributes,
        size,
        item_count,
        ..
    } = describe(&client, &table).await?;
    let saved = progress(store, &key).await?;
    if let Some(n) = segments {
        anyhow::ensure!(
            (1..=1_000_000).contains(&n),
            "--segments {n}: must be between 1 and 1000000"
        );
    }
    let (total, version) = match saved.first() {
        // resume with the segmentation and the version this backfill started with
        Some(p) => (p.total, p.version),
        None => {
            let total = segments
                .or(config.backfill.segments)
                .unwrap_or_else(|| (size / (256 << 20)).clamp(1, 64) as u32 + 1);
            (total, scan_version(config.backfill.clock_skew_allowance))
        }
    };
    tracing::info!(table = %table, segments = total, version, resumed = !saved.is_empty(), "backfill starting");
    let segment_ids: Vec<ShardId> = (0..total).map(segment_id).collect();
    out.hold(&segment_ids);
    tombstones::keep(config, store, &key).await?;
    let routes = routes(config, &table, &key_attributes)?;
    let starts: Vec<SegmentProgress> = (0..total)
        .map(|s| {
            saved
                .iter()
                .find(|p| p.segment == s)
                .cloned()
                .unwrap_or(SegmentProgress {
                    segment: s,
                    total,
                    last_key: None,
                    done: false,
                    items: 0,
                    version,
                })
        })
        .collect();
    let done_before = starts.iter().filter(|p| p.done).count() as u32;
    let report = progress::Progress::new(
        metrics.clone(),
        format!("table `{table}`"),
        "segments",
        total,
        done_before,
        starts.iter().map(|p| p.items).sum(),
        item_count,
    );
    for p in &starts {
        metrics
            .backfill_segment_items
            .with_label_values(&[&p.segment.to_string()])
            .set(p.items as i64);
    }
    let shared = Arc::new(Shared {
        client,
        table: table.clone(),
        key: key.clone(),
        routes,
        default_index: config.sink.index.clone().into(),
        key_attributes,
        consistent_read: config.backfill.consistent_read,
        page_items: config.backfill.page_items,
        router: out.router,
        tracker: AckTracker::default(),
        store: store.clone(),
        pace: ReadPace::new(config.backfill.max_read_units_per_second.unwrap_or(0.0)),
        progress: report.clone(),
        metrics: metrics.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for start in starts.into_iter().filter(|p| !p.done) {
        let shared = shared.clone();
        tasks.spawn(async move { scan_segment(&shared, start).await });
    }
    let not_done = total - done_before;
    report.set_part_states(not_done, not_done);
    let showing = CancellationToken::new();
    let shown = tokio::spawn(report.clone().show(display, showing.clone()));
    // stops showing however this ends (an error, or the caller dropping it)
    let _showing = showing.clone().drop_guard();
    let mut failure = None;
    let mut left = not_done;
    // indices of templated targets appear while the scan runs: their deletes are kept too
    let watching = tombstones::watch(config, store, &key);
    tokio::pin!(watching);
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                left -= 1;
                report.set_part_states(left, left);
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => failure = Some(anyhow::anyhow!("a segment task failed: {e}")),
                }
            }
            e = &mut watching => {
                // the segments stop (dropped with `tasks`): what they wrote unacknowledged is
                // read again when the backfill resumes
                failure = Some(e.context("keeping the deletes of a new index"));
                break;
            }
        }
    }
    drop(tasks);
    showing.cancel();
    let _ = shown.await;
    drop(shared);
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::info!(table = %table, "backfill complete");
    tombstones::restore(config, store, &key).await?;
    Ok(progress(store, &key).await?)
}

/// Waits until everything registered under `part` is acknowledged.
pub(crate) async fn acknowledged(tracker: &AckTracker, part: &ShardId) {
    while !tracker.complete_prefix(part) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn segment_id(segment: u32) -> ShardId {
    format!("backfill-segment-{segment}").into()
}

/// The version of every scan image: the scan's start, less the clock-skew allowance, in µs.
pub fn scan_version(allowance: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now_us = now.as_micros() as i64 + test_clock_offset_us();
    (now_us.max(0) as u64).saturating_sub(allowance.as_micros() as u64)
}

/// Test hook: `SLUICE_TEST_BACKFILL_CLOCK_OFFSET_MS` shifts the scan's clock (positive: ahead of
/// DynamoDB's), to show that a skew within the allowance changes nothing.
fn test_clock_offset_us() -> i64 {
    std::env::var("SLUICE_TEST_BACKFILL_CLOCK_OFFSET_MS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |ms| ms * 1000)
}

async fn scan_segment(shared: &Shared, mut at: SegmentProgress) -> anyhow::Result<()> {
    let shard = segment_id(at.segment);
    let origin_stream: Arc<str> = format!("backfill:{}", shared.table).into();
    let mut backoff = 0u32;
    let mut page_size = PageSize::new(
        shared.page_items,
        crate::source::dynamodb_streams::attempt_timeout(),
    );
    loop {
        let start_key = at
            .last_key
            .as_deref()
            .map(key_from_json)
            .transpose()
            .map_err(|e| anyhow::anyhow!("saved key of segment {}: {e}", at.segment))?;
        let asked = Instant::now();
        let page = shared
            .client
            .scan()
            .table_name(&shared.table)
            .segment(at.segment as i32)
            .total_segments(at.total as i32)
            .consistent_read(shared.consistent_read)
            .set_limit(page_size.limit().map(|n| n as i32))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .set_exclusive_start_key(start_key)
            .send()
            .await;
        let page = match page {
            Ok(p) => {
                backoff = 0;
                p
            }
            Err(e) => {
                let why = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
                if !scan_error_may_pass(&e) {
                    anyhow::bail!(
                        "scanning segment {} of `{}`: {why}",
                        at.segment,
                        shared.table
                    );
                }
                backoff += 1;
                let delay = crate::retry::Backoff::AWS.delay(backoff);
                let reason = if matches!(e, aws_sdk_dynamodb::error::SdkError::TimeoutError(_)) {
                    // the same page asked again would take as long: ask for less
                    page_size.timed_out();
                    "source_timeout"
                } else if scan_error_is_throttling(&e) {
                    "source_throttled"
                } else {
                    "source_transient"
                };
                shared.metrics.retries.with_label_values(&[reason]).inc();
                tracing::warn!(
                    segment = at.segment,
                    error = %why,
                    page_items = ?page_size.limit(),
                    "scan failed; retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let units = page
            .consumed_capacity()
            .and_then(|c| c.capacity_units())
            .unwrap_or(0.0);
        let next_key = page
            .last_evaluated_key()
            .filter(|k| !k.is_empty())
            .map(key_json)
            .transpose()
            .map_err(|e| anyhow::anyhow!("segment {}: {e}", at.segment))?;
        page_size.answered(page.items().len(), next_key.is_some(), asked.elapsed());
        let mut ops = Vec::new();
        let mut dead = Vec::new();
        let origin = Origin {
            stream: origin_stream.clone(),
            shard: shard.clone(),
            sequence_number: format!("segment {} item", at.segment),
            epoch: 1,
        };
        for item in page.items() {
            let placed = item_row(item).and_then(|row| {
                item_changes(&shared.routes, &shared.table, &shared.key_attributes, row)
            });
            let refusal = match placed {
                Ok(decoded) => {
                    if let Some(skip) = &decoded.skipped {
                        shared
                            .metrics
                            .records_skipped
                            .with_label_values(&[skip.reason])
                            .inc();
                    }
                    for change in decoded.changes {
                        ops.push(BulkOp::routed(
                            change.index.unwrap_or_else(|| shared.default_index.clone()),
                            change.id,
                            change.routing.as_deref(),
                            at.version,
                            change.action,
                            origin.clone(),
                        ));
                    }
                    decoded.refused
                }
                Err(e) => Some(e),
            };
            if let Some(e) = refusal {
                tracing::error!(segment = at.segment, error = %e, "item cannot be made a document: dead-lettered");
                shared.metrics.decode_errors.inc();
                dead.push(DeadLetter {
                    stream: origin_stream.to_string(),
                    shard_id: shard.to_string(),
                    sequence_number: origin.sequence_number.clone(),
                    index: None,
                    doc_id: None,
                    routing: None,
                    version: Some(at.version),
                    action: "decode".into(),
                    payload: wire_json(item).to_string(),
                    error: e.to_string(),
                });
            }
        }
        let n = ops.len();
        let records = page.items().len();
        shared.store.dead_letter_durably(dead).await;
        let checkpoint = ShardCheckpoint {
            sequence_number: next_key.clone(),
            clock: at.version,
            finished: next_key.is_none(),
            start_at: None,
        };
        let acks = shared.tracker.register(&shard, 1, checkpoint, records, n);
        for (mut op, ack) in ops.into_iter().zip(acks) {
            op.acks.push(ack);
            if shared.router.send(op).await.is_err() {
                anyhow::bail!("the sink stopped");
            }
        }
        // the page is saved only once every document of it is acknowledged
        acknowledged(&shared.tracker, &shard).await;
        at.items += n as u64;
        at.last_key = next_key;
        at.done = at.last_key.is_none();
        save(&shared.store, &shared.key, &at).await?;
        shared.progress.acknowledged(n as u64, at.done);
        shared
            .metrics
            .backfill_segment_items
            .with_label_values(&[&at.segment.to_string()])
            .set(at.items as i64);
        tracing::debug!(
            segment = at.segment,
            items = at.items,
            done = at.done,
            "backfill page acknowledged"
        );
        if at.done {
            return Ok(());
        }
        // paid before the next read, not between a read and its write: a page never waits
        // (and so never ages past index.gc_deletes) because of the pace
        shared.pace.consumed(units).await;
    }
}

/// The Limit of the next Scan page. A page that timed out is asked again for half as many
/// items: an overloaded table (or emulator) answering slower than the attempt timeout would
/// otherwise be asked the same page for ever and the backfill would never move. A page answered
/// in under a quarter of the timeout doubles the limit back towards the configured
/// `backfill.page_items` (so the doubled page still answers well within it, and the limit does
/// not swing between a page that works and one that times out); with none configured, the limit
/// is dropped again once a page comes back cut by DynamoDB's 1 MB instead (the limit no longer
/// decides the page's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageSize {
    configured: Option<u32>,
    current: Option<u32>,
    /// Items in the last page answered: where halving starts when no limit was asked.
    last_page: Option<u32>,
    /// A page answered faster than this may be doubled.
    grow_below: Duration,
}

impl PageSize {
    /// Where halving starts when no limit was asked and no page has come back yet: 1 MB of
    /// 1 KB items.
    const UNKNOWN_PAGE: u32 = 1_000;

    pub(crate) fn new(configured: Option<u32>, attempt_timeout: Duration) -> PageSize {
        PageSize {
            configured,
            current: configured,
            last_page: None,
            grow_below: attempt_timeout / 4,
        }
    }

    pub(crate) fn limit(&self) -> Option<u32> {
        self.current
    }

    pub(crate) fn timed_out(&mut self) {
        let from = self
            .current
            .or(self.last_page.filter(|&n| n > 0))
            .unwrap_or(Self::UNKNOWN_PAGE);
        self.current = Some((from / 2).max(1));
    }

    /// A page of `items` came back after `took`; `more`: it named a LastEvaluatedKey.
    pub(crate) fn answered(&mut self, items: usize, more: bool, took: Duration) {
        let items = u32::try_from(items).unwrap_or(u32::MAX);
        self.last_page = Some(items);
        let Some(current) = self.current else { return };
        if self.current == self.configured || took >= self.grow_below {
            return;
        }
        let cut_by_size = more && items < current;
        let doubled = current.saturating_mul(2);
        self.current = match self.configured {
            Some(configured) => Some(doubled.min(configured)),
            None if cut_by_size => None,
            None => Some(doubled),
        };
    }
}

/// Throttling as the shard readers classify it (one list of codes for both).
fn scan_error_is_throttling<R>(
    e: &aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::scan::ScanError, R>,
) -> bool {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    matches!(
        crate::source::classify_code(e.code(), String::new()),
        crate::source::ApiError::Throttled(_)
    )
}

/// Throttling, server errors and transport trouble pass; a missing table, missing permission or
/// an invalid request do not (a one-off task must end and say why).
pub(crate) fn scan_error_may_pass<R>(
    e: &aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::scan::ScanError, R>,
) -> bool {
    use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
    match e {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            !matches!(
                code,
                "ResourceNotFoundException"
                    | "AccessDeniedException"
                    | "ValidationException"
                    | "UnrecognizedClientException"
                    | "MissingAuthenticationTokenException"
            )
        }
        _ => true,
    }
}

/// `--status`: one line per segment.
pub fn render_status(table: &str, segments: &[SegmentProgress]) -> String {
    if segments.is_empty() {
        return format!("no backfill of `{table}` has started\n");
    }
    let done = segments.iter().filter(|s| s.done).count();
    let items: u64 = segments.iter().map(|s| s.items).sum();
    let mut out = format!(
        "backfill of `{table}`: {done}/{} segments done, {items} items written (version {})\n",
        segments[0].total, segments[0].version
    );
    for s in segments {
        out.push_str(&format!(
            "  segment {:>3}/{}: {:>9} items  {}\n",
            s.segment,
            s.total,
            s.items,
            if s.done {
                "done"
            } else if s.last_key.is_some() {
                "in progress"
            } else {
                "not started"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);
    const QUICK: Duration = Duration::from_secs(1);
    const SLOW: Duration = Duration::from_secs(10);

    #[test]
    fn a_page_that_timed_out_is_asked_again_for_half_as_many_items() {
        let mut unlimited = PageSize::new(None, TIMEOUT);
        assert_eq!(unlimited.limit(), None);
        unlimited.answered(900, true, SLOW);
        unlimited.timed_out();
        assert_eq!(unlimited.limit(), Some(450), "half the last page's items");
        unlimited.timed_out();
        assert_eq!(unlimited.limit(), Some(225));

        let mut first = PageSize::new(None, TIMEOUT);
        first.timed_out();
        assert_eq!(
            first.limit(),
            Some(500),
            "no page yet: half of 1 MB of 1 KB items"
        );

        let mut configured = PageSize::new(Some(3), TIMEOUT);
        for _ in 0..5 {
            configured.timed_out();
        }
        assert_eq!(configured.limit(), Some(1), "never below one item");
    }

    #[test]
    fn only_a_page_answered_well_within_the_timeout_doubles_the_limit_back() {
        let mut pages = PageSize::new(Some(800), TIMEOUT);
        pages.timed_out();
        pages.timed_out();
        assert_eq!(pages.limit(), Some(200));
        pages.answered(200, true, SLOW);
        assert_eq!(
            pages.limit(),
            Some(200),
            "half the timeout: doubling could time out"
        );
        pages.answered(200, true, QUICK);
        assert_eq!(pages.limit(), Some(400));
        pages.answered(400, true, QUICK);
        pages.answered(800, true, QUICK);
        assert_eq!(pages.limit(), Some(800), "not beyond backfill.page_items");
    }

    #[test]
    fn without_page_items_the_limit_is_dropped_once_the_1_mb_cap_cuts_the_page() {
        let mut pages = PageSize::new(None, TIMEOUT);
        pages.timed_out();
        pages.timed_out();
        assert_eq!(pages.limit(), Some(250));
        pages.answered(250, true, QUICK);
        assert_eq!(pages.limit(), Some(500));
        pages.answered(400, true, QUICK);
        assert_eq!(
            pages.limit(),
            None,
            "400 of 500: DynamoDB's 1 MB decided the page"
        );
        let mut end = PageSize::new(None, TIMEOUT);
        end.timed_out();
        end.answered(30, false, QUICK);
        assert_eq!(
            end.limit(),
            Some(1000),
            "the segment's last page is short, not cut"
        );
    }

    #[test]
    fn keys_round_trip_through_their_saved_form() {
        let key: HashMap<String, AttributeValue> = [
            ("pk".to_string(), AttributeValue::S("POST#1".into())),
            (
                "n".to_string(),
                AttributeValue::N("12345678901234567890".into()),
            ),
        ]
        .into();
        assert_eq!(key_from_json(&key_json(&key).unwrap()).unwrap(), key);
    }

    #[test]
    fn the_scan_version_is_below_every_later_change_by_the_allowance() {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let v = scan_version(Duration::from_secs(300));
        // a change made now, stamped by a DynamoDB clock up to 4 min behind and rounded down to
        // the second, still gets a higher version
        let change = (now_us / 1_000_000 - 240) * 1_000_000;
        assert!(v < change);
    }

    #[tokio::test]
    async fn reads_are_paced_to_the_units_per_second() {
        tokio::time::pause();
        let pace = ReadPace {
            per_second: 100.0,
            debt: Mutex::new((tokio::time::Instant::now(), 0.0)),
        };
        let t = tokio::time::Instant::now();
        for _ in 0..5 {
            pace.consumed(100.0).await;
        }
        assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    }
}
