//! `sluice checkpoints list | reset`: where each shard's reading stands, and moving it.
//!
//! `list` reads the checkpoints and leases (whichever backend the configuration names) and asks
//! the stream, per unfinished shard, for the first record after the checkpoint: its age is the
//! lag that matters (and, against the retention, the time to data loss). `reset` moves one
//! shard's checkpoint — refused while a live worker holds the shard unless `--force` — and says
//! beforehand what will be read again or skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::checkpoint::{now_ms, CheckpointStore, ShardCheckpoint};
use crate::config::{Config, KinesisFormat, LeaseBackend, SourceType};
use crate::lease::{dynamodb, sqlite, LeaseRow};
use crate::source::dynamodb_streams::DynamoDbStreams;
use crate::source::kinesis::Kinesis;
use crate::source::reader::now_micros;
use crate::source::{ApiError, ShardApi, ShardInfo, SourceRecord, StartAt};

/// What the stream says about one shard's position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lag {
    /// Age of the first record after the checkpoint; `None`: none there (caught up).
    pub oldest_unacknowledged_age: Option<Duration>,
    /// Kinesis MillisBehindLatest at the checkpoint.
    pub behind_latest: Option<Duration>,
    /// Retention minus that age.
    pub time_to_data_loss: Option<f64>,
}

/// The stream as the configured source sees it: its ARN, its shards and each one's lag.
struct StreamView {
    arn: String,
    shards: Vec<ShardInfo>,
    lag: BTreeMap<String, Result<Lag, String>>,
}

pub async fn list(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let rows = super::leases::rows(config).await?;
    let (view, trouble) = match stream_view(config, &rows).await {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(if as_json {
        render_json(&rows, view.as_ref(), trouble.as_deref(), config)
    } else {
        render_table(&rows, view.as_ref(), trouble.as_deref(), config)
    })
}

/// Lists the shards and probes every started, unfinished one of the configured stream.
async fn stream_view(config: &Config, rows: &[LeaseRow]) -> Result<StreamView, String> {
    match config.source.kind {
        SourceType::DynamodbStreams => {
            let (api, meta) = DynamoDbStreams::connect(&config.source)
                .await
                .map_err(|e| e.to_string())?;
            view_of(&*api, meta.arn, rows).await
        }
        SourceType::Kinesis => {
            let api = Kinesis::connect(&config.source)
                .await
                .map_err(|e| format!("Kinesis stream: {e}"))?;
            let arn = api.arn.clone();
            view_of(&*api, arn, rows).await
        }
    }
}

async fn view_of<A: ShardApi>(
    api: &A,
    arn: String,
    rows: &[LeaseRow],
) -> Result<StreamView, String> {
    let shards = api.list_shards().await.map_err(|e| e.to_string())?;
    let retention = api.retention().await.ok();
    let mut lag = BTreeMap::new();
    for row in rows.iter().filter(|r| r.stream == arn) {
        let Some(cp) = row.checkpoint.as_ref().filter(|_| !row.lease.finished) else {
            continue;
        };
        lag.insert(
            row.lease.shard.to_string(),
            probe(api, &row.lease.shard, cp, retention)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    Ok(StreamView { arn, shards, lag })
}

/// One GetShardIterator at the checkpoint and one GetRecords of one record.
async fn probe<A: ShardApi>(
    api: &A,
    shard: &str,
    cp: &ShardCheckpoint,
    retention: Option<Duration>,
) -> Result<Lag, ApiError> {
    let iterator = api.shard_iterator(shard, &resume_point(cp)).await?;
    let page = api.get_records(&iterator, 1).await?;
    let now = now_micros();
    let behind = page
        .millis_behind_latest
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    // Kinesis may answer an empty page while behind: MillisBehindLatest still says how far
    let age = page
        .records
        .first()
        .and_then(|r| r.created_at_micros())
        .map(|t| Duration::from_micros(now.saturating_sub(t)))
        .or(behind);
    Ok(Lag {
        oldest_unacknowledged_age: age,
        behind_latest: page
            .millis_behind_latest
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        time_to_data_loss: retention
            .map(|r| r.as_secs_f64() - age.map_or(0.0, |a| a.as_secs_f64())),
    })
}

/// Where a reader resumes from this checkpoint (as the coordinator plans it).
fn resume_point(cp: &ShardCheckpoint) -> StartAt {
    match (&cp.sequence_number, &cp.start_at) {
        (Some(seq), _) => StartAt::AfterSequence(seq.clone()),
        (None, Some(at)) => at.clone(),
        (None, None) => StartAt::TrimHorizon,
    }
}

fn position(row: &LeaseRow) -> String {
    match &row.checkpoint {
        _ if row.lease.finished => "finished".into(),
        None => "not started".into(),
        Some(cp) => describe(&resume_point(cp)),
    }
}

fn describe(at: &StartAt) -> String {
    match at {
        StartAt::AfterSequence(seq) => format!("after {seq}"),
        StartAt::TrimHorizon => "from the trim horizon".into(),
        StartAt::Latest => "from LATEST".into(),
        StartAt::AtTimestamp(ms) => format!("from {}", time(*ms)),
    }
}

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Is the lease held by a worker that renewed it within a lease duration (the writer's wall
/// clock: a hint, which is why `--force` exists)?
fn live_owner(row: &LeaseRow, duration: Duration, now_ms: u64) -> Option<(String, u64)> {
    let owner = row.lease.owner.clone()?;
    let ago = now_ms.saturating_sub(row.renewed_at_ms?);
    (ago < duration.as_millis() as u64).then_some((owner, ago))
}

fn lag_text(lag: Option<&Result<Lag, String>>) -> String {
    match lag {
        None => "-".into(),
        Some(Err(_)) => "?".into(),
        Some(Ok(l)) => {
            let mut t = match l.oldest_unacknowledged_age {
                None => "caught up".to_string(),
                Some(age) => format!("{}s", age.as_secs()),
            };
            if let Some(ttdl) = l
                .time_to_data_loss
                .filter(|_| l.oldest_unacknowledged_age.is_some())
            {
                let _ = write!(t, " ({}s to data loss)", ttdl.round() as i64);
            }
            t
        }
    }
}

fn render_table(
    rows: &[LeaseRow],
    view: Option<&StreamView>,
    trouble: Option<&str>,
    config: &Config,
) -> String {
    let mut out = String::new();
    let now = now_ms() as u64;
    let mut streams: BTreeMap<&str, Vec<&LeaseRow>> = BTreeMap::new();
    for r in rows {
        streams.entry(&r.stream).or_default().push(r);
    }
    if let Some(v) = view {
        streams.entry(&v.arn).or_default();
    }
    if streams.is_empty() {
        out.push_str("no checkpoints yet (sluice has not run with this configuration)\n");
    }
    for (stream, rows) in streams {
        let _ = writeln!(out, "stream {stream}");
        let _ = writeln!(
            out,
            "  {:<28} {:<20} {:<22} {:<28} {:>20}  position",
            "shard", "owner", "lease", "lag (oldest unread)", "clock"
        );
        let current = view.filter(|v| v.arn == stream);
        for r in &rows {
            let lease = match (&r.lease.owner, live_owner(r, config.lease.duration, now)) {
                (None, _) => "-".to_string(),
                (Some(_), Some((_, ago))) => format!("{:.1}s ago", ago as f64 / 1000.0),
                (Some(_), None) => "expired".into(),
            };
            let _ = writeln!(
                out,
                "  {:<28} {:<20} {:<22} {:<28} {:>20}  {}",
                &*r.lease.shard,
                r.lease.owner.as_deref().unwrap_or("-"),
                lease,
                lag_text(current.and_then(|v| v.lag.get(&*r.lease.shard))),
                r.checkpoint
                    .as_ref()
                    .map_or("-".into(), |c| c.clock.to_string()),
                position(r),
            );
        }
        if let Some(v) = current {
            for s in v
                .shards
                .iter()
                .filter(|s| !rows.iter().any(|r| r.lease.shard == s.id))
            {
                let parents: Vec<&str> = s.parents.iter().map(|p| &**p).collect();
                let _ = writeln!(
                    out,
                    "  {:<28} {:<20} {:<22} {:<28} {:>20}  not started{}",
                    &*s.id,
                    "-",
                    "-",
                    "-",
                    "-",
                    if parents.is_empty() {
                        String::new()
                    } else {
                        format!(" (after {})", parents.join(", "))
                    }
                );
            }
        }
    }
    if let Some(why) = trouble {
        let _ = writeln!(out, "lag unknown: cannot read the stream ({why})");
    }
    out
}

fn render_json(
    rows: &[LeaseRow],
    view: Option<&StreamView>,
    trouble: Option<&str>,
    config: &Config,
) -> String {
    let now = now_ms() as u64;
    let mut list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let lag = view
                .filter(|v| v.arn == r.stream)
                .and_then(|v| v.lag.get(&*r.lease.shard));
            json!({
                "stream": r.stream,
                "shard": &*r.lease.shard,
                "started": r.checkpoint.is_some(),
                "finished": r.lease.finished,
                "position": position(r),
                "sequence_number": r.checkpoint.as_ref().and_then(|c| c.sequence_number.clone()),
                "clock": r.checkpoint.as_ref().map(|c| c.clock),
                "owner": r.lease.owner,
                "epoch": r.lease.epoch,
                "lease_live": live_owner(r, config.lease.duration, now).is_some(),
                "renewed_at_ms": r.renewed_at_ms,
                "oldest_unacknowledged_age_seconds": lag.and_then(|l| l.as_ref().ok()).map(|l| l.oldest_unacknowledged_age.map_or(0.0, |a| a.as_secs_f64())),
                "behind_latest_seconds": lag.and_then(|l| l.as_ref().ok()).and_then(|l| l.behind_latest.map(|b| b.as_secs_f64())),
                "time_to_data_loss_seconds": lag.and_then(|l| l.as_ref().ok()).and_then(|l| l.time_to_data_loss),
                "lag_error": lag.and_then(|l| l.as_ref().err()),
            })
        })
        .collect();
    if let Some(v) = view {
        for s in v.shards.iter().filter(|s| {
            !rows
                .iter()
                .any(|r| r.stream == v.arn && r.lease.shard == s.id)
        }) {
            list.push(json!({
                "stream": v.arn, "shard": &*s.id, "started": false, "finished": false,
                "position": "not started",
                "parents": s.parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            }));
        }
    }
    serde_json::to_string_pretty(&json!({ "shards": list, "stream_error": trouble }))
        .expect("JSON to memory")
        + "\n"
}

/// Where `reset --to` moves a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    TrimHorizon,
    Latest,
    /// Resume after this record.
    After(String),
}

impl Target {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "trim_horizon" => Ok(Target::TrimHorizon),
            "latest" => Ok(Target::Latest),
            // kept as the service wrote it (leading zeros included)
            seq if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Target::After(seq.to_string()))
            }
            other => anyhow::bail!(
                "--to must be trim_horizon, latest or a sequence number (digits), not `{other}`"
            ),
        }
    }
}

/// Does moving from `from` to `to` read records again?
fn reads_again(from: &StartAt, to: &StartAt) -> bool {
    match (from, to) {
        (_, StartAt::TrimHorizon) => true,
        (StartAt::AfterSequence(old), StartAt::AfterSequence(new)) => seq_cmp(new, old).is_lt(),
        _ => false,
    }
}

/// Asks the stream whether it can resume after `seq` on `shard` (a typo or another shard's
/// number would otherwise leave the shard retrying forever).
async fn check_sequence(config: &Config, shard: &str, seq: &str) -> anyhow::Result<()> {
    let at = StartAt::AfterSequence(seq.to_string());
    let answer = match config.source.kind {
        SourceType::DynamodbStreams => {
            let (api, _) = DynamoDbStreams::connect(&config.source)
                .await
                .map_err(|e| anyhow::anyhow!("cannot check --to {seq} against the stream: {e}"))?;
            api.shard_iterator(shard, &at).await
        }
        SourceType::Kinesis => {
            let api = Kinesis::connect(&config.source)
                .await
                .map_err(|e| anyhow::anyhow!("cannot check --to {seq} against the stream: {e}"))?;
            api.shard_iterator(shard, &at).await
        }
    };
    answer.map(|_| ()).map_err(|e| {
        anyhow::anyhow!("the stream does not accept sequence number {seq} for shard {shard}: {e}")
    })
}

/// Orders decimal sequence numbers of any length (leading zeros ignored).
fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// What a reset from `from` to `to` will read again or skip, in words.
pub fn consequences(shard: &str, from: &StartAt, to: &StartAt, kinesis: bool) -> String {
    let was = describe(from);
    match (from, to) {
        (_, StartAt::TrimHorizon) => format!(
            "shard {shard} will be read again from the oldest record the stream still keeps (it was {was}): \
             records already indexed are written again with higher versions, in order, so each document ends \
             at its newest state"
        ),
        (_, StartAt::AtTimestamp(ms)) => format!(
            "shard {shard} was {was}; records that arrived before {} will be SKIPPED — their changes never \
             reach the index (run `sluice verify --repair` or a backfill to bring them back); records from then \
             on are read{}",
            time(*ms),
            if kinesis {
                ""
            } else {
                " (DynamoDB Streams has no timestamp iterator: the shard is read from its trim horizon and the older records are passed over)"
            }
        ),
        (_, StartAt::Latest) => format!(
            "shard {shard} was {was}; every record written before sluice next reads this shard will be SKIPPED"
        ),
        (StartAt::AfterSequence(old), StartAt::AfterSequence(new)) => match seq_cmp(new, old) {
            std::cmp::Ordering::Greater => format!(
                "shard {shard}: records after {old} up to and including {new} will be SKIPPED (never indexed)"
            ),
            std::cmp::Ordering::Less => format!(
                "shard {shard}: records after {new} up to and including {old} will be read again (written again \
                 with higher versions, in order)"
            ),
            std::cmp::Ordering::Equal => format!("shard {shard} is already after {new}: nothing changes"),
        },
        (_, StartAt::AfterSequence(new)) => format!(
            "shard {shard} was {was}; records up to and including {new} will be SKIPPED (never indexed)"
        ),
    }
}

/// `checkpoints reset --shard S --to …`: the explanation, then the change.
pub async fn reset(
    config: &Config,
    shard: &str,
    to: &str,
    stream: Option<&str>,
    force: bool,
) -> anyhow::Result<String> {
    let target = Target::parse(to)?;
    let rows = super::leases::rows(config).await?;
    let found: Vec<&LeaseRow> = rows
        .iter()
        .filter(|r| &*r.lease.shard == shard && stream.is_none_or(|s| r.stream == s))
        .collect();
    let row = match found.as_slice() {
        [] => anyhow::bail!(
            "no checkpoint or lease for shard {shard}{} (`sluice checkpoints list` shows the shards)",
            stream.map(|s| format!(" of stream {s}")).unwrap_or_default()
        ),
        [one] => *one,
        several => anyhow::bail!(
            "shard {shard} is in {} streams ({}): name one with --stream",
            several.len(),
            several.iter().map(|r| r.stream.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    let Some(cp) = &row.checkpoint else {
        anyhow::bail!(
            "shard {shard} has not been started: nothing to reset (it starts after its parents, or at \
             source.start_position)"
        );
    };
    if row.lease.finished {
        anyhow::bail!(
            "shard {shard} is finished (read to its end, its children continue it): it cannot be reset; \
             to repair the index use `sluice verify --repair` or a backfill"
        );
    }
    if let Some((owner, ago)) = live_owner(row, config.lease.duration, now_ms() as u64) {
        if !force {
            anyhow::bail!(
                "shard {shard} is being read by worker {owner} (lease renewed {:.1}s ago): stop it first, or \
                 pass --force to take the lease from it (it drops what it has in flight, and whoever takes the \
                 shard next reads from the new position)",
                ago as f64 / 1000.0
            );
        }
    }
    let kinesis = config.source.kind == SourceType::Kinesis;
    let (sequence_number, start_at) = match &target {
        Target::TrimHorizon => (None, None),
        Target::After(seq) => (Some(seq.clone()), None),
        // "from now", not "from whenever sluice next reads": Kinesis starts AT_TIMESTAMP; a
        // DynamoDB Streams reader (no timestamps in its API) reads from TRIM_HORIZON and passes
        // over the records created before it — so a record written after the reset is never
        // skipped, even if the next reader is killed before acknowledging it
        Target::Latest => {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            (None, Some(StartAt::AtTimestamp(ms)))
        }
    };
    let new_point = match (&sequence_number, &start_at) {
        (Some(seq), _) => StartAt::AfterSequence(seq.clone()),
        (None, Some(at)) => at.clone(),
        (None, None) => StartAt::TrimHorizon,
    };
    let dms = kinesis && config.source.format == Some(KinesisFormat::Dms);
    if dms && reads_again(&resume_point(cp), &new_point) {
        anyhow::bail!(
            "shard {shard} follows a DMS stream, which cannot be read again safely: a row whose primary key \
             was changed has its delete in another shard, and its older updates read again here would \
             bring it back. Reload the tables with a DMS full-load task instead"
        );
    }
    if let Target::After(seq) = &target {
        check_sequence(config, shard, seq).await?;
    }
    // Records past the checkpoint may already be in the index (written by a killed or displaced
    // reader, not yet committed) with versions above the saved clock; the clock restarts above
    // any of them: the current time in version units, plus a second.
    let units_per_micro = if dms {
        crate::transform::dms::DMS_VERSIONS_PER_MICROSECOND
    } else {
        1
    };
    let clock_at_least = (now_micros() + 1_000_000).saturating_mul(units_per_micro);
    let said = consequences(shard, &resume_point(cp), &new_point, kinesis);
    let done = match config.lease.backend {
        LeaseBackend::Sqlite => {
            let store =
                CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
            sqlite::reset(
                &store,
                &row.stream,
                shard,
                sequence_number,
                start_at,
                clock_at_least,
            )
            .await?
        }
        LeaseBackend::Dynamodb => {
            dynamodb::reset(
                config,
                &row.stream,
                shard,
                sequence_number,
                start_at,
                clock_at_least,
            )
            .await?
        }
    };
    if !done {
        anyhow::bail!("shard {shard} changed meanwhile (finished, or its checkpoint is gone): nothing was reset");
    }
    Ok(format!(
        "{said}.\nreset: shard {shard} of {} now reads {}; its lease was released (epoch {} → {}); its version clock \
         only rises (from {}), so what is read next is written above anything written before\n",
        row.stream,
        describe(&new_point),
        row.lease.epoch,
        row.lease.epoch + 1,
        cp.clock
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_a_start_position_or_a_sequence_number() {
        assert_eq!(Target::parse("trim_horizon").unwrap(), Target::TrimHorizon);
        assert_eq!(Target::parse("latest").unwrap(), Target::Latest);
        assert_eq!(
            Target::parse("0049590").unwrap(),
            Target::After("0049590".into())
        );
        let e = Target::parse("LATEST!").unwrap_err().to_string();
        assert!(e.contains("--to must be") && e.contains("LATEST!"), "{e}");
    }

    #[test]
    fn the_explanation_says_what_is_read_again_and_what_is_skipped() {
        let after = |s: &str| StartAt::AfterSequence(s.into());
        let forward = consequences("s1", &after("100"), &after("250"), true);
        assert!(
            forward.contains("after 100 up to and including 250 will be SKIPPED"),
            "{forward}"
        );
        let back = consequences("s1", &after("0250"), &after("100"), true);
        assert!(
            back.contains("after 100 up to and including 0250 will be read again"),
            "{back}"
        );
        // a longer sequence number is a larger one
        let longer = consequences("s1", &after("99"), &after("100"), true);
        assert!(longer.contains("SKIPPED"), "{longer}");
        let latest = consequences("s1", &after("100"), &StartAt::AtTimestamp(0), true);
        assert!(
            latest.contains("before 1970-01-01T00:00:00.000Z will be SKIPPED"),
            "{latest}"
        );
        let ddb = consequences("s1", &after("100"), &StartAt::AtTimestamp(0), false);
        assert!(ddb.contains("passed over"), "{ddb}");
        let again = consequences("s1", &after("100"), &StartAt::TrimHorizon, true);
        assert!(
            again.contains("read again from the oldest record"),
            "{again}"
        );
    }
}
