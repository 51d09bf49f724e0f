//! Every metric sluice exports, declared in one place. Names start with `sluice_`, counters end in
//! `_total`, times are seconds. Label values are bounded: shard ids (removed when a shard is
//! finished), result and reason enums — never a document id.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub records_read: IntCounterVec,
    pub documents: IntCounterVec,
    pub decode_errors: IntCounter,
    pub data_loss: IntCounterVec,
    pub bulk_duration: Histogram,
    pub bulk_requests: IntCounterVec,
    pub retries: IntCounterVec,
    pub batch_documents: Histogram,
    pub batch_bytes: Histogram,
    pub iterator_age: prometheus::GaugeVec,
    pub behind_latest: prometheus::GaugeVec,
    pub records_skipped: IntCounterVec,
    pub checkpoint_lag_records: IntGaugeVec,
    pub checkpoint_commits: IntCounter,
    pub checkpoint_errors: IntCounter,
    pub shards_owned: IntGauge,
    pub shards_finished: IntCounter,
    pub pipeline_bytes: IntGauge,
    pub dead_letters: IntGauge,
    pub leases_held: IntGauge,
    pub lease_held: IntGaugeVec,
    pub lease_takeovers: IntCounterVec,
    pub lease_losses: IntCounterVec,
    pub lease_renew_failures: IntCounter,
    pub lease_handoffs: IntCounter,
    pub ready: IntGauge,
    pub pipeline_budget_bytes: IntGauge,
    pub backfill_items: IntCounter,
    pub backfill_estimated_items: IntGauge,
    pub backfill_segments: IntGaugeVec,
    pub backfill_segment_items: IntGaugeVec,
    pub backfill_complete: IntGauge,
    pub time_to_data_loss: prometheus::GaugeVec,
    pub retention: prometheus::Gauge,
    pub verify_last_run: prometheus::Gauge,
    pub verify_last_checked: IntGauge,
    pub verify_last_differences: IntGaugeVec,
    pub fan_out_subscriptions: IntGauge,
    pub fan_out_renewals: IntCounter,
    pub fan_out_failures: IntCounterVec,
    pub fan_out_redelivered: IntCounter,
}

/// Results of document operations (`sluice_documents_total{result}`).
pub mod result {
    pub const INDEXED: &str = "indexed";
    pub const DELETED: &str = "deleted";
    pub const STALE: &str = "stale";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// Queued for a shard whose lease was lost: dropped unsent (the new holder re-reads them).
    pub const FENCED: &str = "fenced";
    pub const ALL: [&str; 5] = [INDEXED, DELETED, STALE, DEAD_LETTERED, FENCED];
}

/// Every label value known in advance, exported at 0 from the start so that alerts and
/// dashboards see each series before its first event.
pub mod labels {
    /// `sluice_backfill_segments{state}`.
    pub const BACKFILL_SEGMENT_STATES: [&str; 3] = ["pending", "in_progress", "done"];
    /// `sluice_retries_total{reason}`: the source's and the sink's.
    pub const RETRY_REASONS: [&str; 23] = [
        // source
        "expired_iterator",
        "trimmed_data",
        "source_throttled",
        "source_timeout",
        "not_found",
        "source_transient",
        // whole bulk requests
        "http_429",
        "http_5xx",
        "http_400",
        "http_4xx",
        "http_413_split",
        "http_400_split",
        "timeout",
        "connection",
        "malformed_response",
        // credentials could not be had or the request not signed (SigV4)
        "signing",
        // bulk items
        "item_429",
        "item_5xx",
        "cluster_block",
        "index_not_found",
        "index_closed",
        "index_target",
        "security",
    ];
    /// `sluice_fan_out_subscription_failures_total{reason}`.
    pub const FAN_OUT_FAILURES: [&str; 6] = [
        // another SubscribeToShard within 5 s, or another worker took the shard over
        "resource_in_use",
        // the calls-per-second limit
        "limit_exceeded",
        "not_found",
        // the consumer is not ACTIVE (deleted, or being re-created)
        "consumer_not_active",
        // connection lost, timeouts, a broken event stream
        "network",
        "other",
    ];
    /// Item retries for an error type sluice does not know (retried, loudly).
    pub const ITEM_UNKNOWN: &str = "item_unknown";
    /// `sluice_bulk_requests_total{outcome}`.
    pub const BULK_OUTCOMES: [&str; 10] = [
        "ok",
        "http_429",
        "http_5xx",
        "http_413",
        "http_400",
        "http_4xx",
        "timeout",
        "connection",
        "malformed_response",
        "signing",
    ];
    /// `sluice_data_loss_events_total{reason}`.
    pub const DATA_LOSS_REASONS: [&str; 2] = ["trimmed", "shard_gone"];
    /// `sluice_records_skipped_total{reason}`.
    pub const SKIP_REASONS: [&str; 3] = ["control_record", "no_route", "before_start"];
    /// `sluice_lease_takeovers_total{from}`: an unowned lease, an expired one, a handoff.
    pub const LEASE_TAKEOVERS: [&str; 3] = ["unowned", "expired", "handoff"];
    /// `sluice_lease_losses_total{reason}`.
    pub const LEASE_LOSSES: [&str; 3] = ["taken", "fenced", "renew_failed"];
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        let records_read = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_records_read_total",
                "Change records read from the source"
            ),
            &["shard"]
        ));
        let documents = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_documents_total",
                "Document operations finished, by result: indexed, deleted, stale (the index already held a newer version), dead_lettered"
            ),
            &["result"]
        ));
        let decode_errors = reg!(IntCounter::new(
            "sluice_decode_errors_total",
            "Source records that could not be decoded (sent to the dead-letter table)"
        ));
        let data_loss = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_data_loss_events_total",
                "Times records were lost before sluice could read them (e.g. trimmed)"
            ),
            &["reason"]
        ));
        let bulk_duration = reg!(Histogram::with_opts(
            HistogramOpts::new(
                "sluice_bulk_request_duration_seconds",
                "Latency of one _bulk HTTP request"
            )
            .buckets(exponential_buckets(0.005, 2.0, 14).expect("valid buckets"))
        ));
        let bulk_requests = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_bulk_requests_total",
                "_bulk requests sent, by outcome"
            ),
            &["outcome"]
        ));
        let retries = reg!(IntCounterVec::new(
            Opts::new("sluice_retries_total", "Retries, by reason"),
            &["reason"]
        ));
        let batch_documents = reg!(Histogram::with_opts(
            HistogramOpts::new("sluice_batch_documents", "Documents per bulk request")
                .buckets(exponential_buckets(1.0, 2.0, 14).expect("valid buckets"))
        ));
        let batch_bytes = reg!(Histogram::with_opts(
            HistogramOpts::new("sluice_batch_bytes", "Bytes per bulk request body")
                .buckets(exponential_buckets(1024.0, 2.0, 16).expect("valid buckets"))
        ));
        let iterator_age = reg!(prometheus::GaugeVec::new(
            Opts::new(
                "sluice_iterator_age_seconds",
                "Now minus the ApproximateCreationDateTime of the last record read, per shard"
            ),
            &["shard"]
        ));
        let behind_latest = reg!(prometheus::GaugeVec::new(
            Opts::new(
                "sluice_behind_latest_seconds",
                "Kinesis MillisBehindLatest of the last GetRecords answer or fan-out event, in seconds, per shard"
            ),
            &["shard"]
        ));
        let records_skipped = reg!(IntCounterVec::new(
            Opts::new("sluice_records_skipped_total", "Well-formed records that produce no document operation, by reason (control_record, no_route, before_start: older than the time a shard was reset to)"),
            &["reason"]
        ));
        let checkpoint_lag_records = reg!(IntGaugeVec::new(
            Opts::new(
                "sluice_checkpoint_lag_records",
                "Records read but not yet acknowledged and checkpointed, per shard"
            ),
            &["shard"]
        ));
        let checkpoint_commits = reg!(IntCounter::new(
            "sluice_checkpoint_commits_total",
            "Checkpoint transactions committed"
        ));
        let checkpoint_errors = reg!(IntCounter::new(
            "sluice_checkpoint_errors_total",
            "Failed checkpoint transactions (retried)"
        ));
        let shards_owned = reg!(IntGauge::new(
            "sluice_shards_owned",
            "Shards this process is reading now"
        ));
        let shards_finished = reg!(IntCounter::new(
            "sluice_shards_finished_total",
            "Shards read to their end and fully acknowledged"
        ));
        let pipeline_bytes = reg!(IntGauge::new(
            "sluice_pipeline_bytes",
            "Encoded bytes of operations read and not yet acknowledged (bounded by the pipeline budget)"
        ));
        let dead_letters = reg!(IntGauge::new(
            "sluice_dead_letters",
            "Rows in the dead-letter table (refused operations and undecodable records)"
        ));
        for r in result::ALL {
            documents.with_label_values(&[r]);
        }
        for r in labels::RETRY_REASONS.iter().chain([&labels::ITEM_UNKNOWN]) {
            retries.with_label_values(&[r]);
        }
        for o in labels::BULK_OUTCOMES {
            bulk_requests.with_label_values(&[o]);
        }
        for r in labels::DATA_LOSS_REASONS {
            data_loss.with_label_values(&[r]);
        }
        for r in labels::SKIP_REASONS {
            records_skipped.with_label_values(&[r]);
        }
        let leases_held = reg!(IntGauge::new(
            "sluice_leases_held",
            "Shard leases this worker holds"
        ));
        let lease_held = reg!(IntGaugeVec::new(
            Opts::new(
                "sluice_lease_held",
                "1 for each shard whose lease this worker holds"
            ),
            &["shard"]
        ));
        let lease_takeovers = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_lease_takeovers_total",
                "Leases this worker acquired, by where from: unowned, expired (its owner stopped renewing), handoff"
            ),
            &["from"]
        ));
        let lease_losses = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_lease_losses_total",
                "Leases this worker lost, by reason: taken (by another worker), fenced (a checkpoint commit refused), renew_failed"
            ),
            &["reason"]
        ));
        let lease_renew_failures = reg!(IntCounter::new(
            "sluice_lease_renew_failures_total",
            "Lease renewals that failed for trouble with the lease table (retried)"
        ));
        let lease_handoffs = reg!(IntCounter::new(
            "sluice_lease_handoffs_total",
            "Leases this worker handed over to another, gracefully"
        ));
        let ready = reg!(IntGauge::new(
            "sluice_ready",
            "1 when /readyz answers 200 (set at every scrape), else 0"
        ));
        let time_to_data_loss = reg!(prometheus::GaugeVec::new(
            Opts::new(
                "sluice_shard_time_to_data_loss_seconds",
                "Retention minus the age of the oldest record not yet acknowledged, per shard read here: below 0, records are being trimmed unread"
            ),
            &["shard"]
        ));
        let retention = reg!(prometheus::Gauge::new(
            "sluice_stream_retention_seconds",
            "How long the stream keeps a record (DynamoDB Streams: 24 h; Kinesis: RetentionPeriodHours, re-read every 5 minutes)"
        ));
        let verify_last_run = reg!(prometheus::Gauge::new(
            "sluice_verify_last_run_timestamp_seconds",
            "When the last `sluice verify` recorded in the checkpoint file finished (0: never)"
        ));
        let verify_last_checked = reg!(IntGauge::new(
            "sluice_verify_last_items_checked",
            "Items the last `sluice verify` compared"
        ));
        let verify_last_differences = reg!(IntGaugeVec::new(
            Opts::new(
                "sluice_verify_last_differences",
                "Documents the last `sluice verify` found differing from the table, by class: missing, different, extra"
            ),
            &["class"]
        ));
        let pipeline_budget_bytes = reg!(IntGauge::new(
            "sluice_pipeline_budget_bytes",
            "The byte budget between readers and Elasticsearch (sluice_pipeline_bytes stops growing here)"
        ));
        let backfill_items = reg!(IntCounter::new(
            "sluice_backfill_items_total",
            "Items the backfill (Scan or export) wrote and Elasticsearch acknowledged"
        ));
        let backfill_estimated_items = reg!(IntGauge::new(
            "sluice_backfill_estimated_items",
            "Items the backfill expects: the table's ItemCount (updated by DynamoDB about every 6 hours) or the export's"
        ));
        let backfill_segments = reg!(IntGaugeVec::new(
            Opts::new(
                "sluice_backfill_segments",
                "Backfill segments (Scan segments, or an export's data files) by state: pending, in_progress, done"
            ),
            &["state"]
        ));
        let backfill_segment_items = reg!(IntGaugeVec::new(
            Opts::new(
                "sluice_backfill_segment_items",
                "Items of one Scan segment written and acknowledged, over every run of this backfill"
            ),
            &["segment"]
        ));
        let backfill_complete = reg!(IntGauge::new(
            "sluice_backfill_complete",
            "1 once every segment of the backfill is done (0 while it runs, or when none ran)"
        ));
        let fan_out_subscriptions = reg!(IntGauge::new(
            "sluice_fan_out_subscriptions",
            "Enhanced fan-out: SubscribeToShard subscriptions open now (one per shard read)"
        ));
        let fan_out_renewals = reg!(IntCounter::new(
            "sluice_fan_out_renewals_total",
            "Enhanced fan-out: subscriptions renewed from their continuation (before the 5-minute limit, or when the service ended one)"
        ));
        let fan_out_failures = reg!(IntCounterVec::new(
            Opts::new(
                "sluice_fan_out_subscription_failures_total",
                "Enhanced fan-out: subscriptions that could not be made or broke, by reason; each is retried with backoff from the last record handed on"
            ),
            &["reason"]
        ));
        let fan_out_redelivered = reg!(IntCounter::new(
            "sluice_fan_out_redelivered_total",
            "Enhanced fan-out: records a new subscription delivered again (at or before the last one handed on), dropped"
        ));
        for r in labels::FAN_OUT_FAILURES {
            fan_out_failures.with_label_values(&[r]);
        }
        for state in labels::BACKFILL_SEGMENT_STATES {
            backfill_segments.with_label_values(&[state]);
        }
        for f in labels::LEASE_TAKEOVERS {
            lease_takeovers.with_label_values(&[f]);
        }
        for r in labels::LEASE_LOSSES {
            lease_losses.with_label_values(&[r]);
        }
        Self {
            registry,
            records_read,
            documents,
            decode_errors,
            data_loss,
            bulk_duration,
            bulk_requests,
            retries,
            batch_documents,
            batch_bytes,
            iterator_age,
            behind_latest,
            records_skipped,
            checkpoint_lag_records,
            checkpoint_commits,
            checkpoint_errors,
            shards_owned,
            shards_finished,
            pipeline_bytes,
            dead_letters,
            leases_held,
            lease_held,
            lease_takeovers,
            lease_losses,
            lease_renew_failures,
            lease_handoffs,
            ready,
            pipeline_budget_bytes,
            backfill_items,
            backfill_estimated_items,
            backfill_segments,
            backfill_segment_items,
            backfill_complete,
            time_to_data_loss,
            retention,
            verify_last_run,
            verify_last_checked,
            verify_last_differences,
            fan_out_subscriptions,
            fan_out_renewals,
            fan_out_failures,
            fan_out_redelivered,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics to memory");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    /// Drops the per-shard series of a shard that is finished, so label values stay bounded.
    pub fn forget_shard(&self, shard: &str) {
        let _ = self.records_read.remove_label_values(&[shard]);
        let _ = self.iterator_age.remove_label_values(&[shard]);
        let _ = self.behind_latest.remove_label_values(&[shard]);
        let _ = self.checkpoint_lag_records.remove_label_values(&[shard]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_label_value_is_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for r in result::ALL {
            assert!(
                text.contains(&format!("sluice_documents_total{{result=\"{r}\"}} 0")),
                "{r}"
            );
        }
        for r in labels::RETRY_REASONS {
            assert!(
                text.contains(&format!("sluice_retries_total{{reason=\"{r}\"}} 0")),
                "{r}"
            );
        }
        for o in labels::BULK_OUTCOMES {
            assert!(
                text.contains(&format!("sluice_bulk_requests_total{{outcome=\"{o}\"}} 0")),
                "{o}"
            );
        }
        for r in labels::DATA_LOSS_REASONS {
            assert!(
                text.contains(&format!(
                    "sluice_data_loss_events_total{{reason=\"{r}\"}} 0"
                )),
                "{r}"
            );
        }
        for r in labels::SKIP_REASONS {
            assert!(
                text.contains(&format!("sluice_records_skipped_total{{reason=\"{r}\"}} 0")),
                "{r}"
            );
        }
        assert!(text.contains("sluice_dead_letters 0"));
    }
}
