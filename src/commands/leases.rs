//! `sluice leases --config FILE`: each shard's owner, epoch, heartbeat and checkpoint, from the
//! lease backend the configuration names. Reads only; safe beside running workers.

use std::fmt::Write as _;

use serde_json::json;

use crate::checkpoint::{now_ms, CheckpointStore};
use crate::config::{Config, LeaseBackend};
use crate::lease::{dynamodb, sqlite, LeaseRow};

pub async fn run(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let rows = rows(config).await?;
    Ok(if as_json {
        render_json(&rows)
    } else {
        render_table(
            &rows,
            config.lease.duration.as_millis() as u64,
            now_ms() as u64,
        )
    })
}

/// Every lease (with its checkpoint) in the backend the configuration names, all streams.
pub async fn rows(config: &Config) -> anyhow::Result<Vec<LeaseRow>> {
    Ok(match config.lease.backend {
        LeaseBackend::Sqlite => {
            let store =
                CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
            sqlite::list_all(&store).await?
        }
        LeaseBackend::Dynamodb => dynamodb::list_all(config).await?,
    })
}

fn render_json(rows: &[LeaseRow]) -> String {
    let list: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "stream": r.stream, "shard": &*r.lease.shard, "owner": r.lease.owner,
                "epoch": r.lease.epoch, "counter": r.lease.counter, "next_owner": r.lease.next_owner,
                "renewed_at_ms": r.renewed_at_ms,
                "sequence_number": r.checkpoint.as_ref().and_then(|c| c.sequence_number.clone()),
                "clock": r.checkpoint.as_ref().map(|c| c.clock),
                "finished": r.lease.finished,
            })
        })
        .collect();
    serde_json::to_string_pretty(&list).expect("JSON to memory") + "\n"
}

/// A table for people: "renewed 2s ago" and whether the lease is past its duration (expiry is
/// judged by each worker on its own clock; this is the writer's wall clock, a hint).
fn render_table(rows: &[LeaseRow], duration_ms: u64, now_ms: u64) -> String {
    if rows.is_empty() {
        return "no leases yet (no worker has run against this lease table)\n".into();
    }
    let mut out = String::new();
    let mut stream = "";
    for r in rows {
        if r.stream != stream {
            stream = &r.stream;
            let _ = writeln!(out, "stream {stream}");
            let _ = writeln!(
                out,
                "  {:<28} {:<24} {:>5}  {:<22} {:<12} checkpoint",
                "shard", "owner", "epoch", "heartbeat", "handoff to"
            );
        }
        let heartbeat = match (r.renewed_at_ms, &r.lease.owner) {
            (_, None) => "-".to_string(),
            (Some(at), Some(_)) => {
                let ago = now_ms.saturating_sub(at);
                let state = if ago > duration_ms { ", expired" } else { "" };
                format!("{:.1}s ago{state}", ago as f64 / 1000.0)
            }
            (None, Some(_)) => "?".into(),
        };
        let checkpoint = match &r.checkpoint {
            _ if r.lease.finished => "finished".to_string(),
            None => "not started".into(),
            Some(c) => format!(
                "after {} (clock {})",
                c.sequence_number.as_deref().unwrap_or("nothing yet"),
                c.clock
            ),
        };
        let _ = writeln!(
            out,
            "  {:<28} {:<24} {:>5}  {:<22} {:<12} {checkpoint}",
            &*r.lease.shard,
            r.lease.owner.as_deref().unwrap_or("-"),
            r.lease.epoch,
            heartbeat,
            r.lease.next_owner.as_deref().unwrap_or("-"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ShardCheckpoint;
    use crate::lease::Lease;

    #[test]
    fn the_table_says_who_holds_what_and_whether_the_heartbeat_stopped() {
        let row = |shard: &str, owner: Option<&str>, renewed: u64, cp: Option<&str>| LeaseRow {
            stream: "arn:aws:kinesis:us-east-1:1:stream/s".into(),
            lease: Lease {
                shard: shard.into(),
                owner: owner.map(str::to_owned),
                epoch: 3,
                counter: 9,
                next_owner: None,
                finished: false,
            },
            renewed_at_ms: Some(renewed),
            checkpoint: cp.map(|s| ShardCheckpoint {
                sequence_number: Some(s.into()),
                clock: 7,
                finished: false,
                start_at: None,
            }),
        };
        let text = render_table(
            &[
                row("shardId-0", Some("task-a"), 99_000, Some("4955")),
                row("shardId-1", Some("task-b"), 80_000, None),
                row("shardId-2", None, 0, None),
            ],
            10_000,
            100_000,
        );
        assert!(
            text.contains("task-a")
                && text.contains("1.0s ago")
                && text.contains("after 4955 (clock 7)"),
            "{text}"
        );
        assert!(
            text.contains("20.0s ago, expired") && text.contains("not started"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("shardId-2") && l.contains(" - ")),
            "{text}"
        );
    }
}
