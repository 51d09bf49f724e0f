//! A DynamoDB, DynamoDB Streams and Kinesis test server: the JSON protocols the AWS SDK clients
//! speak (`X-Amz-Target`, awsJson 1.0 / 1.1), served from memory. Test bed only: it is never
//! compiled into the `sluice` binary.
//!
//! It exists because moto and kinesalite are far slower than sluice: a Scan of a 50,000-item
//! table under concurrent writes stalls moto, and neither serves records at the rate sluice
//! reads them. It keeps the behaviour sluice depends on:
//! - DynamoDB: CreateTable, UpdateTable (enabling a stream starts a new one, with a new label),
//!   DescribeTable, PutItem, UpdateItem (SET / REMOVE, `+` and `-`, `if_not_exists`),
//!   DeleteItem, GetItem, BatchWriteItem, and a parallel Scan (`Segment`/`TotalSegments` split
//!   the key-hash space as the service does, `Limit`, 1 MB pages, `LastEvaluatedKey`,
//!   `ConsumedCapacity`).
//! - DynamoDB Streams: every write that changes an item becomes a record (INSERT, MODIFY,
//!   REMOVE; images per the view type; nothing for a write that changes nothing) in the shard
//!   its key hashes to; shards roll over into children ([`SourceFake::roll_stream_shards`]);
//!   DescribeStream pages, GetShardIterator (TRIM_HORIZON, LATEST, AT/AFTER_SEQUENCE_NUMBER),
//!   GetRecords (≤ 1,000 records, 1 MB, no NextShardIterator at a closed shard's end).
//! - Kinesis: CreateStream with any number of shards, DescribeStream(Summary), ListShards
//!   (pages, NextToken), PutRecord(s) (MD5 of the partition key picks the shard), SplitShard,
//!   MergeShards, GetShardIterator (also AT_TIMESTAMP), GetRecords (≤ 10,000 records, 10 MB,
//!   MillisBehindLatest, ChildShards at a closed shard's end), and optionally the 5 reads per
//!   second per shard that all consumers share (ProvisionedThroughputExceededException).
//! - Kinesis enhanced fan-out: consumers and SubscribeToShard event streams ([`fan_out`]).
//! - Iterators expire (5 min on Kinesis, 15 min on DynamoDB Streams, or as configured).
//! - Scripted errors: the next N calls of an operation (on a shard) answer a given error.
//! - A slow Scan ([`Options::scan_time_per_item`]): pages answered after a wait that grows with
//!   the items they return, as an overloaded table or moto under load answers.
//!
//! Not modelled: condition expressions, filter and projection expressions, indexes, shard
//! filters, trimming by retention; eventually consistent reads (every read
//! is current); empty pages before data; the per-shard byte limits and GetShardIterator rates;
//! ItemCount and TableSizeBytes are live, not six-hourly. Item sizes follow the documented
//! formula. One lock holds the whole state: in benchmarks the fake runs beside sluice, whose
//! own CPU is what is measured.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

mod dynamodb;
mod fan_out;
mod kinesis;
mod shards;
mod update;

pub use dynamodb::StreamViewType;
pub use fan_out::FanOutStats;

/// An error as the services answer it: an HTTP status, the error's type, a message.
#[derive(Debug, Clone)]
pub struct AwsError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl AwsError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> AwsError {
        AwsError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &str, message: impl Into<String>) -> AwsError {
        AwsError::new(400, code, message)
    }

    pub(crate) fn validation(message: impl Into<String>) -> AwsError {
        AwsError::bad_request("ValidationException", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> AwsError {
        AwsError::bad_request("ResourceNotFoundException", message)
    }
}

/// A scripted error: the next `times` calls of `operation` (on `shard`, when given) answer it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub operation: String,
    pub shard: Option<String>,
    pub times: u32,
    pub error: AwsError,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub region: String,
    pub account: String,
    /// How long an iterator may be used after it was issued: 5 minutes on Kinesis.
    pub kinesis_iterator_ttl: Duration,
    /// 15 minutes on DynamoDB Streams.
    pub streams_iterator_ttl: Duration,
    /// Refuse the 6th GetRecords call on a Kinesis shard within a second, as the service
    /// does for all polling consumers together.
    pub kinesis_read_limits: bool,
    /// Open shards of a table's new stream (the service decides this from the table's
    /// partitions; 1 unless a test asks for more).
    pub stream_shards: usize,
    /// How long a registered consumer stays CREATING.
    pub consumer_activation: Duration,
    /// How long a SubscribeToShard subscription lasts: 5 minutes.
    pub subscription_lifetime: Duration,
    /// How long a Scan page takes per item it returns (zero: at once). The wait is spent with
    /// the state unlocked, so other calls are answered meanwhile.
    pub scan_time_per_item: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            region: "us-east-1".into(),
            account: "123456789012".into(),
            kinesis_iterator_ttl: Duration::from_secs(300),
            streams_iterator_ttl: Duration::from_secs(900),
            kinesis_read_limits: false,
            stream_shards: 1,
            consumer_activation: Duration::from_millis(500),
            subscription_lifetime: Duration::from_secs(300),
            scan_time_per_item: Duration::ZERO,
        }
    }
}

pub(crate) struct World {
    pub options: Options,
    pub tables: BTreeMap<String, dynamodb::Table>,
    /// Every stream by ARN: tables' streams and Kinesis streams.
    pub streams: HashMap<String, Stream>,
    pub kinesis_names: HashMap<String, String>,
    pub faults: Vec<Fault>,
    pub calls: HashMap<String, u64>,
    /// Sequence numbers increase across every stream, as a clock would.
    pub next_seq: u128,
    /// How long the call being answered waits before its answer is sent (a slow Scan).
    pub answer_after: Duration,
    /// Enhanced fan-out consumers by ARN.
    pub consumers: HashMap<String, fan_out::Consumer>,
    pub consumer_registrations: u64,
    pub fan_out: FanOutStats,
}

pub(crate) struct Stream {
    pub arn: String,
    pub created_ms: u64,
    pub shards: Vec<shards::Shard>,
    pub kind: StreamKind,
}

pub(crate) enum StreamKind {
    Table {
        table: String,
        label: String,
        view: StreamViewType,
        enabled: bool,
    },
    Kinesis {
        name: String,
        retention_hours: u32,
    },
}

impl World {
    pub fn seq(&mut self) -> u128 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A scripted error for this call, if one is due.
    fn fault(&mut self, operation: &str, shard: Option<&str>) -> Option<AwsError> {
        self.faults.retain(|f| f.times > 0);
        let i = self.faults.iter().position(|f| {
            f.operation == operation && (f.shard.is_none() || f.shard.as_deref() == shard)
        })?;
        let f = &mut self.faults[i];
        f.times -= 1;
        let error = f.error.clone();
        if f.times == 0 {
            self.faults.remove(i);
        }
        Some(error)
    }

    /// Checks the scripted errors for `operation`; GetRecords and GetShardIterator name the
    /// shard the request is for.
    pub fn check_fault(&mut self, operation: &str, shard: Option<&str>) -> Result<(), AwsError> {
        *self.calls.entry(operation.to_owned()).or_default() += 1;
        match self.fault(operation, shard) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

struct Shared {
    world: Mutex<World>,
}

impl Shared {
    /// The state, even after a panic elsewhere: one bad request must not take the bed down.
    fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running server. Dropping it stops it.
pub struct SourceFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SourceFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SourceFake {
    pub async fn start() -> std::io::Result<SourceFake> {
        Self::start_with(Options::default()).await
    }

    /// On a free loopback port.
    pub async fn start_with(options: Options) -> std::io::Result<SourceFake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            world: Mutex::new(World {
                options,
                tables: BTreeMap::new(),
                streams: HashMap::new(),
                kinesis_names: HashMap::new(),
                faults: Vec::new(),
                calls: HashMap::new(),
                next_seq: 100_000_000_000_000_000_000,
                consumers: HashMap::new(),
                consumer_registrations: 0,
                fan_out: FanOutStats::default(),
                answer_after: Duration::ZERO,
            }),
        });
        // PutRecords takes up to 5 MiB of records (base64 on the wire), BatchWriteItem 16 MB
        let app = Router::new()
            .route("/", post(handle))
            .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SourceFake { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.shared.world()
    }

    /// Scripts an error (see [`Fault`]).
    pub fn fail(&self, fault: Fault) {
        self.world().faults.push(fault);
    }

    /// Calls answered (or failed) per operation name.
    pub fn calls(&self, operation: &str) -> u64 {
        self.world().calls.get(operation).copied().unwrap_or(0)
    }

    /// GetRecords calls per shard of a stream (by ARN), in shard order.
    pub fn get_records_calls(&self, stream_arn: &str) -> Vec<(String, u64)> {
        let world = self.world();
        world
            .streams
            .get(stream_arn)
            .map(|s| {
                s.shards
                    .iter()
                    .map(|sh| (sh.id.clone(), sh.get_records_calls))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes items straight into a table (each as a PutItem would, stream records included),
    /// without the HTTP round trip: for seeding large tables.
    pub fn put_items(
        &self,
        table: &str,
        items: impl IntoIterator<Item = serde_json::Map<String, Value>>,
    ) -> Result<(), AwsError> {
        let mut world = self.world();
        for item in items {
            dynamodb::put(&mut world, table, item)?;
        }
        Ok(())
    }

    /// Creates a table keyed by the string attribute `key`, with a stream of `view`, as a
    /// CreateTable call would (without the HTTP round trip).
    pub fn create_table(
        &self,
        table: &str,
        key: &str,
        view: StreamViewType,
    ) -> Result<(), AwsError> {
        let request = serde_json::json!({
            "TableName": table,
            "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"}],
            "StreamSpecification": {"StreamEnabled": true, "StreamViewType": view.as_str()},
        });
        dynamodb::table_call(&mut self.world(), "CreateTable", &request).map(drop)
    }

    /// Creates a Kinesis stream of `shards` shards, as a CreateStream call would.
    pub fn create_kinesis_stream(&self, stream: &str, shards: usize) -> Result<(), AwsError> {
        let request = serde_json::json!({"StreamName": stream, "ShardCount": shards});
        kinesis::call(&mut self.world(), "CreateStream", &request).map(drop)
    }

    /// The ARN of the table's current stream.
    pub fn latest_stream_arn(&self, table: &str) -> Option<String> {
        self.world()
            .tables
            .get(table)
            .and_then(|t| t.latest_stream.clone())
    }

    /// Records held by each shard of the table's current stream, in shard order.
    pub fn stream_shard_lengths(&self, table: &str) -> Vec<(String, usize)> {
        let world = self.world();
        let Some(arn) = world
            .tables
            .get(table)
            .and_then(|t| t.latest_stream.clone())
        else {
            return Vec::new();
        };
        world.streams[&arn]
            .shards
            .iter()
            .map(|s| (s.id.clone(), s.records.len()))
            .collect()
    }

    /// Closes every open shard of the table's stream and opens one child for each, as
    /// DynamoDB Streams does every few hours. Returns the new shards' ids.
    pub fn roll_stream_shards(&self, table: &str) -> Result<Vec<String>, AwsError> {
        let mut world = self.world();
        dynamodb::roll_shards(&mut world, table)
    }

    /// Appends records straight to a Kinesis stream (by name), each to the shard its
    /// partition key hashes to: for generating load at memory speed.
    pub fn kinesis_put(
        &self,
        stream: &str,
        records: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<(), AwsError> {
        let mut world = self.world();
        for (key, data) in records {
            kinesis::put(&mut world, stream, &key, None, &data)?;
        }
        Ok(())
    }

    /// Records held by each shard of a Kinesis stream (by name), in shard order.
    pub fn kinesis_shard_lengths(&self, stream: &str) -> Vec<(String, usize)> {
        let world = self.world();
        let Some(arn) = world.kinesis_names.get(stream) else {
            return Vec::new();
        };
        world.streams[arn]
            .shards
            .iter()
            .map(|s| (s.id.clone(), s.records.len()))
            .collect()
    }

    /// What enhanced fan-out has sent (see [`FanOutStats`]).
    pub fn fan_out_stats(&self) -> FanOutStats {
        self.world().fan_out.clone()
    }

    /// RegisterStreamConsumer calls that created a consumer.
    pub fn consumer_registrations(&self) -> u64 {
        self.world().consumer_registrations
    }

    /// Closes every open shard of a Kinesis stream (by name) into two children each (a split at
    /// the middle of its hash range), as SplitShard would: for resharding under fan-out.
    pub fn kinesis_split_all(&self, stream: &str) -> Result<Vec<String>, AwsError> {
        let mut world = self.world();
        let arn = world
            .kinesis_names
            .get(stream)
            .cloned()
            .ok_or_else(|| AwsError::not_found(format!("Stream {stream} not found.")))?;
        let open: Vec<(String, (u128, u128))> = world.streams[&arn]
            .shards
            .iter()
            .filter(|s| s.is_open())
            .map(|s| (s.id.clone(), s.hash_range))
            .collect();
        for (id, (lo, hi)) in open {
            let middle = lo + (hi - lo) / 2 + 1;
            let request = json!({"StreamName": stream, "ShardToSplit": id, "NewStartingHashKey": middle.to_string()});
            kinesis::call(&mut world, "SplitShard", &request)?;
        }
        Ok(world.streams[&arn]
            .shards
            .iter()
            .filter(|s| s.is_open())
            .map(|s| s.id.clone())
            .collect())
    }

    /// The ARN of a Kinesis stream, by name.
    pub fn kinesis_stream_arn(&self, stream: &str) -> Option<String> {
        self.world().kinesis_names.get(stream).cloned()
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (service, operation) = target.split_once('.').unwrap_or((target, ""));
    let content_type = if service == "Kinesis_20131202" {
        "application/x-amz-json-1.1"
    } else {
        "application/x-amz-json-1.0"
    };
    if service == "Kinesis_20131202" && operation == "SubscribeToShard" {
        // an event stream, not a JSON answer
        let subscribed = serde_json::from_slice::<Value>(&body)
            .map_err(|e| {
                AwsError::bad_request(
                    "SerializationException",
                    format!("the request body is not JSON: {e}"),
                )
            })
            .and_then(|request| fan_out::subscribe(&shared, &request));
        match subscribed {
            Ok(r) => return r,
            Err(e) => return error_response(&e, content_type),
        }
    }
    let answer = match serde_json::from_slice::<Value>(&body) {
        Err(e) => Err(AwsError::bad_request(
            "SerializationException",
            format!("the request body is not JSON: {e}"),
        )),
        Ok(request) => {
            let (answer, wait) = {
                let mut world = shared.world();
                let answer = world_call(&mut world, service, operation, target, &request);
                (answer, std::mem::take(&mut world.answer_after))
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            answer
        }
    };
    match answer {
        Ok(body) => {
            let mut response = (StatusCode::OK, body).into_response();
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static(content_type));
            response
                .headers_mut()
                .insert("x-amzn-requestid", HeaderValue::from_static("source-fake"));
            response
        }
        Err(e) => error_response(&e, content_type),
    }
}

fn world_call(
    world: &mut World,
    service: &str,
    operation: &str,
    target: &str,
    request: &Value,
) -> Result<Vec<u8>, AwsError> {
    match service {
        "DynamoDB_20120810" => dynamodb::table_call(world, operation, request),
        "DynamoDBStreams_20120810" => dynamodb::stream_call(world, operation, request),
        "Kinesis_20131202" if operation.contains("StreamConsumer") => {
            fan_out::call(world, operation, request)
        }
        "Kinesis_20131202" => kinesis::call(world, operation, request),
        _ => Err(AwsError::bad_request(
            "UnknownOperationException",
            format!("unknown X-Amz-Target `{target}`"),
        )),
    }
}

fn error_response(e: &AwsError, content_type: &'static str) -> Response {
    let body = json!({"__type": e.code, "message": e.message});
    let mut r = (
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&e.code) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert("x-amzn-requestid", HeaderValue::from_static("source-fake"));
    r
}

/// A required string member of a request.
pub(crate) fn string<'a>(request: &'a Value, member: &str) -> Result<&'a str, AwsError> {
    request
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| AwsError::validation(format!("{member} is required")))
}

pub(crate) fn reply(value: Value) -> Result<Vec<u8>, AwsError> {
    Ok(serde_json::to_vec(&value).unwrap_or_default())
}
