//! One task per shard: poll GetRecords, give every record its version, hand the operations to
//! the batcher, register each page with the acknowledgement tracker. Readers never write
//! checkpoints.
//!
//! Recovery, each with its own metric:
//! * expired iterator → a new one just after the last record read (or the start), no gap;
//! * trimmed data → a loud error naming the shard and the lost range, then TRIM_HORIZON;
//! * throttling → jittered exponential backoff;
//! * other failures → backoff; after three in a row the iterator is renewed from the last
//!   position, in case it is the iterator that is bad.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::{ApiError, ShardApi, SourceRecord, StartAt};
use crate::ack::{AckTracker, ShardId};
use crate::batch::Router;
use crate::checkpoint::{CheckpointStore, DeadLetter, ShardCheckpoint};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::sink::{BulkOp, Origin};
use crate::transform::{DecodeError, Decoded};
use crate::version::{self, VersionClock};

/// Turns one source record into document operations (pure; see `transform.rs`).
pub type Decoder<R> = Arc<dyn Fn(&R) -> Result<Decoded, DecodeError> + Send + Sync>;

/// What every reader of a pipeline shares.
pub struct ReaderContext<R> {
    pub stream: Arc<str>,
    pub index: Arc<str>,
    pub decode: Decoder<R>,
    pub router: Router,
    pub tracker: AckTracker,
    pub store: CheckpointStore,
    pub metrics: Metrics,
    pub poll_interval: Duration,
    /// The idle shards' polls per second, together (0: unbounded); see [`idle_pause`].
    pub idle_polls_per_second: u32,
    /// Shard readers backing off now (their last page was empty).
    pub idle_readers: Arc<std::sync::atomic::AtomicUsize>,
    pub records_per_call: u32,
    pub backoff: Backoff,
}

/// The longest an idle shard waits, whatever the budget: iterators expire (5 minutes on
/// Kinesis, 15 on DynamoDB Streams), and an idle shard's time-to-data-loss figure is as old as
/// its last poll.
pub const IDLE_CEILING_MAX: Duration = Duration::from_secs(60);

/// The ceiling of an idle shard's back-off: `poll_interval`, or, when so many shards of this
/// process are idle that their polls together would exceed `idle_polls_per_second`, idle
/// shards ÷ that budget — never above [`IDLE_CEILING_MAX`] (unless `poll_interval` is).
pub fn idle_ceiling(
    poll_interval: Duration,
    idle_readers: usize,
    idle_polls_per_second: u32,
) -> Duration {
    match idle_polls_per_second {
        0 => poll_interval,
        budget => {
            let share = Duration::from_micros(
                (idle_readers as u64).saturating_mul(1_000_000) / u64::from(budget),
            );
            poll_interval.max(share.min(IDLE_CEILING_MAX))
        }
    }
}

/// How long an idle shard waits before its next poll, after `empty_polls` empty answers in a
/// row: doubling from a quarter of `poll_interval` up to the ceiling. A non-empty answer resets
/// the count, so a shard that wakes up is polled at once again; the ceiling bounds the wait for
/// its first record. (No jitter: shards that went quiet together then poll together, and one
/// wake-up serves them all — spreading them measured 12 → 15 % of a core at 1,000 shards. The
/// service's limits are per shard, so a burst across shards costs nothing there.)
pub fn idle_pause(empty_polls: u32, poll_interval: Duration, ceiling: Duration) -> Duration {
    (poll_interval / 4)
        .saturating_mul(1 << empty_polls.clamp(1, 16).saturating_sub(1))
        .min(ceiling)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderExit {
    /// Read to its end; the end is registered and will be committed once acknowledged.
    ShardEnded,
    /// Asked to stop.
    Cancelled,
}

pub struct ShardReader<A: ShardApi> {
    pub api: Arc<A>,
    pub shard: ShardId,
    /// The lease epoch this shard is read under; it travels with every segment and operation.
    pub epoch: u64,
    pub start: StartAt,
    pub clock: VersionClock,
    pub ctx: Arc<ReaderContext<A::Record>>,
}

/// What asking for a shard iterator came to.
enum Iterator {
    At(String),
    Cancelled,
    /// ResourceNotFound: the shard is no longer in the stream.
    ShardGone(String),
}

/// Consecutive failures with one iterator before it is replaced.
const RENEW_AFTER_FAILURES: u32 = 3;

/// Counts a reader among the idle ones for as long as it is held (dropped when a page brings
/// records, and when the reader ends, also by an aborted task).
struct Idle(Arc<std::sync::atomic::AtomicUsize>);

impl Idle {
    fn count(idle_readers: &Arc<std::sync::atomic::AtomicUsize>) -> Idle {
        idle_readers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Idle(idle_readers.clone())
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<A: ShardApi> ShardReader<A> {
    /// Reads until the shard ends or a token is cancelled: `hard` stops at once (a lost lease,
    /// shutdown), `soft` (a child of `hard`) only between pages, never with a page half queued (a
    /// handover: everything read is then acknowledged and committed before the lease moves).
    pub async fn run(self, hard: CancellationToken, soft: CancellationToken) -> ReaderExit {
        let tracker = self.ctx.tracker.clone();
        let shard = self.shard.clone();
        let api = self.api.clone();
        let exit = self.read(hard, soft).await;
        tracker.reader_stopped(&shard);
        api.reader_stopped(&shard);
        exit
    }

    async fn read(mut self, hard: CancellationToken, soft: CancellationToken) -> ReaderExit {
        let cancel = soft;
        let shard = self.shard.clone();
        let mut last_read: Option<String> = match &self.start {
            StartAt::AfterSequence(s) => Some(s.clone()),
            _ => None,
        };
        let mut iterator = match self.iterator_at(self.start.clone(), &cancel).await {
            Iterator::At(it) => it,
            Iterator::Cancelled => return ReaderExit::Cancelled,
            Iterator::ShardGone(detail) => return self.shard_gone(last_read, &detail),
        };
        let mut failures: u32 = 0;
        let mut empty_polls: u32 = 0;
        let mut idle: Option<Idle> = None;
        let min_gap = self.api.min_poll_gap();
        let mut gap = min_gap;
        let mut last_call: Option<tokio::time::Instant> = None;
        loop {
            if let Some(at) = last_call {
                if !sleep_or_cancel(
                    (at + gap).saturating_duration_since(tokio::time::Instant::now()),
                    &cancel,
                )
                .await
                {
                    return ReaderExit::Cancelled;
                }
            }
            last_call = Some(tokio::time::Instant::now());
            let asked_at = now_micros();
            let answer = tokio::select! {
                a = self.api.get_records(&iterator, self.ctx.records_per_call) => a,
                _ = cancel.cancelled() => return ReaderExit::Cancelled,
            };
            match answer {
                Ok(page) => {
                    failures = 0;
                    let read = page.records.len();
                    gap = read_pace(
                        min_gap,
                        self.api.max_read_bytes_per_sec(),
                        page.records.iter().map(|r| r.size_bytes()).sum(),
                    );
                    if let Some(ms) = page.millis_behind_latest {
                        self.ctx
                            .metrics
                            .behind_latest
                            .with_label_values(&[&*shard])
                            .set(ms as f64 / 1000.0);
                    }
                    if let Some(last) = page.records.last() {
                        last_read = Some(last.sequence_number().to_owned());
                    }
                    // What arrived before this is read: Kinesis says how far behind the tip the
                    // page is; DynamoDB Streams only shows the last record read — an empty page
                    // there can come before more records, so it proves nothing.
                    let read_up_to = match page.millis_behind_latest {
                        Some(ms) => {
                            Some(asked_at.saturating_sub(u64::try_from(ms).unwrap_or(0) * 1000))
                        }
                        None => page.records.last().and_then(|r| r.created_at_micros()),
                    };
                    if read > 0 && !self.deliver(page.records, &hard).await {
                        return ReaderExit::Cancelled;
                    }
                    if let Some(t) = read_up_to {
                        self.ctx.tracker.read_up_to(&shard, t);
                    }
                    let Some(next) = page.next_iterator else {
                        let children: Vec<&str> =
                            page.child_shards.iter().map(|c| &*c.id).collect();
                        tracing::info!(shard_id = %shard, ?children, "shard read to its end");
                        return self.end_of_shard(last_read);
                    };
                    iterator = next;
                    // An empty Kinesis page behind the tip is not idleness: records lie further
                    // on ("it might take multiple calls"), so read on at the shard's pace.
                    let behind = page.millis_behind_latest.is_some_and(|ms| ms > 0);
                    // A pushed (fan-out) source waits for records itself.
                    if read == 0 && !behind && !self.api.pushes() {
                        // Idle shard: back off (see idle_pause). After a non-empty page the
                        // next poll follows at once.
                        empty_polls = (empty_polls + 1).min(16);
                        let idle_readers = &self.ctx.idle_readers;
                        idle.get_or_insert_with(|| Idle::count(idle_readers));
                        let ceiling = idle_ceiling(
                            self.ctx.poll_interval,
                            idle_readers.load(std::sync::atomic::Ordering::Relaxed),
                            self.ctx.idle_polls_per_second,
                        );
                        let pause = idle_pause(empty_polls, self.ctx.poll_interval, ceiling);
                        if !sleep_or_cancel(pause, &cancel).await {
                            return ReaderExit::Cancelled;
                        }
                    } else {
                        empty_polls = 0;
                        idle = None;
                    }
                }
                Err(err) => {
                    self.ctx
                        .metrics
                        .retries
                        .with_label_values(&[err.reason()])
                        .inc();
                    let resume = match &last_read {
                        Some(seq) => StartAt::AfterSequence(seq.clone()),
                        // Nothing read yet from this shard, so nothing written: re-reading from
                        // the start position (or TRIM_HORIZON) cannot reorder any document.
                        None if self.start == StartAt::Latest => StartAt::TrimHorizon,
                        None => self.start.clone(),
                    };
                    match err {
                        ApiError::ExpiredIterator => {
                            tracing::info!(shard_id = %shard, resume = ?resume, "shard iterator expired; renewing");
                        }
                        ApiError::TrimmedData(detail) => {
                            self.report_trimmed(last_read.as_deref(), &detail);
                            iterator = match self.iterator_at(StartAt::TrimHorizon, &cancel).await {
                                Iterator::At(it) => it,
                                Iterator::Cancelled => return ReaderExit::Cancelled,
                                Iterator::ShardGone(detail) => {
                                    return self.shard_gone(last_read, &detail)
                                }
                            };
                            continue;
                        }
                        ApiError::NotFound(detail) => {
                            if self.still_open(&detail, failures, &cancel).await {
                                failures += 1;
                                continue;
                            }
                            return self.shard_gone(last_read, &detail);
                        }
                        ApiError::Throttled(_) | ApiError::Transient(_) => {
                            failures += 1;
                            let delay = self.ctx.backoff.delay(failures);
                            tracing::warn!(shard_id = %shard, error = %err, attempt = failures, delay_ms = delay.as_millis() as u64, "GetRecords failed; backing off");
                            if !sleep_or_cancel(delay, &cancel).await {
                                return ReaderExit::Cancelled;
                            }
                            if failures < RENEW_AFTER_FAILURES
                                || matches!(err, ApiError::Throttled(_))
                            {
                                continue;
                            }
                            tracing::warn!(shard_id = %shard, "renewing the shard iterator after repeated failures");
                        }
                    }
                    failures = 0;
                    iterator = match self.iterator_at(resume, &cancel).await {
                        Iterator::At(it) => it,
                        Iterator::Cancelled => return ReaderExit::Cancelled,
                        Iterator::ShardGone(detail) => return self.shard_gone(last_read, &detail),
                    };
                }
            }
        }
    }

    /// Registers the shard's end: committed as `finished` once everything before it is
    /// acknowledged, which is what lets children start.
    fn end_of_shard(&self, last_read: Option<String>) -> ReaderExit {
        let end = ShardCheckpoint {
            sequence_number: last_read,
            clock: self.clock.last(),
            finished: true,
            start_at: None,
        };
        let _ = self
            .ctx
            .tracker
            .register(&self.shard, self.epoch, end, 0, 0);
        ReaderExit::ShardEnded
    }

    /// The shard no longer exists (aged out of the stream, or the stream is gone): what was not
    /// read is lost. Said loudly, counted, and the shard ends so its children can start.
    fn shard_gone(&self, last_read: Option<String>, detail: &str) -> ReaderExit {
        tracing::error!(shard_id = %self.shard, error = %detail, last_sequence_number_read = last_read.as_deref().unwrap_or("(none)"), "DATA LOSS: shard no longer exists; treating it as ended (records after the last one read, if any, are lost)");
        self.ctx
            .metrics
            .data_loss
            .with_label_values(&["shard_gone"])
            .inc();
        self.end_of_shard(last_read)
    }

    /// After ResourceNotFound: is the shard still listed and open? Then the answer was transient
    /// (AWS also says ResourceNotFound for a stream that is not ACTIVE yet): count it, back off,
    /// and `true`. A shard that is no longer listed, or closed, is gone: `false`.
    async fn still_open(&self, detail: &str, attempt: u32, cancel: &CancellationToken) -> bool {
        let listed = match self.api.list_shards().await {
            Ok(shards) => shards.into_iter().find(|s| s.id == self.shard),
            // Cannot tell: assume it is still there, and try again.
            Err(_) => Some(super::ShardInfo {
                id: self.shard.clone(),
                parents: Vec::new(),
                closed: false,
            }),
        };
        if listed.is_none_or(|s| s.closed) {
            return false;
        }
        let delay = self.ctx.backoff.delay(attempt.max(1));
        tracing::warn!(shard_id = %self.shard, error = %detail, attempt, "shard not found although listed as open; retrying");
        sleep_or_cancel(delay, cancel).await;
        true
    }

    /// Gets an iterator, retrying transient failures with backoff.
    async fn iterator_at(&mut self, mut at: StartAt, cancel: &CancellationToken) -> Iterator {
        let mut attempt = 0;
        loop {
            let answer = tokio::select! {
                a = self.api.shard_iterator(&self.shard, &at) => a,
                _ = cancel.cancelled() => return Iterator::Cancelled,
            };
            match answer {
                Ok(it) => return Iterator::At(it),
                // A shard that left the stream does not come back: waiting here would stall its
                // lineage. One the service still lists as open was only not ready: retry.
                Err(ApiError::NotFound(detail)) => {
                    attempt += 1;
                    self.ctx
                        .metrics
                        .retries
                        .with_label_values(&["not_found"])
                        .inc();
                    if !self.still_open(&detail, attempt, cancel).await {
                        return Iterator::ShardGone(detail);
                    }
                    if cancel.is_cancelled() {
                        return Iterator::Cancelled;
                    }
                }
                Err(ApiError::TrimmedData(detail)) => {
                    let from = match &at {
                        StartAt::AfterSequence(s) => Some(s.clone()),
                        _ => None,
                    };
                    self.report_trimmed(from.as_deref(), &detail);
                    at = StartAt::TrimHorizon;
                }
                Err(err) => {
                    attempt += 1;
                    self.ctx
                        .metrics
                        .retries
                        .with_label_values(&[err.reason()])
                        .inc();
                    let delay = self.ctx.backoff.delay(attempt);
                    tracing::warn!(shard_id = %self.shard, error = %err, attempt, "GetShardIterator failed; backing off");
                    if !sleep_or_cancel(delay, cancel).await {
                        return Iterator::Cancelled;
                    }
                }
            }
        }
    }

    fn report_trimmed(&self, after: Option<&str>, detail: &str) {
        tracing::error!(
            shard_id = %self.shard,
            lost_after_sequence_number = after.unwrap_or("(shard start)"),
            lost_until = "the current trim horizon",
            error = %detail,
            "DATA LOSS: records were trimmed before sluice read them; continuing from TRIM_HORIZON"
        );
        self.ctx
            .metrics
            .data_loss
            .with_label_values(&["trimmed"])
            .inc();
    }

    /// Versions, decodes and queues one page; registers it as a segment. `false` if cancelled
    /// before every operation was queued (the segment then never completes, so its checkpoint
    /// is never committed).
    async fn deliver(&mut self, records: Vec<A::Record>, cancel: &CancellationToken) -> bool {
        let ctx = self.ctx.clone();
        let shard_label: &str = &self.shard;
        ctx.metrics
            .records_read
            .with_label_values(&[shard_label])
            .inc_by(records.len() as u64);
        let mut ops = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        // started at a time (a reset to LATEST): DynamoDB Streams cannot start there, so its
        // reader starts at TRIM_HORIZON and passes over what came before. Creation times have
        // whole seconds: records of the reset's own second are read, never skipped.
        let skip_before = match self.start {
            StartAt::AtTimestamp(ms) => Some(u64::try_from(ms).unwrap_or(0) / 1000 * 1_000_000),
            _ => None,
        };
        for record in &records {
            if let (Some(from), Some(created)) = (skip_before, record.created_at_micros()) {
                if created < from {
                    ctx.metrics
                        .records_skipped
                        .with_label_values(&["before_start"])
                        .inc();
                    continue;
                }
            }
            let decoded = (ctx.decode)(record);
            let floor = decoded
                .as_ref()
                .ok()
                .and_then(|d| d.version_floor)
                .or_else(|| record.created_at_micros());
            let version = self.clock.next(floor);
            let origin = Origin {
                stream: ctx.stream.clone(),
                shard: self.shard.clone(),
                sequence_number: record.sequence_number().to_owned(),
                epoch: self.epoch,
            };
            match decoded {
                Ok(decoded) => {
                    if let Some(skip) = decoded.skipped {
                        tracing::debug!(shard_id = %self.shard, sequence_number = %origin.sequence_number, reason = skip.reason, detail = %skip.detail, "record skipped");
                        ctx.metrics
                            .records_skipped
                            .with_label_values(&[skip.reason])
                            .inc();
                    }
                    for change in decoded.changes {
                        let index = change.index.unwrap_or_else(|| ctx.index.clone());
                        let version = change.version.unwrap_or(version);
                        let op = BulkOp::routed(
                            index,
                            change.id,
                            change.routing.as_deref(),
                            version,
                            change.action,
                            origin.clone(),
                        );
                        if version::in_range(version) {
                            ops.push(op);
                        } else {
                            // Elasticsearch would refuse the whole bulk request for it.
                            dead.push(self.refuse(
                                &ctx,
                                record,
                                Some(&op),
                                version::out_of_range(version),
                                version,
                            ));
                        }
                    }
                    if let Some(e) = decoded.refused {
                        dead.push(self.refuse(&ctx, record, None, e.0, version));
                    }
                }
                Err(e) => {
                    dead.push(self.refuse(&ctx, record, None, e.0, version));
                }
            }
        }
        if let Some(t) = records.last().and_then(|r| r.created_at_micros()) {
            ctx.metrics
                .iterator_age
                .with_label_values(&[shard_label])
                .set((now_micros().saturating_sub(t)) as f64 / 1e6);
        }
        // Dead letters are durable before the checkpoint can pass them.
        if !dead.is_empty() {
            let stored = dead.len() as i64;
            tokio::select! {
                _ = ctx.store.dead_letter_durably(dead) => ctx.metrics.dead_letters.add(stored),
                _ = cancel.cancelled() => return false,
            }
        }
        let last = records.last().expect("deliver is called with records");
        let checkpoint = ShardCheckpoint {
            sequence_number: Some(last.sequence_number().to_owned()),
            clock: self.clock.last(),
            finished: false,
            start_at: None,
        };
        // Pages that produce no operation take no budget: this bound keeps them from piling up
        // while Elasticsearch is down (the tracker also merges consecutive ones).
        tokio::select! {
            _ = ctx.tracker.room_for(&self.shard) => {}
            _ = cancel.cancelled() => return false,
        }
        let acks = ctx.tracker.register_page(
            &self.shard,
            self.epoch,
            checkpoint,
            records.len(),
            ops.len(),
            records.first().and_then(|r| r.created_at_micros()),
        );
        for (mut op, ack) in ops.into_iter().zip(acks) {
            op.acks.push(ack);
            tokio::select! {
                sent = ctx.router.send(op) => if sent.is_err() { return false },
                _ = cancel.cancelled() => return false,
            }
        }
        true
    }
}

impl<A: ShardApi> ShardReader<A> {
    /// A record (or one of its operations) that cannot be written: counted, logged, and turned
    /// into a dead letter that names the reason.
    fn refuse(
        &self,
        ctx: &ReaderContext<A::Record>,
        record: &A::Record,
        op: Option<&BulkOp>,
        error: String,
        version: u64,
    ) -> DeadLetter {
        tracing::error!(shard_id = %self.shard, sequence_number = record.sequence_number(), error = %error, "record cannot be written; dead-lettered");
        ctx.metrics.decode_errors.inc();
        ctx.metrics
            .documents
            .with_label_values(&[crate::metrics::result::DEAD_LETTERED])
            .inc();
        DeadLetter {
            stream: ctx.stream.to_string(),
            shard_id: self.shard.to_string(),
            sequence_number: record.sequence_number().to_owned(),
            index: op.map(|o| o.index.to_string()),
            doc_id: op.map(|o| o.id.clone()),
            routing: op.and_then(|o| o.routing.clone()),
            version: Some(version),
            action: op.map_or("decode", |o| o.kind.as_str()).into(),
            payload: record.describe(),
            error,
        }
    }
}

/// The pause before the next GetRecords on a shard: at least `min_gap`, and long enough that the
/// bytes just read stay within the shard's read throughput.
fn read_pace(min_gap: Duration, bytes_per_sec: Option<u64>, bytes: usize) -> Duration {
    match bytes_per_sec {
        Some(rate) if rate > 0 => min_gap.max(Duration::from_secs_f64(bytes as f64 / rate as f64)),
        _ => min_gap,
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_paced_to_the_shard_throughput() {
        let two_mib = Some(2 * 1024 * 1024);
        assert_eq!(
            read_pace(Duration::from_millis(200), two_mib, 0),
            Duration::from_millis(200)
        );
        assert_eq!(
            read_pace(Duration::from_millis(200), two_mib, 10 * 1024 * 1024),
            Duration::from_secs(5)
        );
        assert_eq!(
            read_pace(Duration::ZERO, None, 10 * 1024 * 1024),
            Duration::ZERO
        );
    }

    #[test]
    fn an_idle_shard_backs_off_to_poll_interval_when_few_shards_are_idle() {
        let poll = Duration::from_millis(250);
        let ceiling = idle_ceiling(poll, 10, 200);
        assert_eq!(ceiling, poll);
        let pauses: Vec<u128> = (1..=6)
            .map(|n| idle_pause(n, poll, ceiling).as_millis())
            .collect();
        assert_eq!(pauses, [62, 125, 250, 250, 250, 250]);
        // no budget: the same for any number of shards
        assert_eq!(idle_ceiling(poll, 100_000, 0), poll);
    }

    #[test]
    fn with_many_idle_shards_their_polls_together_stay_within_the_budget() {
        let poll = Duration::from_millis(250);
        // 1,000 idle shards and 200 polls a second: each polls every 5 s at most
        assert_eq!(idle_ceiling(poll, 1_000, 200), Duration::from_secs(5));
        assert_eq!(idle_ceiling(poll, 100, 200), Duration::from_millis(500));
        // the back-off still starts short: a shard that just went quiet is polled again soon
        let ceiling = idle_ceiling(poll, 1_000, 200);
        assert_eq!(idle_pause(1, poll, ceiling), Duration::from_micros(62_500));
        assert_eq!(idle_pause(16, poll, ceiling), Duration::from_secs(5));
    }

    #[test]
    fn however_many_shards_are_idle_each_is_polled_before_its_iterator_expires() {
        let poll = Duration::from_millis(250);
        assert_eq!(idle_ceiling(poll, 1_000_000, 1), IDLE_CEILING_MAX);
        assert_eq!(idle_ceiling(poll, usize::MAX, 200), IDLE_CEILING_MAX);
        // a poll_interval above the cap is the operator's choice, and kept
        assert_eq!(
            idle_ceiling(Duration::from_secs(90), 10, 200),
            Duration::from_secs(90)
        );
    }
}
