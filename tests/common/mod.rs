//! Test bed shared by the end-to-end tests and benchmarks: moto (DynamoDB + Streams) or the
//! project's source fake (the same APIs at memory speed, for volume), the
//! Elasticsearch test server (or a real cluster behind it when SLUICE_TEST_ES_URL is set), the
//! real `sluice` binary, and the comparison "index equals table".
//!
//! Every server binds 127.0.0.1 on a free port and is stopped by PID when dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use es_fake::FakeEs;
use serde_json::Value;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts a server process that listens on `port` (127.0.0.1) and waits until it does.
fn spawn_server(mut cmd: Command, port: u16, what: &str, within: Duration) -> Proc {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let proc = Proc(child);
    assert!(
        wait_for_port(port, within),
        "{what} did not start on port {port}"
    );
    proc
}

/// Kills a child by PID on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the test command installed moto; overridable with SLUICE_MOTO_SERVER.
pub fn moto_server_path() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_MOTO_SERVER") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/sluice/moto-venv/bin/moto_server")
}

pub struct Moto {
    pub url: String,
    _proc: Proc,
}

impl Moto {
    pub fn start() -> Moto {
        let path = moto_server_path();
        assert!(
            path.exists(),
            "moto is not installed at {} — run the test command from the README (scripts/test.sh), which installs it",
            path.display()
        );
        let port = free_port();
        let mut cmd = Command::new(&path);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = spawn_server(cmd, port, "moto_server", Duration::from_secs(30));
        Moto {
            url: format!("http://127.0.0.1:{port}"),
            _proc: proc,
        }
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        dynamodb_client(&self.url)
    }
}

/// A DynamoDB client for the emulator at `url`.
pub fn dynamodb_client(url: &str) -> aws_sdk_dynamodb::Client {
    let creds = aws_credential_types::Credentials::new("test", "test", None, None, "sluice-tests");
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(creds)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// Environment for a sluice process pointed at moto.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// A table keyed by `id` (S), with a stream of `view` when given.
pub async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
    view: impl Into<Option<StreamViewType>>,
) {
    let stream = view.into().map(|view| {
        StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(view)
            .build()
            .unwrap()
    });
    ddb.create_table()
        .table_name(name)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .set_stream_specification(stream)
        .send()
        .await
        .expect("create table");
}

/// The whole table as `_id → document`, decoded by the same rules sluice uses.
pub async fn scan_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut start = None;
    loop {
        let page = ddb
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        for item in page.items() {
            let id = match item.get("id") {
                Some(AttributeValue::S(s)) => s.clone(),
                other => panic!("item without string id: {other:?}"),
            };
            let converted = item
                .iter()
                .map(|(k, v)| (k.clone(), to_streams(v)))
                .collect();
            out.insert(
                id,
                sluice::transform::item_to_json(&converted).expect("decodable item"),
            );
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    out
}

/// The DynamoDB SDK's AttributeValue as the Streams SDK's (same wire type, different crate).
pub fn to_streams(v: &AttributeValue) -> aws_sdk_dynamodbstreams::types::AttributeValue {
    use aws_sdk_dynamodbstreams::primitives::Blob;
    use aws_sdk_dynamodbstreams::types::AttributeValue as S;
    match v {
        AttributeValue::S(x) => S::S(x.clone()),
        AttributeValue::N(x) => S::N(x.clone()),
        AttributeValue::B(b) => S::B(Blob::new(b.as_ref())),
        AttributeValue::Bool(b) => S::Bool(*b),
        AttributeValue::Null(b) => S::Null(*b),
        AttributeValue::M(m) => S::M(m.iter().map(|(k, v)| (k.clone(), to_streams(v))).collect()),
        AttributeValue::L(l) => S::L(l.iter().map(to_streams).collect()),
        AttributeValue::Ss(x) => S::Ss(x.clone()),
        AttributeValue::Ns(x) => S::Ns(x.clone()),
        AttributeValue::Bs(x) => S::Bs(x.iter().map(|b| Blob::new(b.as_ref())).collect()),
        other => panic!("unexpected attribute {other:?}"),
    }
}

/// The Elasticsearch side: the in-memory test server, or — when SLUICE_TEST_ES_URL is set —
/// the same server as a fault-injecting proxy in front of that real cluster.
pub struct Es {
    pub fake: FakeEs,
    /// Where assertions read from (bypassing faults).
    verify_url: String,
    http: reqwest::Client,
}

impl Es {
    /// Writes `_bulk` lines straight into the indices, as someone behind sluice's back would
    /// (no external version), and refreshes.
    pub async fn tamper(&self, lines: Vec<Value>) {
        let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
        let answer: Value = self
            .http
            .post(format!("{}/_bulk?refresh=true", self.url()))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["errors"], serde_json::json!(false), "{answer}");
    }

    pub async fn start() -> Es {
        let real = std::env::var("SLUICE_TEST_ES_URL")
            .ok()
            .filter(|u| !u.is_empty());
        let fake = FakeEs::start_with("127.0.0.1:0".parse().unwrap(), real.clone())
            .await
            .expect("start es-fake");
        let verify_url = real.unwrap_or_else(|| fake.url());
        Es {
            fake,
            verify_url: verify_url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// URL sluice writes to.
    pub fn url(&self) -> String {
        self.fake.url()
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{}", self.verify_url, path))
            .header("x-fake-bypass", "1")
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Every document of `index` as `_id → _source` (empty if the index does not exist).
    pub async fn documents(&self, index: &str) -> BTreeMap<String, Value> {
        let _ = self
            .http
            .post(format!("{}/{index}/_refresh", self.verify_url))
            .header("x-fake-bypass", "1")
            .send()
            .await;
        let mut out = BTreeMap::new();
        let Some(v) = self.get(&format!("/{index}/_search?size=10000")).await else {
            return out;
        };
        let total = v["hits"]["total"]["value"].as_u64().unwrap_or(0);
        if total > 10_000 || v["hits"]["total"]["relation"] == "gte" {
            // more than one search returns: read the test server whole
            assert!(
                self.verify_url == self.fake.url(),
                "{total} documents in `{index}`: tests read more than 10,000 documents from the test server only"
            );
            return self.fake.documents(index);
        }
        for hit in v["hits"]["hits"].as_array().cloned().unwrap_or_default() {
            out.insert(
                hit["_id"].as_str().unwrap().to_string(),
                hit["_source"].clone(),
            );
        }
        out
    }

    /// `GET /{name}` (an index or an alias) as Elasticsearch answers it; `None` when missing.
    pub async fn index_state(&self, name: &str) -> Option<Value> {
        self.get(&format!("/{name}")).await
    }

    pub async fn delete_index(&self, index: &str) {
        let _ = self
            .http
            .delete(format!("{}/{index}", self.verify_url))
            .send()
            .await;
    }
}

/// A difference between table and index, readable in a failure message.
pub fn diff(table: &BTreeMap<String, Value>, index: &BTreeMap<String, Value>) -> String {
    let mut lines = Vec::new();
    for (id, doc) in table {
        match index.get(id) {
            None => lines.push(format!("missing in index: {id}")),
            Some(d) if d != doc => {
                lines.push(format!("differs: {id}\n  table: {doc}\n  index: {d}"))
            }
            _ => {}
        }
    }
    for id in index.keys().filter(|id| !table.contains_key(*id)) {
        lines.push(format!("extra in index: {id}"));
    }
    let n = lines.len();
    lines.truncate(10);
    format!("{n} differences; first: \n{}", lines.join("\n"))
}

/// Polls until the index equals the table (or panics after `within`, showing the difference).
pub async fn assert_converges(
    es: &Es,
    index: &str,
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    within: Duration,
) {
    let expected = scan_table(ddb, table).await;
    assert_index_equals(es, index, &expected, within).await;
}

/// Polls until the index holds exactly `expected` (`_id → _source`), or panics after `within`.
pub async fn assert_index_equals(
    es: &Es,
    index: &str,
    expected: &BTreeMap<String, Value>,
    within: Duration,
) {
    let until = Instant::now() + within;
    loop {
        let actual = es.documents(index).await;
        if &actual == expected {
            return;
        }
        if Instant::now() > until {
            panic!(
                "index `{index}` does not reach the expected state after {within:?}: {}",
                diff(expected, &actual)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Where the bed's table and stream live.
pub enum Source {
    Moto(Moto),
    /// `testbed/source-fake`: for volume moto cannot serve.
    Fake(source_fake::SourceFake),
}

impl Source {
    pub fn url(&self) -> String {
        match self {
            Source::Moto(m) => m.url.clone(),
            Source::Fake(f) => f.url(),
        }
    }
}

/// moto (or the source fake) with a `Posts` table (NEW_AND_OLD_IMAGES stream), Elasticsearch
/// without `index`, and a scratch folder for sluice's config, log and checkpoint file.
pub struct PostsBed {
    pub source: Source,
    source_url: String,
    pub ddb: aws_sdk_dynamodb::Client,
    pub es: Es,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub index: &'static str,
    es_url: String,
}

impl PostsBed {
    pub async fn new(index: &'static str) -> PostsBed {
        let bed = Self::without_stream(index).await;
        bed.enable_stream().await;
        bed
    }

    /// The bed with a `Posts` table whose stream is not enabled yet (the day-one case: rows
    /// written before the stream existed).
    pub async fn without_stream(index: &'static str) -> PostsBed {
        Self::without_stream_on(Source::Moto(Moto::start()), index).await
    }

    /// The same bed on the source fake, the stream in 4 shards.
    pub async fn without_stream_on_fake(index: &'static str) -> PostsBed {
        Self::without_stream_on_fake_with(
            index,
            source_fake::Options {
                stream_shards: 4,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn without_stream_on_fake_with(
        index: &'static str,
        options: source_fake::Options,
    ) -> PostsBed {
        let fake = source_fake::SourceFake::start_with(options)
            .await
            .expect("start the source fake");
        Self::without_stream_on(Source::Fake(fake), index).await
    }

    async fn without_stream_on(source: Source, index: &'static str) -> PostsBed {
        let source_url = source.url();
        let ddb = dynamodb_client(&source_url);
        let es = Es::start().await;
        let dir = tempfile::tempdir().unwrap();
        create_table(&ddb, "Posts", None).await;
        es.delete_index(index).await;
        let db = dir.path().join("sluice.db");
        let es_url = es.url();
        PostsBed {
            source,
            source_url,
            ddb,
            es,
            dir,
            db,
            index,
            es_url,
        }
    }

    /// Enables the table's NEW_AND_OLD_IMAGES stream.
    pub async fn enable_stream(&self) {
        self.ddb
            .update_table()
            .table_name("Posts")
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("enable the stream");
    }

    pub fn options(&self) -> SluiceOptions<'_> {
        SluiceOptions {
            moto: &self.source_url,
            es: &self.es_url,
            table: "Posts",
            index: self.index,
            db: &self.db,
            extra: "",
        }
    }

    /// Starts `sluice run` on this bed (again after a kill: same checkpoint file).
    pub fn start_sluice(&self) -> Sluice {
        Sluice::start(&self.options(), self.dir.path())
    }

    /// Polls until the index equals a full scan of the table.
    pub async fn assert_converges(&self, within: Duration) {
        assert_converges(&self.es, self.index, &self.ddb, "Posts", within).await;
    }
}

/// A `sluice run` process.
pub struct Sluice {
    pub child: Option<Child>,
    pub http_port: u16,
    pub log: PathBuf,
    pub config: PathBuf,
}

pub struct SluiceOptions<'a> {
    pub moto: &'a str,
    pub es: &'a str,
    pub table: &'a str,
    pub index: &'a str,
    pub db: &'a Path,
    pub extra: &'a str,
}

pub fn config_toml(o: &SluiceOptions, http_port: u16) -> String {
    let source = format!(
        "[source]\ntype = \"dynamodb_streams\"\ntable = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\npoll_interval = \"100ms\"\ndiscovery_interval = \"2s\"\n",
        o.table, o.moto
    );
    format!(
        "{source}\n{}{}\n",
        sink_sections(o.es, o.index, o.db, http_port),
        o.extra
    )
}

/// Everything after `[source]`: test-friendly batching and retries, this test's ports and files.
fn sink_sections(es: &str, index: &str, db: &Path, http_port: u16) -> String {
    format!(
        r#"[sink]
url = "{es}"
index = "{index}"
backoff_initial = "20ms"
backoff_max = "1s"
request_timeout = "5s"

[batch]
max_documents = 200
max_bytes = "1MiB"
max_wait = "100ms"
max_in_flight = 2

[checkpoint]
path = "{db}"

[http]
listen = "127.0.0.1:{http_port}"

[log]
level = "info,sluice=debug"

[shutdown]
timeout = "10s"
"#,
        db = db.display()
    )
}

impl Sluice {
    pub fn start(o: &SluiceOptions, dir: &Path) -> Sluice {
        let http_port = free_port();
        let config = dir.join(format!("sluice-{http_port}.toml"));
        std::fs::write(&config, config_toml(o, http_port)).unwrap();
        Self::start_with_config(&config, http_port, dir)
    }

    pub fn start_with_config(config: &Path, http_port: u16, dir: &Path) -> Sluice {
        let log = dir.join(format!("sluice-{http_port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "--config"])
            .arg(config)
            .envs(aws_env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting sluice");
        Sluice {
            child: Some(child),
            http_port,
            log,
            config: config.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    /// Waits until /readyz says ready.
    pub async fn wait_ready(&self, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "sluice not ready within {within:?}; log:\n{}",
            self.log_text()
        );
    }

    /// One metric's value (sum over its label sets matching `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let Some((_, text)) = self.get("/metrics").await else {
            return 0.0;
        };
        metric_value(&text, name, labels)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    pub fn sigterm(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        while started.elapsed() < within {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, started.elapsed())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in bytes (Linux /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        })
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A blog post made of blocks, with every attribute type and exact numbers.
pub fn post(
    id: &str,
    rev: u64,
    rng: &mut fastrand::Rng,
) -> std::collections::HashMap<String, AttributeValue> {
    use aws_sdk_dynamodb::primitives::Blob;
    let mut blocks = Vec::new();
    for b in 0..rng.usize(1..4) {
        let block = if rng.bool() {
            [
                ("type".to_string(), AttributeValue::S("paragraph".into())),
                (
                    "text".to_string(),
                    AttributeValue::S(format!("paragraph {b} of {id} rev {rev}")),
                ),
            ]
        } else {
            [
                ("type".to_string(), AttributeValue::S("image".into())),
                (
                    "url".to_string(),
                    AttributeValue::S(format!("https://img.example/{id}/{b}.png")),
                ),
            ]
        };
        blocks.push(AttributeValue::M(block.into_iter().collect()));
    }
    [
        ("id", AttributeValue::S(id.into())),
        (
            "title",
            AttributeValue::S(format!("Post {id}, revision {rev}")),
        ),
        ("rev", AttributeValue::N(rev.to_string())),
        (
            "views",
            AttributeValue::N(rng.u64(0..1_000_000).to_string()),
        ),
        (
            "ratio",
            AttributeValue::N("0.1000000000000000055511151231257827".into()),
        ),
        ("big", AttributeValue::N("12345678901234567890123".into())),
        ("published", AttributeValue::Bool(rng.bool())),
        ("editor", AttributeValue::Null(true)),
        (
            "tags",
            AttributeValue::Ss(vec!["cdc".into(), format!("t{}", rng.u8(0..5))]),
        ),
        ("scores", AttributeValue::Ns(vec!["1".into(), "2.5".into()])),
        (
            "thumb",
            AttributeValue::B(Blob::new(vec![rng.u8(..), 0, 255])),
        ),
        ("body", AttributeValue::L(blocks)),
        (
            "meta",
            AttributeValue::M([("lang".to_string(), AttributeValue::S("en".into()))].into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One change the workload makes.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    Put,
    Update,
    Delete,
}

/// Applies `n` random changes over `keys` keys (every key first inserted once when `seed_all`),
/// including ≥ 5 updates to one item within a second and a delete-then-reinsert.
pub async fn random_workload(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: usize,
    n: usize,
    seed: u64,
) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rev = 0u64;
    let mut changes = 0;
    let mut exists = vec![false; keys];
    for i in 0..n {
        let k = if i < keys { i } else { rng.usize(0..keys) };
        let id = format!("post-{k}");
        rev += 1;
        let change = match (exists[k], rng.u8(0..10)) {
            (false, _) => Change::Put,
            (true, 0..=3) => Change::Put,
            (true, 4..=7) => Change::Update,
            (true, _) => Change::Delete,
        };
        apply(ddb, table, &id, change, rev, &mut rng).await;
        exists[k] = !matches!(change, Change::Delete);
        changes += 1;
        if i == n / 2 {
            // ≥ 5 updates to one item within one second
            for _ in 0..6 {
                rev += 1;
                apply(ddb, table, "post-0", Change::Put, rev, &mut rng).await;
                changes += 1;
            }
            exists[0] = true;
            // delete then re-insert the same key
            apply(ddb, table, "post-1", Change::Delete, rev, &mut rng).await;
            rev += 1;
            apply(ddb, table, "post-1", Change::Put, rev, &mut rng).await;
            changes += 2;
            exists[1] = true;
        }
    }
    changes
}

pub async fn apply(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &str,
    change: Change,
    rev: u64,
    rng: &mut fastrand::Rng,
) {
    match change {
        Change::Put => {
            ddb.put_item()
                .table_name(table)
                .set_item(Some(post(id, rev, rng)))
                .send()
                .await
                .expect("put");
        }
        Change::Update => {
            ddb.update_item()
                .table_name(table)
                .key("id", AttributeValue::S(id.into()))
                .update_expression("SET title = :t, rev = :r, #v = #v + :one")
                .expression_attribute_names("#v", "views")
                .expression_attribute_values(
                    ":t",
                    AttributeValue::S(format!("Post {id}, edited {rev}")),
                )
                .expression_attribute_values(":r", AttributeValue::N(rev.to_string()))
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .send()
                .await
                .expect("update");
        }
        Change::Delete => {
            ddb.delete_item()
                .table_name(table)
                .key("id", AttributeValue::S(id.into()))
                .send()
                .await
                .expect("delete");
        }
    }
}

/// Where the test command installed kinesalite and kinesis-local.
pub fn node_modules() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_NODE_MODULES") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/sluice/node/node_modules")
}

fn require_node_module(name: &str) -> PathBuf {
    let dir = node_modules().join(name);
    assert!(
        dir.join("package.json").exists(),
        "{name} is not installed in {} — run the test command from the README (scripts/test.sh), which installs it",
        node_modules().display()
    );
    dir
}

/// A Kinesis emulator process (kinesalite or kinesis-local) on a free loopback port.
pub struct KinesisEmulator {
    pub url: String,
    _proc: Proc,
}

impl KinesisEmulator {
    /// kinesalite: correct split/merge and iterator expiry; fast.
    pub fn kinesalite() -> KinesisEmulator {
        require_node_module("kinesalite");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kinesalite.js");
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .arg(port.to_string())
            .env("SLUICE_NODE_MODULES", node_modules());
        let proc = spawn_server(cmd, port, "kinesalite (node)", Duration::from_secs(30));
        KinesisEmulator {
            url: format!("http://127.0.0.1:{port}"),
            _proc: proc,
        }
    }

    /// kinesis-local (kinesis-mock): ChildShards, UpdateShardCount, ListShards NextToken; slow.
    pub fn kinesis_local() -> KinesisEmulator {
        let dir = require_node_module("kinesis-local");
        let main = dir.join("main.js");
        let code = std::fs::read_to_string(&main).unwrap_or_default();
        assert!(
            !code.contains("Host$().em(\"0.0.0.0\")"),
            "kinesis-local is not patched to bind 127.0.0.1 — run scripts/test.sh"
        );
        let port = free_port();
        let tls_port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(&main)
            // it reads its TLS material (server.json) from the working directory
            .current_dir(&dir)
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
            .env("AWS_REGION", "us-east-1")
            .env("LOG_LEVEL", "WARN")
            .env("CREATE_STREAM_DURATION", "50ms")
            .env("SPLIT_SHARD_DURATION", "50ms")
            .env("UPDATE_SHARD_COUNT_DURATION", "50ms")
            .env("MERGE_SHARDS_DURATION", "50ms");
        let proc = spawn_server(cmd, port, "kinesis-local (node)", Duration::from_secs(60));
        KinesisEmulator {
            url: format!("http://127.0.0.1:{port}"),
            _proc: proc,
        }
    }

    pub fn client(&self) -> aws_sdk_kinesis::Client {
        Self::client_for(&self.url)
    }

    /// A Kinesis client for any endpoint of this host (an emulator, the source fake).
    pub fn client_for(url: &str) -> aws_sdk_kinesis::Client {
        let creds =
            aws_credential_types::Credentials::new("test", "test", None, None, "sluice-tests");
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(creds)
            .build();
        aws_sdk_kinesis::Client::from_conf(conf)
    }
}

/// Creates a stream and waits until it is ACTIVE.
pub async fn create_stream(k: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    k.create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");
    wait_active(k, name).await;
}

pub async fn wait_active(k: &aws_sdk_kinesis::Client, name: &str) {
    for _ in 0..300 {
        if let Ok(out) = k.describe_stream_summary().stream_name(name).send().await {
            if out
                .stream_description_summary()
                .map(|d| d.stream_status().as_str() == "ACTIVE")
                .unwrap_or(false)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} never became ACTIVE");
}

/// Open shards of a stream with their hash key ranges, sorted by starting hash key.
pub async fn open_shards(k: &aws_sdk_kinesis::Client, name: &str) -> Vec<(String, u128, u128)> {
    let out = k
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .expect("list shards");
    let mut open: Vec<(String, u128, u128)> = out
        .shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .map(|s| {
            let r = s.hash_key_range().unwrap();
            (
                s.shard_id().to_string(),
                r.starting_hash_key().parse().unwrap(),
                r.ending_hash_key().parse().unwrap(),
            )
        })
        .collect();
    open.sort_by_key(|s| s.1);
    open
}

/// A `sluice run` configuration for a Kinesis stream.
pub fn kinesis_config_toml(
    kinesis: &str,
    es: &str,
    stream: &str,
    format: &str,
    db: &Path,
    http_port: u16,
    routes: &str,
    extra_source: &str,
) -> String {
    let source = format!(
        "[source]\ntype = \"kinesis\"\nstream = \"{stream}\"\nformat = \"{format}\"\nregion = \"us-east-1\"\nendpoint_url = \"{kinesis}\"\npoll_interval = \"100ms\"\ndiscovery_interval = \"1s\"\n{extra_source}\n"
    );
    format!(
        "{source}\n{}{routes}\n",
        sink_sections(es, "ddb-kinesis", db, http_port)
    )
}
