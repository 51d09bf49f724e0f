//! DynamoDB Streams: the stream's metadata and shards through the SDK; GetRecords — the call
//! made for every poll of every shard — signed and sent directly, its answer kept as the text
//! the service sent. The SDK's parse of GetRecords into typed attribute maps, and the copies out
//! of them, were a third of the daemon's CPU per record and most of an idle poll's cost; the
//! records are decoded once, later, by the pipeline (`transform::dynamodb_row`).

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodbstreams::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_dynamodbstreams::error::SdkError;
use aws_sdk_dynamodbstreams::types::{KeyType, ShardIteratorType};
use aws_sdk_dynamodbstreams::Client;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    classify, classify_code, ApiError, RecordPage, ShardApi, ShardInfo, SourceRecord, StartAt,
};
use crate::config::SourceConfig;
use crate::sigv4::{error_chain, host_header, Signer};

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

/// How long one attempt of an SDK call (DescribeStream, Scan, …) may take: a hung call must not
/// stall a shard (or a scan segment) for ever; the caller retries. 20 s; the test hook
/// `SLUICE_TEST_AWS_ATTEMPT_TIMEOUT_MS` shortens it so that a test of a slow service need not
/// wait that long. (GetRecords, sent without the SDK, has its own 20 s request timeout.)
pub fn attempt_timeout() -> Duration {
    std::env::var("SLUICE_TEST_AWS_ATTEMPT_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(Duration::from_secs(20), Duration::from_millis)
}

/// Shared AWS SDK configuration: region, optional endpoint, credentials from the standard chain.
pub async fn sdk_config(cfg: &SourceConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(attempt_timeout())
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
    get_records: GetRecords,
}

/// The endpoint configured, if any: `source.endpoint_url`, then `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`,
/// then `AWS_ENDPOINT_URL` (or the profile's `endpoint_url`), unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true. (A profile's `services` section is not read.)
fn endpoint_url(sdk: &aws_config::SdkConfig, cfg: &SourceConfig) -> Option<String> {
    let ignore_configured = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    cfg.endpoint_url.clone().or_else(|| {
        (!ignore_configured)
            .then(|| {
                std::env::var("AWS_ENDPOINT_URL_DYNAMODB_STREAMS")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .or_else(|| sdk.endpoint_url().map(str::to_owned))
            })
            .flatten()
    })
}

/// GetRecords, sent without the SDK.
struct GetRecords {
    http: reqwest::Client,
    url: reqwest::Url,
    host: String,
    signer: Signer,
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
        // One endpoint for every call: an iterator is only good where it was issued.
        let endpoint_url = endpoint_url(&sdk, cfg);
        let mut conf = aws_sdk_dynamodbstreams::config::Builder::from(&sdk);
        conf.set_endpoint_url(endpoint_url.clone());
        let client = Client::from_conf(conf.build());
        let get_records = GetRecords::new(&sdk, cfg, endpoint_url).await?;
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
        Ok((
            Arc::new(Self {
                client,
                arn,
                get_records,
            }),
            meta,
        ))
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

impl GetRecords {
    /// The endpoint the SDK's resolver gives (region, FIPS, dual-stack, or `endpoint_url`),
    /// the SDK's timeouts, and credentials from the standard chain.
    async fn new(
        sdk: &aws_config::SdkConfig,
        cfg: &SourceConfig,
        endpoint_url: Option<String>,
    ) -> Result<Self, SetupError> {
        let params = Params::builder()
            .region(cfg.region.clone())
            .use_fips(sdk.use_fips().unwrap_or(false))
            .use_dual_stack(sdk.use_dual_stack().unwrap_or(false))
            .set_endpoint(endpoint_url)
            .build()
            .map_err(|e| SetupError::Aws(format!("DynamoDB Streams endpoint: {e}")))?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| {
                SetupError::Aws(format!("DynamoDB Streams endpoint: {}", error_chain(&*e)))
            })?;
        let url = reqwest::Url::parse(endpoint.url()).map_err(|e| {
            SetupError::Aws(format!(
                "DynamoDB Streams endpoint `{}`: {e}",
                endpoint.url()
            ))
        })?;
        let host = host_header(&url).ok_or_else(|| {
            SetupError::Aws(format!("DynamoDB Streams endpoint `{url}` has no host"))
        })?;
        let credentials = sdk
            .credentials_provider()
            .ok_or_else(|| SetupError::Aws("no AWS credential provider could be set up".into()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .map_err(|e| SetupError::Aws(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            http,
            url,
            host,
            // DynamoDB Streams signs as `dynamodb`.
            signer: Signer::new(credentials, &cfg.region, "dynamodb", false),
        })
    }

    async fn call(&self, iterator: &str, limit: u32) -> Result<RecordPage<StreamRecord>, ApiError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "ShardIterator": iterator,
            "Limit": limit,
        }))
        .expect("JSON of strings and numbers");
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.0".to_string()),
            (
                "x-amz-target",
                "DynamoDBStreams_20120810.GetRecords".to_string(),
            ),
            ("host", self.host.clone()),
        ];
        self.signer
            .sign("POST", self.url.as_str(), &mut headers, &body)
            .await
            .map_err(|e| ApiError::Transient(format!("GetRecords cannot be signed: {e}")))?;
        let mut req = self.http.post(self.url.clone());
        for (k, v) in headers {
            let mut value = reqwest::header::HeaderValue::from_str(&v)
                .map_err(|e| ApiError::Transient(format!("GetRecords header {k}: {e}")))?;
            value.set_sensitive(k == "authorization" || k == "x-amz-security-token");
            req = req.header(k, value);
        }
        let transport =
            |e: reqwest::Error| ApiError::Transient(format!("GetRecords: {}", error_chain(&e)));
        let response = req.body(body).send().await.map_err(transport)?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(date) = header("date") {
            self.signer.observe_service_date(&date);
        }
        let error_type = header("x-amzn-errortype");
        let answer = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(service_error(
                status.as_u16(),
                error_type.as_deref(),
                &answer,
            ));
        }
        parse_page(&answer)
    }
}

/// A GetRecords answer, read in one pass: each record's text is kept, and what the reader
/// needs of it is read on the way.
fn parse_page(answer: &[u8]) -> Result<RecordPage<StreamRecord>, ApiError> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(rename = "Records", default)]
        records: Option<Vec<StreamRecord>>,
        #[serde(rename = "NextShardIterator")]
        next_shard_iterator: Option<String>,
    }
    let page: Page = serde_json::from_slice(answer).map_err(|e| {
        ApiError::Transient(format!(
            "GetRecords answer is not what the API returns: {e}"
        ))
    })?;
    Ok(RecordPage {
        records: page.records.unwrap_or_default(),
        next_iterator: page.next_shard_iterator,
        millis_behind_latest: None,
        child_shards: Vec::new(),
    })
}

/// An error answer: the service's code decides what the reader does (`__type` in the body, as
/// `com.amazonaws.dynamodb.v20120810#ExpiredIteratorException`, or the `x-amzn-ErrorType`
/// header); without one, 429 and 503 are throttling and anything else — an HTML page from a
/// proxy, a 5xx — is retried.
fn service_error(status: u16, error_type: Option<&str>, answer: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Error {
        #[serde(rename = "__type", alias = "code")]
        kind: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let parsed = serde_json::from_slice::<Error>(answer).ok();
    let kind = parsed
        .as_ref()
        .and_then(|e| e.kind.clone())
        .or_else(|| error_type.map(str::to_owned));
    let message = parsed.and_then(|e| e.message);
    match kind {
        Some(kind) => {
            // `prefix#Code`, or `Code:http://…` in the header
            let code = kind.rsplit('#').next().unwrap_or(&kind);
            let code = code.split(':').next().unwrap_or(code).trim();
            let text = format!(
                "GetRecords: {code} (HTTP {status}): {}",
                message.as_deref().unwrap_or("no message")
            );
            classify_code(Some(code), text)
        }
        None => {
            let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
            let text = format!("GetRecords: HTTP {status}: {}", text.trim());
            match status {
                429 | 503 => ApiError::Throttled(text),
                _ => ApiError::Transient(text),
            }
        }
    }
}

/// One DynamoDB Streams record, as the service sent it.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    /// Its DynamoDB JSON (every field, in the service's order): decoded by the pipeline, and
    /// the dead-letter table's payload as is.
    json: String,
    sequence_number: String,
    created_at_micros: Option<u64>,
    size_bytes: usize,
}

impl StreamRecord {
    /// From JSON text (tests, tools).
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a stream record: {e}"))
    }

    /// The record's DynamoDB JSON.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// A record is copied field by field as raw text (no value is built) while the sequence
/// number, creation time and size are read; the images wait for the pipeline. A record without
/// a sequence number cannot be checkpointed: the answer is refused.
impl<'de> Deserialize<'de> for StreamRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordText)
    }
}

struct RecordText;

impl<'de> serde::de::Visitor<'de> for RecordText {
    type Value = StreamRecord;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a stream record")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StreamRecord, A::Error> {
        use serde::de::Error;
        let mut json = String::with_capacity(1024);
        let mut header = None;
        json.push('{');
        while let Some(key) = map.next_key::<String>()? {
            if json.len() > 1 {
                json.push(',');
            }
            push_key(&mut json, &key);
            if key == "dynamodb" {
                header = Some(map.next_value_seed(SectionText { json: &mut json })?);
            } else {
                json.push_str(map.next_value::<&RawValue>()?.get());
            }
        }
        json.push('}');
        let (sequence_number, created, size) = header.unwrap_or_default();
        let sequence_number = sequence_number
            .ok_or_else(|| A::Error::custom("a record has no dynamodb.SequenceNumber"))?;
        Ok(StreamRecord {
            json,
            sequence_number,
            // epoch seconds, with a fraction
            created_at_micros: created
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1e6).round() as u64),
            size_bytes: size.map_or(0, |n: i64| usize::try_from(n).unwrap_or(0)),
        })
    }
}

/// The `dynamodb` object, copied into `json`; yields its sequence number, creation time and
/// size.
struct SectionText<'j> {
    json: &'j mut String,
}

type Header = (Option<String>, Option<f64>, Option<i64>);

impl<'de> serde::de::DeserializeSeed<'de> for SectionText<'_> {
    type Value = Header;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Header, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SectionText<'_> {
    type Value = Header;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the record's `dynamodb` object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut header: Header = Default::default();
        fn field<T: serde::de::DeserializeOwned, E: serde::de::Error>(
            raw: &RawValue,
            name: &str,
        ) -> Result<T, E> {
            serde_json::from_str(raw.get()).map_err(|e| E::custom(format!("dynamodb.{name}: {e}")))
        }
        self.json.push('{');
        let start = self.json.len();
        while let Some(key) = map.next_key::<String>()? {
            if self.json.len() > start {
                self.json.push(',');
            }
            push_key(self.json, &key);
            let raw = map.next_value::<&RawValue>()?;
            // Only the sequence number must be right; the time and size are hints (a value
            // that is not a number counts as absent).
            match key.as_str() {
                "SequenceNumber" => header.0 = field::<_, A::Error>(raw, &key)?,
                "ApproximateCreationDateTime" => header.1 = serde_json::from_str(raw.get()).ok(),
                "SizeBytes" => header.2 = serde_json::from_str(raw.get()).ok(),
                _ => {}
            }
            self.json.push_str(raw.get());
        }
        self.json.push('}');
        Ok(header)
    }

    /// `"dynamodb": null`: no section (and so no sequence number).
    fn visit_unit<E: serde::de::Error>(self) -> Result<Header, E> {
        self.json.push_str("null");
        Ok(Header::default())
    }
}

/// `"key":`, escaped as JSON.
fn push_key(json: &mut String, key: &str) {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        json.push('"');
        json.push_str(key);
        json.push('"');
    } else {
        json.push_str(&serde_json::Value::String(key.to_owned()).to_string());
    }
    json.push(':');
}

impl SourceRecord for StreamRecord {
    fn sequence_number(&self) -> &str {
        &self.sequence_number
    }

    fn created_at_micros(&self) -> Option<u64> {
        self.created_at_micros
    }

    fn describe(&self) -> String {
        self.json.clone()
    }

    fn size_bytes(&self) -> usize {
        self.size_bytes
    }
}

impl ShardApi for DynamoDbStreams {
    type Record = StreamRecord;

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
    ) -> Result<RecordPage<StreamRecord>, ApiError> {
        self.get_records.call(iterator, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_records_answer_keeps_each_record_as_sent() {
        let answer = br#"{"Records": [
            {"eventName": "INSERT", "dynamodb": {"ApproximateCreationDateTime": 1568013979.5,
             "Keys": {"id": {"S": "a"}}, "NewImage": {"id": {"S": "a"}, "n": {"N": "1.50"}},
             "SequenceNumber": "21258800000000008186106757", "SizeBytes": 22}},
            {"eventName": "REMOVE", "dynamodb": {"Keys": {"id": {"S": "b"}}, "SequenceNumber": "2"}}
        ], "NextShardIterator": "next"}"#;
        let page = parse_page(answer).unwrap();
        assert_eq!(page.next_iterator.as_deref(), Some("next"));
        let first = &page.records[0];
        assert_eq!(first.sequence_number(), "21258800000000008186106757");
        assert_eq!(first.created_at_micros(), Some(1_568_013_979_500_000));
        assert_eq!(first.size_bytes(), 22);
        assert_eq!(
            first.describe(),
            r#"{"eventName":"INSERT","dynamodb":{"ApproximateCreationDateTime":1568013979.5,"Keys":{"id": {"S": "a"}},"NewImage":{"id": {"S": "a"}, "n": {"N": "1.50"}},"SequenceNumber":"21258800000000008186106757","SizeBytes":22}}"#,
            "every field, in order, each value as sent"
        );
        assert_eq!(page.records[1].created_at_micros(), None);

        let closed = parse_page(br#"{"Records": []}"#).unwrap();
        assert!(closed.records.is_empty() && closed.next_iterator.is_none());
    }

    #[test]
    fn a_record_without_a_sequence_number_makes_the_answer_unusable() {
        let err =
            parse_page(br#"{"Records": [{"eventName": "INSERT", "dynamodb": {}}]}"#).unwrap_err();
        assert!(
            matches!(&err, ApiError::Transient(t) if t.contains("SequenceNumber")),
            "{err}"
        );
    }

    #[test]
    fn error_answers_are_classified_by_the_service_code() {
        let answer = |kind: &str| {
            format!(r#"{{"__type": "com.amazonaws.dynamodb.v20120810#{kind}", "message": "m"}}"#)
        };
        assert_eq!(
            service_error(400, None, answer("ExpiredIteratorException").as_bytes()),
            ApiError::ExpiredIterator
        );
        assert!(matches!(
            service_error(400, None, answer("TrimmedDataAccessException").as_bytes()),
            ApiError::TrimmedData(_)
        ));
        assert!(matches!(
            service_error(400, None, answer("LimitExceededException").as_bytes()),
            ApiError::Throttled(_)
        ));
        assert!(matches!(
            service_error(400, None, answer("ResourceNotFoundException").as_bytes()),
            ApiError::NotFound(_)
        ));
        // an HTML error page (moto's answer to a bad iterator, or a proxy's) is retried
        let html = service_error(
            500,
            None,
            b"<!doctype html><title>500 Internal Server Error</title>",
        );
        assert!(
            matches!(&html, ApiError::Transient(t) if t.contains("HTTP 500")),
            "{html}"
        );
        // without a code, 429 and 503 are throttling
        assert!(matches!(
            service_error(429, None, b""),
            ApiError::Throttled(_)
        ));
        assert!(matches!(
            service_error(503, None, b"busy"),
            ApiError::Throttled(_)
        ));
        // the code from the header, in its `Code:url` form, when the body has none
        assert_eq!(
            service_error(
                400,
                Some("ExpiredIteratorException:http://internal.amazon.com/coral/"),
                b"{}"
            ),
            ApiError::ExpiredIterator
        );
        // `code` and `Message` spellings
        let e = service_error(
            400,
            None,
            br#"{"code": "ThrottlingException", "Message": "slow down"}"#,
        );
        assert!(
            matches!(&e, ApiError::Throttled(t) if t.contains("slow down")),
            "{e}"
        );
        // a 5xx with a JSON body and no code is retried
        assert!(matches!(
            service_error(500, None, br#"{"message": "oops"}"#),
            ApiError::Transient(_)
        ));
    }

    #[test]
    fn hints_that_are_not_numbers_count_as_absent_and_null_parts_as_missing() {
        let page = parse_page(
            br#"{"Records": [{"eventName": "INSERT", "dynamodb": {"SequenceNumber": "7",
                "ApproximateCreationDateTime": null, "SizeBytes": "big"}}]}"#,
        )
        .unwrap();
        let r = &page.records[0];
        assert_eq!(
            (r.sequence_number(), r.created_at_micros(), r.size_bytes()),
            ("7", None, 0)
        );
        assert!(
            parse_page(br#"{"Records": null, "NextShardIterator": "n"}"#)
                .unwrap()
                .records
                .is_empty()
        );
        let err = parse_page(br#"{"Records": [{"dynamodb": null}]}"#).unwrap_err();
        assert!(
            matches!(&err, ApiError::Transient(t) if t.contains("SequenceNumber")),
            "{err}"
        );
    }

    #[test]
    fn a_record_s_text_keeps_every_field_and_escapes_odd_keys() {
        let r = StreamRecord::from_json(
            r#"{"eventID": "1", "we\"ird": [1, 2], "dynamodb": {"SequenceNumber": "5", "Keys": {"id": {"S": "\u00e9"}}}, "userIdentity": {"Type": "Service"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.json(),
            r#"{"eventID":"1","we\"ird":[1, 2],"dynamodb":{"SequenceNumber":"5","Keys":{"id": {"S": "\u00e9"}}},"userIdentity":{"Type": "Service"}}"#
        );
        let back: serde_json::Value = serde_json::from_str(r.json()).unwrap();
        assert_eq!(back["we\"ird"], serde_json::json!([1, 2]));
    }

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
