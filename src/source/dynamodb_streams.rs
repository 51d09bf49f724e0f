//! DynamoDB Streams: thin typed wrappers over the SDK calls, and the stream's metadata.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodbstreams::error::SdkError;
use aws_sdk_dynamodbstreams::types::{KeyType, Record, ShardIteratorType};
use aws_sdk_dynamodbstreams::Client;

use super::{classify, micros, ApiError, RecordPage, ShardApi, ShardInfo, SourceRecord, StartAt};
use crate::config::SourceConfig;

/// What sluice needs to know about the stream before reading it.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub arn: String,
    /// Hash key, then range key (if any).
    pub key_attributes: Vec<String>,
    pub view_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("table `{0}` has no stream: enable DynamoDB Streams with view type NEW_IMAGE or NEW_AND_OLD_IMAGES")]
    NoStream(String),
    #[error("stream {arn} has view type {view_type}: sluice needs NEW_IMAGE or NEW_AND_OLD_IMAGES (the new item is what gets indexed)")]
    ViewType { arn: String, view_type: String },
    #[error("{0}")]
    Aws(String),
}

/// Shared AWS SDK configuration: region, optional endpoint, credentials from the standard chain.
pub async fn sdk_config(cfg: &SourceConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        // A hung call must not stall a shard for ever; the reader retries.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        );
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

pub struct DynamoDbStreams {
    client: Client,
    arn: String,
}

impl DynamoDbStreams {
    /// Resolves the stream (via the table's LatestStreamArn if a table is configured) and
    /// refuses view types that carry no new image.
    pub async fn connect(cfg: &SourceConfig) -> Result<(Arc<Self>, StreamMeta), SetupError> {
        let sdk = sdk_config(cfg).await;
        let arn = match (&cfg.stream_arn, &cfg.table) {
            (Some(arn), _) => arn.clone(),
            (None, Some(table)) => {
                let ddb = aws_sdk_dynamodb::Client::new(&sdk);
                let out = ddb
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(|e| {
                        SetupError::Aws(format!("DescribeTable {table}: {}", describe(&e)))
                    })?;
                out.table()
                    .and_then(|t| t.latest_stream_arn())
                    .filter(|_| {
                        out.table()
                            .and_then(|t| t.stream_specification())
                            .is_none_or(|s| s.stream_enabled())
                    })
                    .map(str::to_owned)
                    .ok_or_else(|| SetupError::NoStream(table.clone()))?
            }
            (None, None) => unreachable!("validated by Config::validate"),
        };
        let client = Client::new(&sdk);
        let out = client
            .describe_stream()
            .stream_arn(&arn)
            .limit(1)
            .send()
            .await
            .map_err(|e| SetupError::Aws(format!("DescribeStream {arn}: {}", describe(&e))))?;
        let desc = out
            .stream_description()
            .ok_or_else(|| SetupError::Aws(format!("DescribeStream {arn}: no description")))?;
        let view_type = desc
            .stream_view_type()
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| "UNKNOWN".into());
        Self::check_view_type(&arn, &view_type)?;
        let mut keys: Vec<(bool, String)> = desc
            .key_schema()
            .iter()
            .map(|k| {
                (
                    *k.key_type() == KeyType::Range,
                    k.attribute_name().to_owned(),
                )
            })
            .collect();
        keys.sort_by_key(|(is_range, _)| *is_range);
        let meta = StreamMeta {
            arn: arn.clone(),
            key_attributes: keys.into_iter().map(|(_, n)| n).collect(),
            view_type,
        };
        Ok((Arc::new(Self { client, arn }), meta))
    }

    /// Only images of the new item can be indexed.
    pub fn check_view_type(arn: &str, view_type: &str) -> Result<(), SetupError> {
        match view_type {
            "NEW_IMAGE" | "NEW_AND_OLD_IMAGES" => Ok(()),
            other => Err(SetupError::ViewType {
                arn: arn.into(),
                view_type: other.into(),
            }),
        }
    }
}

fn describe<E: std::error::Error + 'static>(err: &SdkError<E>) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(err).to_string()
}

impl SourceRecord for Record {
    fn sequence_number(&self) -> &str {
        self.dynamodb
            .as_ref()
            .and_then(|d| d.sequence_number())
            .unwrap_or("")
    }

    fn created_at_micros(&self) -> Option<u64> {
        micros(self.dynamodb.as_ref()?.approximate_creation_date_time()?)
    }

    fn describe(&self) -> String {
        format!("{self:?}")
    }

    fn size_bytes(&self) -> usize {
        self.dynamodb
            .as_ref()
            .and_then(|d| d.size_bytes())
            .map_or(0, |n| usize::try_from(n).unwrap_or(0))
    }
}

impl ShardApi for DynamoDbStreams {
    type Record = Record;

    /// DynamoDB Streams documents no per-shard call rate (Lambda polls about four times a
    /// second); the idle back-off of the reader is the only pacing.
    fn min_poll_gap(&self) -> Duration {
        Duration::ZERO
    }

    /// No per-shard read throughput is documented; a GetRecords answer is capped at 1 MB.
    fn max_read_bytes_per_sec(&self) -> Option<u64> {
        None
    }

    fn pushes(&self) -> bool {
        false
    }

    /// Nothing is held per shard: an iterator is only a string.
    fn reader_stopped(&self, _shard: &str) {}

    /// Fixed by the service: a stream record is kept for 24 hours.
    async fn retention(&self) -> Result<Duration, ApiError> {
        Ok(Duration::from_secs(24 * 3600))
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.arn)
                .set_exclusive_start_shard_id(start.clone())
                .send()
                .await
                .map_err(classify)?;
            let Some(desc) = out.stream_description() else {
                break;
            };
            for s in desc.shards() {
                let Some(id) = s.shard_id() else { continue };
                shards.push(ShardInfo {
                    id: id.into(),
                    parents: s
                        .parent_shard_id()
                        .map(|p| vec![p.into()])
                        .unwrap_or_default(),
                    closed: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            match desc.last_evaluated_shard_id() {
                Some(last) if Some(last) != start.as_deref() => start = Some(last.to_owned()),
                _ => break,
            }
        }
        Ok(shards)
    }

    async fn shard_iterator(&self, shard: &str, at: &StartAt) -> Result<String, ApiError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.arn)
            .shard_id(shard);
        let req = match at {
            StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::AfterSequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            // DynamoDB Streams has no AT_TIMESTAMP; config validation refuses it for this source.
            StartAt::AtTimestamp(_) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
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
        Ok(RecordPage {
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            records: out.records.unwrap_or_default(),
            millis_behind_latest: None,
            child_shards: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_only_and_old_image_streams_are_refused_with_a_clear_message() {
        for bad in ["KEYS_ONLY", "OLD_IMAGE"] {
            let msg = DynamoDbStreams::check_view_type(
                "arn:aws:dynamodb:us-east-1:1:table/Posts/stream/x",
                bad,
            )
            .unwrap_err()
            .to_string();
            assert!(
                msg.contains(bad) && msg.contains("NEW_IMAGE or NEW_AND_OLD_IMAGES"),
                "{msg}"
            );
        }
        DynamoDbStreams::check_view_type("arn", "NEW_IMAGE").unwrap();
        DynamoDbStreams::check_view_type("arn", "NEW_AND_OLD_IMAGES").unwrap();
    }
}
