//! Kinesis Data Streams: thin typed wrappers over the SDK calls.
//!
//! ListShards pages with NextToken *without* the stream name (as AWS requires); GetRecords
//! reports MillisBehindLatest and, at a shard's end, its ChildShards. Calls per shard are spaced
//! at least 200 ms apart (5 GetRecords per second per shard) and paced to 2 MiB/s of data.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use aws_sdk_kinesis::Client;

use super::{classify, micros, ApiError, RecordPage, ShardApi, ShardInfo, SourceRecord, StartAt};
use crate::config::SourceConfig;
use crate::source::dynamodb_streams::sdk_config;

pub struct Kinesis {
    client: Client,
    /// The stream's ARN: checkpoints are keyed by it.
    pub arn: String,
    /// How requests name the stream: as configured, by name or by ARN (cross-account access
    /// needs the ARN; some emulators only know names).
    by_arn: bool,
    stream: String,
    /// ListShards page size (1–10000); small in tests to exercise paging.
    pub page_size: i32,
}

impl Kinesis {
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Finds the stream (by name or ARN) and returns its ARN.
    pub async fn connect(cfg: &SourceConfig) -> Result<Arc<Self>, ApiError> {
        let sdk = sdk_config(cfg).await;
        Self::with_client(Client::new(&sdk), cfg.stream.as_deref().unwrap_or_default())
            .await
            .map(Arc::new)
    }

    pub async fn with_client(client: Client, stream: &str) -> Result<Self, ApiError> {
        let req = client.describe_stream_summary();
        let req = if stream.starts_with("arn:") {
            req.stream_arn(stream)
        } else {
            req.stream_name(stream)
        };
        let out = req.send().await.map_err(classify)?;
        let arn = out
            .stream_description_summary()
            .map(|d| d.stream_arn().to_owned())
            .unwrap_or_else(|| stream.to_owned());
        Ok(Self {
            client,
            arn,
            by_arn: stream.starts_with("arn:"),
            stream: stream.to_owned(),
            page_size: 1000,
        })
    }
}

/// A shard that continues a closed one (GetRecords' and fan-out events' `ChildShards`).
pub(crate) fn child_shard(c: &aws_sdk_kinesis::types::ChildShard) -> ShardInfo {
    ShardInfo {
        id: c.shard_id().into(),
        parents: c
            .parent_shards()
            .iter()
            .map(|p| p.as_str().into())
            .collect(),
        closed: false,
    }
}

impl SourceRecord for Record {
    fn sequence_number(&self) -> &str {
        self.sequence_number()
    }

    fn created_at_micros(&self) -> Option<u64> {
        micros(self.approximate_arrival_timestamp()?)
    }

    fn describe(&self) -> String {
        format!(
            "partition key {:?}, data: {}",
            self.partition_key(),
            String::from_utf8_lossy(self.data().as_ref())
        )
    }

    /// Kinesis counts the data blob and the partition key against a shard's 2 MB/s.
    fn size_bytes(&self) -> usize {
        self.data().as_ref().len() + self.partition_key().map_or(0, str::len)
    }
}

impl ShardApi for Kinesis {
    type Record = Record;

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self.client.list_shards().max_results(self.page_size);
            // NextToken must be sent without the stream name.
            let req = match &token {
                Some(t) => req.next_token(t),
                None if self.by_arn => req.stream_arn(&self.stream),
                None => req.stream_name(&self.stream),
            };
            let out = req.send().await.map_err(classify)?;
            shards.extend(out.shards().iter().map(|s| {
                ShardInfo {
                    id: s.shard_id().into(),
                    parents: s
                        .parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(Into::into)
                        .collect(),
                    closed: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                }
            }));
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(shards)
    }

    async fn shard_iterator(&self, shard: &str, at: &StartAt) -> Result<String, ApiError> {
        let req = self.client.get_shard_iterator().shard_id(shard);
        let req = if self.by_arn {
            req.stream_arn(&self.stream)
        } else {
            req.stream_name(&self.stream)
        };
        let req = match at {
            StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::AfterSequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            StartAt::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
        };
        let out = req.send().await.map_err(classify)?;
        out.shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Transient("GetShardIterator returned no iterator".into()))
    }

    async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordPage<Record>, ApiError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit as i32)
            .send()
            .await
            .map_err(classify)?;
        let child_shards = out.child_shards().iter().map(child_shard).collect();
        Ok(RecordPage {
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: out.millis_behind_latest(),
            child_shards,
            records: out.records,
        })
    }

    fn min_poll_gap(&self) -> Duration {
        Duration::from_millis(200)
    }

    fn max_read_bytes_per_sec(&self) -> Option<u64> {
        Some(2 * 1024 * 1024)
    }

    fn pushes(&self) -> bool {
        false
    }

    /// Nothing is held per shard: an iterator is only a string.
    fn reader_stopped(&self, _shard: &str) {}

    /// The stream's `RetentionPeriodHours` (24 h to 365 days; it can be changed at any time, so
    /// it is asked again, not remembered from the start).
    async fn retention(&self) -> Result<Duration, ApiError> {
        let req = self.client.describe_stream_summary();
        let req = if self.by_arn {
            req.stream_arn(&self.stream)
        } else {
            req.stream_name(&self.stream)
        };
        let out = req.send().await.map_err(classify)?;
        let hours = out
            .stream_description_summary()
            .map(|d| d.retention_period_hours())
            .ok_or_else(|| {
                ApiError::Transient("DescribeStreamSummary answered without a summary".into())
            })?;
        Ok(Duration::from_secs(
            u64::try_from(hours).unwrap_or(24) * 3600,
        ))
    }
}
