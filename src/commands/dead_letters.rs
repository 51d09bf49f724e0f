//! `sluice dead-letters list | show ID | replay | purge`: what Elasticsearch refused for good (or
//! what could not be read), and sending it again once the cause is fixed.
//!
//! A replay sends each stored operation with its **original version** through the same batcher
//! and sink as the stream, so it can never overwrite a newer document: Elasticsearch answers 409
//! and the operation counts as stale. A row is removed only after Elasticsearch acknowledged its
//! operation (an operation refused again is dead-lettered again, as a new row, with the new
//! reason). Safe beside a running `sluice run`: rows it adds meanwhile are not touched, and a
//! replay killed half-way sends the unremoved rows again — the same versions, harmlessly.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::ack::{AckTracker, ShardId};
use crate::backfill::{acknowledged, writer};
use crate::checkpoint::{CheckpointStore, DeadLetterSelection, ShardCheckpoint, StoredDeadLetter};
use crate::config::Config;
use crate::metrics::{result, Metrics};
use crate::sink::{BulkOp, Origin};
use crate::transform::route::Template;
use crate::transform::DocAction;

/// Rows sent, then acknowledged and removed, per round.
const CHUNK: usize = 500;

fn open(config: &Config) -> anyhow::Result<CheckpointStore> {
    Ok(CheckpointStore::open(
        &config.checkpoint.path,
        config.checkpoint.journal_mode,
    )?)
}

/// `--since` / `--before`: an RFC 3339 time, or a duration ago ("2h").
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    let now = crate::checkpoint::now_ms();
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now - ago.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|_| {
        anyhow::anyhow!("`{text}` is neither a time (2026-11-22T10:00:00Z) nor a duration ago (2h)")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64)
}

/// Which rows the flags select; nothing selected is an error, never "all" by default.
pub fn selection(
    all: bool,
    ids: Vec<i64>,
    since: Option<&str>,
    before: Option<&str>,
) -> anyhow::Result<DeadLetterSelection> {
    let given = all as u8 + !ids.is_empty() as u8 + since.is_some() as u8 + before.is_some() as u8;
    anyhow::ensure!(
        given == 1,
        "say which dead letters: exactly one of --all, --id, --since, --before"
    );
    Ok(if all {
        DeadLetterSelection::All
    } else if !ids.is_empty() {
        DeadLetterSelection::Ids(ids)
    } else if let Some(t) = since {
        DeadLetterSelection::Since(parse_time(t)?)
    } else {
        DeadLetterSelection::Before(parse_time(before.unwrap_or_default())?)
    })
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn as_json(row: &StoredDeadLetter, with_payload: bool) -> Value {
    let l = &row.letter;
    let mut v = json!({
        "id": row.id, "stored_at": time(row.created_at_ms), "action": l.action,
        "index": l.index, "doc_id": l.doc_id, "routing": l.routing, "version": l.version, "stream": l.stream,
        "shard_id": l.shard_id, "sequence_number": l.sequence_number, "reason": l.error,
    });
    if with_payload {
        v["payload"] = serde_json::from_str(&l.payload).unwrap_or(Value::String(l.payload.clone()));
    }
    v
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).collect::<String>() + "…"
    }
}

pub async fn list(config: &Config, json_out: bool) -> anyhow::Result<String> {
    let rows = open(config)?
        .stored_dead_letters(DeadLetterSelection::All)
        .await?;
    if json_out {
        let all: Vec<Value> = rows.iter().map(|r| as_json(r, false)).collect();
        return Ok(serde_json::to_string_pretty(&all)? + "\n");
    }
    if rows.is_empty() {
        return Ok("no dead letters\n".into());
    }
    let mut out = format!(
        "{:>6}  {:<20}  {:<6}  {:<16}  {:<20}  {:<28}  {}\n",
        "ID", "STORED", "ACTION", "INDEX", "_ID", "SHARD / SEQUENCE", "REASON"
    );
    for r in &rows {
        let l = &r.letter;
        out.push_str(&format!(
            "{:>6}  {:<20}  {:<6}  {:<16}  {:<20}  {:<28}  {}\n",
            r.id,
            time(r.created_at_ms),
            l.action,
            cut(l.index.as_deref().unwrap_or("-"), 16),
            cut(l.doc_id.as_deref().unwrap_or("-"), 20),
            cut(&format!("{} / {}", l.shard_id, l.sequence_number), 28),
            cut(&l.error, 80),
        ));
    }
    out.push_str(&format!("{} dead letters\n", rows.len()));
    Ok(out)
}

pub async fn show(config: &Config, id: i64) -> anyhow::Result<String> {
    let rows = open(config)?
        .stored_dead_letters(DeadLetterSelection::Ids(vec![id]))
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| anyhow::anyhow!("no dead letter with id {id}"))?;
    Ok(serde_json::to_string_pretty(&as_json(row, true))? + "\n")
}

pub async fn purge(config: &Config, which: DeadLetterSelection) -> anyhow::Result<String> {
    let store = open(config)?;
    let ids = store
        .stored_dead_letters(which)
        .await?
        .iter()
        .map(|r| r.id)
        .collect();
    let removed = store.remove_dead_letters(ids).await?;
    Ok(format!("{removed} dead letters purged\n"))
}

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    pub selected: usize,
    pub indexed: u64,
    pub deleted: u64,
    /// Refused with 409: the index already holds a newer version.
    pub stale: u64,
    /// Refused again: stored again as new rows with the new reason.
    pub dead_lettered_again: u64,
    /// Rows that hold no operation (records that could not be read): left in place.
    pub not_replayable: Vec<(i64, String)>,
}

impl ReplayReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "replayed {} of {} dead letters: {} indexed, {} deleted, {} stale (the index holds a newer version), {} refused again (stored again with the new reason)\n",
            self.selected - self.not_replayable.len(),
            self.selected,
            self.indexed,
            self.deleted,
            self.stale,
            self.dead_lettered_again
        );
        for (id, why) in &self.not_replayable {
            out.push_str(&format!("  not replayed: {id}: {why}\n"));
        }
        out
    }
}

/// The operation a row stores, or why it holds none. `routed`: each route that sets a
/// `routing`, with the index it writes.
fn operation(row: &StoredDeadLetter, routed: &[(String, Template)]) -> Result<BulkOp, String> {
    let l = &row.letter;
    let (Some(index), Some(id), Some(version)) = (&l.index, &l.doc_id, l.version) else {
        return Err(format!("a `{}` row holds no operation (the record could not be read): fix the source, then purge it", l.action));
    };
    if l.routing.is_none() {
        // stored before dead letters kept their routing: sent without it, the document could
        // land on another shard than the one its later delete goes to
        if let Some((route, _)) = routed
            .iter()
            .find(|(_, t)| t.as_literal() == Some(index.as_str()) || t.could_render(index))
        {
            return Err(format!(
                "it was stored without the custom routing route `{route}` gives documents of `{index}`: replayed, it could leave a copy on another shard. Purge it, and write the item again (change it, or `sluice verify --repair`)"
            ));
        }
    }
    let action = match l.action.as_str() {
        "index" => DocAction::Index(
            serde_json::from_str(&l.payload)
                .map_err(|e| format!("its document is not JSON: {e}"))?,
        ),
        "delete" => DocAction::Delete,
        other => return Err(format!("unknown action `{other}`")),
    };
    Ok(BulkOp::routed(
        index.as_str().into(),
        id.clone(),
        l.routing.as_deref(),
        version,
        action,
        Origin {
            stream: l.stream.as_str().into(),
            shard: l.shard_id.as_str().into(),
            sequence_number: l.sequence_number.clone(),
            epoch: 1,
        },
    ))
}

pub async fn replay(config: &Config, which: DeadLetterSelection) -> anyhow::Result<ReplayReport> {
    let store = open(config)?;
    let rows = store.stored_dead_letters(which).await?;
    let mut report = ReplayReport {
        selected: rows.len(),
        ..ReplayReport::default()
    };
    let mut ready = Vec::new();
    let routed: Vec<(String, Template)> = config
        .route
        .iter()
        .enumerate()
        .filter(|(_, r)| r.routing.is_some())
        .filter_map(|(i, r)| {
            let index = r.index.as_deref().unwrap_or(&config.sink.index);
            let name = r.name.clone().unwrap_or_else(|| format!("route[{i}]"));
            Some((name, Template::parse(index).ok()?))
        })
        .collect();
    for row in rows {
        match operation(&row, &routed) {
            Ok(op) => ready.push((row.id, op)),
            Err(why) => report.not_replayable.push((row.id, why)),
        }
    }
    let metrics = Metrics::new();
    let (out, lanes) = writer(config, &store, &metrics).await?;
    // the command's own sink: every original shard is "held" by it
    let shards: BTreeSet<ShardId> = ready
        .iter()
        .map(|(_, op)| op.origin.shard.clone())
        .collect();
    out.hold(&shards.into_iter().collect::<Vec<_>>());
    let tracker = AckTracker::default();
    let part: ShardId = Arc::from("dead-letter-replay");
    let mut ready = ready.into_iter().peekable();
    while ready.peek().is_some() {
        let chunk: Vec<(i64, BulkOp)> = ready.by_ref().take(CHUNK).collect();
        let mut ids = Vec::with_capacity(chunk.len());
        for (id, mut op) in chunk {
            op.acks
                .extend(tracker.register(&part, 1, ShardCheckpoint::default(), 1, 1));
            ids.push(id);
            if out.router.send(op).await.is_err() {
                anyhow::bail!("the sink stopped");
            }
        }
        acknowledged(&tracker, &part).await;
        store.remove_dead_letters(ids).await?;
    }
    drop(out);
    for lane in lanes {
        let _ = lane.await;
    }
    let count = |r: &str| metrics.documents.with_label_values(&[r]).get();
    report.indexed = count(result::INDEXED);
    report.deleted = count(result::DELETED);
    report.stale = count(result::STALE);
    report.dead_lettered_again = count(result::DEAD_LETTERED);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::DeadLetter;

    fn row(index: &str, routing: Option<&str>) -> StoredDeadLetter {
        StoredDeadLetter {
            id: 1,
            created_at_ms: 0,
            letter: DeadLetter {
                stream: "s".into(),
                shard_id: "shard-1".into(),
                sequence_number: "42".into(),
                index: Some(index.into()),
                doc_id: Some("POST#1|COMMENT#1".into()),
                routing: routing.map(str::to_owned),
                version: Some(7),
                action: "delete".into(),
                payload: String::new(),
                error: "refused".into(),
            },
        }
    }

    #[test]
    fn a_row_without_the_routing_its_route_gives_is_not_replayed() {
        let routed = vec![
            ("comments".to_string(), Template::parse("comments").unwrap()),
            (
                "tenants".to_string(),
                Template::parse("posts-{tenant}").unwrap(),
            ),
        ];
        let why = operation(&row("comments", None), &routed).unwrap_err();
        assert!(why.contains("route `comments`"), "{why}");
        assert!(operation(&row("posts-acme", None), &routed).is_err());
        // with its routing, or in an index no routing applies to: replayed
        let op = operation(&row("comments", Some("POST#1")), &routed).unwrap();
        assert!(String::from_utf8_lossy(&op.lines).contains("\"routing\":\"POST#1\""));
        assert!(operation(&row("people", None), &routed).is_ok());
    }
}
