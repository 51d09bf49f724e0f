//! Time to data loss: how long until the stream's retention passes the oldest record this
//! process has not yet acknowledged. A restart (or a new lease holder) reads from the last
//! checkpoint; once the record after it is trimmed, changes are lost for good. Lag in records
//! or seconds does not say when that happens; this does, per shard:
//!
//! ```text
//! time to data loss = retention − (now − arrival of the oldest record not yet checkpointed)
//! ```
//!
//! The oldest record is the first of the oldest page still pending, or — nothing pending — the
//! first one not yet read (see [`AckTracker::oldest_unacknowledged`]). Retention is the
//! service's (DynamoDB Streams: 24 h), or the Kinesis stream's `RetentionPeriodHours`, asked again
//! every few minutes because it can be changed at any time.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::source::reader::now_micros;
use crate::source::ShardApi;

/// How often the figures are computed.
const EVERY: Duration = Duration::from_secs(5);
/// How often a stream's retention is asked again.
const RETENTION_EVERY: Duration = Duration::from_secs(300);

/// Seconds left before a record that arrived at `arrived` (µs) is trimmed; negative once it is
/// past the retention.
pub fn time_to_data_loss(retention: Duration, arrived_micros: u64, now_micros: u64) -> f64 {
    let age = now_micros.saturating_sub(arrived_micros) as f64 / 1e6;
    retention.as_secs_f64() - age
}

/// Why readiness closes, naming the shards below `min` (fewest seconds first); `None` when every
/// shard has at least `min` left, or when `min` is zero (the check is off).
pub fn verdict(
    per_shard: &BTreeMap<String, f64>,
    min: Duration,
    retention: Duration,
) -> Option<String> {
    if min.is_zero() {
        return None;
    }
    let mut short: Vec<(&String, f64)> = per_shard
        .iter()
        .filter(|(_, s)| **s < min.as_secs_f64())
        .map(|(shard, s)| (shard, *s))
        .collect();
    if short.is_empty() {
        return None;
    }
    short.sort_by(|a, b| a.1.total_cmp(&b.1));
    let list: Vec<String> = short
        .iter()
        .map(|(shard, s)| format!("{shard} {}", left(*s)))
        .collect();
    Some(format!(
        "time to data loss below health.min_time_to_data_loss ({}): {} (records older than the {} retention are trimmed unread)",
        humantime::format_duration(min),
        list.join(", "),
        humantime::format_duration(retention),
    ))
}

fn left(secs: f64) -> String {
    if secs <= 0.0 {
        format!("is {}s past it", (-secs).round() as u64)
    } else {
        format!("has {}s left", secs.round() as u64)
    }
}

/// Computes every shard's time to data loss every few seconds until `stop`: the metric, the
/// `/readyz` details, and readiness below `min`.
pub async fn watch<A: ShardApi>(
    api: Arc<A>,
    tracker: AckTracker,
    metrics: Metrics,
    health: Arc<Health>,
    min: Duration,
    stop: CancellationToken,
) {
    let mut retention: Option<(Duration, Instant)> = None;
    let mut shown: HashSet<String> = HashSet::new();
    loop {
        if retention.is_none_or(|(_, at)| at.elapsed() >= RETENTION_EVERY) {
            match api.retention().await {
                Ok(r) => {
                    metrics.retention.set(r.as_secs_f64());
                    retention = Some((r, Instant::now()));
                }
                // keep the last known retention; without one, there is no figure yet
                Err(e) => tracing::warn!(error = %e, "cannot read the stream's retention period"),
            }
        }
        if let Some((r, _)) = retention {
            let now = now_micros();
            let per_shard: BTreeMap<String, f64> = tracker
                .oldest_unacknowledged()
                .into_iter()
                .map(|(shard, arrived)| (shard.to_string(), time_to_data_loss(r, arrived, now)))
                .collect();
            for (shard, secs) in &per_shard {
                metrics
                    .time_to_data_loss
                    .with_label_values(&[shard])
                    .set(*secs);
            }
            for gone in shown.iter().filter(|s| !per_shard.contains_key(*s)) {
                let _ = metrics.time_to_data_loss.remove_label_values(&[gone]);
            }
            shown = per_shard.keys().cloned().collect();
            let why = verdict(&per_shard, min, r);
            if let Some(why) = &why {
                tracing::warn!(reason = %why, "records are close to being trimmed unread");
            }
            health.set_time_to_data_loss(per_shard, why);
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn time_to_data_loss_is_retention_minus_the_age_of_the_oldest_record() {
        let now = 1_700_000_000_000_000;
        assert_eq!(time_to_data_loss(24 * HOUR, now, now), 86_400.0);
        assert_eq!(
            time_to_data_loss(24 * HOUR, now - 23 * 3_600_000_000, now),
            3600.0
        );
        assert_eq!(
            time_to_data_loss(24 * HOUR, now - 25 * 3_600_000_000, now),
            -3600.0
        );
        // a record from the future (clock skew) has its whole retention left
        assert_eq!(time_to_data_loss(HOUR, now + 5_000_000, now), 3600.0);
    }

    #[test]
    fn readiness_names_the_shards_below_the_minimum_fewest_seconds_first() {
        let shards: BTreeMap<String, f64> = [
            ("shardId-a".to_string(), 7200.0),
            ("shardId-b".to_string(), 1800.0),
            ("shardId-c".to_string(), -30.0),
        ]
        .into();
        let why = verdict(&shards, HOUR, 24 * HOUR).unwrap();
        assert!(
            why.contains("shardId-c is 30s past it, shardId-b has 1800s left"),
            "{why}"
        );
        assert!(
            !why.contains("shardId-a") && why.contains("1h") && why.contains("1day"),
            "{why}"
        );
        assert_eq!(
            verdict(&shards, Duration::from_secs(60), 24 * HOUR).map(|w| w.contains("shardId-b")),
            Some(false)
        );
        assert_eq!(verdict(&shards, Duration::ZERO, 24 * HOUR), None);
        assert_eq!(verdict(&BTreeMap::new(), HOUR, 24 * HOUR), None);
    }
}
