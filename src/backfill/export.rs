//! Backfill from a DynamoDB export (ExportTableToPointInTime, `DYNAMODB_JSON`) in a local
//! directory: `manifest-summary.json` (the export time), `manifest-files.json` (one data file per
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

use super::{acknowledged, writer};
use crate::ack::{AckTracker, ShardId};
use crate::checkpoint::{now_ms, CheckpointStore, ShardCheckpoint};
use crate::config::Config;
use crate::sink::{BulkOp, Origin};
use crate::transform::{attribute_json_to_json, DocAction, DocIdSpec};

/// What an import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    pub export_id: String,
    pub files: usize,
    pub files_skipped: usize,
    pub items: u64,
    pub seconds: f64,
}

impl ExportReport {
    pub fn render(&self) -> String {
        format!(
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

/// Loads the export at `path` (local directory) through the sink.
pub async fn run(
    config: &Config,
    path: &Path,
    key_attributes: Vec<String>,
) -> anyhow::Result<ExportReport> {
    let started = Instant::now();
    let root = export_root(path)?;
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("manifest-summary.json"),
    )?)
    .map_err(|e| anyhow::anyhow!("manifest-summary.json: {e}"))?;
    if let Some(format) = summary.get("outputFormat").and_then(Value::as_str) {
        anyhow::ensure!(
            format == "DYNAMODB_JSON",
            "the export is {format}; sluice reads DYNAMODB_JSON exports"
        );
    }
    let version = export_version(&summary)?;
    let export_id = root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let manifest = std::fs::read_to_string(root.join("manifest-files.json"))
        .map_err(|e| anyhow::anyhow!("manifest-files.json: {e}"))?;
    let files: Vec<PathBuf> = manifest
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
            let name = key.rsplit('/').next().unwrap_or(key);
            Ok(root.join("data").join(name))
        })
        .collect::<anyhow::Result<_>>()?;
    let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
    let done = files_done(&store, &export_id).await?;
    let part: ShardId = format!("export-{export_id}").into();
    let (router, lanes) = writer(config, &store, std::slice::from_ref(&part)).await?;
    let tracker = AckTracker::default();
    let ids = super::doc_ids(config, key_attributes);
    anyhow::ensure!(
        !ids.attributes.is_empty(),
        "the export has no key schema: set sink.document_id (or give access to the table)"
    );
    let index: Arc<str> = config.sink.index.clone().into();
    let origin_stream: Arc<str> = format!("export:{export_id}").into();
    let mut items = 0u64;
    let mut skipped = 0;
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if done.contains(&name) {
            skipped += 1;
            continue;
        }
        let reader = BufReader::new(flate2::read::GzDecoder::new(
            std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        ));
        let mut in_file = 0u64;
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let op = item_op(&line, &ids).map(|(id, doc)| {
                BulkOp::new(
                    index.clone(),
                    id,
                    version,
                    DocAction::Index(doc),
                    Origin {
                        stream: origin_stream.clone(),
                        shard: part.clone(),
                        sequence_number: format!("{name}:{}", n + 1),
                        epoch: 1,
                    },
                )
            });
            match op {
                Ok(mut op) => {
                    let ack = tracker.register(&part, 1, ShardCheckpoint::default(), 1, 1);
                    op.acks.extend(ack);
                    if router.send(op).await.is_err() {
                        anyhow::bail!("the sink stopped");
                    }
                    in_file += 1;
                }
                Err(e) => {
                    tracing::error!(file = %name, line = n + 1, error = %e, "exported item cannot be indexed; skipped")
                }
            }
        }
        acknowledged(&tracker, &part).await;
        mark_done(&store, &export_id, &name, in_file).await?;
        items += in_file;
        tracing::info!(file = %name, items = in_file, "export data file loaded");
    }
    drop(router);
    for lane in lanes {
        let _ = lane.await;
    }
    Ok(ExportReport {
        export_id,
        files: files.len(),
        files_skipped: skipped,
        items,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One export line → its `_id` and document.
fn item_op(line: &str, ids: &DocIdSpec) -> Result<(String, Value), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let item = v
        .get("Item")
        .and_then(Value::as_object)
        .ok_or("a line without an Item object")?;
    let id = ids.render_wire(item).map_err(|e| e.0)?;
    let doc = attribute_json_to_json(&serde_json::json!({ "M": item })).map_err(|e| e.0)?;
    Ok((id, doc))
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
