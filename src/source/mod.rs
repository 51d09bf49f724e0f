//! Sources: one module per AWS service, each a thin typed wrapper ([`ShardApi`]) over the SDK
//! calls. Shard lineage, checkpoints, iterator renewal and backoff live once, in
//! [`coordinator`] and [`reader`], for every service.

pub mod coordinator;
pub mod dynamodb_streams;
pub mod fan_out;
pub mod kinesis;
pub mod reader;

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodbstreams::error::{ProvideErrorMetadata, SdkError};

use crate::ack::ShardId;

/// A shard as listed by the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: ShardId,
    /// ParentShardId, and for a Kinesis merge also AdjacentParentShardId.
    pub parents: Vec<ShardId>,
    /// Has an ending sequence number: no record will ever be added.
    pub closed: bool,
}

/// Where to get a shard iterator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
    /// Resume just after a record already read (never AT_…: that re-delivers it).
    AfterSequence(String),
    /// Kinesis: records from this time (epoch milliseconds).
    AtTimestamp(i64),
}

/// One GetRecords answer.
#[derive(Debug)]
pub struct RecordPage<R> {
    pub records: Vec<R>,
    /// Absent: the shard is closed and read to its end.
    pub next_iterator: Option<String>,
    /// Kinesis only.
    pub millis_behind_latest: Option<i64>,
    /// Kinesis: the shards that continue this one, in its last response.
    pub child_shards: Vec<ShardInfo>,
}

/// Errors as the reader must react to them; each has its own recovery and metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("shard iterator expired")]
    ExpiredIterator,
    #[error("records are beyond the retention period (trimmed): {0}")]
    TrimmedData(String),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Timeouts, 5xx, connection errors, unparseable answers: retry after a pause.
    #[error("transient error: {0}")]
    Transient(String),
}

impl ApiError {
    /// A short label for `sluice_retries_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::ExpiredIterator => "expired_iterator",
            ApiError::TrimmedData(_) => "trimmed_data",
            ApiError::Throttled(_) => "source_throttled",
            ApiError::NotFound(_) => "not_found",
            ApiError::Transient(_) => "source_transient",
        }
    }
}

/// What the reader needs to know about a source record, whatever the service.
pub trait SourceRecord: Send + Sync + 'static {
    fn sequence_number(&self) -> &str;
    /// ApproximateCreationDateTime (DynamoDB) or ApproximateArrivalTimestamp (Kinesis), in µs.
    fn created_at_micros(&self) -> Option<u64>;
    /// The record as text, for the dead-letter table.
    fn describe(&self) -> String;
    /// Bytes the service counts against the shard's read throughput (what paces the reads).
    fn size_bytes(&self) -> usize;
}

/// The service calls a shard reader makes. Implemented over the SDK for each service, and by
/// scripted fakes in tests.
pub trait ShardApi: Send + Sync + 'static {
    type Record: SourceRecord;

    fn list_shards(&self) -> impl Future<Output = Result<Vec<ShardInfo>, ApiError>> + Send;
    fn shard_iterator(
        &self,
        shard: &str,
        at: &StartAt,
    ) -> impl Future<Output = Result<String, ApiError>> + Send;
    fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> impl Future<Output = Result<RecordPage<Self::Record>, ApiError>> + Send;

    /// Shortest time between two GetRecords calls on one shard (service rate limits).
    fn min_poll_gap(&self) -> Duration;

    /// Read throughput per shard the service allows, in bytes per second (None: no pacing).
    fn max_read_bytes_per_sec(&self) -> Option<u64>;

    /// Whether records are pushed (enhanced fan-out): `get_records` waits for what arrives, so
    /// an empty answer is no reason to back off before asking again.
    fn pushes(&self) -> bool;

    /// The reader of `shard` has stopped: anything held open for it can be let go.
    fn reader_stopped(&self, shard: &str);

    /// How long the service keeps a record: past it, an unread record is lost to sluice.
    fn retention(&self) -> impl Future<Output = Result<Duration, ApiError>> + Send;
}

/// An AWS timestamp in µs since 1970 (None before 1970).
pub(crate) fn micros(t: &aws_smithy_types::DateTime) -> Option<u64> {
    let micros = t.secs().checked_mul(1_000_000)? + (t.subsec_nanos() / 1000) as i64;
    u64::try_from(micros).ok()
}

/// Maps an AWS SDK error (either service) to what the reader must do about it.
pub(crate) fn classify<E, R>(err: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().map(str::to_owned);
    let text = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
    classify_code(code.as_deref(), text)
}

/// An AWS error code (either service) → what the reader must do about it.
pub(crate) fn classify_code(code: Option<&str>, text: String) -> ApiError {
    match code {
        Some("ExpiredIteratorException") => ApiError::ExpiredIterator,
        Some("TrimmedDataAccessException") => ApiError::TrimmedData(text),
        Some("LimitExceededException")
        | Some("ThrottlingException")
        | Some("ProvisionedThroughputExceededException")
        | Some("KMSThrottlingException")
        | Some("RequestLimitExceeded") => ApiError::Throttled(text),
        Some("ResourceNotFoundException") => ApiError::NotFound(text),
        _ => ApiError::Transient(text),
    }
}
