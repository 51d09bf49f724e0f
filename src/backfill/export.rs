//! Backfill from a DynamoDB export (ExportTableToPointInTime, `DYNAMODB_JSON`) in a local
//! directory or in S3: `manifest-summary.json` (the export time), `manifest-files.json` (one data file per
//! line), `data/*.json.gz` (one `{"Item": {…}}` per line). Every item is written with the export
//! time as its version — the second it falls in, less one µs: a change made after the export
//! has a stream version of at least that second (`ApproximateCreationDateTime` is rounded down),
//! so it always wins. A data file is recorded as done once all its documents are acknowledged; a
//! restarted import skips the files already done.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use rusqlite::params;
use serde_json::Value;

use super::progress::{Display, Progress};
use super::{acknowledged, writer};
use crate::ack::{AckTracker, ShardId};
use crate::checkpoint::{now_ms, CheckpointStore, DeadLetter, ShardCheckpoint};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sink::{BulkOp, Origin};
use crate::transform::route::IdRule;

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    pub export_id: String,
    pub files: usize,
    pub files_skipped: usize,
    pub items: u64,
    pub seconds: f64,
    /// Deletes were kept only from after the export time: some may have been undone.
    pub warning: Option<String>,
}

impl ExportReport {
    pub fn render(&self) -> String {
        self.warning.as_deref().map(|w| format!("WARNING: {w}\n")).unwrap_or_default() + &format!(
            "export {}: {} data files ({} already done before), {} items in {:.1}s ({:.0} items/s)\n",
            self.export_id,
            self.files,
            self.files_skipped,
            self.items,
            self.seconds,
            self.items as f64 / self.seconds.max(1e-9)
        )
    }
}

/// Where an export lies: a local directory or an S3 prefix — the folder that holds
/// `manifest-summary.json`, `manifest-files.json` and `data/`.
enum Location {
    Dir(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        /// The export's folder, without a trailing slash.
        prefix: String,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// An S3 error in plain words.
fn s3_error(e: impl std::error::Error + Send + Sync + 'static) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(e).to_string()
}

impl Location {
    /// `spec` is a directory or `s3://bucket/prefix`; either the export's folder itself or one
    /// that holds exactly one export under `AWSDynamoDB/<export id>/`.
    async fn find(config: &Config, spec: &str) -> anyhow::Result<Location> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            return Ok(Location::Dir(export_root(Path::new(spec))?));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "`{spec}`: no bucket after s3://");
        let client = s3_client(config).await;
        let prefix = prefix.trim_end_matches('/').to_string();
        let at = |p: &str| {
            if p.is_empty() {
                "manifest-summary.json".to_string()
            } else {
                format!("{p}/manifest-summary.json")
            }
        };
        let here = client
            .head_object()
            .bucket(bucket)
            .key(at(&prefix))
            .send()
            .await;
        let here_error = here
            .as_ref()
            .err()
            .map(|e| aws_smithy_types::error::display::DisplayErrorContext(e).to_string());
        if here.is_ok() {
            return Ok(Location::S3 {
                client,
                bucket: bucket.into(),
                prefix,
            });
        }
        let below = if prefix.is_empty() {
            "AWSDynamoDB/".to_string()
        } else {
            format!("{prefix}/AWSDynamoDB/")
        };
        let mut found = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&below)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| anyhow::anyhow!("{spec}: listing {below}: {}", s3_error(e)))?;
            for object in page.contents() {
                let key = object.key().unwrap_or_default();
                let folder = key.strip_suffix("/manifest-summary.json");
                // only the export folders right below AWSDynamoDB/
                let id = folder.and_then(|f| f.strip_prefix(below.as_str()));
                if id.is_some_and(|id| !id.is_empty() && !id.contains('/')) {
                    found.push(folder.unwrap_or_default().to_string());
                }
            }
        }
        match found.len() {
            1 => Ok(Location::S3 {
                client,
                bucket: bucket.into(),
                prefix: found.remove(0),
            }),
            0 => anyhow::bail!(
                "{spec}: no manifest-summary.json here ({}) nor under AWSDynamoDB/",
                here_error.unwrap_or_default()
            ),
            n => anyhow::bail!("{spec}: {n} exports under AWSDynamoDB/; give the one to load"),
        }
    }

    fn export_id(&self) -> String {
        let folder = match self {
            Location::Dir(p) => p.to_string_lossy().to_string(),
            Location::S3 { prefix, .. } => prefix.clone(),
        };
        folder
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// A file of the export's folder (`name` may contain `data/`), as a reader.
    async fn open(&self, name: &str) -> anyhow::Result<Box<dyn std::io::Read + Send>> {
        match self {
            Location::Dir(root) => {
                let path = root.join(name);
                let file = std::fs::File::open(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                Ok(Box::new(file))
            }
            Location::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                let object = client
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("s3://{bucket}/{key}: {}", s3_error(e)))?;
                // streamed, not held in memory: a data file can be large
                Ok(Box::new(tokio_util::io::SyncIoBridge::new(
                    object.body.into_async_read(),
                )))
            }
        }
    }

    async fn read_text(&self, name: &str) -> anyhow::Result<String> {
        let reader = self.open(name).await?;
        let text = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut { reader }, &mut text).map(|_| text)
        })
        .await?
        .map_err(|e| anyhow::anyhow!("{self}/{name}: {e}"))?;
        Ok(text)
    }
}

async fn s3_client(config: &Config) -> aws_sdk_s3::Client {
    let mut source = config.source.clone();
    if let Some(region) = &config.backfill.s3_region {
        source.region = region.clone();
    }
    source.endpoint_url = config.backfill.s3_endpoint_url.clone();
    let sdk = crate::source::dynamodb_streams::sdk_config(&source).await;
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        // S3-compatible endpoints (and moto) answer path-style requests
        .force_path_style(config.backfill.s3_endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// The export's folder: `path` itself, or the one `AWSDynamoDB/<id>/` below it.
fn export_root(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join("manifest-summary.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let below = path.join("AWSDynamoDB");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&below)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: no manifest-summary.json here nor under AWSDynamoDB/ ({e})",
                path.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest-summary.json").is_file())
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!(
            "{}: no export (manifest-summary.json) under AWSDynamoDB/",
            path.display()
        ),
        n => anyhow::bail!(
            "{}: {n} exports under AWSDynamoDB/; give the one to load",
            path.display()
        ),
    }
}

/// The version of every exported item: the export time's second, less one µs.
fn export_version(summary: &Value) -> anyhow::Result<u64> {
    let time = summary
        .get("exportTime")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("manifest-summary.json has no exportTime"))?;
    let t = humantime::parse_rfc3339_weak(time.trim_end_matches('Z'))
        .map_err(|e| anyhow::anyhow!("manifest-summary.json: exportTime `{time}`: {e}"))?;
    let secs = t.duration_since(UNIX_EPOCH)?.as_secs();
    Ok((secs * 1_000_000).saturating_sub(1))
}

/// One data file's lines, read and gunzipped on a blocking thread (a slow disk or S3 body must
/// not hold a runtime thread), handed over in order through a bounded channel.
fn lines_of(
    reader: Box<dyn std::io::Read + Send>,
    name: String,
) -> tokio::sync::mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::task::spawn_blocking(move || {
        let lines = BufReader::new(flate2::read::MultiGzDecoder::new(reader)).lines();
        for line in lines {
            let failed = line.is_err();
            if tx
                .blocking_send(line.map_err(|e| format!("{name}: {e}")))
                .is_err()
                || failed
            {
                return;
            }
        }
    });
    rx
}

/// Loads the export at `spec` (a local directory or `s3://bucket/prefix`) through the sink.
pub async fn run(
    config: &Config,
    spec: &str,
    key_attributes: Vec<String>,
) -> anyhow::Result<ExportReport> {
    let started = Instant::now();
    let location = Location::find(config, spec).await?;
    let summary: Value = serde_json::from_str(&location.read_text("manifest-summary.json").await?)
        .map_err(|e| anyhow::anyhow!("manifest-summary.json: {e}"))?;
    if let Some(format) = summary.get("outputFormat").and_then(Value::as_str) {
        anyhow::ensure!(
            format == "DYNAMODB_JSON",
            "the export is {format}; sluice reads DYNAMODB_JSON exports"
        );
    }
    if let Some(kind) = summary.get("exportType").and_then(Value::as_str) {
        // an incremental export holds changes (NewImage/OldImage), deletes among them
        anyhow::ensure!(
            kind == "FULL_EXPORT",
            "the export is {kind}; sluice loads full exports (the stream carries the changes)"
        );
    }
    let version = export_version(&summary)?;
    let export_id = location.export_id();
    let manifest = location.read_text("manifest-files.json").await?;
    let files: Vec<String> = manifest
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let entry: Value =
                serde_json::from_str(l).map_err(|e| anyhow::anyhow!("manifest-files.json: {e}"))?;
            let key = entry
                .get("dataFileS3Key")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    anyhow::anyhow!("manifest-files.json: a line without dataFileS3Key")
                })?;
            // relative to the export's folder, so a copied export loads from where it now is
            Ok(key.rsplit('/').next().unwrap_or(key).to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
    let done = files_done(&store, &export_id).await?;
    let key = key(config);
    let kept_since = super::tombstones::keep(config, &store, &key).await?;
    // tombstones of deletes made after the export time and more than gc_deletes (60 s) before the
    // raise are gone: an image of such an item would bring it back
    let warning = kept_since
        .filter(|ms| (*ms as u64).saturating_mul(1000).saturating_sub(60_000_000) > version)
        .map(|ms| {
            format!(
                "deletes have been kept only since {} — after the export time: an item deleted in between \
                 (more than 60 s before that) may come back. Next time run `sluice backfill --keep-deletes` \
                 before requesting the export; now run `sluice verify --extra --repair` after this load",
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64))
            )
        });
    if let Some(w) = &warning {
        tracing::warn!(warning = %w, "export load");
    }
    let part: ShardId = format!("export-{export_id}").into();
    let metrics = Metrics::new();
    let (out, lanes) = writer(config, &store, &metrics).await?;
    out.hold(std::slice::from_ref(&part));
    let router = out.router;
    let tracker = AckTracker::default();
    // where the stream puts each item: its routes (or `sink.index`), its `_id`
    let key_attributes = if config.sink.document_id.is_empty() {
        key_attributes
    } else {
        config.sink.document_id.clone()
    };
    // the table the export is of (routes may take one table only): its ARN, else the config's
    let table = summary
        .get("tableArn")
        .and_then(Value::as_str)
        .and_then(|arn| arn.rsplit_once(":table/"))
        .map(|(_, name)| name.to_owned())
        .or_else(|| super::table_name(config).ok())
        .unwrap_or_default();
    let routes = super::routes(config, &table, &key_attributes)?;
    anyhow::ensure!(
        routes.key.is_some()
            || key_attributes.len() == 1
            || routes.routes.iter().all(|r| r.id != IdRule::Key),
        "the export has no key schema: set sink.document_id (or give access to the table)"
    );
    let default_index: Arc<str> = config.sink.index.clone().into();
    let origin_stream: Arc<str> = format!("export:{export_id}").into();
    let skipped = files.iter().filter(|f| done.contains(*f)).count();
    let estimate = summary
        .get("itemCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let report = Progress::new(
        metrics.clone(),
        format!("export {export_id}"),
        "files",
        files.len() as u32,
        skipped as u32,
        0,
        estimate,
    );
    let showing = tokio_util::sync::CancellationToken::new();
    let shown = tokio::spawn(report.clone().show(Display::for_stderr(), showing.clone()));
    let mut items = 0u64;
    let mut left = (files.len() - skipped) as u32;
    let load = async {
        for name in &files {
            if done.contains(name) {
                continue;
            }
            report.set_part_states(left, 1);
            let mut lines = lines_of(location.open(&format!("data/{name}")).await?, name.clone());
            let mut in_file = 0u64;
            let mut n = 0usize;
            let mut dead = Vec::new();
            while let Some(line) = lines.recv().await {
                let line = line.map_err(|e| anyhow::anyhow!("{location}/data/{e}"))?;
                n += 1;
                if line.trim().is_empty() {
                    continue;
                }
                let sequence_number = format!("{name}:{n}");
                let placed = item_row(&line).and_then(|row| {
                    super::item_changes(&routes, &table, &key_attributes, row).map_err(|e| e.0)
                });
                let refusal = match placed {
                    Ok(decoded) => {
                        if let Some(skip) = &decoded.skipped {
                            metrics
                                .records_skipped
                                .with_label_values(&[skip.reason])
                                .inc();
                        }
                        let acks = tracker.register(
                            &part,
                            1,
                            ShardCheckpoint::default(),
                            1,
                            decoded.changes.len(),
                        );
                        for (change, ack) in decoded.changes.into_iter().zip(acks) {
                            let mut op = BulkOp::routed(
                                change.index.unwrap_or_else(|| default_index.clone()),
                                change.id,
                                change.routing.as_deref(),
                                version,
                                change.action,
                                Origin {
                                    stream: origin_stream.clone(),
                                    shard: part.clone(),
                                    sequence_number: sequence_number.clone(),
                                    epoch: 1,
                                },
                            );
                            op.acks.push(ack);
                            if router.send(op).await.is_err() {
                                anyhow::bail!("the sink stopped");
                            }
                            in_file += 1;
                        }
                        decoded.refused.map(|e| e.0)
                    }
                    Err(e) => Some(e),
                };
                if let Some(e) = refusal {
                    tracing::error!(file = %name, line = n, error = %e, "exported item cannot be made a document: dead-lettered");
                    metrics.decode_errors.inc();
                    dead.push(DeadLetter {
                        stream: origin_stream.to_string(),
                        shard_id: part.to_string(),
                        sequence_number,
                        index: None,
                        doc_id: None,
                        routing: None,
                        version: Some(version),
                        action: "decode".into(),
                        payload: line,
                        error: e,
                    });
                }
            }
            store.dead_letter_durably(dead).await;
            acknowledged(&tracker, &part).await;
            mark_done(&store, &export_id, name, in_file).await?;
            items += in_file;
            left -= 1;
            report.acknowledged(in_file, true);
            report.set_part_states(left, 0);
            tracing::debug!(file = %name, items = in_file, "export data file loaded");
        }
        anyhow::Ok(())
    };
    // indices of templated targets appear while the load runs: their deletes are kept too
    let loaded = tokio::select! {
        r = load => r,
        e = super::tombstones::watch(config, &store, &key) => Err(e.context("keeping the deletes of a new index")),
    };
    if let Err(e) = loaded {
        showing.cancel();
        return Err(e);
    }
    showing.cancel();
    let _ = shown.await;
    drop(router);
    for lane in lanes {
        let _ = lane.await;
    }
    super::tombstones::restore(config, &store, &key).await?;
    Ok(ExportReport {
        export_id,
        files: files.len(),
        files_skipped: skipped,
        items,
        seconds: started.elapsed().as_secs_f64(),
        warning,
    })
}

/// Whose raise of `gc_deletes` an export load is (also what `--keep-deletes` raises ahead).
pub fn key(config: &Config) -> String {
    format!("export → {}", config.sink.index)
}

/// `sluice backfill --keep-deletes`: deletes are kept from now, before an export is requested,
/// so the load finds every delete made after the export time.
pub async fn keep_deletes_ahead(config: &Config) -> anyhow::Result<String> {
    let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
    match super::tombstones::keep(config, &store, &key(config)).await? {
        Some(_) => Ok(format!(
            "deletes in `{}` are kept from now (index.gc_deletes = {}); request the export, then load it with --from-export: the setting goes back when the load is complete\n",
            config.sink.index,
            humantime::format_duration(config.backfill.keep_deletes_for)
        )),
        None => Ok(format!(
            "`{}` already keeps deletes at least {} (or backfill.keep_deletes_for is 0): nothing raised\n",
            config.sink.index,
            humantime::format_duration(config.backfill.keep_deletes_for)
        )),
    }
}

/// One export line → the item as the JSON row the routes read.
fn item_row(line: &str) -> Result<serde_json::Map<String, Value>, String> {
    crate::transform::export_item(line.as_bytes()).map_err(|e| e.0)
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backfill_export_files (
    export_id TEXT NOT NULL, file TEXT NOT NULL, items INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (export_id, file))";

async fn files_done(
    store: &CheckpointStore,
    export_id: &str,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let export_id = export_id.to_string();
    Ok(store
        .with_connection(move |conn| {
            conn.execute(SCHEMA, [])?;
            let mut stmt =
                conn.prepare("SELECT file FROM backfill_export_files WHERE export_id = ?1")?;
            let rows = stmt.query_map(params![export_id], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await?)
}

async fn mark_done(
    store: &CheckpointStore,
    export_id: &str,
    file: &str,
    items: u64,
) -> anyhow::Result<()> {
    let (export_id, file) = (export_id.to_string(), file.to_string());
    store
        .with_connection(move |conn| {
            conn.execute(SCHEMA, [])?;
            conn.execute(
                "INSERT OR REPLACE INTO backfill_export_files (export_id, file, items, updated_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![export_id, file, items as i64, now_ms()],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_items_are_versioned_just_below_the_export_second() {
        let v =
            export_version(&serde_json::json!({"exportTime": "2026-11-22T10:00:00.750Z"})).unwrap();
        let second = 1_795_341_600u64 * 1_000_000;
        assert_eq!(v, second - 1);
    }
}
