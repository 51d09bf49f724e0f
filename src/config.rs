//! The one TOML file, overridable from the environment as `SLUICE__<SECTION>__<KEY>`.
//!
//! Everything is validated before any I/O: an error names the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A configuration error: which key, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
    #[serde(default)]
    pub backfill: BackfillConfig,
    /// format = "dms": one route per source table.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// How the indices sluice writes to are created (`sluice index ensure`).
    #[serde(default)]
    pub index: Vec<IndexConfig>,
}

/// One index sluice writes to, and how to create it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// The index to create. With `alias`, the concrete index behind it (`posts-000001`).
    pub name: String,
    /// Written through: `sink.index` (or a route's index) names the alias, which points at
    /// `name` once sluice creates it (the alias is its write index).
    #[serde(default)]
    pub alias: Option<String>,
    /// A JSON file with the index `settings` object (nested or flat keys).
    #[serde(default)]
    pub settings_file: Option<PathBuf>,
    /// A JSON file with the index `mappings` object (`{"properties": …}`).
    #[serde(default)]
    pub mappings_file: Option<PathBuf>,
}

impl IndexConfig {
    /// The name documents are written to: the alias, or the index itself.
    pub fn written_as(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

/// One route: which records it takes, where their documents go, and their shape
/// (`transform::route`; README "Routes and document shaping").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Named in errors, logs and metrics; `route[i]` when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// DynamoDB: the table name (DynamoDB→Kinesis records carry it); DMS: `schema.table`
    /// (required). Unset: every table.
    #[serde(default)]
    pub table: Option<String>,
    /// Attribute tests, all of which must hold: `when.SK.begins_with = "COMMENT#"`.
    #[serde(default)]
    pub when: std::collections::BTreeMap<String, TestConfig>,
    /// Target index, with `{attribute}` placeholders (`posts-{tenant}`); `sink.index` when unset.
    #[serde(default)]
    pub index: Option<String>,
    /// `_id`: attributes joined with `sink.document_id_separator` (`["PK", "SK"]`), or a
    /// template (`"{SK}"`). DynamoDB: the table's key when unset; DMS: the primary key, required.
    #[serde(default)]
    pub id: Option<IdConfig>,
    /// Elasticsearch custom routing, a template over key attributes (`"{PK}"`).
    #[serde(default)]
    pub routing: Option<String>,
    /// Only these fields (paths: `author.name`) are indexed.
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// These fields are not indexed.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field → new name (paths both).
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Fields whose value is null are left out (nested objects too).
    #[serde(default)]
    pub drop_nulls: bool,
    /// Field → jq expression over the whole row (`transform::expr`).
    #[serde(default)]
    pub compute: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdConfig {
    Attributes(Vec<String>),
    Template(String),
}

/// A test on one attribute; each given part must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    #[serde(default)]
    pub begins_with: Option<String>,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub exists: Option<bool>,
}

/// Enums of the file are deserialized by name, and an unknown name is refused with the list of
/// allowed ones ("`postgres` is not one of dynamodb_streams, kinesis"), not serde's wording.
macro_rules! choices {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                match text.as_str() {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(serde::de::Error::custom(format!(
                        "`{text}` is not one of {}",
                        [$($name),+].join(", ")
                    ))),
                }
            }
        }
    };
}

choices!(KinesisFormat { "dms" => Dms, "dynamodb" => Dynamodb });
choices!(SourceType { "dynamodb_streams" => DynamodbStreams, "kinesis" => Kinesis });
choices!(StartPosition { "trim_horizon" => TrimHorizon, "latest" => Latest, "at_timestamp" => AtTimestamp });
choices!(JournalMode { "wal" => Wal, "delete" => Delete });
choices!(LogFormat { "text" => Text, "json" => Json });
choices!(LeaseBackend { "sqlite" => Sqlite, "dynamodb" => Dynamodb });
choices!(SinkAuth { "none" => None, "basic" => Basic, "api_key" => ApiKey, "aws_sigv4" => AwsSigv4 });
choices!(Compression { "none" => None, "gzip" => Gzip });
choices!(Consumer { "polling" => Polling, "enhanced_fan_out" => EnhancedFanOut });

/// How a Kinesis stream's shards are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// GetRecords, sharing each shard's 5 calls and 2 MB per second with every polling reader.
    Polling,
    /// SubscribeToShard through a registered consumer: its own 2 MB/s per shard, pushed.
    EnhancedFanOut,
}

/// What the records in a Kinesis stream are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KinesisFormat {
    /// AWS DMS messages (RDS → Kinesis).
    Dms,
    /// Kinesis Data Streams for DynamoDB.
    Dynamodb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    DynamodbStreams,
    Kinesis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// Oldest record still retained (24 h for DynamoDB Streams).
    TrimHorizon,
    /// Only changes made after sluice first starts.
    Latest,
    /// Kinesis only: records from `start_timestamp` on.
    AtTimestamp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Which AWS service to read.
    #[serde(rename = "type")]
    pub kind: SourceType,
    /// DynamoDB table whose `LatestStreamArn` is followed.
    #[serde(default)]
    pub table: Option<String>,
    /// Explicit stream ARN (instead of `table`).
    #[serde(default)]
    pub stream_arn: Option<String>,
    /// Kinesis: the data stream's name or ARN.
    #[serde(default)]
    pub stream: Option<String>,
    /// Kinesis: what the records are ("dms" or "dynamodb").
    #[serde(default)]
    pub format: Option<KinesisFormat>,
    /// With start_position = "at_timestamp": RFC 3339, e.g. "2024-07-29T00:00:00Z".
    #[serde(default)]
    pub start_timestamp: Option<String>,
    /// DMS: the name of the before-image object (BeforeImageSettings FieldName).
    #[serde(default = "default_before_image_field")]
    pub before_image_field: String,
    /// The records carry whole rows from before each change: a DynamoDB stream of view type
    /// NEW_AND_OLD_IMAGES (checked at start), DMS with BeforeImageSettings and whole-row
    /// logging (PostgreSQL REPLICA IDENTITY FULL, MySQL binlog_row_image = FULL). Routes that
    /// place documents by attributes outside the key need it, to find a changed or deleted
    /// row's old document.
    #[serde(default)]
    pub old_images: bool,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Emulator or VPC endpoint; absent → the AWS default endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Where shards without a checkpoint start. Child shards always start at TRIM_HORIZON.
    #[serde(default = "default_start_position")]
    pub start_position: StartPosition,
    /// Longest wait between polls of an idle shard (unless `idle_polls_per_second` raises it).
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// How often the shard list is re-read (shards also are re-read when one ends).
    #[serde(default = "default_discovery_interval", deserialize_with = "duration")]
    pub discovery_interval: Duration,
    /// Records asked for per GetRecords call (DynamoDB Streams: at most 1000).
    #[serde(default = "default_records_per_call")]
    pub records_per_call: u32,
    /// What the idle shards of this process may poll, together, per second: with many shards
    /// the idle back-off's ceiling grows past `poll_interval` to idle shards ÷ this, at most 60 s
    /// (0: no budget,
    /// every idle shard polls at `poll_interval`). Poll calls cost CPU, and money on
    /// DynamoDB Streams.
    #[serde(default = "default_idle_polls_per_second")]
    pub idle_polls_per_second: u32,
    /// Kinesis: `polling` (GetRecords) or `enhanced_fan_out` (SubscribeToShard).
    #[serde(default = "default_consumer")]
    pub consumer: Consumer,
    /// Enhanced fan-out: the stream consumer's name (registered if it does not exist, reused
    /// if it does). Default: `sluice-` and the indices written, which stays the same across
    /// restarts and deploys of one configuration.
    #[serde(default)]
    pub consumer_name: Option<String>,
    /// Enhanced fan-out: a subscription is renewed (from where it stopped) after this long;
    /// the service ends every subscription after 5 minutes.
    #[serde(
        default = "default_subscription_renewal",
        deserialize_with = "duration"
    )]
    pub subscription_renewal: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Elasticsearch / OpenSearch base URL.
    #[serde(default = "default_sink_url")]
    pub url: String,
    /// Target index.
    #[serde(default = "default_index")]
    pub index: String,
    /// Key attributes that make the `_id`, in order. Empty → the table's hash key, then range key.
    #[serde(default)]
    pub document_id: Vec<String>,
    /// Joins the parts of a composite `_id` ("hash|range"); `\` and the separator are escaped.
    #[serde(default = "default_id_separator")]
    pub document_id_separator: String,
    /// One bulk request may take this long before it is abandoned and retried.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// First retry delay; doubles per attempt, with jitter.
    #[serde(default = "default_backoff_initial", deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// Longest retry delay.
    #[serde(default = "default_backoff_max", deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Retries of one operation before it goes to the dead-letter table; 0 = retry forever.
    #[serde(default)]
    pub max_retries: u32,
    /// Basic-auth user (optional).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (optional; better given as SLUICE__SINK__PASSWORD or password_file).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (an ECS secret mounted as a file), read at start.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// none | basic | api_key | aws_sigv4; default: basic when a username is set, else none.
    #[serde(default)]
    pub auth: Option<SinkAuth>,
    /// Elasticsearch API key (the base64 `id:api_key` form), for auth = "api_key".
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// A file holding the API key, read at start.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// SigV4 region; default: source.region.
    #[serde(default)]
    pub aws_region: Option<String>,
    /// SigV4 service: `es` (an Amazon OpenSearch Service domain) or `aoss` (OpenSearch Serverless).
    #[serde(default = "default_aws_service")]
    pub aws_service: String,
    /// none | gzip: compress bulk bodies (Amazon OpenSearch Service caps and bills by payload).
    #[serde(default = "default_compression")]
    pub compression: Compression,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Create the `[[index]]` indices that are missing before reading starts (what `sluice
    /// index ensure` does); an existing index that differs is reported, never changed.
    #[serde(default)]
    pub manage_indices: bool,
}

/// TLS to the cluster: certificates are verified against the system's (webpki) roots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of a private CA to trust as well.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the certificate at all (a loud warning at every start). Never in production.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A secret from the file or the environment: never shown by Debug (logs, panics, check-config).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkAuth {
    None,
    Basic,
    ApiKey,
    /// AWS Signature Version 4 (Amazon OpenSearch Service with IAM access).
    AwsSigv4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

fn default_aws_service() -> String {
    "es".into()
}
fn default_compression() -> Compression {
    Compression::None
}

impl SinkConfig {
    /// The authentication in force: `auth`, or basic when a username is set.
    pub fn auth(&self) -> SinkAuth {
        self.auth.unwrap_or(if self.username.is_some() {
            SinkAuth::Basic
        } else {
            SinkAuth::None
        })
    }

    /// The password, from `password` or `password_file` (read now).
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        secret(&self.password, &self.password_file, "sink.password_file")
    }

    /// The API key, from `api_key` or `api_key_file` (read now).
    pub fn api_key(&self) -> anyhow::Result<Option<String>> {
        secret(&self.api_key, &self.api_key_file, "sink.api_key_file")
    }
}

fn secret(
    value: &Option<Secret>,
    file: &Option<PathBuf>,
    key: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(v) = value {
        return Ok(Some(v.0.clone()));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{key} `{}` cannot be read: {e}", path.display()))?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Flush when a bulk request holds this many documents.
    #[serde(default = "default_max_documents")]
    pub max_documents: usize,
    /// Flush before a bulk request would exceed this size (a single larger document goes alone).
    #[serde(default = "default_max_bytes", deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Flush a non-empty batch at the latest after this long.
    #[serde(default = "default_max_wait", deserialize_with = "duration")]
    pub max_wait: Duration,
    /// Bulk requests in flight at once (one per lane; one document always uses the same lane).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// Write-ahead log: for local disks.
    Wal,
    /// Rollback journal: for EFS / network file systems, where WAL does not work.
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// SQLite file holding checkpoints and dead letters.
    #[serde(default = "default_checkpoint_path")]
    pub path: PathBuf,
    /// SQLite journal mode.
    #[serde(default = "default_journal_mode")]
    pub journal_mode: JournalMode,
    /// At most one checkpoint transaction per this interval: the acknowledgements of busy
    /// shards are committed together (each commit is an fsync). What it delays is only the
    /// checkpoint — documents are already in the index — so a crash re-delivers at most this
    /// much more, which external versions make harmless. 0: commit at every acknowledgement.
    #[serde(default = "default_commit_interval", deserialize_with = "duration")]
    pub commit_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of /metrics, /healthz and /readyz.
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// text | json
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter: "info", "sluice=debug,info", …
    #[serde(default = "default_log_level")]
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Deadline for stop-reading → flush → wait for acks → commit. ECS kills 30 s after SIGTERM.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// `sluice backfill`: loading the rows that existed before the stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// The DynamoDB table to scan; default: source.table.
    #[serde(default)]
    pub table: Option<String>,
    /// Parallel Scan segments; default: one per 256 MiB of table, plus one (at most 65).
    #[serde(default)]
    pub segments: Option<u32>,
    /// Items per Scan page (the Scan `Limit`); unset: DynamoDB's 1 MB pages. Progress is saved
    /// per page, so smaller pages re-scan less after a crash.
    #[serde(default)]
    pub page_items: Option<u32>,
    /// Strongly consistent reads (twice the read units).
    #[serde(default)]
    pub consistent_read: bool,
    /// Read units per second the scan may use (all segments together), so production traffic
    /// is not starved; unset: no limit.
    #[serde(default)]
    pub max_read_units_per_second: Option<f64>,
    /// How far DynamoDB's clock and this host's may differ: scan images are versioned this much
    /// before the scan started (ARCHITECTURE.md, "Backfill").
    #[serde(
        default = "default_clock_skew_allowance",
        deserialize_with = "duration"
    )]
    pub clock_skew_allowance: Duration,
    /// How long the index keeps delete tombstones (`index.gc_deletes`) while a backfill runs, so
    /// an older image cannot undo a stream delete; put back when it is complete. "0s": untouched.
    #[serde(default = "default_keep_deletes_for", deserialize_with = "duration")]
    pub keep_deletes_for: Duration,
    /// `sluice run` backfills the table itself when this checkpoint file records no finished
    /// backfill of it (and resumes one that was interrupted), beside the stream.
    #[serde(default)]
    pub on_start: bool,
    /// Where `--from-export s3://…` reads: an S3-compatible endpoint (unset: AWS).
    #[serde(default)]
    pub s3_endpoint_url: Option<String>,
    /// The export bucket's region; default: source.region.
    #[serde(default)]
    pub s3_region: Option<String>,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            on_start: false,
            s3_endpoint_url: None,
            s3_region: None,
            table: None,
            segments: None,
            page_items: None,
            consistent_read: false,
            max_read_units_per_second: None,
            clock_skew_allowance: default_clock_skew_allowance(),
            keep_deletes_for: default_keep_deletes_for(),
        }
    }
}

fn default_keep_deletes_for() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_clock_skew_allowance() -> Duration {
    Duration::from_secs(300)
}

/// Where shard leases are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseBackend {
    /// The checkpoint file: several processes on one host (local disk).
    Sqlite,
    /// A DynamoDB table (created if missing): many hosts.
    Dynamodb,
}

/// Shard leases: how workers share the shards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// `sqlite` (one host) or `dynamodb` (many hosts).
    #[serde(default = "default_lease_backend")]
    pub backend: LeaseBackend,
    /// DynamoDB: the lease table (holds the checkpoints too).
    #[serde(default = "default_lease_table")]
    pub table: String,
    /// This worker's id; default: host name and process id.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// A lease whose owner has not renewed it for this long may be taken.
    #[serde(default = "default_lease_duration", deserialize_with = "duration")]
    pub duration: Duration,
    /// How often leases are renewed (and others' observed); well below `duration`.
    #[serde(default = "default_renew_interval", deserialize_with = "duration")]
    pub renew_interval: Duration,
    /// How often a worker with less than its share asks the busiest one for a lease.
    #[serde(default = "default_balance_interval", deserialize_with = "duration")]
    pub balance_interval: Duration,
    /// DynamoDB: region (default: the source's).
    #[serde(default)]
    pub region: Option<String>,
    /// DynamoDB: endpoint (default: the source's).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            backend: default_lease_backend(),
            table: default_lease_table(),
            worker_id: None,
            duration: default_lease_duration(),
            renew_interval: default_renew_interval(),
            balance_interval: default_balance_interval(),
            region: None,
            endpoint_url: None,
        }
    }
}

fn default_lease_backend() -> LeaseBackend {
    LeaseBackend::Sqlite
}
fn default_lease_table() -> String {
    "sluice-leases".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(10)
}
fn default_renew_interval() -> Duration {
    Duration::from_secs(3)
}
fn default_balance_interval() -> Duration {
    Duration::from_secs(15)
}

/// When `/readyz` says sluice cannot make progress.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Not ready once the sink has answered only errors (401/403/5xx, blocks, missing index)
    /// for this long.
    #[serde(default = "default_sink_error_grace", deserialize_with = "duration")]
    pub sink_error_grace: Duration,
    /// Not ready once no checkpoint has advanced for this long while records are pending.
    #[serde(default = "default_stall_after", deserialize_with = "duration")]
    pub stall_after: Duration,
    /// Not ready once a shard has waited on a parent that nobody reads for a discovery cycle
    /// plus this long.
    #[serde(default = "default_parent_timeout", deserialize_with = "duration")]
    pub parent_timeout: Duration,
    /// Not ready once a shard's oldest unacknowledged record is this close to the stream's
    /// retention (`sluice_shard_time_to_data_loss_seconds`); "0s" turns the check off.
    #[serde(
        default = "default_min_time_to_data_loss",
        deserialize_with = "duration"
    )]
    pub min_time_to_data_loss: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            sink_error_grace: default_sink_error_grace(),
            stall_after: default_stall_after(),
            parent_timeout: default_parent_timeout(),
            min_time_to_data_loss: default_min_time_to_data_loss(),
        }
    }
}

fn default_sink_error_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_stall_after() -> Duration {
    Duration::from_secs(300)
}
fn default_parent_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_min_time_to_data_loss() -> Duration {
    Duration::from_secs(3600)
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_before_image_field() -> String {
    "before-image".into()
}
fn default_start_position() -> StartPosition {
    StartPosition::TrimHorizon
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_discovery_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_records_per_call() -> u32 {
    1000
}
fn default_idle_polls_per_second() -> u32 {
    200
}
fn default_consumer() -> Consumer {
    Consumer::Polling
}
fn default_subscription_renewal() -> Duration {
    Duration::from_secs(270)
}
fn default_sink_url() -> String {
    "http://127.0.0.1:9200".into()
}
fn default_index() -> String {
    "sluice".into()
}
fn default_id_separator() -> String {
    "|".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_max_documents() -> usize {
    1000
}
fn default_max_bytes() -> u64 {
    5 * 1024 * 1024
}
fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}
fn default_max_in_flight() -> usize {
    2
}
fn default_checkpoint_path() -> PathBuf {
    "sluice.db".into()
}
fn default_journal_mode() -> JournalMode {
    JournalMode::Wal
}
fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_listen() -> SocketAddr {
    "127.0.0.1:9464".parse().expect("valid literal")
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(25)
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            url: default_sink_url(),
            index: default_index(),
            document_id: Vec::new(),
            document_id_separator: default_id_separator(),
            request_timeout: default_request_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            max_retries: 0,
            username: None,
            password: None,
            password_file: None,
            auth: None,
            api_key: None,
            api_key_file: None,
            aws_region: None,
            aws_service: default_aws_service(),
            compression: default_compression(),
            tls: TlsConfig::default(),
            manage_indices: false,
        }
    }
}
impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_documents: default_max_documents(),
            max_bytes: default_max_bytes(),
            max_wait: default_max_wait(),
            max_in_flight: default_max_in_flight(),
        }
    }
}
impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            path: default_checkpoint_path(),
            journal_mode: default_journal_mode(),
            commit_interval: default_commit_interval(),
        }
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}
impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            timeout: default_shutdown_timeout(),
        }
    }
}

/// Values may come from TOML (typed) or from the environment (always strings): accept both.
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrInt {
    Str(String),
    Int(u64),
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match StrOrInt::deserialize(d)? {
        StrOrInt::Int(n) => Ok(n),
        StrOrInt::Str(s) => parse_byte_size(&s).map_err(serde::de::Error::custom),
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!("`{text}` is not an address like 127.0.0.1:9464"))
    })
}

/// "250ms", "25s", "1m 30s".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like \"250ms\" or \"25s\" ({e})"))
}

/// "5MiB", "512KiB", "10MB", "1048576".
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("`{text}` is not a size like \"5MiB\", \"512KiB\" or \"1000000\"");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

impl Config {
    /// Reads the file, applies `SLUICE__…` environment overrides, and validates. No I/O besides
    /// reading the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        Self::build(
            config::File::from(path).format(config::FileFormat::Toml),
            env,
        )
    }

    /// A configuration from its text, without the environment (tests and benchmarks).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::build(
            config::File::from_str(text, config::FileFormat::Toml),
            std::iter::empty(),
        )
    }

    fn build(
        file: impl config::Source + Send + Sync + 'static,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SLUICE__"))
            .collect();
        let built = config::Config::builder()
            .add_source(file)
            .add_source(
                config::Environment::with_prefix("SLUICE")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| ConfigError(e.to_string()))?;
        let cfg: Config = built
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, what: &str| Err(ConfigError(format!("key `{key}`: {what}")));
        let s = &self.source;
        match s.kind {
            SourceType::DynamodbStreams => {
                match (&s.table, &s.stream_arn) {
                    (None, None) => {
                        return err(
                            "source.table",
                            "missing: set `source.table` (or `source.stream_arn`)",
                        )
                    }
                    (Some(_), Some(_)) => {
                        return err(
                            "source.table",
                            "set either `source.table` or `source.stream_arn`, not both",
                        )
                    }
                    (Some(t), None) if t.trim().is_empty() => {
                        return err("source.table", "is empty")
                    }
                    (None, Some(a)) if !a.starts_with("arn:") => {
                        return err(
                            "source.stream_arn",
                            "is not an ARN (arn:aws:dynamodb:…:table/…/stream/…)",
                        )
                    }
                    _ => {}
                }
                for (key, set) in [
                    ("source.stream", s.stream.is_some()),
                    ("source.format", s.format.is_some()),
                ] {
                    if set {
                        return err(key, "only applies to type = \"kinesis\"");
                    }
                }
                if s.start_position == StartPosition::AtTimestamp {
                    return err(
                        "source.start_position",
                        "\"at_timestamp\" only applies to type = \"kinesis\"",
                    );
                }
            }
            SourceType::Kinesis => {
                if s.stream.as_deref().is_none_or(|n| n.trim().is_empty()) {
                    return err("source.stream", "missing: the Kinesis stream's name or ARN");
                }
                if s.table.is_some() || s.stream_arn.is_some() {
                    return err(
                        "source.table",
                        "does not apply to type = \"kinesis\"; use `source.stream`",
                    );
                }
                match s.format {
                    None => return err("source.format", "missing: \"dms\" or \"dynamodb\""),
                    Some(KinesisFormat::Dms) if self.route.is_empty() => {
                        return err(
                            "route",
                            "format = \"dms\" needs at least one [[route]] (table, index, id)",
                        )
                    }
                    _ => {}
                }
                if s.records_per_call > 10_000 {
                    return err("source.records_per_call", "must be between 1 and 10000");
                }
                if let Some(name) = &s.consumer_name {
                    let valid = (1..=128).contains(&name.len())
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                    if !valid {
                        return err(
                            "source.consumer_name",
                            &format!("`{name}`: 1 to 128 letters, digits, `_`, `.` or `-`"),
                        );
                    }
                }
                // past 5 s (a new subscription sooner is refused), before the service's 5 min
                if s.subscription_renewal < Duration::from_secs(6)
                    || s.subscription_renewal >= Duration::from_secs(300)
                {
                    return err(
                        "source.subscription_renewal",
                        "must be at least 6s and under 5m (the service ends a subscription after 5 minutes)",
                    );
                }
            }
        }
        if s.kind != SourceType::Kinesis
            && (s.consumer != Consumer::Polling || s.consumer_name.is_some())
        {
            return err(
                "source.consumer",
                "enhanced fan-out is a Kinesis consumer: it does not apply to DynamoDB Streams",
            );
        }
        match (s.start_position, &s.start_timestamp) {
            (StartPosition::AtTimestamp, None) => {
                return err(
                    "source.start_timestamp",
                    "missing: needed by start_position = \"at_timestamp\"",
                )
            }
            (StartPosition::AtTimestamp, Some(t)) => {
                if humantime::parse_rfc3339_weak(t).is_err() {
                    return err(
                        "source.start_timestamp",
                        &format!("`{t}` is not an RFC 3339 time like 2024-07-29T00:00:00Z"),
                    );
                }
            }
            (_, Some(_)) => {
                return err(
                    "source.start_timestamp",
                    "only applies to start_position = \"at_timestamp\"",
                )
            }
            _ => {}
        }
        let dms = s.format == Some(KinesisFormat::Dms) && s.kind == SourceType::Kinesis;
        for (i, r) in self.route.iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            if dms {
                match &r.table {
                    Some(t) if t.split('.').count() == 2 && !t.split('.').any(str::is_empty) => {}
                    Some(t) => return err(&key("table"), &format!("`{t}` is not schema.table")),
                    None => {
                        return err(
                            &key("table"),
                            "missing: DMS routes name their `schema.table`",
                        )
                    }
                }
                if r.id.is_none() {
                    return err(&key("id"), "needs the primary-key column names (DMS records do not say which they are)");
                }
            }
        }
        // every route compiles (templates, paths, expressions) and can route its deletes
        crate::transform::route::Routes::from_config(self, None)?;
        let written: Vec<&str> = if self.route.is_empty() {
            vec![self.sink.index.as_str()]
        } else {
            self.route
                .iter()
                .map(|r| r.index.as_deref().unwrap_or(self.sink.index.as_str()))
                .collect()
        };
        let mut targets = std::collections::HashSet::new();
        for (i, x) in self.index.iter().enumerate() {
            let key = |k: &str| format!("index[{i}].{k}");
            if !valid_index(&x.name) {
                return err(&key("name"), "must be a lowercase Elasticsearch index name");
            }
            if let Some(alias) = &x.alias {
                if !valid_index(alias) || alias == &x.name {
                    return err(
                        &key("alias"),
                        "must be a lowercase Elasticsearch name, other than the index's",
                    );
                }
            }
            let named = |t: &&str| {
                crate::transform::route::Template::parse(t)
                    .is_ok_and(|t| t.could_render(x.written_as()))
            };
            if !written.iter().any(named) {
                return err(
                    &key(if x.alias.is_some() { "alias" } else { "name" }),
                    &format!(
                        "sluice writes to no index named `{}` (it writes to: {})",
                        x.written_as(),
                        written.join(", ")
                    ),
                );
            }
            if !targets.insert(x.written_as().to_string()) {
                return err(
                    &key("name"),
                    &format!("`{}` is set up twice", x.written_as()),
                );
            }
        }
        if self.sink.manage_indices && self.index.is_empty() {
            return err(
                "sink.manage_indices",
                "needs at least one [[index]] (name, settings_file, mappings_file) to create",
            );
        }
        for (key, d) in [
            ("source.poll_interval", s.poll_interval),
            ("source.discovery_interval", s.discovery_interval),
            ("sink.request_timeout", self.sink.request_timeout),
            ("sink.backoff_initial", self.sink.backoff_initial),
            ("sink.backoff_max", self.sink.backoff_max),
            ("shutdown.timeout", self.shutdown.timeout),
            ("health.sink_error_grace", self.health.sink_error_grace),
            ("health.stall_after", self.health.stall_after),
            ("health.parent_timeout", self.health.parent_timeout),
            ("lease.duration", self.lease.duration),
            ("lease.renew_interval", self.lease.renew_interval),
            ("lease.balance_interval", self.lease.balance_interval),
        ] {
            if d.is_zero() {
                return err(key, "must be greater than zero");
            }
        }
        if self.checkpoint.commit_interval > Duration::from_secs(10)
            || self.checkpoint.commit_interval >= self.health.stall_after
        {
            return err(
                "checkpoint.commit_interval",
                "must be at most 10s and shorter than health.stall_after (a handoff and a shard's children wait for its last commit, and a crash re-delivers one interval)",
            );
        }
        if s.records_per_call == 0
            || (s.kind == SourceType::DynamodbStreams && s.records_per_call > 1000)
        {
            return err(
                "source.records_per_call",
                "must be between 1 and 1000 (10000 for Kinesis)",
            );
        }
        if let Some(url) = &s.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return err("source.endpoint_url", "must start with http:// or https://");
            }
        }
        if !(self.sink.url.starts_with("http://") || self.sink.url.starts_with("https://")) {
            return err("sink.url", "must start with http:// or https://");
        }
        if !valid_index(&self.sink.index) {
            return err("sink.index", "must be a lowercase Elasticsearch index name");
        }
        if self.sink.document_id_separator.is_empty() {
            return err("sink.document_id_separator", "must not be empty");
        }
        let sink = &self.sink;
        if sink.password.is_some() && sink.password_file.is_some() {
            return err(
                "sink.password_file",
                "set password or password_file, not both",
            );
        }
        if sink.api_key.is_some() && sink.api_key_file.is_some() {
            return err("sink.api_key_file", "set api_key or api_key_file, not both");
        }
        let has_password = sink.password.is_some() || sink.password_file.is_some();
        let has_key = sink.api_key.is_some() || sink.api_key_file.is_some();
        match sink.auth() {
            SinkAuth::Basic if sink.username.is_none() || !has_password => {
                return err(
                    "sink.username",
                    "auth = \"basic\" needs username and password (or password_file)",
                )
            }
            SinkAuth::ApiKey if !has_key => {
                return err(
                    "sink.api_key",
                    "auth = \"api_key\" needs api_key or api_key_file",
                )
            }
            SinkAuth::None | SinkAuth::AwsSigv4 if has_password || has_key || sink.username.is_some() => {
                return err(
                    "sink.auth",
                    "a username, password or API key is set but auth is not \"basic\" / \"api_key\"",
                )
            }
            SinkAuth::Basic if has_key => {
                return err("sink.api_key", "only applies to auth = \"api_key\"")
            }
            SinkAuth::ApiKey if has_password || sink.username.is_some() => {
                return err("sink.username", "username and password only apply to auth = \"basic\"")
            }
            _ => {}
        }
        if sink
            .url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
        {
            return err(
                "sink.url",
                "must not carry credentials (user:password@): use sink.username and sink.password",
            );
        }
        if !matches!(sink.aws_service.as_str(), "es" | "aoss") {
            return err(
                "sink.aws_service",
                &format!("`{}` is not one of es, aoss", sink.aws_service),
            );
        }
        if self.sink.backoff_initial.is_zero() || self.sink.backoff_max < self.sink.backoff_initial
        {
            return err(
                "sink.backoff_max",
                "needs 0 < backoff_initial ≤ backoff_max",
            );
        }
        if self
            .backfill
            .segments
            .is_some_and(|n| n == 0 || n > 1_000_000)
        {
            return err("backfill.segments", "must be between 1 and 1000000");
        }
        if self.backfill.on_start {
            if self.source.kind == SourceType::Kinesis
                && self.source.format == Some(KinesisFormat::Dms)
            {
                return err(
                    "backfill.on_start",
                    "a DMS stream backfills itself: run the DMS task as full load and CDC",
                );
            }
            if self.backfill.table.is_none() && self.source.table.is_none() {
                return err(
                    "backfill.on_start",
                    "needs the table to scan: set backfill.table (or source.table)",
                );
            }
            if self.lease.backend == LeaseBackend::Dynamodb {
                return err(
                    "backfill.on_start",
                    "with lease.backend = \"dynamodb\" every task would scan the table: run `sluice backfill` once as its own task instead",
                );
            }
        }
        if self.backfill.page_items == Some(0) {
            return err("backfill.page_items", "must be at least 1");
        }
        if self
            .backfill
            .max_read_units_per_second
            .is_some_and(|r| !(r > 0.0))
        {
            return err(
                "backfill.max_read_units_per_second",
                "must be greater than zero",
            );
        }
        if self.lease.renew_interval * 2 > self.lease.duration {
            return err(
                "lease.renew_interval",
                "must be at most half of lease.duration, or live leases look expired",
            );
        }
        if self
            .lease
            .worker_id
            .as_deref()
            .is_some_and(|w| w.trim().is_empty())
        {
            return err("lease.worker_id", "must not be empty");
        }
        if self.lease.backend == LeaseBackend::Dynamodb && self.lease.table.trim().is_empty() {
            return err("lease.table", "missing: the DynamoDB lease table's name");
        }
        if let Some(url) = &self.lease.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return err("lease.endpoint_url", "must start with http:// or https://");
            }
        }
        if self.batch.max_documents == 0 {
            return err("batch.max_documents", "must be at least 1");
        }
        if self.batch.max_bytes < 1024 {
            return err("batch.max_bytes", "must be at least 1KiB");
        }
        if !(1..=64).contains(&self.batch.max_in_flight) {
            return err("batch.max_in_flight", "must be between 1 and 64");
        }
        if self.checkpoint.path.as_os_str().is_empty() {
            return err("checkpoint.path", "must not be empty");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return err(
                "log.level",
                &format!("`{}` is not a level or filter ({e})", self.log.level),
            );
        }
        Ok(())
    }
}

/// What Elasticsearch accepts as an index name.
pub fn valid_index(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name == name.to_lowercase()
        && !name.starts_with(['_', '-', '+'])
        && !name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(
            &path,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const MINIMAL: &str = "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\n";

    #[test]
    fn an_index_set_up_must_name_an_index_sluice_writes_to() {
        let ok = format!("{MINIMAL}[sink]\nindex = \"posts\"\nmanage_indices = true\n[[index]]\nname = \"posts-000001\"\nalias = \"posts\"\n");
        let c = load(&ok, &[]).unwrap();
        assert_eq!(c.index[0].written_as(), "posts");
        let elsewhere =
            format!("{MINIMAL}[sink]\nindex = \"posts\"\n[[index]]\nname = \"comments\"\n");
        let e = load(&elsewhere, &[]).unwrap_err().to_string();
        assert!(
            e.contains("index[0].name") && e.contains("writes to: posts"),
            "{e}"
        );
        let upper = format!("{MINIMAL}[sink]\nindex = \"posts\"\n[[index]]\nname = \"Posts\"\n");
        assert!(load(&upper, &[])
            .unwrap_err()
            .to_string()
            .contains("index[0].name"));
        let nothing = format!("{MINIMAL}[sink]\nmanage_indices = true\n");
        assert!(load(&nothing, &[])
            .unwrap_err()
            .to_string()
            .contains("sink.manage_indices"));
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.source.poll_interval, Duration::from_millis(250));
        assert_eq!(c.batch.max_bytes, 5 * 1024 * 1024);
        assert_eq!(c.batch.max_in_flight, 2);
        assert_eq!(c.shutdown.timeout, Duration::from_secs(25));
        assert_eq!(c.checkpoint.journal_mode, JournalMode::Wal);
        assert_eq!(c.checkpoint.commit_interval, Duration::from_millis(100));
    }

    #[test]
    fn the_commit_interval_may_be_zero_but_not_long() {
        let with = |v: &str| {
            load(
                &format!("{MINIMAL}[checkpoint]\ncommit_interval = \"{v}\"\n"),
                &[],
            )
        };
        assert_eq!(
            with("0s").unwrap().checkpoint.commit_interval,
            Duration::ZERO
        );
        assert_eq!(
            with("10s").unwrap().checkpoint.commit_interval,
            Duration::from_secs(10)
        );
        let e = with("11s").unwrap_err().to_string();
        assert!(
            e.contains("checkpoint.commit_interval") && e.contains("at most 10s"),
            "{e}"
        );
        let e = load(
            &format!(
                "{MINIMAL}[checkpoint]\ncommit_interval = \"5s\"\n[health]\nstall_after = \"5s\"\n"
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shorter than health.stall_after"), "{e}");
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            MINIMAL,
            &[
                ("SLUICE__SINK__URL", "http://127.0.0.1:9999"),
                ("SLUICE__BATCH__MAX_DOCUMENTS", "7"),
                ("SLUICE__BATCH__MAX_BYTES", "1MiB"),
                ("SLUICE__SOURCE__POLL_INTERVAL", "1s"),
            ],
        )
        .unwrap();
        assert_eq!(c.sink.url, "http://127.0.0.1:9999");
        assert_eq!(c.batch.max_documents, 7);
        assert_eq!(c.batch.max_bytes, 1 << 20);
        assert_eq!(c.source.poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = load(&format!("{MINIMAL}colour = \"red\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("colour"), "{unknown}");
        let bad_duration = load(&format!("{MINIMAL}poll_interval = \"soon\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            bad_duration.contains("poll_interval") && bad_duration.contains("soon"),
            "{bad_duration}"
        );
        let missing = load("[source]\ntype = \"dynamodb_streams\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("source.table"), "{missing}");
        let bad_size = load(
            &format!("{MINIMAL}[batch]\nmax_bytes = \"5 parsecs\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(bad_size.contains("max_bytes"), "{bad_size}");
    }

    #[test]
    fn unknown_choices_list_the_allowed_values_and_zero_durations_are_refused() {
        let e = load("[source]\ntype = \"postgres\"\ntable = \"Posts\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("source.type")
                && e.contains("`postgres` is not one of dynamodb_streams, kinesis"),
            "{e}"
        );
        let e = load(
            &format!("{MINIMAL}[checkpoint]\njournal_mode = \"memory\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("checkpoint.journal_mode") && e.contains("wal, delete"),
            "{e}"
        );
        for (section, key) in [
            ("source", "discovery_interval"),
            ("source", "poll_interval"),
            ("sink", "request_timeout"),
            ("shutdown", "timeout"),
            ("health", "sink_error_grace"),
            ("health", "stall_after"),
        ] {
            let toml = if section == "source" {
                format!("{MINIMAL}{key} = \"0s\"\n")
            } else {
                format!("{MINIMAL}[{section}]\n{key} = \"0ms\"\n")
            };
            let e = load(&toml, &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{section}.{key}")) && e.contains("greater than zero"),
                "{e}"
            );
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("5MiB"), Ok(5 << 20));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("123"), Ok(123));
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("5XB").is_err());
    }

    const DMS: &str = "[source]\ntype = \"kinesis\"\nstream = \"rds-changes\"\nformat = \"dms\"\n\n[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"customer_id\"]\n";

    #[test]
    fn enhanced_fan_out_is_a_kinesis_consumer_with_a_valid_name_and_renewal() {
        let fan_out = |extra: &str| {
            Config::from_toml(
                &DMS.replace("format = \"dms\"\n", &format!("format = \"dms\"\n{extra}")),
            )
        };
        let c = fan_out("consumer = \"enhanced_fan_out\"\n").unwrap();
        assert_eq!(c.source.consumer, Consumer::EnhancedFanOut);
        assert_eq!(c.source.subscription_renewal, Duration::from_secs(270));
        assert_eq!(
            Config::from_toml(DMS).unwrap().source.consumer,
            Consumer::Polling
        );
        let e = fan_out("consumer = \"push\"\n").unwrap_err().to_string();
        assert!(
            e.contains("`push` is not one of polling, enhanced_fan_out"),
            "{e}"
        );
        let e = fan_out("consumer = \"enhanced_fan_out\"\nconsumer_name = \"my consumer\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.consumer_name"), "{e}");
        for renewal in ["5s", "5m"] {
            let e = fan_out(&format!("subscription_renewal = \"{renewal}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("source.subscription_renewal"), "{renewal}: {e}");
        }
        let streams = "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\nconsumer = \"enhanced_fan_out\"\n";
        let e = Config::from_toml(streams).unwrap_err().to_string();
        assert!(
            e.contains("source.consumer") && e.contains("DynamoDB Streams"),
            "{e}"
        );
    }

    #[test]
    fn kinesis_dms_config_with_routes() {
        let c = load(DMS, &[]).unwrap();
        assert_eq!(c.source.format, Some(KinesisFormat::Dms));
        assert!(matches!(&c.route[0].id, Some(IdConfig::Attributes(a)) if a == &["customer_id"]));
        let no_routes = load(
            "[source]\ntype = \"kinesis\"\nstream = \"s\"\nformat = \"dms\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(no_routes.contains("route"), "{no_routes}");
        let no_format = load("[source]\ntype = \"kinesis\"\nstream = \"s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(no_format.contains("source.format"), "{no_format}");
        let bad_table = load(&DMS.replace("public.customers", "customers"), &[])
            .unwrap_err()
            .to_string();
        assert!(bad_table.contains("route[0].table"), "{bad_table}");
        let at = load(
            &DMS.replace(
                "format = \"dms\"",
                "format = \"dms\"\nstart_position = \"at_timestamp\"",
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(at.contains("source.start_timestamp"), "{at}");
        let ok = load(&DMS.replace("format = \"dms\"", "format = \"dms\"\nstart_position = \"at_timestamp\"\nstart_timestamp = \"2024-07-29T00:00:00Z\""), &[]);
        assert!(ok.is_ok(), "{ok:?}");
    }

    const SINGLE_TABLE: &str = concat!(
        "[source]\ntype = \"dynamodb_streams\"\ntable = \"app\"\n",
        include_str!("../config/routes-single-table.toml")
    );

    #[test]
    fn routes_keep_the_case_of_attribute_and_field_names() {
        let c = load(SINGLE_TABLE, &[]).unwrap();
        assert_eq!(c.route.len(), 2);
        assert!(c.route[0].when.contains_key("SK"));
        assert!(c.route[0].compute.contains_key("image_count"));
        assert_eq!(
            c.route[1].rename.get("body").map(String::as_str),
            Some("text")
        );
    }

    #[test]
    fn an_expression_that_does_not_compile_is_named_with_its_route_field_and_position() {
        let bad = SINGLE_TABLE.replace("| length'", "| lenght'");
        let e = load(&bad, &[]).unwrap_err().to_string();
        assert!(
            e.contains("route[0] (posts).compute.image_count: line 1, column 43")
                && e.contains("lenght"),
            "{e}"
        );
        let e = load(&SINGLE_TABLE.replace("| length'", "| length)'"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("route[0] (posts).compute.image_count: line 1"),
            "{e}"
        );
        let e = load(
            &SINGLE_TABLE.replace("| length'", "| [range(1e9)] | length'"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`range`") && e.contains("unbounded"), "{e}");
    }

    #[test]
    fn a_route_whose_deletes_cannot_be_routed_is_refused() {
        let tenants = "[source]\ntype = \"dynamodb_streams\"\ntable = \"app\"\n\n[[route]]\nname = \"posts\"\nindex = \"posts-{tenant}\"\nid = [\"PK\", \"SK\"]\n";
        let e = load(tenants, &[]).unwrap_err().to_string();
        assert!(
            e.contains("route[0] (posts): deletes cannot be routed")
                && e.contains("`tenant`")
                && e.contains("source.old_images"),
            "{e}"
        );
        let with_old_images =
            tenants.replace("table = \"app\"", "table = \"app\"\nold_images = true");
        assert!(load(&with_old_images, &[]).is_ok());
        // a condition on a non-key attribute, the same (the comments' id names the key here, so
        // check-config knows it)
        let e = load(
            &SINGLE_TABLE
                .replace(
                    "when.SK.begins_with = \"POST#\"",
                    "when.status.equals = \"published\"",
                )
                .replace(
                    "index = \"comments\"",
                    "index = \"comments\"\nid = [\"PK\", \"SK\"]",
                ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`status`"), "{e}");
        // routing must use key attributes, even with old images
        let e = load(
            &with_old_images.replace("id = [", "routing = \"{tenant}\"\nid = ["),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("route[0] (posts).routing") && e.contains("`tenant`"),
            "{e}"
        );
        // DynamoDB in Kinesis: the key is known only from `id`
        let kinesis = "[source]\ntype = \"kinesis\"\nstream = \"s\"\nformat = \"dynamodb\"\n\n[[route]]\nwhen.SK.begins_with = \"POST#\"\nindex = \"posts\"\n";
        let e = load(kinesis, &[]).unwrap_err().to_string();
        assert!(e.contains("cannot tell whether `SK`"), "{e}");
        assert!(load(
            &kinesis.replace(
                "index = \"posts\"",
                "index = \"posts\"\nid = [\"PK\", \"SK\"]"
            ),
            &[]
        )
        .is_ok());
    }

    #[test]
    fn a_route_after_a_catch_all_is_refused_as_unreachable() {
        let e = load(
            &SINGLE_TABLE.replace("when.SK.begins_with = \"POST#\"\n", ""),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("route[1] (comments) can never match: route[0]"),
            "{e}"
        );
    }
}
